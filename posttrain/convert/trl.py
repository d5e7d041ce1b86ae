"""TRL scripts' YAML (`trl sft --config x.yaml`) and alignment-handbook recipes (the same scripts' arguments).

Keys: trl.ModelConfig (model + LoRA/QLoRA), trl.ScriptArguments and the handbook's dataset arguments
(dataset_name/config/splits, `dataset_mixer` + `dataset_splits` (older handbook), `dataset_mixture` with
`datasets:` and `test_split_size` (newer)), and every field of the stage's TRL config (passed through).

Implicit defaults of TRL's ModelConfig, made explicit (trl/trainer/model_config.py, trl/trainer/utils.py
`get_quantization_config`): `dtype` float32; LoRA r 16, lora_alpha 32, lora_dropout 0.05; 4-bit is nf4 with
NO double quantization (`use_bnb_nested_quant: False`) and compute dtype = the model dtype (float32 by
default). posttrain's own QLoRA default (double quant, bf16 compute) differs, so all of it is written out.
"""

from __future__ import annotations

from posttrain import stages
from posttrain.convert.core import (
    DEFAULT,
    Call,
    Conversion,
    Drop,
    DropIf,
    Fate,
    No,
    To,
    chat_template,
    dtype,
    later,
    stage_format,
    walk,
)

# ModelConfig fields that make up the LoRA/QLoRA settings; read together by `_peft` (with what validate says of them)
PEFT = {"lora_r": To("peft.r"), "lora_alpha": To("peft.lora_alpha"), "lora_dropout": To("peft.lora_dropout"),
        "lora_target_modules": To("peft.target_modules"), "lora_target_parameters": To("peft.target_parameters"),
        "lora_modules_to_save": To("peft.modules_to_save"), "use_rslora": To("peft.use_rslora"),
        "use_dora": To("peft.use_dora")}
LORA_KEYS = {"use_peft": "a `peft:` section, e.g. `peft: {r: 16, lora_alpha: 32, target_modules: all-linear}`", **PEFT,
             "lora_task_type": Drop("posttrain sets the task type per stage (CAUSAL_LM; SEQ_CLS for reward)")}
QUANT_KEYS = {"load_in_4bit": To("quantization", lambda v: {"load_in_4bit": True}),
              "load_in_8bit": To("quantization", lambda v: {"load_in_8bit": True}),
              "bnb_4bit_quant_type": To("quantization.bnb_4bit_quant_type"),
              "use_bnb_nested_quant": To("quantization.bnb_4bit_use_double_quant"),
              "bnb_4bit_quant_storage": To("quantization.bnb_4bit_quant_storage")}
# the handbook's data arguments, read together by `_data`
DATA_KEYS = {"dataset_name": To("data.train"), "dataset_config": To("data.name"), "dataset_train_split": To("data.split"),
             "dataset_test_split": To("data.eval_split"), "dataset_mixer": To("data.train"),
             "dataset_splits": To("data.split"),
             "dataset_mixture": To("data.train", note="a list of sources, each with `source:`, `name:`, `split:`, "
                                   "`weight:`; test_split_size is data.eval_fraction")}
LOSS_KEYS = {"assistant_only_loss": To("data.train_on", lambda v: "assistant" if v else "all"),
             "completion_only_loss": To("data.train_on", lambda v: "assistant" if v else "all",
                                        note="for prompt/completion rows")}

