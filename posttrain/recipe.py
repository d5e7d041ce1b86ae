"""Recipes: load YAML safely, resolve `extends:`, apply `a.b=c` overrides, validate.

Validation runs before any model or dataset is loaded. Our own sections (`model`, `data`, top level)
are checked against the tables below; `training`, `peft` and `quantization` are checked against the
classes that own those options (the stage's TRL config, `peft.LoraConfig`,
`transformers.BitsAndBytesConfig`), read from the installed libraries by `posttrain.schema`.
This module itself never imports torch.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import re
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from posttrain import needs, options, stages
from posttrain.errors import RecipeError
from posttrain.util import Where, as_number, did_you_mean, first_line, show, type_words

log = logging.getLogger("posttrain")

# The recipes shipped inside the package (`posttrain recipes` lists them); the checkout's recipes/ links here.
RECIPES_DIR = Path(str(resources.files("posttrain") / "recipes"))

TOP_KEYS = ["stage", "extends", "description", "model", "data", "peft", "quantization", "training", "output_dir"]

DTYPES = ("auto", "bf16", "bfloat16", "fp16", "float16", "fp32", "float32")


@dataclasses.dataclass(frozen=True)
class Range:
    """A numeric range; `open` ends exclude their bound. `what` names the value and `note` is appended in
    the refusal: "(a row count must be >= 1)", "(must be > 0 and < 1; an integer is a row count)"."""

    min: float | None = None
    max: float | None = None
    min_open: bool = False
    max_open: bool = False
    what: str = ""
    note: str = ""

    def check(self, where: Where, dotted: str, value):
        value = as_number(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return  # the type check reports it
        lo, hi = self.min, self.max
        bad = (lo is not None and (value < lo or (self.min_open and value == lo))) or (
            hi is not None and (value > hi or (self.max_open and value == hi)))
        if bad:
            lo_s = "" if lo is None else f"{'>' if self.min_open else '>='} {lo}"
            hi_s = "" if hi is None else f"{'<' if self.max_open else '<='} {hi}"
            bounds = " and ".join(x for x in (lo_s, hi_s) if x)
            where.fail(dotted, f"{value} is out of range ({self.what + ' ' if self.what else ''}must be {bounds}"
                               f"{'; ' + self.note if self.note else ''})")


POSITIVE = Range(0, None, min_open=True)
AT_LEAST_1 = Range(1)
NON_NEGATIVE = Range(0)
FRACTION = Range(0, 1)
OPEN_FRACTION = Range(0, 1, max_open=True)


@dataclasses.dataclass(frozen=True)
class Key:
    """One key of our own sections."""

    types: tuple[type, ...]
    default: Any = None
    required: bool = False
    choices: tuple | None = None
    range: Range | None = None
    help: str = ""


MODEL_KEYS = {
    "name_or_path": Key((str,), required=True, help="hub id or local directory"),
    "tokenizer": Key((str,), help="tokenizer id/path when it differs from the model"),
    "dtype": Key((str,), "auto", choices=DTYPES),
    "revision": Key((str,)),
    "gguf_file": Key((str,), help="GGUF file inside name_or_path; dequantized on load"),
    "trust_remote_code": Key((bool,), False),
    "attn_implementation": Key((str,)),
    "chat_template": Key((str,), help="inline Jinja, or a .jinja file relative to the recipe that names it"),
}
DATA_KEYS = {
    "train": Key((str, list), required=True,
                 help="hub dataset id or a local jsonl/json/csv/parquet file, or a list of sources (a mixture)"),
    "name": Key((str,), help="hub dataset configuration name"),
    "split": Key((str,), "train"),
    "format": Key((str,)),  # the stage's formats: checked by data_format_fits_stage
    "column_map": Key((dict,), help="rename columns: {source_name: expected_name}"),
    "eval": Key((str, list), help="separate eval source (hub id or local file), or a list of sources"),
    "eval_split": Key((str,), "train"),
    "eval_fraction": Key((int, float), help="a fraction in (0, 1) of the training rows, or a row count >= 1"),
    "seed": Key((int,), range=NON_NEGATIVE, help="seed for sampling and shuffling a mixture; default training.seed"),
    "train_on": Key((str,), choices=("assistant", "all", "last_assistant"),
                    help="which tokens of a conversation are trained (default assistant)"),
    "template": Key((str,), choices=("alpaca", "raw", "chat"),
                    help="how alpaca/prompt_completion rows are written; chat: the tokenizer's chat template"),
    "max_length": Key((int,), 1024, range=Range(2)),
    "pad_to_multiple_of": Key((int,), range=AT_LEAST_1),
    "num_proc": Key((int,), range=AT_LEAST_1),
}

# One entry of a data.train / data.eval list (a mixture); a plain string is {source: it}.
SOURCE_KEYS = {
    "source": Key((str,), required=True, help="hub dataset id or a local jsonl/json/csv/parquet file"),
    "name": Key((str,), help="hub dataset configuration name"),
    "split": Key((str,), "train", help="split with an optional slice, e.g. train[:1000]"),
    "format": Key((str,), help="this source's row format; default data.format"),
    "column_map": Key((dict,), help="rename columns: {source_name: expected_name}"),
    "weight": Key((int, float), range=POSITIVE, help="fraction of its usable rows to take; > 1 repeats rows"),
    "rows": Key((int,), range=AT_LEAST_1, help="how many rows to take (more than it has repeats rows)"),
}
# data.format -> the other source formats a mixture may hold (read into data.format's columns)
MIXABLE = {"messages": ("sharegpt", "alpaca", "prompt_completion")}

# Which training/peft/quantization keys posttrain manages or refuses: posttrain.options (the one place).

# Ranges of well-known fields of the owning classes (their types come from the classes themselves).
RANGES = {
    "training.learning_rate": POSITIVE,
    "training.num_train_epochs": POSITIVE,
    "training.per_device_train_batch_size": AT_LEAST_1,
    "training.per_device_eval_batch_size": AT_LEAST_1,
    "training.gradient_accumulation_steps": AT_LEAST_1,
    "training.logging_steps": POSITIVE,
    "training.eval_steps": POSITIVE,
    "training.save_steps": POSITIVE,
    "training.save_total_limit": AT_LEAST_1,
    "training.warmup_steps": NON_NEGATIVE,
    "training.weight_decay": NON_NEGATIVE,
    "training.max_grad_norm": NON_NEGATIVE,
    "training.adam_beta1": OPEN_FRACTION,
    "training.adam_beta2": OPEN_FRACTION,
    "training.adam_epsilon": POSITIVE,
    "training.seed": NON_NEGATIVE,
    "training.beta": NON_NEGATIVE,
    "peft.r": AT_LEAST_1,
    "peft.lora_alpha": POSITIVE,
    "peft.lora_dropout": OPEN_FRACTION,
}


# ---------------------------------------------------------------------------------------------
# Loading


@dataclasses.dataclass
class Recipe:
    """A resolved, validated recipe: what a stage module receives."""

    stage: str
    model: dict
    data: dict
    training: dict
    output_dir: str
    peft: dict | None = None
    quantization: dict | None = None
    extra: dict = dataclasses.field(default_factory=dict)  # stage-specific keys
    source: str = ""
    resolved: dict = dataclasses.field(default_factory=dict)  # what is saved as recipe.resolved.yaml
    upstream: dict = dataclasses.field(default_factory=dict)  # pipeline: hashes of the stages it builds on
    where: Where = dataclasses.field(default_factory=Where, repr=False, compare=False)  # file:line of each key

    @property
    def hash(self) -> str:
        """Identity of the run: the resolved recipe, plus (in a pipeline) the runs it starts from, so a
        re-trained upstream stage makes its dependants re-run although their paths did not change."""
        return recipe_hash({**self.resolved, "upstream": self.upstream} if self.upstream else self.resolved)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.resolved, sort_keys=False, allow_unicode=True)


def recipe_hash(resolved: dict) -> str:
    canon = json.dumps(resolved, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(canon.encode()).hexdigest()[:16]


def _resolve(name_or_path: str, kind: str, subdir: str) -> Path:
    """A path to a file, or a bare name looked up as <subdir>/<name>.yaml: in ./recipes first, then in
    the recipes shipped with the package."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    if p.suffix in (".yaml", ".yml") or "/" in name_or_path:
        raise RecipeError(f"{kind} file not found: {name_or_path}")
    for root in (Path.cwd() / "recipes", RECIPES_DIR):
        cand = root / subdir / f"{name_or_path}.yaml"
        if cand.is_file():
            return cand
    names = sorted(q.stem for q in (RECIPES_DIR / subdir).glob("*.yaml"))
    raise RecipeError(f"{kind} '{name_or_path}' not found in recipes/{subdir + '/' if subdir else ''}"
                      f"{did_you_mean(name_or_path, names)}")


