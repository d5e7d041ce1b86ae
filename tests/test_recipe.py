"""Recipes: every shipped one validates; extends/overrides; bad recipes exit 2 naming the key."""


import pytest
from conftest import PPO_REFUSED, write_recipe

from posttrain import stages
from posttrain.checks import load_recipe
from posttrain.errors import Problems
from posttrain.recipe import RECIPES_DIR, apply_overrides, shipped_recipes
from posttrain.shipped import pipeline_stages, stage_of

SHIPPED = sorted(shipped_recipes().values())
PIPELINES = sorted((RECIPES_DIR / "pipelines").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.relative_to(RECIPES_DIR).with_suffix("").as_posix())
def test_every_shipped_recipe_validates(path):
    """... or, where the installed TRL cannot run its stage (ppo on TRL >= 1.13), is refused in that one line."""
    refusal = stages.get(stage_of(str(path))).unavailable()
    if refusal:
        with pytest.raises(Problems) as e:
            load_recipe(str(path))
        [line] = e.value.lines
        assert line.endswith(f": stage: {refusal.removeprefix('stage ')}"), line
        return
    recipe = load_recipe(str(path))
    assert recipe.output_dir and recipe.model["name_or_path"]
    stages.get(recipe.stage).make_config(recipe)  # the TRL config accepts the settings too


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: p.stem)
def test_every_shipped_pipeline_validates(path):
    from posttrain.pipeline import load_pipeline

    refusals = {stages.get(s).unavailable() for s in pipeline_stages(path)} - {None}
    if refusals:  # ... or is refused in those lines, before any stage trains
        with pytest.raises(Problems) as e:
            load_pipeline(str(path))
        assert all(any(line.endswith(r.removeprefix("stage ")) for r in refusals) for line in e.value.lines), e.value
        return
    _, root, chain = load_pipeline(str(path))
    assert chain and all(s.recipe.output_dir.startswith(root) for s in chain)
    for s in chain:
        stages.get(s.recipe.stage).make_config(s.recipe)


def test_seed_settings_and_inheritance():
    base = load_recipe("alpaca_gpt2")
    t = base.training
    assert (t["learning_rate"], t["per_device_train_batch_size"], t["gradient_accumulation_steps"]) == (2e-4, 4, 4)
    assert (t["num_train_epochs"], t["warmup_steps"], t["max_grad_norm"]) == (3, 100, 1.0)
    assert (t["logging_steps"], t["eval_steps"], t["save_steps"]) == (10, 100, 500)
    assert base.data["max_length"] == 512 and base.data["eval_fraction"] == 0.1 and base.peft is None
    lora = load_recipe("alpaca_gpt2_lora")
    assert lora.peft["r"] == 16 and lora.training["num_train_epochs"] == 3  # inherited
    q = load_recipe("alpaca_gpt2_qlora")
    assert q.quantization["load_in_4bit"] and q.peft["target_modules"] == "all-linear"
    assert q.output_dir == "runs/alpaca_gpt2_qlora"


def test_overrides_parse_yaml_values():
    r = load_recipe("alpaca_gpt2", ["training.learning_rate=2e-4", "training.max_steps=10",
                                    "peft.target_modules=[c_attn, c_proj]", "peft.r=8", "model.revision=null"])
    assert r.training["learning_rate"] == 2e-4 and isinstance(r.training["learning_rate"], float)
    assert r.training["max_steps"] == 10 and r.peft["target_modules"] == ["c_attn", "c_proj"]
    assert r.model["revision"] is None
    assert apply_overrides({"a": {"b": 1}}, ["a.c=x"]) == {"a": {"b": 1, "c": "x"}}


def test_hash_follows_content():
    a, b = load_recipe("alpaca_gpt2"), load_recipe("alpaca_gpt2")
    assert a.hash == b.hash
    assert load_recipe("alpaca_gpt2", ["training.max_steps=5"]).hash != a.hash


BASE = "stage: sft\nmodel: {name_or_path: gpt2}\ndata: {train: d.jsonl}\n"

