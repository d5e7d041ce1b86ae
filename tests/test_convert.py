"""`posttrain convert`: real public configs of axolotl, LLaMA-Factory, TRL/alignment-handbook and torchtune
(tests/data/convert/<tool>/, each with its source URL on the first line) become posttrain recipes. Every key
of each config gets a fate; the fates that matter are pinned here; each result validates with the tiny model
swapped in, and one per tool trains a step."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import skip_where_refused

from posttrain.convert import convert, detect, read
from posttrain.convert.core import DEFAULT, DROPPED, MAPPED, NOT

DATA = Path(__file__).parent / "data" / "convert"
CONFIGS = sorted(p for p in DATA.rglob("*") if p.suffix in (".yaml", ".yml"))
TOOL = {"trl": "trl", "llama-factory": "llama-factory", "axolotl": "axolotl", "torchtune": "torchtune"}


def _tool(path: Path) -> str:
    return path.relative_to(DATA).parts[0]


def _fates(conv):
    return {f.key: f for f in conv.fates}


def test_every_config_has_its_source_url_and_is_detected():
    assert len(CONFIGS) >= 33 and {_tool(p) for p in CONFIGS} == set(TOOL)
    for p in CONFIGS:
        assert p.read_text().startswith("# https://github.com/"), p
        assert detect(read(p)[0]) == _tool(p), p


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(DATA)))
def test_every_source_key_gets_exactly_one_fate(path):
    raw = read(path)[0]
    conv = convert(path)
    keys = [f.key.split(".")[0] for f in conv.fates if f.kind != DEFAULT]
    assert set(keys) >= {k for k in raw if k != "profiler"}, set(raw) - set(keys)
    if _tool(path) != "torchtune":  # torchtune's nested keys have one fate each instead
        dup = {k for k in keys if keys.count(k) > 1 and not k.startswith("special_tokens")}
        assert not dup, dup


# (file, source key) -> (fate kind, words in the printed fate)
PINNED = {
    ("trl/sft/zephyr-7b-beta_config_qlora.yaml", "lora_alpha"): (MAPPED, "peft.lora_alpha: 16"),
    ("trl/sft/zephyr-7b-beta_config_qlora.yaml", "do_eval"): (DROPPED, "evaluates whenever there is eval data"),
    ("trl/sft/zephyr-7b-beta_config_qlora.yaml", "warmup_ratio"): (MAPPED, "training.warmup_steps: 0.1"),
    ("trl/sft/zephyr-7b-beta_config_qlora.yaml", "overwrite_output_dir"): (DROPPED, "--overwrite"),
    ("trl/sft/zephyr-7b-beta_config_qlora.yaml", "dataset_mixture"): (MAPPED, "data.eval_fraction: 1000"),
    ("trl/sft/smollm_config.yaml", "remove_unused_columns"): (DROPPED, "prepares the dataset itself"),
    ("trl/sft/smollm_config.yaml", "max_length"): (MAPPED, "data.max_length: 2048"),
    ("trl/sft/smollm_config.yaml", "dataset_num_proc"): (MAPPED, "data.num_proc: 24"),
    ("trl/dpo/gemma-7b_config_qlora.yaml", "max_prompt_length"): (MAPPED, "data.max_prompt_length: 512"),
    ("trl/dpo/gemma-7b_config_qlora.yaml", "dataset_splits"): (MAPPED, "split: test_prefs"),
    ("trl/dpo/gemma-7b_config_qlora.yaml", "evaluation_strategy"): (MAPPED, "training.eval_strategy: steps"),
    ("trl/orpo/llama3-8b_config_v1.0.yaml", "use_flash_attention_2"): (MAPPED, "flash_attention_2"),
    ("llama-factory/llama3_lora_sft.yaml", "lora_target"): (MAPPED, "peft.target_modules: all-linear"),
    ("llama-factory/llama3_lora_sft.yaml", "template"): (MAPPED, "model.chat_template: llama3"),
    ("llama-factory/llama3_lora_sft.yaml", "plot_loss"): (DROPPED, "posttrain report"),
    ("llama-factory/llama3_lora_sft.yaml", "dataset"): (MAPPED, "identity.json"),
    ("llama-factory/llama3_lora_sft.yaml", "max_samples"): (DROPPED, "slice"),
    ("llama-factory/llama3_lora_dpo.yaml", "pref_beta"): (MAPPED, "training.beta: 0.1"),
    ("llama-factory/llama3_lora_dpo.yaml", "pref_loss"): (MAPPED, "training.loss_type: sigmoid"),
    ("llama-factory/llama3_lora_dpo.yaml", "dataset"): (MAPPED, "{conversations: prompt}"),
    ("llama-factory/llama3_lora_reward.yaml", "stage"): (MAPPED, "stage: reward"),
    ("llama-factory/llama3_full_sft.yaml", "deepspeed"): (
        DROPPED, "accelerate launch --config_file recipes/accelerate/deepspeed_zero3.yaml -m posttrain train OUT"),
    ("llama-factory/llama3_full_sft.yaml", "finetuning_type"): (DROPPED, "without `peft:`"),
    ("llama-factory/llama3_lora_sft_otfq.yaml", "quantization_bit"): (MAPPED, "quantization.load_in_4bit: true"),
    ("llama-factory/llama3_lora_sft_otfq.yaml", "val_size"): (MAPPED, "data.eval_fraction: 0.1"),
    ("llama-factory/llama3_lora_kto.yaml", "dataset"): (MAPPED, "data.format: unpaired"),
    ("llama-factory/llama3_lora_kto.yaml", "per_device_train_batch_size"): (NOT, "at least 2"),
    ("axolotl/lora-1b.yml", "sample_packing"): (MAPPED, "training.packing: true"),
    ("axolotl/lora-1b.yml", "evals_per_epoch"): (MAPPED, "training.eval_steps: 0.25"),
    ("axolotl/lora-1b.yml", "micro_batch_size"): (MAPPED, "training.per_device_train_batch_size: 2"),
    ("axolotl/lora-1b.yml", "bf16"): (DROPPED, "bf16 where the GPU supports it"),
    ("axolotl/lora-1b.yml", "loss_watchdog_threshold"): (MAPPED, "watchdog.loss_above: 5.0"),
    ("axolotl/lora-1b.yml", "special_tokens.pad_token"): (MAPPED, "model.special_tokens.pad_token: <|end_of_text|>"),
    ("axolotl/lora-1b.yml", "wandb_project"): (DROPPED, "empty"),
    ("axolotl/qlora.yml", "adapter"): (DROPPED, "`quantization:` (4-bit)"),
    ("axolotl/qlora.yml", "lora_target_linear"): (MAPPED, "peft.target_modules: all-linear"),
    ("axolotl/qlora.yml", "evals_per_epoch"): (DROPPED, "no eval data"),
    ("axolotl/instruct-dpo-lora-8b.yml", "rl"): (MAPPED, "stage: dpo"),
    ("axolotl/instruct-dpo-lora-8b.yml", "datasets"): (MAPPED, "{conversation: prompt}"),
    ("axolotl/instruct-dpo-lora-8b.yml", "special_tokens.eos_token"): (MAPPED, "model.special_tokens.eos_token: "),
    ("axolotl/reward-model.yaml", "reward_model"): (MAPPED, "stage: reward"),
    ("axolotl/reward-model.yaml", "chat_template"): (MAPPED, "model.chat_template: gemma"),
    ("axolotl/reward-model.yaml", "datasets"): (NOT, "without field_messages"),
    ("torchtune/1B_lora_single_device.yaml", "model.lora_attn_modules"): (
        MAPPED, "[q_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]"),
    ("torchtune/1B_lora_single_device.yaml", "optimizer.lr"): (MAPPED, "training.learning_rate: 0.0003"),
    ("torchtune/1B_lora_single_device.yaml", "checkpointer.checkpoint_dir"): (MAPPED, "model.name_or_path"),
    ("torchtune/1B_full_single_device.yaml", "optimizer_in_bwd"): (NOT, "backward"),
    ("torchtune/1B_full_single_device.yaml", "optimizer._component_"): (MAPPED, "paged_adamw_8bit"),
    ("torchtune/7B_lora_dpo_single_device.yaml", "loss.beta"): (MAPPED, "training.beta: 0.1"),
    ("torchtune/7B_lora_dpo_single_device.yaml", "checkpointer._component_"): (NOT, "Hugging Face version"),
    ("torchtune/7B_lora_dpo_single_device.yaml", "max_steps_per_epoch"): (MAPPED, "training.max_steps: 1000"),
    ("torchtune/0.5B_full_single_device.yaml", "seed"): (DROPPED, "random seed"),
    ("torchtune/8B_qlora_single_device.yaml", "model._component_"): (DROPPED, "4-bit `quantization:`"),
    ("torchtune/2B_lora_single_device.yaml", "enable_activation_checkpointing"): (
        MAPPED, "training.gradient_checkpointing: true"),
    ("llama-factory/llama3_lora_pretrain.yaml", "stage"): (MAPPED, "raw text (data.format text)"),
    ("llama-factory/llama3_lora_pretrain.yaml", "dataset"): (MAPPED, "data.format: text"),
    ("llama-factory/qwen3_lora_sft.yaml", "template"): (MAPPED, "model.chat_template: qwen3_nothink"),
    ("llama-factory/qwen3_full_sft.yaml", "template"): (MAPPED, "model.chat_template: qwen2"),
    ("llama-factory/qwen3_lora_sft.yaml", "report_to"): (MAPPED, "training.report_to: none"),
    ("trl/sft/constitutional-ai_config_anthropic.yaml", "max_seq_length"): (MAPPED, "data.max_length: 2048"),
    ("trl/dpo/zephyr-7b-beta_config_full.yaml", "dataset_mixture"): (MAPPED, "data.eval_fraction: 2000"),
    ("trl/dpo/pref_align_scan_config_zephyr.yaml", "hub_model_revision"): (MAPPED, "training.hub_revision"),
    ("axolotl/mistral-qlora-orpo.yml", "orpo_alpha"): (MAPPED, "training.beta: 0.1"),
    ("axolotl/mistral-qlora-orpo.yml", "datasets"): (MAPPED, "data.format: preference"),
    ("axolotl/mistral-config.yml", "is_mistral_derived_model"): (DROPPED, "config.json"),
    ("axolotl/mistral-config.yml", "special_tokens.eos_token"): (MAPPED, "model.special_tokens.eos_token: </s>"),
    ("torchtune/3B_lora.yaml", "(recipe)"): (DROPPED, "recipes/accelerate/fsdp.yaml"),
    ("llama-factory/llama3_lora_ppo.yaml", "(reward_model_type)"): (NOT, "whole scoring model"),
    ("llama-factory/llama3_lora_ppo.yaml", "max_new_tokens"): (MAPPED, "training.response_length: 512"),
    ("llama-factory/llama3_lora_ppo.yaml", "dataset"): (NOT, "instruction followed by the input"),
    ("llama-factory/qwen3_full_sft.yaml", "attn"): (MAPPED, "model.attn_implementation: flash_attention_2"),
    ("llama-factory/qwen3_full_sft.yaml", "rope_scaling"): (NOT, "RoPE scaling"),
    ("llama-factory/qwen3_full_sft.yaml", "max_samples"): (DROPPED, "every row"),
    ("axolotl/mistral-dpo-qlora.yml", "lora_modules_to_save"): (MAPPED, "peft.modules_to_save: [embed_tokens, lm_head]"),
    ("axolotl/qwen2-dpo.yaml", "chat_template"): (MAPPED, "model.chat_template: qwen2"),
    ("trl/cli/example_config.yaml", "dataset_name"): (MAPPED, "data.train: stanfordnlp/imdb"),
    # OmegaConf's ${...} resolved as `tune run` does; validation off while run_val_every_n_steps is null
    ("torchtune/gemma_2B_full.yaml", "batch_size_val"): (MAPPED, "training.per_device_eval_batch_size: 2"),
    ("torchtune/gemma_2B_full.yaml", "checkpointer.output_dir"): (DROPPED, "the run directory"),
    ("torchtune/gemma_2B_full.yaml", "dataset_val._component_"): (DROPPED, "no validation"),
    ("torchtune/gemma_2B_full.yaml", "run_val_every_n_steps"): (DROPPED, "no validation"),
    # axolotl's newer names: attn_implementation, the Liger plugin and its switches, FSDP2
    ("axolotl/qwen2.5-72b-liger-fsdp2.yml", "attn_implementation"): (MAPPED, "model.attn_implementation: flash_attention_2"),
    ("axolotl/qwen2.5-72b-liger-fsdp2.yml", "plugins"): (MAPPED, "training.use_liger_kernel: true"),
    ("axolotl/qwen2.5-72b-liger-fsdp2.yml", "liger_fused_linear_cross_entropy"): (MAPPED, "use_liger_kernel: true"),
    ("axolotl/qwen2.5-72b-liger-fsdp2.yml", "fsdp_version"): (DROPPED, "recipes/accelerate/fsdp.yaml"),
    ("axolotl/qwen2.5-72b-liger-fsdp2.yml", "chat_template"): (DROPPED, "Alpaca prompt"),
    # torchtune's other models: the reference model of a DPO recipe, the teacher of a KD recipe (the gkd stage)
    ("torchtune/8B_full_dpo.yaml", "ref_checkpointer.checkpoint_dir"): (DROPPED, "frozen copy of the policy"),
    ("torchtune/8B_full_dpo.yaml", "ref_checkpointer.checkpoint_files"): (DROPPED, "every weight file in ref_model"),
    ("torchtune/qwen2_1.5_to_0.5B_KD_lora_single_device.yaml", "teacher_checkpointer.checkpoint_dir"): (
        MAPPED, "teacher_model: /tmp/Qwen2-1.5B-Instruct"),
    ("torchtune/qwen2_1.5_to_0.5B_KD_lora_single_device.yaml", "kd_loss._component_"): (MAPPED, "training.beta: 0.0"),
    ("torchtune/qwen2_1.5_to_0.5B_KD_lora_single_device.yaml", "kd_ratio"): (
        NOT, "adds 0.5 x the cross-entropy on the labels to 0.5 x the KD loss; GKD's loss is the divergence alone"),
    ("torchtune/qwen2_1.5_to_0.5B_KD_lora_single_device.yaml", "(train_on_input)"): (NOT, "distils the prompt tokens"),
    ("torchtune/qwen2_1.5_to_0.5B_KD_lora_single_device.yaml", "teacher_model._component_"): (DROPPED, "config.json"),
    ("torchtune/qwen2_1.5_to_0.5B_KD_lora_single_device.yaml", "loss._component_"): (DROPPED, "see kd_ratio"),
}


@pytest.mark.parametrize("file, key", list(PINNED), ids=[f"{f}:{k}" for f, k in PINNED])
def test_pinned_fates(file, key):
    kind, words = PINNED[(file, key)]
    fate = _fates(convert(DATA / file))[key]
    assert fate.kind == kind and words in fate.text, fate


# each tool's implicit defaults, written out
DEFAULTS = {
    "trl/sft/smollm_config.yaml": {"data.train_on": "all", "data.format": "messages"},
    "trl/dpo/gemma-7b_config_qlora.yaml": {"quantization.bnb_4bit_use_double_quant": False,
                                            "quantization.bnb_4bit_compute_dtype": "bfloat16"},
    "llama-factory/llama3_lora_sft.yaml": {"peft.lora_alpha": 16, "peft.lora_dropout": 0.0, "data.template": "chat"},
    "llama-factory/llama3_lora_kto.yaml": {"peft.r": 8, "peft.lora_alpha": 16},
    "llama-factory/llama3_lora_sft_otfq.yaml": {"quantization.bnb_4bit_use_double_quant": True,
                                                 "quantization.bnb_4bit_compute_dtype": "bfloat16"},
    "axolotl/qlora.yml": {"quantization.bnb_4bit_use_double_quant": True, "peft.lora_dropout": 0.05},
    "torchtune/1B_full_single_device.yaml": {"data.train_on": "all", "training.max_grad_norm": 0.0,
                                             "training.lr_scheduler_type": "constant"},
    "torchtune/0.5B_full_single_device.yaml": {"training.weight_decay": 0.01},
    "torchtune/8B_qlora_single_device.yaml": {"quantization.bnb_4bit_compute_dtype": "bfloat16",
                                             "peft.lora_dropout": 0.0},
    "torchtune/1B_lora_single_device.yaml": {"data.train_on": "all", "training.lr_scheduler_type": "cosine"},
}


@pytest.mark.parametrize("file", list(DEFAULTS))
def test_implicit_defaults_are_explicit(file):
    conv = convert(DATA / file)
    for dotted, value in DEFAULTS[file].items():
        got = conv.get(dotted)
        assert got == value and type(got) is type(value), (dotted, got)


def test_trl_qlora_compute_dtype_follows_the_model_dtype(tmp_path):
    p = tmp_path / "sft" / "c.yaml"
    p.parent.mkdir()
    p.write_text("model_name_or_path: m\nuse_peft: true\nload_in_4bit: true\ndataset_name: d\n")
    conv = convert(p)
    assert conv.get("model.dtype") == "fp32" and conv.get("quantization.bnb_4bit_compute_dtype") == "float32"
    assert conv.get("peft.lora_dropout") == 0.05 and conv.get("peft.r") == 16 and conv.get("peft.lora_alpha") == 32


def test_trl_script_evaluates_on_the_test_split_of_the_same_config(tmp_path):
    p = tmp_path / "sft" / "c.yaml"
    p.parent.mkdir()
    p.write_text("model_name_or_path: m\ndataset_name: org/set\ndataset_config: en\neval_strategy: steps\n"
                 "assistant_only_loss: true\n")
    conv = convert(p)
    assert conv.get("data.name") == "en" and conv.get("data.eval") == [{"source": "org/set", "name": "en", "split": "test"}]
    assert conv.get("data.train_on") is None and _fates(conv)["assistant_only_loss"].kind == DROPPED


def test_trl_grpo_reward_model_becomes_a_rewards_item_and_functions_are_said(tmp_path):
    p = tmp_path / "grpo" / "c.yaml"
    p.parent.mkdir()
    p.write_text("model_name_or_path: m\ndataset_name: org/prompts\nreward_model_name_or_path: org/rm\n"
                 "reward_funcs: [think_format_reward]\nnum_generations: 4\n")
    conv = convert(p)
    assert conv.stage == "grpo" and conv.get("rewards") == [{"model": "org/rm"}]
    assert conv.get("training.num_generations") == 4 and conv.get("data.format") == "prompt"
    assert _fates(conv)["reward_funcs"].kind == NOT


def test_axolotl_grpo_trl_block(tmp_path):
    p = tmp_path / "c.yml"
    p.write_text("base_model: m\nrl: grpo\ntrl:\n  beta: 0.04\n  num_generations: 8\n  reward_funcs: [r.acc]\n"
                 "  use_vllm:\ndatasets: [{path: org/p, type: r.transform}]\n")
    conv = convert(p)
    f = _fates(conv)
    assert conv.stage == "grpo" and conv.get("training.beta") == 0.04 and conv.get("training.num_generations") == 8
    assert f["trl.reward_funcs"].kind == NOT and f["trl.use_vllm"].kind == DROPPED and f["datasets"].kind == NOT


# (tool, template name) -> posttrain's template, or (fate kind, words): the names people use in their configs
TEMPLATE_NAMES = {
    ("llama-factory", "qwen"): "qwen2", ("llama-factory", "qwen25"): "qwen2", ("llama-factory", "qwen3"): "qwen3",
    ("llama-factory", "qwen3_nothink"): "qwen3_nothink", ("llama-factory", "mistral"): "mistral",
    ("llama-factory", "phi"): "phi3", ("llama-factory", "phi4_mini"): "phi4", ("llama-factory", "llama2"): "llama2",
    ("llama-factory", "llama3"): "llama3", ("llama-factory", "vicuna"): "vicuna", ("llama-factory", "deepseek3"): "deepseek",
    ("llama-factory", "deepseekr1"): "deepseek_r1", ("llama-factory", "gemma"): "gemma", ("llama-factory", "gemma3"): "gemma",
    ("llama-factory", "chatml"): "chatml", ("llama-factory", "zephyr"): "zephyr",
    ("llama-factory", "phi4"): (DROPPED, "means the base model's own format (Phi-4 (14B)'s <|im_start|>{role}<|im_sep|> "
                                         "turns), which its tokenizer carries: posttrain uses the tokenizer's own"),
    ("llama-factory", "deepseek"): (DROPPED, "DeepSeek LLM / V2 chat's"), ("llama-factory", "cpm3"): (DROPPED, "MiniCPM3"),
    ("llama-factory", "default"): (NOT, "no template named 'default' ships with posttrain"),
    ("axolotl", "qwen_25"): "qwen2", ("axolotl", "qwen3"): "qwen3", ("axolotl", "gemma3"): "gemma", ("axolotl", "phi_3"): "phi3",
    ("axolotl", "phi_35"): "phi3", ("axolotl", "llama3"): "llama3", ("axolotl", "mistral_v2v3"): "mistral",
    ("axolotl", "chatml"): "chatml", ("axolotl", "deepseek_v3"): "deepseek",
    ("axolotl", "phi_4"): (DROPPED, "Phi-4-reasoning"), ("axolotl", "mistral_v3_tekken"): (DROPPED, "Mistral NeMo"),
    ("axolotl", "mistral_v1"): (DROPPED, "Mixtral-8x7B"), ("axolotl", "llama3_2_vision"): (DROPPED, "Llama 3.2 Vision"),
    ("axolotl", "tokenizer_default"): (DROPPED, "means the base model's own format, which its tokenizer carries"),
    ("axolotl", "cohere"): (NOT, "no template named 'cohere'"),
    ("trl", "gemma3"): "gemma",
}


@pytest.mark.parametrize("tool,name", sorted(TEMPLATE_NAMES))
def test_other_tools_template_names(tool, name):
    from posttrain import chat_templates
    from posttrain.convert.core import Conversion, chat_template

    conv = Conversion(tool, Path("config.yaml"), {})
    chat_template(conv, "template", name)
    fate, expected = conv.fates[-1], TEMPLATE_NAMES[(tool, name)]
    if isinstance(expected, str):
        assert fate.kind == MAPPED and fate.new == {"model.chat_template": expected}, fate
        assert chat_templates.text(expected) is not None
    else:
        assert (fate.kind, expected[1] in fate.text) == (expected[0], True), fate
    if (tool, name) == ("llama-factory", "zephyr"):
        assert "You are Zephyr" in fate.text  # LLaMA-Factory's default system turn, which posttrain's does not write


def test_llama_factory_freeze_is_said_plainly_and_its_lora_keys_dropped(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("stage: sft\nmodel_name_or_path: m\nfinetuning_type: freeze\nlora_rank: 4\nquantization_bit: 4\n"
                 "dataset: org/set\ntemplate: llama3\n")
    conv = convert(p)
    f = _fates(conv)
    assert f["finetuning_type"].kind == NOT and "trains only some layers" in f["finetuning_type"].text
    assert f["lora_rank"].kind == DROPPED and f["quantization_bit"].kind == DROPPED
    assert "peft" not in conv.recipe and "quantization" not in conv.recipe


# --- the command ------------------------------------------------------------------------------------


def test_exit_codes_recipe_comments_and_no_overwrite(tmp_path, cli):
    out = tmp_path / "r.yaml"
    code, stdout, err = cli("convert", DATA / "trl/sft/smollm_config.yaml", "-o", out)
    assert code == 0, err
    text = out.read_text()
    assert text.startswith("# Converted by `posttrain convert` from ") and "smollm_config.yaml (trl config)" in text
    assert "NOT TRANSLATED" not in text
    raw = read(DATA / "trl/sft/smollm_config.yaml")[0]
    for key in raw:  # every key is in the printed table
        assert f"\n  {key}: " in stdout, key
    code, _, err = cli("convert", DATA / "trl/sft/smollm_config.yaml", "-o", out)
    assert code == 2 and "exists; pass --overwrite" in err
    watched = tmp_path / "lora-1b.yml"
    watched.write_text((DATA / "axolotl/lora-1b.yml").read_text().replace("\nwandb_watch:\n", "\nwandb_watch: all\n"))
    code, stdout, _ = cli("convert", watched, "-o", out, "--overwrite")
    assert code == 3 and "NOT TRANSLATED: set WANDB_WATCH in the environment" in stdout
    head = out.read_text().split("\nstage:")[0]
    assert "# NOT TRANSLATED: wandb_watch: all -- set WANDB_WATCH in the environment" in head
    assert yaml.safe_load(out.read_text())["stage"] == "sft"


def test_stage_of_a_trl_config_from_its_path_or_stage_flag(tmp_path, cli):
    p = tmp_path / "config.yaml"
    p.write_text("model_name_or_path: m\ndataset_name: org/pairs\nbeta: 0.1\nlearning_rate: 1.0e-6\n")
    code, out, _ = cli("convert", p, "-o", tmp_path / "a.yaml")
    assert code == 0 and "(stage: dpo)" in out  # from its keys: beta
    code, out, _ = cli("convert", p, "-o", tmp_path / "b.yaml", "--stage", "orpo")
    assert code == 0 and yaml.safe_load((tmp_path / "b.yaml").read_text())["stage"] == "orpo"
    code, _, err = cli("convert", DATA / "axolotl/qlora.yml", "-o", tmp_path / "c.yaml", "--stage", "dpo")
    assert code == 2 and "--stage is for TRL-script configs" in err


def test_from_overrides_detection_and_bad_input_is_one_line(tmp_path, cli):
    p = tmp_path / "x.yaml"
    p.write_text("base_model: m\ndatasets: [{path: a.jsonl, type: alpaca}]\n")
    code, out, _ = cli("convert", p, "-o", tmp_path / "a.yaml")
    assert code == 0 and "(axolotl config)" in out
    p.write_text("stage: sft\nmodel: {name_or_path: gpt2}\ndata: {train: d.jsonl}\n")
    code, _, err = cli("convert", p, "-o", tmp_path / "b.yaml")
    assert code == 2 and "already a posttrain recipe" in err and len(err.strip().splitlines()) == 1
    code, _, err = cli("convert", tmp_path / "missing.yaml")
    assert code == 2 and "not found" in err


# --- the result validates (and trains) with the tiny model swapped in ------------------------------------

FIXTURE_DATA = {"alpaca": "alpaca", "messages": "messages", "preference": "preference", "prompt": "prompts",
                "unpaired": "preference", "text": "text"}


def swap_in(recipe: dict, fx) -> list[str]:
    """Overrides that put the tiny local model and data in place of the hub ones, and switch off what this
    offline CPU machine lacks (flash-attn, liger, the hub, tensorboard/wandb, tf32) and what the tiny tokenizer lacks
    (another model's EOS token)."""
    fmt = recipe["data"].get("format", "alpaca")
    over = [f"model.name_or_path={fx['model']}", f"data.train={fx[FIXTURE_DATA[fmt]]}", "data.split=train",
            "data.column_map=null", "data.name=null", "data.eval=null", "model.revision=null",
            "model.attn_implementation=null", "training.report_to=none", "training.push_to_hub=false",
            "training.tf32=null"]
    if fmt == "unpaired":
        over.append("data.format=preference")
    if recipe["stage"] == "kto" and recipe["training"].get("per_device_train_batch_size", 2) < 2:
        over.append("training.per_device_train_batch_size=2")  # said NOT TRANSLATED by convert (pinned above)
    if "eos_token" in recipe.get("training", {}):
        over.append("training.eos_token=null")
    if recipe.get("training", {}).get("use_liger_kernel"):
        over.append("training.use_liger_kernel=false")  # liger-kernel is not installed here (a GPU package)
    if recipe.get("peft"):
        over.append("peft.target_modules=all-linear")  # the tiny GPT-2's module names
    for other in ("reward_model", "ref_model", "teacher_model"):  # a run dir of the other tool, not on this machine
        if other in recipe:
            over.append(f"{other}={fx['model']}")
    if recipe["data"].get("eval") and not recipe["data"].get("eval_fraction") or \
            isinstance(recipe["data"].get("eval_fraction"), int):
        over.append("data.eval_fraction=0.2")  # the hub test split or a row count, as a part of the tiny data
    if (recipe["data"].get("max_length") or 0) > 512:
        over.append("data.max_length=512")  # the tiny GPT-2 has 1280 learned positions (validate refuses more)
        if (recipe["data"].get("max_prompt_length") or 0) >= 512:
            over.append("data.max_prompt_length=256")  # its answers keep room in that
    return over


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(DATA)))
def test_converted_recipe_validates_with_the_tiny_model(path, tmp_path, fx, cli):
    out = tmp_path / "recipe.yaml"
    code, stdout, err = cli("convert", path, "-o", out)
    assert code in (0, 3), err
    recipe = yaml.safe_load(out.read_text())
    skip_where_refused(str(out))
    code, stdout, err = cli("validate", out, *swap_in(recipe, fx), "--no-data")
    assert code == 0, err
    assert "ok: recipe checked" in stdout


