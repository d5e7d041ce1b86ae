"""Every option is honoured or refused in one line: the classification, what settings need, QLoRA
defaults, other tools' names, and `key: null` under extends. Fast: nothing trains, nothing loads."""

import dataclasses
import logging

import pytest
import yaml

from posttrain import options, stages
from posttrain.errors import RecipeError
from posttrain.recipe import load_recipe

BASE = "stage: sft\nmodel: {name_or_path: gpt2}\ndata: {train: d.jsonl}\n"
DPO = "stage: dpo\nmodel: {name_or_path: gpt2}\ndata: {train: d.jsonl}\n"


def _write(tmp_path, text, name="r.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def _refused(tmp_path, text, overrides=()):
    with pytest.raises(RecipeError) as e:
        load_recipe(str(_write(tmp_path, text)), list(overrides))
    return str(e.value)


# --- 1. one classification of every option -------------------------------------------------------

def test_every_field_of_every_owning_class_is_classified_once():
    """Walks the installed TRL config of every registered stage, LoraConfig and BitsAndBytesConfig. A field
    a new TRL adds fails here until it is classified (options.py, the stage's managed/refused) and the
    snapshot regenerated: `python -m posttrain.options --write`."""
    audit = options.audit()
    assert {s.trl_config for s in stages.all_stages().values()} <= set(audit)
    problems = {path: {k: v for k, v in a.items() if v} for path, a in audit.items() if any(a.values())}
    assert not problems, f"unclassified/doubly classified/gone options: {problems}; classify them, then run " \
                         "`python -m posttrain.options --write`"


def test_a_field_nobody_classified_fails_the_walk(monkeypatch):
    real = options.installed_fields
    monkeypatch.setattr(options, "installed_fields",
                        lambda path: real(path) + (["shiny_new_option"] if path == "trl:DPOConfig" else []))
    assert options.audit()["trl:DPOConfig"]["unclassified"] == ["shiny_new_option"]


def test_a_field_the_snapshot_lacks_is_passed_with_a_warning(tmp_path, monkeypatch, caplog):
    snap = {k: list(v) for k, v in options.snapshot().items()}  # a copy: snapshot() is cached
    snap["trl:SFTConfig"].remove("neftune_noise_alpha")
    monkeypatch.setattr(options, "snapshot", lambda: snap)
    monkeypatch.setattr(logging.getLogger("posttrain"), "propagate", True)  # the CLI turns it off
    with caplog.at_level("WARNING", logger="posttrain"):
        r = load_recipe(str(_write(tmp_path, BASE + "training: {neftune_noise_alpha: 5}\n")))
    assert r.training["neftune_noise_alpha"] == 5
    assert "training.neftune_noise_alpha: passed to trl:SFTConfig, but this posttrain version has not " \
           "classified it" in caplog.text


def test_classify_answers_for_every_section():
    assert options.classify("sft", "training", "learning_rate").kind == options.PASSED
    assert options.classify("sft", "training", "output_dir").kind == options.MANAGED
    assert options.classify("sft", "training", "padding_free").kind == options.MANAGED  # from the stage module
    assert options.classify("dpo", "training", "padding_free").kind == options.REFUSED  # likewise
    assert options.classify("ppo", "training", "mini_batch_size").kind == options.REFUSED
    assert options.classify("dpo", "training", "do_eval").kind == options.REFUSED
    assert options.classify("dpo", "peft", "r").kind == options.PASSED
    assert options.classify("dpo", "peft", "task_type").kind == options.MANAGED
    assert options.classify("dpo", "quantization", "bnb_4bit_quant_type").kind == options.PASSED
    assert options.classify("dpo", "model", "dtype").kind == options.PASSED
    assert options.classify("dpo", "data", "max_length").kind == options.PASSED
    assert options.classify("dpo", "training", "no_such_thing").kind == "unclassified"


def test_the_options_doc_is_generated_from_the_one_place():
    assert options.DOC.read_text() == options.render_doc(), "run `python -m posttrain.options --write`"
    text = options.DOC.read_text()
    assert "training.resume_from_checkpoint" in text and "`warmup_ratio`" in text


@pytest.mark.parametrize("key, value, says", [
    ("resume_from_checkpoint", "runs/x/checkpoint-5", "posttrain train --resume"),
    ("do_predict", True, "cannot be set in a posttrain recipe"),
    ("dataset_num_proc", 4, "set `data.num_proc`"),
])
def test_managed_and_refused_keys_are_refused_with_where_or_why(tmp_path, key, value, says):
    msg = _refused(tmp_path, BASE + f"training: {{{key}: {value}}}\n")
    assert f"training.{key}" in msg and says in msg


def test_peft_task_type_is_managed(tmp_path):
    msg = _refused(tmp_path, BASE + "peft: {r: 4, task_type: SEQ_CLS}\n")
    assert "peft.task_type: is set by posttrain" in msg


# --- 2. what a setting needs, checked at validate ------------------------------------------------

def test_report_to_an_integration_that_is_not_installed(tmp_path, monkeypatch, cli):
    from posttrain import needs

    monkeypatch.setattr(needs, "installed", lambda module: module not in ("wandb", "tensorboard", "tensorboardX"))
    for name in ("wandb", "tensorboard"):
        p = _write(tmp_path, BASE + f"training: {{report_to: [{name}]}}\n")
        code, out, err = cli("validate", p, "--no-data")
        assert code == 2 and f"'{name}' needs the `{name}` package" in err and "pip install" in err
        assert len(err.strip().splitlines()) == 1


def test_report_to_an_unknown_integration_gets_a_hint(tmp_path):
    assert "did you mean 'wandb'" in _refused(tmp_path, BASE + "training: {report_to: wandbb}\n")


def test_push_to_hub_offline_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    msg = _refused(tmp_path, BASE + "training: {push_to_hub: true}\n")
    assert "training.push_to_hub" in msg and "HF_HUB_OFFLINE" in msg


def test_push_to_hub_without_a_token_is_refused(tmp_path, monkeypatch):
    import huggingface_hub

    from posttrain import hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=2.0: True)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    msg = _refused(tmp_path, BASE + "training: {push_to_hub: true}\n")
    assert "training.push_to_hub" in msg and "no token" in msg


