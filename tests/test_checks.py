"""posttrain.checks: one pass reports every problem of a recipe at once, each with its file:line; one mistake gives
one line (a check that reads a key already refused is skipped); validate, plan, train and pipeline all use it."""

import re
from pathlib import Path

import pytest
import yaml
from conftest import error_lines, needs_ppo, write_recipe

from posttrain import checks
from posttrain.checks import load_recipe
from posttrain.errors import Problems

FIVE = """\
stage: sft
model: {{name_or_path: {model}}}
data:
  train: {missing}
  max_length: 0
peft: {{r: 4, lora_alpha: 8, target_modules: [q_projj]}}
training:
  max_steps: 2
  learnig_rate: 1.0e-4
  lr_scheduler_type: cosin
output_dir: {out}
"""

# the five problems, by the line that sets each key
EXPECTED = [
    (5, "data.max_length: 0 is out of range"),
    (9, "training.learnig_rate: unknown key in training; did you mean 'learning_rate'?"),
    (10, "training.lr_scheduler_type: expected one of 'linear', 'cosine'"),
    (4, "data.train: data file not found"),
    (6, "peft.target_modules: 'q_projj' matches no module"),
]


@pytest.mark.parametrize("command", ["validate", "plan", "train"])
def test_five_problems_five_lines_each_with_file_line(fx, tmp_path, cli, command):
    out = tmp_path / "run"
    recipe = tmp_path / "five.yaml"
    recipe.write_text(FIVE.format(model=fx["model"], missing=tmp_path / "missing.jsonl", out=out))
    code, stdout, err = cli(command, recipe)
    errors = error_lines(err)
    assert code == 2 and "Traceback" not in err, err
    assert len(errors) == 5, err
    for (line, message), got in zip(EXPECTED, errors):
        assert got.startswith(f"five.yaml:{line}: ") and message in got, (message, got)
    assert not out.exists()  # nothing written: no run directory


def test_one_mistake_one_line(fx, tmp_path, cli):
    """A key refused early is not refused again by the checks that read it (no cascade)."""
    cases = {
        "stage: sfft\nmodel: {name_or_path: m}\ndata: {train: d.jsonl}\ntraining: {nope: 1}\n": "stage: unknown stage",
        "stage: sft\nmodel: {name_or_path: m}\ndata: [d.jsonl]\n": "data: expected a mapping",
        "stage: sft\nmodel: {name_or_path: m, token: x}\ndata: {train: d.jsonl}\n": "model.token: secrets never go",
        "stage: grpo\nmodel: {name_or_path: m}\ndata: {train: d.jsonl}\nrewards: []\n": "rewards: is required",
        "stage: sft\ndata: {train: d.jsonl}\n": "model.name_or_path: is required",
    }
    for i, (text, expected) in enumerate(cases.items()):
        p = tmp_path / f"r{i}.yaml"
        p.write_text(text)
        code, _, err = cli("validate", p, "--no-data")
        errors = error_lines(err)
        assert code == 2 and len(errors) == 1 and expected in errors[0], (text, err)


def test_many_problems_are_capped(tmp_path, cli):
    keys = "".join(f"  nope_{i}: 1\n" for i in range(25))
    p = tmp_path / "many.yaml"
    p.write_text(f"stage: sft\nmodel: {{name_or_path: m}}\ndata: {{train: d.jsonl}}\ntraining:\n{keys}")
    code, _, err = cli("validate", p, "--no-data")
    errors = error_lines(err)
    assert code == 2 and len(errors) == Problems.SHOWN + 1 and errors[-1] == "... and 5 more", err
    assert all(re.match(r"many\.yaml:\d+: training\.nope_\d+: unknown key", e) for e in errors[:-1])


def test_every_step_is_registered_once_in_level_order():
    names = [s.name for s in checks.REGISTRY]
    assert len(names) == len(set(names))
    levels = [checks.LEVELS.index(s.level) for s in checks.REGISTRY]
    assert levels == sorted(levels)


