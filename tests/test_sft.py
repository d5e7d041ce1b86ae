"""SFT end to end on a tiny model: train, save, reload, generate; LoRA, QLoRA, chat data; resume; no overwrite."""

import json
import subprocess
import sys

import pytest
from conftest import manifest

from posttrain import stages

pytestmark = pytest.mark.slow  # every test here trains a model or spawns a process

FAST = ["training.max_steps=6", "training.logging_steps=1", "training.warmup_steps=0",
        "training.gradient_accumulation_steps=1", "training.eval_steps=3", "training.save_steps=3"]


def _args(fx, out, *extra, lr="5e-3", data="alpaca"):
    return [f"model.name_or_path={fx['model']}", f"data.train={fx[data]}", f"output_dir={out}",
            f"training.learning_rate={lr}", *FAST, *extra]



def _generate(model, tokenizer, prompt="Add 2 and 3."):
    from posttrain.data.formats import alpaca_prompt

    ids = tokenizer(alpaca_prompt(prompt), return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    assert out.shape[1] > ids["input_ids"].shape[1]
    return out


@pytest.mark.both_ends
def test_full_finetune_trains_saves_reloads_and_refuses_overwrite(fx, tmp_path, cli):
    out = tmp_path / "run"
    code, stdout, err = cli("train", "alpaca_gpt2", *_args(fx, out))
    assert code == 0, err
    m = manifest(out)
    assert m["status"] == "finished" and m["stage"] == "sft" and m["world_size"] == 1
    assert m["metrics"]["global_step"] == 6 and m["versions"]["trl"] == stages.trl_version()
    assert m["metrics"]["last_logged_loss"] < m["metrics"]["first_logged_loss"]  # it learned something
    assert "eval_loss" in m["metrics"] and m["data"]["train"]["kept"] + m["data"]["eval"]["kept"] == 48
    assert (out / "recipe.resolved.yaml").read_text().startswith("stage: sft")
    assert not (out / ".saving-final").exists() and (out / "checkpoint-6").is_dir()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tok = AutoModelForCausalLM.from_pretrained(out), AutoTokenizer.from_pretrained(out)
    _generate(model, tok)

    code, _, err = cli("train", "alpaca_gpt2", *_args(fx, out))
    assert code == 2 and "already holds a finished run; pass --overwrite" in err
    code, _, err = cli("train", "alpaca_gpt2", *_args(fx, out), "--resume")
    assert code == 2 and "nothing to resume" in err
    code, _, err = cli("train", "alpaca_gpt2", *_args(fx, out, "training.max_steps=2"), "--overwrite")
    assert code == 0 and manifest(out)["metrics"]["global_step"] == 2
    assert not (out / "checkpoint-6").exists()


def test_lora_saves_adapter_that_reloads(fx, tmp_path, cli):
    out = tmp_path / "lora"
    code, _, err = cli("train", "alpaca_gpt2_lora", *_args(fx, out, "peft.target_modules=[c_attn, c_proj]"))
    assert code == 0, err
    assert (out / "adapter_config.json").exists() and not (out / "model.safetensors").exists()
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoTokenizer

    _generate(AutoPeftModelForCausalLM.from_pretrained(out), AutoTokenizer.from_pretrained(out))


def test_qlora_trains_on_cpu(fx, tmp_path, cli):
    out = tmp_path / "qlora"
    # No eval pass: on CPUs with AVX512-BF16, bitsandbytes 0.50 repacks 4-bit weights for inference and cannot
    # for layers narrower than its 64-wide block (the tiny model's are 32); real models are wider.
    code, _, err = cli("train", "alpaca_gpt2_qlora",
                       *_args(fx, out, "training.max_steps=2", "training.eval_strategy=no", "data.eval_fraction=null"))
    assert code == 0, err
    cfg = json.loads((out / "adapter_config.json").read_text())
    m = manifest(out)
    assert cfg["r"] == 16 and m["status"] == "finished"
    assert m["model"]["quantized"] == "4bit" and 0 < m["model"]["trainable_parameters"] < m["model"]["parameters"]
    resolved = (out / "recipe.resolved.yaml").read_text()
    assert "bnb_4bit_quant_type: nf4" in resolved and "bnb_4bit_compute_dtype: float32" in resolved  # CPU


def test_bare_load_in_4bit_trains_as_qlora_on_cpu(fx, tmp_path, cli):
    out = tmp_path / "bare"
    code, _, err = cli("train", "alpaca_gpt2_lora", "quantization.load_in_4bit=true", "data.eval_fraction=null",
                       *_args(fx, out, "training.max_steps=2", "training.eval_strategy=no"))
    assert code == 0, err
    assert "bnb_4bit_use_double_quant: true" in (out / "recipe.resolved.yaml").read_text()
    assert manifest(out)["model"]["quantized"] == "4bit"


def test_messages_format_trains(fx, tmp_path, cli):
    out = tmp_path / "chat"
    code, _, err = cli("train", "alpaca_gpt2", *_args(fx, out, "data.format=messages", "training.max_steps=2",
                                                      data="messages"))
    assert code == 0, err
    assert manifest(out)["data"]["train"]["kept"] > 0


class _Crash(Exception):
    pass


def test_interrupted_run_resumes_to_the_same_end(fx, tmp_path, cli, monkeypatch):
    """Stop after checkpoint-3, resume, end at step 6 with the same loss as an uninterrupted run."""
    import dataclasses

    from transformers import TrainerCallback

    from posttrain import stages
    from posttrain.stages import sft

    ref = tmp_path / "ref"
    assert cli("train", "alpaca_gpt2", *_args(fx, ref, "training.eval_strategy=no"))[0] == 0

    class CrashAfter4(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 4:
                raise _Crash()

    real_build = sft.build

    def crashing_build(recipe):
        trainer, stats = real_build(recipe)
        trainer.add_callback(CrashAfter4())
        return trainer, stats

    out = tmp_path / "crash"
    registry = stages.all_stages()
    monkeypatch.setitem(registry, "sft", dataclasses.replace(sft.STAGE, build=crashing_build))
    with pytest.raises(_Crash):
        cli("train", "alpaca_gpt2", *_args(fx, out, "training.eval_strategy=no"))
    monkeypatch.setitem(registry, "sft", sft.STAGE)
    assert manifest(out)["status"] == "failed" and (out / "checkpoint-3").is_dir()

    code, _, err = cli("train", "alpaca_gpt2", *_args(fx, out, "training.eval_strategy=no"))
    assert code == 2 and "pass --resume" in err
    code, _, err = cli("train", "alpaca_gpt2", *_args(fx, out, "training.eval_strategy=no", "training.seed=1"),
                       "--resume")
    assert code == 2 and "different recipe" in err

    code, _, err = cli("train", "alpaca_gpt2", *_args(fx, out, "training.eval_strategy=no"), "--resume")
    assert code == 0, err
    m, r = manifest(out), manifest(ref)
    assert m["resumed_from"] == "checkpoint-3" and m["attempts"] == 2
    assert m["metrics"]["global_step"] == r["metrics"]["global_step"] == 6
    log = {e["step"]: e["loss"] for e in json.loads((out / "log_history.json").read_text()) if "loss" in e}
    ref_log = {e["step"]: e["loss"] for e in json.loads((ref / "log_history.json").read_text()) if "loss" in e}
    assert log[6] == pytest.approx(ref_log[6], abs=1e-4)


def test_console_script_exit_codes(fx, tmp_path):
    """The process boundary: `python -m posttrain` exits 2 with one line, no traceback. The two processes run side
    by side (each spends its time importing, on one core)."""
    procs = [subprocess.Popen([sys.executable, "-m", "posttrain", *argv], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
             for argv in (["validate", "alpaca_gpt2", "training.lerning_rate=1", "--no-data"],
                          ["train", "alpaca_gpt2", "--stage", "dpo"])]
    try:
        (_, bad_err), (_, wrong_err) = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    bad, wrong_stage = procs
    assert bad.returncode == 2 and bad_err.strip().splitlines()[-1].startswith("posttrain: error: ")
    assert "training.lerning_rate" in bad_err and "Traceback" not in bad_err
    assert wrong_stage.returncode == 2 and "is a 'sft' recipe, not 'dpo'" in wrong_err
