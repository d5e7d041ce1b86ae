"""posttrain.convert.names: another tool's key is declared once (its convert table) and validate's hint for it is
that declaration's face, so the two cannot drift apart; what convert says is missing really is missing."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from posttrain import stages
from posttrain.convert import axolotl, convert, llama_factory, names
from posttrain.convert.core import MAPPED, NOT, Call, Conversion, To
from posttrain.data.formats import FORMATS

DATA = Path(__file__).parent / "data" / "convert"
CONFIGS = sorted(p for p in DATA.rglob("*") if p.suffix in (".yaml", ".yml"))
TOOLS = {"axolotl": "axolotl", "llama-factory": "LLaMA-Factory", "trl": "TRL"}


@pytest.mark.parametrize("path", [p for p in CONFIGS if p.relative_to(DATA).parts[0] in TOOLS],
                         ids=lambda p: str(p.relative_to(DATA)))
def test_a_declared_hint_agrees_with_what_converting_the_key_does(path):
    """For a key read with its neighbours, validate says the rule's `hint`: where the real conversion maps the key,
    the hint names a key it maps to; where it is NOT TRANSLATED, the hint does not offer a mapping."""
    table = names.TABLES[TOOLS[path.relative_to(DATA).parts[0]]]
    tool = path.relative_to(DATA).parts[0]
    conv = convert(path)
    for f in conv.fates:
        rule = table.get(f.key)
        if not (isinstance(rule, Call) and rule.hint is not None):
            continue
        said = names.face(tool, f.key, rule, f.value)
        if f.kind == MAPPED:
            assert any(f"`{target}" in said or f"`{target.rsplit('.', 1)[0]}" in said for target in f.new), (f, said)
        elif f.kind == NOT and not (isinstance(rule.hint, To) and conv.get(rule.hint.target) is not None):
            assert not said.startswith("did you mean"), (f, said)  # (a dataset key is written with its problems said)


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


@pytest.mark.parametrize("rl", [*axolotl.RL, "simpo"])
def test_every_axolotl_rl_becomes_a_stage(tmp_path, rl):
    p = tmp_path / "a.yml"
    p.write_text(f"base_model: gpt2\nrl: {rl}\ndatasets: [{{path: d.jsonl, type: chat_template}}]\n")
    conv = convert(p)
    assert conv.recipe["stage"] in stages.names() and "rl" not in {f.key for f in conv.untranslated}


@pytest.mark.parametrize("loss, stage", [("sigmoid", "dpo"), ("orpo", "orpo"), ("simpo", "cpo"), ("ipo", "dpo")])
def test_llama_factory_pref_loss_picks_the_stage_that_trains_it(tmp_path, loss, stage):
    p = tmp_path / "l.yaml"
    p.write_text(f"model_name_or_path: gpt2\nstage: dpo\npref_loss: {loss}\ndataset: a/b\nfinetuning_type: full\n")
    conv = convert(p)
    assert conv.recipe["stage"] == stage and "pref_loss" not in {f.key for f in conv.untranslated}
    if loss == "simpo":
        assert conv.recipe["training"]["loss_type"] == "simpo" and conv.recipe["training"]["cpo_alpha"] == 0
    assert llama_factory.LOSS_STAGES.keys() <= {"orpo", "simpo"}