def one_short_step(recipe: dict) -> list[str]:
    """Overrides that keep a one-step training of the tiny model short, on top of swap_in: what they lower is sized
    for a GPU node and pinned above (PINNED), and a step needs no more of it. PPO generates at most 16 tokens
    instead of 512 per rollout (512 took over a minute of the suite on 2 cores); the tokenizing workers are at most
    2 (more than this 2-core machine has only add process starts: 64 workers for one config), so the multi-worker
    path still runs."""
    over = []
    if (recipe.get("training", {}).get("response_length") or 0) > 16:
        over.append("training.response_length=16")
    if (recipe["data"].get("num_proc") or 0) > 2:
        over.append("data.num_proc=2")
    return over


@pytest.mark.slow
@pytest.mark.parametrize("file", [str(p.relative_to(DATA)) for p in CONFIGS])
def test_every_converted_recipe_trains_a_step(file, tmp_path, fx, cli):
    out = tmp_path / "recipe.yaml"
    cli("convert", DATA / file, "-o", out)
    recipe = yaml.safe_load(out.read_text())
    # bitsandbytes' 4-bit eval cannot run on the tiny model's 32-wide layers (FACTS.md): QLoRA trains without eval
    no_eval = ["data.eval_fraction=null", "training.eval_strategy=no"] if recipe.get("quantization") else []
    code, stdout, err = cli("train", out, *swap_in(recipe, fx), *no_eval, *one_short_step(recipe), "training.max_steps=1",
                            "training.save_strategy=no", f"output_dir={tmp_path / 'run'}")
    if code == 2 and "trl<1.13" in err and "Traceback" not in err:  # what a newer TRL cannot run, said in one line
        pytest.skip(err.strip().splitlines()[-1])
    assert code == 0, err
    assert "finished" in stdout and (tmp_path / "run" / "manifest.json").is_file()