def test_orpo_generate_during_eval_needs_wandb_or_comet(tmp_path, monkeypatch):
    from posttrain import needs

    monkeypatch.setattr(needs, "installed", lambda module: module not in ("wandb", "comet_ml"))
    msg = _refused(tmp_path, DPO.replace("dpo", "orpo") + "training: {generate_during_eval: true}\n")
    assert "training.generate_during_eval" in msg and "pip install wandb" in msg


def test_liger_without_liger_kernel(tmp_path, monkeypatch):
    from posttrain import needs

    monkeypatch.setattr(needs, "installed", lambda module: module != "liger_kernel")
    msg = _refused(tmp_path, BASE + "training: {use_liger_kernel: true}\n")
    assert "training.use_liger_kernel" in msg and "pip install liger-kernel" in msg


def test_deepspeed_json_without_deepspeed_is_one_line_exit_2(tmp_path, cli):
    from posttrain.needs import installed

    if installed("deepspeed"):
        pytest.skip("deepspeed is installed here")
    ds = _write(tmp_path, '{"zero_optimization": {"stage": 2}}', "ds.json")
    p = _write(tmp_path, BASE)
    code, out, err = cli("validate", p, f"training.deepspeed={ds}", "--no-data")
    assert code == 2 and "training.deepspeed" in err and "pip install deepspeed" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_any_error_from_the_config_constructor_is_one_line(tmp_path, monkeypatch, cli):
    """build_config turns whatever the TRL config raises (here an ImportError, as from a missing
    integration) into one line, exit 2."""
    import trl

    def boom(self, *a, **kw):
        raise ImportError("some integration is missing\nand a long story follows")

    monkeypatch.setattr(trl.SFTConfig, "__post_init__", boom)
    code, out, err = cli("validate", _write(tmp_path, BASE), "--no-data")
    assert code == 2 and "SFTConfig rejects these settings: some integration is missing" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_flash_attention_needs_the_package_and_a_gpu(tmp_path, monkeypatch):
    from posttrain import needs

    monkeypatch.setattr(needs, "installed", lambda module: module != "flash_attn")
    msg = _refused(tmp_path, BASE.replace("gpt2}", "gpt2, attn_implementation: flash_attention_2}"))
    assert "model.attn_implementation" in msg and "pip install flash-attn" in msg
    monkeypatch.setattr(needs, "installed", lambda module: True)
    import transformers.utils

    monkeypatch.setattr(transformers.utils, "is_flash_attn_2_available", lambda: False)
    assert "needs a CUDA GPU" in _refused(tmp_path, BASE.replace("gpt2}", "gpt2, attn_implementation: "
                                                                           "flash_attention_2}"))


