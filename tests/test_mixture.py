"""Dataset mixtures and row shapes: weighted sources, seeds, per-source stats, sharegpt and preference shapes."""

import json

import pytest
from tiny import write_jsonl

from posttrain.checks import validate
from posttrain.data.mixture import load_splits
from posttrain.errors import DataError, RecipeError


def _data(stage="sft", check=False, **data):
    raw = {"stage": stage, "model": {"name_or_path": "unused"}, "data": data}
    if stage in ("ppo",):
        raw["reward_model"] = "unused"
    return validate(raw, level="owners" if check else "recipe").data


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """One small local file per row shape; every row says which source it came from."""
    d = tmp_path_factory.mktemp("shapes")
    alpaca = [{"instruction": f"A{i}: add {i} and 1.", "input": "", "output": str(i + 1)} for i in range(100)]
    alpaca[3]["output"] = ""  # empty field: dropped and counted
    alpaca[7]["instruction"] = "   "
    messages = [{"messages": [{"role": "user", "content": f"M{i}: hi"}, {"role": "assistant", "content": f"m{i}"}]}
                for i in range(60)]
    sharegpt = [{"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": f"S{i}: yo"},
                                   {"from": "gpt", "value": f"s{i}"}]} for i in range(50)]
    pc = [{"prompt": f"P{i}: say ", "completion": f"p{i}"} for i in range(30)]
    pref_text = [{"prompt": f"T{i}: 1+{i}=", "chosen": str(i + 1), "rejected": str(i + 3)} for i in range(24)]
    pref_str_prompt = [{"prompt": f"Q{i}: 1+{i}?", "chosen": [{"role": "assistant", "content": str(i + 1)}],
                        "rejected": [{"role": "assistant", "content": str(i + 2)}]} for i in range(24)]
    pref_conv_prompt = [{"prompt": [{"role": "user", "content": f"R{i}: 2+{i}?"}], "chosen": str(i + 2),
                         "rejected": str(i + 4)} for i in range(24)]
    pref_one_msg = [{"prompt": f"O{i}: 3+{i}?", "chosen": {"role": "assistant", "content": str(i + 3)},
                     "rejected": {"role": "assistant", "content": str(i + 1)}} for i in range(24)]
    return {name: write_jsonl(d / f"{name}.jsonl", rows) for name, rows in [
        ("alpaca", alpaca), ("messages", messages), ("sharegpt", sharegpt), ("pc", pc), ("pref_text", pref_text),
        ("pref_str_prompt", pref_str_prompt), ("pref_conv_prompt", pref_conv_prompt), ("pref_one_msg", pref_one_msg)]}


def _three(shapes, seed=None, **extra):
    sources = [{"source": str(shapes["alpaca"]), "format": "alpaca", "weight": 0.5},
               {"source": str(shapes["messages"]), "rows": 90},
               {"source": str(shapes["sharegpt"]), "format": "sharegpt", "weight": 0.3}]
    return _data(format="messages", train=sources, **({"seed": seed} if seed is not None else {}), **extra)


def _origin(row) -> str:
    return next(m["content"] for m in row["messages"] if m["role"] == "user")[0]


def test_three_source_weighted_mixture(shapes):
    train, eval_ds, stats = load_splits(_three(shapes), seed=42)
    a, m, s = stats["train"]
    assert (a["read"], a["kept"], a["dropped"]) == (100, 98, 2)  # the two empty rows
    assert abs(a["taken"] - 49) <= 1 and m["taken"] == 90 and abs(s["taken"] - 15) <= 1
    assert (m["read"], m["kept"]) == (60, 60) and s["format"] == "sharegpt" and a["format"] == "alpaca"
    origins = [_origin(r) for r in train]
    assert len(train) == a["taken"] + m["taken"] + s["taken"] and eval_ds is None
    assert (origins.count("A"), origins.count("M"), origins.count("S")) == (a["taken"], m["taken"], s["taken"])
    assert origins[:20] != sorted(origins[:20])  # shuffled, not source after source
    # every source reads as messages: alpaca instruction -> user, sharegpt roles mapped
    sg = next(r for r in train if _origin(r) == "S")["messages"]
    assert [t["role"] for t in sg] == ["system", "user", "assistant"]
    # rows (90 of 60) repeats rows: each once, then 30 of them again
    m_rows = [r["messages"][0]["content"] for r in train if _origin(r) == "M"]
    assert len(set(m_rows)) == 60


