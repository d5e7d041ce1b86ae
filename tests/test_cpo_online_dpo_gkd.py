"""CPO (and SimPO through it), online DPO, GKD and distill (TRL's stable DistillationTrainer): each trains from its
shipped recipe on the tiny fixture, is listed, planned and checked like the other stages, and chains after sft in a
pipeline (GKD takes the upstream policy as its teacher). Also: DPO + QLoRA + peft.modules_to_save trains (it crashed
in TRL's bf16 cast)."""

import json
from pathlib import Path

import pytest
import yaml

RECIPES = Path(__file__).resolve().parent.parent / "posttrain" / "recipes"
NEW_RECIPES = ("cpo_gpt2", "cpo_gpt2_simpo", "online_dpo_gpt2", "gkd_gpt2", "distill_gpt2")
FAST = ["training.max_steps=2", "training.logging_steps=1", "training.save_steps=2", "training.eval_steps=2",
        "training.per_device_train_batch_size=2", "training.per_device_eval_batch_size=2",
        "training.gradient_accumulation_steps=1", "training.learning_rate=1e-3"]


def _manifest(out):
    return json.loads((out / "manifest.json").read_text())


def _overrides(fx, recipe, out, teacher=None):
    """The shipped recipe with the tiny model and data in place of gpt2 and the hub sets."""
    base = [f"model.name_or_path={fx['model']}", f"output_dir={out}", *FAST]
    if recipe.startswith("cpo"):
        return base + [f"data.train={fx['preference']}", "data.split=train", f"data.eval={fx['preference']}",
                       "data.eval_split=train[:4]"]
    if recipe == "online_dpo_gpt2":
        # a reward model (the tiny model with a fresh scalar head) and a rule reward that reads the answer column
        return base + [f"data.train={fx['prompts']}", "data.split=train", "training.max_new_tokens=4",
                       f"rewards=[{{model: {fx['model']}}}, {{rule: exact_match, column: answer}}]"]
    if recipe == "distill_gpt2":
        return base + [f"teacher_model={teacher}", f"data.train={fx['prompts']}", "data.split=train",
                       "data.eval_fraction=0.2", "training.max_completion_length=4"]
    return base + [f"teacher_model={teacher}", f"data.train={fx['alpaca']}", "data.split=train",
                   "data.eval_fraction=0.1", "training.max_new_tokens=4", "training.lmbda=0.5"]


def test_new_stages_are_listed_and_their_recipes_validate(cli):
    code, out, err = cli("recipes")
    assert code == 0, err
    listed = {words[0]: words[1] for words in map(str.split, out.splitlines()) if len(words) > 1}
    assert {r: listed.get(r) for r in NEW_RECIPES} == {"cpo_gpt2": "cpo", "cpo_gpt2_simpo": "cpo",
                                                      "online_dpo_gpt2": "online_dpo", "gkd_gpt2": "gkd",
                                                      "distill_gpt2": "distill"}
    assert {"sft_distill_gpt2", "sft_simpo_gpt2", "sft_online_dpo_gpt2"} <= set(listed)
    for recipe in NEW_RECIPES:
        code, _, err = cli("validate", recipe, "--no-data")
        assert code == 0, (recipe, err)
    resolved = yaml.safe_load(cli("validate", "cpo_gpt2_simpo", "--no-data")[1].split("\nok:")[0])
    assert resolved["training"]["loss_type"] == "simpo" and resolved["training"]["cpo_alpha"] == 0.0


@pytest.mark.parametrize("argv, key, words", [
    (("cpo_gpt2", "training.simpo_gamma=0.8"), "training.simpo_gamma", "read only by loss_type simpo"),
    (("online_dpo_gpt2", "data.eval=x.jsonl"), "data.eval", "no evaluation"),
    (("online_dpo_gpt2", "training.reward_model_path=runs/r"), "training.reward_model_path", "rewards:"),
    (("gkd_gpt2", "data.train_on=all"), "data.train_on", "last_assistant"),
    (("gkd_gpt2", "training.packing=true"), "training.packing", "cannot pack"),
    (("gkd_gpt2", "training.teacher_model_name_or_path=gpt2"), "training.teacher_model_name_or_path",
     "top-level `teacher_model`"),
    # the knobs gkd and distill name differently, with TRL defaults that differ: the distill name, and both defaults
    (("distill_gpt2", "training.max_new_tokens=64"), "training.max_new_tokens",
     "`training.max_completion_length` (its TRL default is 512 tokens; gkd's max_new_tokens defaults to 128)"),
    (("distill_gpt2", "training.lmbda=0.5"), "training.lmbda", "every distill step is on-policy"),
])
def test_new_stages_refuse_what_they_cannot_honour(cli, argv, key, words):
    code, _, err = cli("validate", *argv, "--no-data")
    assert code == 2 and key in err and words in err, err


