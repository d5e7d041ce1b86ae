"""The check pass: every check of a recipe, in one place, in one declared order; every problem reported at once.

`load_recipe` / `validate` are the one entry point: `validate`, `plan`, `train` and both pipeline commands call
them. A recipe is checked in four levels, each a prefix of the next:

- recipe: posttrain's own tables (posttrain.keys, posttrain.options); imports no library;
- owners: the sections against the installed classes that own them (TRL config, LoraConfig, BitsAndBytesConfig),
  what a setting needs (needs.py), the stage's own checks, the TRL config built; no model, no data;
- files: every local file the recipe names (data sources, model and reward model paths);
- model: what needs the tokenizer or the model's config, where they can be reached offline (target_modules,
  eos_token); no weights.

`REGISTRY` lists every step. A step is either a *read* (it resolves a section: fills defaults, reads a template
file) or a *check* (it only refuses). Each refuses through `where.fail(dotted, message)`, which names the
file:line that set the key; the runner records the problem and goes on, so a user sees every problem in one run.
A step that `reads` a key with a problem already reported is skipped: one mistake gives one line, not a cascade.

To add a check: write `def my_check(d: Draft)` below (or `check(recipe, where)` in a stage's `Stage.checks`)
and put it in REGISTRY at the level where what it needs is known.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable
from pathlib import Path

from posttrain import chat_templates, convert, evaluate, launch, models, needs, options, preflight, schema, stages, tracking
from posttrain.convert import names
from posttrain.data.formats import FORMATS, ROLES, PromptFormat
from posttrain.errors import DataError, PosttrainError, Problems, RecipeError
from posttrain.keys import (
    DATA_KEYS,
    EVAL_KEYS,
    MODEL_KEYS,
    PROMPT_FORMAT_KEYS,
    RANGES,
    SOURCE_KEYS,
    TOP_KEYS,
    TRACKING_KEYS,
    WATCHDOG_KEYS,
    Key,
    Range,
)
from posttrain.recipe import (
    Recipe,
    apply_overrides,
    is_template_path,
    load_raw,
    resolve_recipe_path,
)
from posttrain.stages import common
from posttrain.util import Problem, Where, as_number, did_you_mean, first_line, show, type_words

log = logging.getLogger("posttrain")

LEVELS = ("recipe", "owners", "files", "model")


@dataclasses.dataclass
class Draft:
    """A recipe while it is being checked: the merged mapping, the sections read from it so far, and the
    problems found."""

    raw: dict
    where: Where
    default_name: str
    source: str = ""
    stage: stages.Stage | None = None
    model: dict = dataclasses.field(default_factory=dict)
    data: dict = dataclasses.field(default_factory=dict)
    training: dict = dataclasses.field(default_factory=dict)
    peft: dict | None = None
    quantization: dict | None = None
    watchdog: dict | None = None
    tracking: dict | None = None
    output_dir: str = ""
    eval: dict | None = None
    extra: dict = dataclasses.field(default_factory=dict)
    recipe: Recipe | None = None  # built once the owners' checks ran; what stage/file/model checks read
    pending: tuple[str, ...] = ()  # keys a pipeline fills with an upstream output that does not exist yet
    notes: list[str] = dataclasses.field(default_factory=list)  # what could not be checked, and why
    facts: list[str] = dataclasses.field(default_factory=list)  # what a check found worth saying (validate prints)
    parsed: dict = dataclasses.field(default_factory=dict)  # stage keys read once (Stage.parse)
    launched: launch.Launch | None = None  # the Accelerate launch the recipe will run under, when known


@dataclasses.dataclass(frozen=True)
class Step:
    fn: Callable[[Draft], None]
    level: str
    reads: tuple[str, ...] = ()  # dotted keys; a problem reported on one of them (or a parent/child) skips it
    needs_stage: bool = True
    # it checks each key of the sections it reads on its own: a problem on one key (a child) does not skip it, and
    # what it finds again on that key is not said twice
    each: bool = False

    @property
    def name(self) -> str:
        return self.fn.__name__


# ---------------------------------------------------------------------------------------------
# recipe level: posttrain's own tables


def own_section(where: Where, name: str, values, spec: dict[str, Key], stage=None) -> dict:
    """Read one of our own sections against its Key table: each key checked on its own (a bad key is reported
    and takes its default), defaults filled in."""
    if values is None:
        values = {}
    if not isinstance(values, dict):
        where.fail(name, f"expected a mapping, got {show(values)}")
    out, bad = {}, set()
    for k, v in values.items():
        bad.add(k)
        with where.each():
            out[k] = _own_value(where, f"{name}.{k}", k, v, spec, stage)
            bad.discard(k)
    for k, key in spec.items():
        if k not in out:
            out[k] = key.default
            if key.required and k not in bad:
                with where.each():
                    where.fail(f"{name}.{k}", f"is required ({key.help})" if key.help else "is required")
    return out


def _own_value(where: Where, dotted: str, k, v, spec: dict[str, Key], stage):
    if k not in spec:
        names.unknown(where, dotted, spec, value=v, stage=stage)
    key = spec[k]
    if v is None:
        if key.required:
            where.fail(dotted, "is required")
        return key.default
    if int in key.types and float not in key.types and isinstance(v, float) and v.is_integer():
        v = int(v)
    if float in key.types:
        v = as_number(v)
    if isinstance(v, bool) and bool not in key.types or not isinstance(v, key.types):
        where.fail(dotted, f"expected {type_words(key.types)}, got {show(v)}")
    if key.choices and isinstance(v, str) and v not in key.choices:
        where.fail(dotted, f"'{v}' is not one of {', '.join(map(str, key.choices))}{did_you_mean(v, key.choices)}")
    if key.range:
        key.range.check(where, dotted, v)
    return v


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
        with d.where.each():
            d.where.fail(dotted, "secrets never go in a recipe (it is saved with the run); set HF_TOKEN etc. in the "
                         "environment")


TOOL_NAMES = {"trl": "a TRL-script (alignment-handbook)", "llama-factory": "a LLaMA-Factory", "axolotl": "an axolotl",
              "torchtune": "a torchtune"}


def not_another_tools_config(d: Draft):
    """Another tool's config given as a recipe: said first, with the command that translates it."""
    if all(k in TOP_KEYS or k in STAGE_KEYS for k in d.raw):
        return
    try:
        tool = convert.detect(d.raw)
    except PosttrainError:  # a posttrain recipe (model.name_or_path), or nothing another tool would write
        return
    raise Problem(f"{Path(d.source).name}: this looks like {TOOL_NAMES[tool]} config, not a posttrain recipe: "
                  f"`posttrain convert {d.source}` translates it and says what became of each key")


