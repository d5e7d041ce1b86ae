"""Exact prompt masking for SFT.

Each row is split into segments (formats.py). Every segment is tokenized on its own and the ids are
concatenated, so the prompt/response boundary is exact: BPE never merges a prompt's trailing space
into the first response token (TRL's `completion_only_loss` tokenizes prompt+completion together
and then masks len(tok(prompt)) tokens, which drops that token from training). Single-turn rows get
EOS appended and trained. Labels are -100 on prompt tokens; padding is masked by position in the
collator, never by token id, so EOS is trained even when pad == eos (GPT-2).
"""

from __future__ import annotations

import logging
import math

from posttrain.data.formats import get, resolve_columns, segments
from posttrain.errors import DataError

IGNORE_INDEX = -100
log = logging.getLogger("posttrain")


def _ids(tokenizer, texts: list[str], special: bool) -> list[list[int]]:
    return tokenizer(texts, add_special_tokens=special)["input_ids"] if texts else []


def encode_batch(rows: list[dict], fmt: str, cols: dict, tokenizer, max_length: int, *, train_on: str = "assistant",
                 template: str | dict | None = None, max_prompt_length: int | None = None) -> list[dict | None]:
    """Tokenize rows into {input_ids, labels, n_prompt, status}; None for a row with an empty/null field.

    status is "ok", "truncated" (cut to max_length, some response trained) or "prompt" (the prompt
    alone fills max_length: nothing to train, the caller drops the row). A format that splits long rows
    (text) is never cut: its dict also holds `chunks`, [{input_ids, labels}, ...] of at most max_length
    tokens each that together hold every token of the row (status "split" when there are several; a last
    chunk of one token, which no position predicts, is left out), and input_ids/labels are the first chunk.
    max_prompt_length: a prompt (the tokens before the first trained one) longer than it loses its start
    (`prompt_cut` true), before the row is measured against max_length, so the response keeps its room.

    All segments of a batch are tokenized in two calls (first segments with the tokenizer's special
    tokens such as BOS, the rest without), then reassembled per row. train_on and template: see
    formats.segments.
    """
    spec = get(fmt)
    chat = (template or spec.templates[0]) == "chat" or any(isinstance(r.get(cols.get("prompt", "")), list)
                                                         for r in rows)
    eos = tokenizer.eos_token_id
    if eos is None and not chat:
        raise DataError("the tokenizer has no EOS token; set one (tokenizer eos_token) so responses can end")
    segs = [segments(r, fmt, cols, tokenizer, train_on=train_on, template=template) for r in rows]
    firsts, rest = [], []
    for s in segs:
        if s:
            firsts.append(s[0][0])
            rest.extend(t for t, _ in s[1:])
    # Chat templates write their own special tokens; plain templates get the tokenizer's (e.g. BOS).
    first_ids, rest_ids = iter(_ids(tokenizer, firsts, special=not chat)), iter(_ids(tokenizer, rest, False))
    out = []
    for s in segs:
        if not s:
            out.append(None)
            continue
        input_ids, labels = [], []
        for i, (_, trained) in enumerate(s):
            ids = list(next(first_ids) if i == 0 else next(rest_ids))
            if i == 0 and not chat and len(ids) > 1 and ids[-1] == eos:
                ids = ids[:-1]  # a tokenizer that appends EOS to every text: the prompt must not end the row
            input_ids += ids
            labels += ids if trained else [IGNORE_INDEX] * len(ids)
        if not chat:
            input_ids.append(eos)
            labels.append(eos)
        n_prompt = next((i for i, lab in enumerate(labels) if lab != IGNORE_INDEX), len(labels))
        prompt_cut = max_prompt_length is not None and n_prompt > max_prompt_length
        if prompt_cut:
            input_ids, labels = input_ids[n_prompt - max_prompt_length:], labels[n_prompt - max_prompt_length:]
            n_prompt = max_prompt_length
        if spec.split_long_rows:
            starts = [a for a in range(0, len(input_ids), max_length) if a == 0 or len(input_ids) - a > 1]
            chunks = [{"input_ids": input_ids[a:a + max_length], "labels": labels[a:a + max_length]} for a in starts]
            out.append({**chunks[0], "n_prompt": n_prompt, "status": "split" if len(chunks) > 1 else "ok",
                        "chunks": chunks})
            continue
        status = "truncated" if len(input_ids) > max_length else "ok"
        input_ids, labels = input_ids[:max_length], labels[:max_length]
        if all(lab == IGNORE_INDEX for lab in labels):
            status = "prompt"
        out.append({"input_ids": input_ids, "labels": labels, "n_prompt": n_prompt, "status": status,
                    "prompt_cut": prompt_cut})
    return out


