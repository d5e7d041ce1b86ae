"""`posttrain plan`: the memory estimate counts what it says and gives advice when a run won't fit.

The real-model cases build the published configs in tests/data/configs on `meta` (no weights) and
compare every part with numbers computed by hand from the config (see posttrain/plan.py for the rules).
"""

from pathlib import Path

import pytest
from conftest import needs_ppo

from posttrain import stages
from posttrain.checks import load_recipe
from posttrain.plan import GIB, estimate
from posttrain.stages import Footprint

CONFIGS = Path(__file__).parent / "data" / "configs"


def _recipe(fx, name="alpaca_gpt2", *extra):
    return load_recipe(name, [f"model.name_or_path={fx['model']}", *extra])


def _real(name, model, *extra):
    return load_recipe(name, [f"model.name_or_path={CONFIGS / model}", *extra])


def test_estimate_counts_the_real_model_and_reacts_to_knobs(fx):
    from transformers import AutoModelForCausalLM

    real = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(fx["model"]).parameters())
    full = estimate(_recipe(fx))
    assert full["params"] == real == full["trainable"]
    # bf16 weights train with bf16 gradients and bf16 AdamW states (torch keeps states in the parameter dtype)
    assert full["parts"]["weights"] == real * 2 and full["parts"]["optimizer"] == real * 4
    lora = estimate(_recipe(fx, "alpaca_gpt2_lora", "peft.target_modules=[c_attn]"))
    assert lora["params"] > real > lora["trainable"] > 0
    assert lora["parts"]["optimizer"] < full["parts"]["optimizer"] / 5
    ckpt_off = estimate(_recipe(fx, "alpaca_gpt2", "training.activation_checkpointing=false"))
    assert ckpt_off["parts"]["activations"] > full["parts"]["activations"]
    dpo = estimate(_recipe(fx, "dpo_gpt2"))
    assert dpo["parts"]["other models"] == dpo["parts"]["weights"]  # the reference copy
    assert estimate(_recipe(fx, "dpo_gpt2", "training.precompute_ref_log_probs=true"))["parts"]["other models"] == 0
    sharded = estimate(_recipe(fx), gpus=8, sharding="zero3")
    assert sharded["parts"]["optimizer"] == full["parts"]["optimizer"] / 8


# SmolLM2-1.7B: 24 layers, hidden 2048, 32 heads (kv 32, head_dim 64), intermediate 8192 (gated), vocab 49152, tied.
P_17B = 49152 * 2048 + 24 * (4 * 2048 * 2048 + 3 * 2048 * 8192 + 2 * 2048) + 2048


def test_smollm2_17b_sft_4x8192_fits_80gib_under_sdpa():
    r = _real("alpaca_gpt2", "smollm2-1.7b", "data.max_length=8192", "training.per_device_train_batch_size=4")
    est = estimate(r)
    p, tokens = est["parts"], 4 * 8192
    assert est["params"] == P_17B == 1_711_376_384 and est["attn_implementation"] == "sdpa"
    assert p["weights"] == P_17B * 2 and p["gradients"] == P_17B * 2 and p["optimizer"] == P_17B * 4
    # checkpointing (the GPU default): every layer's input + one layer recomputed
    layer = 2 * (5 * 2048 + 3 * 2048 + 2 * 2048 + 4 * 8192)
    assert p["activations"] == tokens * (2 * 2048 * 24 + layer) == 6.25 * GIB
    assert p["attention"] == tokens * 4 * 32  # a logsumexp per head: 4 MiB, not tens of GiB
    # TRL 1.12 SFT default loss_type chunked_nll: 256 tokens of fp32 logits/log-probs/grad + the head in fp32 (x2)
    assert p["logits"] == 256 * 49152 * 4 * 3 + 49152 * 2048 * 4 * 2
    assert est["total"] == pytest.approx(1.1 * sum(p.values()))
    assert 21 * GIB < est["total"] < 23 * GIB  # 21.9 GiB: fits 80 GiB (was "does NOT fit", 83.9 GiB)

    eager = estimate(_real("alpaca_gpt2", "smollm2-1.7b", "data.max_length=8192",
                           "training.per_device_train_batch_size=4", "model.attn_implementation=eager"))
    # eager keeps one layer's scores while it is recomputed: softmax in fp32 + its bf16 copy, per head, seq x seq
    assert eager["parts"]["attention"] == tokens * 6 * 32 * 8192 == 48 * GIB
    nll = estimate(_real("alpaca_gpt2", "smollm2-1.7b", "data.max_length=8192",
                         "training.per_device_train_batch_size=4", "training.loss_type=nll"))
    assert nll["parts"]["logits"] == tokens * 49152 * (2 + 4 + 4)  # bf16 logits, fp32 upcast, fp32 gradient


# Qwen2-0.5B: 24 layers, hidden 896, 14 heads, 2 kv heads (head_dim 64), intermediate 4864, q/k/v biases, vocab 151936.
P_QWEN_BODY = 151936 * 896 + 24 * (896 * 896 + 896 + 2 * (896 * 128 + 128) + 896 * 896 + 3 * 896 * 4864 + 2 * 896) + 896


def test_qwen2_05b_reward_has_no_vocabulary_logits():
    est = estimate(_real("reward_gpt2", "qwen2-0.5b"))  # batch 4 pairs x 512 tokens
    p = est["parts"]
    assert est["params"] == P_QWEN_BODY + 896  # + the 1-label score head, no lm_head
    assert p["logits"] == 0  # was ~37 GiB of fp32 logits over 151,936 tokens
    tokens = 4 * 2 * 512  # chosen and rejected
    layer = 2 * (5 * 896 + 3 * 128 + 2 * 896 + 4 * 4864)
    assert p["activations"] == tokens * (2 * 896 * 24 + layer)
    assert est["total"] < 5 * GIB  # 4.45 GiB (was 54 GiB)