def read_stage(d: Draft):
    name = d.raw.get("stage")
    if name is None:
        d.where.fail("stage", f"is required (one of {', '.join(stages.names())})")
    try:
        d.stage = stages.get(name)
    except RecipeError as e:
        d.where.fail("stage", str(e).removeprefix("stage: "))
    missing = d.stage.unavailable()  # e.g. ppo on a TRL without PPOTrainer: the one line, before anything else
    if missing:
        d.where.fail("stage", missing.removeprefix("stage "))


def top_level_keys(d: Draft):
    stage_keys = stages.stage_keys()
    for k in d.raw:
        if k in TOP_KEYS:
            continue
        with d.where.each():
            if k in stage_keys:
                if k not in d.stage.keys:
                    users = [s.name for s in stages.all_stages().values() if k in s.keys]
                    d.where.fail(k, f"is not used by a {d.stage.name} recipe (only by {', '.join(users)})")
                continue
            names.unknown(d.where, str(k), TOP_KEYS + list(d.stage.keys), value=d.raw[k], stage=d.stage)
    for k in d.stage.required:
        if d.raw.get(k) in (None, "", []):
            with d.where.each():
                d.where.fail(k, f"is required for stage {d.stage.name}")
    d.extra = {k: d.raw[k] for k in d.stage.keys if k in d.raw}


def read_stage_keys(d: Draft):
    """The stage's own keys that it reads once (Stage.parse: grpo's `rewards:`), each refused on its own."""
    for key, parse in d.stage.parse.items():
        if key in d.extra:
            with d.where.each():
                d.parsed[key] = parse(d.extra[key], d.where)


def read_model(d: Draft):
    d.model = own_section(d.where, "model", d.raw.get("model"), MODEL_KEYS, d.stage)


def read_data(d: Draft):
    d.data = own_section(d.where, "data", d.raw.get("data"), DATA_KEYS, d.stage)
    d.data["format"] = d.data["format"] or d.stage.formats[0]


def format_fits_stage(d: Draft):
    formats, fmt = d.stage.formats, d.data["format"]
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


def read_sources(d: Draft):
    """data.train / data.eval lists (mixtures): each entry read on its own, and the formats a mixture can read."""
    data, given = d.data, d.raw.get("data") or {}
    fmt = data["format"]
    for split, split_key in (("train", "split"), ("eval", "eval_split")):
        value = data[split]
        if not isinstance(value, list):
            continue
        if not value:
            d.where.fail(f"data.{split}", "an empty list; give at least one source")
        if split_key in given:
            with d.where.each():
                d.where.fail(f"data.{split_key}", f"data.{split} is a list: give each source its own `split:`")
        entries = []
        for i, e in enumerate(value):
            with d.where.each():
                entries.append(_source(d, f"data.{split}[{i}]", e, fmt))
        data[split] = entries
    lists = [s for s in ("train", "eval") if isinstance(data[s], list)]
    if lists and not any(isinstance(data[s], str) for s in ("train", "eval")):
        for key in ("name", "column_map"):
            if key in given:
                with d.where.each():
                    d.where.fail(f"data.{key}", f"data.{' and data.'.join(lists)} is a list: give each source its "
                                 f"own `{key}:`")


def _source(d: Draft, dotted: str, e, fmt: str) -> dict:
    if isinstance(e, str):
        e = {"source": e}
    if not isinstance(e, dict):
        d.where.fail(dotted, f"expected a source (a string, or a mapping with `source:`), got {show(e)}")
    entry = own_section(d.where, dotted, e, SOURCE_KEYS)
    if entry["weight"] is not None and entry["rows"] is not None:
        d.where.fail(f"{dotted}.rows", "set weight or rows, not both")
    src_fmt = entry["format"] or fmt
    known = tuple(FORMATS)
    if src_fmt not in known:
        d.where.fail(f"{dotted}.format", f"'{src_fmt}' is not one of {', '.join(known)}{did_you_mean(src_fmt, known)}")
    if src_fmt != fmt and src_fmt not in FORMATS[fmt].mixable:
        can = FORMATS[fmt].mixable
        d.where.fail(f"{dotted}.format", f"'{src_fmt}' rows cannot be read as '{fmt}' data"
                     + (f" (a {fmt} mixture also takes {', '.join(can)})" if can else f" (give it {fmt} rows)"))
    _column_names(d.where, f"{dotted}.column_map", entry["column_map"])
    return {k: entry[k] for k in e if entry.get(k) is not None}


