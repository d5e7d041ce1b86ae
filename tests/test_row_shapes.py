"""Row shapes of public datasets reach TRL faithfully or are refused: preference answers that repeat the prompt,
a `system` column beside conversations, unpaired (KTO) rows in the chat template and as {messages, label}.

Each test writes a few rows shaped like the public set it names and asserts on the exact rows the TRL trainer
is constructed with (the trainer class is replaced by one that records its arguments)."""

import json

import pytest
from tiny import CHATML


def U(text):  # noqa: N802 - reads like the rows
    return {"role": "user", "content": text}


def A(text):  # noqa: N802
    return {"role": "assistant", "content": text}


def S(text):  # noqa: N802
    return {"role": "system", "content": text}


class _Built(Exception):
    pass


def _rows_reaching_trl(monkeypatch, trainer: str, recipe: str, overrides: list[str]):
    """Build the stage with the TRL trainer class replaced; return (train rows, processing_class) it was given."""
    import trl
    import trl.experimental.orpo

    seen = {}

    class Recorder:
        def __init__(self, *args, **kwargs):
            seen.update(kwargs)
            raise _Built

    owner = trl.experimental.orpo if trainer == "ORPOTrainer" else trl
    monkeypatch.setattr(owner, trainer, Recorder)
    from posttrain import stages
    from posttrain.checks import load_recipe

    r = load_recipe(recipe, overrides)
    with pytest.raises(_Built):
        stages.get(r.stage).build(r)
    return [dict(row) for row in seen["train_dataset"]], seen["processing_class"]


