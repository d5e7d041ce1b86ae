"""The common core of `posttrain convert`: what happens to each source key (its fate), the rules a tool's
table is made of, the settings several tools share (Hugging Face TrainingArguments names, launchers, chat
template names), and writing the recipe.

A tool module (trl, llama_factory, axolotl, torchtune) holds its TABLE: source key -> rule, as data. A rule
says the key's fate: mapped onto a posttrain key (`To`), dropped with why (`Drop`), NOT TRANSLATED with why
and what to do (`No`), or worked out from the whole config (`Call`, for keys that need their neighbours).
Every source key gets exactly one fate, printed by the command; nothing is dropped silently. The table is also
the one declaration of the tool's key for `posttrain validate`: a recipe that uses it is answered with what
converting it does (posttrain.convert.names).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from posttrain import chat_templates, options, stages
from posttrain.util import Where

MAPPED, DROPPED, NOT, DEFAULT = "mapped", "dropped", "NOT TRANSLATED", "default"


@dataclasses.dataclass
class Fate:
    key: str  # the source key, dotted for nested configs
    value: Any
    kind: str  # mapped | dropped | NOT TRANSLATED | default (a tool's implicit default made explicit)
    text: str  # mapped/default: "posttrain.key: value"; dropped / NOT TRANSLATED: why (and what to do)
    new: dict | None = None  # mapped (or NOT TRANSLATED but written all the same): {dotted posttrain key: value}


@dataclasses.dataclass(frozen=True)
class To:
    """Mapped onto `target` (a dotted posttrain key). `value(v)` gives the posttrain value (default: v); `note` is
    printed after the mapping. (A key that sets several posttrain keys is a Call.)"""

    target: str
    value: Callable[[Any], Any] | None = None
    note: str = ""


@dataclasses.dataclass(frozen=True)
class Drop:
    why: str


@dataclasses.dataclass(frozen=True)
class No:
    why: str


@dataclasses.dataclass(frozen=True)
class Call:
    """fn(conversion, key, value) decides the fate itself (it must call conv.map/drop/no for the key).
    `empty_ok`: it is called for an empty value too (else an empty value is dropped as not set). `hint`: what
    validate says of the key when its fate depends on its neighbours: a rule, a phrase, or {their value: either,
    ...: otherwise}; without one, validate says what `fn` does with the key alone."""

    fn: Callable
    empty_ok: bool = False
    hint: Any = None


def _later(conv, key, value):
    """The tool module gives the key its fate, reading it with its neighbours."""


def later(hint=None) -> Call:
    """A key read together with its neighbours by the tool module; `hint`: as Call's."""
    return Call(_later, empty_ok=True, hint=hint)


LATER = later()


@dataclasses.dataclass(frozen=True)
class DropIf:
    """Dropped when the value equals `value` (what posttrain does anyway, `why`); otherwise `otherwise`."""

    value: Any
    why: str
    otherwise: Any