EVAL_FRACTION = Range(0, 1, min_open=True, max_open=True, what="a fraction", note="an integer is a row count")
EVAL_COUNT = Range(1, what="a row count")


def eval_fraction_or_count(d: Draft):
    ef = d.data["eval_fraction"]
    if ef is not None:
        (EVAL_COUNT if isinstance(ef, int) else EVAL_FRACTION).check(d.where, "data.eval_fraction", ef)


def template_fits_format(d: Draft):
    fmt, template = d.data["format"], d.data["template"]
    if isinstance(template, dict):
        if not FORMATS[fmt].prompt_columns:
            d.where.fail("data.template", f"{fmt} rows have no prompt for a prompt format to write (it writes "
                         f"alpaca, prompt_completion, preference, unpaired and prompt rows)")
        pf = own_section(d.where, "data.template", template, PROMPT_FORMAT_KEYS)
        for k in ("prompt", "no_input"):
            if pf[k] is not None:
                with d.where.each():
                    try:
                        PromptFormat.fields(pf[k])
                    except DataError as e:
                        d.where.fail(f"data.template.{k}", str(e))
    elif template is not None and template not in FORMATS[fmt].templates:
        d.where.fail("data.template", f"'{template}' is not a way to write {fmt} rows (one of "
                     f"{', '.join(FORMATS[fmt].templates)})")


def system_prompt_has_a_place(d: Draft):
    """data.system_prompt where the rows are written as text: the prompt format must say where it goes."""
    fmt, template = d.data["format"], d.data["template"]
    if d.data["system_prompt"] is None:
        return
    if isinstance(template, dict):
        if not any("system" in PromptFormat.fields(template[k]) for k in ("prompt", "no_input") if template.get(k)):
            d.where.fail("data.system_prompt", "data.template names no {system}, so the system prompt has no place "
                         "in the prompt; add {system} to data.template.prompt (and no_input)")
    elif (template or FORMATS[fmt].templates[0]) == "alpaca":
        d.where.fail("data.system_prompt", "the Alpaca template has no system turn; use data.template: chat, or a "
                     "prompt format with {system} (data.template: {prompt: ...})")


def _turn_maps(where: Where, dotted: str, values: dict):
    """message_map / role_map of data or of a source: names onto the keys and roles a turn may have."""
    for key, allowed in (("message_map", ("role", "content")), ("role_map", ROLES)):
        for src, dst in (values.get(key) or {}).items():
            if dst not in allowed or not isinstance(src, (str, int)):
                with where.each():
                    where.fail(f"{dotted}.{key}.{src}", f"expected {'one of ' if key == 'role_map' else ''}"
                               f"{' | '.join(allowed)}, got {show(dst)}")


def turn_maps(d: Draft):
    _turn_maps(d.where, "data", d.data)
    for split in ("train", "eval"):
        for i, e in enumerate(d.data[split] if isinstance(d.data[split], list) else []):
            _turn_maps(d.where, f"data.{split}[{i}]", e)


def prompt_bound(d: Draft):
    """data.max_prompt_length: on data with a prompt, and short of max_length so the answer keeps room."""
    n, fmt = d.data["max_prompt_length"], d.data["format"]
    if n is None:
        return
    if fmt == "text":
        d.where.fail("data.max_prompt_length", "text rows have no prompt (every token is trained); remove it")
    if d.data["train_on"] == "all":
        d.where.fail("data.max_prompt_length", "data.train_on: all trains the prompt too; the bound cuts a masked "
                     "prompt (remove one of them)")
    if n >= d.data["max_length"]:
        d.where.fail("data.max_prompt_length", f"{n} leaves the answer no room in data.max_length="
                     f"{d.data['max_length']}; make it smaller")


def train_on_fits_format(d: Draft):
    fmt = d.data["format"]
    if d.data["train_on"] is not None and not FORMATS[fmt].supervised:
        d.where.fail("data.train_on", f"only supervised data ({fmt} is not) has tokens to choose from; "
                     f"{d.stage.name} trains on what TRL computes")


def read_chat_template(d: Draft):
    """model.chat_template becomes the template's text (a .jinja file is read now), its syntax checked, so the
    resolved recipe (and its hash) holds what renders the data."""
    value = d.model["chat_template"]
    if value is None:
        return
    text = value
    if chat_templates.is_name(value):
        text = chat_templates.text(value)
        if text is None:
            d.where.fail("model.chat_template", f"no shipped template named '{value}'{did_you_mean(value, chat_templates.names())} "
                         f"(one of {', '.join(chat_templates.shipped())}; `posttrain recipes` lists their other names; "
                         "or a .jinja path, or inline Jinja)")
    elif is_template_path(value):
        p = Path(value).expanduser()
        if not p.is_file():
            d.where.fail("model.chat_template", f"file not found: {value} (an inline template holds Jinja: "
                         "{% ... %} or {{ ... }})")
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            d.where.fail("model.chat_template", f"cannot read {value}: {e}")
    d.model["chat_template"] = text


def chat_template_compiles(d: Draft):
    """Compiled as transformers compiles it at load: its `{% generation %}` tag (assistant masks) and filters too."""
    text = d.model["chat_template"]
    if text is None:
        return
    try:
        from jinja2.exceptions import TemplateSyntaxError
        from transformers.utils.chat_template_utils import _compile_jinja_template
    except ImportError:  # a transformers without it: the tokenizer checks the template at load
        return
    try:
        _compile_jinja_template(text)
    except TemplateSyntaxError as e:
        d.where.fail("model.chat_template", f"not a valid Jinja template: {e.message} (template line {e.lineno})")