def test_stage_of_a_trl_script_config_may_be_any_posttrain_stage(tmp_path, fx, cli):
    """--stage takes every stage of the registry, and the data format follows the stage's own default."""
    from posttrain import stages

    for name in stages.names():
        out = tmp_path / f"{name}.yaml"
        code, _, err = cli("convert", DATA / "trl/orpo/llama3-8b_config_v1.0.yaml", "-o", out, "--stage", name)
        assert code in (0, 3) and "Traceback" not in err, (name, err)
        recipe = yaml.safe_load(out.read_text())
        assert recipe["stage"] == name and recipe["data"]["format"] in stages.get(name).formats, name


def test_torchtune_validation_every_n_steps_becomes_eval_data(tmp_path):
    src = (DATA / "torchtune" / "gemma_2B_full.yaml").read_text().replace("run_val_every_n_steps: null",
                                                                          "run_val_every_n_steps: 50")
    p = tmp_path / "c.yaml"
    p.write_text(src)
    conv = convert(p)
    assert conv.recipe["data"]["eval"] == "yahma/alpaca-cleaned" and conv.recipe["data"]["eval_split"] == "train[95%:]"
    assert conv.recipe["training"]["eval_strategy"] == "steps" and conv.recipe["training"]["eval_steps"] == 50
    assert conv.recipe["data"]["split"] == "train[:95%]" and not conv.untranslated