TABLE = {
    # trl.ModelConfig
    "model_name_or_path": To("model.name_or_path"),
    "model_revision": To("model.revision"),
    "torch_dtype": To("model.dtype", dtype),
    "dtype": To("model.dtype", dtype),
    "attn_implementation": To("model.attn_implementation"),
    "use_flash_attention_2": DropIf(False, "false: the default attention",
                                    To("model.attn_implementation", lambda v: "flash_attention_2")),
    "trust_remote_code": To("model.trust_remote_code"),
    **{k: later(hint) for k, hint in {**LORA_KEYS, **QUANT_KEYS, **DATA_KEYS, **LOSS_KEYS}.items()},
    "dataset_configs": No("set `name:` on each data.train entry (a mixture)"),
    "dataset_streaming": DropIf(False, "false: not streamed", No("posttrain loads datasets, it cannot stream them")),
    # trl.ScriptArguments / the handbook's data arguments
    "chat_template": Call(chat_template),
    "preprocessing_num_workers": To("data.num_proc"),
    "ignore_bias_buffers": Drop("a DDP workaround for buffers of some models; the launcher handles DDP"),
    "truncation_side": No("posttrain truncates the end of a row; it cannot truncate from the left"),
    "auto_insert_empty_system_msg": Drop("posttrain renders the messages as written (no empty system turn is "
                                         "inserted); add one to the data if your template needs it"),
    "text_column": No("raw text rows are posttrain's `data.format: text` (a `text` column, every token trained): set "
                      "data.format and data.column_map by hand"),
    # trl/scripts/grpo.py, rloo.py: rewards; ppo.py: the reward and value models
    "reward_model_name_or_path": Call(lambda c, k, v: c.map(k, v, "rewards", [{"model": v}]) if c.stage in (
        "grpo", "rloo") else c.map(k, v, "reward_model")),
    "reward_funcs": No("Python reward functions: posttrain's rewards are reward models and the rules exact_match and "
                       "length_penalty (a `rewards:` list); write the equivalent by hand"),
    "sft_model_path": Drop("the policy is model.name_or_path"),
    "reward_model_path": To("reward_model"),
    "hub_model_revision": To("training.hub_revision", note="the handbook's name for the hub branch"),
    "push_to_hub_revision": Call(lambda c, k, v: c.map(k, v, "training.push_to_hub", True,
                                                       note="to the branch training.hub_revision")
                                 if v else c.drop(k, v, "false")),
    "eos_token": To("model.special_tokens.eos_token", note="the tokenizer's EOS, added as a special token if new"),
    "max_prompt_length": To("data.max_prompt_length", note="cut from the left, the end of the prompt kept"),
}


def looks_like(raw: dict) -> bool:
    return "model_name_or_path" in raw or any(k in raw for k in (*DATA_KEYS, "dataset_configs", "dataset_streaming"))


def _stage(conv: Conversion) -> str:
    parts = [p.lower() for p in conv.source.parts[:-1]] + [conv.source.stem.lower()]
    names = stages.names()
    for part in reversed(parts):
        for name in sorted(names, key=lambda n: n != part):  # a whole folder name (online_dpo/) before a word of it
            if part == name or any(w == name for w in part.replace("-", "_").split("_")):
                return name
    raw = conv.raw
    if "num_generations" in raw or "reward_funcs" in raw:
        return "grpo"
    if "beta" in raw or "max_prompt_length" in raw:
        return "dpo"
    return "sft"


