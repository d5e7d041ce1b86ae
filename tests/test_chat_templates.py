"""Shipped chat templates by name (`model.chat_template: qwen3`): each renders a conversation as its family's
published format, and training on messages data with it trains the assistant turns and their end-of-turn tokens,
nothing else."""

from datetime import datetime
from pathlib import Path

import pytest

from posttrain import chat_templates
from posttrain.checks import load_recipe
from posttrain.data.collator import IGNORE_INDEX, encode_batch
from posttrain.errors import RecipeError

CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"},
                {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Two plus two?"},
                {"role": "assistant", "content": "Four."}]

TODAY = datetime.now().strftime("%d %B %Y")  # SmolLM3 writes today's date into its system block
DS_BOS, DS_EOS, DS_USER, DS_ASSISTANT = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>"

# name: (bos, eos, the family's other special tokens, end-of-turn token,
#        CONVERSATION as the family's published format writes it (see each template's header for the source),
#        the trained text of each assistant turn)
FAMILIES = {
    "chatml": (None, "<|im_end|>", ["<|im_start|>"], "<|im_end|>",
               "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n"
               "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nTwo plus two?<|im_end|>\n"
               "<|im_start|>assistant\nFour.<|im_end|>\n",
               ["Hello!<|im_end|>\n", "Four.<|im_end|>\n"]),
    "qwen2": (None, "<|im_end|>", ["<|im_start|>", "<|endoftext|>"], "<|im_end|>",
              "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n"
              "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nTwo plus two?<|im_end|>\n"
              "<|im_start|>assistant\nFour.<|im_end|>\n",
              ["Hello!<|im_end|>\n", "Four.<|im_end|>\n"]),
    "qwen3": (None, "<|im_end|>", ["<|im_start|>", "<think>", "</think>"], "<|im_end|>",
              "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n"
              "<|im_start|>assistant\n<think>\n\n</think>\n\nHello!<|im_end|>\n<|im_start|>user\nTwo plus two?<|im_end|>\n"
              "<|im_start|>assistant\n<think>\n\n</think>\n\nFour.<|im_end|>\n",
              ["<think>\n\n</think>\n\nHello!<|im_end|>\n", "<think>\n\n</think>\n\nFour.<|im_end|>\n"]),
    # non-thinking mode: the empty think block ends the generation prompt, so it is not trained
    "qwen3_nothink": (None, "<|im_end|>", ["<|im_start|>", "<think>", "</think>"], "<|im_end|>",
                      "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n"
                      "<|im_start|>assistant\n<think>\n\n</think>\n\nHello!<|im_end|>\n<|im_start|>user\nTwo plus two?"
                      "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\nFour.<|im_end|>\n",
                      ["Hello!<|im_end|>\n", "Four.<|im_end|>\n"]),
    "llama2": ("<s>", "</s>", [], "</s>",
               "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi there [/INST] Hello! </s><s>[INST] Two plus two? [/INST] Four. </s>",
               [" Hello! </s>", " Four. </s>"]),
    "llama3": ("<|begin_of_text|>", "<|eot_id|>", ["<|start_header_id|>", "<|end_header_id|>"], "<|eot_id|>",
               "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
               "<|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>"
               "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
               "<|start_header_id|>user<|end_header_id|>\n\nTwo plus two?<|eot_id|>"
               "<|start_header_id|>assistant<|end_header_id|>\n\nFour.<|eot_id|>",
               ["Hello!<|eot_id|>", "Four.<|eot_id|>"]),
    "mistral": ("<s>", "</s>", ["[INST]", "[/INST]"], "</s>",
                "<s>[INST] Be brief.\n\nHi there[/INST] Hello!</s>[INST] Two plus two?[/INST] Four.</s>",
                [" Hello!</s>", " Four.</s>"]),
    "gemma": ("<bos>", "<eos>", ["<start_of_turn>", "<end_of_turn>"], "<end_of_turn>",
              "<bos><start_of_turn>user\nBe brief.\n\nHi there<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n"
              "<start_of_turn>user\nTwo plus two?<end_of_turn>\n<start_of_turn>model\nFour.<end_of_turn>\n",
              ["Hello!<end_of_turn>\n", "Four.<end_of_turn>\n"]),
    "phi3": ("<s>", "<|endoftext|>", ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"], "<|end|>",
             "<|system|>\nBe brief.<|end|>\n<|user|>\nHi there<|end|>\n<|assistant|>\nHello!<|end|>\n"
             "<|user|>\nTwo plus two?<|end|>\n<|assistant|>\nFour.<|end|>\n",
             ["Hello!<|end|>\n", "Four.<|end|>\n"]),
    "phi4": (None, "<|endoftext|>", ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"], "<|end|>",
             "<|system|>Be brief.<|end|><|user|>Hi there<|end|><|assistant|>Hello!<|end|>"
             "<|user|>Two plus two?<|end|><|assistant|>Four.<|end|>",
             ["Hello!<|end|>", "Four.<|end|>"]),
    "deepseek": (DS_BOS, DS_EOS, [DS_USER, DS_ASSISTANT], DS_EOS,
                 f"{DS_BOS}Be brief.{DS_USER}Hi there{DS_ASSISTANT}Hello!{DS_EOS}{DS_USER}Two plus two?{DS_ASSISTANT}Four.{DS_EOS}",
                 [f"Hello!{DS_EOS}", f"Four.{DS_EOS}"]),
    # R1 starts every answer inside <think>\n (the generation prompt), so the rest of the think block is trained
    "deepseek_r1": (DS_BOS, DS_EOS, [DS_USER, DS_ASSISTANT, "<think>", "</think>"], DS_EOS,
                    f"{DS_BOS}Be brief.{DS_USER}Hi there{DS_ASSISTANT}<think>\n\n</think>\n\nHello!{DS_EOS}"
                    f"{DS_USER}Two plus two?{DS_ASSISTANT}<think>\n\n</think>\n\nFour.{DS_EOS}",
                    [f"\n</think>\n\nHello!{DS_EOS}", f"\n</think>\n\nFour.{DS_EOS}"]),
    "vicuna": ("<s>", "</s>", [], "</s>",
               "<s>Be brief. USER: Hi there ASSISTANT: Hello!</s>USER: Two plus two? ASSISTANT: Four.</s>",
               [" Hello!</s>", " Four.</s>"]),
    "zephyr": ("<s>", "</s>", ["<|system|>", "<|user|>", "<|assistant|>"], "</s>",
               "<|system|>\nBe brief.</s>\n<|user|>\nHi there</s>\n<|assistant|>\nHello!</s>\n"
               "<|user|>\nTwo plus two?</s>\n<|assistant|>\nFour.</s>\n",
               ["Hello!</s>\n", "Four.</s>\n"]),
    "smollm3": (None, "<|im_end|>", ["<|im_start|>"], "<|im_end|>",
                "<|im_start|>system\n## Metadata\n\nKnowledge Cutoff Date: June 2025\nToday Date: " + TODAY + "\n"
                "Reasoning Mode: /think\n\n## Custom Instructions\n\nBe brief.\n\n"
                "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
                "<|im_start|>user\nTwo plus two?<|im_end|>\n<|im_start|>assistant\nFour.<|im_end|>\n",
                ["Hello!<|im_end|>\n", "Four.<|im_end|>\n"]),
}


