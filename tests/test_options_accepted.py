"""A setting whose value is what posttrain does anyway is accepted with a note (options.ACCEPTED), and
`do_eval: false` is honoured; contradicting values are refused as before. Other tools' names get hints that
point at a key a recipe may set, or say plainly that posttrain cannot express them."""

import json
import logging
import re
from pathlib import Path

import pytest

from posttrain import options, stages
from posttrain.checks import load_recipe
from posttrain.convert import names
from posttrain.convert.core import Conversion
from posttrain.errors import RecipeError
from posttrain.keys import DATA_KEYS, MODEL_KEYS, TOP_KEYS, TRACKING_KEYS, WATCHDOG_KEYS

SFT = "stage: sft\nmodel: {name_or_path: gpt2}\ndata: {train: d.jsonl}\n"
SFT_EVAL = "stage: sft\nmodel: {name_or_path: gpt2}\ndata: {train: d.jsonl, eval_fraction: 0.2}\n"
REWARD = "stage: reward\nmodel: {name_or_path: gpt2}\ndata: {train: d.jsonl}\n"
DPO = "stage: dpo\nmodel: {name_or_path: gpt2}\ndata: {train: d.jsonl}\n"


def _load(tmp_path, text, overrides=()):
    p = tmp_path / "r.yaml"
    p.write_text(text)
    return load_recipe(str(p), list(overrides))


def _refused(tmp_path, text):
    with pytest.raises(RecipeError) as e:
        _load(tmp_path, text)
    return str(e.value)


@pytest.fixture
def notes(caplog, monkeypatch):
    monkeypatch.setattr(logging.getLogger("posttrain"), "propagate", True)  # the CLI turns it off
    caplog.set_level("INFO", logger="posttrain")
    return caplog


# --- 2. accept what is consistent --------------------------------------------------------------------------

@pytest.mark.parametrize("text, key", [
    (SFT + "training: {remove_unused_columns: false}\n", "remove_unused_columns"),
    (DPO + "training: {remove_unused_columns: false}\n", "remove_unused_columns"),
    (SFT + "training: {do_train: true}\n", "do_train"),
    (SFT_EVAL + "training: {do_eval: true}\n", "do_eval"),
])
def test_a_training_key_set_to_what_posttrain_does_is_accepted_with_a_note(tmp_path, notes, text, key):
    r = _load(tmp_path, text)
    assert key not in r.training and key not in r.resolved["training"]  # not passed on to TRL
    assert f"training.{key}: " in notes.text and "accepted" in notes.text


@pytest.mark.parametrize("text, says", [
    (SFT + "training: {remove_unused_columns: true}\n", "training.remove_unused_columns: is set by posttrain"),
    (SFT + "training: {do_train: false}\n", "training.do_train: cannot be set"),
    (SFT + "training: {do_eval: true}\n", "training.do_eval: true needs eval data"),
    (SFT + "peft: {r: 4, task_type: SEQ_CLS}\n", "peft.task_type: is set by posttrain"),
    (REWARD + "peft: {r: 4, task_type: CAUSAL_LM}\n", "peft.task_type: is set by posttrain"),
    (SFT_EVAL + "training: {do_eval: false, eval_strategy: steps}\n", "'steps' contradicts training.do_eval: false"),
])
def test_contradicting_values_are_refused(tmp_path, text, says):
    assert says in _refused(tmp_path, text)


@pytest.mark.parametrize("text, task", [(REWARD + "peft: {r: 4, task_type: SEQ_CLS}\n", "SEQ_CLS"),
                                        (SFT + "peft: {r: 4, task_type: causal_lm}\n", "CAUSAL_LM"),
                                        (DPO + "peft: {r: 4, task_type: CAUSAL_LM}\n", "CAUSAL_LM")])
def test_peft_task_type_equal_to_the_stages_is_accepted(tmp_path, notes, text, task):
    r = _load(tmp_path, text)
    assert "task_type" not in r.peft and "peft.task_type" in notes.text
    from posttrain.models import lora_config

    assert str(lora_config(r.peft, "SEQ_CLS" if r.stage == "reward" else "CAUSAL_LM").task_type) == task


def test_do_eval_false_builds_no_eval_split(tmp_path, notes):
    r = _load(tmp_path, SFT_EVAL + "training: {do_eval: false}\n")
    assert r.data["eval_fraction"] is None and r.data["eval"] is None and "do_eval" not in r.training
    assert "no evaluation" in notes.text
    r = _load(tmp_path, SFT.replace("d.jsonl}", "d.jsonl, eval: e.jsonl}") + "training: {do_eval: false}\n")
    assert r.data["eval"] is None
    r = _load(tmp_path, SFT + "training: {do_eval: false}\n")  # no eval data: nothing to switch off
    assert "do_eval" not in r.training


@pytest.mark.slow
def test_do_eval_false_with_eval_data_runs_no_evaluation(fx, tmp_path, cli):
    def run(name, *extra):
        out = tmp_path / name
        code, _, err = cli("train", "alpaca_gpt2", f"model.name_or_path={fx['model']}", f"data.train={fx['alpaca']}",
                           "data.eval_fraction=0.25", "training.max_steps=2", "training.eval_strategy=no",
                           "training.save_strategy=no", f"output_dir={out}", *extra)
        assert code == 0, err
        return json.loads((out / "manifest.json").read_text())

    evaluated = run("with_eval")
    assert "eval_loss" in evaluated["metrics"] and evaluated["data"]["eval"]["kept"] == 12
    m = run("no_eval", "training.do_eval=false")
    assert not any(k.startswith("eval_") for k in m["metrics"]), m["metrics"]
    assert not m["data"].get("eval") and m["data"]["train"]["kept"] == 48  # every row trains