def test_levels_are_prefixes(fx, tmp_path):
    """`recipe` reads no file the recipe names; `files` reads data; `model` reads the model's config."""
    raw = {"stage": "sft", "model": {"name_or_path": str(fx["model"])}, "data": {"train": str(tmp_path / "no.jsonl")},
           "peft": {"r": 4, "lora_alpha": 8, "target_modules": ["nope"]}}
    checks.validate(dict(raw), level="owners")  # neither the data file nor the modules are looked at
    with pytest.raises(Problems) as e:
        checks.validate(dict(raw), level="files")
    assert "data file not found" in str(e.value) and "nope" not in str(e.value)
    with pytest.raises(Problems) as e:
        checks.validate(dict(raw), level="model")
    assert len(e.value.lines) == 2


@needs_ppo
def test_missing_local_models_are_one_line_each(fx, tmp_path, cli):
    code, _, err = cli("validate", "ppo_gpt2", f"model.name_or_path={fx['model']}", f"data.train={fx['prompts']}",
                       f"reward_model={tmp_path / 'no_reward'}", f"value_model={tmp_path}", "--no-data")
    errors = error_lines(err)
    assert code == 2 and len(errors) == 2, err
    assert "reward_model: no such directory" in errors[0] and "value_model: " in errors[1] and "holds no model" in errors[1]


def test_eos_token_checked_at_validate(fx, cli):
    code, _, err = cli("validate", "alpaca_gpt2", f"model.name_or_path={fx['model']}", f"data.train={fx['alpaca']}",
                       "training.eos_token=<|not_a_token|>", "--no-data")
    assert code == 0  # --no-data: the tokenizer is not read
    code, _, err = cli("validate", "alpaca_gpt2", f"model.name_or_path={fx['model']}", f"data.train={fx['alpaca']}",
                       "training.eos_token=<|not_a_token|>")
    errors = error_lines(err)
    assert code == 2 and len(errors) == 1 and "training.eos_token: '<|not_a_token|>' is not a token" in errors[0], err


def test_pipeline_reports_every_stage(fx, tmp_path, cli):
    p = tmp_path / "pipe.yaml"
    p.write_text(f"""\
output_root: {tmp_path / 'runs'}
stages:
  sft: {{recipe: alpaca_gpt2, model.name_or_path: {fx['model']}, data.train: {tmp_path / 'no.jsonl'}}}
  dpo: {{recipe: dpo_gpt2, after: sft, data.train: {fx['preference']}, training.beta: -1}}
  reward: {{recipe: reward_gpt2, model.name_or_path: {fx['model']}, data.train: {fx['preference']}, training.nope: 1}}
""")
    code, _, err = cli("validate", p)
    errors = error_lines(err)
    assert code == 2 and len(errors) == 3, err
    assert errors[0].startswith("stage sft (alpaca_gpt2.yaml): ") and "data file not found" in errors[0]
    assert errors[1].startswith("stage dpo (dpo_gpt2.yaml): ") and "training.beta: -1 is out of range" in errors[1]
    assert errors[2].startswith("stage reward (reward_gpt2.yaml): ") and "training.nope: unknown key" in errors[2]
    code, _, err = cli("pipeline", p)  # the same problems before any stage trains
    assert code == 2 and error_lines(err) == errors and not (tmp_path / "runs").exists()


# QLoRA as users mean it: a resolve step of the pass (checks.qlora_defaults)

BASE = "stage: sft\nmodel: {name_or_path: gpt2}\ndata: {train: d.jsonl}\n"


def test_load_in_4bit_alone_means_nf4_double_quant_and_16bit_compute_where_there_is_one(tmp_path):
    from posttrain.models import bf16_supported

    r = load_recipe(str(write_recipe(tmp_path, BASE + "peft: {r: 4}\nquantization: {load_in_4bit: true}\n")))
    resolved = yaml.safe_load(r.to_yaml())["quantization"]
    assert resolved == {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True,
                        "bnb_4bit_compute_dtype": "bfloat16" if bf16_supported() else "float32"}
    assert r.quantization == resolved  # what models.quantization_config receives