def resolve_recipe_path(name_or_path: str) -> Path:
    return _resolve(name_or_path, "recipe", "")


def resolve_pipeline_path(name_or_path: str) -> Path:
    return _resolve(name_or_path, "pipeline", "pipelines")


def _key_lines(node, prefix="", out=None) -> dict[str, int]:
    """Map dotted key paths to 1-based line numbers from a composed YAML node tree."""
    out = {} if out is None else out
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode):
                path = f"{prefix}{k.value}"
                out[path] = k.start_mark.line + 1
                _key_lines(v, path + ".", out)
    return out


def read_yaml(path: Path) -> tuple[dict, dict[str, int]]:
    """Safe-load one YAML mapping; returns it with the line of every dotted key."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise RecipeError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise RecipeError(f"{path}: cannot read ({e.strerror})") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(e, "problem", None) or str(e)
        if "constructor for the tag" in str(problem):
            problem = f"YAML tag not allowed ({problem.split('tag')[-1].strip()}); recipes are plain data"
        raise RecipeError(f"{where}: invalid YAML: {problem}") from None
    if data is None:
        raise RecipeError(f"{path}: recipe is empty")
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe must be a mapping of keys, got a {type(data).__name__}")
    return data, _key_lines(node)


def deep_merge(base: dict, child: dict, *, null_removes: bool = False) -> dict:
    """Child wins, mappings merge key by key. With null_removes (a child recipe over its `extends:`),
    `key: null` removes the inherited key, so the default applies (e.g. `peft: null`: full fine-tuning)."""
    out = copy.deepcopy(base)
    for k, v in child.items():
        if v is None and null_removes:
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v, null_removes=null_removes)
        else:
            out[k] = copy.deepcopy(v)
    return out


def load_raw(path: Path, _chain: tuple[Path, ...] = ()) -> tuple[dict, dict[str, str]]:
    """Load a recipe file with its `extends:` chain merged in (child wins).

    Returns the merged mapping and, for each dotted key, "file:line" of the file that set it last.
    """
    path = path.resolve()
    if path in _chain:
        cycle = " -> ".join(p.name for p in (*_chain, path))
        raise RecipeError(f"{path}: extends: cycle ({cycle})")
    data, lines = read_yaml(path)
    where = {k: f"{path.name}:{n}" for k, n in lines.items()}
    _anchor_template(data, path)
    parent = data.pop("extends", None)
    if parent is None:
        return data, where
    if not isinstance(parent, str):
        raise RecipeError(f"{path.name}:{lines.get('extends', '?')}: extends: expected a path, got {parent!r}")
    parent_path = (path.parent / parent)
    if not parent_path.is_file():
        raise RecipeError(f"{path.name}:{lines['extends']}: extends: file not found: {parent_path}")
    base, base_where = load_raw(parent_path, (*_chain, path))
    return deep_merge(base, data, null_removes=True), {**base_where, **where}


def _is_template_path(value) -> bool:
    """A chat_template value names a file unless it holds Jinja ({{ }} or {% %})."""
    return isinstance(value, str) and "{{" not in value and "{%" not in value and "\n" not in value


def _anchor_template(data: dict, path: Path):
    """A relative model.chat_template path is relative to the recipe file that says it (also via extends:)."""
    model = data.get("model")
    value = model.get("chat_template") if isinstance(model, dict) else None
    if _is_template_path(value) and value.strip() and not Path(value).expanduser().is_absolute():
        model["chat_template"] = str((path.parent / value).resolve())


_OVERRIDE_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def apply_overrides(recipe: dict, overrides: list[str], where: dict[str, str] | None = None) -> dict:
    """Apply `a.b=value` overrides; the value is parsed as YAML (`3`, `2e-4`, `[q, v]`, `null`)."""
    out = copy.deepcopy(recipe)
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not _OVERRIDE_KEY.match(key):
            raise RecipeError(f"override '{item}': expected KEY=VALUE with a dotted key, e.g. training.max_steps=10")
        if key == "extends" or key.startswith("extends."):
            raise RecipeError(f"override '{item}': extends cannot be overridden")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as e:
            raise RecipeError(f"override '{item}': value is not valid YAML ({getattr(e, 'problem', e)})") from None
        parts = key.split(".")
        node = out
        for i, part in enumerate(parts[:-1]):
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise RecipeError(f"override '{item}': {'.'.join(parts[: i + 1])} is not a section")
            node = nxt
        node[parts[-1]] = value
        if where is not None:
            where[key] = f"override {key}"  # not the value: it may be a secret
    return out


def load_recipe(name_or_path: str, overrides: list[str] | None = None, *, check_owners: bool = True) -> Recipe:
    """Resolve, merge, override and validate a recipe. Raises RecipeError with a one-line message."""
    path = resolve_recipe_path(name_or_path)
    raw, where = load_raw(path)
    raw = apply_overrides(raw, overrides or [], where)
    return validate(raw, where=where, source=str(path), default_name=path.stem, check_owners=check_owners)


# ---------------------------------------------------------------------------------------------
# Validation: a list of small named checks over a draft of the recipe, run in order. Each refuses
# through `draft.where.fail(dotted_key, message)`, which prefixes the file:line that set the key.


@dataclasses.dataclass
class Draft:
    """A recipe while it is being checked: the merged mapping and the sections read from it so far."""

    raw: dict
    where: Where
    default_name: str
    stage: stages.Stage | None = None
    model: dict = dataclasses.field(default_factory=dict)
    data: dict = dataclasses.field(default_factory=dict)
    training: dict = dataclasses.field(default_factory=dict)
    peft: dict | None = None
    quantization: dict | None = None
    output_dir: str = ""
    extra: dict = dataclasses.field(default_factory=dict)


def own_section(where: Where, name: str, values, spec: dict[str, Key], stage=None) -> dict:
    """Check one of our own sections against its Key table; returns it with defaults filled in."""
    if values is None:
        values = {}
    if not isinstance(values, dict):
        where.fail(name, f"expected a mapping, got {show(values)}")
    out = {}
    for k, v in values.items():
        dotted = f"{name}.{k}"
        if k not in spec:
            options.unknown(where, dotted, spec, value=v, stage=stage)
        key = spec[k]
        if v is None:
            if key.required:
                where.fail(dotted, "is required")
            out[k] = key.default
            continue
        if int in key.types and float not in key.types and isinstance(v, float) and v.is_integer():
            v = int(v)
        if float in key.types:
            v = as_number(v)
        if isinstance(v, bool) and bool not in key.types or not isinstance(v, key.types):
            where.fail(dotted, f"expected {type_words(key.types)}, got {show(v)}")
        if key.choices and v not in key.choices:
            where.fail(dotted, f"'{v}' is not one of {', '.join(map(str, key.choices))}{did_you_mean(v, key.choices)}")
        if key.range:
            key.range.check(where, dotted, v)
        out[k] = v
    for k, key in spec.items():
        if k not in out:
            if key.required:
                where.fail(f"{name}.{k}", f"is required ({key.help})" if key.help else "is required")
            out[k] = key.default
    return out


SECRET_KEYS = {"token", "hub_token", "use_auth_token", "api_key", "password", "secret"}


def _secret_keys(node, prefix=""):
    if isinstance(node, dict):
        for k, v in node.items():
            dotted = f"{prefix}{k}"
            if str(k).lower() in SECRET_KEYS or str(k).lower().endswith("_api_key"):
                yield dotted
            yield from _secret_keys(v, dotted + ".")


def no_secrets(d: Draft):
    for dotted in _secret_keys(d.raw):
        d.where.fail(dotted, "secrets never go in a recipe (it is saved with the run); set HF_TOKEN etc. in the "
                     "environment")


def known_stage(d: Draft):
    name = d.raw.get("stage")
    if name is None:
        d.where.fail("stage", f"is required (one of {', '.join(stages.names())})")
    try:
        d.stage = stages.get(name)
    except RecipeError as e:
        d.where.fail("stage", str(e).removeprefix("stage: "))


def top_level_keys(d: Draft):
    stage_keys = stages.stage_keys()
    for k in d.raw:
        if k in TOP_KEYS:
            continue
        if k in stage_keys:
            if k not in d.stage.keys:
                users = [s.name for s in stages.all_stages().values() if k in s.keys]
                d.where.fail(k, f"is not used by a {d.stage.name} recipe (only by {', '.join(users)})")
            continue
        options.unknown(d.where, str(k), TOP_KEYS + list(d.stage.keys), value=d.raw[k], stage=d.stage)
    for k in d.stage.required:
        if d.raw.get(k) in (None, "", []):
            d.where.fail(k, f"is required for stage {d.stage.name}")
    d.extra = {k: d.raw[k] for k in d.stage.keys if k in d.raw}


def model_section(d: Draft):
    d.model = own_section(d.where, "model", d.raw.get("model"), MODEL_KEYS, d.stage)


def data_section(d: Draft):
    d.data = own_section(d.where, "data", d.raw.get("data"), DATA_KEYS, d.stage)


def data_format_fits_stage(d: Draft):
    formats = d.stage.formats
    if d.data["format"] is None:
        d.data["format"] = formats[0]
    fmt = d.data["format"]
    if fmt not in stages.formats():
        d.where.fail("data.format", f"'{fmt}' is not one of {', '.join(stages.formats())}"
                     f"{did_you_mean(fmt, stages.formats())}")
    if fmt not in formats:
        d.where.fail("data.format", f"'{fmt}' data cannot train stage {d.stage.name} (expected {' or '.join(formats)})")


def _column_names(where: Where, dotted: str, column_map: dict | None):
    for src, dst in (column_map or {}).items():
        if not isinstance(src, str) or not isinstance(dst, str):
            where.fail(f"{dotted}.{src}", "expected column name: column name")


def column_map_is_names(d: Draft):
    _column_names(d.where, "data.column_map", d.data["column_map"])


def data_sources(d: Draft):
    """data.train / data.eval lists (mixtures): each entry's keys, and formats the mixture can read."""
    data, given = d.data, d.raw.get("data") or {}
    fmt = data["format"]
    for split, split_key in (("train", "split"), ("eval", "eval_split")):
        value = data[split]
        if not isinstance(value, list):
            continue
        if not value:
            d.where.fail(f"data.{split}", "an empty list; give at least one source")
        if split_key in given:
            d.where.fail(f"data.{split_key}", f"data.{split} is a list: give each source its own `split:`")
        entries = []
        for i, e in enumerate(value):
            dotted = f"data.{split}[{i}]"
            if isinstance(e, str):
                e = {"source": e}
            if not isinstance(e, dict):
                d.where.fail(dotted, f"expected a source (a string, or a mapping with `source:`), got {show(e)}")
            entry = own_section(d.where, dotted, e, SOURCE_KEYS)
            if entry["weight"] is not None and entry["rows"] is not None:
                d.where.fail(f"{dotted}.rows", "set weight or rows, not both")
            src_fmt = entry["format"] or fmt
            known = (*stages.formats(), "sharegpt")
            if src_fmt not in known:
                d.where.fail(f"{dotted}.format", f"'{src_fmt}' is not one of {', '.join(known)}"
                             f"{did_you_mean(src_fmt, known)}")
            if src_fmt != fmt and src_fmt not in MIXABLE.get(fmt, ()):
                can = MIXABLE.get(fmt)
                d.where.fail(f"{dotted}.format", f"'{src_fmt}' rows cannot be read as '{fmt}' data"
                             + (f" (a {fmt} mixture also takes {', '.join(can)})" if can else f" (give it {fmt} rows)"))
            _column_names(d.where, f"{dotted}.column_map", entry["column_map"])
            entries.append({k: entry[k] for k in e if entry[k] is not None})
        data[split] = entries
    lists = [s for s in ("train", "eval") if isinstance(data[s], list)]
    if lists and not any(isinstance(data[s], str) for s in ("train", "eval")):
        for key in ("name", "column_map"):
            if key in given:
                d.where.fail(f"data.{key}", f"data.{' and data.'.join(lists)} is a list: give each source its own "
                             f"`{key}:`")


