"""Every option is honoured or refused in one line (posttrain.options): the classification, and other tools'
names. Fast: nothing trains, nothing loads."""

import dataclasses
import logging

import pytest
from conftest import refused, write_recipe

from posttrain import options, stages
from posttrain.checks import load_recipe

BASE = "stage: sft\nmodel: {name_or_path: gpt2}\ndata: {train: d.jsonl}\n"
DPO = "stage: dpo\nmodel: {name_or_path: gpt2}\ndata: {train: d.jsonl}\n"


# --- 1. one classification of every option -------------------------------------------------------

def test_every_field_of_every_owning_class_is_classified_once():
    """Walks the installed TRL config of every registered stage, LoraConfig and BitsAndBytesConfig. A field
    a new TRL adds fails here until it is classified (options.py, the stage's managed/refused) and the
    snapshot regenerated: `python -m posttrain.options --write`."""
    audit = options.audit()
    assert {s.trl_config for s in stages.available().values()} <= set(audit)
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
        r = load_recipe(str(write_recipe(tmp_path, BASE + "training: {neftune_noise_alpha: 5}\n")))
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
    msg = refused(tmp_path, BASE + f"training: {{{key}: {value}}}\n")
    assert f"training.{key}" in msg and says in msg


def test_peft_task_type_is_managed(tmp_path):
    msg = refused(tmp_path, BASE + "peft: {r: 4, task_type: SEQ_CLS}\n")
    assert "peft.task_type: is set by posttrain" in msg


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
    (BASE.replace("gpt2}", "gpt2, torch_dtype: bfloat16}"), "`model.dtype: bf16`"),
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
    msg = refused(tmp_path, text)
    assert says in msg, msg


def test_lora_target_modules_all_hints_all_linear(tmp_path):
    msg = refused(tmp_path, BASE + "peft: {r: 4, target_modules: all}\n")
    assert "peft.target_modules" in msg and "did you mean 'all-linear'?" in msg


def test_plain_typos_still_get_edit_distance_hints(tmp_path):
    assert "did you mean 'warmup_steps'" in refused(tmp_path, BASE + "training: {warmup_stesp: 3}\n")


def test_warmup_steps_below_one_is_a_ratio_in_the_installed_transformers():
    from transformers import TrainingArguments

    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    assert "warmup_ratio" not in names  # so the foreign-name hint is the way there
    args = TrainingArguments(output_dir="x", warmup_steps=0.1, use_cpu=True, report_to="none")
    assert args.get_warmup_steps(100) == 10
