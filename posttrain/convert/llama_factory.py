"""LLaMA-Factory training YAML (`llamafactory-cli train x.yaml`).

Keys: LLaMA-Factory's hparams dataclasses (src/llamafactory/hparams/: ModelArguments, DataArguments,
FinetuningArguments with its LoRA/freeze/RLHF fields, GeneratingArguments) plus transformers'
Seq2SeqTrainingArguments (passed through to the stage's TRL config where posttrain has the field).

Implicit defaults made explicit (finetuning_args.py / data_args.py / model loader):
- lora_alpha = 2 x lora_rank when unset (`self.lora_alpha = self.lora_alpha or self.lora_rank * 2`);
  lora_rank 8, lora_dropout 0.0, lora_target "all" (every linear layer but the head);
- cutoff_len 2048 (posttrain's data.max_length default is 1024);
- QLoRA (quantization_bit 4, bitsandbytes): nf4, double quantization on, compute dtype = the training
  precision (bf16/fp16, else float32);
- every dataset is rendered through the `template`, alpaca rows too (so `data.template: chat`);
  the prompt is masked (train_on_prompt false) and every assistant turn trained (mask_history false).
Datasets are names in `dataset_info.json` (in `dataset_dir`, default `data`); it is read when it sits
beside the config (or in dataset_dir relative to it or to the current directory).
"""

from __future__ import annotations

import json
from pathlib import Path

from posttrain.convert.core import (
    Call,
    Conversion,
    Drop,
    DropIf,
    No,
    To,
    chat_template,
    dtype,
    eval_fraction,
    flag,
    later,
    map_sources,
    one_source,
    packing,
    stage_format,
    training_field,
    walk,
)
from posttrain.data.formats import SHAREGPT_ROLES

# freeze training (finetuning_type: freeze) is posttrain's model.trainable
TRAINABLE = ("regular expressions over the parameter names to train, the rest frozen, e.g. "
             "['model\\.layers\\.(30|31)\\..*'] for the last 2 of 32 layers")
STAGES = {"sft": "sft", "rm": "reward", "dpo": "dpo", "kto": "kto", "ppo": "ppo"}
# pref_loss values that are a posttrain stage of their own (with what else they set)
LOSS_STAGES = {"orpo": ("orpo", {}, "ORPO is its own stage in posttrain (no reference model)"),
               "simpo": ("cpo", {"training.loss_type": "simpo"}, "SimPO is TRL's CPO trainer with loss_type simpo")}
FULL = "without a `peft:` section posttrain fine-tunes every parameter (full fine-tuning: a recipe without `peft:`)"
LORA_ONLY = "posttrain trains LoRA adapters only"


def _lora_target(conv: Conversion, key: str, value):
    if not isinstance(value, (str, list)):
        return conv.no(key, value, "expected module names: `all`, `q_proj,v_proj` or a list (peft.target_modules)")
    names = [m.strip() for m in value.split(",")] if isinstance(value, str) else value
    conv.map(key, value, "peft.target_modules", "all-linear" if names == ["all"] else names,
             note="all: every linear layer but the output head" if names == ["all"] else "")


# read together by `_peft`
PEFT = {"lora_rank": To("peft.r"), "lora_alpha": To("peft.lora_alpha"), "lora_dropout": To("peft.lora_dropout"),
        "use_rslora": To("peft.use_rslora"), "use_dora": To("peft.use_dora"),
        "additional_target": To("peft.modules_to_save", lambda v: [m.strip() for m in v.split(",") if m.strip()]
                                if isinstance(v, str) else v)}
LORA = {**PEFT, "lora_target": Call(_lora_target),
        "pissa_init": DropIf(False, "false", To("peft.init_lora_weights", lambda v: "pissa"))}
QUANT = {"quantization_bit": To("quantization", lambda v: {f"load_in_{v}bit": True} if v in (4, 8) else None),
         "quantization_method": To("quantization", lambda v: {"load_in_4bit": True}, note="bitsandbytes only"),
         "quantization_type": To("quantization.bnb_4bit_quant_type"),
         "double_quantization": To("quantization.bnb_4bit_use_double_quant")}


def _pref_loss_hint(value):
    if value in LOSS_STAGES:
        stage, sets, why = LOSS_STAGES[value]
        return f"`stage: {stage}`" + "".join(f" with `{k}: {v}`" for k, v in sets.items()) + f" ({why})"
    return To("training.loss_type")


