"""Time a 3-source dataset mixture: load + drop empties + sample + convert row shapes + shuffle (no tokenizing).

    python bench/mixture.py [--rows 100000] [--reps 1]

Writes three local jsonl files of --rows rows each into a temp dir — messages, sharegpt and alpaca, so two
of the three are converted to messages — and times `load_splits` on a messages mixture with weights 0.5,
rows 100k and 1.5 (the last repeats rows), with an eval_fraction. The datasets cache lives in the temp dir
too, so the first repetition includes the JSON -> Arrow conversion a first run pays ("cold"); later
repetitions read the cache ("warm"). A second timing mixes three alpaca sources (no row conversion).
Target: under 30 s cold on the 2-core CPU machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def write_files(root: Path, n: int) -> dict[str, Path]:
    paths = {k: root / f"{k}.jsonl" for k in ("messages", "sharegpt", "alpaca", "alpaca2", "alpaca3")}
    with paths["messages"].open("w") as f:
        for i in range(n):
            f.write(json.dumps({"messages": [{"role": "user", "content": f"question {i} about the weather"},
                                             {"role": "assistant", "content": f"answer {i}: sunny"}]}) + "\n")
    with paths["sharegpt"].open("w") as f:
        for i in range(n):
            f.write(json.dumps({"conversations": [{"from": "system", "value": "Be brief."},
                                                  {"from": "human", "value": f"hello {i}"},
                                                  {"from": "gpt", "value": f"hi {i}"}]}) + "\n")
    for k in ("alpaca", "alpaca2", "alpaca3"):
        with paths[k].open("w") as f:
            for i in range(n):
                f.write(json.dumps({"instruction": f"Add {i} and 1.", "input": "" if i % 2 else f"{i}",
                                    "output": str(i + 1)}) + "\n")
    return paths


def timed(data: dict) -> tuple[float, int, int, list]:
    from posttrain.data.mixture import load_splits

    t0 = time.perf_counter()
    train, eval_ds, stats = load_splits(data, seed=42)
    return time.perf_counter() - t0, len(train), len(eval_ds) if eval_ds is not None else 0, stats["train"]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--reps", type=int, default=2, help="repetitions (the first is cold)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.environ["HF_DATASETS_CACHE"] = str(root / "cache")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import datasets

        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()
        t0 = time.perf_counter()
        paths = write_files(root, args.rows)
        print(f"wrote 3 x {args.rows} rows (+2 alpaca files) in {time.perf_counter() - t0:.1f} s")
        mixed = {"format": "messages", "eval_fraction": 0.01, "train": [
            {"source": str(paths["messages"]), "weight": 0.5},
            {"source": str(paths["sharegpt"]), "format": "sharegpt", "rows": args.rows},
            {"source": str(paths["alpaca"]), "format": "alpaca", "weight": 1.5}]}
        same = {"format": "alpaca", "train": [{"source": str(paths[k]), "weight": w}
                                              for k, w in (("alpaca", 0.5), ("alpaca2", 1.0), ("alpaca3", 1.5))]}
        results = {}
        for name, data in (("messages mixture (2 of 3 sources converted)", mixed),
                           ("alpaca mixture (no conversion)", same)):
            times = []
            for rep in range(args.reps):
                secs, n_train, n_eval, stats = timed(data)
                times.append(secs)
                print(f"{name}: rep {rep + 1} ({'cold' if rep == 0 else 'warm'}): {secs:.1f} s -> "
                      f"{n_train} train + {n_eval} eval rows; taken {[s['taken'] for s in stats]}")
            results[name] = times
        return results


if __name__ == "__main__":
    main()
