"""Data sources and bad data: every file type, slices, column maps, eval sources, clear errors."""

import json
import logging

import pytest

from posttrain.data.mixture import load_splits
from posttrain.data.sources import load_source
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
        assert all(FORMATS[m].as_messages is not None for m in f.mixable) and f.templates
        assert set(f.may_be_blank) <= set(f.optional) and set(f.turn_columns) <= set(f.columns)
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


def _long_document(tokenizer, n_tokens: int) -> str:
    import random

    from tiny import WORDS

    rng, words = random.Random(5), []
    while len(tokenizer(" ".join(words))["input_ids"]) < n_tokens:
        words += rng.sample(WORDS, 8)
    return " ".join(words)


def test_text_rows_are_split_into_chunks_every_token_trained_none_lost(tokenizer, tmp_path):
    """A document five times max_length becomes consecutive chunks of at most max_length tokens; what the
    collators build from them holds every token of the document (and its EOS) once, each one a label."""
    import datasets

    from posttrain.data.collator import IGNORE_INDEX, SFTCollator, tokenize_dataset
    from posttrain.data.packing import PackedCollator

    max_length = 32
    doc = _long_document(tokenizer, 5 * max_length + 3)
    ds = datasets.Dataset.from_list([{"body": doc, "id": 1}, {"body": "  ", "id": 2}, {"body": "short one", "id": 3}])
    ds = ds.rename_column("body", "text")  # what data.column_map does
    rows, stats = tokenize_dataset(ds, "text", tokenizer, max_length, "corpus")
    want = tokenizer(doc)["input_ids"] + [tokenizer.eos_token_id]
    n_chunks = -(-len(want) // max_length)
    assert n_chunks >= 6
    assert stats == {"rows": 3, "kept": 2, "truncated": 0, "dropped_empty_field": 1, "dropped_prompt_too_long": 0,
                     "split": 1, "chunks": n_chunks + 1}
    chunks = [rows[i] for i in range(n_chunks)]
    assert all(len(c["input_ids"]) == max_length for c in chunks[:-1]) and len(chunks[-1]["input_ids"]) <= max_length
    batches = [SFTCollator(tokenizer.eos_token_id)([c]) for c in chunks]  # batch size 1: one step per chunk
    ids = [t for b in batches for t in b["input_ids"][0].tolist()]
    labels = [t for b in batches for t in b["labels"][0].tolist()]
    assert ids == want and labels == want  # nothing lost between chunks, every token (EOS too) trained
    assert rows[n_chunks]["input_ids"] == rows[n_chunks]["labels"] == tokenizer("short one")["input_ids"] + [
        tokenizer.eos_token_id]

    packed = PackedCollator(tokenizer.eos_token_id)(chunks[:3])  # packing: chunks stay apart like other rows
    assert packed["input_ids"][0].tolist() == want[:3 * max_length]
    assert packed["position_ids"][0].tolist() == list(range(max_length)) * 3
    assert [i for i, t in enumerate(packed["labels"][0].tolist()) if t == IGNORE_INDEX] == [0, 32, 64]


@pytest.mark.slow
def test_text_document_five_times_max_length_trains_as_chunks(fx, tokenizer, tmp_path, cli):
    """One epoch at batch 1 over one document 5 x max_length: a step per chunk (at least five), manifest counts."""
    path = tmp_path / "corpus.jsonl"
    path.write_text(json.dumps({"body": _long_document(tokenizer, 5 * 32 + 3)}) + "\n")
    out = tmp_path / "run"
    code, _, err = cli("train", "text_gpt2", f"model.name_or_path={fx['model']}", f"data.train={path}",
                       "data.name=null", "data.eval_fraction=null", "data.column_map={body: text}",
                       "data.max_length=32", f"output_dir={out}", "training.per_device_train_batch_size=1",
                       "training.gradient_accumulation_steps=1", "training.warmup_steps=0", "training.logging_steps=1",
                       "training.eval_strategy=no", "training.save_steps=100")
    assert code == 0, err
    m = json.loads((out / "manifest.json").read_text())
    assert m["data"]["train"]["rows"] == 1 and m["data"]["train"]["split"] == 1
    assert m["data"]["train"]["chunks"] >= 5 and m["metrics"]["global_step"] == m["data"]["train"]["chunks"]


def test_text_mixture_and_validate_preview(fx, tmp_path, cli):
    """Text sources mix (each renamed by its own column_map); validate shows a chunk with every token trained."""
    from posttrain.data.mixture import load_splits

    a = tmp_path / "a.jsonl"
    a.write_text("".join(json.dumps({"text": f"apple river {i} " * 30}) + "\n" for i in range(4)))
    b = tmp_path / "b.jsonl"
    b.write_text("".join(json.dumps({"body": f"cloud {i}", "n": i}) + "\n" for i in range(6)))
    data = {"format": "text", "train": [{"source": str(a)}, {"source": str(b), "column_map": {"body": "text"},
                                                              "rows": 3}]}
    train, _, stats = load_splits(data, seed=1)
    assert train.column_names == ["text"] and len(train) == 7 and [s["taken"] for s in stats["train"]] == [4, 3]
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"stage: sft\nmodel: {{name_or_path: {fx['model']}}}\ndata: {{format: text, max_length: 16, "
                      f"train: [{{source: {a}}}, {{source: {b}, column_map: {{body: text}}}}]}}\n"
                      f"output_dir: {tmp_path / 'out'}\n")
    code, out, err = cli("validate", recipe)
    assert code == 0, err
    assert "0 masked, 16 trained; every token trained, EOS appended; a document of" in out
    assert out.rstrip().splitlines()[-1] == "[trained]apple river 0 apple river 0 apple river 0 apple river 0[/trained]"