EVAL_FRACTION = Range(0, 1, min_open=True, max_open=True, what="a fraction", note="an integer is a row count")
EVAL_COUNT = Range(1, what="a row count")


def eval_fraction_or_count(d: Draft):
    ef = d.data["eval_fraction"]
    if ef is not None:
        (EVAL_COUNT if isinstance(ef, int) else EVAL_FRACTION).check(d.where, "data.eval_fraction", ef)


def template_and_train_on_fit_format(d: Draft):
    from posttrain.data.formats import TEMPLATES

    fmt, template = d.data["format"], d.data["template"]
    if template is not None and template not in TEMPLATES.get(fmt, ()):
        d.where.fail("data.template", f"'{template}' is not a way to write {fmt} rows (one of "
                     f"{', '.join(TEMPLATES.get(fmt, ()))})")
    if d.data["train_on"] is not None and fmt not in ("alpaca", "prompt_completion", "messages"):
        d.where.fail("data.train_on", f"only supervised data ({fmt} is not) has tokens to choose from; "
                     f"{d.stage.name} trains on what TRL computes")


def chat_template_text(d: Draft):
    """model.chat_template becomes the template's text (a .jinja file is read now), its syntax checked, so the
    resolved recipe (and its hash) holds what renders the data."""
    value = d.model["chat_template"]
    if value is None:
        return
    text = value
    if _is_template_path(value):
        p = Path(value).expanduser()
        if not p.is_file():
            d.where.fail("model.chat_template", f"file not found: {value} (an inline template holds Jinja: "
                         "{% ... %} or {{ ... }})")
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            d.where.fail("model.chat_template", f"cannot read {value}: {e}")
    try:
        from jinja2.exceptions import TemplateSyntaxError
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:  # jinja2 comes with transformers; without it, the tokenizer checks at load
        d.model["chat_template"] = text
        return
    try:
        ImmutableSandboxedEnvironment(extensions=["jinja2.ext.loopcontrols"]).from_string(text)
    except TemplateSyntaxError as e:
        d.where.fail("model.chat_template", f"not a valid Jinja template: {e.message} (template line {e.lineno})")
    d.model["chat_template"] = text