@pytest.mark.parametrize("text, says", [
    (DPO + "training: {loss_type: [sigmod]}\n", "'sigmod' is not one of sigmoid, hinge"),
    (DPO + "training: {loss_type: [sigmoid, hing]}\n", "did you mean 'hinge'"),
    (DPO + "training: {f_divergence_type: js}\n", "is not one of reverse_kl"),
    (BASE + "training: {loss_type: nl}\n", "did you mean 'nll'"),
    (BASE + "training: {lr_scheduler_type: cosine_with_restart}\n", "did you mean 'cosine_with_restarts'"),
    (BASE + "training: {optim: adamw_torh}\n", "did you mean 'adamw_torch'"),
    (DPO + "training: {truncation_mode: keep_middle}\n", "is not one of keep_end, keep_start"),
    (BASE.replace("gpt2}", "gpt2, attn_implementation: spda}"), "did you mean 'sdpa'"),
])
def test_enumerated_values_are_checked_against_the_installed_library(tmp_path, text, says):
    msg = _refused(tmp_path, text)
    assert says in msg, msg


def test_dpo_loss_types_come_from_trl_and_a_single_name_is_accepted(tmp_path):
    from posttrain.schema import config_class, field_choices

    assert {"sigmoid", "ipo", "hinge"} <= set(field_choices(config_class("trl:DPOConfig"))["loss_type"])
    r = load_recipe(str(_write(tmp_path, DPO + "training: {loss_type: ipo}\n")))
    assert r.training["loss_type"] == ["ipo"]


# --- 3. QLoRA as users mean it ------------------------------------------------------------------

def test_load_in_4bit_alone_means_nf4_double_quant_and_16bit_compute_where_there_is_one(tmp_path):
    from posttrain.models import bf16_supported

    r = load_recipe(str(_write(tmp_path, BASE + "peft: {r: 4}\nquantization: {load_in_4bit: true}\n")))
    resolved = yaml.safe_load(r.to_yaml())["quantization"]
    assert resolved == {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True,
                        "bnb_4bit_compute_dtype": "bfloat16" if bf16_supported() else "float32"}
    assert r.quantization == resolved  # what models.quantization_config receives


def test_qlora_computes_in_bf16_on_a_gpu_that_has_it(tmp_path, monkeypatch):
    from posttrain import models

    monkeypatch.setattr(models, "bf16_supported", lambda: True)
    r = load_recipe(str(_write(tmp_path, BASE + "peft: {r: 4}\nquantization: {load_in_4bit: true}\n")))
    assert r.quantization["bnb_4bit_compute_dtype"] == "bfloat16"
    assert "bnb_4bit_compute_dtype: bfloat16" in r.to_yaml()  # recipe.resolved.yaml says so


def test_every_qlora_field_stays_settable(tmp_path):
    r = load_recipe(str(_write(tmp_path, BASE.replace("gpt2}", "gpt2, dtype: fp16}") + "peft: {r: 4}\n"
                               "quantization: {load_in_4bit: true, bnb_4bit_quant_type: fp4, "
                               "bnb_4bit_use_double_quant: false}\n")))
    assert r.quantization == {"load_in_4bit": True, "bnb_4bit_quant_type": "fp4", "bnb_4bit_use_double_quant": False,
                              "bnb_4bit_compute_dtype": "float16"}  # an explicit model.dtype is the compute dtype
    r8 = load_recipe(str(_write(tmp_path, BASE + "peft: {r: 4}\nquantization: {load_in_8bit: true}\n")))
    assert r8.quantization == {"load_in_8bit": True}


def test_the_resolved_qlora_block_builds_the_bitsandbytes_config(tmp_path):
    import torch

    from posttrain.models import quantization_config

    r = load_recipe(str(_write(tmp_path, BASE + "peft: {r: 4}\nquantization: {load_in_4bit: true}\n")))
    qc = quantization_config(r.quantization, torch.float32)
    assert qc.bnb_4bit_quant_type == "nf4" and qc.bnb_4bit_use_double_quant
    assert qc.bnb_4bit_compute_dtype == getattr(torch, r.quantization["bnb_4bit_compute_dtype"])


