"""posttrain benchmarks: run every benchmark in BENCHMARKS and write each one's section of bench/RESULTS.md.

    python bench/run.py [--quick] [--out bench/RESULTS.md]      (or: make bench BENCH_ARGS=--quick)
    python bench/overhead.py [--quick] [--out ...]               (one benchmark alone; likewise the others)

A benchmark is a module in bench/ with NAME (its RESULTS.md section), TITLE, FULL and QUICK (its sizes) and
run(cfg, paths, tmp) -> (results, markdown body, target lines); bench/table.py holds what they share. The
prose on how each is measured lives in RESULTS.md next to its section and is kept when a section is rewritten.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import table  # noqa: E402
import workload  # noqa: E402

# run in this order by `make bench`
BENCHMARKS = ("overhead", "collator", "preprocess", "cli_latency")


def load(names=BENCHMARKS) -> list:
    return [importlib.import_module(name) for name in names]


def sizes_of(modules, quick: bool) -> dict:
    cfg = {}
    for m in modules:
        cfg.update(m.QUICK if quick else m.FULL)
    return cfg


def gpu_target() -> str:
    import torch

    return ("- 5. GPU: not measured: no GPU available" if not torch.cuda.is_available()
            else "- 5. GPU: not measured (no GPU benchmark in bench/run.py yet)")


def main(argv=None, sizes: dict | None = None, only: list[str] | None = None) -> dict:
    """Run the benchmarks (`only`: a subset by NAME) and write their sections; `sizes` overrides their sizes."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes, one repetition: checks that everything runs")
    p.add_argument("--out", default=str(table.RESULTS), help="the RESULTS.md whose sections are rewritten")
    args = p.parse_args(argv)
    modules = load(only or BENCHMARKS)
    cfg = {**sizes_of(modules, args.quick), **(sizes or {})}
    command = f"python bench/{modules[0].NAME}.py" if only else "python bench/run.py"
    results, targets = {}, []
    with workload.measuring(), tempfile.TemporaryDirectory(prefix="posttrain-bench-") as tmp:
        paths = workload.build()
        described = f"- workload: {workload.describe(paths)}"
        for module in modules:
            print(module.NAME, flush=True)
            started = time.time()
            res, body, section_targets = module.run(cfg, paths, Path(tmp))
            results.update(res)
            targets += section_targets
            stamp = table.stamp(command, args.quick, time.time() - started, [described])
            text = table.write_section(module.NAME, module.TITLE, stamp + body, section_targets, out=args.out)
    if not only:
        targets.append(gpu_target())
        text = table.write_section("targets", "Targets", f"From the last `{command}`:\n\n" + "\n".join(targets),
                                   out=args.out)
    print("\n" + text)
    print(f"wrote {args.out}")
    results["targets"] = targets
    return results


if __name__ == "__main__":
    main()
