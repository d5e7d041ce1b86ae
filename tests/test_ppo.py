"""PPO end to end on tiny models: a reward model from the reward stage, then PPO (full and LoRA) that logs
reward and KL, writes sample completions and saves a policy that reloads and generates."""

import json
import math

import pytest
from conftest import manifest, needs_ppo

from posttrain.checks import load_recipe
from posttrain.data.trl_rows import drop_long_prompts
from posttrain.errors import DataError, RecipeError
from posttrain.stages import ppo

pytestmark = needs_ppo

LONG_PROMPTS = 2  # prompts over data.max_length, which must be dropped and counted


@pytest.fixture(scope="module")
def reward_dir(fx, tmp_path_factory):
    """A reward model trained by posttrain's reward stage on the tiny preference data."""
    from posttrain.cli import main

    out = tmp_path_factory.mktemp("reward") / "run"
    code = main(["train", "reward_gpt2", f"model.name_or_path={fx['model']}", f"data.train={fx['preference']}",
                 "data.eval=null", "training.eval_strategy=no", "training.max_steps=3", "training.logging_steps=1",
                 f"output_dir={out}"])
    assert code == 0
    return out


@pytest.fixture(scope="module")
def prompts(fx, tmp_path_factory):
    rows = [json.loads(line) for line in fx["prompts"].read_text().splitlines()]
    rows += [{"prompt": "Count every word: " + "apple banana " * 40, "answer": "80"}] * LONG_PROMPTS
    path = tmp_path_factory.mktemp("ppo_data") / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _args(fx, reward_dir, prompts, out, *extra):
    return [f"model.name_or_path={fx['model']}", f"reward_model={reward_dir}", f"data.train={prompts}",
            "data.eval=null", "data.max_length=32", f"output_dir={out}", "training.total_episodes=8",
            "training.response_length=8", "training.learning_rate=1e-3", *extra]



def _generate(model, tok):
    ids = tok("Add 2 and 3. Answer: ", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] > ids["input_ids"].shape[1]


def test_recipes_hold_the_seed_settings_and_config_fills_what_ppo_needs():
    r = load_recipe("ppo_gpt2")
    t = r.training
    assert (t["learning_rate"], t["per_device_train_batch_size"], t["num_ppo_epochs"]) == (1e-6, 4, 4)
    assert (t["kl_coef"], t["cliprange"]) == (0.1, 0.2) and r.extra["reward_model"] == "runs/reward_gpt2"
    cfg = ppo.config(r)
    assert cfg.stop_token == "eos" and cfg.save_only_model and cfg.world_size == 1
    assert cfg.reward_model_path == "runs/reward_gpt2" and cfg.sft_model_path == "gpt2"
    assert ppo.config(load_recipe("ppo_gpt2", ["training.max_steps=3"])).total_episodes == 12  # 3 updates of 4
    assert ppo.config(load_recipe("ppo_gpt2", ["training.stop_token=null"])).stop_token is None
    with pytest.raises(RecipeError, match="training.reward_model_path: is set by posttrain"):
        ppo.config(load_recipe("ppo_gpt2", ["training.reward_model_path=x"]))
    lora = load_recipe("ppo_gpt2_lora")
    assert lora.peft == {"r": 16, "lora_alpha": 32, "target_modules": "all-linear"}
    assert lora.training["kl_coef"] == 0.1 and lora.output_dir == "runs/ppo_gpt2_lora"


def test_prompts_tokenize_to_input_ids_only(tokenizer):
    from datasets import Dataset

    chat = Dataset.from_list([{"prompt": [{"role": "user", "content": "2+2?"}]}])
    def tokenize_prompts(ds, tok, max_length):
        stats = {}
        ds = drop_long_prompts(ds, tok, max_length, stats, "train", keep_ids=True)
        return ds, stats["dropped_over_max_length"]

    ds, dropped = tokenize_prompts(chat, tokenizer, 64)
    assert ds.column_names == ["input_ids"] and dropped == 0
    assert tokenizer.decode(ds[0]["input_ids"]).endswith("<|im_start|>assistant\n")  # the generation prompt
    text = Dataset.from_list([{"prompt": "Add 1 and 2. "}, {"prompt": "word " * 50}])
    ds, dropped = tokenize_prompts(text, tokenizer, 16)
    assert dropped == 1 and ds[0]["input_ids"] == tokenizer("Add 1 and 2. ")["input_ids"]
    plain = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    plain.chat_template = None
    with pytest.raises(DataError, match="no chat template"):
        tokenize_prompts(chat, plain, 64)


@pytest.mark.slow
def test_build_wires_four_distinct_models_or_three_with_lora(fx, reward_dir, prompts, tmp_path):
    recipe = load_recipe("ppo_gpt2", _args(fx, reward_dir, prompts, tmp_path / "full"))
    trainer, stats = ppo.build(recipe)
    tok = trainer.processing_class
    assert tok.padding_side == "left" and tok.pad_token_id != tok.eos_token_id
    assert trainer.train_dataset.column_names == ["input_ids"]
    assert stats["train"]["dropped_over_max_length"] == LONG_PROMPTS and len(trainer.train_dataset) == 24
    models = [trainer.policy_model, trainer.ref_model, trainer.reward_model, trainer.value_model]
    assert len({id(m) for m in models}) == 4  # value model: a separate copy of the reward model
    for m in models:  # every embedding holds the added pad token
        assert m.get_input_embeddings().weight.shape[0] == len(tok)

    lora = load_recipe("ppo_gpt2_lora", _args(fx, reward_dir, prompts, tmp_path / "lora"))
    trainer, _ = ppo.build(lora)
    assert trainer.ref_model is None and trainer.is_peft_model  # reference = policy with the adapter off


