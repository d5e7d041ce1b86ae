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


def load_pairs(recipe: Recipe, args, tokenizer, keep_extra: bool = False):
    """Train/eval preference (or prompt) rows, checked and cleaned, their prompts cut to data.max_prompt_length,
    main process first."""
    data = recipe.data
    with args.main_process_first(desc="checking the dataset"):
        train, eval_ds, sources = load_splits(data, seed=args.seed)
        stats = {}
        train, stats["train"] = clean_pairs_or_prompts(train, data["format"], label(data), keep_extra)
        if eval_ds is not None:
            where = label(data, "eval" if data.get("eval") else "train")
            eval_ds, stats["eval"] = clean_pairs_or_prompts(eval_ds, data["format"], where, keep_extra)
        if data.get("max_prompt_length"):
            train = cut_prompts(train, tokenizer, data["max_prompt_length"], stats["train"], "train", data.get("num_proc"))
            if eval_ds is not None:
                eval_ds = cut_prompts(eval_ds, tokenizer, data["max_prompt_length"], stats["eval"], "eval",
                                      data.get("num_proc"))
        stats["sources"] = sources  # per source: rows read, kept, dropped, taken (the manifest's data.sources)
    return train, eval_ds, stats


def _cut_text(text: str, tokenizer, n: int) -> str:
    """The end of a text prompt that the tokenizer encodes (with its special tokens) in at most n tokens."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    keep = n - (len(tokenizer(text)["input_ids"]) - len(ids))  # room left by BOS and the like
    while keep > 0:
        cut = tokenizer.decode(ids[-keep:])
        if len(prompt_ids([cut], tokenizer)[0]) <= n:  # decoding and encoding again may merge differently
            return cut
        keep -= 1
    return ""


def _cut_turns(turns: list[dict], tokenizer, n: int, kwargs: dict | None) -> list[dict]:
    """A conversation prompt that renders (with its generation prompt) in at most n tokens: its oldest turns after
    a system turn left out, then the start of the oldest one left cut."""
    head = turns[:1] if turns and turns[0]["role"] == "system" else []
    rest = turns[len(head):]
    size = lambda ts: len(prompt_ids([ts], tokenizer, [kwargs])[0])  # noqa: E731
    while len(rest) > 1 and size(head + rest) > n:
        rest = rest[1:]
    while rest and size(head + rest) > n:
        ids = tokenizer(str(rest[0]["content"]), add_special_tokens=False)["input_ids"]
        if not ids:
            break
        over = size(head + rest) - n
        rest = [{**rest[0], "content": tokenizer.decode(ids[min(len(ids), over):])}] + rest[1:]
    return head + rest


def cut_prompts(ds, tokenizer, n: int, stats: dict, split: str, num_proc: int | None = None):
    """Prompts longer than n tokens (as the policy sees them) cut from the left, keeping their end; counted in
    stats as prompt_truncated. The answers are untouched: they keep their room in max_length."""
    if "prompt" not in ds.column_names:
        raise DataError(f"{split} split: data.max_prompt_length bounds the prompt, and these rows have no prompt "
                        f"column (give the prompt apart from the answers)")
    has_kw = "chat_template_kwargs" in ds.column_names

    def fn(prompts, *kw):
        kws = kw[0] if kw else [None] * len(prompts)
        lengths = [len(i) for i in prompt_ids(prompts, tokenizer, list(kws))]
        out, cut = [], []
        for p, k, length in zip(prompts, kws, lengths):
            long = length > n
            if long:
                p = _cut_turns(p, tokenizer, n, k) if isinstance(p, list) else _cut_text(p, tokenizer, n)
            out.append(p)
            cut.append(long)
        return {"prompt": out, "_cut": cut}

    ds = ds.map(fn, input_columns=["prompt"] + (["chat_template_kwargs"] if has_kw else []), batched=True,
                num_proc=num_proc, desc=f"Bounding {split} prompts")
    cut = sum(ds["_cut"])
    stats["prompt_truncated"] = cut
    if cut:
        log.warning("%s split: %d of %d prompts longer than data.max_prompt_length=%d tokens were cut from the left",
                    split, cut, len(ds), n)
    return ds.remove_columns("_cut")


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