def test_axolotl_unfrozen_parameters_become_model_trainable(tmp_path):
    import re

    p = tmp_path / "c.yml"
    p.write_text("base_model: m\ndatasets: [{path: d.jsonl, type: alpaca}]\nunfrozen_parameters:\n"
                 "  - ^lm_head.weight$\n  - model.layers.2[0-9]+.mlp.*\n")
    patterns = convert(p).recipe["model"]["trainable"]
    names = ["lm_head.weight", "model.layers.23.mlp.up_proj.weight", "model.layers.3.mlp.up_proj.weight",
             "model.layers.23.self_attn.q_proj.weight", "xlm_head.weight"]
    assert [n for n in names if any(re.fullmatch(q, n) for q in patterns)] == names[:2]
    p.write_text("base_model: m\ndatasets: [{path: d.jsonl, type: alpaca}]\nunfrozen_parameters: ['embed_tokens[:32000]']\n")
    assert _fates(convert(p))["unfrozen_parameters"].kind == NOT


def test_launch_configs_and_multiline_values_are_said_plainly(tmp_path, cli):
    acc = tmp_path / "fsdp.yaml"
    acc.write_text("compute_environment: LOCAL_MACHINE\ndistributed_type: FSDP\nnum_processes: 8\n")
    code, _, err = cli("convert", str(acc), "-o", str(tmp_path / "o.yaml"))
    assert code == 2 and "an Accelerate launch config" in err and "--accelerate-config" in err
    src = tmp_path / "prm.yaml"  # a NOT TRANSLATED value holding a line break stays on its comment line
    src.write_text("base_model: m\ndatasets: [{path: d.jsonl, type: alpaca}]\nmystery: [{sep: \"\\n\\n\"}]\n")
    code, _, _ = cli("convert", str(src), "-o", str(tmp_path / "r.yaml"))
    assert code == 3 and yaml.safe_load((tmp_path / "r.yaml").read_text())["model"]["name_or_path"] == "m"
    assert '# NOT TRANSLATED: mystery: [{"sep": "\\n\\n"}]' in (tmp_path / "r.yaml").read_text()


