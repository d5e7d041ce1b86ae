"""torchtune YAML (`tune run <recipe> --config x.yaml`).

A torchtune config names components (`_component_`) with their arguments; each nested key is converted
by its dotted name (`optimizer.lr`, `model.lora_rank`, ...). The recipe (sft, dpo) comes from the
`tune run` line of the config's header comment, else from the loss and dataset components.

Implicit defaults made explicit (torchtune's recipes and builders):
- the Alpaca builders train the prompt (`train_on_input: bool = True`): `data.train_on: all`;
- the recipes clip no gradients unless `clip_grad_norm` is set: `training.max_grad_norm: 0` (TRL: 1.0);
- no lr_scheduler means a constant learning rate (TRL: linear decay);
- torch.optim.AdamW's weight_decay is 0.01 (TRL: 0.0);
- `seed: null` draws a random seed (posttrain uses training.seed, default 42).
"""

from __future__ import annotations

import re

from posttrain import stages
from posttrain.convert.check import check
from posttrain.convert.core import (
    LATER,
    TRAINING_ARGS,
    Call,
    Conversion,
    Drop,
    DropIf,
    No,
    To,
    dtype,
    empty,
    flag,
    later,
    packing,
)
from posttrain.errors import PosttrainError
from posttrain.util import as_number

# torchtune module names -> Hugging Face module names (Llama/Qwen/Mistral/Gemma layouts)
ATTN = {"q_proj": "q_proj", "k_proj": "k_proj", "v_proj": "v_proj", "output_proj": "o_proj"}
MLP = ["gate_proj", "up_proj", "down_proj"]
SE_PAIRED = {"question": "prompt", "response_j": "chosen", "response_k": "rejected"}
DATASETS = {  # builder -> (hub id, or None: a generic builder reading data.train, format, trains the prompt, column_map)
    "alpaca_dataset": ("tatsu-lab/alpaca", "alpaca", True, None),
    "alpaca_cleaned_dataset": ("yahma/alpaca-cleaned", "alpaca", True, None),
    "slimorca_dataset": ("Open-Orca/SlimOrca-Dedup", "messages", False, None),
    "stack_exchange_paired_dataset": ("lvwerra/stack-exchange-paired", "preference", False, SE_PAIRED),
    "stack_exchanged_paired_dataset": ("lvwerra/stack-exchange-paired", "preference", False, SE_PAIRED),
    "hh_rlhf_helpful_dataset": ("RLHFlow/HH-RLHF-Helpful-standard", "preference", False, None),
    "instruct_dataset": (None, "alpaca", True, None), "chat_dataset": (None, "messages", False, None),
    "text_completion_dataset": (None, "text", False, None), "preference_dataset": (None, "preference", False, None),
}
OPTIMIZERS = {"torch.optim.AdamW": "adamw_torch", "torch.optim.Adam": "adamw_torch", "torch.optim.SGD": "sgd",
              "bitsandbytes.optim.PagedAdamW8bit": "paged_adamw_8bit", "bitsandbytes.optim.PagedAdamW": "paged_adamw_32bit",
              "bitsandbytes.optim.AdamW8bit": "adamw_bnb_8bit"}
LOSSES = {**dict.fromkeys(("CEWithChunkedOutputLoss", "CrossEntropyLoss", "LinearCrossEntropyLoss"),
                         "cross-entropy on the trained tokens, as posttrain's SFT"), "DPOLoss": "stage: dpo"}
SCHEDULERS = {"get_cosine_schedule_with_warmup": "cosine", "get_linear_schedule_with_warmup": "linear",
              "get_constant_schedule_with_warmup": "constant_with_warmup"}


COMPONENTS = ("model", "tokenizer", "checkpointer", "optimizer", "lr_scheduler", "loss", "metric_logger", "profiler",
              "mixed_precision")
