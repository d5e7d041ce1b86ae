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
passed, by definition. Also here: `FOREIGN`, the names other tools use for these options, which the
did-you-mean of an unknown key consults before edit distance, at every level.

Regenerate the snapshot and docs/options.md after a TRL/peft/transformers upgrade (then review the diff):
`python -m posttrain.options --write`; `--check` exits 1 when either is out of date.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from posttrain import schema, stages
from posttrain.keys import DATA_KEYS, MODEL_KEYS, TOP_KEYS
from posttrain.util import Where, did_you_mean

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
                 "adds a distinct one); to pad with another, use a tokenizer that has it (`model.tokenizer`)",
    "chat_template_path": "set `model.chat_template` (inline Jinja or a .jinja path): it formats the data, is saved "
                          "with the run and used by `posttrain generate`",
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
    """Each owning class -> the stages whose recipes it checks (a TRL config belongs to one stage)."""
    out: dict[str, list] = {}
    for s in stages.all_stages().values():
        out.setdefault(s.trl_config, []).append(s)
    out[LORA] = out[BNB] = list(stages.all_stages().values())
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
    """What --write stores: every installed field that is neither managed nor refused."""
    out = {}
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
        "| class | stage | passed | managed | refused |",
        "|---|---|---|---|---|",
    ]
    per_stage = list(stages.all_stages().values())
    for s in per_stage:
        fields = set(installed_fields(s.trl_config))
        lines.append(f"| `{s.trl_config}` | {s.name} | {len(snap.get(s.trl_config, []))} | "
                     f"{len(fields & set(managed(s)))} | {len(fields & set(refused(s)))} |")
    for path, section in ((LORA, "peft"), (BNB, "quantization")):
        lines.append(f"| `{path}` | all (`{section}:`) | {len(snap.get(path, []))} | "
                     f"{len(MANAGED_SECTIONS[path])} | {len(REFUSED_SECTIONS[path])} |")
    lines += ["", "A managed or refused key that a stage's class lacks (e.g. `max_length` on ppo) is refused the same "
              "way,", "with the same pointer.", ""]

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
              "An unknown key that another tool uses (TRL scripts, alignment-handbook, LLaMA-Factory, axolotl) is",
              "answered with the posttrain key, at any level of the recipe:", "",
              "| their key | posttrain |", "|---|---|"]
    for k, f in FOREIGN.items():
        theirs, ours = f"`{k}`", f"`{f.target}`" if _is_key(f.target) else f.target
        if f.example is not None:
            theirs, ours = f"`{k}: {_render(f.example)}`", f"`{f.target}: {_render(f.value(f.example))}`"
        lines.append(f"| {theirs} | {ours}{' (' + f.note + ')' if f.note else ''} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Foreign names: the keys other tools use -> the posttrain key


@dataclasses.dataclass(frozen=True)
class Foreign:
    target: str  # a dotted posttrain key, or a phrase (e.g. a CLI flag)
    note: str = ""
    value: Callable[[Any], Any] | None = None  # the value to suggest, from theirs (None: show theirs if simple)
    example: Any = None  # for the doc: a value of theirs that `value` translates


def _all_linear(v):
    return "all-linear" if v in ("all", ["all"], True) else v


def _quant_block(v):
    return {"load_in_4bit": True} if v in (4, "4") else {"load_in_8bit": True} if v in (8, "8") else None


FOREIGN: dict[str, Foreign] = {
    # lengths
    "max_seq_length": Foreign("data.max_length"),
    "max_seq_len": Foreign("data.max_length"),
    "cutoff_len": Foreign("data.max_length"),
    "sequence_len": Foreign("data.max_length"),
    "model_max_length": Foreign("data.max_length"),
    "max_prompt_length": Foreign("data.max_length", "posttrain bounds the whole row; TRL 1.12 has no prompt length"),
    # schedule
    "warmup_ratio": Foreign("training.warmup_steps", "a value below 1 is a ratio of the total steps"),
    "lr": Foreign("training.learning_rate"),
    "num_epochs": Foreign("training.num_train_epochs"),
    "micro_batch_size": Foreign("training.per_device_train_batch_size"),
    "batch_size": Foreign("training.per_device_train_batch_size", "per device; times gradient_accumulation_steps"),
    "optimizer": Foreign("training.optim"),
    "lr_scheduler": Foreign("training.lr_scheduler_type"),
    "evaluation_strategy": Foreign("training.eval_strategy"),
    "overwrite_output_dir": Foreign("the `--overwrite` flag of `posttrain train` (not a recipe key)"),
    "wandb_project": Foreign("training.report_to", "report_to: wandb, with WANDB_PROJECT set in the environment",
                             value=lambda v: "wandb"),
    # LoRA / quantization
    "lora_r": Foreign("peft.r"),
    "lora_rank": Foreign("peft.r"),
    "lora_target": Foreign("peft.target_modules", value=_all_linear, example='all'),
    "lora_target_modules": Foreign("peft.target_modules", value=_all_linear, example='all'),
    "lora_target_linear": Foreign("peft.target_modules", value=lambda v: "all-linear", example=True),
    "lora_modules_to_save": Foreign("peft.modules_to_save"),
    "use_peft": Foreign("a `peft:` section, e.g. `peft: {r: 16, lora_alpha: 32, target_modules: all-linear}`"),
    "finetuning_type": Foreign("a `peft:` section for LoRA (omit it for full fine-tuning)"),
    "adapter": Foreign("a `peft:` section (plus `quantization: {load_in_4bit: true}` for QLoRA)"),
    "quantization_bit": Foreign("quantization", value=_quant_block, example=4),
    "load_in_4bit": Foreign("quantization", value=lambda v: {"load_in_4bit": True}, example=True),
    "load_in_8bit": Foreign("quantization", value=lambda v: {"load_in_8bit": True}, example=True),
    # data
    "dataset": Foreign("data.train"),
    "datasets": Foreign("data.train"),
    "dataset_mixer": Foreign("data.train"),
    "dataset_name": Foreign("data.train"),
    "dataset_path": Foreign("data.train"),
    "data_path": Foreign("data.train"),
    "train_file": Foreign("data.train"),
    "dataset_config": Foreign("data.name"),
    "dataset_config_name": Foreign("data.name"),
    "dataset_train_split": Foreign("data.split"),
    "dataset_splits": Foreign("data.split"),
    "dataset_test_split": Foreign("data.eval_split"),
    "eval_dataset": Foreign("data.eval"),
    "val_size": Foreign("data.eval_fraction"),
    "val_set_size": Foreign("data.eval_fraction"),
    "test_size": Foreign("data.eval_fraction"),
    "max_samples": Foreign("data.split", "a slice, e.g. \"train[:1000]\""),
    "preprocessing_num_workers": Foreign("data.num_proc"),
    "dataset_num_proc": Foreign("data.num_proc"),
    "dataset_processes": Foreign("data.num_proc"),
    "num_proc": Foreign("data.num_proc"),
    "template": Foreign("model.chat_template"),
    "chat_template": Foreign("model.chat_template"),
    "train_on_inputs": Foreign("nothing to set: the prompt is always masked, exactly (README: prompt masking)"),
    "sample_packing": Foreign("training.packing"),
    # model
    "model_name_or_path": Foreign("model.name_or_path"),
    "base_model": Foreign("model.name_or_path"),
    "model_name": Foreign("model.name_or_path"),
    "model_id": Foreign("model.name_or_path"),
    "pretrained_model_name_or_path": Foreign("model.name_or_path"),
    "model_revision": Foreign("model.revision"),
    "tokenizer_name_or_path": Foreign("model.tokenizer"),
    "tokenizer_name": Foreign("model.tokenizer"),
    "tokenizer_type": Foreign("model.tokenizer"),
    "torch_dtype": Foreign("model.dtype"),
    "flash_attention": Foreign("model.attn_implementation", value=lambda v: "flash_attention_2", example=True),
    "flash_attn": Foreign("model.attn_implementation", value=lambda v: "flash_attention_2", example=True),
    "sdp_attention": Foreign("model.attn_implementation", value=lambda v: "sdpa", example=True),
    # stage inputs and preference settings
    "ref_model_name_or_path": Foreign("ref_model"),
    "reward_model_name_or_path": Foreign("reward_model"),
    "reward_model_path": Foreign("reward_model"),
    "pref_beta": Foreign("training.beta"),
    "dpo_beta": Foreign("training.beta"),
    "pref_loss": Foreign("training.loss_type"),
}


def _is_key(target: str) -> bool:
    return " " not in target


def _render(value) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=1000).strip()
    return text.removesuffix("...").strip()


