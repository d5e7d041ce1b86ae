"""axolotl YAML (`axolotl train x.yml`).

Keys: axolotl's config schema (src/axolotl/utils/schemas/: AxolotlInputConfig with its model, dataset,
LoRA, RL, training and integration fields); those that are Hugging Face TrainingArguments under the same
name pass through to the stage's TRL config.

Implicit defaults made explicit (from the schema and axolotl's loaders):
- sequence_len 512 (`sequence_len: int = Field(default=512)`; posttrain's data.max_length default is 1024);
- LoRA/QLoRA: lora_dropout 0.0; `adapter: qlora` loads 4-bit nf4 with double quantization and compute
  dtype = the training precision (bf16/fp16, else float32);
- the prompt is masked (train_on_inputs false), every assistant turn trained;
- `evals_per_epoch` / `saves_per_epoch` N become eval/save every 1/(N x epochs) of the run (a step ratio);
- `bf16: auto` is posttrain's own rule (bf16 where the GPU supports it).
"""

from __future__ import annotations

import re

from posttrain.convert.check import check
from posttrain.convert.core import (
    SWANLAB,
    Call,
    Conversion,
    Drop,
    DropIf,
    No,
    To,
    chat_template,
    empty,
    eval_fraction,
    flag,
    later,
    launch_hint,
    map_sources,
    one_source,
    packing,
    stage_format,
    swanlab,
    walk,
)
from posttrain.data.formats import SHAREGPT_ROLES
from posttrain.models import SPECIAL_TOKEN_KEYS

# axolotl's `rl:` -> the posttrain stage, and the settings it implies
RL = {"dpo": "dpo", "ipo": "dpo", "kto": "kto", "orpo": "orpo", "grpo": "grpo", "simpo": "cpo"}
RL_SETS = {"ipo": {"training.loss_type": "ipo"}, "simpo": {"training.loss_type": "simpo"}}
# axolotl DPO/ORPO dataset types whose columns are fixed (their prompt strategies) -> posttrain column_map
PREFERENCE_TYPES = {"intel": {"question": "prompt"}, "ultra": {}, "icr": {"input": "prompt"}, "prompt_pairs": {},
                    "argilla": {"instruction": "prompt", "chosen_response": "chosen", "rejected_response": "rejected"}}
OLD_ADAPTER = "posttrain trains a new adapter; merge this one first (`posttrain merge RUN_DIR`) and train on the merged model"
# read together by `_peft`
PEFT = {"lora_r": To("peft.r"), "lora_alpha": To("peft.lora_alpha"), "lora_dropout": To("peft.lora_dropout"),
        "lora_modules_to_save": To("peft.modules_to_save"), "lora_fan_in_fan_out": To("peft.fan_in_fan_out"),
        "peft_use_dora": To("peft.use_dora"), "peft_use_rslora": To("peft.use_rslora"),
        "lora_target_parameters": To("peft.target_parameters")}
LORA = {**PEFT, "lora_target_modules": To("peft.target_modules"),
        "lora_target_linear": To("peft.target_modules", lambda v: "all-linear"), "lora_model_dir": No(OLD_ADAPTER)}
QUANT = {"load_in_4bit": To("quantization", lambda v: {"load_in_4bit": True}),
         "load_in_8bit": To("quantization", lambda v: {"load_in_8bit": True}),
         "bnb_config_kwargs": To("quantization", note="any transformers.BitsAndBytesConfig option")}
PRECISION = {"bf16": DropIf("auto", "posttrain's own rule: bf16 where the GPU supports it (fp32 on CPU)",
                            To("training.bf16")), "fp16": To("training.fp16")}


def _rl_hint(value) -> str:
    stage = RL.get(str(value).lower())
    sets = " with " + " and ".join(f"`{k}: {v}`" for k, v in RL_SETS[value].items()) if value in RL_SETS else ""
    return f"`stage: {stage}`{sets}" if stage else "the top-level `stage`"


PER_EPOCH = "`training.{0}_strategy: steps` with `training.{0}_steps: 1/(N x epochs)` (a value below 1 is a ratio " \
            "of the total steps)"
