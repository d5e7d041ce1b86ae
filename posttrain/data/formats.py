"""Row formats: what each data format is (FORMATS, the one registry, at the end of this module), and how
a row of one that posttrain tokenizes becomes text segments, each either masked (prompt) or trained.

alpaca             {instruction, input (optional), output | response} -> classic Alpaca template
prompt_completion  {prompt, completion}
text               {text} -> every token trained (continued pretraining); long rows split into chunks
messages           {messages: [{role, content}, ...]} -> chat template; sharegpt rows
                   ({conversations: [{from, value}, ...]}) are read as messages too
(preference {prompt?, chosen, rejected}, unpaired {prompt, completion, label} and prompt {prompt} rows are
tokenized by TRL; clean_pairs_or_prompts checks them. Their rows may be text or conversations; the loader
makes each row one shape (shape_row). A `system` column goes in front as a system turn wherever the row is a
conversation.)

`data.template` picks how rows are written (alpaca | raw | chat: through the tokenizer's chat template);
`data.train_on` picks which tokens of a conversation are trained.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

from jinja2.exceptions import TemplateError

from posttrain.errors import DataError

log = logging.getLogger("posttrain")

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

ROLES = ("system", "user", "assistant", "tool")


@dataclasses.dataclass(frozen=True)
class PromptFormat:
    """A custom prompt format, `data.template` given as a mapping: `prompt` and `no_input` are str.format strings
    whose fields are columns of the row (`{instruction}`, `{input}`, any other; `{system}` is the row's system
    column, filled by data.system_prompt where blank). `no_input` writes the rows whose fields named only in
    `prompt` are blank (an Alpaca row without input). The loader writes the text into the row's `prompt` column;
    the response stays the format's own column (alpaca's output, prompt_completion's completion, chosen/rejected)."""

    prompt: str
    no_input: str | None = None

    @staticmethod
    def fields(text: str) -> list[str]:
        """The named fields of a format string; a malformed one (a lone brace, a positional `{}`) is refused."""
        import string

        try:
            names = [f for _, f, _, _ in string.Formatter().parse(text) if f is not None]
        except ValueError as e:
            raise DataError(f"not a prompt format: {e} (write a literal brace as {{{{ or }}}})") from None
        bad = [f for f in names if not f or f.isdigit() or any(c in f for c in ".[")]
        if bad:
            raise DataError(f"field {{{bad[0]}}}: name a column, e.g. {{instruction}} (write a literal brace as {{{{)")
        return list(dict.fromkeys(names))

    @property
    def needed(self) -> list[str]:
        """Fields every row must fill (those of no_input, or of prompt when there is no no_input)."""
        return self.fields(self.no_input if self.no_input is not None else self.prompt)

    @property
    def optional(self) -> list[str]:
        return [f for f in self.fields(self.prompt) if f not in self.needed]

    def text(self, values: dict) -> str | None:
        """The prompt of one row; `values` holds its fields (blank or None where the row has nothing). None when a
        field every row must fill is blank (the row is dropped, as an Alpaca row without instruction)."""
        if any(_text(values.get(f)) is None for f in self.needed if f != "system"):
            return None
        blank = any(_text(values.get(f)) is None for f in self.optional)
        fmt = self.no_input if blank and self.no_input is not None else self.prompt
        return fmt.format_map({f: _text(values.get(f)) or "" for f in self.fields(fmt)})

    def render(self, ds, where: str):
        """A dataset with its `prompt` column written from the format (replacing one it had); a field that is no
        column, or a column of conversations, is refused."""
        fields = self.fields(self.prompt) + ([f for f in self.fields(self.no_input) if f not in self.fields(self.prompt)]
                                             if self.no_input is not None else [])
        missing = [f for f in self.needed if f not in ds.column_names and f != "system"]  # no system: blank
        if missing:
            raise DataError(f"{where}: data.template names field(s) {', '.join('{' + f + '}' for f in missing)}, "
                            f"which are not columns of the data (columns: {', '.join(ds.column_names)}; rename with "
                            f"column_map)")
        present = [f for f in fields if f in ds.column_names]
        first = ds[0] if len(ds) else {}
        chat = next((f for f in present if conversational(first.get(f))), None)
        if chat:
            raise DataError(f"{where}: column '{chat}' holds conversations; a prompt format writes text fields "
                            f"(use data.template: chat for conversations)")

        def fn(*columns):
            return {"prompt": [self.text(dict(zip(present, vals))) for vals in zip(*columns)]}

        used = ["system"] if "system" in present else []  # the system column went into the prompt
        return ds.map(fn, input_columns=present, batched=True, remove_columns=used, desc=f"Writing {where} prompts")


