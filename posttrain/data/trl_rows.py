"""Rows TRL tokenizes itself — preference pairs and prompts — for every stage that trains on them:
loaded and cleaned here, measured against `data.max_length`, and what TRL dropped counted."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from posttrain.data.formats import clean_pairs_or_prompts
from posttrain.data.mixture import label, load_splits
from posttrain.errors import DataError

if TYPE_CHECKING:
    from posttrain.recipe import Recipe

log = logging.getLogger("posttrain")


def load_pairs(recipe: Recipe, args, keep_extra: bool = False):
    """Train/eval preference (or prompt) rows, checked and cleaned, main process first."""
    data = recipe.data
    with args.main_process_first(desc="checking the dataset"):
        train, eval_ds, sources = load_splits(data, seed=args.seed)
        stats = {}
        train, stats["train"] = clean_pairs_or_prompts(train, data["format"], label(data), keep_extra)
        if eval_ds is not None:
            where = label(data, "eval" if data.get("eval") else "train")
            eval_ds, stats["eval"] = clean_pairs_or_prompts(eval_ds, data["format"], where, keep_extra)
        stats["sources"] = sources  # per source: rows read, kept, dropped, taken (the manifest's data.sources)
    return train, eval_ds, stats


def count_dropped_by_trl(trainer, stats: dict):
    """TRL drops (does not truncate) pairs longer than max_length: record how many, and warn."""
    for split, ds in (("train", trainer.train_dataset), ("eval", trainer.eval_dataset)):
        if split in stats and ds is not None:
            over = stats[split]["kept"] - len(ds)
            stats[split].update(dropped_over_max_length=over, kept=len(ds))
            if over:
                log.warning("%s split: %d pairs longer than max_length=%d were dropped by TRL",
                            split, over, trainer.args.max_length)
    if not len(trainer.train_dataset):
        raise DataError(f"no training pair fits max_length={trainer.args.max_length}; raise data.max_length")


def prompt_ids(prompts: list, tokenizer, template_kwargs: list | None = None) -> list[list[int]]:
    """Token ids of prompts as the policy sees them: chat prompts through the template with its
    generation prompt (and each row's `chat_template_kwargs`, as TRL passes them), plain ones as the
    tokenizer encodes text."""
    if prompts and isinstance(prompts[0], list):
        if getattr(tokenizer, "chat_template", None) is None:
            raise DataError("prompts are chat messages but the tokenizer has no chat template; "
                            "use plain-text prompts or a model with a chat template")
        kwargs = template_kwargs or [None] * len(prompts)
        texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True,
                                               **{a: v for a, v in (k or {}).items() if v is not None})
                 for p, k in zip(prompts, kwargs)]
        return tokenizer(texts, add_special_tokens=False)["input_ids"]
    return tokenizer(list(prompts))["input_ids"]


def drop_long_prompts(ds, tokenizer, max_length: int, stats: dict, split: str, *, keep_ids: bool = False,
                      num_proc: int | None = None):
    """Drop prompts longer than max_length tokens (a cut prompt is a different question), counted in
    stats. keep_ids: return only `input_ids` (PPO wants pre-tokenized prompts). num_proc: data.num_proc."""
    n = len(ds)
    cols = ["prompt"] + (["chat_template_kwargs"] if "chat_template_kwargs" in ds.column_names else [])
    if keep_ids:
        ds = ds.map(lambda prompts, *kw: {"input_ids": prompt_ids(prompts, tokenizer, *kw)}, input_columns=cols,
                    batched=True, remove_columns=ds.column_names, num_proc=num_proc, desc=f"Tokenizing {split} prompts")
        ds = ds.filter(lambda ids: [len(i) <= max_length for i in ids], input_columns="input_ids", batched=True,
                       num_proc=num_proc, desc=f"Measuring {split} prompts")
    else:
        ds = ds.filter(lambda prompts, *kw: [len(i) <= max_length for i in prompt_ids(prompts, tokenizer, *kw)],
                       input_columns=cols, batched=True, num_proc=num_proc, desc=f"Measuring {split} prompts")
    stats.update(dropped_over_max_length=n - len(ds), kept=len(ds))
    if n - len(ds):
        log.warning("%s split: %d of %d prompts longer than data.max_length=%d tokens were dropped",
                    split, n - len(ds), n, max_length)
    return ds