# the type of each key the functions below read (posttrain.convert.check); a component is a mapping with _component_
TYPES = {**dict.fromkeys(COMPONENTS, dict), **dict.fromkeys(("dataset", "dataset_val"), dict | list[dict]),
         **{f"{c}._component_": str for c in (*COMPONENTS, "dataset", "dataset_val")},
         "model.lora_attn_modules": list[str], "checkpointer.checkpoint_dir": str, "optimizer.betas": list[float],
         "dataset.column_map": dict[str, str], "dataset.data_files": str | list[str], "dataset.column": str,
         "dataset.conversation_column": str, "clip_grad_norm": float, "max_steps_per_epoch": int, "seed": int,
         "dtype": str, "lr_scheduler.num_cycles": float, "run_val_every_n_steps": int, "profiler.enabled": bool,
         "optimizer.lr": float, "optimizer.weight_decay": float, "optimizer.eps": float, "kd_ratio": float,
         **dict.fromkeys(("ref_checkpointer", "teacher_checkpointer", "kd_loss"), dict),
         **{f"{c}.{k}": str for c in ("ref_checkpointer", "teacher_checkpointer", "kd_loss") for k in ("_component_",
            "checkpoint_dir") if (c, k) != ("kd_loss", "checkpoint_dir")}}
# the checkpointers of a recipe's other models -> the posttrain key that names that model
OTHER_MODELS = {"ref_checkpointer": "ref_model", "teacher_checkpointer": "teacher_model"}
# torchtune's KD losses (torchtune/modules/loss/kd_losses.py) -> GKD's beta (0: forward KL(teacher || student),
# 1: reverse KL; TRL's generalized_jsd_loss)
KD_LOSSES = {"ForwardKL": 0.0, "ReverseKL": 1.0}
LOGGERS = {"WandB": "wandb", "TensorBoard": "tensorboard", "MLFlow": "mlflow", "Comet": "comet_ml"}


def _logger(conv: Conversion) -> str:
    return str((conv.raw.get("metric_logger") or {}).get("_component_", ""))


def _lora_modules(conv: Conversion, key: str, value):
    if not value:
        return conv.drop(key, value, "empty: not set")
    mlp = MLP if (conv.raw.get("model") or {}).get("apply_lora_to_mlp") else []
    conv.map(key, value, "peft.target_modules", [ATTN.get(m, m) for m in value] + mlp,
             note="torchtune's names as Hugging Face modules" + (" (+ MLP: apply_lora_to_mlp)" if mlp else ""))


