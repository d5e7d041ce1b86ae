"""`model.trainable`: full-weight training of the parameters whose names match, everything else frozen."""

import re

import pytest

from posttrain.checks import load_recipe

LAYER1 = r"transformer\.h\.1\..*"


def _args(fx, tmp_path, *extra):
    return [f"model.name_or_path={fx['model']}", f"data.train={fx['alpaca']}", f"output_dir={tmp_path / 'run'}",
            *extra]


@pytest.mark.slow
@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "reentrant_checkpointing"])
def test_only_the_matching_tensors_change_and_the_saved_model_is_whole(fx, tmp_path, cli, checkpointing):
    """With reentrant activation checkpointing too (frozen embeddings: the checkpointed layers' inputs need grad,
    which transformers arranges)."""
    import torch
    from transformers import AutoModelForCausalLM

    code, _, err = cli("train", "alpaca_gpt2", *_args(
        fx, tmp_path, f"model.trainable=['{LAYER1}', 'transformer\\.ln_f\\..*']", "training.max_steps=3",
        *(["training.activation_checkpointing=true", "training.activation_checkpointing_kwargs={use_reentrant: true}"]
          if checkpointing else []),
        "training.learning_rate=1e-2", "training.warmup_steps=0", "training.eval_strategy=no", "data.eval_fraction=null",
        "training.gradient_accumulation_steps=1", "training.save_steps=100"))
    assert code == 0, err
    base = AutoModelForCausalLM.from_pretrained(fx["model"]).state_dict()
    trained = AutoModelForCausalLM.from_pretrained(tmp_path / "run").state_dict()
    assert trained.keys() == base.keys()  # the whole model is saved, not the trained part
    pattern = re.compile(rf"{LAYER1}|transformer\.ln_f\..*")
    changed = {k for k in base if not torch.equal(base[k], trained[k])}
    matching = {k for k in base if pattern.fullmatch(k) and base[k].is_floating_point()}
    assert matching and changed == matching  # bitwise: every matching tensor moved, every other is equal


def test_validate_counts_what_trains_and_refuses_a_pattern_matching_nothing(fx, tmp_path, cli):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(fx["model"])
    n = sum(p.numel() for k, p in model.named_parameters() if re.fullmatch(LAYER1, k))
    total = sum(p.numel() for p in model.parameters())
    code, out, err = cli("validate", "alpaca_gpt2", *_args(fx, tmp_path, f"model.trainable=['{LAYER1}']"), "--no-data")
    assert code == 0, err
    assert f"ok: model.trainable: {n:,} of {total:,} parameters (12 tensors," in out

    typo = "model.trainable=['transformer\\.h\\.1\\.mlp\\.c_fcc\\.weight']"
    code, _, err = cli("validate", "alpaca_gpt2", *_args(fx, tmp_path, typo), "--no-data")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert ("model.trainable: 'transformer\\\\.h\\\\.1\\\\.mlp\\\\.c_fcc\\\\.weight' matches no parameter of model" in err
            and "did you mean 'transformer.h.1.mlp.c_fc.weight'?" in err and "named like transformer.wte.weight" in err)
    # the tied output layer is the input embedding: naming either selects it
    code, out, err = cli("validate", "alpaca_gpt2", *_args(fx, tmp_path, "model.trainable=['lm_head\\.weight']"), "--no-data")
    assert code == 0 and "(1 tensors" in out, err


@pytest.mark.parametrize("extra,expected", [
    (["peft={r: 4, lora_alpha: 8, target_modules: [c_attn]}"], "cannot combine with `peft`"),
    ([], "'[' is not a valid regular expression"),
])
def test_trainable_refusals(fx, tmp_path, cli, extra, expected):
    pattern = "['transformer\\.h\\..*']" if extra else "['[']"
    code, _, err = cli("validate", "alpaca_gpt2", *_args(fx, tmp_path, f"model.trainable={pattern}", *extra),
                       "--no-data")
    assert code == 2 and "model.trainable: " in err and expected in err, err


def test_plan_counts_gradients_and_optimizer_for_the_trainable_parameters_only(fx):
    from posttrain.plan import estimate

    full = estimate(load_recipe("alpaca_gpt2", [f"model.name_or_path={fx['model']}"]))
    part = estimate(load_recipe("alpaca_gpt2", [f"model.name_or_path={fx['model']}", f"model.trainable=['{LAYER1}']"]))
    assert part["params"] == full["params"] > part["trainable"] > 0
    assert part["parts"]["weights"] == full["parts"]["weights"]  # every weight is still held
    assert part["parts"]["gradients"] == part["trainable"] * 2 and part["parts"]["optimizer"] == part["trainable"] * 4