def prompt_format(template) -> PromptFormat | None:
    """data.template as a PromptFormat when it is a mapping, else None."""
    return PromptFormat(template["prompt"], template.get("no_input")) if isinstance(template, dict) else None


@dataclasses.dataclass(frozen=True)
class Format:
    """What one data format is; every part of posttrain reads it from FORMATS.

    A format that posttrain tokenizes needs `segments` (how a row is written as masked and trained text);
    one TRL tokenizes is only checked and renamed here (clean_pairs_or_prompts). Adding a format is adding
    an entry (and naming it in the `formats` of the stages that train it).
    """

    name: str
    required: tuple[str, ...]  # canonical column names a row must fill
    optional: tuple[str, ...] = ()  # used when the source has them, never required
    may_be_blank: tuple[str, ...] = ()  # columns a row may leave empty (others: the row is dropped)
    alternatives: tuple[tuple[str, tuple[str, ...]], ...] = ()  # canonical column -> source names accepted, in order
    templates: tuple[str, ...] = ("raw",)  # the ways `data.template` may write its rows; the first is the default
    mixable: tuple[str, ...] = ()  # other source formats a mixture may read into this one
    tokenized_by: str = "posttrain"  # "posttrain" (exact masking, data/collator.py) | "trl" (the trainer does)
    supervised: bool = False  # it has a prompt and a response: `data.train_on` chooses which tokens train
    # columns TRL renders that may hold text or conversations; the loader makes every row one shape
    turn_columns: tuple[str, ...] = ()
    # a row may instead be one conversation (`messages`/`conversations`) beside the other columns: its last
    # turn is the completion, the turns before it the prompt (LLaMA-Factory's KTO rows {messages, label})
    reads_messages: bool = False
    prompts_with: str | None = None  # the template `generate` prompts a model trained on it with
    reads_as: str | None = None  # a source-only format read into another's columns (sharegpt -> messages)
    split_long_rows: bool = False  # a row over data.max_length becomes consecutive chunks (else it is cut)
    segments: Callable | None = None  # segments(row, cols, tokenizer, train_on, template) -> [(text, trained)]
    as_messages: Callable | None = None  # as_messages(row, cols) -> the row as a conversation (messages mixtures)
    prompt_columns: tuple[str, ...] = ()  # what a prompt format (data.template mapping) writes as `prompt` instead

    def accepted(self, column: str) -> tuple[str, ...]:
        return dict(self.alternatives).get(column, (column,))

    @property
    def conversational(self) -> bool:
        return bool(self.turn_columns)

    @property
    def columns(self) -> tuple[str, ...]:
        return self.required + self.optional


def get(name: str) -> Format:
    if name not in FORMATS:
        raise DataError(f"unknown data format {name!r}; expected one of {', '.join(FORMATS)}")
    return FORMATS[name]


def resolve_columns(column_names: list[str], fmt: str, source: str, template=None) -> dict[str, str]:
    """Map each column the format needs to the column that holds it; clear error if one is missing.
    Optional columns are mapped when the source has them. With a prompt format (template a mapping) the
    prompt is the `prompt` column the loader wrote, in place of the format's own prompt columns."""
    spec = get(fmt)
    required, columns = spec.required, spec.columns
    if isinstance(template, dict) and spec.prompt_columns:
        required = ("prompt",) + tuple(c for c in required if c not in spec.prompt_columns)
        columns = required + tuple(c for c in spec.optional if c not in spec.prompt_columns)
    found = {}
    for col in columns:
        options = spec.accepted(col)
        hit = next((c for c in options if c in column_names), None)
        if hit is None and col in required:
            need = " or ".join(f"'{c}'" for c in options)
            raise DataError(f"{source}: format '{fmt}' needs a column {need}; columns found: {', '.join(column_names)} "
                            f"(rename with data.column_map)")
        if hit is not None:
            found[col] = hit
    return found


