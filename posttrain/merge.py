"""Merge a LoRA run's adapter into its base model, so the next stage loads one ordinary model."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

log = logging.getLogger("posttrain")


def is_adapter(run_dir: Path) -> bool:
    run_dir = Path(run_dir)
    return (run_dir / "adapter_config.json").exists() and not (run_dir / "config.json").exists()


def loadable_model(run_dir: str | Path) -> str:
    """The directory a next stage should load: the run itself, or (for a LoRA adapter) a merged copy
    made once and kept in run_dir/merged. Never silently the bare base model."""
    run_dir = Path(run_dir)
    return str(merge_adapter(run_dir) if is_adapter(run_dir) else run_dir)


def merge_adapter(run_dir: Path, out: Path | None = None) -> Path:
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoTokenizer

    run_dir = Path(run_dir)
    out = Path(out) if out else run_dir / "merged"
    stamp = run_dir / "adapter_model.safetensors"
    marker = out / ".merged_from.json"
    source = {"adapter_mtime": stamp.stat().st_mtime if stamp.exists() else None}
    if marker.exists() and json.loads(marker.read_text()) == source:
        return out
    base = json.loads((run_dir / "adapter_config.json").read_text()).get("base_model_name_or_path")
    log.info("merging the LoRA adapter in %s into its base model %s -> %s", run_dir, base, out)
    model = AutoPeftModelForCausalLM.from_pretrained(run_dir).merge_and_unload()
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    AutoTokenizer.from_pretrained(run_dir).save_pretrained(tmp)
    (tmp / ".merged_from.json").write_text(json.dumps(source))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out
