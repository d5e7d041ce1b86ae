"""posttrain.convert.check: a config is read as validate reads a recipe, and every key a tool's table reads is checked
against the type it takes, nested entries one by one, all problems at once; so no config, however typed, ends in a
traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from posttrain.convert import check, convert, convert_raw, read
from posttrain.errors import PosttrainError, Problems

DATA = Path(__file__).parent / "data" / "convert"
CONFIGS = sorted(p for p in DATA.rglob("*") if p.suffix in (".yaml", ".yml"))
WRONG = [5, [1, 2], {"a": 1}, "x", None, True, -1]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(DATA)))
def test_every_top_level_key_set_to_each_wrong_type_is_refused_or_converted_never_a_traceback(path):
    """Each top-level key of the config set in turn to 5, [1, 2], {a: 1}, "x", null, true and -1: converting ends in
    a recipe or in one line per problem (a PosttrainError), nothing else. (39 configs: 8,715 conversions, about 4 s
    on 2 busy cores.)"""
    raw, text, where = read(path)
    tried, refused = 0, 0
    for key in raw:
        for wrong in WRONG:
            try:
                convert_raw({**raw, key: wrong}, text, path, where)
            except PosttrainError:
                refused += 1
            tried += 1
    assert tried == len(raw) * len(WRONG) and refused  # some of them are wrong for sure


def _nested(raw: dict):
    """The config with each field of a nested mapping (a torchtune component, a mixture) or of a list's mapping entry
    (an axolotl dataset) set in turn to each wrong type."""
    for key, value in raw.items():
        entries = [(None, value)] if isinstance(value, dict) else list(enumerate(value)) if isinstance(value, list) else []
        for i, entry in entries:
            for field in entry if isinstance(entry, dict) else ():
                for wrong in WRONG:
                    changed = {**entry, field: wrong}
                    yield {**raw, key: changed if i is None else [*value[:i], changed, *value[i + 1:]]}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(DATA)))
def test_every_nested_field_set_to_each_wrong_type_is_refused_or_converted_never_a_traceback(path):
    """(2,562 conversions over the 39 configs.)"""
    raw, text, where = read(path)
    for changed in _nested(raw):
        try:
            convert_raw(changed, text, path, where)
        except PosttrainError:
            pass


@pytest.mark.parametrize("text, says", [
    ("base_model: gpt2\ndatasets: 5\n", "c.yml:2: datasets: expected a list, got 5 (int)"),
    ("base_model: gpt2\ndatasets: [{path: a.jsonl, type: 5}]\n", "c.yml:2: datasets[0].type: expected a string or a "
                                                                  "mapping, got 5 (int)"),
    ("base_model: gpt2\nnum_epochs: [1, 2]\n", "c.yml:2: num_epochs: expected a number, got a list"),
    ("base_model: gpt2\nlr_scheduler: {a: 1}\n", "c.yml:2: lr_scheduler: expected a string, got a mapping"),
    ("model:\n  _component_: torchtune.models.llama3_2.lora_llama3_2_1b\n  lora_attn_modules: [q_proj]\n"
     "optimizer: 5\n", "c.yml:4: optimizer: expected a mapping, got 5 (int)"),
    ("model:\n  _component_: [1, 2]\n", "c.yml:2: model._component_: expected a string, got a list"),
    ("base_model: gpt2\ndatasets: [{path: a.jsonl, roles: {user: human}}]\n",
     "c.yml:2: datasets[0].roles.user: expected a list, got 'human' (str)"),
])
def test_a_wrong_type_is_one_line_naming_key_value_and_type(tmp_path, text, says):
    p = tmp_path / "c.yml"
    p.write_text(text)
    with pytest.raises(PosttrainError) as e:
        convert(p)
    assert str(e.value).endswith(says) and "\n" not in str(e.value), str(e.value)


def test_every_problem_is_said_at_once(tmp_path):
    p = tmp_path / "c.yml"
    p.write_text("base_model: gpt2\ndatasets: [{path: 5}, {path: b.jsonl, split: [1]}]\nnum_epochs: x\nrl: [dpo]\n")
    with pytest.raises(Problems) as e:
        convert(p)
    assert [line.split(": ", 1)[1].split(":")[0] for line in e.value.lines] == [
        "datasets[0].path", "datasets[1].split", "num_epochs", "rl"]


def test_dataset_info_entries_are_checked_one_by_one(tmp_path):
    (tmp_path / "dataset_info.json").write_text(json.dumps({"mine": {"file_name": 5, "columns": ["a"]}}))
    p = tmp_path / "c.yaml"
    p.write_text("model_name_or_path: gpt2\nstage: sft\nfinetuning_type: lora\ndataset: mine\n")
    with pytest.raises(Problems) as e:
        convert(p)
    assert e.value.lines == [f"{tmp_path / 'dataset_info.json'}: mine.file_name: expected a string, got 5 (int)",
                             f"{tmp_path / 'dataset_info.json'}: mine.columns: expected a mapping, got a list"]
    (tmp_path / "dataset_info.json").write_text("{not json")
    with pytest.raises(PosttrainError, match="dataset_info.json: cannot be read as JSON"):
        convert(p)


@pytest.mark.parametrize("content, says", [
    (bytes(range(128, 256)), "not UTF-8 text"),
    (b"", "config is empty"),
    (b"- a\n- b\n", "a config must be a mapping of keys, got a list"),
    (b"base_model: gpt2\ndatasets: 5\n", "c.yml:2: datasets: expected a list, got 5 (int)"),
    (b"base_model: gpt2\nlr: [1\n", "c.yml:3: invalid YAML"),
    (b"base_model: gpt2\nsequence_len: 512\nsequence_len: 1024\n", "c.yml:3: sequence_len: given twice (also at line 2)"),
])
def test_the_command_says_a_bad_file_in_one_line_and_writes_nothing(tmp_path, cli, content, says):
    p, out = tmp_path / "c.yml", tmp_path / "out.yaml"
    p.write_bytes(content)
    code, stdout, err = cli("convert", p, "-o", out)
    assert code == 2 and len(err.strip().splitlines()) == 1 and says in err, err
    assert not out.exists() and not stdout


def test_the_field_types_are_the_installed_classes():
    """field_types.json (what convert checks a TRL/peft/bitsandbytes field against, without importing them) is what the
    installed classes say; and it says what validate's check says of a value. It is written where every stage's TRL
    class is installed (TRL 1.12: 1.13 removed PPO's), so it is compared there."""
    from posttrain import stages

    if stages.available().keys() == stages.all_stages().keys():
        assert json.loads(check.FIELD_TYPES.read_text()) == check.generate(), "run `python -m posttrain.convert --write`"
    fields = check.fields()
    assert fields["training.learning_rate"].fits("2e-4") and not fields["training.learning_rate"].fits([1])
    assert fields["training.eval_strategy"].fits(False) and fields["training.eval_strategy"].fits("steps")
    assert fields["training.loss_type"].fits("sigmoid") and fields["peft.target_modules"].fits(["q_proj"])
    assert not fields["peft.r"].fits("x") and fields["peft.r"].fits(8.0) and not fields["training.bf16"].fits(5)