def source_columns(column_names, fmt: str, source: str, template=None) -> dict[str, str]:
    """resolve_columns for a source as the loader reads it: a format that reads messages rows
    (unpaired's {messages, label}) takes a conversation in place of its prompt and completion."""
    spec = get(fmt)
    conversation = next((c for c in ("messages", "conversations") if c in column_names), None)
    if spec.reads_messages and conversation and not any(c in column_names for c in spec.turn_columns):
        rest = [c for c in spec.required if c not in spec.turn_columns]
        found = resolve_columns([*column_names, *spec.turn_columns], fmt, source)
        return {"messages": conversation, **{c: found[c] for c in rest + list(spec.optional) if c in found
                                             and found[c] in column_names}}
    return resolve_columns(list(column_names), fmt, source, template)


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


def user_text(instruction: str, input_text: str | None = None) -> str:
    """An Alpaca instruction (and input) as one user message: what `generate --template chat` sends too."""
    return f"{instruction}\n\n{input_text}" if input_text and input_text.strip() else instruction


def segments(row: dict, fmt: str, cols: dict[str, str], tokenizer=None, *, train_on: str = "assistant",
             template: str | None = None) -> list[tuple[str, bool]] | None:
    """[(text, trained), ...] for one row, or None when a required field is empty/null (row is skipped).

    Single-turn formats end with the response; the caller appends EOS. Chat segments come from the
    chat template and already hold the end-of-turn tokens. train_on "all" trains the prompt too.
    """
    spec = get(fmt)
    if spec.segments is None:
        raise DataError(f"format '{fmt}' is not a format posttrain tokenizes (TRL does)")
    return spec.segments(row, cols, tokenizer, train_on, template)


def _system(row, cols, fmt: str, chat: bool) -> list[dict]:
    """The row's `system` column as a leading system turn ([] when absent or blank); refused where the row is
    written as text, which has no place for it."""
    system = _text(row.get(cols["system"])) if "system" in cols else None
    if system is None:
        return []
    if not chat:
        raise DataError(f"column '{cols['system']}': {fmt} rows written as text have no place for a system turn; "
                        f"use data.template: chat (or conversational rows), or rename the column with "
                        f"data.column_map to leave it out")
    return [{"role": "system", "content": system}]


def with_system(messages: list[dict], system: list[dict], column: str) -> list[dict]:
    """A system turn put in front of a conversation; one that already opens with another is refused."""
    if not system:
        return messages
    if messages and messages[0].get("role") == "system":
        if messages[0].get("content") == system[0]["content"]:
            return messages
        raise DataError(f"column 'system' and column '{column}' both give a system turn, and they differ "
                        f"({system[0]['content']!r:.40} vs {messages[0].get('content')!r:.40})")
    return system + messages


def _alpaca_segments(row, cols, tokenizer, train_on, template):
    if template == "chat":  # the row as one user and one assistant turn, as a messages mixture reads it
        return chat_segments(as_messages_row(row, "alpaca", cols), tokenizer, train_on=train_on,
                             template_kwargs=row.get("chat_template_kwargs"))
    _system(row, cols, "alpaca", chat=False)  # a system column is refused: text has no place for it
    if isinstance(template, dict):  # a prompt format: the loader wrote the prompt
        return _formatted(row, cols, "output", train_on)
    instruction, output = _text(row[cols["instruction"]]), _text(row[cols["output"]])
    if instruction is None or output is None:
        return None
    input_text = _text(row.get(cols["input"])) if "input" in cols else None
    return _single(alpaca_prompt(instruction, input_text), output, train_on)


def _formatted(row, cols, response: str, train_on):
    prompt, answer = _text(row[cols["prompt"]]), _text(row[cols[response]])
    return None if prompt is None or answer is None else _single(row[cols["prompt"]], answer, train_on)