def _simple(value) -> bool:
    if isinstance(value, list):
        return len(value) <= 8 and all(isinstance(v, (str, int, float, bool)) for v in value)
    return isinstance(value, (str, int, float, bool))


def foreign_hint(key: str, value=None) -> str:
    """`; did you mean `data.max_length: 2048`?` for a key another tool uses, or ''."""
    f = FOREIGN.get(str(key))
    if f is None:
        return ""
    note = f" ({f.note})" if f.note else ""
    if not _is_key(f.target):  # a phrase: a flag, a section to add
        return f"; in posttrain that is {f.target}{note}"
    shown = f.value(value) if f.value else value if _simple(value) else None
    suggestion = f"`{f.target}: {_render(shown)}`" if shown is not None else f"`{f.target}`"
    return f"; did you mean {suggestion}?{note}"


def _elsewhere(stage, section: str, key: str) -> str:
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


def unknown(where: Where, dotted: str, known, *, value=None, stage=None, note: str = ""):
    """Refuse an unknown key: another tool's name first, then the same key in another section, then the
    closest known name by spelling."""
    key = dotted.rsplit(".", 1)[-1]
    section = dotted.rsplit(".", 1)[0] if "." in dotted else "recipe"
    hint = foreign_hint(key, value) or _elsewhere(stage, section, key) or did_you_mean(key, known)
    where.fail(dotted, f"unknown key in {section}{hint}{note}")


def unknown_in(stage):
    """`unknown` for the keys of a stage's recipe (what posttrain.schema.check_owned calls)."""
    return lambda where, dotted, known, value=None, note="": unknown(where, dotted, known, value=value, stage=stage,
                                                                      note=note)


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
