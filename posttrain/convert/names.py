"""Other tools' option names, as `posttrain validate` answers them.

A tool's key is declared once: in its `posttrain convert` table (posttrain/convert/<tool>.py). An unknown key
of a recipe that another tool uses is answered with what converting that key does: its rule applied to the
key alone (mapped: "did you mean `the.posttrain.key: value`?"; dropped: "nothing to set: why"; NOT TRANSLATED:
"posttrain cannot express it: why"), or, for a key read together with its neighbours, the rule's `hint`.
`OTHER` declares the names of tools without a converter (OpenRLHF, older TRL scripts, common spellings).
"""

from __future__ import annotations

from pathlib import Path

from posttrain import options
from posttrain.convert import axolotl, core, llama_factory, torchtune, trl
from posttrain.convert.core import DROPPED, MAPPED, NOT, Call, Conversion, No, To, render
from posttrain.util import Where, did_you_mean

CANNOT = "posttrain cannot express it"
LAUNCHER = ("a launcher config: `accelerate launch --config_file recipes/accelerate/deepspeed_zero3.yaml -m posttrain "
            "train RECIPE` (zero2: deepspeed_zero2.yaml)")


def _column(ours: str, note: str = "") -> To:
    return To("data.column_map", lambda v: {v: ours} if isinstance(v, str) else None, note)


OTHER = {
    "lr": To("training.learning_rate"),
    **dict.fromkeys(("max_seq_len", "model_max_length", "max_len"), To("data.max_length")),
    "prompt_max_len": To("data.max_prompt_length", note="cut from the left, the end of the prompt kept"),
    "generate_max_len": "`training.response_length` (ppo) or `training.max_completion_length` (grpo, rloo)",
    **dict.fromkeys(("dataset_path", "data_path", "train_file", "prompt_data"), To("data.train")),
    "dataset_config_name": To("data.name"),
    "test_size": To("data.eval_fraction"),
    "num_proc": To("data.num_proc"),
    "train_on_input": core.DropIf(False, "posttrain masks the prompt by default (`data.train_on: assistant`)",
                                  To("data.train_on", lambda v: "all", "the prompt is trained too")),
    "input_key": _column("prompt", "rename your column onto the format's: prompt for prompt/preference data"),
    "output_key": _column("output", "rename your column onto the format's (alpaca: output)"),
    "label_key": _column("label", "rename your column onto the format's (unpaired: label)"),
    "chosen_key": _column("chosen"),
    "rejected_key": _column("rejected"),
    "apply_chat_template": "`data.template: chat` (rows written through the chat template)",
    **dict.fromkeys(("model_name", "model_id", "pretrained_model_name_or_path", "pretrain"), To("model.name_or_path")),
    **dict.fromkeys(("tokenizer_name_or_path", "tokenizer_name"), To("model.tokenizer")),
    "checkpointer": "`model.name_or_path` (a directory in Hugging Face format, or a hub id)",
    "metric_logger": "`training.report_to` (wandb, tensorboard, ...; the loss is in the run's trainer_state.json "
                     "either way)",
    "use_wandb": To("training.report_to", lambda v: "wandb" if v else "none"),
    "zero_stage": LAUNCHER,
    "ref_model_name_or_path": To("ref_model"),
    "reward_pretrain": To("reward_model"),
    "critic_pretrain": To("value_model"),
    "init_kl_coef": To("training.kl_coef"),
    "lambd": To("training.lam", note="OpenRLHF's default is 1.0, TRL's 0.95"),
    "value_clip": To("training.cliprange_value", note="OpenRLHF's default is 0.5, TRL's 0.2"),
    "eps_clip": To("training.cliprange"),
    "n_samples_per_prompt": To("training.num_generations", note="grpo, rloo"),
    "actor_learning_rate": To("training.learning_rate"),
    "critic_learning_rate": No("TRL's PPO trains policy and value model with one `training.learning_rate`"),
    "micro_train_batch_size": To("training.per_device_train_batch_size"),
    "train_batch_size": "`training.per_device_train_batch_size` x `training.gradient_accumulation_steps` x "
                        "processes (the global batch is their product)",
    "max_epochs": To("training.num_train_epochs"),
}