def one_eval_source(d: Draft):
    if d.data["eval"] and d.data["eval_fraction"]:
        d.where.fail("data.eval_fraction", "set either data.eval or data.eval_fraction, not both")


def output_dir(d: Draft):
    out = d.raw.get("output_dir")
    if out is None:
        out = f"runs/{d.default_name}"
    if not isinstance(out, str) or not out.strip():
        d.where.fail("output_dir", f"expected a directory path, got {show(out)}")
    d.output_dir = out


def training_section(d: Draft):
    training = d.raw.get("training") or {}
    if not isinstance(training, dict):
        d.where.fail("training", f"expected a mapping, got {show(training)}")
    d.training = training


def consistent_settings(d: Draft):
    """Managed or script-only keys set to what posttrain does anyway are accepted with a note and not passed
    on (options.ACCEPTED); `do_eval: false` is honoured by not building the eval data."""
    has_eval = bool(d.data["eval"] or d.data["eval_fraction"])
    d.training, honour = options.accept(d.where, d.stage, "training", d.training, has_eval=has_eval)
    if "no_eval" in honour:
        strategy = d.training.get("eval_strategy")
        if strategy not in (None, False, "no"):
            d.where.fail("training.eval_strategy", f"'{strategy}' contradicts training.do_eval: false")
        d.data["eval"] = d.data["eval_fraction"] = None
    if isinstance(d.raw.get("peft"), dict):
        peft, _ = options.accept(d.where, d.stage, "peft", d.raw["peft"], has_eval=has_eval)
        d.raw = {**d.raw, "peft": peft}


