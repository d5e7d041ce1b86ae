"""Prompt masking is exact: trained labels decode to response + EOS, row by row."""

import pytest

from posttrain.data.collator import IGNORE_INDEX, SFTCollator, encode_batch, tokenize_dataset
from posttrain.data.formats import alpaca_prompt, resolve_columns
from posttrain.data.sources import load_source
from posttrain.errors import DataError


def _rows(path):
    ds = load_source(str(path))
    return ds, [ds[i] for i in range(len(ds))]


def _trained(labels):
    return [t for t in labels if t != IGNORE_INDEX]


@pytest.mark.parametrize("fmt,response_key", [("alpaca", "output"), ("prompt_completion", "completion")])
def test_trained_labels_decode_to_response_plus_eos(fx, tokenizer, fmt, response_key):
    ds, rows = _rows(fx[fmt])
    cols = resolve_columns(ds.column_names, fmt, fmt)
    encoded = encode_batch(rows, fmt, cols, tokenizer, max_length=256)
    assert tokenizer.pad_token is None or tokenizer.pad_token_id == tokenizer.eos_token_id
    for row, enc in zip(rows, encoded):
        trained = _trained(enc["labels"])
        assert trained[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(trained) == row[response_key] + tokenizer.eos_token
        # the masked part is exactly the prompt
        prompt_ids = enc["input_ids"][: enc["n_prompt"]]
        expected_prompt = alpaca_prompt(row["instruction"], row.get("input")) if fmt == "alpaca" else row["prompt"]
        assert tokenizer.decode(prompt_ids) == expected_prompt
        assert enc["labels"][: enc["n_prompt"]] == [IGNORE_INDEX] * enc["n_prompt"]
        assert enc["labels"][enc["n_prompt"]:] == enc["input_ids"][enc["n_prompt"]:]


def test_alpaca_template_with_and_without_input():
    assert "### Input:\nctx\n\n### Response:\n" in alpaca_prompt("Do it.", "ctx")
    no_input = alpaca_prompt("Do it.", "  ")
    assert "### Input" not in no_input and no_input.endswith("### Instruction:\nDo it.\n\n### Response:\n")
    assert no_input.startswith("Below is an instruction that describes a task. Write a response")


def test_messages_train_only_assistant_turns(fx, tokenizer):
    ds, rows = _rows(fx["messages"])
    cols = resolve_columns(ds.column_names, "messages", "m")
    for row, enc in zip(rows, encode_batch(rows, "messages", cols, tokenizer, 256)):
        answers = [m["content"] for m in row["messages"] if m["role"] == "assistant"]
        expected = "".join(f"{a}<|im_end|>\n" for a in answers)
        assert tokenizer.decode(_trained(enc["labels"])) == expected
        # everything (masked + trained) is exactly the rendered conversation
        assert tokenizer.decode(enc["input_ids"]) == tokenizer.apply_chat_template(row["messages"], tokenize=False)


def test_collator_masks_padding_by_position_and_trains_eos(tokenizer):
    eos = tokenizer.eos_token_id
    pad = eos  # GPT-2: pad == eos
    rows = [{"input_ids": [5, 6, 7, eos], "labels": [-100, -100, 7, eos]},
            {"input_ids": [5, eos], "labels": [-100, eos]}]
    batch = SFTCollator(pad)(rows)
    assert batch["input_ids"].tolist() == [[5, 6, 7, eos], [5, eos, pad, pad]]
    assert batch["labels"].tolist() == [[-100, -100, 7, eos], [-100, eos, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    # the seed's approach (mask every pad id) would have lost both EOS labels
    seed_style = batch["input_ids"].masked_fill(batch["input_ids"] == pad, -100)
    assert (seed_style == eos).sum() == 0 and (batch["labels"] == eos).sum() == 2
    padded = SFTCollator(pad, pad_to_multiple_of=8)(rows)
    assert padded["input_ids"].shape == (2, 8) and padded["attention_mask"].sum() == 6


def test_long_prompts_dropped_and_counted(fx, tokenizer, caplog):
    ds = load_source(str(fx["alpaca"]))
    short = 30  # shorter than every Alpaca prompt (the preamble alone is longer)
    with pytest.raises(DataError, match="no row has a token to train"):
        tokenize_dataset(ds, "alpaca", tokenizer, short, "alpaca.jsonl")
    rows = [ds[i] for i in range(len(ds))]
    prompt_lens = sorted(e["n_prompt"] for e in encode_batch(rows, "alpaca", {"instruction": "instruction",
                         "input": "input", "output": "output"}, tokenizer, 256))
    cut = prompt_lens[len(prompt_lens) // 2]  # half the prompts fill max_length on their own
    out, stats = tokenize_dataset(ds, "alpaca", tokenizer, cut, "alpaca.jsonl")
    assert stats["dropped_prompt_too_long"] == sum(n >= cut for n in prompt_lens) > 0
    assert stats["kept"] == len(out) == len(ds) - stats["dropped_prompt_too_long"]
    assert f"whose prompt alone fills max_length={cut}" in caplog.text
    for labels, ids in zip(out["labels"], out["input_ids"]):
        assert len(ids) <= cut and _trained(labels), "every kept row trains at least one token"


def test_empty_fields_skipped_and_missing_columns_listed(tmp_path, tokenizer):
    import json

    p = tmp_path / "d.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in [
        {"instruction": "Say hi.", "output": "hi"},
        {"instruction": "", "output": "x"},
        {"instruction": "Say no.", "output": None},
    ]) + "\n")
    ds = load_source(str(p))
    out, stats = tokenize_dataset(ds, "alpaca", tokenizer, 256, "d.jsonl")
    assert len(out) == 1 and stats["dropped_empty_field"] == 2
    with pytest.raises(DataError, match=r"needs a column 'prompt'; columns found: instruction, output"):
        tokenize_dataset(ds, "prompt_completion", tokenizer, 256, "d.jsonl")


def _trl_labels(tokenizer, model_dir, rows, tmp_path):
    """Labels from TRL's own prompt/completion path (completion_only_loss)."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(output_dir=str(tmp_path), bf16=False, use_cpu=True, report_to="none", max_length=256,
                     completion_only_loss=True)
    trainer = SFTTrainer(model=str(model_dir), args=args, train_dataset=Dataset.from_list(rows),
                         processing_class=tokenizer)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(rows))])
    return [[t for t, m in zip(lab, att) if m] for lab, att in zip(batch["labels"].tolist(),
                                                                  batch["attention_mask"].tolist())]


def test_matches_trl_where_exact_and_right_where_trl_drops_a_token(fx, tokenizer, tmp_path):
    rows = [{"prompt": "Spell red:\n", "completion": "r e d"},  # boundary after a newline: TRL is exact
            {"prompt": "The opposite of slow is ", "completion": "quick"}]  # trailing space: BPE merges " quick"
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    trl = _trl_labels(tokenizer, fx["model"], rows, tmp_path)
    columns = {"prompt": "prompt", "completion": "completion"}
    ours = [e["labels"] for e in encode_batch(rows, "prompt_completion", columns, tokenizer, 256)]
    # exact boundary: identical labels, token for token
    assert trl[0] == ours[0]
    # trailing-space prompt: TRL's trained tokens do not decode to the completion; ours do
    assert tokenizer.decode(_trained(ours[1])) == "quick" + tokenizer.eos_token
    assert tokenizer.decode(_trained(trl[1])) != "quick" + tokenizer.eos_token
