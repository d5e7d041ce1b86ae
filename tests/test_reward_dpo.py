"""Reward and DPO stages on preference pairs: train, save, reload, metrics; wrong data is exit 2."""

import json

import pytest
from conftest import manifest


def _args(fx, out, *extra):
    return [f"model.name_or_path={fx['model']}", f"data.train={fx['preference']}", "data.split=train",
            f"data.eval={fx['preference']}", "data.eval_split=train[:8]", f"output_dir={out}",
            "training.max_steps=4", "training.eval_steps=2", "training.save_steps=2", "training.logging_steps=1",
            "training.learning_rate=1e-3", *extra]



@pytest.mark.slow
@pytest.mark.parametrize("lora", [pytest.param(False, marks=pytest.mark.both_ends), True], ids=["full", "lora"])
def test_reward_model_trains_scores_and_reports_accuracy(fx, tmp_path, cli, lora):
    out = tmp_path / "rm"
    extra = ["peft={r: 4, lora_alpha: 8, target_modules: [c_attn]}"] if lora else []
    code, _, err = cli("train", "reward_gpt2", *_args(fx, out, *extra))
    assert code == 0, err
    m = manifest(out)
    assert m["status"] == "finished" and m["stage"] == "reward"
    assert 0 <= m["metrics"]["eval_accuracy"] <= 1 and "eval_margin" in m["metrics"]
    assert m["data"]["train"]["dropped_over_max_length"] == 0

    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(out)  # with LoRA: saved merged
    assert not (out / "adapter_config.json").exists()
    tok = AutoTokenizer.from_pretrained(out)
    assert model.config.pad_token_id == tok.pad_token_id
    batch = tok(["Add 1 and 2. Answer: 3", "Add 1 and 2. Answer: 7 and more"], return_tensors="pt", padding=True)
    with torch.no_grad():
        scores = model(**batch).logits
    assert scores.shape == (2, 1) and torch.isfinite(scores).all()


@pytest.mark.slow
def test_reward_counts_pairs_dropped_over_max_length(fx, tmp_path, cli, tokenizer):
    rows = [json.loads(line) for line in fx["preference"].read_text().splitlines()]
    lengths = sorted(max(len(tokenizer(r["prompt"] + r[k])["input_ids"]) for k in ("chosen", "rejected")) for r in rows)
    cut = lengths[len(lengths) // 2]
    out = tmp_path / "rm_short"
    short = ["training.max_steps=1", "training.eval_strategy=no", "data.eval=null"]
    code, _, err = cli("train", "reward_gpt2", *_args(fx, out, f"data.max_length={cut}", *short))
    assert code == 0, err
    dropped = manifest(out)["data"]["train"]["dropped_over_max_length"]
    assert 0 < dropped < len(rows) and manifest(out)["data"]["train"]["kept"] == len(rows) - dropped
    code, _, err = cli("train", "reward_gpt2", *_args(fx, tmp_path / "none_fit", "data.max_length=2", *short))
    assert code == 2 and "no training pair fits max_length=2" in err


@pytest.mark.slow
@pytest.mark.parametrize("variant", [pytest.param("copy", marks=pytest.mark.both_ends), "lora", "precompute",
                                     "explicit_ref"])
def test_dpo_trains_with_each_reference_kind(fx, tmp_path, cli, variant):
    out = tmp_path / f"dpo_{variant}"
    extra = {"copy": [], "lora": [], "precompute": ["training.precompute_ref_log_probs=true"],
             "explicit_ref": [f"ref_model={fx['model']}"]}[variant]
    recipe = "dpo_gpt2_lora" if variant == "lora" else "dpo_gpt2"
    if variant == "lora":
        extra.append("peft.target_modules=[c_attn]")
    code, _, err = cli("train", recipe, *_args(fx, out, *extra))
    assert code == 0, err
    m = manifest(out)
    assert m["status"] == "finished" and 0 <= m["metrics"]["eval_rewards/accuracies"] <= 1
    assert "eval_rewards/margins" in m["metrics"] and "rewards/margins" in m["metrics"]
    if variant == "lora":
        assert (out / "adapter_config.json").exists()
        assert m["model"]["trainable_parameters"] < m["model"]["parameters"]
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model, tok = AutoModelForCausalLM.from_pretrained(out), AutoTokenizer.from_pretrained(out)
        ids = tok("Add 1 and 2. Answer: ", return_tensors="pt")
        gen = model.generate(**ids, max_new_tokens=3, do_sample=False, pad_token_id=tok.eos_token_id)
        assert gen.shape[1] > ids["input_ids"].shape[1]


@pytest.mark.parametrize("recipe", ["reward_gpt2", "dpo_gpt2"])
def test_wrong_data_shape_is_a_clear_error(fx, tmp_path, cli, recipe):
    out = tmp_path / "wrong"
    code, _, err = cli("train", recipe, f"model.name_or_path={fx['model']}", f"data.train={fx['alpaca']}",
                       "data.split=train", "data.eval=null", "training.eval_strategy=no", f"output_dir={out}")
    assert code == 2 and "format 'preference' needs a column 'chosen'; columns found: instruction" in err
    code, _, err = cli("validate", recipe, "data.format=alpaca", "--no-data")
    assert code == 2 and "'alpaca' data cannot train stage" in err


def test_validate_shows_a_checked_preference_row(fx, cli):
    code, out, err = cli("validate", "dpo_gpt2", f"model.name_or_path={fx['model']}", f"data.train={fx['preference']}",
                         "data.eval=null", "data.split=train", "training.eval_strategy=no")
    assert code == 0, err
    assert "first usable row" in out and "chosen: '" in out and "rejected: '" in out


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["reward_gpt2", "dpo_gpt2"])
def test_conversational_preference_rows_train(fx, tmp_path, cli, recipe):
    rows = []
    for r in (json.loads(line) for line in fx["preference"].read_text().splitlines()):
        rows.append({"prompt": [{"role": "user", "content": r["prompt"]}],
                     "chosen": [{"role": "assistant", "content": r["chosen"]}],
                     "rejected": [{"role": "assistant", "content": r["rejected"]}]})
    data = tmp_path / "chat_pref.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "chat"
    code, _, err = cli("train", recipe, f"model.name_or_path={fx['model']}", f"data.train={data}", "data.split=train",
                       "data.eval=null", "training.eval_strategy=no", "training.max_steps=2", f"output_dir={out}")
    assert code == 0, err
    m = manifest(out)
    assert m["status"] == "finished" and m["data"]["train"]["kept"] == len(rows)