def managed_or_refused_keys(d: Draft):
    """Keys posttrain sets itself, or cannot honour (posttrain.options): refused with where/why."""
    options.refuse(d.where, d.stage, "training", d.training)
    for section in ("peft", "quantization"):
        if isinstance(d.raw.get(section), dict):
            options.refuse(d.where, d.stage, section, d.raw[section])


def one_precision(d: Draft):
    if d.training.get("bf16") and d.training.get("fp16"):
        d.where.fail("training.fp16", "bf16 and fp16 are both true; pick one")


def eval_strategy_needs_eval_data(d: Draft):
    strategy = d.training.get("eval_strategy", "no")
    has_eval = bool(d.data["eval"] or d.data["eval_fraction"])
    if strategy not in (None, False, "no") and not has_eval:  # False: YAML's reading of a bare `no`
        d.where.fail("training.eval_strategy", f"'{strategy}' needs eval data: set data.eval_fraction or data.eval")


def peft_and_quantization(d: Draft):
    peft, quant = d.raw.get("peft"), d.raw.get("quantization")
    if peft is not None and not isinstance(peft, dict):
        d.where.fail("peft", f"expected a mapping of LoraConfig options (or null), got {show(peft)}")
    if quant is not None and not isinstance(quant, dict):
        d.where.fail("quantization", f"expected a mapping of BitsAndBytesConfig options (or null), got {show(quant)}")
    if quant:
        if quant.get("load_in_4bit") and quant.get("load_in_8bit"):
            d.where.fail("quantization.load_in_8bit", "load_in_4bit and load_in_8bit are both true; pick one")
        if not (quant.get("load_in_4bit") or quant.get("load_in_8bit")):
            d.where.fail("quantization", "set load_in_4bit: true or load_in_8bit: true")
        if not peft:
            d.where.fail("quantization", "a quantized model cannot be fully fine-tuned; add a `peft:` section (QLoRA)")
        if d.model["gguf_file"]:
            d.where.fail("quantization", "cannot combine with model.gguf_file (GGUF weights are dequantized on load)")
    d.peft, d.quantization = peft or None, quant or None