def one_eval_source(d: Draft):
    if d.data["eval"] and d.data["eval_fraction"]:
        d.where.fail("data.eval_fraction", "set either data.eval or data.eval_fraction, not both")


def read_output_dir(d: Draft):
    out = d.raw.get("output_dir")
    if out is None:
        out = f"runs/{d.default_name}"
    d.output_dir = out
    if not isinstance(out, str) or not out.strip():
        d.where.fail("output_dir", f"expected a directory path, got {show(out)}")


def read_eval(d: Draft):
    if d.raw.get("eval") is not None:
        d.eval = own_section(d.where, "eval", d.raw["eval"], EVAL_KEYS, d.stage)


def eval_has_a_policy(d: Draft):
    if d.eval and d.stage.output != "policy":
        d.where.fail("eval", f"a {d.stage.name} run trains a {d.stage.output.replace('_', ' ')}, not a policy that "
                             "generates text: nothing for lm-eval to measure")


def eval_tasks_exist(d: Draft):
    """The lm-eval extra is installed, local task files parse and name their data, task names are lm-eval's."""
    if d.eval:
        for problem in evaluate.check(d.eval["tasks"]):
            d.where.fail("eval.tasks", problem)


def read_training(d: Draft):
    training = d.raw.get("training") or {}
    if not isinstance(training, dict):
        d.where.fail("training", f"expected a mapping, got {show(training)}")
    d.training = dict(training)


def read_peft_and_quantization(d: Draft):
    peft, quant = d.raw.get("peft"), d.raw.get("quantization")
    d.peft = peft if isinstance(peft, dict) and peft else None
    d.quantization = quant if isinstance(quant, dict) and quant else None
    if peft is not None and not isinstance(peft, dict):
        with d.where.each():
            d.where.fail("peft", f"expected a mapping of LoraConfig options (or null), got {show(peft)}")
    if quant is not None and not isinstance(quant, dict):
        d.where.fail("quantization", f"expected a mapping of BitsAndBytesConfig options (or null), got {show(quant)}")


def read_watchdog(d: Draft):
    if d.raw.get("watchdog") is not None:
        d.watchdog = own_section(d.where, "watchdog", d.raw["watchdog"], WATCHDOG_KEYS, d.stage)


def watchdog_can_stop(d: Draft):
    """The watchdog reads the logged training loss and stops transformers' training loop."""
    w, given = d.watchdog, d.raw.get("watchdog")
    if not w:
        return
    problems = []
    if not d.stage.resumable:  # the stages that cannot resume are those whose TRL trainer has its own loop (ppo)
        problems.append(("watchdog", f"the {d.stage.name} trainer runs its own training loop, which no callback can "
                         "stop"))
    if w["loss_above"] is None and not w["nonfinite"]:
        problems.append(("watchdog", "watches nothing: set watchdog.loss_above, or watchdog.nonfinite: true"))
    if "patience" in given and w["loss_above"] is None:
        problems.append(("watchdog.patience", "counts logged losses above watchdog.loss_above, which is not set"))
    if d.training.get("logging_strategy") in ("no", False):  # False: YAML's reading of a bare `no`
        problems.append(("training.logging_strategy", "'no' logs no training loss, and the watchdog reads it"))
    if w["nonfinite"] and d.training.get("logging_nan_inf_filter"):
        problems.append(("training.logging_nan_inf_filter", "true averages NaN/inf losses away before they are logged, "
                         "and watchdog.nonfinite reads the logged loss; remove it (or set watchdog.nonfinite: false)"))
    for dotted, message in problems:
        with d.where.each():
            d.where.fail(dotted, message)


def read_tracking(d: Draft):
    given = d.raw.get("tracking")
    if given is None:
        return
    for name in ("name", "run_name"):
        if isinstance(given, dict) and name in given:
            with d.where.each():
                d.where.fail(f"tracking.{name}", "the run's name is TRL's training.run_name (every tracker reads it)")
    read = own_section(d.where, "tracking", {k: v for k, v in given.items() if k not in ("name", "run_name")}
                       if isinstance(given, dict) else given, TRACKING_KEYS, d.stage)
    d.tracking = {k: v for k, v in read.items() if v is not None} or None


def tracking_fits_report_to(d: Draft):
    """Each tracking key is read by a tracker of training.report_to, in a value that tracker takes."""
    names = tracking.trackers(d.training.get("report_to"))
    if d.tracking and not names:
        d.where.fail("tracking", "training.report_to names no tracker, so nothing reads these settings; name one there "
                     f"({', '.join(tracking.trackers('all'))}), or remove tracking")
    for key, value in (d.tracking or {}).items():
        readers = tracking.readers(key)
        with d.where.each():
            if not set(readers) & set(names):
                d.where.fail(f"tracking.{key}", f"no tracker of training.report_to ({', '.join(names)}) reads it (read "
                             f"by {', '.join(readers)}); add one there, or remove it")
            if key == "tags" and not (value and all(isinstance(t, str) and t and "," not in t for t in value)):
                d.where.fail("tracking.tags", f"expected a list of labels (strings without commas), got {show(value)}")
            if key == "log_model":
                word = tracking.log_model_word(value)
                for tracker in set(tracking.LOG_MODEL) & set(names):
                    if word not in tracking.LOG_MODEL[tracker]:
                        d.where.fail("tracking.log_model", f"'{word}' is not what {tracker} takes (true/end, false"
                                     f"{', checkpoint' if 'checkpoint' in tracking.LOG_MODEL[tracker] else ''})")
    if (d.tracking or {}).get("project") is not None and "project" in d.training:
        d.where.fail("training.project", "set the project once, in tracking.project (trackio reads it from there)")