class Conversion:
    """A recipe being built from one source config, and the fate of every source key."""

    def __init__(self, tool: str, source: Path, raw: dict, stage: str | None = None):
        self.tool, self.source, self.raw = tool, source, raw
        self.recipe: dict = {}
        self.fates: list[Fate] = []
        self.stage = stage  # the posttrain stage: --stage for TRL configs, else set by the tool module
        self.where = Where()  # the source config's key lines
        self.stage_why = "the --stage flag" if stage else ""  # why this stage: printed on its own line
        self.stage_guessed = False

    def set_stage(self, stage: str, why: str, guessed: bool = False) -> str:
        """The stage, with why it is this one (a guess says so, and how to change it)."""
        self.stage, self.stage_why, self.stage_guessed = stage, why, guessed
        return stage

    # --- building the recipe

    def get(self, dotted: str, default=None):
        node = self.recipe
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node

    def put(self, dotted: str, value):
        node = self.recipe
        *parents, last = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value

    # --- fates

    def map(self, key: str, value, target: str, new=None, note: str = ""):
        """`key: value` becomes `target: new` (new defaults to value); `new` may be {dotted: value, ...}."""
        new = value if new is None else new
        pairs = new if isinstance(new, dict) and target == "*" else {target: new}
        for dotted, v in pairs.items():
            self.put(dotted, v)
        shown = ", ".join(f"{d}: {render(v)}" for d, v in pairs.items())
        self.fates.append(Fate(key, value, MAPPED, shown + (f"  ({note})" if note else ""), pairs))

    def drop(self, key: str, value, why: str):
        self.fates.append(Fate(key, value, DROPPED, why))

    def drop_given(self, keys: str | tuple[str, ...], why: str):
        """Drop each of `keys` (one or several) that the source config sets."""
        for key in (keys,) if isinstance(keys, str) else keys:
            if key in self.raw:
                self.drop(key, self.raw[key], why)

    def no(self, key: str, value, why: str):
        self.fates.append(Fate(key, value, NOT, why))

    def set_me(self, key: str, value, target: str, why: str):
        """NOT TRANSLATED, and `target: SET-ME` in the recipe for the user to fill in (a required key)."""
        self.no(key, value, why)
        self.put(target, "SET-ME")

    def default(self, dotted: str, value, why: str):
        """A tool's implicit default made explicit, unless the recipe already sets the key."""
        if self.get(dotted) is None:
            self.put(dotted, value)
            self.fates.append(Fate("(default)", None, DEFAULT, f"{dotted}: {render(value)}  ({why})"))

    @property
    def untranslated(self) -> list[Fate]:
        return [f for f in self.fates if f.kind == NOT]

    # --- applying a table

    def apply(self, key: str, value, rule, fallback: Callable | None = None):
        if rule is None:
            if fallback is not None:
                return fallback(self, key, value)
            return self.no(key, value, f"not an option posttrain knows for {self.tool}; translate it by hand")
        if isinstance(rule, DropIf):
            if value == rule.value and type(value) is type(rule.value):
                return self.drop(key, value, rule.why)
            return self.apply(key, value, rule.otherwise, fallback)
        if isinstance(rule, To):
            return self.map(key, value, rule.target, rule.value(value) if rule.value else value, rule.note)
        if isinstance(rule, Drop):
            return self.drop(key, value, rule.why)
        if isinstance(rule, No):
            return self.no(key, value, rule.why)
        if isinstance(rule, Call):
            return rule.fn(self, key, value)
        raise TypeError(f"not a rule: {rule!r}")


def render(value) -> str:
    if isinstance(value, str) and "\n" in value:
        return f"<{len(value.splitlines())} lines>"
    return _scalar(value) if isinstance(value, (str, int, float, type(None))) else _dumped(value)


@functools.lru_cache(maxsize=4096, typed=True)
def _scalar(value) -> str:
    return _dumped(value)


def _dumped(value) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000, allow_unicode=True).strip()
    text = text.removesuffix("...").strip()
    # a string with a line break inside a list or mapping: JSON keeps it on one line (the recipe's comments)
    return json.dumps(value, ensure_ascii=False, default=str) if "\n" in text else text


# ---------------------------------------------------------------------------------------------
# Shared pieces


DTYPES = {"bfloat16": "bf16", "bf16": "bf16", "float16": "fp16", "fp16": "fp16", "half": "fp16",
          "float32": "fp32", "fp32": "fp32", "float": "fp32", "auto": "auto"}


def dtype(v):
    return DTYPES.get(str(v).removeprefix("torch."), v)


