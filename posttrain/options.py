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
              "An unknown key that another tool uses (TRL scripts, alignment-handbook, LLaMA-Factory, axolotl) is",
              "answered with the posttrain key, at any level of the recipe:", "",
              "| their key | posttrain |", "|---|---|"]
    for k, f in FOREIGN.items():
        for theirs, hint in (f.cases or {}).items():
            lines.append(f"| `{k}: {_render(theirs)}` | {hint} |")
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
    cases: dict | None = None  # their value -> the whole hint for it (a phrase), where values mean different things


def _all_linear(v):
    return "all-linear" if v in ("all", ["all"], True) else v


def _quant_block(v):
    return {"load_in_4bit": True} if v in (4, "4") else {"load_in_8bit": True} if v in (8, "8") else None


CANNOT = "posttrain cannot express it"
# axolotl's Liger switches: each is TRL's use_liger_kernel (which applies every Liger kernel for the architecture)
LIGER_KEYS = ("liger_rope", "liger_rms_norm", "liger_glu_activation", "liger_layer_norm", "liger_cross_entropy",
              "liger_fused_linear_cross_entropy", "liger_rms_norm_gated")
# freeze training (LLaMA-Factory's finetuning_type: freeze, axolotl's unfrozen_parameters) is model.trainable
TRAINABLE = ("regular expressions over the parameter names to train, the rest frozen, e.g. "
             "['model\\.layers\\.(30|31)\\..*'] for the last 2 of 32 layers")

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
    "finetuning_type": Foreign("a `peft:` section for lora; no `peft:` for full; `model.trainable` for freeze",
                               cases={
        "lora": "a `peft:` section, e.g. `peft: {r: 8, lora_alpha: 16, target_modules: all-linear}` (LLaMA-Factory's "
                "lora_alpha defaults to 2 x rank)",
        "full": "nothing to set: without a `peft:` section posttrain fine-tunes every parameter",
        "freeze": f"`model.trainable`: {TRAINABLE}",
        "oft": f"{CANNOT}: posttrain trains LoRA adapters only"}),
    "lora_fan_in_fan_out": Foreign("peft.fan_in_fan_out"),
    "peft_use_dora": Foreign("peft.use_dora"),
    "peft_use_rslora": Foreign("peft.use_rslora"),
    "additional_target": Foreign("peft.modules_to_save"),
    "pissa_init": Foreign("peft.init_lora_weights", value=lambda v: "pissa" if v else True, example=True),
    "loraplus_lr_ratio": Foreign(f"{CANNOT} (LoRA+: a higher learning rate for the B matrices); closest: plain LoRA "
                                 "with a higher `training.learning_rate`"),
    "loraplus_lr_embedding": Foreign(f"{CANNOT} (LoRA+)"),
    "use_llama_pro": Foreign(f"{CANNOT} (block expansion)"),
    "freeze_trainable_layers": Foreign("model.trainable", TRAINABLE, value=lambda v: None),
    "freeze_trainable_modules": Foreign("model.trainable", TRAINABLE, value=lambda v: None),
    "adapter_name_or_path": Foreign(f"{CANNOT}: posttrain trains a new adapter; merge the old one first "
                                    "(`posttrain merge RUN_DIR`) and train on the merged model"),
    "lora_model_dir": Foreign(f"{CANNOT}: posttrain trains a new adapter; merge the old one first "
                              "(`posttrain merge RUN_DIR`) and train on the merged model"),
    "create_new_adapter": Foreign(f"{CANNOT}: posttrain always trains a new adapter"),
    "quantization_method": Foreign("quantization", "bitsandbytes only", value=lambda v: {"load_in_4bit": True},
                                   example="bitsandbytes"),
    "double_quantization": Foreign("quantization.bnb_4bit_use_double_quant"),
    "use_bnb_nested_quant": Foreign("quantization.bnb_4bit_use_double_quant"),
    "quantization_type": Foreign("quantization.bnb_4bit_quant_type"),
    "lora_task_type": Foreign("nothing to set: posttrain sets the task type per stage (CAUSAL_LM; SEQ_CLS for reward)"),
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
    "template": Foreign("model.chat_template", "a .jinja file or inline Jinja; posttrain ships templates/chatml.jinja, "
                        "llama3.jinja, zephyr.jinja, gemma.jinja; `posttrain convert` maps template names onto them"),
    "chat_template": Foreign("model.chat_template", "a .jinja file or inline Jinja; posttrain ships "
                             "templates/chatml.jinja, llama3.jinja, zephyr.jinja, gemma.jinja"),
    "train_on_inputs": Foreign("`data.train_on: all` to train the prompt too (false, the default: nothing to set; "
                               "the prompt is masked exactly)", cases={
        True: "`data.train_on: all` (the prompt is trained too)",
        False: "nothing to set: posttrain masks the prompt by default (`data.train_on: assistant`)"}),
    "train_on_input": Foreign("`data.train_on: all` to train the prompt too (torchtune's default is true)", cases={
        True: "`data.train_on: all` (the prompt is trained too)",
        False: "nothing to set: posttrain masks the prompt by default (`data.train_on: assistant`)"}),
    "train_on_prompt": Foreign("`data.train_on: all` to train the prompt too", cases={
        True: "`data.train_on: all` (the prompt is trained too)",
        False: "nothing to set: posttrain masks the prompt by default"}),
    "mask_history": Foreign("`data.train_on: last_assistant` (only the last turn is trained)", cases={
        True: "`data.train_on: last_assistant` (earlier turns are context)",
        False: "nothing to set: every assistant turn is trained by default (`data.train_on: assistant`)"}),
    "neat_packing": Foreign("`training.packing: true` (posttrain's packing never attends across rows, as neat_packing)"),
    "eval_sample_packing": Foreign("nothing to set: eval batches are padded (`training.packing` packs training batches)"),
    "pad_to_sequence_len": Foreign("nothing to set: batches pad to their longest row (`data.pad_to_multiple_of` for a "
                                   "multiple)"),
    "dataset_dir": Foreign("paths in `data.train` (a local file, relative to where posttrain runs)"),
    "mix_strategy": Foreign("a list in `data.train` (a mixture: sources concatenated and shuffled; `weight:` per "
                            "source)"),
    "interleave_probs": Foreign("`weight:` on each `data.train` entry (a mixture)"),
    "overwrite_cache": Foreign("nothing to set: the datasets cache is keyed on the data and settings"),
    "dataset_prepared_path": Foreign("nothing to set: prepared data is cached by `datasets` (HF_DATASETS_CACHE)"),
    "streaming": Foreign(f"{CANNOT} (datasets are loaded, not streamed); closest: a slice in `data.split`"),
    "tokenized_path": Foreign(f"{CANNOT}; posttrain tokenizes once per run and `datasets` caches it"),
    "default_system": Foreign(f"{CANNOT} as a setting; put the system turn in the data, or in the chat template "
                              "(`model.chat_template`)"),
    "default_system_message": Foreign(f"{CANNOT} as a setting; put the system turn in the data, or in the chat "
                                      "template (`model.chat_template`)"),
    "enable_thinking": Foreign("a per-row `chat_template_kwargs` column (e.g. {enable_thinking: true}), passed to the "
                               "chat template"),
    "chat_template_jinja": Foreign("model.chat_template", "inline Jinja or a .jinja file"),
    "input_key": Foreign("data.column_map", "rename your column onto the format's: prompt for prompt/preference data",
                         value=lambda v: {v: "prompt"} if isinstance(v, str) else None, example="question"),
    "output_key": Foreign("data.column_map", "rename your column onto the format's (alpaca: output)",
                          value=lambda v: {v: "output"} if isinstance(v, str) else None, example="answer"),
    "label_key": Foreign("data.column_map", "rename your column onto the format's (unpaired: label)",
                         value=lambda v: {v: "label"} if isinstance(v, str) else None, example="y"),
    "chosen_key": Foreign("data.column_map", value=lambda v: {v: "chosen"} if isinstance(v, str) else None,
                          example="pos"),
    "rejected_key": Foreign("data.column_map", value=lambda v: {v: "rejected"} if isinstance(v, str) else None,
                            example="neg"),
    "prompt_data": Foreign("data.train"),
    "apply_chat_template": Foreign("`data.template: chat` (rows written through the chat template)"),
    "max_len": Foreign("data.max_length"),
    "prompt_max_len": Foreign("data.max_length", "posttrain bounds the whole row"),
    "generate_max_len": Foreign("`training.response_length` (ppo) or `training.max_completion_length` (grpo, rloo)"),
    "special_tokens": Foreign(f"{CANNOT} (it adds no tokens to a tokenizer): use a tokenizer that has them "
                              "(`model.tokenizer`); padding uses the tokenizer's pad token, else EOS, masked by "
                              "position; `training.eos_token` sets EOS (sft, reward)"),
    "tokens": Foreign(f"{CANNOT} (it adds no tokens to a tokenizer): use a tokenizer that has them (`model.tokenizer`)"),
    "new_special_tokens": Foreign(f"{CANNOT} (it adds no tokens to a tokenizer): use a tokenizer that has them "
                                  "(`model.tokenizer`)"),
    "resize_vocab": Foreign(f"{CANNOT}: the model keeps its vocabulary; use a tokenizer that fits it"),
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
    "tokenizer_type": Foreign("nothing to set: the tokenizer class comes from the tokenizer's own files "
                              "(`model.tokenizer` names a different tokenizer repo or path, not a class)"),
    "model_type": Foreign("nothing to set: the model class follows the stage (a causal LM; sequence classification "
                          "with one label for `stage: reward`)"),
    "num_labels": Foreign("nothing to set: `stage: reward` trains a one-label scoring model"),
    "base_model_config": Foreign("model.name_or_path", "posttrain reads the config beside the weights"),
    "tokenizer_config": Foreign("model.tokenizer"),
    "revision_of_model": Foreign("model.revision"),
    "pretrain": Foreign("model.name_or_path"),
    "checkpointer": Foreign("`model.name_or_path` (a directory in Hugging Face format, or a hub id)"),
    "xformers_attention": Foreign("model.attn_implementation", "closest: sdpa; posttrain does not use xformers",
                                  value=lambda v: "sdpa", example=True),
    "flex_attention": Foreign("model.attn_implementation", value=lambda v: "flex_attention", example=True),
    "eager_attention": Foreign("model.attn_implementation", value=lambda v: "eager", example=True),
    "s2_attention": Foreign(f"{CANNOT} (shifted-sparse attention); closest: `model.attn_implementation: sdpa`"),
    "shift_attn": Foreign(f"{CANNOT} (shifted-sparse attention); closest: `model.attn_implementation: sdpa`"),
    "rope_scaling": Foreign(f"{CANNOT}: use a model whose config.json sets the RoPE scaling"),
    "use_unsloth": Foreign(f"{CANNOT}: posttrain trains with TRL's trainers, not Unsloth's"),
    "upcast_layernorm": Foreign(f"{CANNOT}; `model.dtype: fp32` keeps every layer in float32"),
    "disable_gradient_checkpointing": Foreign("training.gradient_checkpointing",
                                              value=lambda v: not v if isinstance(v, bool) else None, example=True),
    "enable_activation_checkpointing": Foreign("training.gradient_checkpointing"),
    "enable_activation_offloading": Foreign("training.activation_offloading", "sft, reward, dpo, kto"),
    "compile": Foreign("training.torch_compile"),
    "dtype": Foreign("model.dtype"),
    "device": Foreign("nothing to set: posttrain trains on the GPU when there is one, else the CPU"),
    "shuffle": Foreign("nothing to set: training rows are shuffled every epoch (the trainer's sampler)"),
    "optimizer_in_bwd": Foreign(f"{CANNOT} (optimizer steps fused into backward); closest: `training.optim: "
                                "adamw_torch_fused`"),
    "save_adapter_weights_only": Foreign("nothing to set: a LoRA run saves its adapter; `posttrain merge RUN_DIR` writes "
                                         "the merged model"),
    "strict": Foreign("nothing to set: posttrain is always strict (unknown keys are errors)"),
    "debug": Foreign("`posttrain validate RECIPE` (shows one masked training example)"),
    "plot_loss": Foreign("`posttrain report RUN_DIR` after training (loss curves as PNG and a markdown summary)"),
    "log_peak_memory_stats": Foreign("nothing to set: `posttrain plan RECIPE` estimates GPU memory before a run"),
    "metric_logger": Foreign("training.report_to", "wandb, tensorboard, ...; the loss is in the run's "
                             "trainer_state.json either way"),
    "use_tensorboard": Foreign("training.report_to", value=lambda v: "tensorboard" if v else "none", example=True),
    "use_wandb": Foreign("training.report_to", value=lambda v: "wandb" if v else "none", example=True),
    "wandb_name": Foreign("training.run_name"),
    "wandb_entity": Foreign("the WANDB_ENTITY environment variable, with `training.report_to: wandb`"),
    "wandb_watch": Foreign("the WANDB_WATCH environment variable, with `training.report_to: wandb`"),
    "wandb_log_model": Foreign("the WANDB_LOG_MODEL environment variable, with `training.report_to: wandb`"),
    "wandb_run_id": Foreign("the WANDB_RUN_ID environment variable, with `training.report_to: wandb`"),
    "evals_per_epoch": Foreign("`training.eval_strategy: steps` with `training.eval_steps: 1/(N x epochs)` (a value "
                               "below 1 is a ratio of the total steps)"),
    "saves_per_epoch": Foreign("`training.save_strategy: steps` with `training.save_steps: 1/(N x epochs)` (a value "
                               "below 1 is a ratio of the total steps)"),
    "early_stopping_patience": Foreign(f"{CANNOT} (no early-stopping callback); closest: `training.load_best_model_at_end: "
                                       "true` with eval and save every N steps"),
    "loss_watchdog_threshold": Foreign(f"{CANNOT} (no loss watchdog)"),
    "loss_watchdog_patience": Foreign(f"{CANNOT} (no loss watchdog)"),
    "eval_table_size": Foreign(f"{CANNOT}; `posttrain generate RUN_DIR --prompt ...` shows the model's answers"),
    "eval_max_new_tokens": Foreign(f"{CANNOT}; `posttrain generate RUN_DIR --max-new-tokens N`"),
    "group_by_length": Foreign(f"{CANNOT} (transformers 5 has no length-grouped sampler); `training.packing: true` "
                               "(sft) also saves the padding"),
    "unfrozen_parameters": Foreign("model.trainable", "whole parameter names (axolotl matches their start): "
                                   "`posttrain convert` writes each pattern as `(?:pattern).*`"),
    **dict.fromkeys(LIGER_KEYS,
                    Foreign("training.use_liger_kernel", "TRL applies every Liger kernel for the architecture",
                            value=lambda v: True, example=True)),
    "plugins": Foreign("`training.use_liger_kernel: true` for axolotl's Liger plugin (Cut Cross Entropy only saves "
                       "memory; other plugins: posttrain cannot express them)"),
    **dict.fromkeys(("lora_mlp_kernel", "lora_qkv_kernel", "lora_o_kernel"),
                    Foreign("nothing to set: axolotl's fused LoRA kernels change speed only, not the LoRA")),
    "fsdp_version": Foreign("a launcher config: `accelerate launch --config_file recipes/accelerate/fsdp.yaml -m "
                            "posttrain train RECIPE` (its fsdp_version is 2)"),
    "eot_tokens": Foreign("nothing to set: posttrain trains what the chat template writes at the end of each assistant "
                          "turn"),
    "deepspeed": Foreign("a launcher config: `accelerate launch --config_file recipes/accelerate/deepspeed_zero3.yaml "
                         "-m posttrain train RECIPE` (zero2: deepspeed_zero2.yaml)"),
    "fsdp": Foreign("a launcher config: `accelerate launch --config_file recipes/accelerate/fsdp.yaml -m posttrain "
                    "train RECIPE`"),
    "fsdp_config": Foreign("a launcher config: `accelerate launch --config_file recipes/accelerate/fsdp.yaml -m "
                           "posttrain train RECIPE`"),
    "zero_stage": Foreign("a launcher config: `accelerate launch --config_file recipes/accelerate/deepspeed_zero3.yaml "
                          "-m posttrain train RECIPE` (zero2: deepspeed_zero2.yaml)"),
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
    "pref_loss": Foreign("training.loss_type", cases={
        "orpo": "`stage: orpo` (ORPO is its own trainer, with no reference model)",
        "simpo": f"{CANNOT} (SimPO is TRL's CPO trainer, not a posttrain stage yet)"}),
    "pref_ftx": Foreign(f"{CANNOT} (an SFT loss added to DPO) with TRL 1.12's DPOConfig"),
    "simpo_gamma": Foreign(f"{CANNOT} (SimPO is TRL's CPO trainer, not a posttrain stage yet)"),
    "dpo_label_smoothing": Foreign("training.label_smoothing"),
    "kto_chosen_weight": Foreign("training.desirable_weight"),
    "kto_rejected_weight": Foreign("training.undesirable_weight"),
    "ppo_epochs": Foreign("training.num_ppo_epochs"),
    "ppo_whiten_rewards": Foreign("training.whiten_rewards"),
    "ppo_score_norm": Foreign(f"{CANNOT} (TRL's PPO does not normalise scores); closest: `training.whiten_rewards`"),
    "ppo_target": Foreign(f"{CANNOT} (adaptive KL); TRL's PPO uses a fixed `training.kl_coef`"),
    "init_kl_coef": Foreign("training.kl_coef"),
    "lambd": Foreign("training.lam", "OpenRLHF's default is 1.0, TRL's 0.95"),
    "value_clip": Foreign("training.cliprange_value", "OpenRLHF's default is 0.5, TRL's 0.2"),
    "eps_clip": Foreign("training.cliprange"),
    "n_samples_per_prompt": Foreign("training.num_generations", "grpo, rloo"),
    "reward_pretrain": Foreign("reward_model"),
    "critic_pretrain": Foreign("value_model"),
    "actor_learning_rate": Foreign("training.learning_rate"),
    "critic_learning_rate": Foreign(f"{CANNOT}: TRL's PPO trains policy and value model with one "
                                    "`training.learning_rate`"),
    "micro_train_batch_size": Foreign("training.per_device_train_batch_size"),
    "train_batch_size": Foreign("`training.per_device_train_batch_size` x `training.gradient_accumulation_steps` x "
                                "processes (the global batch is their product)"),
    "max_epochs": Foreign("training.num_train_epochs"),
    "rl": Foreign("the top-level `stage`", cases={
        "dpo": "`stage: dpo`", "ipo": "`stage: dpo` with `training.loss_type: ipo`", "kto": "`stage: kto`",
        "orpo": "`stage: orpo`", "grpo": "`stage: grpo`",
        "simpo": f"{CANNOT} (SimPO is TRL's CPO trainer, not a posttrain stage yet)"}),
    "rl_beta": Foreign("training.beta"),
    "orpo_alpha": Foreign("training.beta", "ORPO's lambda is beta in TRL's ORPOConfig (stage: orpo)"),
    "epochs": Foreign("training.num_train_epochs"),
    "clip_grad_norm": Foreign("training.max_grad_norm"),
    "log_every_n_steps": Foreign("training.logging_steps"),
    "max_steps_per_epoch": Foreign("training.max_steps", "the total over all epochs"),
    "eval_batch_size": Foreign("training.per_device_eval_batch_size"),
    # the rest of the tools' option lists (posttrain/convert/*.py tables)
    "use_flash_attention_2": Foreign("model.attn_implementation", value=lambda v: "flash_attention_2" if v else None,
                                     example=True),
    "lora_target_parameters": Foreign("peft.target_parameters"),
    "dataset_mixture": Foreign("data.train", "a list of sources, each with `source:`, `name:`, `split:`, `weight:`; "
                               "test_split_size is data.eval_fraction"),
    "dataset_configs": Foreign("`name:` on each `data.train` entry (a mixture)"),
    "dataset_streaming": Foreign(f"{CANNOT} (datasets are loaded, not streamed)"),
    "assistant_only_loss": Foreign("data.train_on", value=lambda v: "assistant" if v else "all", example=True),
    "completion_only_loss": Foreign("data.train_on", "for prompt/completion rows", value=lambda v: "assistant" if v
                                    else "all", example=False),
    "ignore_bias_buffers": Foreign("nothing to set: a DDP workaround; the launcher handles DDP"),
    "truncation_side": Foreign(f"{CANNOT}: posttrain truncates the end of a row (`data.max_length`)"),
    "auto_insert_empty_system_msg": Foreign("nothing to set: posttrain renders messages as written; add a system turn "
                                            "to the data if your template needs one"),
    "text_column": Foreign(f"{CANNOT}: posttrain has no raw-text format; give the rows as messages or "
                           "prompt/completion"),
    "cache_dir": Foreign("the HF_HOME environment variable (the Hugging Face cache)"),
    "use_fast_tokenizer": Foreign("nothing to set: transformers loads the fast tokenizer"),
    "infer_dtype": Foreign("model.dtype"),
    "use_reentrant_gc": Foreign("training.gradient_checkpointing_kwargs", value=lambda v: {"use_reentrant": bool(v)},
                                example=False),
    "low_cpu_mem_usage": Foreign("nothing to set: transformers 5 always loads with low memory use"),
    "hf_hub_token": Foreign("the HF_TOKEN environment variable (secrets never go in a recipe)"),
    "ms_hub_token": Foreign(f"{CANNOT}: posttrain reads the Hugging Face hub and local files only"),
    "print_param_status": Foreign("nothing to set: posttrain logs the trainable parameter count"),
    "split_special_tokens": Foreign(f"{CANNOT}: special tokens are kept whole"),
    "train_from_scratch": Foreign(f"{CANNOT}: posttrain fine-tunes pretrained weights"),
    "preprocessing_batch_size": Foreign("nothing to set: a datasets.map batch size (`data.num_proc` sets the workers)"),
    "buffer_size": Foreign(f"{CANNOT} (a streaming setting; datasets are loaded, not streamed)"),
    "eval_on_each_dataset": Foreign(f"{CANNOT}: a mixture's eval rows are one eval set"),
    "ignore_pad_token_for_loss": Foreign("nothing to set: padding is always masked from the loss, by position"),
    "tool_format": Foreign("nothing to set: tools render through the tokenizer's chat template"),
    "ppo_buffer_size": Foreign("training.num_mini_batches", "TRL's PPO splits each rollout batch into mini-batches"),
    "reward_model_type": Foreign("nothing to set: `reward_model` is a full sequence-classification model (a reward "
                                 "stage's run directory)"),
    "compute_accuracy": Foreign(f"{CANNOT} (no token accuracy for SFT); reward runs log accuracy"),
    "disable_shuffling": Foreign(f"{CANNOT}: training rows are always shuffled"),
    "include_effective_tokens_per_second": Foreign("nothing to set: the manifest records tokens seen"),
    "use_galore": Foreign("training.optim", value=lambda v: "galore_adamw" if v else None, example=True),
    "use_badam": Foreign(f"{CANNOT} (BAdam)"),
    "use_apollo": Foreign(f"{CANNOT} (APOLLO)"),
    "use_adam_mini": Foreign(f"{CANNOT} (Adam-mini)"),
    "freeze_extra_modules": Foreign("model.trainable", TRAINABLE, value=lambda v: None),
    "use_swanlab": Foreign("training.report_to", "an integration transformers knows, e.g. wandb, tensorboard"),
    "do_sample": Foreign("`posttrain generate RUN_DIR --sample`"),
    "num_beams": Foreign(f"{CANNOT}: `posttrain generate` decodes greedily or samples"),
    "length_penalty": Foreign(f"{CANNOT}: `posttrain generate` decodes greedily or samples"),
    "skip_special_tokens": Foreign("nothing to set: `posttrain generate` prints the text without special tokens"),
    "max_new_tokens": Foreign("`training.response_length` (ppo) or `posttrain generate --max-new-tokens N`"),
    "test_datasets": Foreign("data.eval"),
    "hub_model_revision": Foreign("training.hub_revision"),
    "reward_funcs": Foreign("rewards", "grpo/rloo: a list of reward models and the rules exact_match and "
                            "length_penalty; Python functions cannot be named"),
    "attn": Foreign("model.attn_implementation", "fa2: flash_attention_2, sdpa, disabled: eager"),
    "enable_liger_kernel": Foreign("training.use_liger_kernel"),
    "trl": Foreign("training", "axolotl's `trl:` options are fields of the stage's TRL config, under `training:`"),
    "sft_model_path": Foreign("model.name_or_path", "the policy (ppo)"),
    "push_to_hub_revision": Foreign("`training.push_to_hub: true` with `training.hub_revision: BRANCH`"),
    **{f"is_{m}_derived_model": Foreign("nothing to set: the model's config.json names its architecture")
       for m in ("llama", "mistral", "qwen", "falcon")},
    "eval_table_max_new_tokens": Foreign(f"{CANNOT}; `posttrain generate RUN_DIR --max-new-tokens N`"),
    "pref_bco_weight": Foreign(f"{CANNOT} (a BCO term in DPO) with TRL 1.12's DPOConfig"),
    "ref_model_adapters": Foreign("ref_model", "merge the adapter first (`posttrain merge RUN_DIR`) and name the result"),
    "reward_model_adapters": Foreign("reward_model", "merge the adapter first (`posttrain merge RUN_DIR`) and name the "
                                     "result"),
    "ref_model_quantization_bit": Foreign(f"{CANNOT}: posttrain loads the reference model unquantized"),
    "reward_model_quantization_bit": Foreign(f"{CANNOT}: posttrain loads the reward model unquantized"),
    "pure_bf16": Foreign("model.dtype", "bf16 weights", value=lambda v: "bf16" if v else None, example=True),
    "pissa_iter": Foreign("nothing to set: peft's default PiSSA iterations (`peft.init_lora_weights: pissa_niter_N` "
                          "for N)"),
    "pissa_convert": Foreign(f"{CANNOT}: posttrain saves the PiSSA adapter as trained"),
    "bnb_config_kwargs": Foreign("quantization", "any transformers.BitsAndBytesConfig option"),
    "push_dataset_to_hub": Foreign(f"{CANNOT}: posttrain does not upload datasets"),
    "shuffle_merged_datasets": Foreign("nothing to set: a mixture is always shuffled"),
    "max_prompt_len": Foreign("data.max_length", "posttrain bounds the whole row"),
    "mlflow_tracking_uri": Foreign("the MLFLOW_TRACKING_URI environment variable, with `training.report_to: mlflow`"),
    "mlflow_experiment_name": Foreign("the MLFLOW_EXPERIMENT_NAME environment variable, with `training.report_to: "
                                      "mlflow`"),
    "auto_resume_from_checkpoints": Foreign("`posttrain train RECIPE --resume`"),
    "cosine_min_lr_ratio": Foreign("training.lr_scheduler_type", "with `training.lr_scheduler_kwargs: {min_lr_rate: "
                                   "R}`", value=lambda v: "cosine_with_min_lr", example=0.1),
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
    if f.cases:
        for theirs, hint in f.cases.items():
            if _simple(value) and (value is theirs or not isinstance(theirs, bool) and value == theirs):
                return f"; in posttrain that is {hint}"
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