TABLE = {
    "output_dir": To("output_dir"),
    "model._component_": LATER,
    "model.lora_attn_modules": Call(_lora_modules),
    "model.apply_lora_to_mlp": Call(lambda c, k, v: c.drop(k, v, "in peft.target_modules" if v else "false")),
    "model.apply_lora_to_output": Call(lambda c, k, v: c.no(k, v, "LoRA on the output head: add lm_head to "
                                                                  "peft.target_modules (the name differs per model)")
                                       if v else c.drop(k, v, "false")),
    "model.lora_rank": To("peft.r"),
    "model.lora_alpha": To("peft.lora_alpha"),
    "model.lora_dropout": To("peft.lora_dropout"),
    "model.use_dora": To("peft.use_dora"),
    "model.quantize_base": Call(lambda c, k, v: c.drop(k, v, "the `quantization:` section (qlora component)")),
    "tokenizer._component_": Drop("the tokenizer saved with the model in model.name_or_path is used"),
    "tokenizer.path": Drop("a torchtune tokenizer file; posttrain loads the Hugging Face tokenizer beside the model"),
    "tokenizer.merges_file": Drop("part of the tokenizer beside the model"),
    "tokenizer.max_seq_len": flag("data.max_length", off="null: torchtune does not truncate; posttrain truncates at "
                                                         "data.max_length (default 1024), raise it for longer rows"),
    "tokenizer.prompt_template": No("posttrain writes prompts with the Alpaca template or the chat template"),
    "checkpointer._component_": LATER,
    "checkpointer.checkpoint_dir": LATER,
    "checkpointer.checkpoint_files": Drop("posttrain loads every weight file in model.name_or_path"),
    "checkpointer.recipe_checkpoint": Drop("run-time flag: `posttrain train OUT --resume`"),
    "checkpointer.adapter_checkpoint": No("posttrain trains a new adapter; merge this one first"),
    "checkpointer.output_dir": Drop("the run directory is output_dir"),
    "checkpointer.model_type": Drop("read from the model's config.json"),
    # the other models of DPO and KD recipes: their checkpointers (read by `_other_model`) and the teacher's builder
    **{f"{ck}.{k}": LATER for ck in OTHER_MODELS for k in ("_component_", "checkpoint_dir")},
    **{f"{ck}.{k}": Drop(f"posttrain loads every weight file in {target}" if k == "checkpoint_files" else
                         "read from the model's config.json" if k == "model_type" else "posttrain does not resume it")
       for ck, target in OTHER_MODELS.items() for k in ("checkpoint_files", "model_type", "recipe_checkpoint")},
    **{f"{ck}.output_dir": Drop("it is not saved") for ck in OTHER_MODELS},
    "teacher_model._component_": Drop("the teacher's architecture comes from the config.json in teacher_model"),
    "kd_loss._component_": LATER,
    "kd_ratio": later("the `gkd` stage, whose loss is the divergence alone (GKD has no cross-entropy share)"),
    "kd_loss.num_output_chunks": Drop("a memory setting of the chunked loss"),
    "resume_from_checkpoint": DropIf(False, "false", TRAINING_ARGS["resume_from_checkpoint"]),
    "save_adapter_weights_only": Drop("a LoRA run saves its adapter; `posttrain merge RUN_DIR` writes the merged model"),
    "dataset._component_": LATER,
    "dataset.packed": Call(packing),
    "dataset.train_on_input": flag("data.train_on", "all", off="false: the prompt is masked, posttrain's default"),
    "dataset.source": To("data.train"),
    "dataset.split": To("data.split"),
    "dataset.column_map": Call(lambda c, k, v: c.map(k, v, "data.column_map", {b: a for a, b in v.items()},
                                                     note="torchtune maps expected->actual, posttrain actual->expected")),
    "dataset.max_seq_len": To("data.max_length"),
    "dataset.data_files": Call(lambda c, k, v: c.map(k, v, "data.train", v if isinstance(v, str) else v[0])
                               if isinstance(v, str) or len(v) == 1 else c.no(k, v, "one file per source: use a "
                                                                                    "data.train list")),
    "dataset.column": Call(lambda c, k, v: c.map(k, v, "data.column_map", {v: "text"}) if v != "text" else
                           c.drop(k, v, "posttrain's column name")),
    "dataset.add_eos": DropIf(True, "each text ends with EOS, as posttrain's text rows do", No("posttrain's text rows "
                                                                                             "end with EOS")),
    "dataset.new_system_prompt": No("put the system turn in the data or the chat template"),
    "dataset.conversation_column": Call(lambda c, k, v: c.map(k, v, "data.column_map", {v: "messages"})
                                        if v != "messages" else c.drop(k, v, "posttrain's column name")),
    "dataset.conversation_style": Call(lambda c, k, v: c.drop(k, v, "posttrain reads openai-style messages and "
                                                                    "sharegpt rows alike")),
    "seed": Call(lambda c, k, v: c.map(k, v, "training.seed") if v is not None else
                 c.drop(k, v, "null: torchtune draws a random seed; posttrain uses training.seed (default 42)")),
    "shuffle": DropIf(True, "rows are shuffled every epoch, as posttrain does", No("posttrain always shuffles")),
    "batch_size": To("training.per_device_train_batch_size"),
    "batch_size_val": To("training.per_device_eval_batch_size"),
    "optimizer._component_": LATER,
    "optimizer.lr": To("training.learning_rate", as_number),
    "optimizer.weight_decay": To("training.weight_decay", as_number),
    "optimizer.betas": Call(lambda c, k, v: c.map(k, v, "*", {"training.adam_beta1": v[0], "training.adam_beta2": v[1]})),
    "optimizer.eps": To("training.adam_epsilon", as_number),
    "optimizer.fused": Drop("a speed setting of torch's AdamW; TRL picks its implementation from training.optim"),
    "optimizer.foreach": Drop("a speed setting of torch's optimizer"),
    "optimizer.amsgrad": DropIf(False, "false", No("transformers' AdamW has no amsgrad")),
    "lr_scheduler._component_": LATER,
    "lr_scheduler.num_warmup_steps": To("training.warmup_steps"),
    "lr_scheduler.num_cycles": Call(lambda c, k, v: c.drop(k, v, "0.5: one half cosine, as transformers' cosine")
                                    if v == 0.5 else c.map(k, v, "training.lr_scheduler_kwargs", {"num_cycles": v})),
    "loss._component_": LATER,
    "loss.beta": To("training.beta"),
    "loss.label_smoothing": To("training.label_smoothing"),
    "loss.loss_type": To("training.loss_type"),
    "loss.num_output_chunks": Drop("a memory setting of the chunked loss"),
    "epochs": To("training.num_train_epochs"),
    "max_steps_per_epoch": Call(lambda c, k, v: c.drop(k, v, "null: whole epochs") if v is None else
                                c.map(k, v, "training.max_steps", v * (c.raw.get("epochs") or 1),
                                      note="max_steps_per_epoch x epochs: the same total")),
    "gradient_accumulation_steps": To("training.gradient_accumulation_steps"),
    "clip_grad_norm": Call(lambda c, k, v: c.map(k, v, "training.max_grad_norm", float(v or 0))),
    "compile": To("training.torch_compile"),
    "optimizer_in_bwd": DropIf(False, "false", No("posttrain cannot fuse the optimizer step into backward "
                                                  "(closest: training.optim: adamw_torch_fused)")),
    "device": Drop("posttrain trains on the GPU when there is one, else the CPU"),
    "dtype": Call(lambda c, k, v: c.map(k, v, "model.dtype", dtype(v))),
    "enable_activation_checkpointing": To("training.gradient_checkpointing"),
    "enable_activation_offloading": flag("training.activation_offloading", True),
    "log_every_n_steps": To("training.logging_steps"),
    "log_peak_memory_stats": Drop("`posttrain plan RECIPE` estimates GPU memory before a run"),
    "log_level": TRAINING_ARGS["log_level"],
    "metric_logger._component_": LATER,
    "metric_logger.log_dir": Drop("posttrain logs into the run directory"),
    # torchtune's metric loggers (torchtune/training/metric_logging.py): WandB, Comet, MLflow settings -> tracking:
    "metric_logger.project": To("tracking.project"),
    "metric_logger.experiment_name": Call(lambda c, k, v: c.map(k, v, "tracking.project" if "MLFlow" in _logger(c)
                                                               else "training.run_name")),
    "metric_logger.entity": To("tracking.entity"),
    "metric_logger.workspace": To("tracking.entity", note="Comet's workspace"),
    "metric_logger.group": To("tracking.group"),
    "metric_logger.tags": To("tracking.tags"),
    **dict.fromkeys(("metric_logger.name", "metric_logger.run_name"), To("training.run_name")),
    "metric_logger.tracking_uri": No("set MLFLOW_TRACKING_URI in the environment"),
    "metric_logger.api_key": Call(lambda c, k, v: c.no(k, "<secret>", "secrets never go in a recipe; set "
                                                                      "COMET_API_KEY in the environment")),
    "low_cpu_ram": DropIf(False, "false", Drop("a loading memory setting; transformers 5 loads with low memory use")),
    "custom_sharded_layers": Drop("an FSDP wrapping setting; see recipes/accelerate/fsdp.yaml"),
    "fsdp_cpu_offload": Call(lambda c, k, v: c.drop(k, v, "false") if not v else c.no(k, v, "CPU offload: set "
                             "fsdp_offload_params in recipes/accelerate/fsdp.yaml and launch with it")),
    "fsdp_reshard_after_forward": Drop("an FSDP setting of the launcher config (recipes/accelerate/fsdp.yaml)"),
    "mixed_precision._component_": Drop("see mixed_precision.enabled"),
    "mixed_precision.enabled": DropIf(False, "disabled", No("posttrain cannot train with int8 mixed precision")),
    "profiler._component_": LATER,
}