# keys read together with their neighbours (by _stage, _peft, _data, _schedule), with what validate says of them
NEIGHBOURS = {"rl": _rl_hint, "reward_model": "`stage: reward`",
              "adapter": "a `peft:` section (plus `quantization: {load_in_4bit: true}` for QLoRA)", **LORA, **QUANT,
              "datasets": To("data.train"), "test_datasets": To("data.eval"), "val_set_size": To("data.eval_fraction"),
              "sequence_len": To("data.max_length"), "evals_per_epoch": PER_EPOCH.format("eval"),
              "saves_per_epoch": PER_EPOCH.format("save"), "num_epochs": To("training.num_train_epochs"),
              "max_steps": To("training.max_steps"), "chat_template": Call(chat_template),
              "chat_template_jinja": To("model.chat_template", note="inline Jinja or a .jinja file"), **PRECISION}

# axolotl's Liger switches: each is TRL's use_liger_kernel (which applies every Liger kernel for the architecture)
LIGER_KEYS = ("liger_rope", "liger_rms_norm", "liger_glu_activation", "liger_layer_norm", "liger_cross_entropy",
              "liger_fused_linear_cross_entropy", "liger_rms_norm_gated")
# the type of each key the functions below read, and of a `datasets:` entry's fields (posttrain.convert.check)
DATASET = {"path": str, "type": str | dict, "name": str, "split": str, "data_files": str | list, "ds_type": str,
           "field": str, "message_property_mappings": dict[str, str], "message_field_role": str, "message_field_content": str,
           "roles": dict[str, list[str]], "roles_to_train": list, "train_on_eos": str,
           **dict.fromkeys(("field_messages", "field_chosen", "field_rejected", "field_system", "field_instruction",
                            "field_input", "field_output"), str)}
FLAGS = ("xformers_attention", "flash_attention", "sdp_attention", "eager_attention", "flex_attention", "s2_attention",
         "sample_packing", "use_tensorboard", "lora_target_linear", "load_in_4bit", "load_in_8bit", "reward_model",
         "group_by_length", "shuffle_merged_datasets", "train_on_inputs", *LIGER_KEYS)
TYPES = {"rl": str | bool, "adapter": str, "lora_model_dir": str, "bnb_config_kwargs": dict, "datasets": [DATASET],
         "test_datasets": [DATASET], "evals_per_epoch": int | float, "saves_per_epoch": int | float,
         "chat_template": str, "bf16": bool | str, "trl": dict, "special_tokens": dict, "unfrozen_parameters": list | str,
         "plugins": list | str, "lr_scheduler": str, "cosine_min_lr_ratio": float, "wandb_project": str,
         "attn_implementation": str, "tokens": list | dict, "activation_offloading": bool | str, **dict.fromkeys(FLAGS, bool)}
USE_LIGER = "TRL applies Liger's kernels for the model's architecture (the same maths, less memory)"

