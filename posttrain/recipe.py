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
import difflib
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import yaml

from posttrain.data import packing
from posttrain.errors import RecipeError

REPO_ROOT = Path(__file__).resolve().parent.parent
RECIPES_DIR = REPO_ROOT / "recipes"


@dataclasses.dataclass(frozen=True)
class StageSpec:
    config: str  # "module:Class" of the TRL config that owns the `training:` section
    formats: tuple[str, ...]  # data formats the stage accepts; the first is the default
    keys: tuple[str, ...] = ()  # stage-specific top-level keys
    required: tuple[str, ...] = ()


STAGES: dict[str, StageSpec] = {
    "sft": StageSpec("trl:SFTConfig", ("alpaca", "prompt_completion", "messages")),
    "reward": StageSpec("trl:RewardConfig", ("preference",)),
    "dpo": StageSpec("trl:DPOConfig", ("preference",), keys=("ref_model",)),
    "ppo": StageSpec(
        "trl.experimental.ppo:PPOConfig",
        ("prompt",),
        keys=("reward_model", "value_model", "ref_model"),
        required=("reward_model",),
    ),
    "grpo": StageSpec("trl:GRPOConfig", ("prompt",), keys=("rewards",), required=("rewards",)),
    "rloo": StageSpec("trl:RLOOConfig", ("prompt",), keys=("rewards",), required=("rewards",)),
}
STAGE_KEYS = sorted({k for s in STAGES.values() for k in s.keys})
FORMATS = sorted({f for s in STAGES.values() for f in s.formats})
TOP_KEYS = ["stage", "extends", "description", "model", "data", "peft", "quantization", "training", "output_dir"]

DTYPES = ("auto", "bf16", "bfloat16", "fp16", "float16", "fp32", "float32")


@dataclasses.dataclass(frozen=True)
class Key:
    """One key of our own sections."""

    types: tuple[type, ...]
    default: Any = None
    required: bool = False
    choices: tuple | None = None
    min: float | None = None
    max: float | None = None
    min_open: bool = False  # min is exclusive
    max_open: bool = False
    help: str = ""


MODEL_KEYS = {
    "name_or_path": Key((str,), required=True, help="hub id or local directory"),
    "tokenizer": Key((str,), help="tokenizer id/path when it differs from the model"),
    "dtype": Key((str,), "auto", choices=DTYPES),
    "revision": Key((str,)),
    "gguf_file": Key((str,), help="GGUF file inside name_or_path; dequantized on load"),
    "trust_remote_code": Key((bool,), False),
    "attn_implementation": Key((str,)),
}
DATA_KEYS = {
    "train": Key((str,), required=True, help="hub dataset id or a local jsonl/json/csv/parquet file"),
    "name": Key((str,), help="hub dataset configuration name"),
    "split": Key((str,), "train"),
    "format": Key((str,), choices=tuple(FORMATS)),
    "column_map": Key((dict,), help="rename columns: {source_name: expected_name}"),
    "eval": Key((str,), help="separate eval source (hub id or local file)"),
    "eval_split": Key((str,), "train"),
    "eval_fraction": Key((int, float), min=0, max=1, min_open=True, max_open=True),
    "max_length": Key((int,), 1024, min=2),
    "pad_to_multiple_of": Key((int,), min=1),
    "num_proc": Key((int,), min=1),
}

# training.* keys that posttrain sets itself, with where the user should say it instead.
MANAGED_TRAINING_KEYS = {
    "output_dir": "set `output_dir` at the top level of the recipe",
    "max_length": "set `data.max_length`",
    "dataset_kwargs": "posttrain prepares the dataset itself",
    "remove_unused_columns": "posttrain prepares the dataset itself",
    "dataset_text_field": "choose the input shape with `data.format`",
    "completion_only_loss": "posttrain always masks the prompt exactly (see README: prompt masking)",
    "assistant_only_loss": "use `data.format: messages`, which trains on assistant turns only",
    "sft_model_path": "set `model.name_or_path`",
    "reward_model_path": "set the top-level `reward_model`",
}
# training.packing / padding_free and friends: honoured or refused by posttrain.data.packing.check_recipe