# Other tools' chat template names (LLaMA-Factory `template:`, axolotl `chat_template:`), per tool: a posttrain
# template name (posttrain.chat_templates), or (OWN, the format the name means): the base model's own format, which
# its tokenizer carries and posttrain uses when model.chat_template is unset. A name a tool's table does not hold
# but posttrain ships (chatml, llama3, ...) means the same format; any other stays NOT TRANSLATED.
OWN = "own"
TEMPLATE_NAMES = {
    "llama-factory": {
        "qwen": "qwen2", "phi": "phi3", "phi4_mini": "phi4", "deepseek3": "deepseek", "deepseekr1": "deepseek_r1",
        "phi4": (OWN, "Phi-4 (14B)'s <|im_start|>{role}<|im_sep|> turns"),
        "phi_small": (OWN, "Phi-3-small's turns after <|endoftext|>"),
        "deepseek": (OWN, "DeepSeek LLM / V2 chat's 'User: ... Assistant:' turns"),
        "cpm3": (OWN, "MiniCPM3's ChatML after <s>"), "cpm4": (OWN, "MiniCPM4's ChatML after <s>"),
        "llama4": (OWN, "Llama 4's <|header_start|> turns"), "glm4": (OWN, "GLM-4's [gMASK]<sop> turns"),
        "mistral_small": (OWN, "Mistral Small 3's [SYSTEM_PROMPT] turns"), "yi": (OWN, "Yi's ChatML"),
        "qwen3_5": (OWN, "Qwen3.5's turns"), "qwen2_vl": (OWN, "Qwen2-VL's ChatML"), "qwen3_vl": (OWN, "Qwen3-VL's turns"),
    },
    "axolotl": {
        "qwen_25": "qwen2", "phi_3": "phi3", "phi_35": "phi3", "mistral_v2v3": "mistral", "deepseek_v3": "deepseek",
        "tokenizer_default": (OWN, ""),
        "tokenizer_default_fallback_chatml": (OWN, "if its tokenizer has none, set model.chat_template: chatml"),
        "phi_4": (OWN, "Phi-4-reasoning's <|im_sep|> turns and reasoning system message"),
        "mistral_v1": (OWN, "Mistral v0.1 / Mixtral-8x7B's '[INST] ... [/INST]' turns"),
        "mistral_v3_tekken": (OWN, "Mistral NeMo's (Tekken) '[INST]...[/INST]' turns"),
        "mistral_v7_tekken": (OWN, "Mistral Small 3's [SYSTEM_PROMPT] turns"),
        "llama3_2_vision": (OWN, "Llama 3.2 Vision's turns"), "llama4": (OWN, "Llama 4's <|header_start|> turns"),
        "gemma3n": (OWN, "Gemma 3n's turns"), "deepseek_v2": (OWN, "DeepSeek-V2's 'User: ... Assistant:' turns"),
        "qwen3_5": (OWN, "Qwen3.5's turns"), "qwen2_vl": (OWN, "Qwen2-VL's ChatML"), "falcon_h1": (OWN, "Falcon-H1's turns"),
    },
}
# where posttrain's template of that name renders a little differently from the tool's
TEMPLATE_NOTES = {("llama-factory", "zephyr"): "LLaMA-Factory also writes the system turn 'You are Zephyr, a helpful "
                                               "assistant.' where a row has none; posttrain's does not"}


def chat_template(conv: Conversion, key: str, value):
    """A template name (or inline Jinja) -> model.chat_template: a template posttrain ships (by name), or the
    tokenizer's own where the name means the base model's format."""
    if not isinstance(value, str):
        return conv.no(key, value, "expected a template name or Jinja text")
    if "{%" in value or "{{" in value:
        return conv.map(key, "<inline Jinja>", "model.chat_template", value)
    name = TEMPLATE_NAMES.get(conv.tool, {}).get(value, value if chat_templates.text(value) is not None else None)
    if isinstance(name, tuple):
        return conv.drop(key, value, "means the base model's own format" + (f" ({name[1]})" if name[1] else "") +
                         ", which its tokenizer carries: posttrain uses the tokenizer's own chat template when "
                         "model.chat_template is unset")
    if name is None:
        return conv.no(key, value, f"no template named '{value}' ships with posttrain (`posttrain recipes` lists them); "
                                   "the tokenizer's own template is used — if it has none, set model.chat_template")
    note = TEMPLATE_NOTES.get((conv.tool, value), "")
    conv.map(key, value, "model.chat_template", chat_templates.canonical(name),
             note=f"posttrain's {chat_templates.canonical(name)} template" + (f"; {note}" if note else ""))


def flag(target: str, new=None, note: str = "", off: str = "false") -> Call:
    """On or off: a true value maps to `target: new` (default: the value itself), a false one is dropped (`off`)."""
    return Call(lambda c, k, v: c.map(k, v, target, new, note) if v else c.drop(k, v, off))


def packing(conv: Conversion, key: str, value):
    if not value:
        return conv.drop(key, value, "false: not packed")
    if conv.stage != "sft":
        return conv.no(key, value, "packing is sft only")
    conv.map(key, value, "training.packing", True)


def eval_fraction(conv: Conversion, key: str):
    """A held-out part of the training rows: a fraction, or (1 and up) a count of rows."""
    v = conv.raw.get(key)
    if v:
        conv.map(key, v, "data.eval_fraction", int(v) if isinstance(v, float) and v >= 1 else v)
    elif key in conv.raw:
        conv.drop(key, v, "0: no eval split")


def one_source(src: dict, dotted: str) -> dict:
    """A single source entry as plain data keys: data.train (or data.eval) and its split, name, column, turn and role
    maps and system prompt."""
    new = {dotted: src["source"]}
    if src.get("split", "train") != "train":
        new["data.split" if dotted == "data.train" else "data.eval_split"] = src["split"]
    if src.get("name"):
        new["data.name"] = src["name"]
    for k in ("column_map", "message_map", "role_map", "system_prompt"):
        if src.get(k):
            new[f"data.{k}"] = src[k]
    return new