# (id, recipe text or None for the shipped alpaca_gpt2, overrides, text the one-line error must contain)
BAD = [
    ("typo-top", BASE + "trainig: {}\n", [], "trainig: unknown key in recipe; did you mean 'training'?"),
    ("typo-training", BASE + "training: {learnign_rate: 1.0e-4}\n", [], "training.learnign_rate: unknown key"),
    ("typo-model", BASE.replace("name_or_path: gpt2", "name_or_path: gpt2, dtyp: bf16"), [], "model.dtyp"),
    ("typo-data", BASE.replace("train: d.jsonl", "train: d.jsonl, eval_fracton: 0.1"), [],
     "did you mean 'eval_fraction'"),
    ("typo-peft", BASE + "peft: {r: 8, lora_alpah: 16}\n", [], "peft.lora_alpah"),
    ("typo-quant", BASE + "peft: {r: 8}\nquantization: {load_in_4bit: true, bnb_4bit_quant_typ: nf4}\n", [],
     "quantization.bnb_4bit_quant_typ"),
    ("wrong-type-lr", BASE + "training: {learning_rate: fast}\n", [], "training.learning_rate: expected a number"),
    ("wrong-type-epochs", BASE + "training: {num_train_epochs: [1]}\n", [], "training.num_train_epochs"),
    ("wrong-type-bool", BASE.replace("gpt2}", "gpt2, trust_remote_code: yes please}"), [], "model.trust_remote_code"),
    ("wrong-choice", BASE + "training: {lr_scheduler_type: cosin}\n", [], "did you mean 'cosine'"),
    ("negative-lr", BASE + "training: {learning_rate: -1}\n", [], "training.learning_rate: -1 is out of range"),
    ("zero-batch", BASE + "training: {per_device_train_batch_size: 0}\n", [], "per_device_train_batch_size"),
    ("eval-fraction-1", BASE.replace("d.jsonl", "d.jsonl, eval_fraction: 1.5"), [], "data.eval_fraction: 1.5"),
    ("lora-dropout", BASE + "peft: {lora_dropout: 1.0}\n", [], "peft.lora_dropout"),
    ("lora-combination", BASE + "peft: {target_modules: all-linear, layers_to_transform: [1]}\n", [],
     "peft: LoraConfig refuses it: `layers_to_transform` cannot be used when `target_modules` is a str"),
    ("max-length", BASE.replace("d.jsonl", "d.jsonl, max_length: 0"), [], "data.max_length"),
    ("4bit-and-8bit", BASE + "peft: {r: 8}\nquantization: {load_in_4bit: true, load_in_8bit: true}\n", [],
     "load_in_4bit and load_in_8bit are both true"),
    ("quant-without-peft", BASE + "quantization: {load_in_4bit: true}\n", [], "add a `peft:` section"),
    ("preference-for-sft", BASE.replace("d.jsonl", "d.jsonl, format: preference"), [],
     "'preference' data cannot train stage sft"),
    ("unknown-format", BASE.replace("d.jsonl", "d.jsonl, format: alpacca"), [], "did you mean 'alpaca'"),
    ("missing-model", "stage: sft\ndata: {train: d.jsonl}\n", [], "model.name_or_path: is required"),
    ("missing-stage", "model: {name_or_path: gpt2}\n", [], "stage: is required"),
    ("unknown-stage", BASE.replace("stage: sft", "stage: sfft"), [], "did you mean 'sft'"),
    ("stage-key-elsewhere", BASE + "reward_model: x\n", [], "reward_model: is not used by a sft recipe"),
    ("managed-key", BASE + "training: {output_dir: /tmp/x}\n", [], "training.output_dir: is set by posttrain"),
    ("eval-without-data", BASE + "training: {eval_strategy: steps}\n", [], "needs eval data"),
    ("bf16-and-fp16", BASE + "training: {bf16: true, fp16: true}\n", [], "bf16 and fp16 are both true"),
    ("yaml-syntax", BASE + "training: {learning_rate: 1\n", [], "invalid YAML"),
    ("python-tag", BASE + "x: !!python/object/apply:os.system ['echo pwned']\n", [], "YAML tag not allowed"),
    ("not-a-mapping", "- stage: sft\n", [], "a recipe must be a mapping"),
    ("empty-file", "", [], "recipe is empty"),
    ("section-not-mapping", BASE + "training: 3\n", [], "training: expected a mapping"),
    ("bad-override-syntax", None, ["training.max_steps"], "expected KEY=VALUE"),
    ("override-typo", None, ["training.max_stesp=3"], "training.max_stesp: unknown key"),
    ("override-wrong-type", None, ["training.max_steps=many"], "training.max_steps: expected an integer"),
    ("override-into-scalar", None, ["output_dir.x=1"], "output_dir is not a section"),
    ("ppo-without-reward-model", BASE.replace("stage: sft", "stage: ppo").replace("d.jsonl", "d.jsonl, format: prompt"),
     [], "reward_model: is required for stage ppo"),
    ("grpo-without-rewards", BASE.replace("stage: sft", "stage: grpo").replace("d.jsonl", "d.jsonl, format: prompt"),
     [], "rewards: is required for stage grpo"),
    ("secret-in-recipe", BASE.replace("gpt2}", "gpt2, token: hf_abc}"), [],
     "model.token: secrets never go in a recipe"),
    ("extends-not-a-path", "extends: [a.yaml]\n" + BASE, [], "extends: expected a path"),
    ("config-rejects", BASE + "training: {load_best_model_at_end: true, save_strategy: steps, eval_strategy: epoch}\n"
     "data: {train: d.jsonl, eval_fraction: 0.1}\n", [], "training.load_best_model_at_end: SFTConfig rejects these settings"),
]