def test_raw_text_datasets_become_text_rows(tmp_path):
    """axolotl's completion type, LLaMA-Factory's pt stage and torchtune's text_completion_dataset: data.format text."""
    ax = tmp_path / "ax.yml"
    ax.write_text("base_model: m\ndatasets: [{path: d.jsonl, type: completion, field: content}]\n")
    conv = convert(ax)
    assert conv.recipe["data"]["format"] == "text" and conv.recipe["data"]["column_map"] == {"content": "text"}
    assert not conv.untranslated and conv.recipe["stage"] == "sft"
    tt = tmp_path / "tt.yaml"
    tt.write_text("dataset:\n  _component_: torchtune.datasets.text_completion_dataset\n  source: d.jsonl\n"
                  "  column: body\nmodel: {_component_: torchtune.models.llama3_2.llama3_2_1b}\n"
                  "checkpointer: {_component_: torchtune.training.FullModelHFCheckpointer, checkpoint_dir: m}\n")
    conv = convert(tt)
    assert conv.recipe["data"] == {"train": "d.jsonl", "format": "text", "column_map": {"body": "text"}}
    assert not conv.untranslated
    assert convert(DATA / "llama-factory" / "llama3_lora_pretrain.yaml").recipe["data"]["format"] == "text"


def test_torchtune_reference_cycles_and_validation_lists_are_said(tmp_path, cli):
    cyc = tmp_path / "cyc.yaml"
    cyc.write_text("a: ${b}\nb: ${a}\nmodel: {_component_: torchtune.models.llama3_2.llama3_2_1b}\n")
    code, _, err = cli("convert", cyc, "-o", tmp_path / "o.yaml")
    assert code == 2 and "${b} refers to itself (b -> a -> b)" in err and "Traceback" not in err
    val = tmp_path / "val.yaml"  # validation asked for with a list of builders: said, not dropped
    val.write_text("run_val_every_n_steps: 5\ndataset_val: [{_component_: torchtune.datasets.alpaca_dataset}]\n"
                   "model: {_component_: torchtune.models.llama3_2.llama3_2_1b}\n")
    f = _fates(convert(val))
    assert f["run_val_every_n_steps"].kind == NOT and f["dataset_val"].kind == NOT