def _finetuning_hint(value):
    return {"lora": "a `peft:` section, e.g. `peft: {r: 8, lora_alpha: 16, target_modules: all-linear}` (LLaMA-Factory's "
                    "lora_alpha defaults to 2 x rank)",
            "full": Drop(FULL), "freeze": f"`model.trainable`: {TRAINABLE}"}.get(value, No(LORA_ONLY))


# keys read together with their neighbours (by _stage, _peft, _data), with what validate says of them
NEIGHBOURS = {"stage": "the top-level `stage` (LLaMA-Factory's rm is reward; pt is sft on text rows)",
              "pref_loss": _pref_loss_hint, "finetuning_type": _finetuning_hint, **LORA, **QUANT,
              "dataset": To("data.train"), "eval_dataset": To("data.eval"),
              "dataset_dir": "paths in `data.train` (a local file, relative to where posttrain runs)",
              "max_samples": To("data.split", lambda v: f"train[:{v}]", note="a slice of the split"),
              "val_size": To("data.eval_fraction"), "template": Call(chat_template),
              "cutoff_len": To("data.max_length"), "bf16": To("training.bf16"), "fp16": To("training.fp16")}

ATTENTION = {"fa2": "flash_attention_2", "sdpa": "sdpa", "disabled": "eager"}  # flash_attn (attn) values
GEN = "a generation setting (LLaMA-Factory uses it for predict/chat); posttrain's trainers do not read it"


def _attention(conv: Conversion, key: str, value):
    if str(value) == "auto":
        return conv.drop(key, value, "transformers picks the attention (sdpa where it can), as posttrain does")
    if str(value) not in ATTENTION:
        return conv.no(key, value, "one of auto, fa2, sdpa, disabled")
    conv.map(key, value, "model.attn_implementation", ATTENTION[str(value)])


