"""The recipes for the families people fine-tune now (recipes/<family>/): each is checked against its real
architecture offline. The published configs build to the published sizes, `posttrain plan` gives every recipe the
memory its description states, each family's chat format trains the assistant turns and their end-of-turn token
and nothing else, the recipes share one base per family instead of copies, `posttrain recipes` filters and copies
them, and (slow) every one trains a step on its family's tiny model (tests/families.py).
"""

import json
import re

import pytest
import yaml
from families import FAMILIES, Models, family_of, make_tokenizer

from posttrain.checks import load_recipe
from posttrain.data.collator import IGNORE_INDEX, encode_batch
from posttrain.models import CONFIGS_DIR, load_config, meta_model, published_configs
from posttrain.plan import GIB, estimate
from posttrain.recipe import FAMILY_BASE, RECIPES_DIR, shipped_recipes
from posttrain.shipped import stage_of

FAMILY_RECIPES = {name: p for name, p in shipped_recipes().items() if "/" in name}
CONFIG_OF = {hub: p.stem for hub, p in published_configs().items()}

# parameters of the real models, built on `meta` from the packaged configs: the sizes their model cards publish
PUBLISHED_PARAMETERS = {
    "gemma-3-1b": 999_885_952,
    "gemma-3-4b": 4_300_079_472,  # with its vision tower
    "llama-3.1-8b": 8_030_261_248,
    "llama-3.2-1b": 1_235_814_400,
    "llama-3.2-3b": 3_212_749_824,
    "mistral-7b-v0.3": 7_248_023_552,
    "phi-4-mini": 3_836_021_760,
    "qwen3-0.6b": 596_049_920,
    "qwen3-1.7b": 1_720_574_976,
    "qwen3-8b": 8_190_735_360,
    "smollm3-3b": 3_075_098_624,
}


def test_the_families_have_at_least_30_recipes_and_a_pipeline_each():
    assert len(FAMILY_RECIPES) >= 30 and {n.split("/")[0] for n in FAMILY_RECIPES} == set(FAMILIES)
    stages = {stage_of(str(p)) for p in FAMILY_RECIPES.values()}
    assert stages == {"sft", "dpo", "reward", "grpo"}
    for family in FAMILIES:
        assert (RECIPES_DIR / "pipelines" / f"{family}_sft_dpo.yaml").is_file()


@pytest.mark.parametrize("config", sorted(PUBLISHED_PARAMETERS))
def test_packaged_config_builds_the_published_size(config):
    hub = json.loads((CONFIGS_DIR / f"{config}.json").read_text())["_hub_names"][0]
    model = meta_model({"name_or_path": hub})
    assert sum(p.numel() for p in model.parameters()) == PUBLISHED_PARAMETERS[config]


@pytest.mark.parametrize("config", sorted(PUBLISHED_PARAMETERS))
def test_tiny_family_model_keeps_the_real_attention_layout(config, family_models):
    from transformers import AutoConfig, AutoTokenizer

    hub = json.loads((CONFIGS_DIR / f"{config}.json").read_text())["_hub_names"][0]
    real_top, tiny_top = load_config({"name_or_path": hub}), AutoConfig.from_pretrained(family_models(config))
    assert type(tiny_top) is type(real_top) and tiny_top.model_type == real_top.model_type
    assert tiny_top.tie_word_embeddings == real_top.tie_word_embeddings
    real, tiny = real_top.get_text_config(), tiny_top.get_text_config()  # Gemma 3 4B: the language model's
    assert tiny.num_key_value_heads < tiny.num_attention_heads  # grouped-query attention, as every real one
    assert tiny.num_attention_heads // tiny.num_key_value_heads == min(
        real.num_attention_heads // real.num_key_value_heads, tiny.num_attention_heads)
    assert tiny.rope_parameters == real.rope_parameters  # theta, llama3 scaling, Gemma 3's local/global bases
    if real.model_type == "llama":
        assert tiny.rope_parameters["rope_type"] == "llama3" == real.rope_parameters["rope_type"]
    if real.model_type == "gemma3_text":  # local (sliding window) and global layers
        assert tiny.layer_types == ["sliding_attention", "full_attention"] and tiny.sliding_window < 64
    if real.model_type == "smollm3":
        assert tiny.no_rope_layers == [1, 0]  # the second layer has no rotary embedding
    if real.model_type == "phi3":
        assert tiny.partial_rotary_factor == real.partial_rotary_factor == 0.75
    eos = AutoTokenizer.from_pretrained(family_models(config)).convert_ids_to_tokens(tiny_top.eos_token_id)
    assert eos == FAMILIES[family_of(config)].eos


