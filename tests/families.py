"""Tiny random models of the families the shipped recipes train (Llama 3, Qwen 3, Gemma 3, SmolLM3, Mistral, Phi-4),
each built from the published config of a real size (posttrain/configs) shrunk to a few hundred thousand parameters,
and a tokenizer with its family's special tokens and chat format.

Shrinking keeps what the recipes depend on: the config class and model_type, grouped-query attention (fewer kv
heads than query heads, in the real ratio where it fits), tied or untied embeddings, the rope settings (llama3
scaling, Phi's partial rotary factor, SmolLM3's rope-less layers, Gemma 3's local/global rope bases), Gemma 3's
sliding-window layers (one local, one global) and the module names LoRA targets. Widths, depth, window and
vocabulary become tiny. Nothing touches the network.

    .venv/bin/python tests/families.py /tmp/families      # writes one model directory per published config
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import tiny

from posttrain import chat_templates
from posttrain.models import CONFIGS_DIR

HEAD_DIM = 16
WINDOW = 16  # tokens: short enough that the tests' rows cross it


@dataclasses.dataclass(frozen=True)
class Family:
    configs: tuple[str, ...]  # posttrain/configs/<name>.json of the sizes the recipes train
    special: tuple[str, ...]  # the family's special tokens (model cards / tokenizer_config.json)
    bos: str | None
    eos: str  # the chat model's end of turn: what generation stops on, trained at the end of every answer
    pad: str | None
    trained: str  # what a two-turn conversation answering "2" then "4" trains, decoded
    added: tuple[str, ...] = ()  # tokens of the vocabulary that are not special (the reasoning markers)


# The chat format is the shipped template of the family's name (posttrain/recipes/templates, written from the
# published formats): what the hub tokenizers carry, reduced to role/content turns.
FAMILIES = {
    "llama3": Family(("llama-3.2-1b", "llama-3.2-3b", "llama-3.1-8b"),
                     ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
                     "<|begin_of_text|>", "<|eot_id|>", None, "2<|eot_id|>4<|eot_id|>"),
    # Qwen 3 thinks: every answer carries its (here empty) think block, trained with it
    "qwen3": Family(("qwen3-0.6b", "qwen3-1.7b", "qwen3-8b"), ("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
                    None, "<|im_end|>", "<|endoftext|>",
                    "<think>\n\n</think>\n\n2<|im_end|>\n<think>\n\n</think>\n\n4<|im_end|>\n", ("<think>", "</think>")),
    "gemma3": Family(("gemma-3-1b", "gemma-3-4b"), ("<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>",
                                                    "<start_of_image>", "<end_of_image>", "<image_soft_token>"),
                     "<bos>", "<end_of_turn>", "<pad>", "2<end_of_turn>\n4<end_of_turn>\n"),
    "smollm3": Family(("smollm3-3b",), ("<|im_start|>", "<|im_end|>", "<|finetune_right_pad_id|>"),
                      None, "<|im_end|>", "<|finetune_right_pad_id|>", "2<|im_end|>\n4<|im_end|>\n", ("<think>", "</think>")),
    "mistral": Family(("mistral-7b-v0.3",), ("<s>", "</s>", "[INST]", "[/INST]"), "<s>", "</s>", None, " 2</s> 4</s>"),
    "phi4": Family(("phi-4-mini",), ("<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"),
                   None, "<|end|>", "<|endoftext|>", "2<|end|>4<|end|>"),
}


def family_of(config: str) -> str:
    return next(name for name, f in FAMILIES.items() if config in f.configs)


def make_tokenizer(base: Path, family: str, out: Path):
    """The tiny byte-level BPE tokenizer (tiny.py) with the family's special tokens, roles and chat format."""
    from transformers import AutoTokenizer

    f = FAMILIES[family]
    tok = AutoTokenizer.from_pretrained(base)
    tok.add_special_tokens({"additional_special_tokens": list(f.special)})
    tok.add_tokens(list(f.added))
    tok.bos_token, tok.eos_token, tok.pad_token = f.bos, f.eos, f.pad
    tok.chat_template = chat_templates.text(family)
    tok.save_pretrained(out)
    return tok


def shrink(config: str, tok) -> dict:
    """The published config's fields with tiny sizes, and the tokenizer's ids for its special tokens. A model with
    a vision tower (Gemma 3 4B) keeps one, tiny: its recipes train text, but the model they load holds both."""
    fields = json.loads((CONFIGS_DIR / f"{config}.json").read_text(encoding="utf-8"))
    fields.pop("_hub_names")
    if "text_config" in fields:
        fields["text_config"] = _shrink_text(fields["text_config"], tok)
        fields["vision_config"].update(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                       image_size=28, patch_size=14)
        ids = tok.convert_tokens_to_ids
        fields.update(mm_tokens_per_image=4, boi_token_index=ids("<start_of_image>"), eoi_token_index=ids("<end_of_image>"),
                      image_token_index=ids("<image_soft_token>"), bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        return fields
    return _shrink_text(fields, tok)


def _shrink_text(fields: dict, tok) -> dict:
    fields = dict(fields)
    ratio = fields["num_attention_heads"] // fields["num_key_value_heads"]
    kv = 1 if fields["num_key_value_heads"] == 1 else 2
    heads = kv * ratio
    fields.update(hidden_size=heads * HEAD_DIM, head_dim=HEAD_DIM, num_attention_heads=heads, num_key_value_heads=kv,
                  intermediate_size=2 * heads * HEAD_DIM, num_hidden_layers=2, vocab_size=len(tok),
                  bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    if fields["model_type"] == "gemma3_text":  # one local (sliding) and one global layer, as 5:1 in the real model
        fields.update(sliding_window=WINDOW, sliding_window_pattern=2, query_pre_attn_scalar=HEAD_DIM)
    if fields["model_type"] == "smollm3":  # a rope-less layer every 4th layer in the real one: the second here
        fields.update(no_rope_layer_interval=2)
    return fields


def make_model(config: str, out: Path, base: Path, seed: int = 0) -> Path:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    tok = make_tokenizer(base, family_of(config), out)
    fields = shrink(config, tok)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(fields.pop("model_type"), **fields))
    model.save_pretrained(out)
    return out


class Models:
    """Built on first use, one directory per published config (a session fixture holds one)."""

    def __init__(self, root: Path):
        self.root, self.built = Path(root), {}

    @property
    def base(self) -> Path:
        if not (self.root / "base").is_dir():
            tiny.make_tokenizer(self.root / "base")
        return self.root / "base"

    def __call__(self, config: str) -> Path:
        if config not in self.built:
            self.built[config] = make_model(config, self.root / config, self.base)
        return self.built[config]


if __name__ == "__main__":
    models = Models(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/families"))
    for f in FAMILIES.values():
        for c in f.configs:
            print(f"{c}: {models(c)}")