def looks_like(raw: dict) -> bool:
    return any(isinstance(v, dict) and "_component_" in v for v in raw.values())


def _flatten(node, prefix=""):
    for k, v in node.items():
        dotted = f"{prefix}{k}"
        if isinstance(v, dict) and "_component_" in v or isinstance(v, dict) and prefix == "" and k in (
                "checkpointer", "dataset", "model", "tokenizer", "optimizer", "lr_scheduler", "loss"):
            yield from _flatten(v, dotted + ".")
        else:
            yield dotted, v


def _stage(conv: Conversion, text: str) -> str:
    m = re.search(r"tune run\s+(?:--\S+\s+\S+\s+)*(\w+)", text)
    recipe = m.group(1) if m else ""
    if "distributed" in recipe:
        conv.drop("(recipe)", recipe, "a multi-GPU recipe (torchtune shards with FSDP); run `accelerate launch "
                                      "--config_file recipes/accelerate/fsdp.yaml -m posttrain train OUT`")
    loss = str((conv.raw.get("loss") or {}).get("_component_", ""))
    short = loss.rsplit(".", 1)[-1]
    line = f"the `tune run {recipe}` line of its header"
    if "dpo" in recipe:
        return conv.set_stage("dpo", line)
    if any(name in short for name in ("DPOLoss", "RSOLoss", "SimPOLoss")):
        return conv.set_stage("dpo", f"the loss {short}")
    if "knowledge_distillation" in recipe:
        return conv.set_stage("gkd", line + ": GKD distils a teacher's token distributions")
    if "kd_loss" in conv.raw:
        return conv.set_stage("gkd", "its kd_loss: GKD distils a teacher's token distributions")
    found = next((name for name in ("ppo", "grpo") if name in recipe), None)
    if found:
        return conv.set_stage(found, line)
    if recipe:
        return conv.set_stage("sft", line)
    if short in LOSSES:
        return conv.set_stage("sft", f"the loss {short}: {LOSSES[short]}")
    return conv.set_stage("sft", "no `tune run` line in its header and no loss component", guessed=True)