def _prompt_completion_segments(row, cols, tokenizer, train_on, template):
    prompt, completion = row[cols["prompt"]], row[cols["completion"]]
    if isinstance(prompt, list) or isinstance(completion, list):
        prompt = with_system(list(prompt), _system(row, cols, "prompt_completion", True), cols["prompt"])
        return chat_segments(prompt + list(completion), tokenizer, n_prompt=len(prompt), train_on=train_on,
                             template_kwargs=row.get("chat_template_kwargs"))
    system = _system(row, cols, "prompt_completion", template == "chat")
    if isinstance(template, dict):
        return _formatted(row, cols, "completion", train_on)
    prompt, completion = _text(prompt), _text(completion)
    if prompt is None or completion is None:
        return None
    if template == "chat":
        msgs = system + [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
        return chat_segments(msgs, tokenizer, train_on=train_on, template_kwargs=row.get("chat_template_kwargs"))
    return _single(prompt, completion, train_on)


def _text_segments(row, cols, tokenizer, train_on, template):
    text = row[cols["text"]]
    return None if _text(text) is None else [(text, True)]


def _messages_segments(row, cols, tokenizer, train_on, template):
    return chat_segments(row[cols["messages"]], tokenizer, train_on=train_on,
                         template_kwargs=row.get("chat_template_kwargs"))


def _single(prompt: str, response: str, train_on: str) -> list[tuple[str, bool]]:
    return [(prompt, train_on == "all"), (response, True)]


def chat_segments(messages, tokenizer, n_prompt: int = 0, train_on: str = "assistant",
                  template_kwargs: dict | None = None) -> list[tuple[str, bool]] | None:
    """Split a rendered conversation into masked and trained parts, one assistant turn at a time.

    Each assistant turn's text is what the template adds between "history + generation prompt" and
    "history + this turn" — so the trained text is exactly what the model must generate.
    Turns before index n_prompt are never trained. train_on: "assistant" trains every assistant turn
    after n_prompt, "last_assistant" only the last one, "all" every token of the rendered conversation
    (TRL's default for conversational data). template_kwargs: the row's `chat_template_kwargs` column
    (e.g. {enable_thinking: false}), passed to the template as TRL does.
    """
    if not isinstance(messages, list) or not messages:
        return None
    if getattr(tokenizer, "chat_template", None) is None:
        raise DataError("chat rows need a tokenizer with a chat template; this tokenizer has none "
                        "(set model.chat_template)")
    for m in messages:
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise DataError(f"a messages row must be a list of {{role, content}} mappings, got {m!r:.80}")

    if template_kwargs is not None and not isinstance(template_kwargs, dict):
        raise DataError(f"column 'chat_template_kwargs': expected a mapping of template options, got {template_kwargs!r:.80}")
    # None: a key another row set (datasets merges the rows' mappings into one struct type)
    extra = {k: v for k, v in (template_kwargs or {}).items() if v is not None}

    def render(msgs, gen):
        try:
            return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen, **extra)
        except TemplateError as e:  # the template's raise_exception(), e.g. a role it does not render
            raise DataError(f"the chat template cannot render this conversation: {e}") from None

    if train_on == "all":
        if not any(m["role"] == "assistant" and _text(m["content"]) is not None for m in messages[n_prompt:]):
            return None
        return [(render(messages, False), True)]
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant" and i >= n_prompt]
    if train_on == "last_assistant":
        turns = turns[-1:]
    out, done = [], ""
    for i in turns:
        if _text(messages[i]["content"]) is None:
            return None
        head = render(messages[:i], True)
        full = render(messages[: i + 1], False)
        if not head.startswith(done) or not full.startswith(head):
            raise DataError("the chat template does not render conversations as growing prefixes, so assistant turns "
                            "cannot be masked exactly; use format prompt_completion instead")
        out.append((head[len(done):], False))
        out.append((full[len(head):], True))
        done = full
    return out or None


# ---------------------------------------------------------------------------------------------
# Row shapes: sharegpt turns, and preference/prompt rows that mix text and conversations

# sharegpt's role names, and LLaMA-Factory's for tool use (an observation is a tool's answer; a function_call turn is
# the assistant calling one)
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system", "tool": "tool", "observation": "tool", "function_call": "assistant"}