def test_same_seed_same_rows_other_seed_differs(shapes):
    rows = lambda ds: [json.dumps(r, sort_keys=True) for r in ds]  # noqa: E731
    first, _, _ = load_splits(_three(shapes), seed=42)
    again, _, _ = load_splits(_three(shapes), seed=42)
    other, _, _ = load_splits(_three(shapes), seed=7)
    data_seed, _, stats = load_splits(_three(shapes, seed=7), seed=42)  # data.seed wins over training.seed
    assert rows(first) == rows(again)
    assert rows(first) != rows(other) and sorted(rows(first)) != sorted(rows(other))  # other rows, not just order
    assert rows(data_seed) == rows(other) and stats["seed"] == 7


def test_eval_fraction_count_is_held_out_of_each_source_and_never_trained(shapes):
    train, eval_ds, stats = load_splits(_three(shapes, eval_fraction=20), seed=1)
    assert len(eval_ds) == 20 and sum(s["eval"] for s in stats["train"]) == 20
    assert len(train) + len(eval_ds) == sum(s["taken"] + s["eval"] for s in stats["train"])
    key = lambda r: json.dumps(r["messages"], sort_keys=True)  # noqa: E731
    assert not {key(r) for r in train} & {key(r) for r in eval_ds}  # repeated rows stay on their side
    train, eval_ds, _ = load_splits(_three(shapes, eval_fraction=0.1), seed=1)
    assert abs(len(eval_ds) - round(0.1 * (49 + 90 + 15))) <= 1


def test_one_source_keeps_todays_behaviour(shapes):
    data = _data(format="alpaca", train=str(shapes["alpaca"]), eval_fraction=0.1)
    train, eval_ds, stats = load_splits(data, seed=42)
    assert (len(train), len(eval_ds)) == (88, 10)
    assert stats["train"] == [{"source": str(shapes["alpaca"]), "split": "train", "read": 100, "kept": 98,
                               "dropped": 2, "taken": 88, "eval": 10}]
    plain, _, _ = load_splits(_data(format="alpaca", train=str(shapes["alpaca"])), seed=42)
    assert plain["instruction"][:3] == ["A0: add 0 and 1.", "A1: add 1 and 1.", "A2: add 2 and 1."]  # file order


def test_eval_list_and_alpaca_mixture_without_input(shapes, tmp_path):
    no_input = write_jsonl(tmp_path / "noinput.jsonl", [{"instruction": f"N{i}", "response": "x"} for i in range(10)])
    data = _data(format="alpaca", train=[str(shapes["alpaca"]), {"source": str(no_input), "weight": 2}],
                 eval=[{"source": str(no_input), "rows": 3}])
    train, eval_ds, stats = load_splits(data, seed=0)
    assert len(train) == 98 + 20 and len(eval_ds) == 3 and set(train.column_names) == {"instruction", "input", "output"}
    assert stats["eval"][0]["taken"] == 3


def test_sharegpt_rows_read_as_messages_and_bad_roles_named(shapes, tmp_path):
    train, _, _ = load_splits(_data(format="messages", train=str(shapes["sharegpt"])), seed=0)
    assert train[0]["messages"][1] == {"role": "user", "content": "S0: yo"}
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"conversations": [{"from": "robot", "value": "x"}]}])
    with pytest.raises(DataError, match="column 'conversations': sharegpt role 'robot' is not one of human, user, gpt"):
        load_splits(_data(format="messages", train=str(bad)), seed=0)


@pytest.mark.parametrize("name,expect", [
    ("pref_str_prompt", {"prompt": [{"role": "user", "content": "Q0: 1+0?"}],
                         "chosen": [{"role": "assistant", "content": "1"}]}),
    ("pref_conv_prompt", {"prompt": [{"role": "user", "content": "R0: 2+0?"}],
                          "chosen": [{"role": "assistant", "content": "2"}]}),
    ("pref_one_msg", {"prompt": [{"role": "user", "content": "O0: 3+0?"}],
                      "chosen": [{"role": "assistant", "content": "3"}]}),
    ("pref_text", {"prompt": "T0: 1+0=", "chosen": "1"}),
])
def test_preference_rows_become_one_shape(shapes, name, expect):
    from trl.data_utils import is_conversational

    train, _, _ = load_splits(_data("dpo", format="preference", train=str(shapes[name])), seed=0)
    row = train[0]
    assert {k: row[k] for k in expect} == expect
    # every field of a row is conversational or none is: TRL's is_conversational looks at one of them
    assert len({is_conversational({k: row[k]}) for k in ("prompt", "chosen", "rejected")}) == 1


def test_preference_mixture_of_text_and_conversations_is_all_conversational(shapes):
    data = _data("reward", format="preference", train=[str(shapes["pref_text"]), str(shapes["pref_str_prompt"])])
    train, _, stats = load_splits(data, seed=0)
    assert len(train) == 48 and all(isinstance(r["prompt"], list) and isinstance(r["chosen"], list) for r in train)
    text_row = next(r for r in train if r["prompt"][0]["content"].startswith("T"))
    assert text_row["chosen"][0]["role"] == "assistant"