TABLE = {
    **{k: later(hint) for k, hint in NEIGHBOURS.items()},
    # ModelArguments
    "model_name_or_path": To("model.name_or_path"),
    "model_revision": To("model.revision"),
    "trust_remote_code": To("model.trust_remote_code"),
    "cache_dir": Drop("the Hugging Face cache (HF_HOME) is used"),
    "use_fast_tokenizer": DropIf(True, "the fast tokenizer is what transformers loads", No("posttrain loads the "
                                                                                           "fast tokenizer")),
    "infer_dtype": To("model.dtype", dtype),
    "attn": Call(_attention),  # newer LLaMA-Factory's name for flash_attn
    "enable_liger_kernel": To("training.use_liger_kernel"),
    "flash_attn": Call(_attention),
    "disable_gradient_checkpointing": Call(lambda c, k, v: c.map(k, v, "training.gradient_checkpointing", not v)),
    "use_reentrant_gc": DropIf(True, "reentrant checkpointing is transformers' default too",
                               To("training.gradient_checkpointing_kwargs", lambda v: {"use_reentrant": v})),
    "use_unsloth": DropIf(False, "false", No("posttrain trains with TRL's trainers, not Unsloth's")),
    "low_cpu_mem_usage": Drop("transformers 5 always loads with low memory use"),
    "hf_hub_token": No("secrets never go in a recipe; set HF_TOKEN in the environment"),
    "ms_hub_token": No("secrets never go in a recipe; posttrain reads the Hugging Face hub only"),
    "print_param_status": Drop("a debug print; posttrain logs the trainable parameter count"),
    "adapter_name_or_path": No("posttrain trains a new adapter; merge this one first (`posttrain merge RUN_DIR`) and "
                               "use the merged model as model.name_or_path"),
    "create_new_adapter": DropIf(False, "false", No("posttrain always trains a new adapter")),
    "rope_scaling": No("posttrain cannot set RoPE scaling; use a model whose config.json sets it"),
    "shift_attn": DropIf(False, "false", No("posttrain cannot use shifted-sparse attention")),
    "upcast_layernorm": DropIf(False, "false", No("posttrain cannot upcast only the layer norms; model.dtype: fp32 "
                                                  "keeps every layer in float32")),
    "resize_vocab": Drop("posttrain grows the embedding whenever the tokenizer outgrows it (LLaMA-Factory turns "
                         "resize_vocab on when tokens are added); added tokens round it up to a multiple of 64 as "
                         "LLaMA-Factory does"),
    "add_tokens": Call(lambda c, k, v: _tokens(c, k, v, "model.add_tokens")),
    "add_special_tokens": Call(lambda c, k, v: _tokens(c, k, v, "model.add_special_tokens")),
    "new_special_tokens": Call(lambda c, k, v: _tokens(c, k, v, "model.add_special_tokens")),  # add_special_tokens' old name
    "new_special_tokens_config": No("posttrain cannot start new rows from token descriptions; list the tokens in "
                                    "model.add_special_tokens (their rows start from the old rows' mean)"),
    "init_special_tokens": DropIf("noise_init", "posttrain starts new rows around the old rows' mean, as noise_init",
                                  No("posttrain cannot start new rows from token descriptions; they start from the "
                                     "old rows' mean")),
    "split_special_tokens": DropIf(False, "special tokens are kept whole, as posttrain does",
                                   No("posttrain keeps special tokens whole")),
    "train_from_scratch": DropIf(False, "false", No("posttrain fine-tunes pretrained weights")),
    # DataArguments
    "train_on_prompt": DropIf(False, "posttrain masks the prompt by default (`data.train_on: assistant`)",
                              To("data.train_on", lambda v: "all")),
    "mask_history": DropIf(False, "every assistant turn is trained, as posttrain does by default (train_on: "
                                  "assistant)", To("data.train_on", lambda v: "last_assistant")),
    "overwrite_cache": Drop("the datasets cache is keyed on the data and settings"),
    "preprocessing_num_workers": To("data.num_proc"),
    "preprocessing_batch_size": Drop("a datasets.map batch size; it does not change the rows"),
    "packing": Call(packing),
    "neat_packing": flag("training.packing", True, note="posttrain's packing never attends across rows, as "
                                                        "neat_packing"),
    "mix_strategy": DropIf("concat", "data.train lists are concatenated (and shuffled)",
                           No("posttrain concatenates mixtures; per-source `weight:` sets the proportions")),
    "interleave_probs": No("set `weight:` on each data.train entry"),
    "streaming": DropIf(False, "false", No("posttrain loads datasets, it cannot stream them")),
    "buffer_size": Drop("a streaming setting"),
    "tokenized_path": No("posttrain tokenizes once per run (datasets caches it); it reads no pre-tokenized data"),
    "eval_on_each_dataset": DropIf(False, "false", No("posttrain evaluates the mixture as one eval set")),
    "ignore_pad_token_for_loss": DropIf(True, "padding is masked from the loss, as posttrain does (by position)",
                                        No("posttrain always masks padding")),
    "default_system": No("put the system turn in the data or in the chat template (model.chat_template)"),
    "enable_thinking": No("add a per-row `chat_template_kwargs` column ({enable_thinking: ...}) to the data"),
    "tool_format": No("posttrain renders tools through the tokenizer's chat template"),
    # FinetuningArguments
    "pref_beta": To("training.beta"),
    "pref_ftx": DropIf(0, "0: no SFT term", No("TRL 1.12's DPOConfig has no SFT loss term")),
    "dpo_label_smoothing": To("training.label_smoothing"),
    "kto_chosen_weight": To("training.desirable_weight"),
    "kto_rejected_weight": To("training.undesirable_weight"),
    "simpo_gamma": To("training.simpo_gamma"),
    "ppo_epochs": To("training.num_ppo_epochs"),
    "ppo_whiten_rewards": To("training.whiten_rewards"),
    "ppo_score_norm": DropIf(False, "false", No("TRL's PPO does not normalise scores")),
    "ppo_target": No("TRL's PPO uses a fixed training.kl_coef (no adaptive KL target)"),
    "ppo_buffer_size": No("TRL's PPO sets its rollout batch from the batch sizes (num_mini_batches)"),
    "reward_model": To("reward_model"),
    "reward_model_type": DropIf("full", "a full reward model, as posttrain's reward_model",
                                No("posttrain's PPO needs a full sequence-classification reward model "
                                   "(a reward stage's run directory)")),
    "ref_model": To("ref_model"),
    "plot_loss": Drop("`posttrain report RUN_DIR` draws the loss curves after training"),
    "compute_accuracy": DropIf(False, "false", No("posttrain computes no token accuracy")),
    "disable_shuffling": DropIf(False, "rows are shuffled, as posttrain does", No("posttrain always shuffles")),
    "include_effective_tokens_per_second": Drop("a throughput log; posttrain logs tokens seen in the manifest"),
    "use_llama_pro": DropIf(False, "false", No("posttrain cannot do block expansion")),
    "use_galore": DropIf(False, "false", To("training.optim", lambda v: "galore_adamw")),
    "use_badam": DropIf(False, "false", No("posttrain cannot use BAdam")),
    "use_apollo": DropIf(False, "false", No("posttrain cannot use APOLLO")),
    "use_adam_mini": DropIf(False, "false", No("posttrain cannot use Adam-mini")),
    "loraplus_lr_ratio": No("(LoRA+: a higher learning rate for the B matrices); closest: plain LoRA with a higher "
                            "training.learning_rate"),
    "loraplus_lr_embedding": No("(LoRA+)"),
    **{f"freeze_{k}": No("freeze training: write its layers as model.trainable (see finetuning_type)")
       for k in ("trainable_layers", "trainable_modules", "extra_modules")},
    "use_swanlab": DropIf(False, "false", No("posttrain reports to what transformers knows: training.report_to")),
    "pref_bco_weight": DropIf(0, "0: no BCO term", No("TRL 1.12's DPOConfig has no BCO term")),
    "ld_alpha": To("training.ld_alpha"),
    **{f"{m}_adapters": No(f"merge the adapter into its model first (`posttrain merge RUN_DIR`) and name that as {m}")
       for m in ("ref_model", "reward_model")},
    "ref_model_quantization_bit": No("posttrain loads the reference model unquantized"),
    "reward_model_quantization_bit": No("posttrain loads the reward model unquantized"),
    "pure_bf16": DropIf(False, "false", To("model.dtype", lambda v: "bf16", note="bf16 weights (set training.bf16: "
                                                                                  "false for no autocast)")),
    "pissa_iter": Drop("a PiSSA detail; peft's default iteration count applies"),
    "pissa_convert": DropIf(False, "false", No("posttrain saves the PiSSA adapter as trained")),
    # GeneratingArguments
    **{k: Drop(GEN) for k in ("do_sample", "top_p", "top_k", "num_beams", "repetition_penalty", "length_penalty",
                              "skip_special_tokens", "max_length")},
    "temperature": Call(lambda c, k, v: c.map(k, v, "training.temperature") if c.stage == "ppo" else c.drop(k, v, GEN)),
    "max_new_tokens": Call(lambda c, k, v: c.map(k, v, "training.response_length") if c.stage == "ppo"
                           else c.drop(k, v, GEN)),
}


