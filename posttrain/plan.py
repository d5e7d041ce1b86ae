"""`posttrain plan RECIPE`: estimate GPU memory per device before a run, and the knob to turn if it won't fit.

Reads only model configs (the model is built on the `meta` device: no weights are loaded). What a stage
holds is described by its `Footprint`; the estimate counts, per device:
  weights      frozen parameters x bytes of their dtype (bf16 2, fp32 4); under 4/8-bit quantization the
               linear layers at 0.5625/1.0625 bytes (with block scales) and everything else in fp32,
               because peft's prepare_model_for_kbit_training upcasts it; LoRA adapters in fp32 (peft
               autocasts adapters of a 16-bit base to fp32)
  gradients    trainable parameters x bytes of their dtype
  optimizer    AdamW: 2 states per trainable parameter, in the parameter's dtype (torch keeps bf16 states
               for bf16 weights: 4 bytes; fp32 adapters: 8)
  other models what the stage holds besides the policy (reference copy, reward and value models, a teacher)
  activations  per layer and token, in the compute dtype: attention block 5h + 3kv values (norm input,
               q/k/v input, q/k/v, rotated q/k, attention output), MLP 2h + 4I (gated: gate, up, act,
               product) or 2h + 2I; without activation checkpointing for every layer, with it the layer
               input (h) of every layer plus one layer recomputed
  attention    eager attention keeps the scores: softmax output in fp32 plus its copy in the compute dtype,
               6 bytes x heads x seq per token and layer (O(seq^2) per sequence); sdpa and flash attention
               keep only a logsumexp (4 bytes x heads per token: O(seq)). Default: what transformers picks.
  logits       what TRL 1.12 keeps for the loss (see _logits)
ZeRO-3/FSDP divide weights, gradients, optimizer and other models by the number of GPUs; ZeRO-2 the
gradients and optimizer. Not counted: KV cache while generating (online stages), CUDA context beyond
the 10% margin.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

from posttrain import stages
from posttrain.errors import PosttrainError, RecipeError
from posttrain.models import embedding_rows, load_config, lora_config, meta_model, recipe_tokens, train_only
from posttrain.stages import Footprint
from posttrain.util import first_line

if TYPE_CHECKING:
    from posttrain.recipe import Recipe

GIB = 1024**3
SFT_CHUNK_TOKENS = 256  # trl.trainer.sft_trainer._CHUNKED_LM_HEAD_CHUNK_SIZE in TRL 1.12
# what each sharding divides by the number of GPUs
SHARDED = {"zero2": ("gradients", "optimizer"), "zero3": ("weights", "gradients", "optimizer", "other models"),
           "fsdp": ("weights", "gradients", "optimizer", "other models")}


@dataclasses.dataclass
class Arch:
    params: int
    trainable: int
    hidden: int
    layers: int
    heads: int
    kv_dim: int  # width of k (and of v): kv_heads x head_dim
    intermediate: int
    gated_mlp: bool
    vocab: int
    attn_implementation: str
    quantizable: int  # parameters of the linear layers a 4/8-bit load quantizes (not the output head)


def arch(model_section: dict, peft: dict | None, seq_cls: bool = False) -> Arch:
    """The model built on `meta` from its config. Every failure is one PosttrainError line."""
    name = model_section["name_or_path"]
    try:
        import torch
        from transformers.pytorch_utils import Conv1D

        cfg = load_config(model_section)
    except Exception as e:  # noqa: BLE001 - any failure here is one line, never a traceback
        raise PosttrainError(f"plan needs the model config of '{name}': {first_line(e)}") from None
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    if getattr(text, "vocab_size", None) and (recipe_tokens(model_section) or model_section.get("resize_to_multiple_of")):
        # the embedding the added tokens grow: at most one row each (a token already in the vocabulary adds none)
        text.vocab_size = embedding_rows(text.vocab_size, text.vocab_size + len(recipe_tokens(model_section)),
                                         model_section.get("resize_to_multiple_of"))
    try:
        model = meta_model(model_section, seq_cls, cfg)
    except Exception as e:  # noqa: BLE001 - any failure here is one line, never a traceback
        raise PosttrainError(f"plan cannot build '{name}' from its config: {first_line(e)}") from None
    attn = model_section.get("attn_implementation") or getattr(model.config, "_attn_implementation", None) or "sdpa"
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    head = head if head is not None else getattr(model, "score", None)
    quantizable = sum(m.weight.numel() for m in model.modules()
                      if isinstance(m, (torch.nn.Linear, Conv1D)) and m is not head)
    gated = any(n.endswith(("gate_proj", "w1", "gate_up_proj")) for n, _ in model.named_modules())
    if peft:
        try:
            from peft import get_peft_model

            with torch.device("meta"):
                model = get_peft_model(model, lora_config(peft, "SEQ_CLS" if seq_cls else "CAUSAL_LM"))
        except Exception as e:  # noqa: BLE001 - any failure here is one line, never a traceback
            raise RecipeError(f"peft: {first_line(e)}") from None
    if model_section.get("trainable"):  # full weights of the selected parameters; gradients and AdamW for those
        train_only(model, model_section["trainable"])
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    def get(*names):
        return next((getattr(text, n) for n in names if getattr(text, n, None)), 0)

    hidden, heads = get("hidden_size", "n_embd", "d_model"), get("num_attention_heads", "n_head")
    head_dim = get("head_dim") or hidden // max(heads, 1)
    kv_heads = get("num_key_value_heads") or heads
    inter = get("intermediate_size", "n_inner", "ffn_dim") or 4 * hidden
    return Arch(params, trainable, hidden, get("num_hidden_layers", "n_layer"), heads, kv_heads * head_dim, inter,
                gated, get("vocab_size"), attn, quantizable)


def compute_bytes(recipe: Recipe) -> float:
    return 4.0 if recipe.model.get("dtype") in ("fp32", "float32") else 2.0  # auto on a bf16-capable GPU: bf16


def _policy_bytes(recipe: Recipe, a: Arch) -> tuple[float, float]:
    """(frozen weights, bytes per trainable parameter) of the policy."""
    q = recipe.quantization or {}
    frozen, cb = a.params - a.trainable, compute_bytes(recipe)
    if q.get("load_in_4bit") or q.get("load_in_8bit"):
        per = 0.5 + 4 / 64 if q.get("load_in_4bit") else 1.0 + 4 / 64  # + an fp32 absmax per 64-value block
        return a.quantizable * per + (frozen - a.quantizable) * 4.0, 4.0  # the rest upcast to fp32 by peft
    # LoRA adapters in fp32 (peft autocast_adapter_dtype); full weights (model.trainable: the rest frozen)
    return frozen * cb, 4.0 if recipe.peft else cb


def _layer_bytes(a: Arch, cb: float) -> float:
    """Activation bytes one layer keeps per token, attention scores excluded."""
    attn = 5 * a.hidden + 3 * a.kv_dim
    mlp = 2 * a.hidden + (4 if a.gated_mlp else 2) * a.intermediate
    return cb * (attn + mlp)


def _score_bytes(a: Arch, seq: int) -> float:
    """Attention bytes per token and layer: O(seq) scores under eager, a logsumexp otherwise."""
    return 6.0 * a.heads * seq if a.attn_implementation == "eager" else 4.0 * a.heads


def _logits(fp: Footprint, recipe: Recipe, a: Arch, rows: int, seq: int, generated: int, cb: float) -> tuple[float, str]:
    """Bytes of the logits the loss keeps, as TRL 1.12 computes them, and a note saying how."""
    if fp.scoring or fp.logits == "none":
        return 0.0, "scalar head: no vocabulary logits"
    if fp.logits == "sft_loss":
        if recipe.training.get("loss_type", "chunked_nll") == "chunked_nll" and not recipe.training.get("use_liger_kernel"):
            # fp32 logits, log-probs and their gradient for one chunk of tokens, plus the head's weight in fp32
            # and its fp32 gradient while a chunk runs
            return SFT_CHUNK_TOKENS * a.vocab * 4 * 3 + a.vocab * a.hidden * 4 * 2, \
                f"TRL chunked_nll: {SFT_CHUNK_TOKENS} tokens of fp32 logits at a time"
        # transformers' loss: logits in the compute dtype, upcast to fp32, log-softmax kept, fp32 gradient
        return rows * seq * a.vocab * (cb + 4 + 4), "full logits upcast to fp32 for the loss"
    if fp.logits == "generated_logps":
        return rows * generated * a.vocab * cb * 3, "logits of generated tokens only (logits_to_keep)"
    # per_token_logps: logits, a log-softmax per row kept for backward, and their gradient
    return rows * seq * a.vocab * cb * 3, "full logits in the compute dtype, log-softmax per row"


def estimate(recipe: Recipe, gpus: int = 1, sharding: str = "none", footprint: Footprint | None = None) -> dict:
    fp = footprint or stages.get(recipe.stage).footprint
    t = recipe.training
    cb = compute_bytes(recipe)
    policy = arch(recipe.model, recipe.peft, seq_cls=fp.scoring)
    frozen, train_bytes = _policy_bytes(recipe, policy)
    parts = {
        "weights": frozen + policy.trainable * train_bytes,
        "gradients": policy.trainable * train_bytes,
        "optimizer": policy.trainable * train_bytes * 2,
    }
    other, notes = 0.0, []
    if fp.reference(recipe):
        other += frozen if frozen else policy.params * cb
        notes.append("reference copy of the policy")
    for held in fp.other_models(recipe):
        # a model not on this machine is sized as the policy
        name = held.spec["name_or_path"]
        m = arch(held.spec, None, seq_cls=held.scoring) if Path(name).exists() else policy
        other += m.params * cb * (4 if held.trained else 1)  # trained: weights, gradients and AdamW's two moments
        notes.append(f"{held.role} {name}{' (trained)' if held.trained else ''}")
    parts["other models"] = other
    rows = t.get("per_device_train_batch_size", 8) * fp.sequences_per_row
    generated = fp.generated_tokens(recipe) or 0  # null: bounded by the model's generation config, not the recipe
    seq = (recipe.data.get("max_length") or 1024) + generated
    # posttrain turns activation checkpointing on by default on GPUs (see stages/common.device_defaults)
    checkpointing = bool(t.get("activation_checkpointing", t.get("gradient_checkpointing", True)))
    tokens = rows * seq
    layer, score = _layer_bytes(policy, cb), _score_bytes(policy, seq)
    if checkpointing:
        parts["activations"] = tokens * (cb * policy.hidden * policy.layers + layer)
        parts["attention"] = tokens * score  # one layer's, while it is recomputed
    else:
        parts["activations"] = tokens * layer * policy.layers
        parts["attention"] = tokens * score * policy.layers
    parts["logits"], logits_note = _logits(fp, recipe, policy, rows, seq, generated, cb)
    for k in SHARDED.get(sharding, ()) if gpus > 1 else ():
        parts[k] /= gpus
    total = sum(parts.values()) * 1.1  # +10%: CUDA context, allocator fragmentation, buffers
    return {"parts": parts, "total": total, "params": policy.params, "trainable": policy.trainable,
            "batch": rows, "seq": seq, "checkpointing": checkpointing, "notes": notes,
            "attn_implementation": policy.attn_implementation, "logits_note": logits_note}


def advice(recipe: Recipe, est: dict, gpu_gib: float, footprint: Footprint | None = None) -> list[str]:
    fp = footprint or stages.get(recipe.stage).footprint
    t, tips = recipe.training, []
    if not est["checkpointing"]:
        tips.append("turn on training.activation_checkpointing (activations are recomputed, not stored)")
    if est["attn_implementation"] == "eager" and est["parts"]["attention"] > 0.1 * est["total"]:
        tips.append("set model.attn_implementation: sdpa (eager attention stores seq x seq scores)")
    if not recipe.peft and not recipe.model.get("trainable"):
        tips.append("add a `peft:` section (LoRA): gradients and optimizer state only for the adapter")
    elif not recipe.quantization:
        tips.append("add `quantization: {load_in_4bit: true}` (QLoRA: NF4, double quantization and bf16 "
                    "compute by default): the base weights in 4 bits")
    if fp.reference is stages.reference_unless_peft_or_precompute and fp.reference(recipe):
        tips.append("set training.precompute_ref_log_probs: true (no reference model in memory)")
    if t.get("per_device_train_batch_size", 8) > 1:
        tips.append("halve training.per_device_train_batch_size and double gradient_accumulation_steps")
    tips.append("shard over several GPUs with recipes/accelerate/deepspeed_zero3.yaml or fsdp.yaml")
    return tips


def _size(n: float) -> str:
    return f"{n / GIB:8.2f} GiB" if n >= GIB / 10 else f"{n / 2**20:8.2f} MiB"


def report(recipe: Recipe, gpu_gib: float, gpus: int = 1, sharding: str = "none",
           footprint: Footprint | None = None) -> tuple[str, bool]:
    est = estimate(recipe, gpus, sharding, footprint)
    lines = [f"memory plan for {recipe.source} ({recipe.stage}): {est['params'] / 1e6:.3g}M parameters, "
             f"{est['trainable'] / 1e6:.3g}M trainable; batch {est['batch']} x {est['seq']} tokens per device; "
             f"activation checkpointing {'on' if est['checkpointing'] else 'off'}; "
             f"attention {est['attn_implementation']}"
             + (f"; {gpus} GPUs, {sharding}" if gpus > 1 else "")]
    for k, v in est["parts"].items():
        lines.append(f"  {k:<13} {_size(v)}" + (f"  ({est['logits_note']})" if k == "logits" else ""))
    if est["notes"]:
        lines.append(f"  (other models: {', '.join(est['notes'])})")
    lines.append(f"  {'total':<13} {_size(est['total'])} per device (incl. 10% overhead)")
    fits = est["total"] <= gpu_gib * GIB
    if fits:
        lines.append(f"fits a {gpu_gib:g} GiB GPU ({est['total'] / (gpu_gib * GIB):.0%} of it)")
    else:
        lines.append(f"does NOT fit a {gpu_gib:g} GiB GPU; try, in this order:")
        lines += [f"  - {tip}" for tip in advice(recipe, est, gpu_gib, footprint)]
    return "\n".join(lines), fits