# --- 4. names from other tools -------------------------------------------------------------------

@pytest.mark.parametrize("text, says", [
    (BASE + "training: {warmup_ratio: 0.1}\n", "did you mean `training.warmup_steps: 0.1`? (a value below 1 is a ratio"),
    (BASE + "training: {max_seq_length: 2048}\n", "did you mean `data.max_length: 2048`?"),
    (BASE + "cutoff_len: 1024\n", "did you mean `data.max_length: 1024`?"),
    (BASE + "sequence_len: 1024\n", "`data.max_length: 1024`"),
    (BASE + "peft: {lora_r: 8}\n", "did you mean `peft.r: 8`?"),
    (BASE + "peft: {lora_rank: 8}\n", "`peft.r: 8`"),
    (BASE + "lora_target: all\n", "did you mean `peft.target_modules: all-linear`?"),
    (BASE + "val_size: 0.05\n", "`data.eval_fraction: 0.05`"),
    (BASE + "data: {train: d.jsonl, val_set_size: 0.05}\n", "`data.eval_fraction: 0.05`"),
    (BASE.replace("gpt2}", "gpt2, torch_dtype: bfloat16}"), "`model.dtype: bfloat16`"),
    (BASE + "training: {overwrite_output_dir: true}\n", "the `--overwrite` flag of `posttrain train`"),
    (BASE + "micro_batch_size: 2\n", "`training.per_device_train_batch_size: 2`"),
    (BASE + "quantization_bit: 4\n", "did you mean `quantization: {load_in_4bit: true}`?"),
    (BASE + "dataset_mixer: {a: 0.5}\n", "did you mean `data.train`?"),
    (BASE + "datasets: [a.jsonl]\n", "`data.train"),
    (BASE + "model_name_or_path: gpt2\n", "`model.name_or_path: gpt2`"),
    (BASE + "base_model: gpt2\n", "`model.name_or_path: gpt2`"),
    (BASE + "lora_alpha: 16\n", "did you mean `peft.lora_alpha`?"),
    (BASE + "training: {lora_dropout: 0.1}\n", "did you mean `peft.lora_dropout`?"),
    (BASE + "learning_rate: 1.0e-4\n", "did you mean `training.learning_rate`?"),
    (BASE + "split: train\n", "did you mean `data.split`?"),
    (BASE + "preprocessing_num_workers: 8\n", "`data.num_proc: 8`"),
])
def test_other_tools_names_point_at_the_posttrain_key(tmp_path, text, says):
    msg = _refused(tmp_path, text)
    assert says in msg, msg


def test_lora_target_modules_all_hints_all_linear(tmp_path):
    msg = _refused(tmp_path, BASE + "peft: {r: 4, target_modules: all}\n")
    assert "peft.target_modules" in msg and "did you mean 'all-linear'?" in msg


def test_plain_typos_still_get_edit_distance_hints(tmp_path):
    assert "did you mean 'warmup_steps'" in _refused(tmp_path, BASE + "training: {warmup_stesp: 3}\n")


def test_warmup_steps_below_one_is_a_ratio_in_the_installed_transformers():
    from transformers import TrainingArguments

    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    assert "warmup_ratio" not in names  # so the foreign-name hint is the way there
    args = TrainingArguments(output_dir="x", warmup_steps=0.1, use_cpu=True, report_to="none")
    assert args.get_warmup_steps(100) == 10


# --- 5. key: null under extends ------------------------------------------------------------------

def test_null_under_extends_removes_the_inherited_key(tmp_path):
    _write(tmp_path, BASE + "peft: {r: 4, lora_alpha: 8}\ntraining: {max_steps: 5, warmup_steps: 3}\n", "base.yaml")
    child = _write(tmp_path, "extends: base.yaml\npeft: null\ntraining: {warmup_steps: null}\n", "child.yaml")
    r = load_recipe(str(child))
    assert r.peft is None and r.training == {"max_steps": 5}
    child2 = _write(tmp_path, "extends: base.yaml\npeft: {lora_alpha: null}\n", "child2.yaml")
    assert load_recipe(str(child2)).peft == {"r": 4}