def _peft(conv: Conversion):
    raw = conv.raw
    if not (raw.get("use_peft") or raw.get("load_in_4bit") or raw.get("load_in_8bit")):
        conv.drop_given((*LORA_KEYS, *QUANT_KEYS), "use_peft is false and the model is not quantized: TRL ignores it "
                                                "(full fine-tuning)")
        return
    conv.drop_given("use_peft", "the `peft:` section below is the LoRA setting")
    for k, v in {k: raw[k] for k in LORA_KEYS if k in raw}.items():
        if k == "lora_task_type":
            want = "SEQ_CLS" if conv.stage == "reward" else "CAUSAL_LM"
            why = f"posttrain sets task type {want} for stage {conv.stage}"
            (conv.drop if str(v).upper() == want else conv.no)(k, v, why)  # the same type: dropped
        elif k != "use_peft":
            conv.map(k, v, PEFT[k].target)
    conv.default("peft.r", 16, "TRL ModelConfig: lora_r 16")
    conv.default("peft.lora_alpha", 32, "TRL ModelConfig: lora_alpha 32")
    conv.default("peft.lora_dropout", 0.05, "TRL ModelConfig: lora_dropout 0.05")
    if raw.get("load_in_4bit"):
        conv.map("load_in_4bit", True, "quantization.load_in_4bit", True)
        conv.map("bnb_4bit_quant_type", raw["bnb_4bit_quant_type"], "quantization.bnb_4bit_quant_type") \
            if "bnb_4bit_quant_type" in raw else conv.default("quantization.bnb_4bit_quant_type", "nf4",
                                                               "TRL ModelConfig: nf4")
        nested = raw.get("use_bnb_nested_quant", False)
        if "use_bnb_nested_quant" in raw:
            conv.map("use_bnb_nested_quant", nested, "quantization.bnb_4bit_use_double_quant", bool(nested))
        else:
            conv.default("quantization.bnb_4bit_use_double_quant", False,
                         "TRL ModelConfig: use_bnb_nested_quant false (posttrain's own default is true)")
        compute = {"bf16": "bfloat16", "fp16": "float16"}.get(conv.get("model.dtype") or "fp32", "float32")
        conv.default("quantization.bnb_4bit_compute_dtype", compute,
                     "TRL: 4-bit compute dtype = the model dtype (float32 unless dtype/torch_dtype says)")
        if "bnb_4bit_quant_storage" in raw:
            conv.map("bnb_4bit_quant_storage", raw["bnb_4bit_quant_storage"], "quantization.bnb_4bit_quant_storage")
        conv.drop_given("load_in_8bit", "load_in_4bit wins (TRL checks 4-bit first)")
    elif raw.get("load_in_8bit"):
        conv.map("load_in_8bit", True, "quantization.load_in_8bit", True)
        conv.drop_given(("load_in_4bit", "bnb_4bit_quant_type", "use_bnb_nested_quant", "bnb_4bit_quant_storage"),
                        "only used for 4-bit")
    else:
        conv.drop_given(QUANT_KEYS, "the model is not quantized (load_in_4bit/load_in_8bit false)")