def _model(conv: Conversion, node: dict, model: str):
    name = model.rsplit(".", 1)[-1]
    if name.startswith(("lora_", "qlora_")):
        conv.drop("model._component_", model, "LoRA: the `peft:` section" + (" and 4-bit `quantization:`"
                                                                            if name.startswith("qlora_") else ""))
        if name.startswith("qlora_"):
            conv.put("quantization.load_in_4bit", True)
            conv.default("quantization.bnb_4bit_quant_type", "nf4", "torchtune QLoRA: NF4 base weights")
            conv.default("quantization.bnb_4bit_use_double_quant", True, "torchtune's NF4 quantizes its scales too")
            conv.default("quantization.bnb_4bit_compute_dtype", "bfloat16" if conv.raw.get("dtype") == "bf16" else
                         "float32", "torchtune computes in the recipe dtype")
    elif model:
        conv.drop("model._component_", model, "the architecture comes from the model's config.json in "
                                              "model.name_or_path (full fine-tuning: no `peft:`)")


def _checkpointer(conv: Conversion, node: dict, kind: str):
    if "_component_" in node:
        if "HF" in kind or "Hf" in kind:
            conv.drop("checkpointer._component_", kind, "Hugging Face format: checkpoint_dir is model.name_or_path")
        else:
            conv.no("checkpointer._component_", kind, "weights in Meta/torchtune format; point model.name_or_path "
                                                      "at the Hugging Face version of the model")
    if "checkpoint_dir" in node:
        conv.map("checkpointer.checkpoint_dir", node["checkpoint_dir"], "model.name_or_path")
    else:
        conv.set_me("(model)", None, "model.name_or_path", "no checkpointer.checkpoint_dir: set model.name_or_path")