def test_refused_row_shape_names_the_column(tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "x", "chosen": ["a", "b"], "rejected": "c"}])
    with pytest.raises(DataError, match=r"column 'chosen': expected a list of \{role, content\} or \{from, value\}"):
        load_splits(_data("dpo", format="preference", train=str(bad)), seed=0)


@pytest.mark.parametrize("data,message", [
    ({"train": [{"source": "a.jsonl", "wieght": 2}]}, r"data\.train\[0\]\.wieght: unknown key in data\.train\[0\]; "
                                                      r"did you mean 'weight'\?"),
    ({"train": ["a.jsonl", {"source": "b.jsonl", "weight": 1, "rows": 3}]},
     r"data\.train\[1\]\.rows: set weight or rows"),
    ({"train": ["a.jsonl", {"source": "b.jsonl", "weight": -1}]}, r"data\.train\[1\]\.weight: -1 is out of range"),
    ({"train": [{"split": "train"}]}, r"data\.train\[0\]\.source: is required"),
    ({"train": ["a.jsonl", 3]}, r"data\.train\[1\]: expected a source"),
    ({"train": [{"source": "a.jsonl", "format": "messages"}], "format": "alpaca"},
     r"data\.train\[0\]\.format: 'messages' rows cannot be read as 'alpaca' data"),
    ({"train": ["a.jsonl"], "split": "train[:10]"}, r"data\.split: data\.train is a list: give each source its own"),
    ({"train": "a.jsonl", "eval_fraction": 0}, r"data\.eval_fraction: 0 is out of range \(a row count must be >= 1\)"),
    ({"train": "a.jsonl", "eval_fraction": 1.5}, r"data\.eval_fraction: 1\.5 is out of range"),
    ({"train": "a.jsonl", "train_on": "assistants"}, r"data\.train_on: 'assistants' is not one of .*did you mean"),
    ({"train": "a.jsonl", "format": "messages", "template": "alpaca"},
     r"data\.template: 'alpaca' is not a way to write messages rows"),
])
def test_bad_mixture_entries_name_the_key(data, message):
    with pytest.raises(RecipeError, match=message):
        _data(**data)


def test_train_on_only_for_sft():
    with pytest.raises(RecipeError, match="data.train_on: only supervised data"):
        _data("dpo", train="a.jsonl", train_on="all")


@pytest.mark.slow
def test_mixture_recipe_through_the_cli_records_sources_in_the_manifest(fx, shapes, tmp_path, cli):
    recipe = tmp_path / "mix.yaml"
    recipe.write_text(f"""
stage: sft
model: {{name_or_path: {fx['model']}}}
data:
  format: messages
  train:
    - {{source: {shapes['messages']}, weight: 0.5}}
    - {{source: {shapes['sharegpt']}, rows: 10}}
    - {{source: {shapes['alpaca']}, format: alpaca, rows: 10}}
  eval_fraction: 4
  max_length: 64
training: {{max_steps: 2, learning_rate: 1.0e-3, per_device_train_batch_size: 4}}
output_dir: {tmp_path / 'run'}
""")
    code, out, err = cli("validate", recipe)
    assert code == 0, err
    assert "data.train[0]" in out and "train_on: assistant" in out
    code, _, err = cli("train", recipe)
    assert code == 0, err
    m = json.loads((tmp_path / "run" / "manifest.json").read_text())
    taken = [s["taken"] + s["eval"] for s in m["data"]["sources"]["train"]]
    assert taken == [30, 10, 10] and m["data"]["train"]["rows"] == 46 and m["data"]["eval"]["rows"] == 4
    assert m["data"]["sources"]["seed"] == 42


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["reward_gpt2", "dpo_gpt2"])
@pytest.mark.parametrize("name", ["pref_str_prompt", "pref_one_msg"])
def test_string_prompt_conversational_chosen_trains(fx, shapes, tmp_path, cli, recipe, name):
    out = tmp_path / "run"
    code, _, err = cli("train", recipe, f"model.name_or_path={fx['model']}", f"data.train={shapes[name]}",
                       "data.split=train", "data.eval=null", "training.eval_strategy=no", "training.max_steps=2",
                       f"output_dir={out}")
    assert code == 0, err
    m = json.loads((out / "manifest.json").read_text())
    assert m["status"] == "finished" and m["data"]["train"]["kept"] == 24


@pytest.mark.slow
def test_sharegpt_sft_trains(fx, shapes, tmp_path, cli):
    out = tmp_path / "run"
    code, _, err = cli("train", "alpaca_gpt2", f"model.name_or_path={fx['model']}", f"data.train={shapes['sharegpt']}",
                       "data.format=messages", "data.eval_fraction=null", "training.eval_strategy=no",
                       "training.max_steps=2", f"output_dir={out}")
    assert code == 0, err