def _data(conv: Conversion):
    raw = conv.raw
    conv.put("data.format", stage_format(conv.stage, sft="messages"))
    evaluates = raw.get("eval_strategy", raw.get("evaluation_strategy", "no")) not in ("no", False, None)
    if "dataset_mixture" in raw:
        mix = raw["dataset_mixture"] or {}
        entries = []
        for d in mix.get("datasets", []):
            e = {"source": d.get("id") or d.get("path")}
            if d.get("config") not in (None, "default"):
                e["name"] = d["config"]
            e["split"] = d.get("split", "train")
            w = d.get("weight", d.get("fraction"))
            if w is not None and w != 1:
                e["weight"] = w
            entries.append(e)
        new = {"data.train": entries}
        if mix.get("test_split_size"):
            new["data.eval_fraction"] = mix["test_split_size"]
        if mix.get("seed") is not None:
            new["data.seed"] = mix["seed"]
        conv.map("dataset_mixture", "<mixture>", "*", new,
                 note="columns: posttrain reads the format's columns (messages / prompt, chosen, rejected)")
    elif "dataset_mixer" in raw:
        mixer = raw["dataset_mixer"] or {}
        splits = raw.get("dataset_splits") or ["train", "test"]
        train_splits = [s for s in splits if "train" in s] or ["train"]
        test_splits = [s for s in splits if "test" in s]
        train = [{"source": ds, "split": sp, **({"weight": w} if w != 1 else {})}
                 for ds, w in mixer.items() for sp in train_splits]
        evals = [{"source": ds, "split": sp} for ds in mixer for sp in test_splits]
        conv.map("dataset_mixer", mixer, "data.train", train, note="weight: a fraction of the train split, as the "
                                                                   "handbook's mixer")
        if "dataset_splits" in raw:
            if evals:
                conv.map("dataset_splits", splits, "data.eval", evals, note="the handbook evaluates on the test splits")
            else:
                conv.drop("dataset_splits", splits, "train splits: in data.train above")
    elif "dataset_name" in raw:
        conv.map("dataset_name", raw["dataset_name"], "data.train")
        config = raw.get("dataset_config")
        if "dataset_train_split" in raw:
            conv.map("dataset_train_split", raw["dataset_train_split"], "data.split")
        test = raw.get("dataset_test_split", "test")
        if evaluates:  # TRL's scripts: eval_dataset = dataset[dataset_test_split] when eval_strategy != "no"
            entry = {"source": raw["dataset_name"], **({"name": config} if config else {}), "split": test}
            if config is not None:
                conv.map("dataset_config", config, "*", {"data.name": config, "data.eval": [entry]},
                         note="the eval split of the same dataset and config")
            else:
                conv.put("data.eval", raw["dataset_name"])
                conv.put("data.eval_split", test)
            if "dataset_test_split" in raw:
                conv.drop("dataset_test_split", test, "the eval split in data.eval")
            else:
                conv.fates.append(Fate("(default)", None, DEFAULT, f"data.eval: {raw['dataset_name']}, split {test}  "
                                       "(TRL scripts evaluate on the 'test' split when eval_strategy is not 'no')"))
        else:
            if config is not None:
                conv.map("dataset_config", config, "data.name")
            conv.drop_given("dataset_test_split", "eval_strategy is 'no': TRL's script passes no eval dataset")
    else:
        conv.set_me("(data)", None, "data.train", "no dataset_name / dataset_mixer / dataset_mixture: set data.train")
    if "dataset_splits" in raw and "dataset_mixer" not in raw and "dataset_mixture" not in raw:
        conv.no("dataset_splits", raw["dataset_splits"], "only meaningful with dataset_mixer")


def convert(conv: Conversion, text: str):
    conv.stage = conv.stage or _stage(conv)
    walk(conv, conv.raw.items(), TABLE)
    if conv.get("model.name_or_path") is None:
        conv.set_me("(model)", None, "model.name_or_path", "no model_name_or_path: set model.name_or_path")
    conv.default("model.dtype", "fp32", "TRL ModelConfig: dtype float32 unless torch_dtype/dtype says")
    _peft(conv)
    _data(conv)
    if conv.stage == "sft":
        _loss_masking(conv)
    if conv.stage in ("sft", "dpo", "reward", "orpo", "kto"):
        conv.default("data.max_length", 1024, "TRL configs: max_length 1024")


def _loss_masking(conv: Conversion):
    """TRL's SFTTrainer trains every token of a conversation unless assistant_only_loss is true, and masks the
    prompt of prompt/completion rows unless completion_only_loss is false. posttrain masks by default, so TRL's
    default for conversations (these recipes' messages data) is written out as data.train_on: all."""
    raw = conv.raw
    for key in ("assistant_only_loss", "completion_only_loss"):
        if key in raw:
            v = raw[key]
            if key == "assistant_only_loss":
                (conv.drop(key, v, "posttrain trains the assistant turns (data.train_on: assistant)") if v else
                 conv.map(key, v, "data.train_on", "all"))
            elif conv.get("data.format") == "messages":
                conv.drop(key, v, "it applies to prompt/completion rows; these are conversations (assistant_only_loss "
                                  "and data.train_on decide)")
            else:
                (conv.map(key, v, "data.train_on", "all", note="the prompt is trained too") if v is False else
                 conv.drop(key, v, "posttrain masks the prompt exactly (data.train_on: assistant)"))
    if not raw.get("assistant_only_loss") and conv.get("data.format") == "messages":
        conv.default("data.train_on", "all", "TRL SFT trains every token of a conversation unless assistant_only_loss")
