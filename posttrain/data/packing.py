"""Packing for SFT: a batch's rows in one sequence, no padding, no attention or label across rows.

`training.packing: true` makes sft collate with PackedCollator instead of SFTCollator. The rows keep the
labels data/collator.py built (prompt -100, EOS trained); the batch becomes one row of shape [1, total]:

- position_ids restart at 0 for every row. That is the whole isolation signal: transformers 5's
  masking_utils (`find_packed_sequence_indices`) turns restarting position_ids into a block-diagonal
  causal mask for eager/sdpa/flex, and flash_attention_2/3 turn them into cu_seqlens for the varlen kernel
  (`_is_packed_sequence`, batch size 1). Both only happen with no attention_mask and no cache, so the
  collator returns no attention_mask, and TRL's SFTTrainer.compute_loss passes use_cache=False.
- each row's first label is -100. The loss shifts labels by one inside the flat sequence
  (transformers' ForCausalLMLoss: position t is scored against labels[t + 1]), so the last token of a row
  would otherwise be trained to predict the next row's first token. In an unpadded row alone the first
  label is never a target either, so this changes no trained token: packed trains exactly what unpacked trains.

Only architectures whose mask is built that way can be packed; ISOLATING lists the ones checked against
the installed transformers source (tests/test_packing.py keeps that true) and tested for GPT-2, Llama, and
Phi-3 and Gemma 3 with their real configs' sliding windows, rope and softcapping (tiny sizes).
This module imports no torch at import time: sft's validation check (stages/sft.py) reads `packing_problem`.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

from posttrain.data.collator import IGNORE_INDEX, SFTCollator
from posttrain.errors import RecipeError

# model_type -> the decoder passes position_ids to masking_utils' create_causal_mask (or its sliding-window
# twin) and takes positions from position_ids (learned or rotary), so restarting position_ids isolate rows.
# A sliding window counts within the row: create_sliding_window_causal_mask remaps token indices to the
# packed position_ids before applying the window, then ANDs the per-row mask (measured for phi3, gemma3).
# gemma3 (the 4B-27B image-text model) builds its image-block masks from token_type_ids, which SFT rows never
# carry; text rows take the same masks as gemma3_text. phi3 with longrope (the -128k models, Phi-3.5) picks
# its short/long factors from the longest row of a batch, padded or packed alike (packed = padded, tested).
ISOLATING = frozenset({
    "gpt2", "gpt_bigcode", "gptj", "codegen", "gpt_neox",
    "llama", "mistral", "qwen2", "qwen2_moe", "qwen3", "gemma", "gemma2", "gemma3", "gemma3_text", "smollm3",
    "olmo", "olmo2", "granite", "cohere", "phi", "phi3", "stablelm", "glm4", "helium", "deepseek_v3",
})
# Attention implementations that read the packed boundaries (see the module docstring).
ATTENTION = ("eager", "sdpa", "flash_attention_2", "flash_attention_3")
# Why other architectures cannot isolate rows, for the refusal.
KNOWN_NOT = {
    "opt": "its causal mask is built without position_ids",
    "bloom": "ALiBi position bias is computed from the attention mask, not position_ids",
    "falcon": "ALiBi position bias is computed from the attention mask, not position_ids",
    "mpt": "ALiBi position bias is computed from the attention mask, not position_ids",
}


class PackedCollator(SFTCollator):
    """Concatenate a batch's rows into one sequence: input_ids, labels and position_ids of shape [1, total].

    pad_to_multiple_of pads the tail with a dummy row (pad ids, labels -100, its own positions from 0), so
    no real row attends to the padding.
    """

    def __call__(self, features: list[dict]):
        import torch

        ids, labels, positions = [], [], []
        for f in features:
            ids.extend(f["input_ids"])
            labels += [IGNORE_INDEX, *f["labels"][1:]]  # the first is never a target of the previous row's last token
            positions.extend(range(len(f["input_ids"])))
        total = len(ids)
        if self.pad_to_multiple_of:
            extra = -total % self.pad_to_multiple_of
            ids.extend([self.pad_token_id] * extra)
            labels.extend([IGNORE_INDEX] * extra)
            positions.extend(range(extra))
        as_row = lambda v: torch.tensor([v], dtype=torch.long)  # noqa: E731
        return {"input_ids": as_row(ids), "labels": as_row(labels), "position_ids": as_row(positions)}


# ---------------------------------------------------------------------------------------------
# Segment-wise sdpa: the same isolation without a [total x total] mask.
#
# With plain sdpa, transformers materialises a block-diagonal mask over the whole pack and attends
# [total x total]: attention grows with the square of the pack, so on this CPU a pack of 8 rows was slower
# than padding them (bench/packing.py). SEGMENT_SDPA is a registered attention implementation (transformers'
# AttentionInterface, no patching) that runs sdpa causally on each row of the pack, as the flash varlen
# kernel does on GPU: cost sum(n_i^2) instead of total^2. Its mask function skips building the packed
# mask only where that mask would be causal-per-row; anything else (a padding mask, a cache offset, custom
# mask functions) gets the ordinary sdpa mask and attention.

SEGMENT_SDPA = "posttrain_segment_sdpa"


def _segment_mask(*args, attention_mask=None, q_length=None, kv_length=None, q_offset=0, kv_offset=0,
                  use_vmap=False, **kwargs):
    from transformers.masking_utils import sdpa_mask

    if attention_mask is None and q_length == kv_length and not use_vmap and not q_offset and not kv_offset:
        return None  # causal within each row: _segment_sdpa splits the rows by position_ids
    return sdpa_mask(*args, attention_mask=attention_mask, q_length=q_length, kv_length=kv_length,
                     q_offset=q_offset, kv_offset=kv_offset, use_vmap=use_vmap, **kwargs)


def _segment_sdpa(module, query, key, value, attention_mask, position_ids=None, **kwargs):
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if attention_mask is not None or query.shape[2] != key.shape[2]:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    if position_ids is None:
        raise RuntimeError(f"{SEGMENT_SDPA}: the model passed no position_ids to attention; cannot find the rows")
    step = torch.diff(position_ids, dim=-1) != 1
    if not step.any():
        return sdpa_attention_forward(module, query, key, value, None, **kwargs)
    if query.shape[0] != 1:
        raise RuntimeError(f"{SEGMENT_SDPA}: packed rows must be flattened into one sequence (batch size 1)")
    starts = [0, *(step[0].nonzero().view(-1) + 1).tolist(), query.shape[2]]
    outs = [sdpa_attention_forward(module, query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], None, **kwargs)[0]
            for a, b in itertools.pairwise(starts)]
    return torch.cat(outs, dim=1), None


def use_segment_sdpa(model) -> bool:
    """Switch a model on sdpa to SEGMENT_SDPA for packed training; False (unchanged) where its masks are not
    plain causal (sliding-window layers) or it is not on sdpa."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    cfg = model.config
    text = cfg.get_text_config()  # an image-text model (gemma3) keeps its sliding window in text_config
    layer_types = getattr(text, "layer_types", None) or ["?"]  # none listed: a sliding window may apply anywhere
    sliding = getattr(text, "sliding_window", None) and any(t != "full_attention" for t in layer_types)
    if cfg._attn_implementation != "sdpa" or sliding:
        return False
    AttentionInterface.register(SEGMENT_SDPA, _segment_sdpa)
    AttentionMaskInterface.register(SEGMENT_SDPA, _segment_mask)
    model.set_attn_implementation(SEGMENT_SDPA)
    return True