# option groups used only with their switch (use_galore: galore_*, ...)
GROUPS = {"galore_": "use_galore", "apollo_": "use_apollo", "badam_": "use_badam", "swanlab_": "use_swanlab",
          "oft_": "finetuning_type", "module_dropout": "finetuning_type"}


def _tokens(conv: Conversion, key: str, value, target: str):
    """add_tokens / add_special_tokens (new_special_tokens): comma-separated, as LLaMA-Factory splits them; it then
    resizes the embedding to a multiple of 64 (model_utils/embedding.py)."""
    tokens = [t.strip() for t in value.split(",") if t.strip()] if isinstance(value, str) else value
    lora = conv.raw.get("finetuning_type", "lora") == "lora"
    conv.map(key, value, target, tokens, note="under LoRA posttrain trains their rows, LLaMA-Factory the whole "
                                              "embedding and head: list both in peft.modules_to_save for that" if lora
             else "")
    conv.default("model.resize_to_multiple_of", 64, "LLaMA-Factory pads the grown embedding to a multiple of 64")


def _fallback(conv: Conversion, key: str, value):
    for prefix, switch in GROUPS.items():
        if key.startswith(prefix):
            on = conv.raw.get(switch) == "oft" if switch == "finetuning_type" else conv.raw.get(switch)
            return (conv.no(key, value, f"used with {switch}, which posttrain cannot express") if on else
                    conv.drop(key, value, f"used only with {switch}, which is not set"))
    return training_field(conv, key, value)