def tokenize_dataset(ds, fmt: str, tokenizer, max_length: int, source: str, num_proc: int | None = None, *,
                     train_on: str = "assistant", template: str | dict | None = None,
                     max_prompt_length: int | None = None):
    """Map a dataset to {input_ids, labels}; rows with nothing to train are dropped and counted.

    Returns (dataset, stats) where stats counts rows kept, dropped for an empty/null field, dropped
    because the prompt alone fills max_length, truncated, and (with max_prompt_length) whose prompt was cut
    (prompt_truncated). A format that splits long rows (text) gives one training row per chunk: its stats count
    documents (rows, kept), those split, and chunks.
    """
    cols = resolve_columns(ds.column_names, fmt, source, template)
    split = get(fmt).split_long_rows

    def fn(batch):
        rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
        enc = encode_batch(rows, fmt, cols, tokenizer, max_length, train_on=train_on, template=template,
                           max_prompt_length=max_prompt_length)
        # one row per chunk of a split row (its first carries the row's status, the others "chunk"), else per row
        out = {"input_ids": [], "labels": [], "_status": [], "_cut": []}
        for e in enc:
            for i, c in enumerate(e.get("chunks", [e]) if e else [{"input_ids": [], "labels": []}]):
                out["input_ids"].append(c["input_ids"])
                out["labels"].append(c["labels"])
                out["_status"].append("empty" if e is None else e["status"] if i == 0 else "chunk")
                out["_cut"].append(bool(e and e.get("prompt_cut")))
        return out

    mapped = ds.map(fn, batched=True, remove_columns=ds.column_names, num_proc=num_proc, desc=f"Tokenizing {source}")
    status = mapped["_status"]
    stats = {
        "rows": len(status) - status.count("chunk"),
        "kept": sum(s in ("ok", "truncated", "split") for s in status),
        "truncated": status.count("truncated"),
        "dropped_empty_field": status.count("empty"),
        "dropped_prompt_too_long": status.count("prompt"),
    }
    if max_prompt_length is not None:
        stats["prompt_truncated"] = sum(mapped["_cut"])
    if split:
        stats.update(split=status.count("split"), chunks=sum(s in ("ok", "split", "chunk") for s in status))
    mapped = mapped.filter(lambda s: s in ("ok", "truncated", "split", "chunk"),
                           input_columns="_status").remove_columns(["_status", "_cut"])
    dropped = stats["dropped_empty_field"] + stats["dropped_prompt_too_long"]
    if dropped:
        log.warning(
            "%s: dropped %d of %d rows (%d with an empty or null field, %d whose prompt alone fills max_length=%d)",
            source, dropped, stats["rows"], stats["dropped_empty_field"], stats["dropped_prompt_too_long"], max_length,
        )
    if stats.get("split"):
        log.info("%s: %d of %d documents longer than max_length=%d split into chunks (%d training rows)",
                 source, stats["split"], stats["kept"], max_length, stats["chunks"])
    if stats.get("prompt_truncated"):
        log.warning("%s: %d prompts longer than data.max_prompt_length=%d cut from the left (their end kept)",
                    source, stats["prompt_truncated"], max_prompt_length)
    if stats["truncated"]:
        log.warning("%s: %d rows truncated to max_length=%d (the end of their response is not trained)",
                    source, stats["truncated"], max_length)
    if stats["kept"] == 0:
        raise DataError(f"{source}: no row has a token to train after formatting (see the warning above)")
    return mapped, stats


class SFTCollator:
    """Pad pre-tokenized rows to the longest in the batch (optionally a multiple of N).

    attention_mask is 1 on each row's real positions; labels are -100 on padding positions. Masking
    is by position, so an EOS that is also the pad token is still trained.
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None):
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features: list[dict]):
        import torch

        m = self.pad_to_multiple_of or 1
        longest = math.ceil(max(len(f["input_ids"]) for f in features) / m) * m
        n = len(features)
        input_ids = torch.full((n, longest), self.pad_token_id, dtype=torch.long)
        labels = torch.full((n, longest), IGNORE_INDEX, dtype=torch.long)
        attention = torch.zeros((n, longest), dtype=torch.long)
        for i, f in enumerate(features):
            k = len(f["input_ids"])
            input_ids[i, :k] = torch.tensor(f["input_ids"], dtype=torch.long)
            labels[i, :k] = torch.tensor(f["labels"], dtype=torch.long)
            attention[i, :k] = 1
        return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}
