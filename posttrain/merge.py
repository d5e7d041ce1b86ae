"""Merge a LoRA run's adapter into its base model, so the next stage loads one ordinary model."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import yaml

from posttrain.models import grow_embeddings
from posttrain.runs import RESOLVED

log = logging.getLogger("posttrain")


def is_adapter(run_dir: Path) -> bool:
    run_dir = Path(run_dir)
    return (run_dir / "adapter_config.json").exists() and not (run_dir / "config.json").exists()


def loadable_model(run_dir: str | Path) -> str:
    """The directory a next stage should load: the run itself, or (for a LoRA adapter) a merged copy
    made once and kept in run_dir/merged. Never silently the bare base model."""
    run_dir = Path(run_dir)
    return str(merge_adapter(run_dir) if is_adapter(run_dir) else run_dir)


def load_adapter(run_dir: str | Path, **kw):
    """A LoRA run's adapter on its base model (a peft model; `kw` go to the base's from_pretrained). The base is first
    grown to the embedding the run trained (its saved tokenizer, rounded up to the multiple its recipe's
    model.resize_to_multiple_of gave): peft's AutoPeftModel grows it to the tokenizer alone, without the rounding."""
    from peft import PeftConfig, PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run_dir = Path(run_dir)
    resolved = run_dir / RESOLVED
    model_section = ((yaml.safe_load(resolved.read_text()) or {}).get("model") or {}) if resolved.is_file() else {}
    base = AutoModelForCausalLM.from_pretrained(PeftConfig.from_pretrained(run_dir).base_model_name_or_path, **kw)
    grow_embeddings(base, AutoTokenizer.from_pretrained(run_dir), model_section.get("resize_to_multiple_of"))
    return PeftModel.from_pretrained(base, run_dir)


def merge_adapter(run_dir: Path, out: Path | None = None) -> Path:
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
    model = load_adapter(run_dir).merge_and_unload()
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    AutoTokenizer.from_pretrained(run_dir).save_pretrained(tmp)
    (tmp / ".merged_from.json").write_text(json.dumps(source))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out