# --- the stage: from keys only one stage's TRL config has, else the file or folder name, else a guess said as one ---


def test_trl_config_with_kto_only_keys_converts_to_kto(tmp_path, cli):
    conv = convert(DATA / "trl/cli/qwen1.5-1.8b-aligned.yaml")  # no stage in its name: its keys say kto
    assert conv.stage == "kto" and not conv.stage_guessed, conv.stage_why
    assert conv.stage_why.startswith("loss_type, beta, desirable_weight, undesirable_weight: only stage kto (TRL's "
                                     "KTOConfig) reads them all")
    assert conv.get("training.desirable_weight") == 1.0 and conv.get("training.undesirable_weight") == 1.33
    assert conv.get("data.format") == "unpaired" and not conv.untranslated
    d = tmp_path / "dpo"  # a folder named dpo/: DPOConfig has no desirable_weight, so the keys decide
    d.mkdir()
    (d / "config.yaml").write_text((DATA / "trl/cli/qwen1.5-1.8b-aligned.yaml").read_text())
    conv = convert(d / "config.yaml")
    assert conv.stage == "kto" and "(the folder name dpo/ says dpo)" in conv.stage_why


@pytest.mark.parametrize("keys, stage, guessed, words", [
    ("simpo_gamma: 0.5\ncpo_alpha: 0.0\nbeta: 2.0\n", "cpo", False, "only stage cpo (TRL's CPOConfig)"),
    ("lmbda: 0.5\nseq_kd: false\n", "gkd", False, "only stage gkd (TRL's GKDConfig)"),
    ("num_generations: 8\nmax_completion_length: 256\n", "grpo", True, "fit TRL's GRPOConfig, RLOOConfig; grpo is"),
    ("beta: 0.1\n", "dpo", True, "beta fit TRL's DPOConfig, KTOConfig"),
    ("packing: true\n", "sft", False, "packing: only stage sft (TRL's SFTConfig) reads it"),  # gkd refuses it
    ("", "sft", True, "no stage in the file or folder name"),
])
def test_trl_stage_from_keys_or_a_guess_said_as_one(keys, stage, guessed, words, tmp_path):
    p = tmp_path / "runs" / "config.yaml"
    p.parent.mkdir()
    p.write_text("model_name_or_path: m\ndataset_name: org/set\nlearning_rate: 1.0e-6\n" + keys)
    conv = convert(p)
    assert (conv.stage, conv.stage_guessed) == (stage, guessed) and words in conv.stage_why, conv.stage_why


def test_the_stage_and_why_are_printed_on_their_own_line(tmp_path, cli):
    p = tmp_path / "runs" / "config.yaml"
    p.parent.mkdir()
    p.write_text("model_name_or_path: m\ndataset_name: org/set\nnum_generations: 8\n")
    code, out, _ = cli("convert", p, "-o", tmp_path / "r.yaml")
    line = "stage grpo GUESSED: num_generations fit TRL's GRPOConfig, RLOOConfig; grpo is the first of them; pass " \
           "--stage NAME to change it"
    assert code == 0 and f"\n  {line}\n" in out and f"# {line}\n" in (tmp_path / "r.yaml").read_text()
    code, out, _ = cli("convert", DATA / "axolotl/qlora.yml", "-o", tmp_path / "s.yaml")
    assert "\n  stage sft: no rl: (and no reward_model:): axolotl's supervised fine-tuning\n" in out


def test_trl_stage_fields_are_the_installed_classes():
    """The fields the stage is read from are the installed TRL configs' (less those posttrain handles for every
    stage, and those the stage refuses), so a TRL upgrade that adds a stage's field changes what convert infers
    without a hand list."""
    from posttrain import options, stages
    from posttrain.convert.trl import stage_fields

    common = set(options.MANAGED_TRAINING) | set(options.REFUSED_TRAINING)
    for name, spec in stages.available().items():  # (the snapshot keeps the others' fields: TRL 1.16 has no PPO)
        installed = set(options.installed_fields(spec.trl_config)) - common - set(spec.refused)
        assert stage_fields()[name] - common == installed, name


# --- stale and missing mappings -----------------------------------------------------------------------------