# Range rules for well-known fields of the owning classes: (min, max, min_open, max_open).
RANGES = {
    "training.learning_rate": (0, None, True, False),
    "training.num_train_epochs": (0, None, True, False),
    "training.per_device_train_batch_size": (1, None, False, False),
    "training.per_device_eval_batch_size": (1, None, False, False),
    "training.gradient_accumulation_steps": (1, None, False, False),
    "training.logging_steps": (0, None, True, False),
    "training.eval_steps": (0, None, True, False),
    "training.save_steps": (0, None, True, False),
    "training.save_total_limit": (1, None, False, False),
    "training.warmup_steps": (0, None, False, False),
    "training.warmup_ratio": (0, 1, False, False),
    "training.weight_decay": (0, None, False, False),
    "training.max_grad_norm": (0, None, False, False),
    "training.adam_beta1": (0, 1, False, True),
    "training.adam_beta2": (0, 1, False, True),
    "training.adam_epsilon": (0, None, True, False),
    "training.seed": (0, None, False, False),
    "training.beta": (0, None, False, False),
    "peft.r": (1, None, False, False),
    "peft.lora_alpha": (0, None, True, False),
    "peft.lora_dropout": (0, 1, False, True),
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
    """A path to a file, or a bare name looked up as <subdir>/<name>.yaml (cwd first, then the package's)."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    if p.suffix in (".yaml", ".yml") or "/" in name_or_path:
        raise RecipeError(f"{kind} file not found: {name_or_path}")
    for root in (Path.cwd() / subdir, REPO_ROOT / subdir):
        cand = root / f"{name_or_path}.yaml"
        if cand.is_file():
            return cand
    names = sorted(q.stem for q in (REPO_ROOT / subdir).glob("*.yaml"))
    raise RecipeError(f"{kind} '{name_or_path}' not found in {subdir}/{did_you_mean(name_or_path, names)}")


def resolve_recipe_path(name_or_path: str) -> Path:
    return _resolve(name_or_path, "recipe", "recipes")


def resolve_pipeline_path(name_or_path: str) -> Path:
    return _resolve(name_or_path, "pipeline", "recipes/pipelines")


def did_you_mean(word: str, candidates) -> str:
    close = difflib.get_close_matches(str(word), [str(c) for c in candidates], n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


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


def deep_merge(base: dict, child: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in child.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
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
    parent = data.pop("extends", None)
    if parent is None:
        return data, where
    if not isinstance(parent, str):
        raise RecipeError(f"{path.name}:{lines.get('extends', '?')}: extends: expected a path, got {parent!r}")
    parent_path = (path.parent / parent)
    if not parent_path.is_file():
        raise RecipeError(f"{path.name}:{lines['extends']}: extends: file not found: {parent_path}")
    base, base_where = load_raw(parent_path, (*_chain, path))
    return deep_merge(base, data), {**base_where, **where}


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
# Validation


class _Checker:
    def __init__(self, where: dict[str, str]):
        self.where = where

    def fail(self, dotted: str, msg: str):
        loc = self.where.get(dotted)
        if loc is None:  # fall back to the nearest enclosing key we know a line for
            parts = dotted.split(".")
            while parts and loc is None:
                parts.pop()
                loc = self.where.get(".".join(parts))
        prefix = f"{loc}: " if loc else ""
        raise RecipeError(f"{prefix}{dotted}: {msg}")

    def unknown(self, dotted: str, known, note: str = ""):
        key = dotted.rsplit(".", 1)[-1]
        section = dotted.rsplit(".", 1)[0] if "." in dotted else "recipe"
        self.fail(dotted, f"unknown key in {section}{did_you_mean(key, known)}{note}")

    def range(self, dotted: str, value, lo, hi, lo_open, hi_open):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return
        bad = (lo is not None and (value < lo or (lo_open and value == lo))) or (
            hi is not None and (value > hi or (hi_open and value == hi))
        )
        if bad:
            lo_s = "" if lo is None else f"{'>' if lo_open else '>='} {lo}"
            hi_s = "" if hi is None else f"{'<' if hi_open else '<='} {hi}"
            self.fail(dotted, f"{value} is out of range (must be {' and '.join(s for s in (lo_s, hi_s) if s)})")

    def own_section(self, name: str, values, spec: dict[str, Key]) -> dict:
        if values is None:
            values = {}
        if not isinstance(values, dict):
            self.fail(name, f"expected a mapping, got {_show(values)}")
        out = {}
        for k, v in values.items():
            dotted = f"{name}.{k}"
            if k not in spec:
                self.unknown(dotted, spec)
            key = spec[k]
            if v is None:
                if key.required:
                    self.fail(dotted, "is required")
                out[k] = key.default
                continue
            if int in key.types and float not in key.types and isinstance(v, float) and v.is_integer():
                v = int(v)
            if isinstance(v, str) and float in key.types:
                v = _as_float(v, v)
            if isinstance(v, bool) and bool not in key.types or not isinstance(v, key.types):
                want = " or ".join(_TYPE_WORDS.get(t, t.__name__) for t in key.types)
                self.fail(dotted, f"expected {want}, got {_show(v)}")
            if key.choices and v not in key.choices:
                self.fail(dotted, f"'{v}' is not one of {', '.join(map(str, key.choices))}{did_you_mean(v, key.choices)}")
            self.range(dotted, v, key.min, key.max, key.min_open, key.max_open)
            out[k] = v
        for k, key in spec.items():
            if k not in out:
                if key.required:
                    self.fail(f"{name}.{k}", f"is required ({key.help})" if key.help else "is required")
                out[k] = key.default
        return out


_TYPE_WORDS = {str: "a string", int: "an integer", float: "a number", bool: "true/false", dict: "a mapping", list: "a list"}


def _show(v) -> str:
    if isinstance(v, dict):
        return "a mapping"
    if isinstance(v, list):
        return "a list"
    return f"{v!r} ({type(v).__name__})"


def _as_float(s: str, fallback):
    try:
        return float(s)
    except ValueError:
        return fallback


SECRET_KEYS = {"token", "hub_token", "use_auth_token", "api_key", "password", "secret"}


def _secret_keys(node, prefix=""):
    if isinstance(node, dict):
        for k, v in node.items():
            dotted = f"{prefix}{k}"
            if str(k).lower() in SECRET_KEYS or str(k).lower().endswith("_api_key"):
                yield dotted
            yield from _secret_keys(v, dotted + ".")


def validate(
    raw: dict,
    *,
    where: dict[str, str] | None = None,
    source: str = "",
    default_name: str = "run",
    check_owners: bool = True,
) -> Recipe:
    """Check a merged recipe mapping. With check_owners, the owned sections are checked against the
    installed TRL/peft/transformers classes (imports them; loads no model or data)."""
    c = _Checker(where or {})
    if not isinstance(raw, dict):
        raise RecipeError(f"{source}: a recipe must be a mapping of keys")
    for dotted in _secret_keys(raw):
        c.fail(dotted, "secrets never go in a recipe (it is saved with the run); set HF_TOKEN etc. in the environment")
    stage = raw.get("stage")
    if stage is None:
        c.fail("stage", f"is required (one of {', '.join(STAGES)})")
    if not isinstance(stage, str) or stage not in STAGES:
        c.fail("stage", f"unknown stage {stage!r}; expected one of {', '.join(STAGES)}{did_you_mean(stage, STAGES)}")
    spec = STAGES[stage]
    for k in raw:
        if k in TOP_KEYS:
            continue
        if k in STAGE_KEYS:
            if k not in spec.keys:
                users = [s for s, sp in STAGES.items() if k in sp.keys]
                c.fail(k, f"is not used by a {stage} recipe (only by {', '.join(users)})")
            continue
        c.unknown(str(k), TOP_KEYS + list(spec.keys))
    for k in spec.required:
        if raw.get(k) in (None, "", []):
            c.fail(k, f"is required for stage {stage}")

    model = c.own_section("model", raw.get("model"), MODEL_KEYS)
    data = c.own_section("data", raw.get("data"), DATA_KEYS)
    if data["format"] is None:
        data["format"] = spec.formats[0]
    if data["format"] not in spec.formats:
        c.fail("data.format", f"'{data['format']}' data cannot train stage {stage} (expected {' or '.join(spec.formats)})")
    for src, dst in (data["column_map"] or {}).items():
        if not isinstance(src, str) or not isinstance(dst, str):
            c.fail(f"data.column_map.{src}", "expected column name: column name")
    if data["eval"] and data["eval_fraction"]:
        c.fail("data.eval_fraction", "set either data.eval or data.eval_fraction, not both")

    output_dir = raw.get("output_dir")
    if output_dir is None:
        output_dir = f"runs/{default_name}"
    if not isinstance(output_dir, str) or not output_dir.strip():
        c.fail("output_dir", f"expected a directory path, got {_show(output_dir)}")

    training = raw.get("training") or {}
    if not isinstance(training, dict):
        c.fail("training", f"expected a mapping, got {_show(training)}")
    for k in training:
        if k in MANAGED_TRAINING_KEYS:
            c.fail(f"training.{k}", f"is set by posttrain: {MANAGED_TRAINING_KEYS[k]}")
    packing.check_recipe(stage, training, model, c.fail)
    if training.get("bf16") and training.get("fp16"):
        c.fail("training.fp16", "bf16 and fp16 are both true; pick one")
    has_eval = bool(data["eval"] or data["eval_fraction"])
    strategy = training.get("eval_strategy", "no")
    if strategy not in (None, False, "no") and not has_eval:  # False: YAML's reading of a bare `no`
        c.fail("training.eval_strategy", f"'{strategy}' needs eval data: set data.eval_fraction or data.eval")

    peft = raw.get("peft")
    if peft is not None and not isinstance(peft, dict):
        c.fail("peft", f"expected a mapping of LoraConfig options (or null), got {_show(peft)}")
    quant = raw.get("quantization")
    if quant is not None and not isinstance(quant, dict):
        c.fail("quantization", f"expected a mapping of BitsAndBytesConfig options (or null), got {_show(quant)}")
    if quant:
        if quant.get("load_in_4bit") and quant.get("load_in_8bit"):
            c.fail("quantization.load_in_8bit", "load_in_4bit and load_in_8bit are both true; pick one")
        if not (quant.get("load_in_4bit") or quant.get("load_in_8bit")):
            c.fail("quantization", "set load_in_4bit: true or load_in_8bit: true")
        if not peft:
            c.fail("quantization", "a quantized model cannot be fully fine-tuned; add a `peft:` section (QLoRA)")
        if model["gguf_file"]:
            c.fail("quantization", "cannot combine with model.gguf_file (GGUF weights are dequantized on load)")

    for dotted, rule in RANGES.items():
        sec, key = dotted.split(".")
        values = {"training": training, "peft": peft or {}}[sec]
        if values.get(key) is not None:
            c.range(dotted, _as_float(values[key], values[key]) if isinstance(values[key], str) else values[key], *rule)

    extra = {k: raw[k] for k in spec.keys if k in raw}
    if check_owners:
        from posttrain import schema  # imports the owning libraries (and torch)
        from posttrain.models import lora_config

        training = schema.check_owned("training", training, schema.config_class(spec.config), c)
        if peft:
            peft = schema.check_owned("peft", peft, schema.lora_class(), c)
            try:  # LoraConfig checks combinations itself (e.g. layers_to_transform needs a list of target_modules)
                lora_config(peft)
            except (ValueError, TypeError) as e:
                c.fail("peft", f"LoraConfig refuses it: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
        if quant:
            quant = schema.check_owned("quantization", quant, schema.bnb_class(), c)

    shown = lambda d: {k: v for k, v in d.items() if v is not None}  # noqa: E731 - unset keys stay out of the file
    resolved = {"stage": stage, "model": shown(model), "data": shown(data)}
    if peft:
        resolved["peft"] = peft
    if quant:
        resolved["quantization"] = quant
    resolved.update(extra)
    resolved["training"] = training
    resolved["output_dir"] = output_dir
    return Recipe(
        stage=stage,
        model=model,
        data=data,
        training=training,
        output_dir=output_dir,
        peft=peft or None,
        quantization=quant or None,
        extra=extra,
        source=source,
        resolved=resolved,
    )