def to_messages(turns, column: str) -> list[dict]:
    """[{role, content}] from [{role, content}] or sharegpt [{from, value}] (human/gpt/system/tool)."""
    if isinstance(turns, dict):  # a single message, e.g. a `chosen` that is one assistant turn
        turns = [turns]
    if not (isinstance(turns, list) and all(isinstance(m, dict) for m in turns)):
        raise DataError(f"column '{column}': expected a list of {{role, content}} or {{from, value}} turns, "
                        f"got {turns!r:.80}")
    out = []
    for m in turns:  # Arrow gives every turn every key seen in the column, so a missing key reads as None
        if m.get("role") is not None and "content" in m:
            out.append({"role": m["role"], "content": m["content"]})
        elif m.get("from") is not None and "value" in m:
            role = SHAREGPT_ROLES.get(str(m["from"]).lower())
            if role is None:
                raise DataError(f"column '{column}': sharegpt role {m['from']!r} is not one of "
                                f"{', '.join(SHAREGPT_ROLES)}")
            out.append({"role": role, "content": m["value"]})
        else:
            keys = sorted(k for k, v in m.items() if v is not None)
            raise DataError(f"column '{column}': a turn needs keys role/content or from/value, got {keys}")
    return out


def map_turns(ds, message_map: dict | None, role_map: dict | None, where: str):
    """Conversation columns (lists of turns) with each turn's keys renamed by message_map ({from: role, value:
    content}) and its role by role_map ({human: user, gpt: assistant, observation: tool}, over the sharegpt names);
    each turn becomes {role, content}, and a role that is then none of system/user/assistant/tool is refused."""
    import datasets

    def is_turns(feature):
        inner = getattr(feature, "feature", None)
        return isinstance(feature, (list, datasets.List, datasets.LargeList)) and isinstance(
            inner if inner is not None else (feature[0] if isinstance(feature, list) and feature else None), dict)

    columns = [c for c, f in ds.features.items() if is_turns(f)]
    keys = {"from": "role", "value": "content", **(message_map or {})}
    roles = {**SHAREGPT_ROLES, **{str(k): v for k, v in (role_map or {}).items()}}

    def turn(m: dict) -> dict:
        m = {keys.get(k, k): v for k, v in m.items() if v is not None}
        if "role" not in m or "content" not in m:
            raise DataError(f"{where}: a turn has no role or content after message_map ({sorted(m)})")
        role = roles.get(str(m["role"]), str(m["role"]))
        if role not in ROLES:
            raise DataError(f"{where}: role {m['role']!r} is none of {', '.join(ROLES)}; map it with role_map")
        return {"role": role, "content": m["content"]}

    def fn(*cols):
        return {c: [[turn(m) for m in turns or []] for turns in col] for c, col in zip(columns, cols)}

    return ds.map(fn, input_columns=columns, batched=True, desc=f"Mapping {where} turns") if columns else ds


def with_system_prompt(ds, text: str):
    """A `system` column holding text where the rows have none (a blank or absent system column)."""
    if "system" not in ds.column_names:
        return ds.add_column("system", [text] * len(ds))
    return ds.map(lambda col: {"system": [v if _text(v) is not None else text for v in col]}, input_columns="system",
                  batched=True, desc="Filling system prompts")


def as_messages_row(row: dict, src_fmt: str, cols: dict[str, str]) -> list[dict] | None:
    """One row of an SFT format as a conversation (for messages data), its `system` column in front; None if
    a field is empty."""
    spec = get(src_fmt)
    if spec.as_messages is None:
        raise DataError(f"format '{src_fmt}' rows cannot be read as messages")
    messages = spec.as_messages(row, cols)
    if messages is None:
        return None
    return with_system(messages, _system(row, cols, src_fmt, True), cols.get("messages", "messages"))


def _messages_as_messages(row, cols):
    turns = row[cols["messages"]]
    return to_messages(turns, cols["messages"]) if turns else None


def _alpaca_as_messages(row, cols):
    instruction, output = _text(row[cols["instruction"]]), _text(row[cols["output"]])
    if instruction is None or output is None:
        return None
    input_text = _text(row.get(cols["input"])) if "input" in cols else None
    return [{"role": "user", "content": user_text(instruction, input_text)}, {"role": "assistant", "content": output}]


def _prompt_completion_as_messages(row, cols):
    prompt, completion = row[cols["prompt"]], row[cols["completion"]]
    if isinstance(prompt, list) or isinstance(completion, list):
        return to_messages(prompt, cols["prompt"]) + to_messages(completion, cols["completion"])
    if _text(prompt) is None or _text(completion) is None:
        return None
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]


def conversational(value) -> bool:
    return isinstance(value, (list, dict))


