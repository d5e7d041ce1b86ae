"""Users' data as they define it: a custom prompt format (data.template as a mapping), message and role maps, a fixed
system prompt, and data.max_prompt_length — checked at validate, labels exact row by row, counted in the manifest."""

import json

import pytest
import yaml
from conftest import manifest, one_error_line

from posttrain.data.collator import IGNORE_INDEX

INST = {"prompt": "[INST] {instruction}\n{input} [/INST]", "no_input": "[INST] {instruction} [/INST]"}


def _recipe(tmp_path, fx, data: dict, stage="sft", **top) -> str:
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump({"stage": stage, "model": {"name_or_path": str(fx["model"])},
                                 "data": {"max_length": 256, **data}, "output_dir": str(tmp_path / "run"),
                                 "training": {"max_steps": 1, "learning_rate": 1e-3, "logging_steps": 1,
                                              "per_device_train_batch_size": 4}, **top}))
    return str(p)


def _prepared(path, tokenizer):
    """The training rows as the sft stage builds them (the tensors TRL's trainer gets), and the stats."""
    from posttrain.checks import load_recipe
    from posttrain.stages import sft

    recipe = load_recipe(path, level="files")
    return sft.prepare_data(recipe, tokenizer, sft.config(recipe))


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _trained(labels):
    return [t for t in labels if t != IGNORE_INDEX]


@pytest.mark.slow
def test_inst_prompt_format_trains_with_exact_labels_with_and_without_input(fx, tokenizer, tmp_path, cli):
    rows = [json.loads(line) for line in fx["alpaca"].read_text().splitlines()]
    assert any(r.get("input") for r in rows) and any(not r.get("input") for r in rows)
    path = _recipe(tmp_path, fx, {"train": str(fx["alpaca"]), "format": "alpaca", "template": INST})
    train, _, stats = _prepared(path, tokenizer)
    assert stats["train"]["kept"] == len(rows) == len(train)
    for row, enc in zip(rows, train):  # one source, no eval split: the rows in file order
        n = next(i for i, lab in enumerate(enc["labels"]) if lab != IGNORE_INDEX)
        text = (f"[INST] {row['instruction']}\n{row['input']} [/INST]" if row.get("input")
                else f"[INST] {row['instruction']} [/INST]")
        assert tokenizer.decode(enc["input_ids"][:n]) == text
        assert enc["labels"][n:] == enc["input_ids"][n:]  # after the prompt, every token trained: output + EOS
        assert tokenizer.decode(_trained(enc["labels"])) == row["output"] + tokenizer.eos_token
    code, out, err = cli("validate", path)
    assert code == 0, err
    assert "[masked][INST] Add" in out and "[/INST][/masked][trained]" in out  # the first row, as it reaches TRL
    code, _, err = cli("train", path)
    assert code == 0, err
    assert manifest(tmp_path / "run")["metrics"]["global_step"] == 1
    from posttrain.generate import format_prompt, run_template  # generate prompts the model as it trained

    assert format_prompt(run_template(tmp_path / "run"), tokenizer, "Add 2 and 3.") == "[INST] Add 2 and 3. [/INST]"
    assert format_prompt(run_template(tmp_path / "run"), tokenizer, "Sort.", "b, a") == "[INST] Sort.\nb, a [/INST]"


@pytest.mark.slow
def test_prompt_format_with_system_prompt_writes_preference_prompts(fx, tmp_path, cli):
    """The prompt format writes text prompts for data TRL tokenizes (DPO here); {system} is data.system_prompt."""
    path = _recipe(tmp_path, fx, {"train": str(fx["preference"]), "format": "preference",
                                  "system_prompt": "Be exact.",
                                  "template": {"prompt": "<<SYS>>{system}<</SYS>> [INST] {prompt} [/INST]"}},
                   stage="dpo")
    from posttrain.checks import load_recipe
    from posttrain.data.mixture import load_splits

    train, _, _ = load_splits(load_recipe(path).data)
    first = json.loads(fx["preference"].read_text().splitlines()[0])
    assert train[0]["prompt"] == f"<<SYS>>Be exact.<</SYS>> [INST] {first['prompt']} [/INST]"
    assert "system" not in train.column_names
    code, _, err = cli("train", path)
    assert code == 0, err