def _dataset(conv: Conversion, node, builder: str):
    short = builder.rsplit(".", 1)[-1]
    if isinstance(node, list):
        return conv.set_me("dataset", node, "data.train", "a list of datasets: give data.train a list of sources (a "
                                                           "mixture)")
    if short not in DATASETS:
        if builder:
            conv.set_me("dataset._component_", builder, "data.train", "a dataset builder posttrain does not know; set "
                                                                      "data.train and data.format")
        return
    hub, fmt, trains_prompt, cmap = DATASETS[short]
    conv.drop("dataset._component_", builder, f"{hub} as data.train, {fmt} rows" + (f", columns {cmap}" if cmap else "")
              if hub else "a generic builder: data.train is its source" + (", raw text" if fmt == "text" else ""))
    if hub and "source" not in node:
        conv.put("data.train", hub)
        if cmap:
            conv.put("data.column_map", cmap)
    conv.put("data.format", fmt)
    if trains_prompt and "train_on_input" not in node and conv.stage == "sft":
        conv.default("data.train_on", "all", f"torchtune: {short} trains the prompt (train_on_input True)")


def _optimizer(conv: Conversion, node: dict, opt: str):
    if opt in OPTIMIZERS:
        conv.map("optimizer._component_", opt, "training.optim", OPTIMIZERS[opt])
        if opt.endswith("AdamW") and "weight_decay" not in node:
            conv.default("training.weight_decay", 0.01, "torch.optim.AdamW: weight_decay 0.01")
    elif opt:
        conv.no("optimizer._component_", opt, "an optimizer posttrain does not know; set training.optim")


def _scheduler(conv: Conversion, node: dict, sched: str):
    if not sched:
        return conv.default("training.lr_scheduler_type", "constant", "torchtune: no lr_scheduler, a constant "
                                                                      "learning rate")
    s = SCHEDULERS.get(sched.rsplit(".", 1)[-1])
    (conv.map("lr_scheduler._component_", sched, "training.lr_scheduler_type", s) if s else
     conv.no("lr_scheduler._component_", sched, "a scheduler posttrain does not know"))


def _loss(conv: Conversion, node: dict, loss: str):
    why = LOSSES.get(loss.rsplit(".", 1)[-1])
    if why and conv.stage == "gkd":
        why = "the cross-entropy part of torchtune's KD loss (see kd_ratio)"
    if loss:
        (conv.drop if why else conv.no)("loss._component_", loss, why or "a loss posttrain's stages do not have")


def _metric_logger(conv: Conversion, node: dict, ml: str):
    report = next((name for cls, name in LOGGERS.items() if cls in ml), None)
    if report:
        conv.map("metric_logger._component_", ml, "training.report_to", report)
        if report == "wandb" and "project" not in node:
            conv.default("tracking.project", "torchtune", "torchtune's WandBLogger: project torchtune")
    elif ml:
        conv.drop("metric_logger._component_", ml, "posttrain keeps the logs in the run directory "
                                                   "(trainer_state.json, manifest.json)")


def _profiler(conv: Conversion, node: dict, kind: str):
    if node:
        conv.drop("profiler", "<profiler>", "disabled" if not node.get("enabled") else
                  "posttrain runs no profiler (NOT translated: a profiling run)")


# each component -> the function giving its `_component_` a fate (and the settings it implies)
COMPONENT_FATES = {"model": _model, "checkpointer": _checkpointer, "dataset": _dataset, "optimizer": _optimizer,
                   "lr_scheduler": _scheduler, "loss": _loss, "metric_logger": _metric_logger, "profiler": _profiler}


def _components(conv: Conversion):
    for name, fate in COMPONENT_FATES.items():
        node = conv.raw.get(name) or {}
        fate(conv, node, str(node.get("_component_", "")) if isinstance(node, dict) else "")
    for ck, target in OTHER_MODELS.items():
        if isinstance(conv.raw.get(ck), dict):
            _other_model(conv, ck, target)
    if conv.stage == "gkd":
        _kd(conv)