def ranges(d: Draft):
    sections = {"training": d.training, "peft": d.peft or {}}
    for dotted, rule in RANGES.items():
        section, key = dotted.split(".")
        if sections[section].get(key) is not None:
            rule.check(d.where, dotted, sections[section][key])


CHECKS = (no_secrets, known_stage, top_level_keys, model_section, data_section, data_format_fits_stage,
          column_map_is_names, data_sources, eval_fraction_or_count, template_and_train_on_fit_format,
          chat_template_text, one_eval_source, output_dir, training_section, consistent_settings,
          managed_or_refused_keys, one_precision,
          eval_strategy_needs_eval_data, peft_and_quantization, ranges)


# Checks against the installed classes that own a section (they import TRL, peft, transformers: no model).

def training_fits_trl_config(d: Draft):
    from posttrain import schema

    d.training = schema.check_owned("training", d.training, schema.config_class(d.stage.trl_config), d.where, d.stage)
    new = options.unclassified(d.stage, "training", d.training)
    if new:
        log.warning("training.%s: passed to %s, but this posttrain version has not classified %s (a newer TRL than "
                    "it was tested with?)", ", ".join(new), d.stage.trl_config, "it" if len(new) == 1 else "them")


def peft_fits_lora_config(d: Draft):
    if not d.peft:
        return
    from posttrain import schema
    from posttrain.models import lora_config

    d.peft = schema.check_owned("peft", d.peft, schema.lora_class(), d.where, d.stage)
    targets = d.peft.get("target_modules")
    if targets == "all" or targets == ["all"]:
        d.where.fail("peft.target_modules", "no module is named 'all'; did you mean 'all-linear'? (every linear layer "
                     "but the output head; `all` is LLaMA-Factory's spelling)")
    try:  # LoraConfig checks combinations itself (e.g. layers_to_transform needs a list of target_modules)
        lora_config(d.peft)
    except (ValueError, TypeError) as e:
        d.where.fail("peft", f"LoraConfig refuses it: {first_line(e)}")