def map_sources(conv: Conversion, key: str, value, new: dict, problems: list[str], shown=None, note: str = ""):
    """A dataset key onto the data keys `new`; with problems it is NOT TRANSLATED, `new` written all the same."""
    if not problems:
        return conv.map(key, value if shown is None else shown, "*", new, note=note)
    for dotted, v in new.items():
        conv.put(dotted, v)
    conv.no(key, value, "; ".join(problems))
    conv.fates[-1].new = new


def launch_hint(kind: str) -> str:
    return f"launcher setting; run `accelerate launch --config_file recipes/accelerate/{kind}.yaml -m posttrain train OUT`"


def deepspeed(conv: Conversion, key: str, value):
    """A DeepSpeed config (file or mapping) -> which accelerate config to launch with."""
    if isinstance(value, dict):
        stage = (value.get("zero_optimization") or {}).get("stage")
    else:
        m = re.search(r"(?:zero|z)[_-]?(\d)", str(value).lower())
        stage = int(m.group(1)) if m else None
    name = {3: "deepspeed_zero3", 2: "deepspeed_zero2"}.get(stage, "ddp" if stage in (0, 1) else "deepspeed_zero3")
    conv.drop(key, value, launch_hint(name))


def fsdp(conv: Conversion, key: str, value):
    if value in (None, "", [], {}, False):
        return conv.drop(key, value, "empty: no FSDP")
    conv.drop(key, value, launch_hint("fsdp") + " (sharding and wrapping are in that file)")


def report_to(conv: Conversion, key: str, value):
    names = [value] if isinstance(value, str) else list(value or [])
    conv.map(key, value, "training.report_to", names if len(names) != 1 else names[0])


def swanlab(conv: Conversion):
    """use_swanlab (LLaMA-Factory, axolotl's SwanLab plugin): SwanLab joins training.report_to (transformers' own
    SwanLab callback), after the other tracker keys gave theirs; its settings count only with it (SWANLAB)."""
    on = conv.raw.get("use_swanlab")
    for key, rule in SWANLAB.items():
        if key in conv.raw and key != "use_swanlab":
            value = conv.raw[key]
            if not on or empty(value):
                conv.drop(key, value, "used only with use_swanlab, which is not set" if not on else "empty: not set")
            elif isinstance(rule, To) and conv.get(rule.target) not in (None, value):
                conv.no(key, value, f"{rule.target} is one for every tracker, and another key set it to "
                                    f"{render(conv.get(rule.target))}")
            else:
                conv.apply(key, "<secret>" if key.endswith(("api_key", "secret")) else value, rule)
    if not on:
        return conv.drop_given("use_swanlab", "false")
    given = conv.get("training.report_to")
    names = [n for n in ([given] if isinstance(given, str) else given or []) if n not in ("none", "swanlab")]
    conv.map("use_swanlab", on, "training.report_to", [*names, "swanlab"] if names else "swanlab")


SWANLAB = {"use_swanlab": "`training.report_to: swanlab`", "swanlab_project": To("tracking.project"),
           **dict.fromkeys(("swanlab_run_name", "swanlab_experiment_name"), To("training.run_name")),
           **{f"swanlab_{k}": No(f"set SWANLAB_{k.upper()} in the environment") for k in ("log_model", "web_host",
                                                                                           "api_host")},
           "swanlab_mode": DropIf("cloud", "SwanLab's default mode", No("set SWANLAB_MODE in the environment")),
           "swanlab_logdir": No("set SWANLAB_LOG_DIR in the environment"),
           "swanlab_workspace": No("posttrain's `tracking:` has no SwanLab workspace; choose it when logging in to "
                                   "SwanLab"),
           "swanlab_description": No("transformers' SwanLab callback sets no run description"),
           "swanlab_api_key": No("secrets never go in a recipe; set SWANLAB_API_KEY in the environment"),
           **dict.fromkeys(("swanlab_lark_webhook_url", "swanlab_lark_secret"),
                           No("posttrain sends no Lark notifications")),
           **dict.fromkeys(("swanlab_log_completions", "swanlab_completion_log_interval",
                            "swanlab_completion_max_buffer"), No("posttrain logs no completion tables"))}


def warmup_ratio(conv: Conversion, key: str, value):
    if not value:
        return conv.map(key, value, "training.warmup_steps", 0)
    conv.map(key, value, "training.warmup_steps", value, note="a value below 1 is a ratio of the total steps")