def _write(tmp_path, rows, name="rows.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _base(fx, tmp_path, path, *extra):
    return [f"model.name_or_path={fx['model']}", f"data.train={path}", "data.eval=null", "data.eval_fraction=null",
            "training.eval_strategy=no", f"output_dir={tmp_path / 'out'}", *extra]


# argilla/ultrafeedback-binarized-preferences-cleaned: a string prompt, and chosen/rejected that are the whole
# conversation (the user turn included)
ULTRAFEEDBACK = [
    {"source": "evol_instruct", "prompt": "Add 3 and 4.", "chosen": [U("Add 3 and 4."), A("7")],
     "chosen-rating": 5.0, "chosen-model": "gpt-4", "rejected": [U("Add 3 and 4."), A("8")],
     "rejected-rating": 2.0, "rejected-model": "llama"},
    {"source": "sharegpt", "prompt": "Reverse apple.", "chosen": [U("Reverse apple."), A("elppa")],
     "chosen-rating": 4.5, "chosen-model": "gpt-4", "rejected": [U("Reverse apple."), A("apple")],
     "rejected-rating": 1.0, "rejected-model": "llama"},
]
# argilla/distilabel-capybara-dpo-7k-binarized: multi-turn conversations that differ only in the last answer
CAPYBARA = [
    {"source": "Know-Logic", "prompt": "Add 1 and 2.",
     "chosen": [U("Add 1 and 2."), A("3"), U("Double it."), A("6")],
     "rejected": [U("Add 1 and 2."), A("3"), U("Double it."), A("5")], "rating_chosen": 5, "rating_rejected": 2},
    {"source": "Dove", "prompt": "Name a fruit.",
     "chosen": [U("Name a fruit."), A("apple"), U("Another."), A("cherry")],
     "rejected": [U("Name a fruit."), A("apple"), U("Another."), A("river")], "rating_chosen": 4, "rating_rejected": 1},
]


@pytest.mark.parametrize("stage,trainer", [("dpo_gpt2", "DPOTrainer"), ("orpo_gpt2", "ORPOTrainer")])
def test_ultrafeedback_rows_reach_trl_with_the_prompt_once_and_the_answer_alone(fx, tmp_path, monkeypatch, stage,
                                                                                trainer):
    path = _write(tmp_path, ULTRAFEEDBACK)
    rows, _ = _rows_reaching_trl(monkeypatch, trainer, stage, _base(fx, tmp_path, path))
    assert rows == [{"prompt": [U("Add 3 and 4.")], "chosen": [A("7")], "rejected": [A("8")]},
                    {"prompt": [U("Reverse apple.")], "chosen": [A("elppa")], "rejected": [A("apple")]}]


def test_capybara_multi_turn_rows_keep_the_shared_turns_as_the_prompt(fx, tmp_path, monkeypatch):
    rows = [dict(CAPYBARA[0]), dict(CAPYBARA[1], prompt="Another.")]  # the first or the last user turn: same rows
    path = _write(tmp_path, rows)
    got, _ = _rows_reaching_trl(monkeypatch, "DPOTrainer", "dpo_gpt2", _base(fx, tmp_path, path))
    assert got == [
        {"prompt": [U("Add 1 and 2."), A("3"), U("Double it.")], "chosen": [A("6")], "rejected": [A("5")]},
        {"prompt": [U("Name a fruit."), A("apple"), U("Another.")], "chosen": [A("cherry")], "rejected": [A("river")]},
    ]


def test_a_prompt_that_is_not_part_of_the_shared_conversation_is_refused_at_validate(fx, tmp_path, cli):
    path = _write(tmp_path, [dict(ULTRAFEEDBACK[0], prompt="Something else entirely.")])
    code, _, err = cli("validate", "dpo_gpt2", *_base(fx, tmp_path, path))
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "column 'prompt': chosen and rejected share 1 opening turn(s) that the prompt is not part of" in err
    # and the way out it names works: without the prompt column the conversations alone give the prompt
    code, out, err = cli("validate", "dpo_gpt2", *_base(fx, tmp_path, path), "data.column_map={prompt: question}")
    assert code == 0, err


def test_a_system_column_goes_in_front_as_a_system_turn(fx, tmp_path, monkeypatch, tokenizer):
    from posttrain.data.collator import encode_batch
    from posttrain.data.mixture import load_splits

    # LLaMA-Factory sharegpt rows: {conversations: [{from, value}], system}
    sharegpt = _write(tmp_path, [{"conversations": [{"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "4"}],
                                  "system": "Be terse."},
                                 {"conversations": [{"from": "human", "value": "3+3?"}, {"from": "gpt", "value": "6"}],
                                  "system": ""}], "sharegpt.jsonl")
    train, _, _ = load_splits({"format": "messages", "train": str(sharegpt)})
    assert train["messages"] == [[S("Be terse."), U("2+2?"), A("4")], [U("3+3?"), A("6")]]
    enc = encode_batch([train[0]], "messages", {"messages": "messages"}, tokenizer, 64)[0]
    assert tokenizer.decode(enc["input_ids"]).startswith("<|im_start|>system\nBe terse.<|im_end|>")

    # preference rows with a system column (ultrafeedback shape plus a system prompt)
    pref = _write(tmp_path, [dict(ULTRAFEEDBACK[0], system="Answer with a number.")], "pref.jsonl")
    rows, _ = _rows_reaching_trl(monkeypatch, "DPOTrainer", "dpo_gpt2", _base(fx, tmp_path, pref))
    assert rows == [{"prompt": [S("Answer with a number."), U("Add 3 and 4.")], "chosen": [A("7")],
                     "rejected": [A("8")]}]


def test_a_system_column_is_refused_where_rows_are_text(fx, tmp_path, cli):
    alpaca = _write(tmp_path, [{"instruction": "Add 1 and 2.", "output": "3", "system": "Be terse."}])
    code, _, err = cli("validate", "alpaca_gpt2", *_base(fx, tmp_path, alpaca))
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "column 'system': alpaca rows written as text have no place for a system turn" in err
    code, out, err = cli("validate", "alpaca_gpt2", *_base(fx, tmp_path, alpaca, "data.template=chat"))
    assert code == 0, err
    assert "<|im_start|>system\nBe terse.<|im_end|>" in out  # the label view shows it in front
    pairs = _write(tmp_path, [{"prompt": "Add 1 and 2.", "chosen": "3", "rejected": "4", "system": "Be terse."}],
                   "text_pairs.jsonl")
    code, _, err = cli("validate", "dpo_gpt2", *_base(fx, tmp_path, pairs))
    assert code == 2 and "column 'system': preference rows written as text have no place" in err


def test_unpaired_rows_take_the_chat_template_and_messages_label_rows(fx, tmp_path, monkeypatch):
    kto = ["training.per_device_train_batch_size=2"]
    text = _write(tmp_path, [{"prompt": "Add 1 and 2.", "completion": "3", "label": True},
                             {"prompt": "Add 2 and 2.", "completion": "5", "label": False}], "unpaired.jsonl")
    template = tmp_path / "chatml.jinja"
    template.write_text(CHATML.replace("im_start|>", "im_start|> "))  # differs from the tokenizer's own
    rows, tok = _rows_reaching_trl(monkeypatch, "KTOTrainer", "kto_gpt2", _base(
        fx, tmp_path, text, "data.format=unpaired", "data.template=chat", f"model.chat_template={template}", *kto))
    assert sorted(rows, key=lambda r: r["label"]) == [
        {"prompt": [U("Add 2 and 2.")], "completion": [A("5")], "label": False},
        {"prompt": [U("Add 1 and 2.")], "completion": [A("3")], "label": True}]
    assert tok.chat_template == template.read_text()  # the rows are rendered with model.chat_template

    # LLaMA-Factory KTO rows: {messages, label}
    lf = _write(tmp_path, [{"messages": [S("Be terse."), U("Add 1 and 2."), A("3")], "label": True},
                           {"messages": [U("Add 2 and 2."), A("5")], "label": False}], "lf_kto.jsonl")
    rows, _ = _rows_reaching_trl(monkeypatch, "KTOTrainer", "kto_gpt2",
                                 _base(fx, tmp_path, lf, "data.format=unpaired", *kto))
    assert sorted(rows, key=lambda r: r["label"]) == [
        {"prompt": [U("Add 2 and 2.")], "completion": [A("5")], "label": False},
        {"prompt": [S("Be terse."), U("Add 1 and 2.")], "completion": [A("3")], "label": True}]