def looks_like(raw: dict) -> bool:
    return raw.get("stage") in ("pt", "sft", "rm", "ppo", "dpo", "kto") and "model" not in raw or \
        any(k in raw for k in ("finetuning_type", "cutoff_len", "lora_target", "template")) and "dataset" in raw


def _stage(conv: Conversion):
    raw = conv.raw
    st = raw.get("stage", "sft")
    if st == "pt":
        conv.map("stage", st, "stage", "sft", note="pre-training: raw text (data.format text), every token trained")
        return "sft"
    if st not in STAGES:  # converted as sft
        conv.no("stage", st, "not a LLaMA-Factory stage posttrain knows")
        return "sft"
    stage = STAGES[st]
    loss = raw.get("pref_loss", "sigmoid")
    if stage == "dpo" and loss in LOSS_STAGES:
        stage, sets, why = LOSS_STAGES[loss]
        conv.map("stage", st, "stage", stage, note=f"pref_loss: {loss}")
        (conv.map("pref_loss", loss, "*", sets) if sets else conv.drop("pref_loss", loss, why))
        if stage == "cpo" and not raw.get("pref_ftx"):
            conv.default("training.cpo_alpha", 0, "LLaMA-Factory's SimPO adds no SFT term (pref_ftx 0)")
        return stage
    conv.map("stage", st, "stage", stage)
    if "pref_loss" in raw:
        if stage != "dpo":
            conv.drop("pref_loss", loss, f"not used by stage {stage}")
        else:
            conv.map("pref_loss", loss, "training.loss_type")
    return stage


def _peft(conv: Conversion):
    raw = conv.raw
    ft = raw.get("finetuning_type", "lora")
    if ft == "full":
        conv.drop_given("finetuning_type", FULL)
        conv.drop_given(tuple(LORA), "finetuning_type full: LoRA settings unused")
        return
    if ft != "lora":
        conv.drop_given((*LORA, *QUANT), f"finetuning_type {ft}: LoRA/QLoRA settings unused")
        conv.no("finetuning_type", ft, f"freeze trains only some layers: write them as model.trainable, "
                                       f"{TRAINABLE}. Converted as full fine-tuning until then"
                if ft == "freeze" else f"{LORA_ONLY}; converted as full fine-tuning")
        return
    conv.drop_given("finetuning_type", "the `peft:` section is the LoRA setting")
    rank = raw.get("lora_rank", 8)
    walk(conv, [(k, raw[k]) for k in LORA if k in raw and raw[k] is not None], LORA)
    conv.default("peft.r", 8, "LLaMA-Factory: lora_rank 8")
    conv.default("peft.lora_alpha", 2 * rank, "LLaMA-Factory: lora_alpha defaults to 2 x lora_rank")
    conv.default("peft.lora_dropout", 0.0, "LLaMA-Factory: lora_dropout 0.0 (peft's default too)")
    conv.default("peft.target_modules", "all-linear", "LLaMA-Factory: lora_target all")
    bits = raw.get("quantization_bit")
    method = raw.get("quantization_method", "bitsandbytes")
    if "quantization_method" in raw:
        (conv.drop if method in ("bitsandbytes", "bnb") else conv.no)(
            "quantization_method", method, "bitsandbytes: the `quantization:` section"
            if method in ("bitsandbytes", "bnb") else "posttrain quantizes with bitsandbytes only")
    if bits in (4, 8):
        conv.map("quantization_bit", bits, f"quantization.load_in_{bits}bit", True)
        if bits == 4:
            qt = raw.get("quantization_type", "nf4")
            if "quantization_type" in raw:
                conv.map("quantization_type", qt, "quantization.bnb_4bit_quant_type")
            conv.default("quantization.bnb_4bit_quant_type", "nf4", "LLaMA-Factory: quantization_type nf4")
            if "double_quantization" in raw:
                conv.map("double_quantization", raw["double_quantization"], "quantization.bnb_4bit_use_double_quant")
            conv.default("quantization.bnb_4bit_use_double_quant", True, "LLaMA-Factory: double_quantization true")
            compute = "bfloat16" if raw.get("bf16") else "float16" if raw.get("fp16") else None
            if compute:  # without bf16/fp16 LLaMA-Factory infers it from the device, as posttrain's default does
                conv.default("quantization.bnb_4bit_compute_dtype", compute,
                             "LLaMA-Factory: 4-bit compute dtype = the training precision")
        else:
            conv.drop_given(("quantization_type", "double_quantization"), "4-bit only")
    elif bits is not None:
        conv.no("quantization_bit", bits, "posttrain quantizes to 4 or 8 bits (bitsandbytes)")
    else:
        conv.drop_given(("quantization_type", "double_quantization"), "the model is not quantized (no quantization_bit)")