def quantization_fits_bnb_config(d: Draft):
    if d.quantization:
        from posttrain import schema

        d.quantization = qlora_defaults(schema.check_owned("quantization", d.quantization, schema.bnb_class(),
                                                           d.where, d.stage), d.model)


def qlora_defaults(quant: dict, model: dict) -> dict:
    """`load_in_4bit: true` means QLoRA as the paper and every other tool mean it: NF4 weights, double
    quantization, and 16-bit compute where the device has it. Written into the resolved recipe, so the
    run directory says what was used; any of them set in the recipe wins.

    Compute dtype: model.dtype when the recipe sets one (not `auto`); else bfloat16 where the GPU supports
    it, and float32 otherwise (CPU, GPUs without bf16: fp16 compute can overflow, so it is opt-in)."""
    if not quant.get("load_in_4bit"):
        return quant
    out = dict(quant)
    out.setdefault("bnb_4bit_quant_type", "nf4")
    out.setdefault("bnb_4bit_use_double_quant", True)
    if out.get("bnb_4bit_compute_dtype") is None:
        from posttrain.models import DTYPE_NAMES, bf16_supported

        dtype = model.get("dtype") or "auto"
        out["bnb_4bit_compute_dtype"] = DTYPE_NAMES[dtype] if dtype != "auto" else \
            "bfloat16" if bf16_supported() else "float32"
    return out