@pytest.mark.slow
def test_role_mapped_conversations_train_only_assistant_turns(fx, tokenizer, tmp_path, cli):
    rows = [{"dialog": [{"speaker": "human", "text": f"{a}+{a}?"}, {"speaker": "bot", "text": str(2 * a)},
                        {"speaker": "human", "text": "And times two?"}, {"speaker": "bot", "text": str(4 * a)}]}
            for a in range(1, 9)]
    data = {"train": [{"source": _jsonl(tmp_path / "d.jsonl", rows), "column_map": {"dialog": "messages"},
                       "message_map": {"speaker": "role", "text": "content"}, "role_map": {"bot": "assistant"}}],
            "format": "messages", "system_prompt": "You are terse."}
    path = _recipe(tmp_path, fx, data)
    train, _, _ = _prepared(path, tokenizer)
    assert len(train) == len(rows)
    answers = sorted(tokenizer.decode(_trained(e["labels"])) for e in train)
    assert answers == sorted(f"{2 * a}<|im_end|>\n{4 * a}<|im_end|>\n" for a in range(1, 9))
    first = tokenizer.decode(train[0]["input_ids"])
    assert first.startswith("<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\n")
    code, _, err = cli("train", path)
    assert code == 0, err


@pytest.mark.slow
def test_max_prompt_length_cuts_prompts_from_the_left_and_the_manifest_counts_them(fx, tokenizer, tmp_path, cli):
    long = [{"prompt": "Read this. " * 30 + f"Now add {a} and {a}. Answer: ", "completion": str(2 * a)}
            for a in range(1, 7)]
    short = [{"prompt": f"Add {a} and 1. Answer: ", "completion": str(a + 1)} for a in range(1, 7)]
    src = _jsonl(tmp_path / "pc.jsonl", long + short)
    path = _recipe(tmp_path, fx, {"train": src, "format": "prompt_completion", "max_prompt_length": 12})
    train, _, stats = _prepared(path, tokenizer)
    assert stats["train"]["prompt_truncated"] == len(long)
    for row, enc in zip(long + short, train):
        full = tokenizer(row["prompt"])["input_ids"]
        n = next(i for i, lab in enumerate(enc["labels"]) if lab != IGNORE_INDEX)
        assert enc["input_ids"][:n] == (full[-12:] if len(full) > 12 else full)  # the end of the prompt kept
        assert tokenizer.decode(_trained(enc["labels"])) == row["completion"] + tokenizer.eos_token
    code, _, err = cli("train", path)
    assert code == 0, err
    assert manifest(tmp_path / "run")["data"]["train"]["prompt_truncated"] == len(long)

    # DPO: TRL tokenizes, posttrain cuts the text prompts first (their end kept) and counts them
    pairs = [{"prompt": r["prompt"], "chosen": r["completion"], "rejected": "0"} for r in long + short]
    path = _recipe(tmp_path, fx, {"train": _jsonl(tmp_path / "p.jsonl", pairs), "format": "preference",
                                  "max_prompt_length": 12}, stage="dpo", output_dir=str(tmp_path / "dpo"))
    code, _, err = cli("train", path)
    assert code == 0, err
    assert manifest(tmp_path / "dpo")["data"]["train"]["prompt_truncated"] == len(long)


def test_cut_prompts_keep_the_end_of_text_and_conversations(tokenizer):
    import datasets

    from posttrain.data.trl_rows import cut_prompts, prompt_ids

    text = "Read this. " * 30 + "Now add 2 and 2. Answer: "
    chat = [{"role": "system", "content": "Be exact."}, {"role": "user", "content": "Read this. " * 30},
            {"role": "assistant", "content": "Done."}, {"role": "user", "content": "Now add 2 and 2."}]
    for prompt in (text, chat):
        stats = {}
        ds = cut_prompts(datasets.Dataset.from_list([{"prompt": prompt}, {"prompt": prompt}]), tokenizer, 40, stats,
                         "train")
        assert stats["prompt_truncated"] == 2
        cut = ds[0]["prompt"]
        assert len(prompt_ids([cut], tokenizer)[0]) <= 40
        if isinstance(prompt, str):
            assert text.endswith(cut) and cut.endswith("Now add 2 and 2. Answer: ")
        else:  # the system turn stays, the oldest turns go first
            assert cut[0] == chat[0] and cut[-1] == chat[-1] and len(cut) < len(chat)


@pytest.mark.parametrize("data,expected", [
    ({"template": {"prompt": "[INST] {instruction} [/INST]", "no_inptu": "x"}}, "data.template.no_inptu"),
    ({"template": {"prompt": "[INST] {instruction [/INST]"}}, "data.template.prompt: not a prompt format"),
    ({"template": {"prompt": "[INST] {} [/INST]"}}, "data.template.prompt: field {}: name a column"),
    ({"format": "messages", "template": INST}, "data.template: messages rows have no prompt"),
    ({"role_map": {"bot": "model"}}, "data.role_map.bot: expected one of system | user | assistant | tool"),
    ({"message_map": {"from": "speaker"}}, "data.message_map.from: expected role | content"),
    ({"max_prompt_length": 256}, "data.max_prompt_length: 256 leaves the answer no room"),
    ({"format": "text", "max_prompt_length": 8}, "data.max_prompt_length: text rows have no prompt"),
    ({"train_on": "all", "max_prompt_length": 8}, "data.max_prompt_length: data.train_on: all trains the prompt"),
    ({"template": {"prompt": "[INST] {question} [/INST]"}}, "data.template names field(s) {question}, which are not "
                                                            "columns of the data"),
    ({"template": INST, "system_prompt": "Be brief."}, "data.system_prompt: data.template names no {system}"),
    ({"system_prompt": "Be brief."}, "data.system_prompt: the Alpaca template has no system turn"),
])
def test_refused_in_one_line(fx, tmp_path, cli, data, expected):
    train = fx["text"] if data.get("format") == "text" else fx["messages"] if data.get("format") else fx["alpaca"]
    path = _recipe(tmp_path, fx, {"train": str(train), "format": "alpaca", **data})
    one_error_line(*cli("validate", path), expected)