def test_qlora_computes_in_bf16_on_a_gpu_that_has_it(tmp_path, monkeypatch):
    from posttrain import models

    monkeypatch.setattr(models, "bf16_supported", lambda: True)
    r = load_recipe(str(write_recipe(tmp_path, BASE + "peft: {r: 4}\nquantization: {load_in_4bit: true}\n")))
    assert r.quantization["bnb_4bit_compute_dtype"] == "bfloat16"
    assert "bnb_4bit_compute_dtype: bfloat16" in r.to_yaml()  # recipe.resolved.yaml says so


def test_every_qlora_field_stays_settable(tmp_path):
    r = load_recipe(str(write_recipe(tmp_path, BASE.replace("gpt2}", "gpt2, dtype: fp16}") + "peft: {r: 4}\n"
                               "quantization: {load_in_4bit: true, bnb_4bit_quant_type: fp4, "
                               "bnb_4bit_use_double_quant: false}\n")))
    assert r.quantization == {"load_in_4bit": True, "bnb_4bit_quant_type": "fp4", "bnb_4bit_use_double_quant": False,
                              "bnb_4bit_compute_dtype": "float16"}  # an explicit model.dtype is the compute dtype
    r8 = load_recipe(str(write_recipe(tmp_path, BASE + "peft: {r: 4}\nquantization: {load_in_8bit: true}\n")))
    assert r8.quantization == {"load_in_8bit": True}


def test_the_resolved_qlora_block_builds_the_bitsandbytes_config(tmp_path):
    import torch

    from posttrain.models import quantization_config

    r = load_recipe(str(write_recipe(tmp_path, BASE + "peft: {r: 4}\nquantization: {load_in_4bit: true}\n")))
    qc = quantization_config(r.quantization, torch.float32)
    assert qc.bnb_4bit_quant_type == "nf4" and qc.bnb_4bit_use_double_quant
    assert qc.bnb_4bit_compute_dtype == getattr(torch, r.quantization["bnb_4bit_compute_dtype"])


def test_problems_on_other_keys_of_a_section_do_not_hide_each_other(tmp_path, cli):
    """Key-by-key steps (managed keys, ranges, the TRL config's fields) each report their keys, whichever step
    refused another key of the same section first."""
    p = tmp_path / "keys.yaml"
    p.write_text("stage: sft\nmodel: {name_or_path: m}\ndata: {train: d.jsonl}\ntraining:\n  do_eval: true\n"
                 "  output_dir: x\n  learning_rate: -1\n  learnig_rate: 1\npeft: {r: 0, target_modules: all}\n")
    code, _, err = cli("validate", p, "--no-data")
    errors = error_lines(err)
    assert code == 2 and [e.split(": ")[1] for e in errors] == [
        "training.do_eval", "training.output_dir", "training.learning_rate", "peft.r", "training.learnig_rate",
        "peft.target_modules"], err


def test_another_tools_config_is_named_first_with_the_convert_command(tmp_path, cli):
    """An alignment-handbook (TRL-script) or LLaMA-Factory config given to validate: the first line says what it is
    and how to translate it; the key-by-key hints follow. A posttrain recipe that only lacks a key is not mistaken."""
    root = Path(__file__).parent / "data" / "convert"
    for path, tool in ((root / "trl" / "dpo" / "zephyr-7b-beta_config_full.yaml", "TRL-script"),
                       (root / "llama-factory" / "llama3_lora_sft.yaml", "LLaMA-Factory")):
        code, _, err = cli("validate", path)
        lines = error_lines(err)
        assert code == 2 and tool in lines[0] and f"posttrain convert {path}" in lines[0], lines
    code, _, err = cli("validate", write_recipe(tmp_path, "stage: sft\ndata: {train: d.jsonl}\n"))
    assert code == 2 and "convert" not in err and "model.name_or_path: is required" in err
