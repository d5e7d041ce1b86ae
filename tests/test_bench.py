"""Smoke test: bench/run.py runs every benchmark at tiny sizes and writes a report with numeric tables.

No timing assertions: the numbers come from a shared, noisy machine; `make bench` is where they count.
"""

import importlib.util
import math
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # runs every benchmark

REPO = Path(__file__).resolve().parent.parent
TINY = {"reps": 1, "sft_steps": 3, "dpo": False, "collator_rows": 8, "prep_rows": 300, "prep_reps": 1,
        "help_reps": 1, "validate_reps": 0}
# The workload's files: 200 SFT rows instead of 2000 (both overhead children tokenize every row before their first
# step; the collator reads 8 of them), 60 preference rows (DPO is off here).
TINY_WORKLOAD = {"n_sft": 200, "n_pref": 60}


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_run", REPO / "bench" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_quick_writes_numeric_tables(tmp_path, monkeypatch):
    bench = _load_bench()
    monkeypatch.setattr(bench.workload, "CACHE", tmp_path / "cache")  # leave runs/bench_cache alone
    build = bench.workload.build
    monkeypatch.setattr(bench.workload, "build", lambda cache=None, **sizes: build(cache, **{**TINY_WORKLOAD, **sizes}))
    out = tmp_path / "RESULTS.md"
    results = bench.main(["--quick", "--out", str(out)], sizes=TINY)

    text = out.read_text()
    for heading in ("## 1. Orchestration overhead", "## 2. Collator", "## 3. Preprocessing", "## 4. CLI latency",
                    "## Targets", "- CPU:", "trl 1.12"):
        assert heading in text, heading
    ratios = re.search(r"\| steady-state steps/s \|[^|]*\|[^|]*\| ([0-9.]+) \|", text)
    assert ratios and float(ratios.group(1)) > 0

    sft = results["overhead_sft"]
    for key in ("throughput_ratio", "first_step_ratio", "startup_overhead_s", "rss_ratio"):
        assert sft[key] and all(math.isfinite(x) for x in sft[key]), key
    assert sft["same_loss"], "posttrain and the plain TRL script trained the same rows to different losses"

    coll = results["collators"]
    seed = coll["runs"]["(a) seed: pad to max_length, mask pad id"][0]
    ours = coll["runs"]["(b) posttrain: dynamic padding"][0]
    assert seed["eos"] == 0 and ours["eos"] == TINY["collator_rows"]  # the seed never trains EOS; we train each
    assert ours["positions"] < seed["positions"]
    # the seed's labels are its prompt and response tokens; its response share is what ours trains, less EOS
    assert seed["response"] == ours["response"] - TINY["collator_rows"] < seed["trained"]
    # (b2) trains the seed's labels through our collator: every token the seed trains, plus each row's EOS
    every = coll["runs"]["(b2) (b), every token a label as in the seed"][0]
    assert every["trained"] == seed["trained"] + TINY["collator_rows"]
    assert every["response"] == ours["response"] and every["positions"] == ours["positions"]
    assert all(math.isfinite(x) and x > 0 for by in coll["speedup_trained_tok_s"].values() for xs in by.values()
               for x in xs)
    assert results["preprocessing"]["seconds"][1][0] > 0
    assert "torch" not in results["cli"]["help_imports"]
    assert any(t.startswith("- 5. GPU") for t in results["targets"])
