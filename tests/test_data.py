"""Data sources and bad data: every file type, slices, column maps, eval sources, clear errors."""

import json
import logging

import pytest

from posttrain.data.sources import load_source, load_splits
from posttrain.errors import DataError


@pytest.fixture(scope="module")
def rows():
    return [{"instruction": f"Say {i}.", "input": "", "response": str(i)} for i in range(20)]


@pytest.mark.parametrize("ext", ["jsonl", "json", "csv", "parquet"])
def test_local_file_types(tmp_path, rows, ext):
    import pandas as pd

    path = tmp_path / f"d.{ext}"
    df = pd.DataFrame(rows)
    {"jsonl": lambda: df.to_json(path, orient="records", lines=True),
     "json": lambda: path.write_text(json.dumps(rows)),
     "csv": lambda: df.to_csv(path, index=False),
     "parquet": lambda: df.to_parquet(path)}[ext]()
    ds = load_source(str(path), "train[:5]")
    assert len(ds) == 5 and ds[0]["response"] == "0"


def test_splits_eval_fraction_column_map_and_eval_source(tmp_path, rows):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = {"train": str(path), "split": "train[:10]", "eval_fraction": 0.2, "column_map": {"response": "output"},
            "format": "alpaca"}
    train, eval_ds, _ = load_splits(data)
    assert (len(train), len(eval_ds)) == (8, 2) and "output" in train.column_names
    assert not set(train["instruction"]) & set(eval_ds["instruction"])
    data = {"train": str(path), "split": "train[:50%]", "eval": str(path), "eval_split": "train[50%:]", "format": "alpaca"}
    train, eval_ds, _ = load_splits(data)
    assert train["instruction"][0] == "Say 0." and eval_ds["instruction"][0] == "Say 10."


@pytest.mark.parametrize("setup,split,message", [
    (None, "train", "data file not found"),
    (b"\xff\xfe\x00bad bytes\n" * 10, "train", "not UTF-8 text"),
    (b'{"instruction": "x", "output": "y"}\n', "train[5:10]", "no data|no rows"),
    (b'{"instruction": "x", "output": "y"}\n', "test", "has only the 'train' split"),
    (b'{"instruction": "x", "output": "y"}\n', "train[:oops]", "is not a split name"),
    (b'{"instruction": "x", "output": \n', "train", "cannot load data"),
])
def test_bad_data_gives_clear_error(tmp_path, setup, split, message):
    path = tmp_path / "d.jsonl"
    if setup is not None:
        path.write_bytes(setup)
    with pytest.raises(DataError, match=message):
        load_source(str(path), split)


def test_bad_data_through_the_cli(fx, tmp_path, cli):
    wrong = tmp_path / "wrong.jsonl"
    wrong.write_text('{"question": "x", "answer": "y"}\n')
    base = [f"model.name_or_path={fx['model']}", "training.max_steps=1", "data.eval_fraction=null",
            "training.eval_strategy=no"]
    for data, expected in [(tmp_path / "missing.jsonl", "data file not found"),
                           (wrong, "format 'alpaca' needs a column 'instruction'; columns found: question, answer")]:
        out = tmp_path / "out"
        code, _, err = cli("train", "alpaca_gpt2", *base, f"data.train={data}", f"output_dir={out}")
        assert code == 2 and expected in err and "Traceback" not in err
        assert not out.exists()  # refused before the run dir (posttrain.preflight)


def test_trust_remote_code_warns_with_model_name(caplog):
    from posttrain.models import warn_remote_code

    with caplog.at_level(logging.WARNING, logger="posttrain"):
        warn_remote_code({"name_or_path": "org/custom-model", "trust_remote_code": True})
        warn_remote_code({"name_or_path": "org/plain-model", "trust_remote_code": False})
    assert "org/custom-model" in caplog.text and "org/plain-model" not in caplog.text


def test_conversational_prompt_completion(tokenizer):
    from posttrain.data.collator import IGNORE_INDEX, encode_batch

    row = {"prompt": [{"role": "user", "content": "2+2?"}], "completion": [{"role": "assistant", "content": "4"}]}
    enc = encode_batch([row], "prompt_completion", {"prompt": "prompt", "completion": "completion"}, tokenizer, 64)[0]
    assert tokenizer.decode([t for t in enc["labels"] if t != IGNORE_INDEX]) == "4<|im_end|>\n"


def test_one_format_registry_is_what_every_part_reads():
    """Every stage's formats are registered; posttrain-tokenized formats render rows, TRL's do not; mixtures,
    templates and generate read the same entries."""
    from posttrain import stages
    from posttrain.data.formats import FORMATS, get, resolve_columns
    from posttrain.generate import TEMPLATES

    assert set(stages.formats()) <= set(FORMATS)
    for f in FORMATS.values():
        assert (f.segments is not None) == (f.tokenized_by == "posttrain" and f.reads_as is None), f.name
        assert all(m in FORMATS for m in f.mixable) and f.templates
        assert f.prompts_with is None or f.prompts_with in TEMPLATES
    assert stages.get("sft").formats == tuple(n for n, f in FORMATS.items() if f.tokenized_by == "posttrain"
                                              and f.reads_as is None)
    assert resolve_columns(["instruction", "response", "input"], "alpaca", "x") == {
        "instruction": "instruction", "output": "response", "input": "input"}
    assert resolve_columns(["conversations", "messages"], "sharegpt", "x") == {"messages": "conversations"}
    with pytest.raises(DataError, match="format 'prompt' needs a column 'prompt'"):
        resolve_columns(["question"], "prompt", "x")
    with pytest.raises(DataError, match="unknown data format 'textt'"):
        get("textt")
