"""`posttrain plan`: the memory estimate counts what it says and gives advice when a run won't fit."""

from posttrain.plan import estimate
from posttrain.recipe import load_recipe


def _recipe(fx, name="alpaca_gpt2", *extra):
    return load_recipe(name, [f"model.name_or_path={fx['model']}", *extra])


def test_estimate_counts_the_real_model_and_reacts_to_knobs(fx):
    from transformers import AutoModelForCausalLM

    real = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(fx["model"]).parameters())
    full = estimate(_recipe(fx))
    assert full["params"] == real == full["trainable"]
    assert full["parts"]["weights"] == real * 2 and full["parts"]["optimizer"] == real * 8
    lora = estimate(_recipe(fx, "alpaca_gpt2_lora", "peft.target_modules=[c_attn]"))
    assert lora["params"] > real > lora["trainable"] > 0
    assert lora["parts"]["optimizer"] < full["parts"]["optimizer"] / 5
    qlora = estimate(_recipe(fx, "alpaca_gpt2_qlora", "peft.target_modules=[c_attn]"))
    assert qlora["parts"]["weights"] < lora["parts"]["weights"] / 3
    ckpt_off = estimate(_recipe(fx, "alpaca_gpt2", "training.activation_checkpointing=false"))
    assert ckpt_off["parts"]["activations"] > full["parts"]["activations"]
    dpo = estimate(_recipe(fx, "dpo_gpt2"))
    assert dpo["parts"]["other models"] == dpo["parts"]["weights"]  # the reference copy
    assert estimate(_recipe(fx, "dpo_gpt2", "training.precompute_ref_log_probs=true"))["parts"]["other models"] == 0
    sharded = estimate(_recipe(fx), gpus=8, sharding="zero3")
    assert sharded["parts"]["optimizer"] == full["parts"]["optimizer"] / 8


def test_plan_cli_fits_or_advises(fx, cli):
    code, out, _ = cli("plan", "alpaca_gpt2", f"model.name_or_path={fx['model']}")
    assert code == 0 and "fits a 80 GiB GPU" in out and "optimizer" in out
    code, out, _ = cli("plan", "dpo_gpt2", f"model.name_or_path={fx['model']}", "--gpu-gib", "0.001")
    assert code == 1 and "does NOT fit" in out and "precompute_ref_log_probs" in out and "peft" in out