@pytest.mark.parametrize("name,text,overrides,expected", BAD, ids=[b[0] for b in BAD])
def test_bad_recipe_exits_2_with_one_line(tmp_path, cli, name, text, overrides, expected):
    if name.startswith("ppo") and PPO_REFUSED:
        pytest.skip(PPO_REFUSED)
    target = "alpaca_gpt2" if text is None else write_recipe(tmp_path, text)
    out_dir = tmp_path / "out"
    code, out, err = cli("validate", target, *overrides, f"output_dir={out_dir}" if text is not None else "--no-data",
                         *(["--no-data"] if text is not None else []))
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("posttrain: error: "), err
    assert expected in lines[0], lines[0]
    assert "Traceback" not in err and not out_dir.exists()


def test_line_numbers_in_errors(tmp_path, cli):
    p = write_recipe(tmp_path, BASE + "training:\n  learning_rate: 1.0e-4\n  warmup_stesp: 3\n")
    code, _, err = cli("validate", p, "--no-data")
    assert code == 2 and "r.yaml:6: training.warmup_stesp" in err and "did you mean 'warmup_steps'" in err


def test_extends_relative_merge_and_cycles(tmp_path, cli):
    sub = tmp_path / "sub"
    sub.mkdir()
    write_recipe(sub, BASE + "training: {learning_rate: 1.0e-4, num_train_epochs: 2}\n", "base.yaml")
    child = write_recipe(tmp_path, "extends: sub/base.yaml\ntraining: {num_train_epochs: 5}\n", "child.yaml")
    r = load_recipe(str(child))
    assert r.training == {"learning_rate": 1e-4, "num_train_epochs": 5} and r.stage == "sft"
    write_recipe(tmp_path, "extends: b.yaml\nstage: sft\n", "a.yaml")
    write_recipe(tmp_path, "extends: a.yaml\n", "b.yaml")
    code, _, err = cli("validate", tmp_path / "a.yaml", "--no-data")
    assert code == 2 and "extends: cycle (a.yaml -> b.yaml -> a.yaml)" in err
    write_recipe(tmp_path, "extends: nowhere.yaml\n", "c.yaml")
    code, _, err = cli("validate", tmp_path / "c.yaml", "--no-data")
    assert code == 2 and "extends: file not found" in err


def test_unknown_recipe_name_suggests(cli):
    code, _, err = cli("validate", "alpaca_gtp2")
    assert code == 2 and "did you mean 'alpaca_gpt2'" in err


def test_validate_shows_masked_example(fx, cli):
    code, out, err = cli("validate", "alpaca_gpt2", f"model.name_or_path={fx['model']}", f"data.train={fx['alpaca']}")
    assert code == 0, err
    assert "[masked]Below is an instruction" in out and "### Response:\n[/masked][trained]" in out
    assert "<|endoftext|>[/trained]" in out and "masked," in out and "trained;" in out


def test_validate_offline_says_what_it_could_not_check(cli):
    code, out, _ = cli("validate", "alpaca_gpt2")
    assert code == 0 and "ok: recipe checked" in out
    assert "not checked: data.train (hub dataset 'yahma/alpaca-cleaned'" in out and "not checked: tokenizer" in out


def test_null_under_extends_removes_the_inherited_key(tmp_path):
    write_recipe(tmp_path, BASE + "peft: {r: 4, lora_alpha: 8}\ntraining: {max_steps: 5, warmup_steps: 3}\n", "base.yaml")
    child = write_recipe(tmp_path, "extends: base.yaml\npeft: null\ntraining: {warmup_steps: null}\n", "child.yaml")
    r = load_recipe(str(child))
    assert r.peft is None and r.training == {"max_steps": 5}
    child2 = write_recipe(tmp_path, "extends: base.yaml\npeft: {lora_alpha: null}\n", "child2.yaml")
    assert load_recipe(str(child2)).peft == {"r": 4}