def pair_shape(row: dict, column: str, chat: bool):
    """One field of a preference/prompt row in the row's shape: text stays text; with chat, a text prompt
    becomes one user message and a text chosen/rejected one assistant message; conversations (or a single
    message, or sharegpt turns) become [{role, content}]."""
    value = row[column]
    if conversational(value):
        return to_messages(value, column)
    if not chat:
        return value
    if value is None:
        return []
    return [{"role": "user" if column == "prompt" else "assistant", "content": value}]


def row_is_chat(row: dict, columns) -> bool:
    return any(conversational(row.get(c)) for c in columns)


def shared_prompt(prompt: list[dict], chosen: list[dict], rejected: list[dict], column: str) -> dict:
    """A preference row whose chosen and rejected conversations already hold the prompt (argilla's
    ultrafeedback-binarized-preferences-cleaned, distilabel-capybara): the turns they share are the prompt and
    only what follows is the answer. The row's own prompt must be part of that: the shared turns begin
    with it, or one of their user turns is it (a string prompt), or they end the prompt; else refused.
    Returns the new {prompt, chosen, rejected}, or {} when chosen and rejected share no turn."""
    n, limit = 0, min(len(chosen), len(rejected)) - 1  # each answer keeps at least its last turn
    while n < limit and chosen[n] == rejected[n]:
        n += 1
    if n == 0:
        return {}
    shared, answers = chosen[:n], {"chosen": chosen[n:], "rejected": rejected[n:]}
    if prompt == shared[:len(prompt)]:
        return {"prompt": shared, **answers}
    said = [str(m["content"]).strip() for m in shared if m["role"] == "user"]
    if len(prompt) == 1 and prompt[0]["role"] == "user" and str(prompt[0]["content"]).strip() in said:
        return {"prompt": shared, **answers}  # a string prompt repeating a user turn is not added again
    if prompt[-n:] == shared:
        return {"prompt": prompt, **answers}
    raise DataError(f"column '{column}': chosen and rejected share {n} opening turn(s) that the prompt is not part "
                    f"of ({str(prompt[-1]['content'])[:40]!r} vs {str(shared[-1]['content'])[:40]!r}); rename the "
                    f"prompt column with data.column_map to take the prompt from the conversations alone")


def shape_row(row: dict, fmt: str, cols: dict[str, str], chat: bool) -> dict:
    """One row of a format TRL renders (preference, prompt, unpaired) in its canonical columns and one shape:
    each turn column text or conversation (`pair_shape`); unpaired rows given as one conversation split into
    prompt (the turns before the last) and completion (the last, an assistant turn); preference answers that
    repeat the prompt cut to what follows it (`shared_prompt`); a `system` column put in front of the prompt
    (of chosen and rejected when there is none), or refused for text rows."""
    spec = get(fmt)
    if "messages" in cols:
        turns = to_messages(row[cols["messages"]] or [], cols["messages"])
        if turns and turns[-1]["role"] != "assistant":
            raise DataError(f"column '{cols['messages']}': an unpaired conversation ends with the assistant turn "
                            f"that is judged; this one ends with a {turns[-1]['role']!r} turn")
        out = {"prompt": turns[:-1], "completion": turns[-1:]}
    else:
        out = {c: pair_shape({c: row[cols[c]]}, c, chat) for c in spec.turn_columns if c in cols}
    if fmt == "preference" and chat and out.get("prompt") and out.get("chosen") and out.get("rejected"):
        out.update(shared_prompt(out["prompt"], out["chosen"], out["rejected"], cols["prompt"]))
    system = _system(row, cols, fmt, chat or "messages" in cols)
    for c in ["prompt"] if "prompt" in out else ["chosen", "rejected"]:
        out[c] = with_system(out[c], system, c)
    out.update({c: row[src] for c, src in cols.items() if c not in spec.turn_columns + ("messages", "system")})
    return out