TWO_TURNS = [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "2"},
             {"role": "user", "content": "Double it."}, {"role": "assistant", "content": "4"}]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_chat_mask_trains_the_assistant_turns_and_their_end_of_turn_token(family, family_models, tmp_path):
    tok = make_tokenizer(family_models.base, family, tmp_path)
    enc = encode_batch([{"messages": TWO_TURNS}], "messages", {"messages": "messages"}, tok, 4096)[0]  # SmolLM3: a long system turn
    assert tok.decode(enc["input_ids"]) == tok.apply_chat_template(TWO_TURNS, tokenize=False)
    trained = [t for t, lab in zip(enc["input_ids"], enc["labels"]) if lab != IGNORE_INDEX]
    assert tok.decode(trained) == FAMILIES[family].trained
    eot = tok.convert_tokens_to_ids(FAMILIES[family].eos)
    assert [t for t in trained if t in tok.all_special_ids] == [eot, eot]  # each answer's end of turn, nothing else


DESCRIBED = re.compile(r"planned for one (\d+) GB GPU \(posttrain plan: ([\d.]+) GiB\)")


@pytest.mark.parametrize("name", sorted(FAMILY_RECIPES))
def test_plan_gives_the_memory_the_description_states_offline(name):
    path = FAMILY_RECIPES[name]
    lines = path.read_text().splitlines()
    gpu, stated = DESCRIBED.search(lines[0]).groups()
    assert lines[1] == f"# Run: posttrain train {name}" or lines[1].startswith(f"# Run: posttrain train {name} ")
    total = estimate(load_recipe(name))["total"] / GIB
    assert f"{total:.1f}" == stated and total <= int(gpu)


def _leaves(node, prefix=""):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _leaves(v, f"{prefix}{k}.")
    else:
        yield prefix[:-1], node


def _blocks(node):
    """Every mapping of 3 or more keys in a recipe, the recipe itself included, as comparable text."""
    if isinstance(node, dict):
        if len(node) >= 3:
            yield json.dumps(node, sort_keys=True)
        for v in node.values():
            yield from _blocks(v)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_family_shares_its_base_instead_of_copying_it(family):
    files = sorted((RECIPES_DIR / family).glob("*.yaml"))
    docs = {p.name: yaml.safe_load(p.read_text()) for p in files}
    assert FAMILY_BASE in docs
    seen = {}
    for name, doc in docs.items():
        for block in _blocks({k: v for k, v in doc.items() if k != "extends"}):
            assert block not in seen, f"{name} repeats a block of {seen[block]}: put it in {FAMILY_BASE}"
            seen[block] = name
        if name == FAMILY_BASE:
            continue
        assert doc["extends"] in docs
        parent = dict(_leaves(_resolved(docs, doc["extends"])))
        for key, value in _leaves({k: v for k, v in doc.items() if k != "extends"}):
            assert parent.get(key, object()) != value, f"{name}: {key} restates what {doc['extends']} sets"


def _resolved(docs, name):
    from posttrain.recipe import deep_merge

    doc = dict(docs[name])
    parent = doc.pop("extends", None)
    return deep_merge(_resolved(docs, parent), doc, null_removes=True) if parent else doc