TABLE = {
    **{k: later(hint) for k, hint in NEIGHBOURS.items()},
    "base_model": To("model.name_or_path"),
    "base_model_config": Drop("posttrain reads the config beside the weights in model.name_or_path"),
    "revision_of_model": To("model.revision"),
    "tokenizer_config": To("model.tokenizer"),
    **dict.fromkeys(("model_config", "overrides_of_model_config"), Call(lambda c, k, v: _model_config(c, k, v))),
    **dict.fromkeys(("model_kwargs", "overrides_of_model_kwargs"), No(
        "posttrain loads the model with model.dtype, model.attn_implementation, model.revision and "
        "model.trust_remote_code; other from_pretrained arguments cannot be set")),
    "model_type": Drop("the model class follows the stage (sequence classification for reward, a causal LM otherwise)"),
    "tokenizer_type": Drop("the tokenizer class comes from the tokenizer's own files"),
    "num_labels": DropIf(1, "reward models score with one label", No("posttrain's reward models have one label")),
    "trust_remote_code": To("model.trust_remote_code"),
    "strict": Drop("posttrain is always strict: unknown keys are errors"),
    "trl": Call(lambda c, k, v: _trl_section(c, k, v)),
    **{f"is_{m}_derived_model": Drop("a hint for axolotl's patches; the model's config.json names its architecture")
       for m in ("mistral", "llama", "qwen", "falcon")},
    "eval_table_max_new_tokens": Drop("used only for eval tables"),
    "dataset_prepared_path": Drop("prepared data is cached by `datasets` (HF_DATASETS_CACHE)"),
    "push_dataset_to_hub": No("posttrain does not upload datasets"),
    "shuffle_merged_datasets": DropIf(True, "the mixture is shuffled, as posttrain does",
                                      No("posttrain always shuffles a mixture")),
    "dataset_processes": To("data.num_proc"),
    "default_system_message": No("put the system turn in the data or in the chat template (model.chat_template)"),
    "special_tokens": Call(lambda c, k, v: _special_tokens(c, k, v)),
    "tokens": Call(lambda c, k, v: _tokens(c, k, v)),
    "activation_offloading": Call(lambda c, k, v: _offloading(c, k, v)),
    "resize_token_embeddings_to_32x": DropIf(False, "false", To("model.resize_to_multiple_of", lambda v: 32)),
    "mean_resizing_embeddings": Drop("posttrain always starts new embedding rows from the old rows' mean and "
                                     "covariance (transformers' mean resizing)"),
    "shrink_embeddings": DropIf(False, "false: as posttrain, which never shrinks an embedding",
                                No("posttrain never shrinks an embedding (a model's spare rows stay)")),
    "train_on_inputs": DropIf(False, "posttrain masks the prompt by default (`data.train_on: assistant`)",
                              To("data.train_on", lambda v: "all")),
    "sample_packing": Call(packing),
    "eval_sample_packing": Drop("eval batches are padded (training.packing packs training batches only)"),
    "pad_to_sequence_len": Drop("batches pad to their longest row (data.pad_to_multiple_of for a multiple); the "
                                "loss is the same"),
    "micro_batch_size": To("training.per_device_train_batch_size"),
    "eval_batch_size": To("training.per_device_eval_batch_size"),
    "optimizer": To("training.optim"),
    "lr_scheduler": To("training.lr_scheduler_type", lambda v: {"one_cycle": "linear"}.get(v, v)),
    "cosine_min_lr_ratio": Call(lambda c, k, v: c.map(k, v, "*", {"training.lr_scheduler_type": "cosine_with_min_lr",
                                                                   "training.lr_scheduler_kwargs": {"min_lr_rate": v}})),
    "xformers_attention": flag("model.attn_implementation", "sdpa", note="closest to xformers"),
    "flash_attention": flag("model.attn_implementation", "flash_attention_2"),
    "sdp_attention": flag("model.attn_implementation", "sdpa"),
    "eager_attention": flag("model.attn_implementation", "eager"),
    "flex_attention": flag("model.attn_implementation", "flex_attention"),
    "s2_attention": DropIf(False, "false", No("posttrain cannot use shifted-sparse attention")),
    "early_stopping_patience": No("posttrain adds no early-stopping callback"),
    "loss_watchdog_threshold": To("watchdog.loss_above"),
    "loss_watchdog_patience": To("watchdog.patience"),
    "eval_table_size": No("`posttrain generate RUN_DIR --prompt ...` shows the model's answers"),
    "eval_max_new_tokens": Drop("used only for eval tables"),
    "debug": DropIf(False, "false", Drop("`posttrain validate RECIPE` shows a masked training example")),
    "group_by_length": DropIf(False, "false", No("transformers 5 has no length-grouped sampler")),
    "tf32": To("training.tf32"),
    "rl_beta": To("training.beta"),
    "dpo_beta": To("training.beta"),
    "orpo_alpha": To("training.beta", note="ORPO's lambda is beta in TRL's ORPOConfig"),
    "max_prompt_len": To("data.max_prompt_length", note="cut from the left, the end of the prompt kept"),
    "wandb_project": Call(lambda c, k, v: c.map(k, v, "*", {"training.report_to": "wandb", "tracking.project": v})),
    "wandb_name": To("training.run_name"),
    "wandb_entity": To("tracking.entity"),
    "wandb_run_group": To("tracking.group"),
    "wandb_tags": To("tracking.tags"),
    "wandb_log_model": To("tracking.log_model"),
    **{f"wandb_{k}": No(f"set WANDB_{k.upper()} in the environment") for k in ("watch", "run_id")},
    "use_tensorboard": flag("training.report_to", "tensorboard"),
    "mlflow_tracking_uri": No("set MLFLOW_TRACKING_URI in the environment, with training.report_to: mlflow"),
    "mlflow_experiment_name": Call(lambda c, k, v: c.map(k, v, "*", {"training.report_to": "mlflow", "tracking.project": v})),
    **{k: later(hint) for k, hint in SWANLAB.items()},
    "unfrozen_parameters": Call(lambda c, k, v: _unfrozen(c, k, v)),
    "attn_implementation": Call(lambda c, k, v: _attention(c, k, v)),
    **dict.fromkeys(LIGER_KEYS, flag("training.use_liger_kernel", True, note=USE_LIGER)),
    "plugins": Call(lambda c, k, v: _plugins(c, k, v)),
    **dict.fromkeys(("lora_mlp_kernel", "lora_qkv_kernel", "lora_o_kernel"),
                    Drop("axolotl's fused LoRA kernels: speed only, the same LoRA")),
    "fsdp_version": Drop(launch_hint("fsdp") + " (FSDP2 is its fsdp_version: 2)"),
    "eot_tokens": No("posttrain trains what the chat template writes at the end of each assistant turn; it has no "
                     "separate list of end-of-turn tokens"),
    "auto_resume_from_checkpoints": Drop("run-time flag: `posttrain train OUT --resume`"),
    "gradient_checkpointing": Call(lambda c, k, v: c.map(k, v, "training.gradient_checkpointing", bool(v))
                                   if isinstance(v, bool) else c.no(k, v, "posttrain uses transformers' activation "
                                                                          "checkpointing (true/false)")),
}