def usable_rows(ds, columns: list[str], source: str):
    """Indices of the rows whose columns are all filled (text not blank, lists not empty, not null/NaN), computed by
    Arrow; the others are dropped with a warning, and a source with none left is refused."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    if getattr(ds, "_indices", None) is not None:
        ds = ds.flatten_indices()
    mask = np.ones(len(ds), dtype=bool)
    for name in columns:
        col = ds.data.column(name)
        t = col.type
        if pa.types.is_string(t) or pa.types.is_large_string(t):
            ok = pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(col)), 0)
        elif pa.types.is_list(t) or pa.types.is_large_list(t):
            ok = pc.greater(pc.list_value_length(col), 0)
        elif pa.types.is_floating(t):
            ok = pc.invert(pc.is_nan(col))
        elif pa.types.is_null(t):
            ok = pa.array(np.zeros(len(ds), dtype=bool))
        else:
            ok = pc.is_valid(col)
        mask &= np.asarray(pc.fill_null(ok, False).to_numpy(zero_copy_only=False), dtype=bool)
    kept = np.flatnonzero(mask)
    if len(kept) < len(ds):
        log.warning("%s: dropped %d of %d rows with an empty or null field", source, len(ds) - len(kept), len(ds))
    if not len(kept):
        raise DataError(f"{source}: no usable row (every row has an empty or null {' / '.join(columns)})")
    return kept


def clean_pairs_or_prompts(ds, fmt: str, source: str, keep_extra: bool = False):
    """For the formats TRL tokenizes itself (preference, prompt): check columns, rename to the names
    TRL expects, drop rows with an empty/null field (counted). Returns (dataset, stats).

    keep_extra keeps the other columns (GRPO/RLOO reward functions read them, e.g. a reference answer).
    """
    cols = resolve_columns(ds.column_names, fmt, source)
    kept = ["chat_template_kwargs"] if "chat_template_kwargs" in ds.column_names else []  # TRL reads it per row
    renames = {src: dst for dst, src in cols.items() if src != dst}
    if renames:
        ds = ds.rename_columns(renames)
    needed = list(cols)
    if not keep_extra:
        ds = ds.select_columns(needed + kept)
    n = len(ds)
    ds = ds.select(usable_rows(ds, needed, source))
    return ds, {"rows": n, "kept": len(ds), "dropped_empty_field": n - len(ds)}


# ---------------------------------------------------------------------------------------------
# The registry

PROMPT = ("prompt",)
SYSTEM = ("system",)  # a `system` column beside a row: a leading system turn where the row can hold one

FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("alpaca", required=("instruction", "output"), optional=("input", *SYSTEM),
           alternatives=(("output", ("output", "response")),), may_be_blank=("input", *SYSTEM),
           templates=("alpaca", "chat"), supervised=True, prompts_with="alpaca", segments=_alpaca_segments,
           as_messages=_alpaca_as_messages, prompt_columns=("instruction", "input")),
    Format("prompt_completion", required=("prompt", "completion"), optional=SYSTEM, may_be_blank=SYSTEM,
           templates=("raw", "chat"), supervised=True, prompts_with="raw", segments=_prompt_completion_segments,
           as_messages=_prompt_completion_as_messages, prompt_columns=PROMPT),
    Format("messages", required=("messages",), optional=SYSTEM, may_be_blank=SYSTEM,
           alternatives=(("messages", ("messages", "conversations")),), templates=("chat",),
           mixable=("sharegpt", "alpaca", "prompt_completion"), supervised=True, prompts_with="chat",
           segments=_messages_segments, as_messages=_messages_as_messages),
    Format("text", required=("text",), prompts_with="raw", split_long_rows=True, segments=_text_segments),
    Format("sharegpt", required=("messages",), optional=SYSTEM, may_be_blank=SYSTEM,
           alternatives=(("messages", ("conversations", "messages")),), templates=("chat",), reads_as="messages",
           as_messages=_messages_as_messages),
    Format("preference", required=("chosen", "rejected"), optional=("prompt", *SYSTEM), may_be_blank=SYSTEM,
           templates=("raw", "chat"), tokenized_by="trl", turn_columns=("prompt", "chosen", "rejected"),
           prompt_columns=PROMPT),
    # KTO: one completion, label true = desirable
    Format("unpaired", required=("prompt", "completion", "label"), optional=SYSTEM, may_be_blank=SYSTEM,
           templates=("raw", "chat"), tokenized_by="trl", turn_columns=("prompt", "completion"), reads_messages=True,
           prompt_columns=PROMPT),
    Format("prompt", required=("prompt",), optional=SYSTEM, may_be_blank=SYSTEM, templates=("raw", "chat"),
           tokenized_by="trl", turn_columns=("prompt",), prompt_columns=PROMPT),
)}