def _dataset_info(conv: Conversion) -> tuple[dict | None, Path | None]:
    d = conv.raw.get("dataset_dir", "data")
    here = conv.source.parent
    for folder in (here, here / d, Path(d)):
        f = folder / "dataset_info.json"
        if f.is_file():
            try:
                return json.loads(f.read_text(encoding="utf-8")), folder
            except (OSError, ValueError):
                return None, None
    return None, None


# dataset_info.json `tags:` of sharegpt rows -> the role posttrain reads them as (LLaMA-Factory's default names are
# read as they are: human/gpt/observation/function_call/system)
ROLE_TAGS = {"user_tag": "user", "assistant_tag": "assistant", "observation_tag": "tool", "function_tag": "assistant",
             "system_tag": "system"}


def _tags(tags: dict, src: dict):
    """role_tag/content_tag -> the source's message_map, user_tag/assistant_tag/... -> its role_map."""
    keys = {tags.get("role_tag", "from"): "role", tags.get("content_tag", "value"): "content"}
    if set(keys) not in ({"from", "value"}, {"role", "content"}):
        src["message_map"] = {k: v for k, v in keys.items() if k != v}
    roles = {tags[t]: ours for t, ours in ROLE_TAGS.items() if tags.get(t) and SHAREGPT_ROLES.get(tags[t]) != ours}
    if roles:
        src["role_map"] = roles


def _source(name: str, info: dict | None, folder: Path | None, stage: str, slice_: str) -> tuple[dict, str, str]:
    """One LLaMA-Factory dataset name -> (a posttrain source entry, its row format, a problem or '')."""
    entry = (info or {}).get(name)
    if entry is None:
        if "/" in name:
            return {"source": name, "split": f"train{slice_}"}, "", ""
        return {"source": name}, "", (f"'{name}' is not in dataset_info.json" if info is not None else
                                      f"dataset '{name}': no dataset_info.json beside the config (or in "
                                      "dataset_dir) to look it up; set data.train to its hub id or file")
    if entry.get("hf_hub_url"):
        src = {"source": entry["hf_hub_url"]}
    elif entry.get("file_name"):
        src = {"source": str(folder / entry["file_name"])}
    else:
        return {"source": name}, "", f"dataset '{name}' is on ModelScope/Modelers only; posttrain reads the " \
                                     "Hugging Face hub and local files"
    if entry.get("subset"):
        src["name"] = entry["subset"]
    src["split"] = entry.get("split", "train") + slice_
    cols = entry.get("columns") or {}
    tags = entry.get("tags") or {}
    ranking = bool(entry.get("ranking"))
    cmap: dict[str, str] = {}
    problem = ""
    if entry.get("formatting", "alpaca") == "sharegpt":
        messages = cols.get("messages", "conversations")
        openai = tags.get("role_tag") == "role"
        fmt = "messages" if openai else "sharegpt"
        if ranking:
            fmt = "preference"
            cmap[messages] = "prompt"
        elif messages != ("messages" if openai else "conversations"):
            cmap[messages] = "messages" if openai else "conversations"
        _tags(tags, src)
        if cols.get("system"):
            cmap[cols["system"]] = "system"
        if stage == "kto":  # {messages, label}: unpaired rows read as one conversation (its last turn judged)
            fmt = "unpaired"
            if cols.get("kto_tag", "label") != "label":
                cmap[cols["kto_tag"]] = "label"
        if cols.get("tools") or cols.get("images") or cols.get("videos") or cols.get("audios"):
            problem = f"dataset '{name}': tools/images/videos/audios columns are not translated"
    elif stage == "pt":
        fmt = "text"
        if cols.get("prompt", "text") != "text":
            cmap[cols["prompt"]] = "text"
    elif stage == "ppo" and not ranking:
        fmt = "prompt"
        cmap[cols.get("prompt", "instruction")] = "prompt"
        problem = f"dataset '{name}': LLaMA-Factory's PPO prompt is the instruction followed by the input; " \
                  "posttrain's prompt rows take one column (the instruction), so an input would be left out"
    else:
        fmt = "preference" if ranking else "unpaired" if stage == "kto" else "alpaca"
        names = {"prompt": "instruction", "query": "input", "response": "output"}
        if ranking:
            names = {"prompt": "prompt"}
        if stage == "kto":
            names = {"prompt": "prompt", "response": "completion", "kto_tag": "label"}
        for theirs, ours in names.items():
            col = cols.get(theirs, ours if theirs != "prompt" or not ranking else "instruction")
            if col != ours:
                cmap[col] = ours
        if cols.get("system") and cols["system"] != "system":
            cmap[cols["system"]] = "system"
        if cols.get("history"):
            problem = f"dataset '{name}': a history column (earlier turns) is not translated"
        if ranking and cols.get("query"):
            problem = f"dataset '{name}': a query column on preference rows is not translated"
    if cmap:
        src["column_map"] = cmap
    return src, fmt, problem