def _attention(conv: Conversion, key: str, value):
    """axolotl's attention names are transformers' but for xformers (sdpa is closest) and its own sage and fp8."""
    if value in ("sage", "fp8"):
        return conv.no(key, value, f"transformers has no '{value}' attention; use sdpa or flash_attention_2")
    note = "closest to xformers" if value == "xformers" else ""
    conv.map(key, value, "model.attn_implementation", "sdpa" if value == "xformers" else value, note=note)


def _model_config(conv: Conversion, key: str, value):
    """Overrides of the base model's config.json: posttrain has no such key; what to do instead is said plainly."""
    fields = ", ".join(value) if isinstance(value, dict) else str(value)
    conv.no(key, value, f"posttrain loads the model's own config.json and cannot override its fields ({fields}): save "
                        "a copy of the model with them changed (AutoConfig.from_pretrained, set them, save_pretrained "
                        "beside the weights) and set model.name_or_path to it")


def _plugins(conv: Conversion, key: str, value):
    """axolotl's integrations: Liger is TRL's use_liger_kernel; Cut Cross Entropy only saves memory; SwanLab is a
    tracker transformers reports to itself."""
    names = value if isinstance(value, list) else [value]
    other = [n for n in names if not any(p in str(n) for p in ("liger", "cut_cross_entropy"))
             and not ("swanlab" in str(n) and conv.raw.get("use_swanlab"))]  # SwanLab: transformers' callback
    if other:
        return conv.no(key, value, f"axolotl plugins posttrain does not have: {', '.join(map(str, other))}")
    if any("liger" in str(n) for n in names):
        return conv.map(key, value, "training.use_liger_kernel", True, note=USE_LIGER + "; Cut Cross Entropy, if "
                        "listed, only saves memory")
    conv.drop(key, value, "SwanLab is transformers' own callback (training.report_to, see use_swanlab)"
              if all("swanlab" in str(n) for n in names) else "Cut Cross Entropy saves memory; the loss is the same "
                                                               "cross-entropy")


def _unfrozen(conv: Conversion, key: str, value):
    """axolotl matches each pattern at the start of a parameter name, a `.` not before `+` taken literally; posttrain's
    model.trainable matches whole names, so each becomes `(?:pattern).*`. Row ranges (`embed_tokens[:32000]`) cannot be
    expressed."""
    patterns = value if isinstance(value, list) else [value]
    if any(re.search(r"\[\d*:?\d*\]$", str(p)) for p in patterns):
        return conv.no(key, value, "a row range freezes part of a tensor; posttrain's model.trainable trains whole "
                                   "tensors")
    conv.map(key, value, "model.trainable", [f"(?:{re.sub(r'[.](?![+])', r'[.]', str(p))}).*" for p in patterns],
             note="full weights whose names start so; the rest frozen")


# axolotl's `trl:` block (GRPO and other RL settings): TRL config fields under their own names, except these
TRL_BLOCK = {"reward_funcs": No("Python reward functions: posttrain's rewards are reward models and the rules "
                                "exact_match and length_penalty (a `rewards:` list); write the equivalent by hand"),
             "reward_weights": No("give each `rewards:` item its `weight:`")}


def _trl_section(conv: Conversion, key: str, value):
    if not isinstance(value, dict):
        return conv.no(key, value, "expected a mapping of TRL options")
    for k, v in value.items():
        walk(conv, [(k, v)], TRL_BLOCK)
        conv.fates[-1].key = f"{key}.{k}"


def looks_like(raw: dict) -> bool:
    return "base_model" in raw or any(k in raw for k in ("micro_batch_size", "sequence_len", "adapter",
                                                         "sample_packing", "rl"))


