"""posttrain's own recipe keys: the top level, `model:`, `data:` and a mixture's sources, with their types,
defaults and ranges, and the ranges of well-known fields of the classes that own the other sections.

Pure data (no posttrain imports beyond `util`): the check pass (posttrain.checks), the option classification
(posttrain.options) and the hints read it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from posttrain.util import Where, as_number

TOP_KEYS = ["stage", "extends", "description", "model", "data", "peft", "quantization", "training", "watchdog", "tracking",
            "output_dir", "eval"]

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
    "trainable": Key((list,), help="regular expressions over parameter names (fullmatch): train those full "
                                   "weights, freeze the rest"),
    "add_tokens": Key((list,), help="tokens to add to the tokenizer, kept in decoded text; their embedding rows train"),
    "add_special_tokens": Key((list,), help="special tokens to add: never split, dropped from text decoded with "
                                            "skip_special_tokens; their embedding rows train"),
    "special_tokens": Key((dict,), help="the tokenizer's bos_token, eos_token, pad_token, unk_token; one not in the "
                                        "vocabulary is added"),
    "resize_to_multiple_of": Key((int,), range=AT_LEAST_1, help="round the embedding rows up to a multiple (64 suits "
                                                                "GPU kernels) when they grow"),
}
# How a source's rows say their conversations and system prompt; at data level, the default of every source.
TURN_KEYS = {
    "message_map": Key((dict,), help="rename the keys of each conversation turn: {source_key: role | content}"),
    "role_map": Key((dict,), help="rename roles: {source_role: system | user | assistant | tool}"),
    "system_prompt": Key((str,), help="a fixed system prompt for rows whose `system` column is absent or blank"),
}
# A custom prompt format (data.template as a mapping): str.format strings over the row's columns.
PROMPT_FORMAT_KEYS = {
    "prompt": Key((str,), required=True, help="the prompt text with named fields, e.g. '[INST] {instruction} [/INST]'"),
    "no_input": Key((str,), help="the prompt for rows whose fields named only in `prompt` are blank (no {input})"),
}
DATA_KEYS = {
    "train": Key((str, list), required=True,
                 help="hub dataset id or a local jsonl/json/csv/parquet file, or a list of sources (a mixture)"),
    "name": Key((str,), help="hub dataset configuration name"),
    "split": Key((str,), "train"),
    "format": Key((str,)),  # the stage's formats: checked by data_format_fits_stage
    "column_map": Key((dict,), help="rename columns: {source_name: expected_name}"),
    **TURN_KEYS,
    "eval": Key((str, list), help="separate eval source (hub id or local file), or a list of sources"),
    "eval_split": Key((str,), "train"),
    "eval_fraction": Key((int, float), help="a fraction in (0, 1) of the training rows, or a row count >= 1"),
    "seed": Key((int,), range=NON_NEGATIVE, help="seed for sampling and shuffling a mixture; default training.seed"),
    "train_on": Key((str,), choices=("assistant", "all", "last_assistant"),
                    help="which tokens of a conversation are trained (default assistant)"),
    "template": Key((str, dict), choices=("alpaca", "raw", "chat"),
                    help="how rows are written: alpaca | raw | chat (the tokenizer's chat template), or a prompt "
                         "format {prompt: '[INST] {instruction} [/INST]', no_input: ...} (data.template.*)"),
    "max_prompt_length": Key((int,), range=AT_LEAST_1,
                             help="prompts longer than this many tokens are cut from the left (their end kept)"),
    "max_length": Key((int,), 1024, range=Range(2)),
    "pad_to_multiple_of": Key((int,), range=AT_LEAST_1),
    "num_proc": Key((int,), range=AT_LEAST_1),
}

# `eval:` (posttrain eval after training; a pipeline's `eval:` adds `stages`): lm-evaluation-harness options.
EVAL_KEYS = {
    "tasks": Key((str, list), required=True,
                 help="lm-eval task names and/or local task YAML files or folders (shipped: eval/arithmetic.yaml)"),
    "limit": Key((int, float), range=POSITIVE, help="at most this many examples per task (a fraction if < 1)"),
    "batch_size": Key((int,), 8, range=AT_LEAST_1),
    "num_fewshot": Key((int,), range=NON_NEGATIVE, help="default: each task's own"),
    "chat_template": Key((bool,), True, help="false: the task's text as it is, not in the run's prompt template"),
}

# One entry of a data.train / data.eval list (a mixture); a plain string is {source: it}.
SOURCE_KEYS = {
    "source": Key((str,), required=True, help="hub dataset id or a local jsonl/json/csv/parquet file"),
    "name": Key((str,), help="hub dataset configuration name"),
    "split": Key((str,), "train", help="split with an optional slice, e.g. train[:1000]"),
    "format": Key((str,), help="this source's row format; default data.format"),
    "column_map": Key((dict,), help="rename columns: {source_name: expected_name}"),
    **TURN_KEYS,
    "weight": Key((int, float), range=POSITIVE, help="fraction of its usable rows to take; > 1 repeats rows"),
    "rows": Key((int,), range=AT_LEAST_1, help="how many rows to take (more than it has repeats rows)"),
}

# `watchdog:` stops a diverging run (posttrain.watchdog): checked at every logged training loss.
WATCHDOG_KEYS = {
    "loss_above": Key((int, float), help="stop when the logged training loss is above this `patience` logs in a row"),
    "patience": Key((int,), 3, range=AT_LEAST_1, help="logged losses above loss_above in a row that stop the run"),
    "nonfinite": Key((bool,), True, help="stop at a NaN or infinite logged loss"),
}

# `tracking:` settings the experiment trackers of training.report_to read from the environment (posttrain.tracking);
# the run's name is TRL's training.run_name.
TRACKING_KEYS = {
    "project": Key((str,), help="the project (wandb, trackio, comet, swanlab) or experiment (mlflow) of the run"),
    "entity": Key((str,), help="the team or user (wandb), workspace (comet)"),
    "group": Key((str,), help="a group of related runs (wandb)"),
    "tags": Key((list,), help="labels on the run (wandb, mlflow)"),
    "log_model": Key((bool, str), help="upload the model at the end (true), never (false), or each checkpoint (wandb)"),
    "dir": Key((str,), help="where the tracker writes locally (tensorboard logs, wandb files)"),
}

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