def test_simpo_config_becomes_cpo_with_its_margin_and_no_sft_term():
    """princeton-nlp/SimPO's configs: TRL's CPO with loss_type simpo; simpo_gamma = gamma_beta_ratio x beta."""
    conv = convert(DATA / "trl/simpo/mistral-7b-base-simpo.yaml")
    assert conv.stage == "cpo" and not conv.stage_guessed and "gamma_beta_ratio" in conv.stage_why
    t = conv.recipe["training"]
    assert (t["loss_type"], t["simpo_gamma"], t["beta"], t["cpo_alpha"]) == ("simpo", 1.6, 2.0, 0.0)
    assert not conv.untranslated


@pytest.mark.parametrize("extra, fates", [
    ("sft_weight: 0.2\nloss_type: sigmoid\n", {"sft_weight": (MAPPED, "training.cpo_alpha: 0.2"),
                                               "loss_type": (DROPPED, "loss_type simpo")}),
    ("gamma_beta_ratio: 0.25\nloss_type: hinge\n", {"loss_type": (NOT, "sigmoid only")}),
])
def test_simpo_defaults_and_loss_types(extra, fates, tmp_path):
    p = tmp_path / "cfg" / "c.yaml"
    p.parent.mkdir()
    p.write_text("model_name_or_path: m\ndataset_name: d\n" + extra)
    conv = convert(p)
    f = _fates(conv)
    assert conv.stage == "cpo" and conv.get("training.beta") == 2.0 and conv.get("training.simpo_gamma") == 0.5
    for key, (kind, words) in fates.items():
        assert f[key].kind == kind and words in f[key].text, f[key]


@pytest.mark.parametrize("config, fate, recipe", [
    ("stage: dpo\npref_loss: sigmoid\npref_ftx: 0.5\n", MAPPED,
     {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, 0.5]}),
    ("stage: dpo\npref_loss: simpo\nkto_ftx: 0.1\n", MAPPED, {"loss_type": "simpo", "cpo_alpha": 0.1}),
    ("stage: kto\nkto_ftx: 0.1\n", NOT, {}),
    ("stage: kto\nkto_ftx: 0\n", DROPPED, {}),
    ("stage: dpo\npref_loss: orpo\npref_ftx: 0.1\n", NOT, {}),  # ORPO's own SFT term is weighted 1
    ("stage: sft\npref_ftx: 0.1\n", DROPPED, {}),  # read for preference training only
])
def test_llama_factory_sft_term_pref_ftx_and_its_older_name_kto_ftx(config, fate, recipe, tmp_path, fx, cli):
    p = tmp_path / "c.yaml"
    p.write_text("model_name_or_path: m\nfinetuning_type: full\ndataset: org/pairs\ntemplate: llama3\n"
                 "per_device_train_batch_size: 2\n" + config)
    conv = convert(p)
    key = "pref_ftx" if "pref_ftx" in config else "kto_ftx"
    assert _fates(conv)[key].kind == fate
    for k, v in recipe.items():
        assert conv.get(f"training.{k}") == v, k
    if recipe.get("loss_weights"):  # TRL's DPOConfig takes the loss list and its weights
        out = tmp_path / "r.yaml"
        cli("convert", p, "-o", out)
        code, _, err = cli("validate", out, *swap_in(yaml.safe_load(out.read_text()), fx), "--no-data")
        assert code == 0, err


def test_axolotl_model_config_optim_args_safetensors_and_auth_token(tmp_path):
    p = tmp_path / "c.yml"
    p.write_text("base_model: m\ndatasets: [{path: d.jsonl, type: alpaca}]\nmodel_config:\n  output_router_logits: true\n"
                 "optim_args: {amsgrad: true, betas: 0.9}\nsave_safetensors: true\nhf_use_auth_token: true\n")
    conv = convert(p)
    f = _fates(conv)
    assert f["model_config"].kind == NOT and "cannot override its fields (output_router_logits)" in f["model_config"].text
    assert conv.get("training.optim_args") == "amsgrad=True,betas=0.9"
    p.write_text("base_model: m\ndatasets: [{path: d.jsonl, type: alpaca}]\noptim_args: {betas: [0.9, 0.95]}\n")
    assert _fates(convert(p))["optim_args"].kind == NOT
    assert f["save_safetensors"].kind == DROPPED and f["hf_use_auth_token"].kind == DROPPED
    p.write_text("base_model: m\ndatasets: [{path: d.jsonl, type: alpaca}]\nhf_use_auth_token: hf_abc\n")
    conv = convert(p)
    assert _fates(conv)["hf_use_auth_token"].kind == NOT and "hf_abc" not in str(conv.fates)


@pytest.mark.parametrize("keys, data", [
    ("train_split: train_sft\neval_split: test_sft\neval_strategy: steps\n",
     {"split": "train_sft", "eval": "org/set", "eval_split": "test_sft"}),
    ("dataset_train_split: train_sft\ntest_size: 0.05\neval_strategy: steps\ndataset_test_split: test\n",
     {"split": "train_sft", "eval_fraction": 0.05}),
])
def test_trl_script_split_arguments_in_a_config(keys, data, tmp_path):
    p = tmp_path / "sft" / "c.yaml"
    p.parent.mkdir()
    p.write_text("model_name_or_path: m\ndataset_name: org/set\n" + keys)
    conv = convert(p)
    assert {k: v for k, v in conv.recipe["data"].items() if k in data} == data and not conv.untranslated


def test_tracking_settings_of_llama_factory_and_torchtune(tmp_path, fx, cli, monkeypatch):
    from posttrain import needs

    monkeypatch.setattr(needs, "installed", lambda module: True)  # the trackers are not installed here
    lf = tmp_path / "lf.yaml"
    lf.write_text("stage: sft\nmodel_name_or_path: m\nfinetuning_type: full\ndataset: org/set\ntemplate: llama3\n"
                  "report_to: none\nrun_name: qwen-sft\nuse_swanlab: true\nswanlab_project: llamafactory\n"
                  "swanlab_api_key: sk-123\n")
    conv = convert(lf)
    assert conv.get("training.report_to") == "swanlab" and conv.get("tracking.project") == "llamafactory"
    assert conv.get("training.run_name") == "qwen-sft" and "sk-123" not in str(conv.fates) + str(conv.recipe)
    tt = tmp_path / "tt.yaml"
    tt.write_text((DATA / "torchtune/1B_lora_single_device.yaml").read_text().split("\nmetric_logger:")[0] +
                  "\nmetric_logger:\n  _component_: torchtune.training.metric_logging.WandBLogger\n  entity: my-team\n"
                  "  group: sweep\n  tags: [lora, 1b]\n  name: run-1\n  log_dir: ${output_dir}/logs\n")
    conv = convert(tt)
    assert conv.recipe["tracking"] == {"entity": "my-team", "group": "sweep", "tags": ["lora", "1b"],
                                       "project": "torchtune"}  # WandBLogger's default project, made explicit
    assert conv.get("training.report_to") == "wandb" and conv.get("training.run_name") == "run-1"
    ml = tmp_path / "ml.yaml"
    ml.write_text(tt.read_text().split("\nmetric_logger:")[0] + "\nmetric_logger:\n  _component_: "
                  "torchtune.training.metric_logging.MLFlowLogger\n  experiment_name: kd\n  tracking_uri: http://mlflow\n")
    conv = convert(ml)
    assert conv.get("training.report_to") == "mlflow" and conv.recipe["tracking"] == {"project": "kd"}
    assert _fates(conv)["metric_logger.tracking_uri"].kind == NOT
    out = tmp_path / "r.yaml"
    cli("convert", tt, "-o", out)
    over = [o for o in swap_in(yaml.safe_load(out.read_text()), fx) if o != "training.report_to=none"]
    code, _, err = cli("validate", out, *over, "--no-data")
    assert code == 0, err


