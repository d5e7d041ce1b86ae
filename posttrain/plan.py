"""`posttrain plan RECIPE`: estimate GPU memory per device before a run, and the knob to turn if it won't fit.

Reads only model configs (the model is built on the `meta` device: no weights are loaded). The
estimate is deliberately simple and says what it counts:
  weights      parameters x bytes per parameter (bf16/fp16 2, fp32 4, 8-bit 1, 4-bit ~0.55)
  gradients    trainable parameters x bytes of their dtype
  optimizer    AdamW: 2 states per trainable parameter, fp32 (8 bytes)
  other models what the stage holds besides the policy (reference copy, reward and value models)
  activations  per layer and token: hidden x (34 + 5 x heads x seq / hidden) bytes without activation
               checkpointing (Korthikanti et al. 2022), 2 x hidden bytes with it; plus fp32 logits
ZeRO-3/FSDP divide weights, gradients and optimizer state by the number of GPUs; ZeRO-2 the last two.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from posttrain import stages
from posttrain.errors import PosttrainError
from posttrain.util import first_line

if TYPE_CHECKING:
    from posttrain.recipe import Recipe

GIB = 1024**3


@dataclasses.dataclass
class Arch:
    params: int
    trainable: int
    hidden: int
    layers: int
    heads: int
    vocab: int


def _arch(model_section: dict, peft: dict | None, seq_cls: bool = False) -> Arch:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    name = model_section["name_or_path"]
    try:
        cfg = AutoConfig.from_pretrained(name, revision=model_section.get("revision"),
                                         trust_remote_code=bool(model_section.get("trust_remote_code")),
                                         **({"gguf_file": model_section["gguf_file"]} if model_section.get("gguf_file") else {}))
    except Exception as e:
        raise PosttrainError(f"plan needs the model config of '{name}': {first_line(e)}") from None
    if seq_cls:
        cfg.num_labels = 1
    with torch.device("meta"):
        cls = AutoModelForSequenceClassification if seq_cls else AutoModelForCausalLM
        model = cls.from_config(cfg)
        if peft:
            from peft import get_peft_model

            from posttrain.models import lora_config

            model = get_peft_model(model, lora_config(peft, "SEQ_CLS" if seq_cls else "CAUSAL_LM"))
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    get = lambda *names: next((getattr(text, n) for n in names if getattr(text, n, None)), 0)  # noqa: E731
    return Arch(params, trainable, get("hidden_size", "n_embd", "d_model"), get("num_hidden_layers", "n_layer"),
                get("num_attention_heads", "n_head"), get("vocab_size"))


def _weight_bytes(recipe: Recipe) -> float:
    q = recipe.quantization or {}
    if q.get("load_in_4bit"):
        return 0.55  # 4 bits + block scales
    if q.get("load_in_8bit"):
        return 1.0
    dtype = recipe.model.get("dtype") or "auto"
    return 4.0 if dtype in ("fp32", "float32") else 2.0  # auto on a bf16-capable GPU: bf16


def _activations(a: Arch, batch: int, seq: int, checkpointing: bool) -> float:
    if checkpointing:
        per_layer = 2 * a.hidden * seq * batch
        one_layer = seq * batch * a.hidden * (34 + 5 * a.heads * seq / max(a.hidden, 1))
        body = per_layer * a.layers + one_layer
    else:
        body = seq * batch * a.hidden * (34 + 5 * a.heads * seq / max(a.hidden, 1)) * a.layers
    logits = 2 * 4 * batch * seq * a.vocab  # fp32 logits and their gradient
    return body + logits


def estimate(recipe: Recipe, gpus: int = 1, sharding: str = "none") -> dict:
    t = recipe.training
    fp = stages.get(recipe.stage).footprint
    wb = _weight_bytes(recipe)
    policy = _arch(recipe.model, recipe.peft, seq_cls=fp.scoring)
    train_bytes = 2.0 if wb < 2 else wb  # LoRA weights on a quantized base train in 16 bit
    parts = {
        "weights": policy.params * wb,
        "gradients": policy.trainable * train_bytes,
        "optimizer": policy.trainable * 8.0,
    }
    other, notes = 0.0, []
    if holds_reference(recipe, fp):
        other += policy.params * wb
        notes.append("reference copy of the policy")
    if fp.reward_and_value_models:
        rm = _arch({"name_or_path": recipe.extra["reward_model"]}, None, seq_cls=True) \
            if _reachable(recipe.extra["reward_model"]) else policy
        other += rm.params * wb * 2 + rm.params * (train_bytes + 8.0)  # reward + value, the value model trains
        notes.append("reward model, value model (trained)")
    parts["other models"] = other
    batch = t.get("per_device_train_batch_size", 8)
    seq = recipe.data.get("max_length") or 1024
    if fp.generated_tokens:
        key, default = fp.generated_tokens
        seq += t.get(key, default)
    batch *= fp.sequences_per_row  # e.g. chosen and rejected
    # posttrain turns activation checkpointing on by default on GPUs (see stages/common.device_defaults)
    checkpointing = t.get("activation_checkpointing", t.get("gradient_checkpointing", True))
    parts["activations"] = _activations(policy, batch, seq, bool(checkpointing))
    if gpus > 1 and sharding in ("zero3", "fsdp"):
        for k in ("weights", "gradients", "optimizer", "other models"):
            parts[k] /= gpus
    elif gpus > 1 and sharding == "zero2":
        for k in ("gradients", "optimizer"):
            parts[k] /= gpus
    total = sum(parts.values()) * 1.1  # +10%: CUDA context, allocator fragmentation, buffers
    return {"parts": parts, "total": total, "params": policy.params, "trainable": policy.trainable,
            "batch": batch, "seq": seq, "checkpointing": bool(checkpointing), "notes": notes}


def holds_reference(recipe: Recipe, fp: stages.Footprint) -> bool:
    """Whether the stage keeps a frozen copy of the policy as its reference model."""
    if recipe.peft or fp.reference is None:  # with LoRA the reference is the policy, adapter disabled
        return False
    if fp.reference == "unless_peft_or_precompute":
        return not recipe.training.get("precompute_ref_log_probs")
    if fp.reference == "if_beta":
        return bool(recipe.training.get("beta", fp.beta_default))
    return True


def _reachable(name_or_path: str) -> bool:
    from pathlib import Path

    return Path(name_or_path).exists()


def advice(recipe: Recipe, est: dict, gpu_gib: float) -> list[str]:
    t, tips = recipe.training, []
    if not est["checkpointing"]:
        tips.append("turn on training.activation_checkpointing (activations are recomputed, not stored)")
    if not recipe.peft:
        tips.append("add a `peft:` section (LoRA): gradients and optimizer state only for the adapter")
    elif not recipe.quantization:
        tips.append("add `quantization: {load_in_4bit: true}` (QLoRA: NF4, double quantization and bf16 "
                    "compute by default): the base weights in 4 bits")
    fp = stages.get(recipe.stage).footprint
    if fp.reference == "unless_peft_or_precompute" and holds_reference(recipe, fp):
        tips.append("set training.precompute_ref_log_probs: true (no reference model in memory)")
    if t.get("per_device_train_batch_size", 8) > 1:
        tips.append("halve training.per_device_train_batch_size and double gradient_accumulation_steps")
    tips.append("shard over several GPUs with recipes/accelerate/deepspeed_zero3.yaml or fsdp.yaml")
    return tips


def _size(n: float) -> str:
    return f"{n / GIB:8.2f} GiB" if n >= GIB / 10 else f"{n / 2**20:8.2f} MiB"


def report(recipe: Recipe, gpu_gib: float, gpus: int = 1, sharding: str = "none") -> tuple[str, bool]:
    est = estimate(recipe, gpus, sharding)
    lines = [f"memory plan for {recipe.source} ({recipe.stage}): {est['params'] / 1e6:.3g}M parameters, "
             f"{est['trainable'] / 1e6:.3g}M trainable; batch {est['batch']} x {est['seq']} tokens per device; "
             f"activation checkpointing {'on' if est['checkpointing'] else 'off'}"
             + (f"; {gpus} GPUs, {sharding}" if gpus > 1 else "")]
    for k, v in est["parts"].items():
        lines.append(f"  {k:<13} {_size(v)}")
    if est["notes"]:
        lines.append(f"  (other models: {', '.join(est['notes'])})")
    lines.append(f"  {'total':<13} {_size(est['total'])} per device (incl. 10% overhead)")
    fits = est["total"] <= gpu_gib * GIB
    if fits:
        lines.append(f"fits a {gpu_gib:g} GiB GPU ({est['total'] / (gpu_gib * GIB):.0%} of it)")
    else:
        lines.append(f"does NOT fit a {gpu_gib:g} GiB GPU; try, in this order:")
        lines += [f"  - {tip}" for tip in advice(recipe, est, gpu_gib)]
    return "\n".join(lines), fits
