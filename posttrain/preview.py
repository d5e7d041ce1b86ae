"""`posttrain validate`'s label view: one training example with its masked and trained parts told apart."""

from __future__ import annotations

import sys

from posttrain import preflight
from posttrain.data import formats
from posttrain.data.collator import IGNORE_INDEX, encode_batch
from posttrain.data.formats import clean_pairs_or_prompts, resolve_columns
from posttrain.errors import PosttrainError, RecipeError
from posttrain.models import is_local_path, load_tokenizer
from posttrain.recipe import Recipe


def render_example(tokenizer, input_ids: list[int], labels: list[int], color: bool) -> str:
    """Decode runs of masked / trained tokens; colour them on a terminal, bracket them otherwise."""
    runs, start = [], 0
    for i in range(1, len(labels) + 1):
        if i == len(labels) or (labels[i] == IGNORE_INDEX) != (labels[start] == IGNORE_INDEX):
            runs.append((labels[start] == IGNORE_INDEX, tokenizer.decode(input_ids[start:i])))
            start = i
    if color:
        return "".join(f"\033[2m{text}\033[0m" if masked else f"\033[1;32m{text}\033[0m" for masked, text in runs)
    return "".join(f"[masked]{text}[/masked]" if masked else f"[trained]{text}[/trained]" for masked, text in runs)


def preview(recipe: Recipe, out=None):
    """Show one example as the stage will see it, from the rows the check pass read (recipe.samples; what it could
    not read, validate has said). A tokenizer that cannot be reached offline is said, not refused."""
    out = out or sys.stdout
    samples = recipe.samples
    name = recipe.model.get("tokenizer") or recipe.model["name_or_path"]
    try:
        tokenizer = load_tokenizer(recipe.model, eos_token=recipe.training.get("eos_token"))
    except PosttrainError as e:
        if isinstance(e, RecipeError) or is_local_path(name):
            raise
        print(f"not checked: tokenizer ({e})", file=out)
        return
    data = recipe.data
    train_on = data.get("train_on") or "assistant"
    supervised = formats.get(data["format"]).tokenized_by == "posttrain"  # else TRL tokenizes the rows

    def encode(sample):
        cols = resolve_columns(sample.rows.column_names, data["format"], sample.source, data.get("template"))
        return encode_batch([sample.rows[i] for i in range(len(sample.rows))], data["format"], cols, tokenizer,
                            data["max_length"], train_on=train_on, template=data.get("template"),
                            max_prompt_length=data.get("max_prompt_length"))

    if supervised:  # every source's rows must format for SFT; the first one is shown
        for s in samples[1:]:
            if s.rows is not None:
                encode(s)
    first = samples[0] if samples else None
    if first is None or first.rows is None:
        return
    shown = f"{first.key} ({first.source})" if "[" in first.key else first.source  # a mixture's entry by index
    if not supervised:  # TRL tokenizes these itself: show a checked row
        with preflight.quiet():
            cleaned, _ = clean_pairs_or_prompts(first.rows, data["format"], first.source, keep_extra=True)
        row = cleaned[0]
        print(f"\nexample: first usable row of {shown} ({data['format']} format)", file=out)
        for key, value in row.items():
            text = value if isinstance(value, str) else repr(value)
            n = len(tokenizer(text)["input_ids"]) if isinstance(value, str) else None
            print(f"  {key}: {text!r}" + (f"  ({n} tokens)" if n is not None else ""), file=out)
        return
    encoded = encode(first)
    pick = next((i for i, e in enumerate(encoded) if e and e["status"] != "prompt"), None)
    if pick is None:
        print(f"warning: none of the first {len(encoded)} rows has a token to train (empty fields or prompts "
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
    if "chunks" in e:  # text: every token trained; a long document is split, never cut
        n = sum(len(c["input_ids"]) for c in e["chunks"])
        trains = "every token trained, EOS appended" + (
            f"; a document of {n} tokens, split into {len(e['chunks'])} chunks of max_length={data['max_length']}: "
            f"the first is shown" if len(e["chunks"]) > 1 else "")
    print(f"\nexample: row {pick} of {shown} ({len(e['input_ids'])} tokens: "
          f"{len(e['input_ids']) - trained} masked, {trained} trained; {trains}; {legend})", file=out)
    print(render_example(tokenizer, e["input_ids"], e["labels"], color), file=out)