def _other_model(conv: Conversion, ck: str, target: str):
    """A DPO recipe's reference model or a KD recipe's teacher: its checkpoint directory names that model."""
    raw = conv.raw[ck]
    kind = str(raw.get("_component_", ""))
    if "HF" in kind or "Hf" in kind:
        conv.drop(f"{ck}._component_", kind, f"Hugging Face format: checkpoint_dir is {target}")
    elif kind:
        conv.no(f"{ck}._component_", kind, f"weights in Meta/torchtune format; point {target} at the Hugging Face "
                                           "version of the model")
    path = raw.get("checkpoint_dir")
    if path is None:
        return conv.set_me(f"({ck})", None, target, f"no {ck}.checkpoint_dir: set {target}")
    if target == "ref_model" and path == (conv.raw.get("checkpointer") or {}).get("checkpoint_dir"):
        return conv.drop(f"{ck}.checkpoint_dir", path, "the policy's own checkpoint: posttrain's reference model is a "
                                                      "frozen copy of the policy unless ref_model says otherwise")
    if target not in stages.get(conv.stage).keys:
        return conv.no(f"{ck}.checkpoint_dir", path, f"stage {conv.stage}'s reference model is a frozen copy of the "
                                                    "policy; another one cannot be set")
    conv.map(f"{ck}.checkpoint_dir", path, target)


def _kd(conv: Conversion):
    """torchtune's knowledge distillation -> GKD on the dataset's responses. torchtune's loss is
    (1 - kd_ratio) x cross-entropy + kd_ratio x the KD loss (forward or reverse KL over the trained tokens); GKD's is
    the divergence alone (beta 0: forward KL, 1: reverse), with lmbda the share of batches the student samples."""
    raw = conv.raw
    kd = str((raw.get("kd_loss") or {}).get("_component_", ""))
    beta = next((b for name, b in KD_LOSSES.items() if name in kd), None)
    if beta is not None:
        conv.map("kd_loss._component_", kd, "training.beta", beta,
                 note=f"GKD's {'forward' if beta == 0 else 'reverse'} KL between teacher and student")
    elif kd:
        conv.no("kd_loss._component_", kd, "GKD's divergences are forward KL (training.beta 0), reverse KL (1) and the "
                                           "generalised JSD between (a mixture, not torchtune's weighted sum of both "
                                           "KLs); pick one")
    ratio = 0.5 if raw.get("kd_ratio") is None else raw["kd_ratio"]  # torchtune's default
    if ratio == 1:
        conv.drop("kd_ratio", ratio, "the loss is the divergence alone, as GKD's")
    else:
        conv.no("kd_ratio" if "kd_ratio" in raw else "(kd_ratio)", ratio,
                f"torchtune adds {1 - ratio:g} x the cross-entropy on the labels to {ratio:g} x the KD loss; GKD's loss "
                "is the divergence alone (TRL's GKDConfig has no such weight), so the recipe distils only, as kd_ratio 1")
    ds = raw.get("dataset") if isinstance(raw.get("dataset"), dict) else {}
    short = str(ds.get("_component_", "")).rsplit(".", 1)[-1]
    if ds.get("train_on_input", short in ("instruct_dataset",) or DATASETS.get(short, (0, 0, False))[2]):
        conv.no("dataset.train_on_input" if "train_on_input" in ds else "(train_on_input)", True,
                "torchtune distils the prompt tokens too; GKD distils the response after the prompt only")
    conv.default("training.lmbda", 0.0, "torchtune distils the dataset's responses; GKD's default lmbda 0.5 would "
                                        "have the student sample half the batches")