def test_plan_counts_what_each_new_stage_holds(fx, cli):
    code, out, err = cli("plan", "cpo_gpt2", f"model.name_or_path={fx['model']}")
    assert code == 0 and "(cpo)" in out and "other models" in out and "reference" not in out, out + err
    code, out, err = cli("plan", "online_dpo_gpt2", f"model.name_or_path={fx['model']}",
                         f"rewards=[{{model: {fx['model']}}}]")
    assert code == 0 and "reference copy of the policy" in out and f"reward model {fx['model']}" in out, out + err
    assert f"x {256 + 64} tokens" in out  # the prompt bound (data.max_length) + max_new_tokens
    code, out, err = cli("plan", "gkd_gpt2", f"model.name_or_path={fx['model']}", f"teacher_model={fx['model']}")
    assert code == 0 and f"teacher {fx['model']}" in out, out + err
    code, out, err = cli("plan", "distill_gpt2", f"model.name_or_path={fx['model']}", f"teacher_model={fx['model']}")
    assert code == 0 and f"teacher {fx['model']}" in out and f"x {256 + 64} tokens" in out, out + err


def test_gkd_rows_reach_trl_with_posttrains_prompt_boundary(fx):
    """TRL's DataCollatorForChatML, fed posttrain's tokenized rows, trains exactly posttrain's response tokens
    (EOS included) and generates from exactly the prompt; a conversation's prompt ends at its last assistant turn."""
    from datasets import Dataset
    from trl.experimental.utils import DataCollatorForChatML

    from posttrain.data.collator import IGNORE_INDEX, tokenize_dataset
    from posttrain.models import load_tokenizer
    from posttrain.stages.gkd import TRAIN_ON, for_chatml_collator

    tokenizer = load_tokenizer({"name_or_path": str(fx["model"])})
    rows = {"alpaca": [json.loads(x) for x in fx["alpaca"].read_text().splitlines()[:6]],
            "messages": [json.loads(x) for x in fx["messages"].read_text().splitlines()[:6]]}
    for fmt, data in rows.items():
        ours, _ = tokenize_dataset(Dataset.from_list(data), fmt, tokenizer, 128, fmt, train_on=TRAIN_ON)
        batch = DataCollatorForChatML(tokenizer=tokenizer, max_length=128)(list(for_chatml_collator(ours, tokenizer)))
        for i, row in enumerate(ours):
            n = len(row["input_ids"])
            assert batch["input_ids"][i, -n:].tolist() == row["input_ids"]  # left-padded, same ids
            assert batch["labels"][i, -n:].tolist() == row["labels"]
            n_prompt = next(k for k, lab in enumerate(row["labels"]) if lab != IGNORE_INDEX)
            prompt = batch["prompts"][i][batch["prompt_attention_mask"][i].bool()].tolist()
            assert prompt == row["input_ids"][:n_prompt]
        if fmt == "messages":  # multi-turn rows: only the last assistant turn is distilled
            last = [m for m in data[0]["messages"] if m["role"] == "assistant"][-1]["content"]
            trained = [t for t in ours[0]["labels"] if t != IGNORE_INDEX]
            assert tokenizer.decode(trained).startswith(last)


@pytest.mark.slow
@pytest.mark.parametrize("recipe", [pytest.param(r, marks=[pytest.mark.both_ends] if r != "cpo_gpt2_simpo" else [])
                                    for r in NEW_RECIPES])
def test_new_stage_trains_from_its_shipped_recipe(fx, tmp_path, cli, recipe, request):
    out = tmp_path / recipe
    # gkd, distill: a teacher of another architecture with the same vocabulary (the tiny Llama below), so there is a gap
    teacher = request.getfixturevalue("llama64") if recipe in ("gkd_gpt2", "distill_gpt2") else None
    code, stdout, err = cli("train", recipe, *_overrides(fx, recipe, out, teacher))
    assert code == 0, err
    m = _manifest(out)
    stage = recipe.split("_gpt2")[0]
    assert m["status"] == "finished" and m["stage"] == stage and m["metrics"]["global_step"] == 2
    assert (out / "model.safetensors").is_file()
    metrics = m["metrics"]
    if stage == "cpo":
        assert 0 <= metrics["eval_rewards/accuracies"] <= 1 and "nll_loss" in metrics
        assert "eval_rewards/accuracies=" in stdout  # the headline the stage declares
    elif stage == "online_dpo":
        assert "objective/scores" in metrics and "objective/kl" in metrics and "objective/scores=" in stdout
    else:
        assert metrics["eval_loss"] > 0 and metrics["train_loss"] > 0  # the student is not the teacher