def consistent_settings(d: Draft):
    """Managed or script-only keys set to what posttrain does anyway are accepted with a note and not passed on
    (options.ACCEPTED); `do_eval: false` is honoured by not building the eval data."""
    has_eval = bool(d.data["eval"] or d.data["eval_fraction"])
    d.training, honour = options.accept(d.where, d.stage, "training", d.training, has_eval=has_eval)
    if "no_eval" in honour:
        d.data["eval"] = d.data["eval_fraction"] = None
        strategy = d.training.get("eval_strategy")
        if strategy not in (None, False, "no"):
            d.where.fail("training.eval_strategy", f"'{strategy}' contradicts training.do_eval: false")
    if d.peft:
        d.peft, _ = options.accept(d.where, d.stage, "peft", d.peft, has_eval=has_eval)


def managed_or_refused_keys(d: Draft):
    """Keys posttrain sets itself, or cannot honour (posttrain.options): refused with where/why, each."""
    for section, values in (("training", d.training), ("peft", d.peft), ("quantization", d.quantization)):
        options.refuse(d.where, d.stage, section, values)


def one_precision(d: Draft):
    if d.training.get("bf16") and d.training.get("fp16"):
        d.where.fail("training.fp16", "bf16 and fp16 are both true; pick one")


def eval_strategy_needs_eval_data(d: Draft):
    strategy = d.training.get("eval_strategy", "no")
    has_eval = bool(d.data["eval"] or d.data["eval_fraction"])
    if strategy not in (None, False, "no") and not has_eval:  # False: YAML's reading of a bare `no`
        d.where.fail("training.eval_strategy", f"'{strategy}' needs eval data: set data.eval_fraction or data.eval")


def quantization_is_qlora(d: Draft):
    quant = d.quantization
    if not quant:
        return
    if quant.get("load_in_4bit") and quant.get("load_in_8bit"):
        d.where.fail("quantization.load_in_8bit", "load_in_4bit and load_in_8bit are both true; pick one")
    if not (quant.get("load_in_4bit") or quant.get("load_in_8bit")):
        d.where.fail("quantization", "set load_in_4bit: true or load_in_8bit: true")
    if not d.peft:
        d.where.fail("quantization", "a quantized model cannot be fully fine-tuned; add a `peft:` section (QLoRA)")
    if d.model["gguf_file"]:
        d.where.fail("quantization", "cannot combine with model.gguf_file (GGUF weights are dequantized on load)")


def trainable_patterns(d: Draft):
    """model.trainable: regular expressions, not with peft (which parameters they match: trainable_matches)."""
    patterns = d.model.get("trainable")
    if patterns is None:
        return
    if not patterns or not all(isinstance(p, str) and p for p in patterns):
        d.where.fail("model.trainable", f"expected a list of regular expressions over parameter names, e.g. "
                     f"['lm_head\\..*', 'model\\.layers\\.(30|31)\\..*'], got {show(patterns)}")
    for p in patterns:
        try:
            re.compile(p)
        except re.error as e:
            d.where.fail("model.trainable", f"{p!r} is not a valid regular expression ({e})")
    if d.peft:
        d.where.fail("model.trainable", "trains chosen full weights and cannot combine with `peft` (LoRA trains "
                     "adapters and freezes every weight); remove one of them")


def added_tokens(d: Draft):
    """model.add_tokens / add_special_tokens: lists of token strings, each named once; model.special_tokens: the
    tokenizer's named tokens (models.SPECIAL_TOKEN_KEYS), agreeing with training.eos_token where both are set."""
    seen = {}
    for key in ("add_tokens", "add_special_tokens"):
        tokens = d.model.get(key)
        if tokens is None:
            continue
        with d.where.each():
            bad = [t for t in tokens if not isinstance(t, str) or not t]
            if bad:
                d.where.fail(f"model.{key}", f"expected a list of tokens (strings), e.g. ['<tool>', '</tool>'], "
                             f"got {show(bad[0])} in it")
            for t in tokens:
                if t in seen:
                    d.where.fail(f"model.{key}", f"{t!r} is listed twice" + (f" (also in model.{seen[t]})" if seen[t] != key
                                                                             else ""))
                seen[t] = key
    named = d.model.get("special_tokens") or {}
    for k, v in named.items():
        with d.where.each():
            if k not in models.SPECIAL_TOKEN_KEYS:
                hint = did_you_mean(k, models.SPECIAL_TOKEN_KEYS) or did_you_mean(f"{k}_token", models.SPECIAL_TOKEN_KEYS)
                d.where.fail(f"model.special_tokens.{k}", f"is not one of {', '.join(models.SPECIAL_TOKEN_KEYS)}{hint}")
            if not isinstance(v, str) or not v:
                d.where.fail(f"model.special_tokens.{k}", f"expected a token (a string), got {show(v)}")
    eos = d.training.get("eos_token")
    if named.get("eos_token") and eos is not None and eos != named["eos_token"]:
        d.where.fail("training.eos_token", f"{eos!r} contradicts model.special_tokens.eos_token "
                     f"{named['eos_token']!r}; set one of them")


def ranges(d: Draft):
    sections = {"training": d.training, "peft": d.peft or {}}
    for dotted, rule in RANGES.items():
        section, key = dotted.split(".")
        if sections[section].get(key) is not None:
            with d.where.each():
                rule.check(d.where, dotted, sections[section][key])


# ---------------------------------------------------------------------------------------------
# owners level: the installed classes that own a section (imports TRL, peft, transformers; loads no model)