def optim_args(conv: Conversion, key: str, value):
    """TrainingArguments.optim_args is a `k=v,k2=v2` string; axolotl also takes a mapping."""
    if isinstance(value, dict) and any("," in str(v) or "=" in str(v) for v in value.values()):
        return conv.no(key, value, "TrainingArguments takes optim_args as one k=v,k2=v2 string, which cannot hold a "
                                   "value with a comma or '=' in it")
    if isinstance(value, dict):
        return conv.map(key, value, "training.optim_args", ",".join(f"{k}={v}" for k, v in value.items()),
                        note="the k=v,k2=v2 string TrainingArguments takes")
    conv.map(key, value, "training.optim_args")


def auth_token(conv: Conversion, key: str, value):
    if isinstance(value, bool) or value is None:
        return conv.drop(key, value, "the Hugging Face token in the environment (HF_TOKEN, or `hf auth login`) is used "
                                     "for private models and datasets whenever there is one")
    conv.no(key, "<token>", "secrets never go in a recipe; set HF_TOKEN in the environment")


# Hugging Face TrainingArguments names that TRL scripts, LLaMA-Factory and axolotl share, where posttrain
# spells or handles them differently. Any other TrainingArguments field goes through `training_field`.
TRAINING_ARGS = {
    "output_dir": To("output_dir"),
    "overwrite_output_dir": Drop("the `--overwrite` flag of `posttrain train` replaces an existing run (not a recipe "
                                 "key)"),
    "do_train": DropIf(True, "`posttrain train` always trains", No("do_train: false trains nothing; nothing to convert")),
    "do_eval": Call(lambda c, k, v: c.drop(k, v, "posttrain evaluates whenever there is eval data") if v
                    else c.map(k, v, "training.do_eval", False, note="no evaluation although eval data exists")),
    "do_predict": DropIf(False, "posttrain runs no prediction", No("posttrain runs no prediction; use "
                                                                   "`posttrain generate RUN_DIR --prompt ...`")),
    "max_length": To("data.max_length"),
    "max_seq_length": To("data.max_length"),
    "dataset_num_proc": To("data.num_proc"),
    "pad_to_multiple_of": To("data.pad_to_multiple_of"),
    "warmup_ratio": Call(warmup_ratio),
    "evaluation_strategy": To("training.eval_strategy"),
    "report_to": Call(report_to),
    "remove_unused_columns": Drop("posttrain prepares the dataset itself and hands the trainer the columns it reads"),
    "resume_from_checkpoint": Drop("run-time flag: `posttrain train OUT --resume` continues from the newest checkpoint"),
    "local_rank": Drop("set by the launcher (torchrun / accelerate launch)"),
    "deepspeed": Call(deepspeed),
    "fsdp": Call(fsdp),
    "fsdp_config": Call(fsdp),
    "hub_token": No("secrets never go in a recipe; set HF_TOKEN in the environment"),
    "logging_dir": Drop("transformers 5 writes logs under output_dir"),
    "log_level": Drop("posttrain sets its own log level (the CLI prints what matters)"),
    "dataset_kwargs": Drop("posttrain tokenizes the rows itself (each row as written, EOS appended and trained); "
                           "TRL's dataset preparation is not used"),
    "gradient_checkpointing_kwargs": To("training.gradient_checkpointing_kwargs"),
    "use_liger_kernel": To("training.use_liger_kernel"),
    "optim_args": Call(optim_args),
    "save_safetensors": DropIf(True, "transformers 5 always saves safetensors", No("transformers 5 saves only "
                                                                                   "safetensors")),
    **dict.fromkeys(("hf_use_auth_token", "use_auth_token"), Call(auth_token, empty_ok=True)),
}


# the type each TRAINING_ARGS key read by a function takes (posttrain.convert.check)
TRAINING_TYPES = {"report_to": str | list[str], "warmup_ratio": float, "deepspeed": str | dict,
                  **dict.fromkeys(("do_train", "do_eval", "do_predict"), bool)}


def training_field(conv: Conversion, key: str, value):
    """Any other key: a field of the stage's TRL config (passed through), else NOT TRANSLATED."""
    if key in TRAINING_ARGS:
        return conv.apply(key, value, TRAINING_ARGS[key])
    opt = options.classify(conv.stage, "training", key)
    if opt.kind == options.PASSED:
        return conv.map(key, value, f"training.{key}")
    if opt.kind in (options.MANAGED, options.REFUSED):
        return conv.no(key, value, f"posttrain {'sets it itself' if opt.kind == options.MANAGED else 'refuses it'}: "
                                   f"{opt.note}")
    return conv.no(key, value, f"not an option posttrain knows for {conv.tool}; translate it by hand")


