"""Preprocessing: format + tokenize synthetic Alpaca rows with posttrain's `tokenize_dataset` (num_proc 1 and 2)
against the fast tokenizer alone on the same texts.

    python bench/preprocess.py [--quick] [--out bench/RESULTS.md]

Writes the "preprocess" section of RESULTS.md.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import table
import workload
from table import cell
from workload import MAX_LENGTH

NAME = "preprocess"
TITLE = "3. Preprocessing: format + tokenize synthetic Alpaca rows"
FULL = {"prep_rows": 50_000, "prep_reps": 2}
QUICK = {"prep_rows": 5_000, "prep_reps": 1}


def preprocessing(paths: dict, n_rows: int, reps: int, tmp: Path) -> dict:
    import datasets

    from posttrain.data.collator import tokenize_dataset
    from posttrain.data.formats import alpaca_prompt
    from posttrain.models import load_tokenizer

    source = workload.CACHE / f"alpaca_{n_rows}.jsonl"
    if not source.exists():
        workload.write_jsonl(source, workload.alpaca_rows(n_rows, seed=3))
    tok = load_tokenizer({"name_or_path": str(paths["model"])})
    ds = datasets.load_dataset("json", data_files=str(source), split="train", cache_dir=str(tmp / "prep_cache"))
    quiet = logging.getLogger("posttrain")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # the truncation warning, once per run, is noise here
    # The floor: the fast tokenizer alone on the same texts (a sample), no datasets, no labels.
    sample = ds.select(range(min(n_rows, 5000))).to_list()
    prompts = [alpaca_prompt(r["instruction"], r["input"]) for r in sample]
    outputs = [r["output"] for r in sample]

    def tokenizer_only():
        tok(prompts)
        tok(outputs, add_special_tokens=False)

    datasets.disable_caching()  # every repetition tokenizes for real instead of reading the last one's cache
    times = {1: [], 2: [], "tokenizer": []}
    try:
        for _, setting in table.interleaved([1, 2, "tokenizer"], reps):
            start = time.perf_counter()
            if setting == "tokenizer":
                tokenizer_only()
            else:
                tokenize_dataset(ds, "alpaca", tok, MAX_LENGTH, "bench", num_proc=setting if setting > 1 else None)
            times[setting].append(time.perf_counter() - start)
            print(f"  tokenize, {setting}: {times[setting][-1]:.2f} s", flush=True)
    finally:
        datasets.enable_caching()
        quiet.setLevel(level)
    return {"rows": n_rows, "sample_rows": len(sample), "seconds": times}


def preprocessing_table(res: dict) -> str:
    n, t = res["rows"], res["seconds"]
    rates = {1: [n / s for s in t[1]], 2: [n / s for s in t[2]],
             "tokenizer": [res["sample_rows"] / s for s in t["tokenizer"]]}
    names = {1: "tokenize_dataset, num_proc=1", 2: "tokenize_dataset, num_proc=2",
             "tokenizer": f"fast tokenizer alone, same texts ({res['sample_rows']:,}-row sample)"}
    rows = [[names[k], cell(t[k]), cell(rates[k], "{:,.0f}"), cell([r / b for r, b in zip(rates[k], rates[1])])]
            for k in names]
    return table.table(["setting", "time (s)", "rows/s", "× num_proc=1"], rows)


def run(cfg: dict, paths: dict, tmp: Path) -> tuple[dict, str, list[str]]:
    res = preprocessing(paths, cfg["prep_rows"], cfg["prep_reps"], tmp)
    return {"preprocessing": res}, f"{res['rows']:,} rows.\n\n" + preprocessing_table(res), []


if __name__ == "__main__":
    import run as driver

    driver.main(only=[NAME])