def _tokens(conv: Conversion, key: str, value):
    if isinstance(value, dict):  # older axolotl configs: `tokens:` held the special tokens
        return _special_tokens(conv, key, value)
    conv.map(key, value, "model.add_tokens", note="added as ordinary tokens, as axolotl adds them; their rows train")


def _offloading(conv: Conversion, key: str, value):
    """axolotl's activation_offloading: true | false | legacy | disk | hidden_states (schemas/config.py)."""
    if isinstance(value, bool) or value == "legacy":
        return conv.map(key, value, "training.activation_offloading", bool(value),
                        note="axolotl's older CPU offloading; TRL's offloads the activations to CPU memory too"
                        if value == "legacy" else "")
    conv.no(key, value, "TRL offloads activations to CPU memory only: `training.activation_offloading: true`")


def _special_tokens(conv: Conversion, key: str, value):
    if not isinstance(value, dict):
        return conv.no(key, value, "expected a mapping of token names to tokens (eos_token: ...)")
    for tok, v in value.items():
        if tok in SPECIAL_TOKEN_KEYS:
            conv.map(f"{key}.{tok}", v, f"model.special_tokens.{tok}", note="added as a special token if new")
        else:
            conv.no(f"{key}.{tok}", v, f"posttrain sets only {', '.join(SPECIAL_TOKEN_KEYS)}; add {v!r} with "
                                       "model.add_special_tokens")


def _stage(conv: Conversion) -> str:
    raw = conv.raw
    rl = raw.get("rl")
    if raw.get("reward_model"):
        conv.map("reward_model", True, "stage", "reward")
        conv.drop_given("rl", "reward_model: true wins")
        return conv.set_stage("reward", "its `reward_model: true`")
    conv.drop_given("reward_model", "false")
    if empty(rl) or rl is False:
        conv.drop_given("rl", "empty: supervised fine-tuning")
        return conv.set_stage("sft", "no rl: (and no reward_model:): axolotl's supervised fine-tuning")
    rl = str(rl).lower()
    if rl not in RL:
        conv.no("rl", rl, f"'{rl}' is not an axolotl rl: posttrain translates ({', '.join(RL)})")
        return conv.set_stage("dpo", f"rl: {rl} is not translated; converted as dpo", guessed=True)
    conv.map("rl", rl, "*", {"stage": RL[rl], **RL_SETS.get(rl, {})})
    return conv.set_stage(RL[rl], f"its `rl: {rl}`")


def _peft(conv: Conversion):
    raw = conv.raw
    adapter = raw.get("adapter")
    given = {k: raw[k] for k in (*LORA, *QUANT) if k in raw}
    if empty(adapter):
        conv.drop_given("adapter", "empty: full fine-tuning (a recipe without `peft:`)")
        for k, v in given.items():
            conv.drop(k, v, "no adapter: full fine-tuning" if not (k.startswith("load_in") and v) else
                      "no adapter: axolotl does not quantize a fully fine-tuned model")
        return
    if adapter not in ("lora", "qlora"):
        conv.no("adapter", adapter, "posttrain trains LoRA adapters (lora, qlora) only; converted as lora")
    else:
        conv.drop("adapter", adapter, "the `peft:` section" + (" and `quantization:` (4-bit)" if adapter == "qlora"
                                                                  else "") + " below")
    walk(conv, [(k, v) for k, v in given.items() if k in PEFT], PEFT)
    targets = raw.get("lora_target_modules")
    if raw.get("lora_target_linear"):
        conv.map("lora_target_linear", True, "peft.target_modules", "all-linear")
        if not empty(targets):
            conv.map("lora_target_modules", targets, "peft.target_modules", "all-linear",
                     note="axolotl adds every linear layer when lora_target_linear is true")
        else:
            conv.drop_given("lora_target_modules", "lora_target_linear covers every linear layer")
    else:
        conv.drop_given("lora_target_linear", "false")
        if not empty(targets):
            conv.map("lora_target_modules", targets, "peft.target_modules")
        else:
            conv.drop_given("lora_target_modules", "empty: peft's default modules for the architecture, as axolotl")
    if not empty(raw.get("lora_model_dir")):
        conv.no("lora_model_dir", raw["lora_model_dir"], OLD_ADAPTER)
    else:
        conv.drop_given("lora_model_dir", "empty: a new adapter")
    conv.default("peft.lora_dropout", 0.0, "axolotl: lora_dropout 0.0")
    if adapter == "qlora" or raw.get("load_in_4bit"):
        if raw.get("load_in_4bit"):
            conv.map("load_in_4bit", True, "quantization.load_in_4bit", True)
        else:
            conv.drop_given("load_in_4bit", "adapter: qlora loads 4-bit all the same")
            conv.default("quantization.load_in_4bit", True, "axolotl: adapter qlora is a 4-bit base model")
        conv.default("quantization.bnb_4bit_quant_type", "nf4", "axolotl: nf4")
        conv.default("quantization.bnb_4bit_use_double_quant", True, "axolotl: double quantization")
        compute = "bfloat16" if raw.get("bf16") in (True, "auto") else "float16" if raw.get("fp16") else "float32"
        why = "bf16 with bf16: auto on a bf16 GPU" if raw.get("bf16") == "auto" else "= the training precision"
        conv.default("quantization.bnb_4bit_compute_dtype", compute, f"axolotl: compute dtype {why}")
        conv.drop_given("load_in_8bit", "4-bit wins")
    elif raw.get("load_in_8bit"):
        conv.map("load_in_8bit", True, "quantization.load_in_8bit", True)
        conv.drop_given("load_in_4bit", "false")
    else:
        conv.drop_given(("load_in_4bit", "load_in_8bit"), "false")
    if not empty(raw.get("bnb_config_kwargs")):
        for k, v in raw["bnb_config_kwargs"].items():
            conv.map(f"bnb_config_kwargs.{k}", v, f"quantization.{k}")
    else:
        conv.drop_given("bnb_config_kwargs", "empty")