def training_fits_trl_config(d: Draft):
    d.training = schema.check_owned("training", d.training, schema.config_class(d.stage.trl_config), d.where,
                                    names.unknown_in(d.stage))
    new = options.unclassified(d.stage, "training", d.training)
    if new:
        log.warning("training.%s: passed to %s, but this posttrain version has not classified %s (a newer TRL than "
                    "it was tested with?)", ", ".join(new), d.stage.trl_config, "it" if len(new) == 1 else "them")


def peft_fits_lora_config(d: Draft):
    if not d.peft:
        return
    d.peft = schema.check_owned("peft", d.peft, schema.lora_class(), d.where, names.unknown_in(d.stage))
    targets = d.peft.get("target_modules")
    name = targets[0] if isinstance(targets, list) and len(targets) == 1 else targets
    if isinstance(name, str) and name.lower() in preflight.ALL_LINEAR:
        d.where.fail("peft.target_modules", f"no module is named {name!r}; did you mean 'all-linear'? (every linear "
                     "layer but the output head; `all` is LLaMA-Factory's spelling)")
    try:  # LoraConfig checks combinations itself (e.g. layers_to_transform needs a list of target_modules)
        models.lora_config(d.peft)
    except (ValueError, TypeError) as e:
        d.where.fail("peft", f"LoraConfig refuses it: {first_line(e)}")


def quantization_fits_bnb_config(d: Draft):
    if d.quantization:
        d.quantization = schema.check_owned("quantization", d.quantization, schema.bnb_class(), d.where,
                                            names.unknown_in(d.stage))


def qlora_defaults(d: Draft):
    """`load_in_4bit: true` means QLoRA as the paper and every other tool mean it: NF4 weights, double
    quantization, and 16-bit compute where the device has it. Written into the resolved recipe, so the
    run directory says what was used; any of them set in the recipe wins.

    Compute dtype: model.dtype when the recipe sets one (not `auto`); else bfloat16 where the GPU supports
    it, and float32 otherwise (CPU, GPUs without bf16: fp16 compute can overflow, so it is opt-in)."""
    quant = d.quantization
    if not quant or not quant.get("load_in_4bit"):
        return
    out = dict(quant)
    out.setdefault("bnb_4bit_quant_type", "nf4")
    out.setdefault("bnb_4bit_use_double_quant", True)
    if out.get("bnb_4bit_compute_dtype") is None:
        dtype = d.model.get("dtype") or "auto"
        out["bnb_4bit_compute_dtype"] = models.DTYPE_NAMES[dtype] if dtype != "auto" else \
            "bfloat16" if models.bf16_supported() else "float32"
    d.quantization = out


def needs_of(check, section: str):
    """A step from a posttrain.needs check of one section (packages, the hub, a GPU: what a setting needs)."""

    def step(d: Draft):
        check(d.where, getattr(d, section))

    step.__name__ = f"needs_{check.__name__}"
    return step


def data_options_fit_stage(d: Draft):
    """data.pad_to_multiple_of goes into the stage's TRL config (its collator pads); a stage whose
    trainer has no such option cannot honour it."""
    if d.data.get("pad_to_multiple_of") is None:
        return
    cls = schema.config_class(d.stage.trl_config)
    if "pad_to_multiple_of" not in schema.fields_of(cls):
        d.where.fail("data.pad_to_multiple_of", f"the {d.stage.name} trainer cannot pad to a multiple "
                     f"({cls.__name__} has no pad_to_multiple_of); remove it")


def build_recipe(d: Draft):
    """Not a check: the Recipe that stage, file and model checks read (and a stage trains)."""
    d.recipe = _recipe(d)


def stage_checks(d: Draft):
    """The stage's own checks (its `Stage.checks`), each reported on its own."""
    for check in d.stage.checks:
        with d.where.each():
            check(d.recipe, d.where)


def trl_config_builds(d: Draft):
    """The stage's TRL config, built as training will build it: combinations its own checks refuse fail here."""
    try:
        d.stage.make_config(d.recipe)
    except RecipeError as e:
        key = next((k for k in d.training if re.search(rf"\b{re.escape(k)}\b", str(e))), None)
        if key is None:
            raise
        raise Problem(d.where.at(f"training.{key}", str(e).removeprefix("training: ")), f"training.{key}") from None


# ---------------------------------------------------------------------------------------------
# files and model levels: what the recipe names on disk, the tokenizer, the model's config (no weights)

MODEL_PATH_KEYS = ("model.name_or_path", "model.tokenizer", "reward_model", "ref_model", "value_model", "teacher_model")


def _model_paths(d: Draft):
    """(dotted key, local path) of every model the recipe names by a path on this machine."""
    for dotted in MODEL_PATH_KEYS:
        section, _, key = dotted.rpartition(".")
        value = (d.model if section == "model" else d.extra).get(key)
        if isinstance(value, str) and value.strip() and dotted not in d.pending and models.is_local_path(value):
            yield dotted, value
    rewards = d.extra.get("rewards")
    for i, r in enumerate(rewards if isinstance(rewards, list) else []):
        value = r.get("model") if isinstance(r, dict) else None
        if isinstance(value, str) and "rewards" not in d.pending and models.is_local_path(value):
            yield f"rewards[{i}].model", value


def local_models_exist(d: Draft):
    """A model, tokenizer or reward model named by a local path exists and holds a config or a tokenizer."""
    if d.model.get("gguf_file"):
        return
    for dotted, value in _model_paths(d):
        p = Path(value).expanduser()
        with d.where.each():
            if not p.exists():
                d.where.fail(dotted, f"no such directory: {value}")
            if p.is_dir() and not any((p / f).is_file() for f in ("config.json", "tokenizer_config.json",
                                                                   "adapter_config.json", "tokenizer.json")):
                d.where.fail(dotted, f"{value} holds no model (no config.json, tokenizer or adapter)")