@pytest.mark.slow
def test_new_stages_chain_after_sft(fx, tmp_path, cli):
    fast = {"max_steps": 2, "logging_steps": 1, "save_steps": 2, "eval_strategy": "no", "learning_rate": 1e-3,
            "per_device_train_batch_size": 2, "gradient_accumulation_steps": 1}
    pref = {"train": str(fx["preference"]), "split": "train", "eval": None}
    # a user's online DPO recipe with a rule reward: the pipeline adds the reward stage's model beside it
    odpo_recipe = tmp_path / "odpo.yaml"
    odpo_recipe.write_text(f"extends: {RECIPES / 'online_dpo_gpt2.yaml'}\n"
                           "rewards: [{rule: length_penalty, target: 4}]\n")
    doc = {"output_root": str(tmp_path / "pipe"), "stages": {
        "sft": {"recipe": "alpaca_gpt2", "model.name_or_path": str(fx["model"]),
                "data": {"train": str(fx["alpaca"]), "eval_fraction": None}, "training": fast},
        "reward": {"recipe": "reward_gpt2", "after": "sft", "data": pref, "training": fast},
        "simpo": {"recipe": "cpo_gpt2_simpo", "after": "sft", "data": pref, "training": fast},
        "online_dpo": {"recipe": str(odpo_recipe), "after": ["sft", "reward"],
                       "data": {"train": str(fx["prompts"]), "split": "train"},
                       "training": {**fast, "max_new_tokens": 4}},
        "gkd": {"recipe": "gkd_gpt2", "after": "sft", "model.name_or_path": str(fx["model"]),
                "data": {"train": str(fx["alpaca"]), "split": "train", "eval_fraction": None},
                "training": {**fast, "max_new_tokens": 4}},
    }}
    path = tmp_path / "pipe.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    code, out, err = cli("pipeline", path)
    assert code == 0, err
    root = tmp_path / "pipe"

    def resolved(stage):
        return yaml.safe_load((root / stage / "recipe.resolved.yaml").read_text())

    assert resolved("simpo")["model"]["name_or_path"] == str(root / "sft")
    odpo = resolved("online_dpo")
    assert odpo["model"]["name_or_path"] == str(root / "sft")
    assert odpo["rewards"] == [{"rule": "length_penalty", "target": 4}, {"model": str(root / "reward")}]
    gkd = resolved("gkd")  # the upstream policy is the teacher; the student stays the entry's model
    assert gkd["teacher_model"] == str(root / "sft") and gkd["model"]["name_or_path"] == str(fx["model"])
    for stage in ("simpo", "online_dpo", "gkd"):
        assert _manifest(root / stage)["status"] == "finished", stage
    assert "objective/scores" in out and "rewards/margins" in out


@pytest.fixture(scope="module")
def llama64(fx, tmp_path_factory):
    """A tiny Llama 64 wide (bitsandbytes' CPU 4-bit kernels need layers at least 64 wide) with the fixture's
    tokenizer, and the llama module names (embed_tokens, lm_head) that recipes name in modules_to_save."""
    import shutil

    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("llama64")
    tok = AutoTokenizer.from_pretrained(fx["model"])
    for f in fx["model"].iterdir():
        if "token" in f.name or f.name.endswith((".jinja", ".txt")) or f.name == "vocab.json":
            shutil.copy(f, out / f.name)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                      bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)
    LlamaForCausalLM(cfg).save_pretrained(out)
    return out


def test_gkd_refuses_a_teacher_with_another_vocabulary_at_validate(fx, tmp_path, cli):
    from transformers import GPT2Config

    other = tmp_path / "other_vocab"
    GPT2Config(vocab_size=1000, n_embd=32, n_layer=1, n_head=2).save_pretrained(other)
    code, _, err = cli("validate", "gkd_gpt2", f"model.name_or_path={fx['model']}", f"teacher_model={other}",
                       "--no-data")
    assert code == 2 and "teacher_model" in err and "vocabulary of 1000 tokens" in err, err


@pytest.mark.slow
def test_dpo_qlora_with_full_embedding_and_head_copies_trains(llama64, fx, tmp_path, cli):
    """TRL's DPOTrainer casts every trainable parameter of a quantized model to bf16, the full modules_to_save
    copies too; without autocast (CPU) the bf16 lm_head copy then met fp32 hidden states and the first step died
    (`expected m1 and m2 to have the same dtype, float != BFloat16`)."""
    out = tmp_path / "dpo_qlora"
    code, _, err = cli("train", "dpo_gpt2_lora", f"model.name_or_path={llama64}", f"data.train={fx['preference']}",
                       "data.split=train", "data.eval=null", f"output_dir={out}", *FAST, "training.eval_strategy=no",
                       "quantization={load_in_4bit: true}", "peft.target_modules=all-linear",
                       "peft.modules_to_save=[embed_tokens, lm_head]")
    assert code == 0, err
    m = _manifest(out)
    assert m["status"] == "finished" and m["model"]["quantized"] == "4bit" and m["metrics"]["global_step"] == 2
    from safetensors import safe_open

    with safe_open(str(out / "adapter_model.safetensors"), "pt") as f:
        saved = [k for k in f.keys() if "lm_head" in k or "embed_tokens" in k]
    assert saved  # the full copies are part of the adapter
