"""posttrain.convert.names: another tool's key is declared once (its convert table) and validate's hint for it is
that declaration's face, so the two cannot drift apart; what convert says is missing really is missing."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from posttrain import stages
from posttrain.convert import axolotl, convert, llama_factory, names
from posttrain.convert.core import MAPPED, NOT, Call, Conversion
from posttrain.data.formats import FORMATS

DATA = Path(__file__).parent / "data" / "convert"
CONFIGS = sorted(p for p in DATA.rglob("*") if p.suffix in (".yaml", ".yml"))
TOOLS = {"axolotl": "axolotl", "llama-factory": "LLaMA-Factory", "trl": "TRL"}  # the tools whose Calls have hints


# keys read with their neighbours that no public config sets live, each set where it is read
LIVE = {
    "axolotl.yml": "base_model: gpt2\nadapter: lora\nlora_r: 8\nlora_fan_in_fan_out: true\npeft_use_dora: true\n"
                   "peft_use_rslora: true\nlora_target_parameters: [x]\nlora_model_dir: old\nload_in_4bit: true\n"
                   "bnb_config_kwargs: {llm_int8_threshold: 5.0}\ndatasets: [{path: a.jsonl, type: alpaca}]\n"
                   "test_datasets: [{path: b.jsonl, type: alpaca}]\nmax_steps: 10\nchat_template_jinja: '{{ x }}'\n",
    "lf.yaml": "model_name_or_path: gpt2\nstage: sft\nfinetuning_type: lora\nlora_rank: 8\nlora_alpha: 16\n"
               "lora_dropout: 0.1\nuse_rslora: true\nuse_dora: true\nadditional_target: embed_tokens\npissa_init: true\n"
               "quantization_bit: 4\nquantization_type: fp4\ndouble_quantization: false\ndataset: a/b\n"
               "eval_dataset: c/d\nfp16: true\n",
    "lf-freeze.yaml": "model_name_or_path: gpt2\nstage: sft\nfinetuning_type: freeze\ndataset: a/b\ncutoff_len: 512\n",
    "trl.yaml": "model_name_or_path: gpt2\nuse_peft: true\nlora_r: 8\nlora_target_parameters: [x]\n"
                "lora_modules_to_save: [lm_head]\nuse_rslora: true\nuse_dora: true\nlora_task_type: SEQ_CLS\n"
                "load_in_8bit: true\ndataset_name: a/b\ndataset_config: c\ndataset_train_split: tr\n"
                "dataset_test_split: te\neval_strategy: steps\nassistant_only_loss: false\n",
    "trl-4bit.yaml": "model_name_or_path: gpt2\nload_in_4bit: true\nbnb_4bit_quant_type: fp4\nuse_bnb_nested_quant: true\n"
                     "bnb_4bit_quant_storage: uint8\ndataset_name: a/b\ncompletion_only_loss: false\n",
}


@pytest.mark.parametrize("source", [*[p for p in CONFIGS if p.relative_to(DATA).parts[0] in TOOLS], *LIVE],
                         ids=lambda p: str(p.relative_to(DATA)) if isinstance(p, Path) else p)
def test_a_declared_hint_agrees_with_what_converting_the_key_does(tmp_path, source):
    """For a key read with its neighbours, validate says the rule's `hint`: where the real conversion maps the key,
    the hint names a key it maps to; where it is NOT TRANSLATED, the hint does not offer a mapping."""
    if isinstance(source, str):
        (tmp_path / source).write_text(LIVE[source])
        source = tmp_path / source
    conv = convert(source)
    table = names.TABLES[TOOLS[conv.tool]]
    checked = 0
    for f in conv.fates:
        rule = table.get(f.key)
        if not (isinstance(rule, Call) and rule.hint is not None):
            continue
        said = names.face(conv.tool, f.key, rule, f.value)
        if f.new:  # mapped (or a dataset key written all the same, its problems said)
            assert any(f"`{target}" in said or f"`{target.rsplit('.', 1)[0]}:" in said for target in f.new), (f, said)
        elif f.kind == NOT:
            assert not said.startswith("did you mean"), (f, said)
        checked += f.kind in (MAPPED, NOT)
    assert checked or conv.tool == "trl"  # (some TRL scripts' configs set none of these keys)


def test_the_hint_is_the_conversion_for_keys_read_alone():
    """A key whose rule reads it alone gets, at validate, exactly the fate converting it gives."""
    conv = Conversion("axolotl", Path("x"), {}, "sft")
    conv.apply("eot_tokens", ["<|im_end|>"], axolotl.TABLE["eot_tokens"])
    assert conv.fates[0].kind == NOT and conv.fates[0].text in names.foreign_hint("eot_tokens", ["<|im_end|>"])
    conv.apply("max_prompt_len", 512, axolotl.TABLE["max_prompt_len"])  # refused by convert once, mapped now
    assert conv.fates[1].kind == MAPPED and conv.get("data.max_prompt_length") == 512
    assert "did you mean `data.max_prompt_length: 512`" in names.foreign_hint("max_prompt_len", 512)


def test_tools_that_differ_are_each_named():
    hint = names.foreign_hint("max_length", 512)  # TrainingArguments: data.max_length; LLaMA-Factory: generation
    assert "TrainingArguments's `max_length`: did you mean `data.max_length: 512`?" in hint
    assert "LLaMA-Factory's `max_length`: nothing to set" in hint


def _strings(module) -> list[str]:
    tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))
    return [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def test_nothing_convert_calls_missing_is_a_stage_or_format_posttrain_has():
    from posttrain.convert import core, torchtune, trl

    texts = [t for m in (core, trl, llama_factory, axolotl, torchtune, names) for t in _strings(m)]
    said = " ".join(texts).lower()
    assert "not a posttrain stage yet" not in said and "stage yet" not in said
    for m in re.finditer(r"no ([\w-]+) format|([\w-]+) is not a (?:posttrain )?(?:stage|format)", said):
        name = (m.group(1) or m.group(2)).removeprefix("raw-")
        assert name not in FORMATS and name not in stages.names(), m.group(0)


@pytest.mark.parametrize("rl", axolotl.RL)
def test_every_axolotl_rl_becomes_a_stage_whose_recipe_validates(tmp_path, fx, cli, rl):
    p, out = tmp_path / "a.yml", tmp_path / "r.yaml"
    p.write_text(f"base_model: gpt2\nrl: {rl}\ndatasets: [{{path: d.jsonl, type: chat_template}}]\n")
    conv = convert(p)
    assert conv.recipe["stage"] in stages.names() and "rl" not in {f.key for f in conv.untranslated}
    cli("convert", p, "-o", out)
    data = fx["prompts"] if conv.recipe["stage"] == "grpo" else fx["preference"]
    code, _, err = cli("validate", out, f"model.name_or_path={fx['model']}", f"data.train={data}", "data.split=train",
                       "data.column_map=null", *(["rewards=[{rule: length_penalty, target: 8}]"] if rl == "grpo" else []), "--no-data")
    assert code == 0 or rl == "kto", err  # (kto rows are unpaired: NOT TRANSLATED, said by convert)


@pytest.mark.parametrize("loss, stage", [("sigmoid", "dpo"), ("orpo", "orpo"), ("simpo", "cpo"), ("ipo", "dpo")])
def test_llama_factory_pref_loss_picks_the_stage_that_trains_it(tmp_path, fx, cli, loss, stage):
    p, out = tmp_path / "l.yaml", tmp_path / "r.yaml"
    p.write_text(f"model_name_or_path: gpt2\nstage: dpo\npref_loss: {loss}\ndataset: a/b\nfinetuning_type: full\n")
    conv = convert(p)
    assert conv.recipe["stage"] == stage and "pref_loss" not in {f.key for f in conv.untranslated}
    assert cli("convert", p, "-o", out)[0] == 0
    code, _, err = cli("validate", out, f"model.name_or_path={fx['model']}", f"data.train={fx['preference']}",
                       "data.split=train", "model.chat_template=null", "data.template=null", "data.max_length=512",
                       "--no-data")
    assert code == 0, err
    if loss == "simpo":
        assert conv.recipe["training"]["loss_type"] == "simpo" and conv.recipe["training"]["cpo_alpha"] == 0
    assert llama_factory.LOSS_STAGES.keys() <= {"orpo", "simpo"}