def _data(conv: Conversion):
    raw = conv.raw
    info, folder = _dataset_info(conv)
    n = raw.get("max_samples")
    slice_ = f"[:{n}]" if n else ""
    for split_key, dotted in (("dataset", "data.train"), ("eval_dataset", "data.eval")):
        value = raw.get(split_key)
        if value is None:
            if split_key == "dataset":
                conv.set_me("(dataset)", None, "data.train", "no dataset: set data.train")
            continue
        names = [s.strip() for s in value.split(",")] if isinstance(value, str) else list(value)
        stage = "pt" if raw.get("stage") == "pt" else conv.stage
        srcs = [_source(nm, info, folder, stage, slice_ if split_key == "dataset" else "") for nm in names]
        fmt = "text" if stage == "pt" else \
            stage_format(conv.stage, sft="alpaca" if {f for _, f, _ in srcs if f} <= {"alpaca"} else "messages")
        if len(srcs) == 1:
            new = one_source(srcs[0][0], dotted)
        else:  # a mixture: each source of another format says its own
            for s, f, _ in srcs:
                if f and f != fmt:
                    s["format"] = f
            new = {dotted: [s for s, _, _ in srcs]}
        if split_key == "dataset":
            new["data.format"] = fmt
        note = "names read from dataset_info.json" if info is not None else ""
        if n and split_key == "dataset":
            note += ("; " if note else "") + f"max_samples {n}: the first {n} rows of each"
        map_sources(conv, split_key, value, new, [p for _, _, p in srcs if p], note=note)
    conv.drop_given("max_samples", "in each data.train split slice above" if n and "dataset" in raw else
                    "every row" if n is None else "no dataset")
    conv.drop_given("dataset_dir", "where dataset_info.json was looked up; the paths above include it")
    eval_fraction(conv, "val_size")
    if raw.get("template") is not None:
        chat_template(conv, "template", raw["template"])
        if conv.get("data.format") in ("alpaca", "prompt_completion", "preference", "prompt"):
            conv.default("data.template", "chat", "LLaMA-Factory renders every row through the template")
    cutoff = raw.get("cutoff_len")
    if cutoff is not None:
        conv.map("cutoff_len", cutoff, "data.max_length")
    else:
        conv.default("data.max_length", 2048, "LLaMA-Factory: cutoff_len 2048")


def convert(conv: Conversion, text: str):
    conv.stage = _stage(conv)
    walk(conv, conv.raw.items(), TABLE, _fallback)
    for k in ("bf16", "fp16"):
        if k in conv.raw:
            training_field(conv, k, conv.raw[k])
    _peft(conv)
    _data(conv)
    if conv.stage == "ppo" and "reward_model_type" not in conv.raw:
        conv.no("(reward_model_type)", "lora", "LLaMA-Factory's default reward_model_type is lora (an adapter); "
                                               "posttrain's PPO needs a whole scoring model: `posttrain merge` the "
                                               "reward run, or train it with posttrain's reward stage")
    if conv.get("model.name_or_path") is None:
        conv.set_me("(model)", None, "model.name_or_path", "no model_name_or_path: set model.name_or_path")