@pytest.mark.slow
def test_ppo_logs_reward_and_kl_writes_samples_and_saves_the_policy(fx, reward_dir, prompts, tmp_path, cli):
    out = tmp_path / "ppo"
    # stop_token null: TRL then sets the policy's generation eos to None; the saved model must still stop at EOS.
    code, _, err = cli("train", "ppo_gpt2", *_args(fx, reward_dir, prompts, out, "training.stop_token=null"))
    assert code == 0, err
    m = manifest(out)
    assert m["status"] == "finished" and m["stage"] == "ppo"
    assert m["metrics"]["global_step"] == 2  # total_episodes 8 / batch 4
    for key in ("last_logged_score", "last_logged_kl", "first_logged_score", "sample_mean_score"):
        assert math.isfinite(m["metrics"][key]), key
    assert m["data"]["train"] == {"rows": 26, "kept": 24, "dropped_empty_field": 0,
                                  "dropped_over_max_length": LONG_PROMPTS}
    logs = json.loads((out / "log_history.json").read_text())
    assert [e["step"] for e in logs if "objective/kl" in e] == [1, 2]

    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 4 and all(s["prompt"].startswith("Add ") and "completion" in s for s in samples)

    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with safe_open(out / "model.safetensors", "pt") as f:  # the policy alone, not the policy+value wrapper
        keys = list(f.keys())
    assert keys and not any(k.startswith(("policy.", "value_model.", "module.")) for k in keys)
    model, tok = AutoModelForCausalLM.from_pretrained(out), AutoTokenizer.from_pretrained(out)
    assert type(model).__name__ == "GPT2LMHeadModel" and tok.pad_token == "<|pad|>"
    assert model.generation_config.eos_token_id == tok.eos_token_id
    before = AutoModelForCausalLM.from_pretrained(fx["model"])
    assert not model.transformer.h[0].attn.c_attn.weight.equal(before.transformer.h[0].attn.c_attn.weight)
    _generate(model, tok)


@pytest.mark.slow
def test_ppo_lora_saves_an_adapter_that_reloads(fx, reward_dir, prompts, tmp_path, cli):
    out = tmp_path / "ppo_lora"
    # with an eval set: TRL prints sample generations from it, and samples.jsonl takes its first prompts
    code, _, err = cli("train", "ppo_gpt2_lora", *_args(fx, reward_dir, prompts, out, f"data.eval={fx['prompts']}",
                                                           "data.eval_split=train"))
    assert code == 0, err
    m = manifest(out)
    assert m["status"] == "finished" and "last_logged_kl" in m["metrics"]
    assert m["data"]["eval"]["kept"] == 24 and 0 < m["model"]["trainable_parameters"] < m["model"]["parameters"]
    assert (out / "adapter_config.json").exists() and not (out / "model.safetensors").exists()
    first_eval = json.loads(fx["prompts"].read_text().splitlines()[0])["prompt"]
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 4 and samples[0]["prompt"] == first_eval
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoTokenizer

    _generate(AutoPeftModelForCausalLM.from_pretrained(out), AutoTokenizer.from_pretrained(out))


def test_wrong_data_shape_and_resume_exit_2(fx, tmp_path, cli):
    out = tmp_path / "bad"
    args = [f"model.name_or_path={fx['model']}", f"reward_model={fx['model']}", f"data.train={fx['alpaca']}",
            "data.eval=null", f"output_dir={out}"]
    code, _, err = cli("train", "ppo_gpt2", *args)
    last = err.strip().splitlines()[-1]
    assert code == 2 and last.startswith("posttrain: error: ") and "Traceback" not in err
    assert "format 'prompt' needs a column 'prompt'" in last and "instruction" in last
    assert not out.exists()  # refused before the run dir (posttrain.preflight)

    code, _, err = cli("train", "ppo_gpt2", *args, f"data.train={fx['prompts']}", "data.max_length=4", "--overwrite")
    assert code == 2 and "0 prompts fit data.max_length=4, fewer than one PPO batch" in err

    code, _, err = cli("train", "ppo_gpt2", *args, f"data.train={fx['prompts']}", "--resume")
    assert code == 2 and "ppo runs cannot be resumed" in err


@pytest.mark.parametrize("overrides,expected", [
    (["training.whiten_rewards=true", "training.per_device_train_batch_size=2"],
     "training.whiten_rewards: whitening needs at least 8 rows per mini-batch and process; this recipe has 2"),
    (["training.num_mini_batches=3"], "training.num_mini_batches: 3 does not divide the batch of 4 prompts"),
])
def test_ppo_batch_rules_are_one_line_at_validate(cli, overrides, expected):
    """TRL's PPOTrainer asserts these in its constructor, after every model loaded; posttrain says them first."""
    code, _, err = cli("validate", "ppo_gpt2", *overrides, "--no-data")
    assert code == 2 and len(err.strip().splitlines()) == 1 and expected in err, err