def test_llama_factory_dataset_info_is_read_where_llamafactory_cli_reads_it(tmp_path, monkeypatch):
    """dataset_dir (default data/) relative to where llamafactory-cli runs: the current directory, else the
    repository root above the config (`llamafactory-cli train examples/train_lora/x.yaml` runs from there)."""
    repo = tmp_path / "LLaMA-Factory"
    (repo / ".git").mkdir(parents=True)
    (repo / "examples" / "train_lora").mkdir(parents=True)
    cfg = repo / "examples" / "train_lora" / "sft.yaml"
    cfg.write_text("stage: sft\nmodel_name_or_path: m\nfinetuning_type: full\ndataset: mine\ntemplate: llama3\n")
    info = '{"mine": {"file_name": "mine.json", "columns": {"prompt": "q", "response": "a"}}}'
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    f = _fates(convert(cfg))  # no dataset_info.json anywhere: said, with where it was looked for
    assert f["dataset"].kind == NOT and "repository root above it" in f["dataset"].text
    (repo / "data").mkdir()
    (repo / "data" / "dataset_info.json").write_text(info)
    conv = convert(cfg)  # the repository root above the config
    assert conv.recipe["data"]["train"] == str(repo / "data" / "mine.json") and not conv.untranslated
    assert conv.recipe["data"]["column_map"] == {"q": "instruction", "a": "output"}
    (elsewhere / "custom").mkdir()  # dataset_dir relative to the current directory comes first
    (elsewhere / "custom" / "dataset_info.json").write_text(info.replace("mine.json", "here.json"))
    cfg.write_text(cfg.read_text() + "dataset_dir: custom\n")
    assert convert(cfg).recipe["data"]["train"] == str(Path("custom") / "here.json")
    cfg.write_text(cfg.read_text().replace("dataset_dir: custom", "dataset_dir: ONLINE").replace("mine", "org/set"))
    conv = convert(cfg)  # ONLINE: the names are hub ids
    assert conv.recipe["data"]["train"] == "org/set" and not conv.untranslated


def test_torchtune_kd_recipe_is_gkd_and_a_dpo_reference_model_is_ref_model(tmp_path):
    conv = convert(DATA / "torchtune/qwen2_1.5_to_0.5B_KD_lora_single_device.yaml")
    assert conv.stage == "gkd" and conv.recipe["teacher_model"] == "/tmp/Qwen2-1.5B-Instruct"
    assert conv.get("training.lmbda") == 0.0 and conv.get("training.beta") == 0.0  # off-policy, forward KL
    src = (DATA / "torchtune/qwen2_1.5_to_0.5B_KD_lora_single_device.yaml").read_text()
    p = tmp_path / "kd.yaml"
    p.write_text(src.replace("ForwardKLWithChunkedOutputLoss\nkd_ratio: 0.5", "ReverseKLWithChunkedOutputLoss\n"
                                                                             "kd_ratio: 1.0"))
    conv = convert(p)
    assert conv.get("training.beta") == 1.0 and _fates(conv)["kd_ratio"].kind == DROPPED
    p.write_text(src.replace("ForwardKLWithChunkedOutputLoss", "SymmetricKLWithChunkedOutputLoss"))
    assert _fates(convert(p))["kd_loss._component_"].kind == NOT
    dpo = (DATA / "torchtune/8B_full_dpo.yaml").read_text()
    p.write_text(dpo.replace("ref_checkpointer:\n  _component_: torchtune.training.FullModelHFCheckpointer\n"
                             "  checkpoint_dir: /tmp/Meta-Llama-3.1-8B-Instruct/",
                             "ref_checkpointer:\n  _component_: torchtune.training.FullModelHFCheckpointer\n"
                             "  checkpoint_dir: /tmp/llama-sft/"))
    conv = convert(p)
    assert conv.recipe["ref_model"] == "/tmp/llama-sft/" and not conv.untranslated


def test_axolotl_swanlab_plugin_and_llama_factory_remote_dataset_dir(tmp_path):
    p = tmp_path / "c.yml"
    p.write_text("base_model: m\ndatasets: [{path: d.jsonl, type: alpaca}]\nwandb_project: w\n"
                 "plugins: [axolotl.integrations.swanlab.SwanLabPlugin]\nuse_swanlab: true\nswanlab_project: p\n"
                 "swanlab_experiment_name: e\nswanlab_mode: cloud\n")
    conv = convert(p)
    assert conv.get("training.report_to") == ["wandb", "swanlab"] and conv.get("training.run_name") == "e"
    assert conv.get("tracking.project") == "w" and [f.key for f in conv.untranslated] == ["swanlab_project"]
    lf = tmp_path / "lf.yaml"
    lf.write_text("stage: sft\nmodel_name_or_path: m\nfinetuning_type: full\ndataset: identity\ntemplate: llama3\n"
                  "dataset_dir: REMOTE:llamafactory/demo_data\n")
    assert "on the hub (llamafactory/demo_data)" in _fates(convert(lf))["dataset"].text


@pytest.mark.parametrize("raw,key,kind,expected", [
    ({"tokens": {"pad_token": "<|padding|>"}}, "tokens.pad_token", MAPPED, {"model.special_tokens.pad_token": "<|padding|>"}),
    ({"tokens": ["<tool>"]}, "tokens", MAPPED, {"model.add_tokens": ["<tool>"]}),
    ({"activation_offloading": "legacy"}, "activation_offloading", MAPPED, {"training.activation_offloading": True}),
    ({"activation_offloading": "disk"}, "activation_offloading", NOT, {}),
])
def test_axolotl_values_of_its_older_and_newer_forms(tmp_path, raw, key, kind, expected):
    """Public axolotl examples write `tokens:` as a mapping of special tokens (examples/archived/mpt-7b) and
    `activation_offloading: legacy` (examples/alst): both convert, neither is refused as a wrong type."""
    p = tmp_path / "c.yml"
    p.write_text(yaml.safe_dump({"base_model": "m", "datasets": [{"path": "a.jsonl", "type": "alpaca"}], **raw}))
    conv = convert(p, "axolotl")
    fate = next(f for f in conv.fates if f.key == key)
    assert fate.kind == kind, fate
    assert all(conv.get(k) == v for k, v in expected.items()), conv.recipe