def empty(value) -> bool:
    return value is None or value == "" or value == [] or value == {}


def walk(conv: Conversion, items, table: dict, fallback: Callable | None = training_field):
    """Apply `table` to (key, value) pairs; an empty value is dropped (the tool's default applies, and where
    posttrain's default differs the tool module states it with conv.default)."""
    for key, value in items:
        rule = table.get(key)
        if empty(value) and not (isinstance(rule, Call) and rule.empty_ok):
            conv.drop(key, value, "empty: not set")
            continue
        conv.apply(key, value, rule, fallback)


# ---------------------------------------------------------------------------------------------
# Writing


ORDER = ("stage", "model", "data", "peft", "quantization", "reward_model", "ref_model", "value_model", "rewards",
         "training", "output_dir")


def recipe_text(conv: Conversion, out: Path) -> str:
    recipe = {k: conv.recipe[k] for k in ORDER if k in conv.recipe}
    recipe.update({k: v for k, v in conv.recipe.items() if k not in recipe})
    head = [f"# Converted by `posttrain convert` from {conv.source} ({conv.tool} config).",
            "# Every key's fate was printed by the command; the tool's implicit defaults are written out below.",
            f"# Check: posttrain validate {out}    Run: posttrain train {out}"]
    defaults = [f for f in conv.fates if f.kind == DEFAULT]
    if defaults:
        head += [f"# Made explicit ({conv.tool}'s implicit defaults, so the run is the one the source config meant):"]
        head += [f"#   {f.text}" for f in defaults]
    head.append(f"# {stage_line(conv)}")
    for f in conv.untranslated:
        head.append(f"# NOT TRANSLATED: {f.key}: {render(f.value)} -- {f.text}")
    body = yaml.dump(recipe, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=110)
    return "\n".join(head) + "\n" + body


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (chat templates) as literal blocks, so the recipe reads as the template does."""


def _str(dumper, value):
    style = "|" if "\n" in value and all(line == line.rstrip() for line in value.splitlines()) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def stage_line(conv: Conversion) -> str:
    """Why the recipe is of its stage; a guess says so, and how to change it."""
    stage = conv.recipe.get("stage", conv.stage)
    if not conv.stage_guessed:
        return f"stage {stage}: {conv.stage_why}"
    change = "pass --stage NAME to change it" if conv.tool == "trl" else "change `stage:` in the recipe if it is not"
    return f"stage {stage} GUESSED: {conv.stage_why}; {change}"


def fate_lines(conv: Conversion) -> list[str]:
    width = min(34, max((len(f.key) for f in conv.fates), default=10))
    marks = {MAPPED: "->", DEFAULT: "+ ", DROPPED: "dropped:", NOT: "NOT TRANSLATED:"}
    lines = [f"  {stage_line(conv)}"]
    for f in conv.fates:
        shown = f.key if f.kind == DEFAULT else f"{f.key}: {render(f.value)}"
        if len(shown) > 60:
            shown = shown[:57] + "..."
        text = f.text if len(f.text) <= 240 else f.text[:237] + "..."  # the whole value is in the recipe
        lines.append(f"  {shown:<{width + 12}} {marks[f.kind]} {text}")
    return lines


def stage_rules(conv: Conversion):
    """Settings the source tool accepted that the posttrain stage (TRL 1.12) refuses: the key's fate becomes NOT
    TRANSLATED, saying why, so the user sees it here rather than at validate."""
    batch = conv.get("training.per_device_train_batch_size")
    if conv.stage == "kto" and isinstance(batch, int) and batch < 2:
        for f in conv.fates:
            if f.kind == MAPPED and "training.per_device_train_batch_size" in f.text:
                f.kind = NOT
                f.text = (f"training.per_device_train_batch_size: {batch} -- TRL's KTO estimates its KL term from the "
                          "other rows of a batch: use at least 2 (or training.loss_type: apo_zero_unpaired)")


def stage_format(stage: str, sft: str = "alpaca") -> str:
    """The data format a converted recipe of this stage reads: the stage's own default (posttrain's stage registry),
    or for sft what the source tool's rows usually are (`sft`)."""
    return sft if stage == "sft" else stages.get(stage).formats[0]