def launch_fits(d: Draft):
    """What the Accelerate launch (DeepSpeed, FSDP, offload) needs of the recipe and the machine, each on its own."""
    for check in launch.CHECKS if d.launched else ():
        with d.where.each():
            check(d.recipe, d.where, d.launched)


def data_readable(d: Draft):
    """The first rows of every local data source, read as the loader reads them (kept for validate's example)."""
    d.recipe.samples = preflight.data(d.recipe)
    d.notes += [f"{s.key} ({s.note})" for s in d.recipe.samples if s.rows is None]


def model_check(check):
    """A step from a posttrain.preflight check of the tokenizer or the model's config: it refuses, or returns a note
    on what it could not check (or, for model.trainable, what it found: "model.trainable: N of M ... will train")."""

    def step(d: Draft):
        line = check(d.recipe)
        if line:
            (d.facts if line.startswith(("model.trainable: ", "model tokens: ")) else d.notes).append(line)

    step.__name__ = check.__name__
    return step


# what reading a few rows depends on (not max_length, num_proc, ...: a problem there leaves the rows readable)
DATA_READS = ("data.train", "data.eval", "data.format", "data.column_map", "data.name", "data.split", "data.eval_split",
              "data.seed", "data.template", "data.message_map", "data.role_map", "data.system_prompt",
              "model.chat_template")
MODEL_READS = ("peft", "model.name_or_path", "model.revision", "model.trust_remote_code", "model.gguf_file")
STAGE_KEYS = tuple(stages.stage_keys())
STAGE_READS = ("training", "data", "model", "peft", *STAGE_KEYS)  # a stage reads its recipe as it likes
REGISTRY: tuple[Step, ...] = (
    Step(not_another_tools_config, "recipe", needs_stage=False),
    Step(no_secrets, "recipe", needs_stage=False),
    Step(read_stage, "recipe", needs_stage=False),
    Step(top_level_keys, "recipe"),
    Step(read_stage_keys, "recipe", STAGE_KEYS, each=True),
    Step(read_model, "recipe"),
    Step(read_data, "recipe"),
    Step(format_fits_stage, "recipe", ("data.format",)),
    Step(column_map_is_names, "recipe", ("data.column_map",)),
    Step(read_sources, "recipe", ("data.format", "data.train", "data.eval")),
    Step(eval_fraction_or_count, "recipe", ("data.eval_fraction",)),
    Step(template_fits_format, "recipe", ("data.format", "data.template")),
    Step(system_prompt_has_a_place, "recipe", ("data.system_prompt", "data.template", "data.format")),
    Step(train_on_fits_format, "recipe", ("data.format", "data.train_on")),
    Step(turn_maps, "recipe", ("data.message_map", "data.role_map", "data.train", "data.eval")),
    Step(prompt_bound, "recipe", ("data.format", "data.max_prompt_length", "data.max_length", "data.train_on")),
    Step(read_chat_template, "recipe", ("model.chat_template",)),
    Step(one_eval_source, "recipe", ("data.eval", "data.eval_fraction")),
    Step(read_output_dir, "recipe"),
    Step(read_eval, "recipe"),
    Step(eval_has_a_policy, "recipe", ("eval",)),
    Step(read_training, "recipe"),
    Step(read_peft_and_quantization, "recipe"),
    Step(read_watchdog, "recipe"),
    Step(watchdog_can_stop, "recipe", ("watchdog", "training.logging_strategy", "training.logging_nan_inf_filter")),
    Step(read_tracking, "recipe"),
    Step(tracking_fits_report_to, "recipe", ("tracking", "training.report_to", "training.project"), each=True),
    Step(consistent_settings, "recipe", ("training", "peft", "data.eval", "data.eval_fraction"), each=True),
    Step(managed_or_refused_keys, "recipe", ("training", "peft", "quantization"), each=True),
    Step(one_precision, "recipe", ("training.bf16", "training.fp16")),
    Step(eval_strategy_needs_eval_data, "recipe", ("training.eval_strategy", "data.eval", "data.eval_fraction")),
    Step(quantization_is_qlora, "recipe", ("quantization", "peft", "model.gguf_file")),
    Step(trainable_patterns, "recipe", ("model.trainable", "peft")),
    Step(added_tokens, "recipe", ("model", "training.eos_token"), each=True),
    Step(ranges, "recipe", ("training", "peft"), each=True),
    Step(training_fits_trl_config, "owners", ("training",), each=True),
    Step(peft_fits_lora_config, "owners", ("peft",), each=True),
    Step(quantization_fits_bnb_config, "owners", ("quantization",), each=True),
    Step(qlora_defaults, "owners", ("quantization", "model.dtype")),
    Step(chat_template_compiles, "owners", ("model.chat_template",)),
    Step(needs_of(needs.report_to, "training"), "owners", ("training.report_to",)),
    Step(needs_of(needs.packages, "training"), "owners", ("training",), each=True),
    Step(needs_of(needs.hub, "training"), "owners", ("training",), each=True),
    Step(needs_of(needs.attention, "model"), "owners", ("model.attn_implementation",)),
    Step(needs_of(needs.device, "training"), "owners", ("training",), each=True),
    Step(needs_of(needs.quantization, "quantization"), "owners", ("quantization",)),
    Step(data_options_fit_stage, "owners", ("data.pad_to_multiple_of",)),
    Step(build_recipe, "owners"),
    Step(stage_checks, "owners", STAGE_READS),
    Step(trl_config_builds, "owners", (*STAGE_READS, "output_dir")),
    Step(launch_fits, "files", ("quantization", "peft", "model.name_or_path"), each=True),
    Step(local_models_exist, "files", ("model.gguf_file",)),
    Step(data_readable, "files", DATA_READS),
    Step(eval_tasks_exist, "files", ("eval",)),
    Step(model_check(preflight.target_modules), "model", MODEL_READS),
    Step(model_check(preflight.trainable), "model", ("model.trainable", *MODEL_READS)),
    Step(model_check(preflight.positions), "model", ("data.max_length", "training", *MODEL_READS[1:])),
    Step(model_check(preflight.eos_token), "model", ("training.eos_token", "model.tokenizer", "model.add_special_tokens",
                                                     "model.special_tokens", *MODEL_READS[1:])),
    Step(model_check(preflight.tokens), "model", ("model.add_tokens", "model.add_special_tokens", "model.special_tokens",
                                                  "model.tokenizer", *MODEL_READS[1:])),
)


