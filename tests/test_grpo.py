"""grpo/rloo on a tiny model: rule rewards + a reward model, full and LoRA, resume; rule reward values;
bad `rewards:` sections exit 2 naming the key."""

import json

import pytest
from conftest import manifest

from posttrain.errors import RecipeError
from posttrain.rewards import ExactMatch, LengthPenalty, parse_rewards

FAST = ["training.max_steps=3", "training.logging_steps=1", "training.num_generations=2",
        "training.per_device_train_batch_size=4", "training.max_completion_length=8", "training.save_steps=1",
        "data.column_map=null", "data.split=train", "data.name=null"]


@pytest.fixture(scope="module")
def reward_model(fx, tmp_path_factory):
    """A seq-cls reward model (random score head) with its tokenizer, made from the tiny model."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = tmp_path_factory.mktemp("rm") / "tiny_rm"
    AutoModelForSequenceClassification.from_pretrained(fx["model"], num_labels=1).save_pretrained(out)
    AutoTokenizer.from_pretrained(fx["model"]).save_pretrained(out)
    return out


def _args(fx, out, rewards, *extra):
    return [f"model.name_or_path={fx['model']}", f"data.train={fx['prompts']}", f"output_dir={out}",
            f"rewards={rewards}", *FAST, *extra]



def _generate(model, tokenizer):
    ids = tokenizer("Add 2 and 3. Answer: ", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    assert out.shape[1] > ids["input_ids"].shape[1]


@pytest.mark.slow
@pytest.mark.both_ends
def test_grpo_mixed_rewards_trains_saves_and_reloads(fx, reward_model, tmp_path, cli):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "grpo"
    rewards = f"[{{rule: exact_match, column: answer}}, {{model: {reward_model}, weight: 0.5}}, " \
              "{rule: length_penalty, target: 4}]"
    code, _, err = cli("train", "grpo_gpt2", *_args(fx, out, rewards, "training.learning_rate=1e-2"))
    assert code == 0, err
    m = manifest(out)
    assert m["status"] == "finished" and m["stage"] == "grpo" and m["metrics"]["global_step"] == 3
    assert m["data"]["train"] == {"rows": 24, "kept": 24, "dropped_empty_field": 0, "dropped_over_max_length": 0}
    metrics = m["metrics"]
    em, rm, lp = (metrics[f"rewards/{n}/mean"] for n in ("exact_match", "tiny_rm", "length_penalty"))
    assert 0.0 <= em <= 1.0 and -1.0 <= lp <= 0.0 and rm != 0.0
    assert metrics["reward/mean"] == pytest.approx(em + 0.5 * rm + lp, abs=1e-4)  # weights reached TRL
    logged = [e for e in json.loads((out / "log_history.json").read_text()) if "rewards/tiny_rm/mean" in e]
    assert len(logged) == 3

    model, tok = AutoModelForCausalLM.from_pretrained(out), AutoTokenizer.from_pretrained(out)
    before = AutoModelForCausalLM.from_pretrained(fx["model"])
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, before.get_parameter(n))]
    assert changed, "the policy did not move"
    _generate(model, tok)


@pytest.mark.slow
def test_grpo_lora_saves_adapter_that_reloads(fx, reward_model, tmp_path, cli):
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoTokenizer

    out = tmp_path / "grpo_lora"
    code, _, err = cli("train", "grpo_gpt2", *_args(fx, out, f"[{reward_model}, {{rule: exact_match, column: answer}}]",
                                                    "peft={r: 4, lora_alpha: 8, target_modules: [c_attn, c_proj]}",
                                                    "training.max_steps=2"))
    assert code == 0, err
    m = manifest(out)
    assert m["status"] == "finished" and 0 < m["model"]["trainable_parameters"] < m["model"]["parameters"]
    assert "rewards/tiny_rm/mean" in m["metrics"] and "rewards/exact_match/mean" in m["metrics"]
    assert (out / "adapter_config.json").exists() and not (out / "model.safetensors").exists()
    _generate(AutoPeftModelForCausalLM.from_pretrained(out), AutoTokenizer.from_pretrained(out))


@pytest.mark.slow
@pytest.mark.both_ends
def test_rloo_trains_and_evaluates(fx, tmp_path, cli):
    out = tmp_path / "rloo"
    code, _, err = cli("train", "rloo_gpt2", *_args(fx, out, "[{rule: length_penalty, target: 2, weight: 2}]",
                                                    "training.max_steps=2", "data.eval_fraction=0.25",
                                                    "training.per_device_eval_batch_size=4"))
    assert code == 0, err
    m = manifest(out)
    assert m["status"] == "finished" and m["stage"] == "rloo" and m["metrics"]["global_step"] == 2
    assert m["data"]["train"]["kept"] == 18 and m["data"]["eval"]["kept"] == 6
    lp = m["metrics"]["rewards/length_penalty/mean"]
    assert -1.0 <= lp < 0.0 and m["metrics"]["reward/mean"] == pytest.approx(2 * lp, abs=1e-4)
    assert -1.0 <= m["metrics"]["eval_rewards/length_penalty/mean"] <= 0.0
    assert (out / "model.safetensors").exists()


class _Crash(Exception):
    pass


@pytest.mark.slow
def test_grpo_resumes_from_checkpoint(fx, tmp_path, cli, monkeypatch):
    import dataclasses

    from transformers import TrainerCallback

    from posttrain import stages
    from posttrain.stages import grpo

    class CrashAt2(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 2:
                raise _Crash()

    real_build = grpo.build

    def crashing_build(recipe, *a):
        trainer, stats = real_build(recipe, *a)
        trainer.add_callback(CrashAt2())
        return trainer, stats

    out = tmp_path / "resume"
    args = _args(fx, out, "[{rule: length_penalty, target: 4}]")
    registry = stages.all_stages()
    monkeypatch.setitem(registry, "grpo", dataclasses.replace(grpo.STAGE, build=crashing_build))
    with pytest.raises(_Crash):
        cli("train", "grpo_gpt2", *args)
    monkeypatch.setitem(registry, "grpo", grpo.STAGE)
    assert manifest(out)["status"] == "failed" and (out / "checkpoint-1").is_dir()
    code, _, err = cli("train", "grpo_gpt2", *args, "--resume")
    assert code == 0, err
    m = manifest(out)
    assert m["resumed_from"] == "checkpoint-1" and m["metrics"]["global_step"] == 3 and m["status"] == "finished"


@pytest.mark.parametrize("extra,expected", [
    (["rewards=[{rule: exact_match, column: solution}]"], "reward exact_match reads column 'solution'"),
    (["rewards=[{rule: length_penalty, target: 4}]", "data.max_length=2"], "no prompt fits data.max_length=2"),
], ids=["missing-data-column", "prompts-too-long"])
def test_data_problems_exit_2_before_any_model_loads(fx, tmp_path, cli, monkeypatch, extra, expected):

    from posttrain.stages import common

    monkeypatch.setattr(common, "load_causal_lm", lambda *a, **k: pytest.fail("loaded the policy"))
    code, _, err = cli("train", "grpo_gpt2", *_args(fx, tmp_path / "bad", "[]", *extra))
    assert code == 2 and expected in err, err


# ---------------------------------------------------------------------------------------------
# Rule rewards


@pytest.mark.parametrize("completion,reference,score", [
    ("17", "17", 1.0),
    ("  17 apples and more", " 17 ", 1.0),
    ("17.", "17", 1.0),
    ("171", "17", 0.0),
    ("17_x", "17", 0.0),
    ("it is 17", "17", 0.0),
    ("", "17", 0.0),
    ([{"role": "assistant", "content": "17\n"}], "17", 1.0),  # conversational completion
    ("17", None, None),
    ("17", "  ", None),
    (17, 17, 1.0),
])
def test_exact_match_values(completion, reference, score):
    assert ExactMatch("answer").score(completion, reference) == score


def test_exact_match_with_pattern_and_as_trl_calls_it():
    gsm = ExactMatch("answer", r"####\s*(\S+)")
    ref = "She sold 48/2 = 24 clips.\n#### 72"
    assert gsm.score("so 48+24 = 72\n#### 72", ref) == 1.0
    assert gsm.score("#### 721", ref) == 0.0
    assert gsm.score("72", ref) == 0.0  # the completion must state its answer the same way
    assert gsm.score("#### 5", "5") == 1.0  # a reference without the pattern is used whole
    rule = ExactMatch("answer", name="exact_match_2")
    assert rule.__name__ == "exact_match_2"
    assert rule(prompts=["p", "p"], completions=["3", "4"], completion_ids=[[1], [2]], answer=["3", "3"],
                trainer_state=None) == [1.0, 0.0]
    with pytest.raises(KeyError, match="no column 'answer'"):
        rule(completions=["3"], completion_ids=[[1]])


def test_length_penalty_values():
    rule = LengthPenalty(4)
    assert [rule.score(n) for n in (0, 3, 4, 5, 6, 8, 100)] == [0.0, 0.0, 0.0, -0.25, -0.5, -1.0, -1.0]
    assert rule(completions=["a", "b"], completion_ids=[[1] * 4, [1] * 7]) == [0.0, -0.75]


def test_parse_rewards_forms_names_and_weights():
    specs = parse_rewards(["runs/rm/", {"model": "other/rm", "weight": "1e-3"},
                           {"rule": "exact_match", "column": "answer", "weight": 2},
                           {"rule": "exact_match", "column": "answer", "pattern": "#### (.*)"},
                           {"rule": "length_penalty", "target": 16, "weight": -0.5}])
    assert [s.name for s in specs] == ["rm", "rm_2", "exact_match", "exact_match_2", "length_penalty"]
    assert [s.weight for s in specs] == [1.0, 0.001, 2.0, 1.0, -0.5]
    assert specs[0].model == "runs/rm/" and specs[3].options == {"column": "answer", "pattern": "#### (.*)"}
    with pytest.raises(RecipeError, match=r"^rewards: is empty"):
        parse_rewards([])


# ---------------------------------------------------------------------------------------------
# Bad `rewards:` sections and batch shapes: one line, exit 2, the dotted key, before anything loads

BAD = [
    ("empty", ["rewards=[]"], "rewards: is required for stage grpo"),
    ("not-a-list", ["rewards={model: m}"], "rewards: expected a list of reward models and/or rules"),
    ("unknown-rule", ["rewards=[m, {rule: exact, column: answer}]"],
     "rewards[1].rule: unknown rule 'exact'; did you mean 'exact_match'?"),
    ("unknown-rule-no-hint", ["rewards=[{rule: bleu}]"], "rewards[0].rule: unknown rule 'bleu' (rules: exact_match"),
    ("missing-column", ["rewards=[{rule: exact_match}]"], "rewards[0].column: is required for rule exact_match"),
    ("reserved-column", ["rewards=[{rule: exact_match, column: prompt}]"], "rewards[0].column: 'prompt' is not"),
    ("bad-weight", ["rewards=[{rule: length_penalty, target: 4, weight: heavy}]"],
     "rewards[0].weight: expected a number, got 'heavy'"),
    ("bool-weight", ["rewards=[{model: m, weight: true}]"], "rewards[0].weight: expected a number"),
    ("unknown-key-rule", ["rewards=[{rule: exact_match, column: answer, colum: x}]"],
     "rewards[0].colum: unknown key in rewards[0]; did you mean 'column'?"),
    ("unknown-key-model", ["rewards=[{model: m, target: 3}]"], "rewards[0].target: unknown key in rewards[0]"),
    ("typo-rule-key", ["rewards=[{rul: exact_match}]"],
     "rewards[0].rul: unknown key in rewards[0]; did you mean 'rule'?"),
    ("model-and-rule", ["rewards=[{model: m, rule: exact_match}]"], "rewards[0]: set either model or rule"),
    ("not-an-item", ["rewards=[m, 3]"], "rewards[1]: expected a reward model path"),
    ("bad-target", ["rewards=[{rule: length_penalty, target: 0}]"], "rewards[0].target: expected a positive number"),
    ("missing-target", ["rewards=[{rule: length_penalty}]"], "rewards[0].target: is required"),
    ("bad-pattern", ["rewards=[{rule: exact_match, column: answer, pattern: '(('}]"],
     "rewards[0].pattern: not a valid regular expression"),
    ("weights-in-training", ["training.reward_weights=[1.0, 1.0]"], "training.reward_weights: is set by posttrain"),
    ("groups-do-not-divide", ["training.num_generations=3"],
     "training.num_generations: 3 does not divide the batch of 4 completions (per_device_train_batch_size 4 x "
     "gradient_accumulation_steps 1 x 1 process)"),
    ("one-generation", ["training.num_generations=0", "data.eval_fraction=0.1"],
     "training.num_generations: must be at least 2"),
    ("groups-eval-batch", ["data.eval_fraction=0.1", "training.num_generations=2", "training.num_generations_eval=3"],
     "training.num_generations_eval: 3 does not divide the eval batch of 8 completions"),
    ("groups-generation-batch", ["training.generation_batch_size=12", "training.num_generations=8"],
     "training.num_generations: 8 does not divide the batch of 12"),
]


@pytest.mark.parametrize("recipe", ["grpo_gpt2", "rloo_gpt2"])
@pytest.mark.parametrize("overrides,expected", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_rewards_exit_2_with_one_line(cli, recipe, overrides, expected):
    code, _, err = cli("validate", recipe, *overrides, "--no-data")
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("posttrain: error: ") and "Traceback" not in err, err
    assert expected.replace("stage grpo", f"stage {recipe[:4]}") in lines[0], lines[0]


def test_shipped_recipes_validate(cli):
    for name in ("grpo_gpt2", "rloo_gpt2"):
        code, out, err = cli("validate", name, "--no-data")
        assert code == 0, err
        assert f"training -> {name[:4].upper()}Config" in out