# --- 3. foreign-name hints --------------------------------------------------------------------------------

@pytest.mark.parametrize("text, says", [
    (SFT + "rl: dpo\n", "in posttrain that is `stage: dpo`"),
    (SFT + "rl: ipo\n", "`stage: dpo` with `training.loss_type: ipo`"),
    (SFT + "rl_beta: 0.1\n", "`training.beta: 0.1`"),
    (SFT + "orpo_alpha: 0.1\n", "`training.beta: 0.1`"),
    (SFT + "evals_per_epoch: 4\n", "`training.eval_steps: 1/(N x epochs)`"),
    (SFT + "special_tokens: {pad_token: x}\n", "did you mean `model.special_tokens`?"),
    (SFT + "tokens: ['<tool>']\n", "did you mean `model.add_tokens: [<tool>]`?"),
    (SFT + "plot_loss: true\n", "`posttrain report RUN_DIR`"),
    (SFT + "neat_packing: true\n", "`training.packing: true`"),
    (SFT + "loraplus_lr_ratio: 16\n", "posttrain cannot express it (LoRA+"),
    (SFT + "epochs: 3\n", "`training.num_train_epochs: 3`"),
    (SFT + "clip_grad_norm: 1.0\n", "`training.max_grad_norm: 1.0`"),
    (SFT + "input_key: question\n", "`data.column_map: {question: prompt}`"),
    (SFT + "max_len: 2048\n", "`data.max_length: 2048`"),
    # the misleading ones, fixed
    (SFT + "train_on_input: true\n", "`data.train_on: all`"),
    (SFT + "train_on_inputs: true\n", "`data.train_on: all`"),
    (SFT + "train_on_inputs: false\n", "nothing to set: posttrain masks the prompt by default"),
    (SFT + "tokenizer_type: LlamaTokenizer\n", "nothing to set: the tokenizer class comes from the tokenizer's own"),
    (SFT + "finetuning_type: freeze\n", "`model.trainable`: regular expressions over the parameter names"),
    (SFT + "finetuning_type: full\n", "nothing to set: without a `peft:` section"),
    (SFT + "finetuning_type: lora\n", "lora_alpha defaults to 2 x rank"),
    (SFT + "pref_loss: orpo\n", "`stage: orpo`"),
    (SFT + "lambd: 1.0\n", "`training.lam: 1.0`"),
    (SFT + "value_clip: 0.5\n", "`training.cliprange_value: 0.5`"),
])
def test_foreign_names_get_hints(tmp_path, text, says):
    msg = _refused(tmp_path, text)
    assert says in msg, msg


def _keys_in(text: str) -> set[str]:
    """Dotted posttrain keys a hint names in backticks (`training.x`, `data.y: v`, `stage: dpo`)."""
    return {m.group(1) for m in re.finditer(r"`((?:training|peft|quantization|model|data)\.[a-z_0-9]+)", text)}


def _settable(dotted: str) -> bool:
    section, key = dotted.split(".", 1)
    if section == "model":
        return key.split(".")[0] in MODEL_KEYS  # model.special_tokens.eos_token: a key inside a mapping key
    if section == "data":
        return key in DATA_KEYS
    if section in ("watchdog", "tracking"):
        return key in (WATCHDOG_KEYS if section == "watchdog" else TRACKING_KEYS)
    found = False
    for stage in stages.all_stages().values():
        kind = options.classify(stage, section, key).kind
        if kind in (options.MANAGED, options.REFUSED):
            if key in options.passed(stage, section) or section != "training":
                return False
            continue  # e.g. a field another stage's class lacks
        found = found or kind == options.PASSED
    return found


DO_EVAL = "training.do_eval"  # refused but for `false`, which is honoured (options.ACCEPTED)


def test_no_hint_points_at_a_key_that_is_refused_or_managed():
    assert not _settable("training.max_length") and not _settable("peft.task_type")  # the check can fail
    assert not _settable("training.do_eval") and _settable("training.packing") and _settable("data.train_on")
    top = TOP_KEYS + list(stages.stage_keys()) + list(options.SECTION_OWNERS)
    bad = []
    for tool, table in names.TABLES.items():
        for key, rule in table.items():
            for value in (None, True, 4, "all"):
                text = names.face(tool, key, rule, value)
                bad += [(tool, key, t) for t in _keys_in(text) if not _settable(t) and t != DO_EVAL]
                conv = Conversion(tool, Path("x"), {key: value}, "sft")
                try:
                    conv.apply(key, value, rule)
                except Exception:  # noqa: BLE001 - a value the rule cannot read (its face says the target alone)
                    continue
                for f in conv.fates:
                    bad += [(tool, key, t) for t in f.new or {}
                            if ("." in t and not _settable(t) or "." not in t and t not in top) and t != DO_EVAL]
    assert not bad, f"hints pointing at keys a recipe cannot set: {bad}"


def test_the_tools_listed_names_all_have_hints():
    listed = ["rl", "rl_beta", "orpo_alpha", "evals_per_epoch", "special_tokens", "plot_loss", "neat_packing",
              "loraplus_lr_ratio", "epochs", "clip_grad_norm", "input_key", "max_len", "train_on_input",
              "tokenizer_type", "finetuning_type"]
    assert not [n for n in listed if not names.foreign_hint(n, {"pad_token": "x"} if n == "special_tokens" else 1)]


def test_every_key_a_converter_declares_gets_a_hint_from_its_rule():
    """The tools' option lists, as the convert tables hold them: every key has a face at validate (its rule's fate,
    or the rule's hint where the fate needs the neighbours)."""
    missing = [(tool, key) for tool, table in names.TABLES.items() for key, rule in table.items()
               if not names.face(tool, key, rule, None) and not names.face(tool, key, rule, "x")]
    assert not missing, missing