def test_every_shipped_template_is_tested():
    assert set(chat_templates.shipped()) <= set(FAMILIES)
    assert set(chat_templates.VARIANTS) <= set(FAMILIES)


def _recipe(tmp_path, fx, template: str) -> Path:
    path = tmp_path / "chat.yaml"
    path.write_text(f"""
stage: sft
model: {{name_or_path: {fx['model']}, chat_template: {template}}}
data: {{train: {fx['messages']}, format: messages, max_length: 256}}
training: {{max_steps: 1, learning_rate: 1.0e-3, per_device_train_batch_size: 4}}
output_dir: {tmp_path / 'run'}
""")
    return path


def _family_tokenizer(fx, name: str, template: str):
    """The tiny fixture tokenizer with this family's BOS/EOS and special tokens, rendering with `template`."""
    from transformers import AutoTokenizer

    bos, eos, extra, *_ = FAMILIES[name]
    tok = AutoTokenizer.from_pretrained(fx["model"])
    tok.add_special_tokens({**({"bos_token": bos} if bos else {}), "eos_token": eos, "additional_special_tokens": extra})
    tok.chat_template = template
    return tok


def _trained_runs(enc, tok) -> list[str]:
    """The decoded runs of consecutive trained tokens, in order."""
    runs, run = [], []
    for token, label in zip(enc["input_ids"], enc["labels"]):
        if label == IGNORE_INDEX:
            if run:
                runs.append(run)
            run = []
        else:
            assert label == token
            run.append(token)
    return [tok.decode(r) for r in runs + ([run] if run else [])]


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_template_by_name_renders_the_published_format_and_trains_the_assistant_turns(fx, tmp_path, name):
    recipe = load_recipe(str(_recipe(tmp_path, fx, name)))
    text = recipe.model["chat_template"]
    assert text == chat_templates.text(name) and recipe.resolved["model"]["chat_template"] == text
    tok = _family_tokenizer(fx, name, text)
    *_, eot, rendered, trained = FAMILIES[name]
    assert tok.apply_chat_template(CONVERSATION, tokenize=False) == rendered

    enc = encode_batch([{"messages": CONVERSATION}], "messages", {"messages": "messages"}, tok, 512)[0]
    assert enc["status"] == "ok" and tok.decode(enc["input_ids"]) == rendered
    assert _trained_runs(enc, tok) == trained  # each assistant turn, its end-of-turn token included; nothing else
    eot_id = tok.convert_tokens_to_ids(eot)
    assert [t for t in enc["labels"] if t == eot_id] == [eot_id, eot_id]
    # last_assistant: only the second turn; the first one's end-of-turn token is masked with the rest
    last = encode_batch([{"messages": CONVERSATION}], "messages", {"messages": "messages"}, tok, 512,
                        train_on="last_assistant")[0]
    assert _trained_runs(last, tok) == trained[-1:]