def test_qwen2_05b_dpo_keeps_full_bf16_logits_and_a_reference():
    est = estimate(_real("dpo_gpt2", "qwen2-0.5b"))
    p = est["parts"]
    assert est["params"] == P_QWEN_BODY  # tied lm_head
    assert p["other models"] == P_QWEN_BODY * 2  # the frozen reference copy in bf16
    # DPO computes per-token log-probs from the full logits: bf16 logits, a log-softmax per row kept, its gradient
    assert p["logits"] == (4 * 2) * 512 * 151936 * 2 * 3
    lora = estimate(_real("dpo_gpt2_lora", "qwen2-0.5b"))
    assert lora["parts"]["other models"] == 0  # the disabled adapter is the reference


def test_qlora_keeps_the_linears_in_4_bits_and_the_rest_in_fp32():
    lora = estimate(_real("alpaca_gpt2_lora", "smollm2-1.7b"))
    qlora = estimate(_real("alpaca_gpt2_qlora", "smollm2-1.7b"))
    adapters = qlora["trainable"]
    linears = 24 * (4 * 2048 * 2048 + 3 * 2048 * 8192)
    rest = P_17B - linears  # embeddings and norms: upcast to fp32 by prepare_model_for_kbit_training
    assert qlora["parts"]["weights"] == pytest.approx(linears * (0.5 + 4 / 64) + rest * 4 + adapters * 4)
    assert lora["parts"]["weights"] == P_17B * 2 + adapters * 4  # bf16 base, fp32 adapters
    assert qlora["parts"]["optimizer"] == adapters * 8


def test_footprint_is_a_parameter_and_declared_by_every_stage():
    assert all(isinstance(s.footprint, Footprint) for s in stages.all_stages().values())
    r = _real("alpaca_gpt2", "smollm2-135m")
    scored = estimate(r, footprint=Footprint(scoring=True, logits="none"))
    assert scored["parts"]["logits"] == 0 and estimate(r)["parts"]["logits"] > 0
    grpo_recipe = _real("grpo_gpt2", "smollm2-135m")
    grpo = estimate(grpo_recipe)
    # GRPO's beta is 0: no reference
    assert grpo["seq"] == 256 + grpo_recipe.training["max_completion_length"] and grpo["parts"]["other models"] == 0
    assert estimate(_real("grpo_gpt2", "smollm2-135m", "training.beta=0.04"))["parts"]["other models"] > 0


def test_plan_cli_fits_or_advises(fx, cli):
    code, out, _ = cli("plan", "alpaca_gpt2", f"model.name_or_path={fx['model']}")
    assert code == 0 and "fits a 80 GiB GPU" in out and "optimizer" in out and "attention sdpa" in out
    code, out, _ = cli("plan", "dpo_gpt2", f"model.name_or_path={fx['model']}", "--gpu-gib", "0.001")
    assert code == 1 and "does NOT fit" in out and "precompute_ref_log_probs" in out and "peft" in out
    code, out, _ = cli("plan", "alpaca_gpt2", f"model.name_or_path={CONFIGS / 'smollm2-1.7b'}", "data.max_length=8192",
                       "training.per_device_train_batch_size=4", "model.attn_implementation=eager", "--gpu-gib", "40")
    assert code == 1 and "model.attn_implementation: sdpa" in out


def _one_line_error(err):
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("posttrain: error:") and "Traceback" not in err, err
    return lines[0]


def test_plan_never_prints_a_traceback(fx, cli, tmp_path):
    code, _, err = cli("plan", "alpaca_gpt2_lora", f"model.name_or_path={fx['model']}", "peft.target_modules=[nope]")
    assert code == 2 and "peft.target_modules" in _one_line_error(err) and "nope" in err
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    code, _, err = cli("plan", "alpaca_gpt2", f"model.name_or_path={broken}")
    assert code == 2 and "model config" in _one_line_error(err)
    unbuildable = tmp_path / "unbuildable"
    unbuildable.mkdir()
    (unbuildable / "config.json").write_text((CONFIGS / "smollm2-135m" / "config.json").read_text()
                                             .replace('"hidden_act": "silu"', '"hidden_act": "no_such_activation"'))
    code, _, err = cli("plan", "alpaca_gpt2", f"model.name_or_path={unbuildable}")
    assert code == 2 and "cannot build" in _one_line_error(err)
    code, _, err = cli("plan", "alpaca_gpt2", f"model.name_or_path={tmp_path / 'missing'}")
    assert code == 2 and _one_line_error(err)


@needs_ppo
def test_ppo_holds_a_frozen_reward_model_and_a_trained_value_model():
    """Not on this machine, both are sized as the policy: the reward model's weights once, the value model's weights,
    gradients and AdamW's two moments (4x); plus the reference copy of a full fine-tune."""
    from posttrain.plan import compute_bytes

    recipe = _real("ppo_gpt2", "smollm2-135m", "reward_model=org/not-here")
    est = estimate(recipe)
    weights = est["params"] * compute_bytes(recipe)
    assert est["parts"]["other models"] == pytest.approx(weights * (1 + 1 + 4))  # reference, reward, value
    assert "reward model org/not-here" in est["notes"] and "value model org/not-here (trained)" in est["notes"]
