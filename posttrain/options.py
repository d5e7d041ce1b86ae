"""Every option a recipe accepts, classified in one place: passed through, managed, or refused.

- **passed**: handed to the class that owns it (the stage's TRL config, `peft.LoraConfig`,
  `transformers.BitsAndBytesConfig`) and honoured: posttrain does nothing that defeats it. The names
  are listed explicitly per class in `options_passed.json`, a snapshot of the installed classes, so a
  TRL release that adds or renames a field fails `tests/test_options.py` until someone classifies it.
- **managed**: posttrain sets it itself; a recipe that sets it is refused, naming where to say it.
- **refused**: posttrain cannot honour it; a recipe that sets it is refused, saying why.

Managed and refused entries common to every stage are the tables below; a stage adds its own in its
`STAGE.managed` / `STAGE.refused` (posttrain/stages/<name>.py); `classify()` answers for all of them.
Our own sections (`model`, `data`, the top level) are posttrain's keys (posttrain.keys):
passed, by definition. (Other tools' names for these options are answered from the convert tables:
posttrain.convert.names.)

Regenerate the snapshot and docs/options.md after a TRL/peft/transformers upgrade (then review the diff):
`python -m posttrain.options --write`; `--check` exits 1 when either is out of date. The snapshot serves every
supported TRL (the classes' fields are the same at both tested ends, 1.12 and 1.16, which CI walks): a class the
installed TRL lacks (a stage's `STAGE.trl` rules it out, e.g. PPOConfig from 1.13 on) is neither walked nor
imported, and `--write` keeps its entry.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import sys
from pathlib import Path
from typing import Any

import yaml

from posttrain import schema, stages
from posttrain.keys import DATA_KEYS, MODEL_KEYS, TOP_KEYS
from posttrain.util import Where

PASSED, MANAGED, REFUSED = "passed", "managed", "refused"

SNAPSHOT = Path(__file__).with_name("options_passed.json")
DOC = Path(__file__).resolve().parent.parent / "docs" / "options.md"

LORA = "peft:LoraConfig"
BNB = "transformers:BitsAndBytesConfig"

# training.* keys posttrain sets itself for every stage -> where the recipe says it instead.
MANAGED_TRAINING = {
    "output_dir": "set `output_dir` at the top level of the recipe",
    "max_length": "set `data.max_length`",
    "remove_unused_columns": "posttrain prepares the dataset itself",
    # one setting for every stage, mapped into each TRL config (and posttrain's own preprocessing)
    "dataset_num_proc": "set `data.num_proc` (one preprocessing-workers setting for every stage)",
    "pad_to_multiple_of": "set `data.pad_to_multiple_of`",
    "resume_from_checkpoint": "use `posttrain train --resume` (continues from the newest checkpoint in output_dir)",
    # posttrain loads every model and tokenizer itself (posttrain.models), so TRL's loading options never apply
    "model_init_kwargs": "posttrain loads the models itself: set `model.dtype`, `model.attn_implementation`, "
                         "`model.revision`, `model.trust_remote_code`",
    "pad_token": "posttrain pads with the tokenizer's pad token, else EOS (padding is masked by position; PPO "
                 "adds a distinct one); to pad with another, set `model.special_tokens.pad_token`",
    "chat_template_path": "set `model.chat_template` (a shipped template's name, inline Jinja or a .jinja path): it "
                          "formats the data, is saved with the run and used by `posttrain generate`",
    "trust_remote_code": "set `model.trust_remote_code`",
}
# training.* keys no recipe can set, for every stage -> why.
REFUSED_TRAINING = {
    "do_train": "a flag for scripts; `posttrain train` always trains",
    "do_eval": "a flag for scripts; posttrain evaluates whenever there is eval data (data.eval_fraction or data.eval)",
    "do_predict": "a flag for scripts; posttrain runs no prediction",
    "local_rank": "set by the launcher (torchrun / accelerate launch), not by a recipe",
    "hub_token": "secrets never go in a recipe (it is saved with the run); set HF_TOKEN in the environment",
}
MANAGED_SECTIONS = {
    LORA: {
        "task_type": "posttrain sets it per stage (CAUSAL_LM; SEQ_CLS for reward models)",
        "base_model_name_or_path": "set `model.name_or_path`",
        "revision": "set `model.revision`",
    },
    BNB: {},
}
REFUSED_SECTIONS = {
    LORA: {
        "peft_type": "posttrain trains LoRA adapters (peft.LoraConfig) only",
        "inference_mode": "a trained adapter must be trainable",
        "auto_mapping": "internal to peft",
        "peft_version": "written by peft itself",
        "megatron_config": "needs a Megatron model; posttrain loads transformers models",
        "megatron_core": "needs a Megatron model; posttrain loads transformers models",
    },
    BNB: {"quant_method": "set by BitsAndBytesConfig itself"},
}
SECTION_OWNERS = {"peft": LORA, "quantization": BNB}
# training.* defaults that differ between the tested TRL ends (1.12 -> 1.16; the fields themselves are the same),
# for docs/options.md. Values a recipe writes mean the same on both.
TRL_DEFAULTS = {
    "pad_to_multiple_of": ("`None`", "`'auto'`: 128 on AWS Neuron, else none (the same off Neuron); posttrain passes "
                                     "`data.pad_to_multiple_of` when set"),
    "router_aux_loss_coef": ("`0.001`", "`None`: the model config's own coefficient (a mixture-of-experts model's "
                                        "router loss weighs as its authors set it)"),
    "loss_type (sft, gkd)": ("`None` (nll)", "`'nll'` (the same loss)"),
}


@dataclasses.dataclass(frozen=True)
class Accepted:
    """A managed or refused key whose value is what posttrain does anyway: accepted with a one-line note and
    kept from the class that owns the section. `value` is that value, or a function of the stage giving it;
    `eval_data`: True when it holds only with eval data (else refused, saying so), False when it holds only
    without; `honour`: what posttrain does to honour it (`no_eval`: the eval data is not built)."""

    value: Any
    note: str
    eval_data: bool | None = None
    honour: str = ""

    def expected(self, stage):
        return self.value(_stage(stage)) if callable(self.value) else self.value


def _lora_task_type(stage) -> str:
    return "SEQ_CLS" if stage.name == "reward" else "CAUSAL_LM"


# (section, key) -> the values of a managed/refused key that are consistent with posttrain. Any other value is
# refused as the tables above say.
ACCEPTED = {
    ("training", "remove_unused_columns"): [
        Accepted(False, "posttrain prepares the dataset itself and hands the trainer the columns it reads")],
    ("training", "do_train"): [Accepted(True, "`posttrain train` always trains")],
    ("training", "do_eval"): [
        Accepted(True, "posttrain evaluates on the eval data", eval_data=True),
        Accepted(False, "no evaluation: the eval data (data.eval / data.eval_fraction) is not built",
                 eval_data=True, honour="no_eval"),
        Accepted(False, "no eval data, so no evaluation", eval_data=False)],
    ("peft", "task_type"): [Accepted(_lora_task_type, "posttrain sets this task type for the stage")],
}


def accept(where: Where, stage, section: str, values: dict | None, *, has_eval: bool) -> tuple[dict, set[str]]:
    """Take out of `values` the keys whose value is what posttrain does anyway (ACCEPTED), each with a one-line
    note; returns the rest and what must be done to honour them (e.g. {"no_eval"}). A key with an accepted
    value that needs eval data the recipe lacks is refused here; other values stay for `refuse`."""
    if not values:
        return values, set()
    log = logging.getLogger("posttrain")
    rest, honour = dict(values), set()
    for key, value in values.items():
        entries = ACCEPTED.get((section, key), ())
        same = [a for a in entries if _same(value, a.expected(stage))]
        if not same:
            continue
        fits = [a for a in same if a.eval_data in (None, has_eval)]
        if not fits:
            rest.pop(key)  # said here, not again by `refuse`
            with where.each():
                where.fail(f"{section}.{key}", f"{_render(value)} needs eval data: set data.eval_fraction or data.eval")
            continue
        log.info("%s.%s: %s accepted (%s); not passed on", section, key, _render(value), fits[0].note)
        rest.pop(key)
        if fits[0].honour:
            honour.add(fits[0].honour)
    return rest, honour


def _same(value, expected) -> bool:
    if isinstance(expected, bool) or isinstance(value, bool):
        return value is expected
    if isinstance(expected, str) and isinstance(value, str):
        return value.upper() == expected.upper()  # peft's TaskType is an enum of upper-case strings
    return value == expected


@dataclasses.dataclass(frozen=True)
class Option:
    section: str  # training | peft | quantization | model | data
    key: str
    kind: str  # passed | managed | refused | unclassified
    note: str = ""  # managed: where to set it instead; refused: why


def _stage(stage):
    return stages.get(stage) if isinstance(stage, str) else stage


def owner(stage, section: str) -> str:
    """"module:Class" of the class that owns a section for a stage."""
    return _stage(stage).trl_config if section == "training" else SECTION_OWNERS[section]


def managed(stage, section: str = "training") -> dict[str, str]:
    if section == "training":
        return {**MANAGED_TRAINING, **_stage(stage).managed}
    return MANAGED_SECTIONS[SECTION_OWNERS[section]]


def refused(stage, section: str = "training") -> dict[str, str]:
    if section == "training":
        return {**REFUSED_TRAINING, **_stage(stage).refused}
    return REFUSED_SECTIONS[SECTION_OWNERS[section]]


@functools.cache
def snapshot() -> dict[str, list[str]]:
    return json.loads(SNAPSHOT.read_text(encoding="utf-8"))


def passed(stage, section: str) -> set[str]:
    return set(snapshot().get(owner(stage, section), ()))


def classify(stage, section: str, key: str) -> Option:
    """The class of one option. Managed and refused are read from tables (no import); passed from the
    snapshot; anything else (a field a newer library added, or no field at all) is 'unclassified'."""
    if section in ("model", "data"):
        known = MODEL_KEYS if section == "model" else DATA_KEYS
        return Option(section, key, PASSED if key in known else "unclassified")
    for kind, table in ((MANAGED, managed(stage, section)), (REFUSED, refused(stage, section))):
        if key in table:
            return Option(section, key, kind, table[key])
    return Option(section, key, PASSED if key in passed(stage, section) else "unclassified")


def unclassified(stage, section: str, values: dict) -> list[str]:
    """Keys of a checked section that its class has but nobody classified (a library newer than the
    snapshot): they are passed through, and validation warns."""
    known = passed(stage, section) | set(managed(stage, section)) | set(refused(stage, section))
    return [k for k in values if k not in known]


def refuse(where: Where, stage, section: str, values: dict | None):
    """Refuse the managed and refused keys of a section (tables only: cheap, before any import), each."""
    m, r = managed(stage, section), refused(stage, section)
    for k in values or ():
        with where.each():
            if k in m:
                where.fail(f"{section}.{k}", f"is set by posttrain: {m[k]}")
            if k in r:
                where.fail(f"{section}.{k}", f"cannot be set in a posttrain recipe: {r[k]}")


# ---------------------------------------------------------------------------------------------
# The installed classes, walked (for the test, the snapshot and the doc)


def installed_fields(path: str) -> list[str]:
    return list(schema.fields_of(schema.config_class(path)))


def owners() -> dict[str, list]:
    """Each owning class the installed TRL has -> the stages whose recipes it checks (a TRL config belongs to one
    stage). A stage the installed TRL cannot run (STAGE.trl) is left out: its class may not exist."""
    out: dict[str, list] = {}
    for s in stages.available().values():
        out.setdefault(s.trl_config, []).append(s)
    out[LORA] = out[BNB] = list(stages.available().values())
    return out


def _tables(path: str, users: list) -> tuple[dict, dict]:
    if path in (LORA, BNB):
        return MANAGED_SECTIONS[path], REFUSED_SECTIONS[path]
    m, r = {}, {}
    for s in users:
        m.update(managed(s))
        r.update(refused(s))
    return m, r


def audit() -> dict[str, dict[str, list[str]]]:
    """Per owning class: fields in no class ('unclassified'), in more than one ('twice'), and snapshot
    names the installed class no longer has ('gone')."""
    snap = snapshot()
    out = {}
    for path, users in owners().items():
        fields = installed_fields(path)
        m, r = _tables(path, users)
        listed = set(snap.get(path, ()))
        out[path] = {
            "unclassified": [f for f in fields if f not in listed and f not in m and f not in r],
            "twice": [f for f in fields if (f in listed) + (f in m) + (f in r) > 1],
            "gone": sorted(listed - set(fields)),
        }
    return out


def generate_snapshot() -> dict[str, list[str]]:
    """What --write stores: every installed field that is neither managed nor refused (and, as they were, the
    entries of classes the installed TRL lacks)."""
    out = {p: names for p, names in snapshot().items() if p not in owners()}
    for path, users in owners().items():
        m, r = _tables(path, users)
        out[path] = sorted(f for f in installed_fields(path) if f not in m and f not in r)
    return dict(sorted(out.items()))


def render_doc() -> str:
    """docs/options.md, from the tables, the snapshot and (for the counts) the installed classes."""
    snap = snapshot()
    lines = [
        "# Options: passed through, managed, refused",
        "",
        "Generated by `python -m posttrain.options --write` from `posttrain/options.py` (the one place",
        "where every option is classified) and the stage modules; do not edit by hand.",
        "",
        "Every field of the owning class is **passed through** (and honoured) unless listed below as",
        "**managed** (posttrain sets it; the recipe is refused with where to set it instead) or",
        "**refused** (with why). `model:` and `data:` keys are posttrain's own and all honoured.",
        "",
        "The fields are the same on every supported TRL (`trl>=1.12,<1.17`; CI walks both ends, 1.12 and 1.16),",
        "except where the TRL column says otherwise: a stage that needs another TRL is refused at validate, in",
        "one line, with the fix.",
        "",
        "| class | stage | TRL | passed | managed keys | refused keys |",
        "|---|---|---|---|---|---|",
    ]
    per_stage = list(stages.all_stages().values())
    for s in per_stage:
        lines.append(f"| `{s.trl_config}` | {s.name} | {s.trl.spec if s.trl else 'all'} | "
                     f"{len(snap.get(s.trl_config, []))} | {len(managed(s))} | {len(refused(s))} |")
    for path, section in ((LORA, "peft"), (BNB, "quantization")):
        lines.append(f"| `{path}` | all (`{section}:`) | all | {len(snap.get(path, []))} | "
                     f"{len(MANAGED_SECTIONS[path])} | {len(REFUSED_SECTIONS[path])} |")
    lines += ["", "A managed or refused key that a stage's class lacks (e.g. `max_length` on ppo) is refused the same "
              "way,", "with the same pointer.", "", "## Defaults that differ between TRL 1.12 and 1.16", "",
              "| key | 1.12 | 1.16 |", "|---|---|---|"]
    lines += [f"| `training.{k}` | {old} | {new} |" for k, (old, new) in TRL_DEFAULTS.items()] + [""]

    def table(title, rows):
        nonlocal lines
        if rows:
            lines += [f"## {title}", "", "| key | class | where to set it / why |", "|---|---|---|"]
            lines += [f"| `{k}` | {kind} | {note} |" for k, kind, note in rows] + [""]

    table("training: every stage", [(f"training.{k}", MANAGED, v) for k, v in MANAGED_TRAINING.items()]
          + [(f"training.{k}", REFUSED, v) for k, v in REFUSED_TRAINING.items()])
    for s in per_stage:
        table(f"training: {s.name} only", [(f"training.{k}", MANAGED, v) for k, v in s.managed.items()]
              + [(f"training.{k}", REFUSED, v) for k, v in s.refused.items()])
    for path, section in ((LORA, "peft"), (BNB, "quantization")):
        table(f"{section}: ({path.split(':')[1]})",
              [(f"{section}.{k}", MANAGED, v) for k, v in MANAGED_SECTIONS[path].items()]
              + [(f"{section}.{k}", REFUSED, v) for k, v in REFUSED_SECTIONS[path].items()])
    lines += ["## Names from other tools", "",
            "An unknown key that another tool uses (`warmup_ratio`, `lora_r`, `cutoff_len`, ...) is answered, at any "
            "level of the recipe,", "with what `posttrain convert` does with it: each tool's key is declared once, in "
            "its convert table", "(posttrain/convert/<tool>.py; other tools' names in posttrain/convert/names.py)."]
    return "\n".join(lines) + "\n"


def _render(value) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=1000).strip()
    return text.removesuffix("...").strip()


def elsewhere(stage, section: str, key: str) -> str:
    """`; did you mean `training.learning_rate`?` when the key belongs to another section."""
    candidates = [("model", MODEL_KEYS), ("data", DATA_KEYS)]
    if stage is not None:
        try:
            candidates += [("training", installed_fields(owner(stage, "training")))]
            candidates += [("peft", installed_fields(LORA)), ("quantization", installed_fields(BNB))]
        except Exception:  # a library that does not import: hint from our own tables only
            pass
        top = TOP_KEYS + list(_stage(stage).keys)
    else:
        top = TOP_KEYS
    if section != "recipe" and key in top and key not in ("description", "extends"):
        return f"; did you mean the top-level `{key}`?"
    for name, keys in candidates:
        if name == section or key not in keys:
            continue
        if name == "training" and key in managed(stage):
            return f"; {key} is set by posttrain: {managed(stage)[key]}"
        if name == "training" and key in refused(stage):
            continue
        return f"; did you mean `{name}.{key}`?"
    return ""


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args not in (["--write"], ["--check"], []):
        print("usage: python -m posttrain.options [--write | --check]", file=sys.stderr)
        return 2
    if args == ["--write"]:
        SNAPSHOT.write_text(json.dumps(generate_snapshot(), indent=1) + "\n", encoding="utf-8")
        snapshot.cache_clear()
        DOC.parent.mkdir(exist_ok=True)
        DOC.write_text(render_doc(), encoding="utf-8")
        print(f"wrote {SNAPSHOT} and {DOC}")
        return 0
    bad = {p: a for p, a in audit().items() if any(a.values())}
    for path, a in bad.items():
        for kind, names in a.items():
            if names:
                print(f"{path}: {kind}: {', '.join(names)}")
    stale_doc = not DOC.is_file() or DOC.read_text(encoding="utf-8") != render_doc()
    if stale_doc:
        print(f"{DOC} is out of date")
    if bad or stale_doc:
        print("review, classify in posttrain/options.py (or the stage's managed/refused), then "
              "`python -m posttrain.options --write`")
        return 1
    print("every option of every owning class is classified")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
