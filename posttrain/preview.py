"""`posttrain validate`'s label view: one training example with its masked and trained parts told apart."""

from __future__ import annotations

import sys

from posttrain.data.collator import IGNORE_INDEX, encode_batch
from posttrain.data.formats import resolve_columns
from posttrain.errors import PosttrainError
from posttrain.recipe import Recipe


def render_example(tokenizer, input_ids: list[int], labels: list[int], color: bool) -> str:
    """Decode runs of masked / trained tokens; colour them on a terminal, bracket them otherwise."""
    runs, start = [], 0
    for i in range(1, len(labels) + 1):
        if i == len(labels) or (labels[i] == IGNORE_INDEX) != (labels[start] == IGNORE_INDEX):
            runs.append((labels[start] == IGNORE_INDEX, tokenizer.decode(input_ids[start:i])))
            start = i
    parts = []
    for masked, text in runs:
        if color:
            parts.append(f"\033[2m{text}\033[0m" if masked else f"\033[1;32m{text}\033[0m")
        else:
            parts.append(f"[masked]{text}[/masked]" if masked else f"[trained]{text}[/trained]")
    return "".join(parts)


def preview(recipe: Recipe, out=None):
    out = out or sys.stdout
    from posttrain.models import load_tokenizer

    try:
        tokenizer = load_tokenizer(recipe.model)
    except PosttrainError as e:
        print(f"not checked: tokenizer and data ({e})", file=out)
        return
    from posttrain.data.mixture import preview_rows

    data = recipe.data
    try:
        ds, where = preview_rows(data)
        cols = resolve_columns(ds.column_names, data["format"], where)
    except PosttrainError as e:
        print(f"not checked: data ({e})", file=out)
        return
    if data["format"] in ("preference", "prompt"):  # TRL tokenizes these itself: show a checked row
        from posttrain.data.formats import clean_pairs_or_prompts

        try:
            cleaned, _ = clean_pairs_or_prompts(ds, data["format"], where, keep_extra=True)
        except PosttrainError as e:
            print(f"data problem: {e}", file=out)
            return
        row = cleaned[0]
        print(f"\nexample: first usable row of {where} ({data['format']} format)", file=out)
        for key, value in row.items():
            text = value if isinstance(value, str) else repr(value)
            n = len(tokenizer(text)["input_ids"]) if isinstance(value, str) else None
            print(f"  {key}: {text!r}" + (f"  ({n} tokens)" if n is not None else ""), file=out)
        return
    rows = [ds[i] for i in range(len(ds))]
    train_on = data.get("train_on") or "assistant"
    try:
        encoded = encode_batch(rows, data["format"], cols, tokenizer, data["max_length"], train_on=train_on,
                               template=data.get("template"))
    except PosttrainError as e:
        print(f"data problem: {e}", file=out)
        return
    pick = next((i for i, e in enumerate(encoded) if e and e["status"] != "prompt"), None)
    if pick is None:
        print(f"warning: none of the first {len(rows)} rows has a token to train (empty fields or prompts "
              f"longer than max_length={data['max_length']})", file=out)
        return
    e = encoded[pick]
    trained = sum(lab != IGNORE_INDEX for lab in e["labels"])
    color = getattr(out, "isatty", lambda: False)()
    legend = "dim = masked (-100), green = trained" if color else "[masked]..[/masked] = label -100, [trained]..[/trained] = loss"
    chatty = data["format"] == "messages" or data.get("template") == "chat"
    what = {"assistant": "assistant turns", "all": "every token", "last_assistant": "the last assistant turn"}
    trains = f"train_on: {train_on} ({what[train_on]})" if chatty else \
        ("train_on: all (prompt and response)" if train_on == "all" else "trains the response")
    print(f"\nexample: row {pick} of {where} ({len(e['input_ids'])} tokens: "
          f"{len(e['input_ids']) - trained} masked, {trained} trained; {trains}; {legend})", file=out)
    print(render_example(tokenizer, e["input_ids"], e["labels"], color), file=out)