def _source(d: dict, stage: str) -> tuple[dict, str, str]:
    """One axolotl `datasets:` entry -> (posttrain source, row format, problem or '')."""
    if not isinstance(d, dict) or not d.get("path"):
        return {"source": str(d)}, "", "a dataset entry without `path:`"
    src = {"source": d["path"]}
    if d.get("name"):
        src["name"] = d["name"]
    if d.get("split") and d["split"] != "train":
        src["split"] = d["split"]
    typ = str(d.get("type") or ("chat_template" if stage == "sft" else ""))
    base = typ.split(":")[0].split(".")
    problem = ""
    cmap: dict[str, str] = {}
    used = {"path", "type", "name", "split", "ds_type", "data_files"}
    if d.get("data_files"):
        problem = "data_files: give the file itself as the source"
    if isinstance(d.get("type"), dict):
        fmt, problem = _user_defined(d["type"], src, cmap, stage)
    elif stage == "sft" and base[0].startswith("alpaca"):
        fmt = "alpaca"
        if typ not in ("alpaca", "alpaca_chat"):
            problem = f"type {typ}: posttrain's alpaca rows use the Stanford Alpaca template"
    elif stage == "sft" and base[0] == "completion":
        fmt = "text"  # raw text, every token trained
        used.add("field")
        if d.get("field", "text") != "text":
            cmap[d["field"]] = "text"
    elif stage == "sft" and base[0] in ("sharegpt",):
        fmt = "sharegpt"
    elif base[0] == "chat_template" and stage == "sft":
        fmt = "messages"
        field = d.get("field_messages", "messages")
        used |= {"field_messages", "message_property_mappings", "message_field_role", "message_field_content",
                 "roles", "roles_to_train", "train_on_eos"}
        if field == "conversations":
            fmt = "sharegpt"
        elif field != "messages":
            cmap[field] = "messages"
        _turn_maps(d, src)
        if d.get("roles_to_train") not in (None, ["assistant"], ["gpt"]):
            problem = f"roles_to_train {d['roles_to_train']}: posttrain trains assistant turns (data.train_on)"
        if d.get("train_on_eos") not in (None, "turn", "all"):
            problem = f"train_on_eos {d['train_on_eos']}: posttrain trains each assistant turn's end-of-turn tokens"
    elif stage in ("dpo", "orpo", "reward"):
        fmt = "preference"
        kind = base[-1] if len(base) > 1 else base[0]
        if base[0] == "orpo" and kind == "chat_template":
            pass  # axolotl's orpo.chat_template reads prompt, chosen and rejected (message lists), as posttrain
        elif base[0] in ("chat_template", "bradley_terry"):
            used |= {"field_messages", "field_chosen", "field_rejected", "message_property_mappings", "roles",
                     "field_system"}
            if "field_messages" not in d:
                problem = f"type {typ} without field_messages: axolotl's prompt strategy picks the columns; give " \
                          "posttrain prompt/chosen/rejected (data.column_map)"
            elif d["field_messages"] != "prompt":
                cmap[d["field_messages"]] = "prompt"
            _turn_maps(d, src)
            for theirs, ours in (("field_chosen", "chosen"), ("field_rejected", "rejected"), ("field_system", "system")):
                if d.get(theirs, ours) != ours:
                    cmap[d[theirs]] = ours
        elif kind in PREFERENCE_TYPES:
            cmap.update(PREFERENCE_TYPES[kind])
        else:
            problem = f"type {typ}: its columns are not known to posttrain; give prompt/chosen/rejected " \
                      "(data.column_map)"
    elif stage == "kto":
        fmt = "unpaired"
        problem = f"type {typ}: KTO rows need prompt/completion/label (data.column_map)"
    else:
        fmt = stage_format(stage)
        problem = f"type {typ} is not translated for stage {stage}"
    extra = [k for k in d if k not in used and not k.startswith("field_")]
    if extra and not problem:
        problem = f"dataset keys {', '.join(extra)} are not translated"
    for k in d:
        if k.startswith("field_") and k not in used and not problem:
            ours = USER_FIELDS.get(k)
            if ours:
                cmap[d[k]] = ours
            else:
                problem = f"{k} is not translated"
    if cmap:
        src["column_map"] = cmap
    return src, fmt, problem