# public configs that use these classes (tests/data/convert): (file, the keys that carry them, what they become)
CONVERTED = {
    "axolotl/mistral-custom-inst.yml": (("datasets",), {"data.template": {**INST}, "data.format": "alpaca"}),
    "axolotl/llama3-chat-roles.yml": (("datasets",), {"data.role_map": {"bot": "assistant"}, "data.format": "messages"}),
    "axolotl/llama3-dpo-user-defined.yml": (("datasets", "max_prompt_len"), {
        "data.max_prompt_length": 1024, "data.column_map": {"question": "prompt"},
        "data.template": {"prompt": "<<SYS>>\n{system}\n<</SYS>>\n\n[INST] {prompt} [/INST]"}}),
    "llama-factory/llama3_lora_sft_chats.yaml": (("dataset",), {"data.format": "messages"}),
    "trl/dpo/gemma-7b_config_qlora.yaml": (("max_prompt_length",), {"data.max_prompt_length": 512}),
}


@pytest.mark.parametrize("file", list(CONVERTED))
def test_public_configs_convert_with_nothing_left_for_their_data(file):
    from test_convert import DATA

    from posttrain.convert import convert
    from posttrain.convert.core import MAPPED

    keys, expected = CONVERTED[file]
    conv = convert(DATA / file)
    fates = {f.key: f for f in conv.fates}
    for key in keys:
        assert fates[key].kind == MAPPED, fates[key]
    for dotted, value in expected.items():
        assert conv.get(dotted) == value, (dotted, conv.get(dotted))


def test_llama_factory_tags_and_system_columns_become_maps():
    from test_convert import DATA

    from posttrain.convert import convert

    srcs = convert(DATA / "llama-factory/llama3_lora_sft_chats.yaml").get("data.train")
    assert srcs[0]["column_map"] == {"conversation": "messages"} and "role_map" not in srcs[0]  # human: read as user
    assert srcs[1]["column_map"] == {"question": "instruction", "response": "output", "system_prompt": "system"}
    src = {}
    from posttrain.convert.llama_factory import _tags

    _tags({"role_tag": "speaker", "content_tag": "text", "user_tag": "customer", "assistant_tag": "agent",
           "observation_tag": "observation"}, src)
    assert src == {"message_map": {"speaker": "role", "text": "content"},
                   "role_map": {"customer": "user", "agent": "assistant"}}


@pytest.mark.slow
def test_converted_custom_prompt_format_trains_with_exact_labels(fx, tokenizer, tmp_path, cli):
    """axolotl's custom prompt format, converted: the recipe trains a step on Alpaca rows, every label exact."""
    from test_convert import DATA, swap_in

    out = tmp_path / "recipe.yaml"
    code, _, err = cli("convert", DATA / "axolotl/mistral-custom-inst.yml", "-o", out)
    assert code == 0, err  # nothing left to translate by hand
    over = swap_in(yaml.safe_load(out.read_text()), fx) + ["data.eval_fraction=null", "peft=null",
                                                          f"output_dir={tmp_path / 'run'}", "training.max_steps=1"]
    from posttrain.checks import load_recipe
    from posttrain.stages import sft

    recipe = load_recipe(str(out), over, level="files")
    train, _, _ = sft.prepare_data(recipe, tokenizer, sft.config(recipe))
    rows = [json.loads(line) for line in fx["alpaca"].read_text().splitlines()]
    for row, enc in zip(rows, train, strict=True):
        n = next(i for i, lab in enumerate(enc["labels"]) if lab != IGNORE_INDEX)
        text = (f"[INST] {row['instruction']}\n{row['input']} [/INST]" if row.get("input")
                else f"[INST] {row['instruction']} [/INST]")
        assert tokenizer.decode(enc["input_ids"][:n]) == text
        assert tokenizer.decode(enc["input_ids"][n:]) == row["output"] + tokenizer.eos_token
        assert enc["labels"][n:] == enc["input_ids"][n:]
    code, _, err = cli("train", out, *over)
    assert code == 0, err