# each tool's declarations (torchtune's top-level keys; its nested ones are named by their component)
TABLES = {"TrainingArguments": core.TRAINING_ARGS, "TRL": trl.TABLE, "LLaMA-Factory": llama_factory.TABLE,
          "axolotl": axolotl.TABLE, "torchtune": {k: v for k, v in torchtune.TABLE.items() if "." not in k},
          "other tools": OTHER}


def _simple(value) -> bool:
    if isinstance(value, list):
        return len(value) <= 8 and all(isinstance(v, (str, int, float, bool)) for v in value)
    return isinstance(value, (str, int, float, bool))


def _mapped(fate, value) -> str:
    shown = [f"`{d}: {render(v)}`" if _simple(v) or v != value and len(render(v)) <= 80 and "\n" not in str(v)
             else f"`{d}`" for d, v in (fate.new or {}).items()]
    note = fate.text.split("  (", 1)[1][:-1] if "  (" in fate.text else ""
    return f"did you mean {', '.join(shown)}?" + (f" ({note})" if note else "")


def _said(kind: str, text: str) -> str:
    if kind == DROPPED:
        return f"nothing to set: {text}"
    return f"{CANNOT}{' ' if text.startswith('(') else ': '}{text}"


def face(tool: str, key: str, rule, value=None) -> str:
    """What validate says of `key: value` from the tool's rule: the fate converting the key alone gives it."""
    conv = Conversion(tool, Path(f"({tool})"), {key: value}, "sft")
    try:
        if isinstance(rule, Call) and rule.hint is not None:
            rule = rule.hint(value) if callable(rule.hint) else rule.hint
        if isinstance(rule, str):  # a phrase: where it goes in posttrain
            return f"in posttrain that is {rule}"
        conv.apply(key, value, rule)
    except Exception:  # noqa: BLE001 - a value the rule cannot read: the rule's target alone (a hint never fails)
        return f"did you mean `{rule.target}`?" if isinstance(rule, To) else ""
    said = [_mapped(f, value) if f.kind == MAPPED else _said(f.kind, f.text) for f in conv.fates
            if f.kind in (MAPPED, DROPPED, NOT) and f.key.split(".")[0] == key]
    return "; ".join(dict.fromkeys(said))


def foreign_hint(key: str, value=None) -> str:
    """`; did you mean `data.max_length: 2048`?` for a key another tool uses, or ''; where tools differ, each says."""
    said: dict[str, list[str]] = {}
    for tool, table in TABLES.items():
        if key in table:
            text = face(tool, key, table[key], value)
            if text:
                said.setdefault(text, []).append(tool)
    if len(said) == 1:
        return "; " + next(iter(said))
    return "".join(f"; {'/'.join(tools)}'s `{key}`: {text}" for text, tools in said.items())


def unknown(where: Where, dotted: str, known, *, value=None, stage=None, note: str = ""):
    """Refuse an unknown key: the same key in another section first, then another tool's name, then the closest
    known name by spelling."""
    key = dotted.rsplit(".", 1)[-1]
    section = dotted.rsplit(".", 1)[0] if "." in dotted else "recipe"
    hint = options.elsewhere(stage, section, key) or foreign_hint(key, value) or did_you_mean(key, known)
    where.fail(dotted, f"unknown key in {section}{hint}{note}")


def unknown_in(stage):
    """`unknown` for the keys of a stage's recipe (what posttrain.schema.check_owned calls)."""
    return lambda where, dotted, known, value=None, note="": unknown(where, dotted, known, value=value, stage=stage,
                                                                      note=note)