# ---------------------------------------------------------------------------------------------
# The runner


def _related(a: str, b: str) -> bool:
    """One key is the other, or inside it: a problem on `data` concerns `data.train`, and the reverse."""
    a, b = a.replace("[", ".["), b.replace("[", ".[")
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


def _blocked(step: Step, bad: list[str]) -> bool:
    reads = (*step.reads, "stage") if step.needs_stage else step.reads
    if step.each:  # only a problem with the read key as a whole (or above it) stops a key-by-key check
        return any(_related(r, b) and not b.replace("[", ".[").startswith(r + ".") for r in reads for b in bad)
    return any(_related(r, b) for r in reads for b in bad)


def check(d: Draft, level: str = "owners", skip: tuple[str, ...] = ()) -> Recipe:
    """Run REGISTRY up to `level` (but the steps named in `skip`) over a draft; raises Problems with every
    problem found, else returns the Recipe (its `notes` say what could not be checked)."""
    last = LEVELS.index(level)
    found: list[Problem] = []
    d.where.found = found
    bad: list[str] = []
    try:
        for step in REGISTRY:
            if LEVELS.index(step.level) > last:
                break
            # a key waiting for an upstream output names nothing to read yet: the file and model checks leave it
            waiting = list(d.pending) if LEVELS.index(step.level) >= LEVELS.index("files") else []
            if step.name in skip or _blocked(step, bad + waiting):
                continue
            before = len(found)
            try:
                step.fn(d)
            except Problem as e:
                found.append(e)
            except PosttrainError as e:
                found.append(Problem(str(e), step.reads[0] if step.reads else step.name))
            seen = set(bad)
            found[before:] = [p for p in found[before:] if not p.dotted or p.dotted not in seen]  # one line a key
            for p in found[before:]:
                bad.append(p.dotted or (step.reads[0] if step.reads else step.name))
    finally:
        d.where.found = None
    if found:
        raise Problems([str(p) for p in found])
    recipe = d.recipe or _recipe(d)
    recipe.notes, recipe.facts = d.notes, d.facts
    return recipe


def validate(raw: dict, *, where: dict[str, str] | None = None, source: str = "", default_name: str = "run",
             level: str = "owners", skip: tuple[str, ...] = (), pending: tuple[str, ...] = (),
             launched: launch.Launch | None = None) -> Recipe:
    """Check a merged recipe mapping up to `level` (see LEVELS); `pending` keys wait for a pipeline's upstream;
    `launched` is the Accelerate launch it will run under."""
    if not isinstance(raw, dict):
        raise RecipeError(f"{source}: a recipe must be a mapping of keys")
    return check(Draft(raw=raw, where=Where(where), default_name=default_name, source=source, pending=pending,
                       launched=launched), level, skip)


def load_recipe(name_or_path: str, overrides: list[str] | None = None, *, level: str = "owners",
                skip: tuple[str, ...] = (), launched: launch.Launch | None = None) -> Recipe:
    """Resolve, merge, override and check a recipe; raises Problems (one line each) or RecipeError."""
    path = resolve_recipe_path(name_or_path)
    raw, where = load_raw(path)
    raw = apply_overrides(raw, overrides or [], where)
    return validate(raw, where=where, source=str(path), default_name=path.stem, level=level, skip=skip,
                    launched=launched)


def train(recipe: Recipe, **kw) -> dict:
    """Train a checked recipe (checked up to the `model` level: what validate refuses never starts a run)."""
    return common.run(recipe, stages.get(recipe.stage), **kw)


def _recipe(d: Draft) -> Recipe:
    shown = lambda section: {k: v for k, v in section.items() if v is not None}  # noqa: E731 - unset keys stay out
    resolved = {"stage": d.stage.name, "model": shown(d.model), "data": shown(d.data)}
    if d.peft:
        resolved["peft"] = d.peft
    if d.quantization:
        resolved["quantization"] = d.quantization
    resolved.update(d.extra)
    resolved["training"] = d.training
    for section in ("watchdog", "tracking"):
        if getattr(d, section):
            resolved[section] = shown(getattr(d, section))
    resolved["output_dir"] = d.output_dir
    return Recipe(stage=d.stage.name, model=d.model, data=d.data, training=d.training, output_dir=d.output_dir,
                  peft=d.peft, quantization=d.quantization, extra=d.extra, source=d.source, resolved=resolved, eval=d.eval,
                  where=d.where, parsed=d.parsed, watchdog=d.watchdog, tracking=d.tracking)