def test_recipes_filters_by_family_stage_and_method(cli):
    code, out, err = cli("recipes", "--model", "qwen3")
    assert code == 0, err
    listed = [line.split()[0] for line in out.splitlines()[2:] if line.strip() and not line.startswith(("pipeline", "posttrain"))]
    assert listed == [n for n in FAMILY_RECIPES if n.startswith("qwen3/")] + ["qwen3_sft_dpo"]
    code, out, _ = cli("recipes", "--stage", "dpo", "--method", "lora")
    rows = [line.split() for line in out.splitlines()[2:] if "/" in line.split(" ")[0]]
    assert rows and all(r[1:3] == ["dpo", "lora"] for r in rows) and "\npipeline " not in out
    assert {r[0] for r in rows} >= {"qwen3/1.7b_dpo", "llama3/1b_dpo", "phi4/mini_dpo"}
    assert "mistral/7b_dpo" not in {r[0] for r in rows}  # QLoRA
    code, out, _ = cli("recipes", "--method", "full", "--model", "llama3")  # peft: null over the family's LoRA
    assert [line.split()[:3] for line in out.splitlines()[2:] if "/" in line.split(" ")[0]] == [
        ["llama3/1b_full", "sft", "full"]]
    code, out, _ = cli("recipes", "--method", "qlora", "--model", "8b")
    assert {line.split()[0] for line in out.splitlines()[2:] if "/" in line.split(" ")[0]} == {
        "llama3/8b_qlora", "qwen3/8b_qlora", "qwen3/8b_base_qlora"}


def test_a_misspelt_family_recipe_names_the_one_meant(cli):
    code, _, err = cli("validate", "qwen3/8b_qlor", "--no-data")
    assert code == 2 and "did you mean 'qwen3/8b_qlora'?" in err


def test_recipes_copy_brings_a_family_recipe_with_its_chain(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = cli("recipes", "copy", "llama3/8b_qlora")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "llama3").iterdir()) == ["8b_lora.yaml", "8b_qlora.yaml", "base.yaml"]
    copied, shipped = load_recipe(str(tmp_path / "llama3" / "8b_qlora.yaml")), load_recipe("llama3/8b_qlora")
    assert copied.resolved == shipped.resolved and copied.quantization["load_in_4bit"]


def _data(name, recipe, tmp_path):
    """Rows shaped like the public set the recipe names, written as a local file (the hub is not reachable)."""
    rows = {
        # HuggingFaceH4/ultrachat_200k: {prompt, prompt_id, messages}
        "messages": [{"prompt": "1+1?", "prompt_id": str(i), "messages": TWO_TURNS} for i in range(4)],
        # HuggingFaceH4/ultrafeedback_binarized: a prompt string, chosen/rejected conversations that repeat it
        "preference": [{"prompt": "1+1?", "prompt_id": str(i), "score_chosen": 8.0, "score_rejected": 2.0,
                        "chosen": TWO_TURNS[:2], "rejected": [TWO_TURNS[0], {"role": "assistant", "content": "3"}],
                        "messages": TWO_TURNS[:2]} for i in range(4)],
        # openai/gsm8k (main): {question, answer} with the answer ending "#### <number>"
        "prompt": [{"question": f"What is {i}+1?", "answer": f"{i}+1={i + 1}\n#### {i + 1}"} for i in range(4)],
    }[recipe.data["format"]]
    path = tmp_path / f"{name.replace('/', '_')}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(FAMILY_RECIPES))
def test_family_recipe_trains_a_step_on_its_tiny_model(name, family_models: Models, tmp_path, cli):
    recipe = load_recipe(name)
    config = CONFIG_OF[recipe.model["name_or_path"]]
    out = tmp_path / "out"
    argv = [f"model.name_or_path={family_models(config)}", f"data.train={_data(name, recipe, tmp_path)}",
            "data.split=train", "data.eval=null", "data.eval_split=null",
            "data.max_length=1024",  # rows are short; SmolLM3's template writes a long default system turn
            "training.eval_strategy=no", "training.max_steps=1", "training.per_device_train_batch_size=2",
            "training.gradient_accumulation_steps=1", "training.logging_steps=1", f"output_dir={out}"]
    if recipe.stage == "grpo":
        argv += ["training.num_generations=2", "training.max_completion_length=8"]
    code, _, err = cli("train", name, *argv)
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "finished" and manifest["stage"] == recipe.stage
    assert manifest["metrics"]["global_step"] == 1
    # an adapter, or the whole model (full fine-tuning; a LoRA reward model is saved merged into its base)
    merged = not recipe.peft or (recipe.stage == "reward" and not recipe.quantization)
    assert (out / ("model.safetensors" if merged else "adapter_model.safetensors")).is_file()
