"""CLI latency: wall time of the installed `posttrain` console script in a fresh process, and which heavy modules
`posttrain --help` imports (none, by design).

    python bench/cli_latency.py [--quick] [--out bench/RESULTS.md]

Writes the "cli_latency" section of RESULTS.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import table
from table import cell, med
from workload import CHILD_ENV

NAME = "cli_latency"
TITLE = "4. CLI latency"
FULL = {"help_reps": 5, "validate_reps": 2}
QUICK = {"help_reps": 2, "validate_reps": 1}
REPO = Path(__file__).resolve().parent.parent


IMPORT_CHECK = """
import json, sys
from posttrain.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(json.dumps(sorted(m for m in ("torch", "transformers", "trl", "datasets", "peft") if m in sys.modules)))
"""


def cli_latency(help_reps: int, validate_reps: int) -> dict:
    exe = str(Path(sys.executable).parent / "posttrain")
    commands = {"posttrain --help": [exe, "--help"],
                "posttrain validate alpaca_gpt2 --no-data": [exe, "validate", "alpaca_gpt2", "--no-data"]}
    env = {**os.environ, **CHILD_ENV}
    times = {name: [] for name in commands}
    for r in range(max(help_reps, validate_reps)):
        for name, cmd in commands.items():
            if r < (help_reps if "help" in name else validate_reps):
                start = time.perf_counter()
                subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True,
                               cwd=REPO)
                times[name].append(time.perf_counter() - start)
    out = subprocess.run([sys.executable, "-c", IMPORT_CHECK, "--help"], env=env, capture_output=True, text=True,
                         check=True, cwd=REPO).stdout
    return {"seconds": times, "help_imports": json.loads(out.strip().splitlines()[-1])}


def cli_table(res: dict) -> str:
    rows = [[f"`{name}`", len(ts), cell(ts, "{:.3f}") if ts else "not run",
             (", ".join(res["help_imports"]) or "none") if "help" in name else "torch, transformers, trl (by design)"]
            for name, ts in res["seconds"].items()]
    return table.table(["command", "runs", "wall time (s)", "heavy modules imported"], rows)


def run(cfg: dict, paths: dict, tmp: Path) -> tuple[dict, str, list[str]]:
    res = cli_latency(cfg["help_reps"], cfg["validate_reps"])
    targets = [table.target("`posttrain --help` does not import torch", "torch" not in res["help_imports"],
                            f"median {med(res['seconds']['posttrain --help']):.3f} s")]
    return {"cli": res}, cli_table(res), targets


if __name__ == "__main__":
    import run as driver

    driver.main(only=[NAME])