def needs_what_it_uses(d: Draft):
    """Packages, the hub, files, a GPU: what a setting needs, checked now instead of at the first step."""
    needs.report_to(d.where, d.training)
    needs.packages(d.where, d.training)
    needs.hub(d.where, d.training)
    needs.attention(d.where, d.model)
    needs.quantization(d.where, d.quantization)


def data_options_fit_stage(d: Draft):
    """data.pad_to_multiple_of goes into the stage's TRL config (its collator pads); a stage whose
    trainer has no such option cannot honour it."""
    if d.data.get("pad_to_multiple_of") is None:
        return
    from posttrain import schema

    cls = schema.config_class(d.stage.trl_config)
    if "pad_to_multiple_of" not in schema.fields_of(cls):
        d.where.fail("data.pad_to_multiple_of", f"the {d.stage.name} trainer cannot pad to a multiple "
                     f"({cls.__name__} has no pad_to_multiple_of); remove it")


OWNER_CHECKS = (training_fits_trl_config, peft_fits_lora_config, quantization_fits_bnb_config, needs_what_it_uses,
                data_options_fit_stage)


def validate(
    raw: dict,
    *,
    where: dict[str, str] | None = None,
    source: str = "",
    default_name: str = "run",
    check_owners: bool = True,
) -> Recipe:
    """Check a merged recipe mapping. With check_owners, the owned sections are checked against the
    installed TRL/peft/transformers classes (imports them; loads no model or data), then the stage's
    own checks run."""
    if not isinstance(raw, dict):
        raise RecipeError(f"{source}: a recipe must be a mapping of keys")
    d = Draft(raw=raw, where=Where(where), default_name=default_name)
    for check in CHECKS + (OWNER_CHECKS if check_owners else ()):
        check(d)
    recipe = _recipe(d, source)
    for check in d.stage.checks:
        check(recipe, d.where)
    return recipe


def _recipe(d: Draft, source: str) -> Recipe:
    shown = lambda section: {k: v for k, v in section.items() if v is not None}  # noqa: E731 - unset keys stay out
    resolved = {"stage": d.stage.name, "model": shown(d.model), "data": shown(d.data)}
    if d.peft:
        resolved["peft"] = d.peft
    if d.quantization:
        resolved["quantization"] = d.quantization
    resolved.update(d.extra)
    resolved["training"] = d.training
    resolved["output_dir"] = d.output_dir
    return Recipe(stage=d.stage.name, model=d.model, data=d.data, training=d.training, output_dir=d.output_dir,
                  peft=d.peft, quantization=d.quantization, extra=d.extra, source=source, resolved=resolved,
                  where=d.where)