def _interpolated(node, root: dict, following: tuple[str, ...] = ()):
    """OmegaConf's `${a.b}` references, resolved as `tune run` resolves them (`batch_size_val: ${batch_size}`);
    `following`: the references being resolved, so a cycle (`a: ${b}`, `b: ${a}`) is refused, not recursed into."""
    if isinstance(node, dict):
        return {k: _interpolated(v, root, following) for k, v in node.items()}
    if isinstance(node, list):
        return [_interpolated(v, root, following) for v in node]
    if not isinstance(node, str) or "${" not in node:
        return node

    def value(m):
        if m.group(1) in following:
            raise PosttrainError(f"${{{m.group(1)}}} refers to itself ({' -> '.join((*following, m.group(1)))})")
        found = root
        for part in m.group(1).split("."):
            if not isinstance(found, dict) or part not in found:
                return m.group(0)  # an unknown reference (or a resolver such as ${oc.env:X}) stays as written
            found = found[part]
        return _interpolated(found, root, (*following, m.group(1)))

    whole = re.fullmatch(r"\$\{([\w.]+)\}", node)
    return value(whole) if whole else re.sub(r"\$\{([\w.]+)\}", lambda m: str(value(m)), node)


def _validation(conv: Conversion):
    """dataset_val + run_val_every_n_steps: eval data and an eval every N steps, or (N null) no validation."""
    val, every = conv.raw.get("dataset_val"), conv.raw.get("run_val_every_n_steps")
    keys = [(k, v) for k, v in _flatten(conv.raw) if k.split(".")[0] in ("dataset_val", "run_val_every_n_steps")]
    if not every:
        for k, v in keys:
            conv.drop(k, v, "no validation (run_val_every_n_steps is not set)")
        return
    if not isinstance(val, dict):  # several builders, or none: validation asked for, the eval data not translated
        for k, v in keys:
            conv.no(k, v, "validation needs one dataset_val builder here; set data.eval (a list of sources for several)")
        return
    builder = str(val.get("_component_", ""))
    train = conv.raw.get("dataset") if isinstance(conv.raw.get("dataset"), dict) else {}
    source = val.get("source") or DATASETS.get(builder.rsplit(".", 1)[-1], (None,))[0]
    for k, v in keys:
        name = k.split(".", 1)[-1]
        if k == "run_val_every_n_steps":
            conv.map(k, v, "*", {"training.eval_strategy": "steps", "training.eval_steps": v})
        elif name in ("_component_", "source"):
            (conv.map(k, v, "data.eval", source) if source else
             conv.set_me(k, v, "data.eval", "a dataset builder posttrain does not know; set data.eval"))
        elif name == "split":
            conv.map(k, v, "data.eval_split")
        elif train.get(name) == v:
            conv.drop(k, v, "the eval source is read as data.train is (same format and columns)")
        else:
            conv.no(k, v, "posttrain reads the eval source with data.train's settings")


def convert(conv: Conversion, text: str):
    conv.raw = _interpolated(conv.raw, conv.raw)
    check(conv, _flatten(conv.raw), TABLE, TYPES, passthrough=False)
    conv.stage = _stage(conv, text)
    _components(conv)
    _validation(conv)
    done = {f.key for f in conv.fates}
    for key, value in _flatten(conv.raw):
        rule = TABLE.get(key)
        if key in done or key.split(".")[0] == "profiler" or getattr(rule, "fn", None) is LATER.fn:
            continue
        if rule is not None and empty(value) and not isinstance(rule, Call):  # a Call reads null itself
            conv.drop(key, value, "empty: not set")
        else:
            conv.apply(key, value, rule)  # no rule: NOT TRANSLATED
    if conv.get("peft.r") is not None:
        conv.default("peft.lora_dropout", 0.0, "torchtune's LoRA builders: lora_dropout 0.0")
    if "clip_grad_norm" not in conv.raw:
        conv.default("training.max_grad_norm", 0.0, "torchtune clips no gradients unless clip_grad_norm is set "
                                                    "(TRL: 1.0)")
    if conv.get("peft.target_modules") is None and conv.get("peft.r") is not None:
        conv.no("(lora modules)", None, "no lora_attn_modules: set peft.target_modules")