# ---------------------------------------------------------------------------------------------
# For validation (no torch): the model's config says whether packed rows stay apart.

def model_type(model: dict) -> str | None:
    """The model's `model_type` from its config.json (a local directory, or the hub cache); None if unknown."""
    if model.get("gguf_file"):
        return None
    path = Path(model["name_or_path"])
    cfg = path / "config.json"
    if not cfg.is_file() and not path.exists():
        try:
            from huggingface_hub import try_to_load_from_cache

            found = try_to_load_from_cache(model["name_or_path"], "config.json", revision=model.get("revision"))
            cfg = Path(found) if isinstance(found, str) else None
        except Exception:  # not a hub id either: loading the model will say so
            cfg = None
    try:
        return json.loads(cfg.read_text()).get("model_type") if cfg and cfg.is_file() else None
    except (OSError, ValueError):
        return None


def packing_problem(kind: str | None, attn: str | None) -> str | None:
    """Why rows packed for this architecture/attention would attend to each other; None if they cannot."""
    if attn and attn not in ATTENTION:
        return (f"attention implementation '{attn}' is not known to keep packed rows apart "
                f"(use one of {', '.join(ATTENTION)})")
    if kind is not None and kind not in ISOLATING:
        why = KNOWN_NOT.get(kind, "not among the architectures checked to build their masks from position_ids")
        return f"model type '{kind}' cannot keep packed rows apart ({why}); packing supports {', '.join(sorted(ISOLATING))}"
    return None


def check_model(loaded) -> None:
    """The same check on a loaded model (its config is known only now for GGUF or an uncached hub id)."""
    cfg = loaded.config
    problem = packing_problem(getattr(cfg, "model_type", None), getattr(cfg, "_attn_implementation", None))
    if problem:
        raise RecipeError(f"training.packing: {problem}")