def _turn_maps(d: dict, src: dict):
    """message_property_mappings (or the older message_field_role/content) and roles -> message_map, role_map."""
    props = {"role": d.get("message_field_role") or "role", "content": d.get("message_field_content") or "content",
             **(d.get("message_property_mappings") or {})}
    if {props["role"], props["content"]} not in ({"role", "content"}, {"from", "value"}):  # names posttrain reads
        src["message_map"] = {v: k for k, v in props.items() if k in ("role", "content") and v != k}
    roles = {str(n): ours for ours, names in (d.get("roles") or {}).items() for n in names or []
             if str(n) != ours and SHAREGPT_ROLES.get(str(n)) != ours}
    if roles:
        src["role_map"] = roles


# axolotl's user-defined prompt strategy: its field_* keys -> posttrain's columns
USER_FIELDS = {"field_instruction": "instruction", "field_input": "input", "field_output": "output",
               "field_system": "system", "field_prompt": "prompt", "field_chosen": "chosen", "field_rejected": "rejected"}


def _user_defined(t: dict, src: dict, cmap: dict, stage: str) -> tuple[str, str]:
    """`type:` as a mapping (axolotl's user-defined instruction, or DPO, format): the fields renamed onto posttrain's
    columns, `format`/`no_input_format` (`prompt_format` for pairs) with `system_format` in front when there is a
    system prompt -> a prompt format (src["template"], data.template), `system_prompt` -> the source's system_prompt."""
    fmt = {"sft": "alpaca", "dpo": "preference", "orpo": "preference", "reward": "preference"}.get(stage)
    if fmt is None:
        return stage_format(stage), f"a user-defined type is not translated for stage {stage}"
    pair = fmt == "preference"
    cmap.update({t[k]: ours for k, ours in USER_FIELDS.items() if t.get(k) and t[k] != ours})
    known = set(USER_FIELDS) | {"system_prompt", "system_format", "format", "no_input_format", "prompt_format",
                                "chosen_format", "rejected_format", "field"}
    if set(t) - known:
        return fmt, f"type keys {', '.join(sorted(set(t) - known))} are not translated"
    if pair and (t.get("chosen_format", "{chosen}") != "{chosen}" or t.get("rejected_format", "{rejected}") != "{rejected}"):
        return fmt, "chosen_format/rejected_format: posttrain's answers are their columns as written"
    if t.get("system_prompt"):
        src["system_prompt"] = t["system_prompt"]
    head = t.get("system_format", "{system}") if t.get("system_prompt") or t.get("field_system") else ""
    prompt, no_input = (t.get("prompt_format", "{prompt}"), None) if pair else (t.get("format"), t.get("no_input_format"))
    if prompt and (head or prompt != "{prompt}"):
        src["template"] = {"prompt": head + prompt, **({"no_input": head + no_input} if no_input else {})}
    elif not pair and (head or no_input):
        return fmt, "a system prompt or no_input_format without `format:` is not translated"
    return fmt, ""