@pytest.mark.parametrize("name,generation_prompt", [
    ("qwen3", "<|im_start|>assistant\n"), ("qwen3_nothink", "<|im_start|>assistant\n<think>\n\n</think>\n\n"),
    ("llama3", "<|start_header_id|>assistant<|end_header_id|>\n\n"), ("gemma", "<start_of_turn>model\n"),
    ("phi3", "<|assistant|>\n"), ("phi4", "<|assistant|>"), ("deepseek", DS_ASSISTANT),
    ("deepseek_r1", DS_ASSISTANT + "<think>\n"), ("vicuna", "ASSISTANT:"), ("smollm3", "<|im_start|>assistant\n"),
])
def test_generation_prompt_is_where_the_model_starts(fx, name, generation_prompt):
    tok = _family_tokenizer(fx, name, chat_templates.text(name))
    head = tok.apply_chat_template(CONVERSATION[:2], tokenize=False, add_generation_prompt=True)
    assert head.endswith("Hi there" + {"llama3": "<|eot_id|>", "gemma": "<end_of_turn>\n", "phi4": "<|end|>",
                                       "phi3": "<|end|>\n", "deepseek": "", "deepseek_r1": "", "vicuna": " "}
                         .get(name, "<|im_end|>\n") + generation_prompt)


def test_thinking_switches_and_reasoning(fx):
    """Qwen3's enable_thinking (a row's chat_template_kwargs), reasoning given as reasoning_content or in the
    content, SmolLM3's /no_think; qwen3_nothink is qwen3 with thinking off."""
    qwen3 = _family_tokenizer(fx, "qwen3", chat_templates.text("qwen3"))
    cols = {"messages": "messages"}
    off = encode_batch([{"messages": CONVERSATION, "chat_template_kwargs": {"enable_thinking": False}}], "messages", cols,
                       qwen3, 512)[0]
    assert _trained_runs(off, qwen3) == FAMILIES["qwen3_nothink"][-1]
    turns = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "Four.", "reasoning_content": "\n2+2=4\n"}]
    inline = [turns[0], {"role": "assistant", "content": "<think>\n2+2=4\n</think>\n\nFour."}]
    expected = "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n<think>\n2+2=4\n</think>\n\nFour.<|im_end|>\n"
    assert qwen3.apply_chat_template(turns, tokenize=False) == qwen3.apply_chat_template(inline, tokenize=False) == expected
    r1 = _family_tokenizer(fx, "deepseek_r1", chat_templates.text("deepseek_r1"))
    enc = encode_batch([{"messages": inline}], "messages", cols, r1, 512)[0]
    assert _trained_runs(enc, r1) == [f"2+2=4\n</think>\n\nFour.{DS_EOS}"]

    smol = _family_tokenizer(fx, "smollm3", chat_templates.text("smollm3"))
    for row in ({"messages": CONVERSATION, "chat_template_kwargs": {"enable_thinking": False}},
                {"messages": [{"role": "system", "content": "Be brief. /no_think"}, *CONVERSATION[1:]]}):
        enc = encode_batch([row], "messages", cols, smol, 512)[0]
        assert "Reasoning Mode: /no_think\n\n## Custom Instructions\n\nBe brief.\n\n" in smol.decode(enc["input_ids"])
        assert _trained_runs(enc, smol) == ["Hello!<|im_end|>\n", "Four.<|im_end|>\n"]  # the empty think block is not
        assert smol.decode(enc["input_ids"]).count("<|im_start|>assistant\n<think>\n\n</think>\nHello!") == 1


