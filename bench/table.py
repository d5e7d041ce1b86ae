"""What every benchmark shares: statistics over repetitions, markdown tables, and its own section of RESULTS.md.

A benchmark measures, then writes one section of bench/RESULTS.md (or of --out), leaving the other
sections and the hand-written prose around them alone:

    import table

    runs = {"a": [], "b": []}
    for rep, name in table.interleaved(["a", "b"], reps):      # A B, B A, A B, ...: a noisy neighbour hits both
        runs[name].append(measure(name))                          # one number (seconds, tokens/s, ...) per repetition
    speedup = table.ratios(runs["b"], runs["a"])                 # per repetition: b[i] / a[i]
    body = table.table(["variant", "seconds"], [[n, table.cell(xs)] for n, xs in runs.items()])
    targets = [table.target("b at least 2x as fast as a", table.med(speedup) >= 2, f"median {table.med(speedup):.2f}x")]
    table.write_section("mybench", "6. My benchmark", table.stamp("bench/mybench.py", quick, seconds) + body,
                        targets, out=args.out)

API
- `med(xs)`, `cell(xs, fmt)`: the median, and "median [min–max]" of a list (None entries skipped).
- `ratios(a, b)` / `differences(a, b)`: per-repetition a[i] / b[i] and a[i] − b[i] (interleaved pairs).
- `interleaved(names, reps)`: (rep, name) in alternating order, for variants that are compared.
- `table(header, rows)`: a markdown table; `target(what, ok, detail)`: one "- what: **met** (detail)" line.
- `machine()`: markdown bullets on the CPU, RAM, load, GPU, Python and package versions.
- `stamp(command, quick, seconds)`: the first lines of a section: command, mode, date, time taken, machine.
- `write_section(name, title, body, targets=(), out=RESULTS)`: replace the text between the markers
  `<!-- bench:NAME -->` and `<!-- /bench:NAME -->` in `out` (prose outside the markers is kept); a section
  not there yet is added as `## TITLE` plus the markers, above `## Targets` (the summary run.py writes) or at
  the end. Creates `out` when missing. Write the prose on how the benchmark measures by hand, after the
  end marker: it is kept across runs.
"""

from __future__ import annotations

import datetime
import os
import platform
import re
import statistics
from importlib import metadata
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
PACKAGES = ("posttrain", "torch", "transformers", "trl", "datasets", "accelerate", "tokenizers", "peft")


# ---------------------------------------------------------------- statistics over repetitions

def med(xs):
    return statistics.median(xs)


def cell(xs, fmt="{:.2f}") -> str:
    """median [min–max] of the values that are not None."""
    xs = [x for x in xs if x is not None]
    if not xs:
        return "n/a"
    if len(xs) == 1:
        return fmt.format(xs[0])
    return f"{fmt.format(med(xs))} [{fmt.format(min(xs))}–{fmt.format(max(xs))}]"


def ratios(a, b) -> list[float]:
    """a[i] / b[i] per repetition: pairs measured in the same repetition, so both saw the same neighbour."""
    return [x / y for x, y in zip(a, b)]


def differences(a, b) -> list[float]:
    return [x - y for x, y in zip(a, b)]


def interleaved(names: list, reps: int):
    """(rep, name) in alternating order: A B, B A, A B, ..."""
    for r in range(reps):
        for name in (names if r % 2 == 0 else names[::-1]):
            yield r, name


# ---------------------------------------------------------------- markdown

def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def verdict(ok: bool) -> str:
    return "**met**" if ok else "**not met**"


def target(what: str, ok: bool, detail: str = "") -> str:
    return f"- {what}: {verdict(ok)}" + (f" ({detail})" if detail else "")


def machine() -> list[str]:
    """Markdown bullets: CPU, RAM, load average, GPU, Python, package versions, torch threads."""
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "unknown")
    mem = next((int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemTotal")), 0)
    packages = ", ".join(f"{p} {_version(p)}" for p in PACKAGES)
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none available"
    load = os.getloadavg()[0]
    busy = "other work was running" if load > 0.5 * (os.cpu_count() or 1) else "little else was running"
    return [(f"- CPU: {cpu}, {os.cpu_count()} cores; RAM {mem / 2**20:.1f} GiB; load average "
             f"{load:.2f} over the last minute ({busy})"),
            f"- GPU: {gpu}",
            f"- Python {platform.python_version()} on {platform.system()} {platform.release()}; {packages}",
            f"- torch threads: {torch.get_num_threads()} (OMP_NUM_THREADS=1 for every child process)"]


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def stamp(command: str, quick: bool, seconds: float, extra: list[str] = ()) -> str:
    """The opening lines of a section: what ran, when, how long, on what."""
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    mode = "quick: small sizes, one repetition, the numbers are not meaningful" if quick else "full"
    lines = [f"`{command}{' --quick' if quick else ''}` ({mode}), {date}, took {seconds:.0f} s. "
             "Cells are median [min–max] over repetitions.", "", *machine(), *extra]
    return "\n".join(lines) + "\n\n"


# ---------------------------------------------------------------- RESULTS.md

HEADER = "# posttrain benchmarks\n"


def write_section(name: str, title: str, body: str, targets: list[str] = (), out: Path | str = RESULTS) -> str:
    """Put `body` (and its targets) between this section's markers in `out`; returns the file's new text."""
    out = Path(out)
    begin, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    content = body.rstrip() + "\n"
    if targets:
        content += "\nTargets:\n\n" + "\n".join(targets) + "\n"
    block = f"{begin}\n{content}{end}"
    text = out.read_text() if out.exists() else HEADER
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text, count=1)
    elif name != "targets" and "\n## Targets\n" in text:  # new sections go above the summary of targets
        head, _, tail = text.partition("\n## Targets\n")
        text = f"{head.rstrip()}\n\n## {title}\n\n{block}\n\n## Targets\n{tail}"
    else:
        text = text.rstrip() + f"\n\n## {title}\n\n{block}\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return text