def _data(conv: Conversion):
    raw = conv.raw
    for key, dotted in (("datasets", "data.train"), ("test_datasets", "data.eval")):
        value = raw.get(key)
        if empty(value):
            if key == "datasets":
                conv.set_me("(datasets)", value, "data.train", "no datasets: set data.train")
            else:
                conv.drop_given(key, "empty")
            continue
        srcs = [_source(d, conv.stage) for d in value]
        templates = [s.pop("template", None) for s, _, _ in srcs]
        if len(srcs) > 1 and any(t != templates[0] for t in templates):
            srcs = [(s, f, p or ("sources with different prompt formats: data.template is one for the recipe"
                                 if t else "")) for (s, f, p), t in zip(srcs, templates)]
        if len(srcs) == 1:  # one source: its own format
            src, fmt, _ = srcs[0]
            new = one_source(src, dotted)
            fmt = "messages" if fmt == "sharegpt" else fmt
        else:  # a mixture: the common format, and each other source's own
            fmt = stage_format(conv.stage, sft="messages" if {f for _, f, _ in srcs} - {"alpaca"} else "alpaca")
            for s, f, _ in srcs:
                if f != fmt:
                    s["format"] = f
            new = {dotted: [s for s, _, _ in srcs]}
        if key == "datasets":
            new["data.format"] = fmt
            if templates[0] and all(t == templates[0] for t in templates):
                new["data.template"] = templates[0]
        map_sources(conv, key, value, new, [p for _, _, p in srcs if p], shown="<list>")
    eval_fraction(conv, "val_set_size")
    if raw.get("sequence_len") is not None:
        conv.map("sequence_len", raw["sequence_len"], "data.max_length")
    else:
        conv.default("data.max_length", 512, "axolotl: sequence_len 512")
    tmpl = raw.get("chat_template_jinja") or raw.get("chat_template")
    for k in ("chat_template", "chat_template_jinja"):
        if k in raw and empty(raw[k]):
            conv.drop(k, raw[k], "empty: the tokenizer's own template")
    if not empty(tmpl):
        key = "chat_template_jinja" if raw.get("chat_template_jinja") else "chat_template"
        if key == "chat_template" and conv.get("data.format") == "alpaca":
            conv.drop(key, tmpl, "alpaca rows are written with the Alpaca prompt, in axolotl as in posttrain; no "
                                 "chat template renders them")
        else:
            chat_template(conv, key, tmpl)
        if key == "chat_template_jinja" and raw.get("chat_template") not in (None, "jinja"):
            conv.drop("chat_template", raw["chat_template"], "chat_template_jinja gives the template")
        elif key == "chat_template_jinja" and "chat_template" in raw:
            conv.drop("chat_template", raw["chat_template"], "jinja: the template is chat_template_jinja")
        if conv.get("data.format") == "preference":  # (alpaca rows keep axolotl's Alpaca prompt, as posttrain's)
            conv.default("data.template", "chat", "axolotl's chat_template dataset types render the pairs through "
                                                  "the chat template")


def _schedule(conv: Conversion):
    raw = conv.raw
    epochs = raw.get("num_epochs")
    if epochs is not None:
        conv.map("num_epochs", epochs, "training.num_train_epochs")
    if raw.get("max_steps") is not None:
        conv.map("max_steps", raw["max_steps"], "training.max_steps")
    else:
        conv.drop_given("max_steps", "empty: not set")
    eff_epochs = epochs or 1
    has_eval = bool(raw.get("val_set_size")) or not empty(raw.get("test_datasets"))
    for key, what in (("evals_per_epoch", "eval"), ("saves_per_epoch", "save")):
        n = raw.get(key)
        if empty(n):
            conv.drop_given(key, "empty: not set")
        elif what == "eval" and not has_eval:
            conv.drop(key, n, "no eval data (val_set_size 0): nothing to evaluate")
        elif raw.get("max_steps"):
            conv.no(key, n, f"with max_steps, a per-epoch count has no step ratio; set training.{what}_steps")
        else:
            ratio = round(1 / (n * eff_epochs), 6)
            conv.map(key, n, "*", {f"training.{what}_strategy": "steps", f"training.{what}_steps": ratio},
                     note=f"{'an' if what == 'eval' else 'a'} {what} every {ratio} of the run's steps = {n} per "
                          f"epoch over {eff_epochs} epoch(s)")


def convert(conv: Conversion, text: str):
    check(conv, conv.raw.items(), TABLE, TYPES)
    conv.stage = _stage(conv)
    walk(conv, conv.raw.items(), TABLE)
    _peft(conv)
    _data(conv)
    _schedule(conv)
    walk(conv, [(k, conv.raw[k]) for k in PRECISION if k in conv.raw], PRECISION)
    swanlab(conv)
    if conv.get("model.name_or_path") is None:
        conv.set_me("(base_model)", None, "model.name_or_path", "no base_model: set model.name_or_path")