def test_a_role_the_family_has_no_turn_for_is_one_line(fx):
    from posttrain.errors import DataError

    tok = _family_tokenizer(fx, "gemma", chat_templates.text("gemma"))
    row = {"messages": [*CONVERSATION[:3], {"role": "tool", "content": "42"}, CONVERSATION[4]]}
    with pytest.raises(DataError, match="chat template cannot render this conversation: gemma template: role tool is not"):
        encode_batch([row], "messages", {"messages": "messages"}, tok, 512)


def test_default_system_prompts(fx):
    """Without a system message, Qwen2.5 and Vicuna write their own; SmolLM3 its default for the reasoning mode."""
    turns = CONVERSATION[1:3]
    qwen2 = _family_tokenizer(fx, "qwen2", chat_templates.text("qwen2"))
    assert qwen2.apply_chat_template(turns, tokenize=False).startswith(
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n<|im_start|>user\n")
    vicuna = _family_tokenizer(fx, "vicuna", chat_templates.text("vicuna"))
    assert vicuna.apply_chat_template(turns, tokenize=False) == (
        "<s>A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the user's questions. USER: Hi there ASSISTANT: Hello!</s>")
    smol = _family_tokenizer(fx, "smollm3", chat_templates.text("smollm3"))
    assert "## Custom Instructions\n\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face.\n\n<|im_start|>" \
        in smol.apply_chat_template(turns, tokenize=False, enable_thinking=False)


# The model makers' own templates, as TRL ships copies of them (for identity checks): ours renders the same text,
# for one exchange where theirs re-renders earlier turns (Qwen3 drops their think blocks) or ends the conversation
# on <|endoftext|> after the end-of-turn token (Phi-3).
TRL_ORIGINALS = {"llama3": ("llama3", ""), "gemma": ("gemma3", ""), "qwen2": ("qwen2_5", ""),
                 "deepseek": ("deepseekv3", ""), "qwen3": ("qwen3", ""), "phi3": ("phi3", "<|endoftext|>")}


@pytest.mark.parametrize("name", sorted(TRL_ORIGINALS))
def test_same_text_as_the_model_makers_template(fx, name):
    import trl

    file, tail = TRL_ORIGINALS[name]
    original = Path(trl.__file__).parent / "chat_templates" / f"{file}.jinja"
    if not original.is_file():
        pytest.skip(f"this TRL ships no {original.name}")
    ours = _family_tokenizer(fx, name, chat_templates.text(name))
    theirs = _family_tokenizer(fx, name, original.read_text(encoding="utf-8"))
    convs = [CONVERSATION[:3], CONVERSATION[1:3]] + ([CONVERSATION] if name in ("llama3", "gemma", "qwen2", "deepseek") else [])
    for conv in convs:
        assert ours.apply_chat_template(conv, tokenize=False) + tail == theirs.apply_chat_template(conv, tokenize=False)


def test_aliases_and_unknown_names(fx, tmp_path):
    assert chat_templates.text("gemma3") == chat_templates.text("gemma2") == chat_templates.text("gemma")
    assert chat_templates.text("qwen25") == chat_templates.text("qwen2")
    assert chat_templates.text("llama3_2") == chat_templates.text("llama3")
    assert load_recipe(str(_recipe(tmp_path, fx, "gemma3"))).model["chat_template"] == chat_templates.text("gemma")
    with pytest.raises(RecipeError, match=r"chat.yaml:3: model.chat_template: no shipped template named 'qwen_3'; "
                                          r"did you mean 'qwen3'\? \(one of chatml, .*zephyr"):
        load_recipe(str(_recipe(tmp_path, fx, "qwen_3")))
    # a bare word that names no template but a file beside the recipe is that file
    (tmp_path / "mine").write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    assert load_recipe(str(_recipe(tmp_path, fx, "mine"))).model["chat_template"].startswith("{% for m")


def test_recipes_lists_the_templates_and_their_other_names(cli):
    code, out, err = cli("recipes")
    assert code == 0, err
    assert any(line.split()[:2] == ["gemma", "gemma2,"] for line in out.splitlines())
    assert "qwen3               qwen3_nothink" in out


@pytest.mark.slow
def test_trains_with_a_template_by_name(fx, tmp_path, cli):
    from transformers import AutoTokenizer

    code, _, err = cli("train", _recipe(tmp_path, fx, "qwen3"))
    assert code == 0, err
    assert AutoTokenizer.from_pretrained(tmp_path / "run").chat_template == chat_templates.text("qwen3")
