"""Row formats: turn one dataset row into text segments, each either masked (prompt) or trained.

alpaca             {instruction, input (optional), output | response} -> classic Alpaca template
prompt_completion  {prompt, completion}
messages           {messages: [{role, content}, ...]} -> chat template, loss on assistant turns only
(preference {prompt?, chosen, rejected}, unpaired {prompt, completion, label} and prompt {prompt} rows are
tokenized by TRL; clean_pairs_or_prompts checks them)
"""

from __future__ import annotations

from posttrain.errors import DataError

# The classic Stanford Alpaca templates, verbatim.
ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)

# format -> (required columns, alternatives accepted for a column)
COLUMNS = {
    "alpaca": (("instruction", "output"), {"output": ("output", "response")}),
    "prompt_completion": (("prompt", "completion"), {}),
    "messages": (("messages",), {}),
    "preference": (("chosen", "rejected"), {}),
    "unpaired": (("prompt", "completion", "label"), {}),  # KTO: one completion, desirable (true) or not
    "prompt": (("prompt",), {}),
}


def resolve_columns(column_names: list[str], fmt: str, source: str) -> dict[str, str]:
    """Map each column the format needs to the column that holds it; clear error if one is missing."""
    required, alternatives = COLUMNS[fmt]
    found = {}
    for col in required:
        options = alternatives.get(col, (col,))
        hit = next((c for c in options if c in column_names), None)
        if hit is None:
            need = " or ".join(f"'{c}'" for c in options)
            raise DataError(
                f"{source}: format '{fmt}' needs a column {need}; columns found: {', '.join(column_names)} "
                f"(rename with data.column_map)"
            )
        found[col] = hit
    if fmt == "alpaca" and "input" in column_names:
        found["input"] = "input"
    return found


def alpaca_prompt(instruction: str, input_text: str | None = None) -> str:
    if input_text and input_text.strip():
        return ALPACA_WITH_INPUT.format(instruction=instruction, input=input_text)
    return ALPACA_NO_INPUT.format(instruction=instruction)


def _text(value) -> str | None:
    """A usable text field, or None for null/empty."""
    if value is None or (isinstance(value, float) and value != value):  # null or NaN
        return None
    if not isinstance(value, str):
        value = str(value)
    return value if value.strip() else None


def segments(row: dict, fmt: str, cols: dict[str, str], tokenizer=None) -> list[tuple[str, bool]] | None:
    """[(text, trained), ...] for one row, or None when a required field is empty/null (row is skipped).

    Single-turn formats end with the response; the caller appends EOS. Chat segments come from the
    chat template and already hold the end-of-turn tokens.
    """
    if fmt == "alpaca":
        instruction, output = _text(row[cols["instruction"]]), _text(row[cols["output"]])
        if instruction is None or output is None:
            return None
        input_text = row.get(cols["input"]) if "input" in cols else None
        return [(alpaca_prompt(instruction, _text(input_text)), False), (output, True)]
    if fmt == "prompt_completion":
        prompt, completion = row[cols["prompt"]], row[cols["completion"]]
        if isinstance(prompt, list) or isinstance(completion, list):
            return chat_segments(list(prompt) + list(completion), tokenizer, n_prompt=len(prompt),
                                 template_kwargs=row.get("chat_template_kwargs"))
        prompt, completion = _text(prompt), _text(completion)
        if prompt is None or completion is None:
            return None
        return [(prompt, False), (completion, True)]
    if fmt == "messages":
        return chat_segments(row[cols["messages"]], tokenizer, template_kwargs=row.get("chat_template_kwargs"))
    raise DataError(f"format '{fmt}' is not a supervised fine-tuning format")


def chat_segments(messages, tokenizer, n_prompt: int = 0, template_kwargs: dict | None = None
                  ) -> list[tuple[str, bool]] | None:
    """Split a rendered conversation into masked and trained parts, one assistant turn at a time.

    Each assistant turn's text is what the template adds between "history + generation prompt" and
    "history + this turn" — so the trained text is exactly what the model must generate.
    Turns before index n_prompt are never trained. template_kwargs: the row's `chat_template_kwargs`
    column (e.g. {enable_thinking: false}), passed to the template as TRL does.
    """
    if not isinstance(messages, list) or not messages:
        return None
    if getattr(tokenizer, "chat_template", None) is None:
        raise DataError("format 'messages' needs a tokenizer with a chat template; this tokenizer has none")
    for m in messages:
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise DataError(f"a messages row must be a list of {{role, content}} mappings, got {m!r:.80}")

    if template_kwargs is not None and not isinstance(template_kwargs, dict):
        raise DataError(f"column 'chat_template_kwargs': expected a mapping of template options, got {template_kwargs!r:.80}")
    # None: a key another row set (datasets merges the rows' mappings into one struct type)
    extra = {k: v for k, v in (template_kwargs or {}).items() if v is not None}

    def render(msgs, gen):
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen, **extra)

    out, done = [], ""
    for i, m in enumerate(messages):
        if m["role"] != "assistant" or i < n_prompt:
            continue
        if _text(m["content"]) is None:
            return None
        head = render(messages[:i], True)
        full = render(messages[: i + 1], False)
        if not head.startswith(done) or not full.startswith(head):
            raise DataError(
                "the chat template does not render conversations as growing prefixes, so assistant turns "
                "cannot be masked exactly; use format prompt_completion instead"
            )
        out.append((head[len(done):], False))
        out.append((full[len(head):], True))
        done = full
    return out or None


def _filled(value) -> bool:
    if isinstance(value, list):  # conversational: a non-empty list of messages
        return bool(value)
    return _text(value) is not None


def clean_pairs_or_prompts(ds, fmt: str, source: str, keep_extra: bool = False):
    """For the formats TRL tokenizes itself (preference, prompt): check columns, rename to the names
    TRL expects, drop rows with an empty/null field (counted). Returns (dataset, stats).

    keep_extra keeps the other columns (GRPO/RLOO reward functions read them, e.g. a reference answer).
    """
    cols = resolve_columns(ds.column_names, fmt, source)
    if fmt == "preference" and "prompt" in ds.column_names:
        cols["prompt"] = "prompt"
    kept = ["chat_template_kwargs"] if "chat_template_kwargs" in ds.column_names else []  # TRL reads it per row
    renames = {src: dst for dst, src in cols.items() if src != dst}
    if renames:
        ds = ds.rename_columns(renames)
    needed = list(cols)
    if not keep_extra:
        ds = ds.select_columns(needed + kept)
    n = len(ds)
    ds = ds.filter(lambda *vals: all(_filled(v) for v in vals), input_columns=needed, desc=f"Checking {source}")
    stats = {"rows": n, "kept": len(ds), "dropped_empty_field": n - len(ds)}
    if stats["dropped_empty_field"]:
        import logging

        logging.getLogger("posttrain").warning("%s: dropped %d of %d rows with an empty or null field",
                                               source, stats["dropped_empty_field"], n)
    if len(ds) == 0:
        raise DataError(f"{source}: no usable row (every row has an empty or null {' / '.join(needed)})")
    return ds, stats
