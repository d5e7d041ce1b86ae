"""DRY RUN of the GPU check (bench/gpu_check.py --dry-run): tiny shapes, one step per row, on this CPU.

It measures nothing worth keeping; it keeps the script that `make gpu-check` runs on a GPU from rotting
between GPU runs: every row trains through posttrain's stage code, plan is asked, GPU.md is written.
"""

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_gpu_check_dry_run(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_datasets"))
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "bench" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    out = tmp_path / "GPU.md"
    code = gpu_check.main(["--dry-run", "--out", str(out), "--work", str(tmp_path / "work")])
    text = out.read_text()
    assert code == 0, text
    assert "DRY RUN" in text and "- Device: CPU" in text and "- Date: " in text
    result = json.loads(out.with_suffix(".json").read_text())
    trained = {"sft full bf16", "sft LoRA", "sft QLoRA nf4", "dpo LoRA", "reward", "ppo LoRA", "grpo"}
    assert trained <= set(result["rows"]), text
    for name in trained:
        row = result["rows"][name]
        assert row["steps_per_s"] > 0 and row["tokens_per_s"] > 0 and row["plan_bytes"] > 0, (name, row)
    assert "| sft packed |" in text  # measured where the tree accepts training.packing, else skipped with why
    assert result["plain_trl_steps_per_s"] > 0 and "posttrain/plain" in text
