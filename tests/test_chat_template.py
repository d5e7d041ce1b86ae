"""model.chat_template (inline or a .jinja file), data.template, data.train_on: what is rendered, saved, trained."""

import json

import pytest

from posttrain.checks import load_recipe
from posttrain.data.collator import IGNORE_INDEX, encode_batch
from posttrain.errors import RecipeError

# Distinct from tiny.CHATML (the fixture tokenizer's own), so a test can tell which one rendered a row.
CUSTOM = ("{% for m in messages %}<|im_start|>{{ m['role'] | upper }}: {{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>ASSISTANT: {% endif %}")


def _trained(enc, tokenizer) -> str:
    return tokenizer.decode([t for t in enc["labels"] if t != IGNORE_INDEX])


def _recipe(tmp_path, fx, template_line, data="messages", extra=""):
    (tmp_path / "tpl").mkdir(exist_ok=True)
    (tmp_path / "tpl" / "custom.jinja").write_text(CUSTOM)
    path = tmp_path / "recipes" / "chat.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(f"""
stage: sft
model:
  name_or_path: {fx['model']}
  {template_line}
data: {{train: {fx[data]}, format: {data}, max_length: 128{extra}}}
training: {{max_steps: 2, learning_rate: 1.0e-3, per_device_train_batch_size: 4}}
output_dir: {tmp_path / 'run'}
""")
    return path


def test_template_file_is_relative_to_the_recipe_and_read_at_validation(fx, tmp_path, monkeypatch):
    path = _recipe(tmp_path, fx, "chat_template: ../tpl/custom.jinja")
    monkeypatch.chdir(fx["model"])  # not where the recipe is
    recipe = load_recipe(str(path))
    assert recipe.model["chat_template"] == CUSTOM and recipe.resolved["model"]["chat_template"] == CUSTOM
    child = tmp_path / "child.yaml"  # via extends:, the path stays relative to the file that says it
    child.write_text("extends: recipes/chat.yaml\ntraining: {max_steps: 1}\n")
    assert load_recipe(str(child)).model["chat_template"] == CUSTOM
    inline = _recipe(tmp_path, fx, f"chat_template: {json.dumps(CUSTOM)}")
    assert load_recipe(str(inline)).model["chat_template"] == CUSTOM


@pytest.mark.parametrize("line,message", [
    ("chat_template: missing.jinja", "model.chat_template: file not found: .*missing.jinja"),
    ("chat_template: '{% for m in messages %}'", "model.chat_template: not a valid Jinja template"),
])
def test_bad_template_is_refused(fx, tmp_path, line, message):
    with pytest.raises(RecipeError, match=message):
        load_recipe(str(_recipe(tmp_path, fx, line)))


@pytest.mark.slow
def test_template_renders_the_rows_is_saved_and_generate_uses_it(fx, tmp_path, cli):
    from transformers import AutoTokenizer

    from posttrain.generate import format_prompt, load_policy, run_template
    from posttrain.models import load_tokenizer
    from posttrain.stages import sft

    path = _recipe(tmp_path, fx, "chat_template: ../tpl/custom.jinja")
    code, _, err = cli("train", path)
    assert code == 0, err
    run = tmp_path / "run"
    saved = AutoTokenizer.from_pretrained(run)
    assert saved.chat_template == CUSTOM
    # the training rows were rendered with that template
    recipe = load_recipe(str(path))
    train, _, _ = sft.prepare_data(recipe, load_tokenizer(recipe.model), sft.config(recipe))
    first = json.loads(fx["messages"].read_text().splitlines()[0])["messages"]
    assert saved.decode(train[0]["input_ids"]) == saved.apply_chat_template(first, tokenize=False)
    assert "<|im_start|>USER: " in saved.decode(train[0]["input_ids"])
    # generate prompts with it; the next pipeline stage loads it with the tokenizer
    model, tok = load_policy(run)
    assert run_template(run) == "chat"
    assert format_prompt("chat", tok, "hi") == "<|im_start|>USER: hi<|im_end|>\n<|im_start|>ASSISTANT: "
    code, out, err = cli("generate", run, "--prompt", "hi", "--max-new-tokens", "2")
    assert code == 0 and "template: chat" in out, err
    assert load_tokenizer({"name_or_path": str(run)}).chat_template == CUSTOM


def test_alpaca_rows_through_the_chat_template(fx, tokenizer, tmp_path):
    from posttrain.generate import run_template

    tokenizer = tokenizer.__class__.from_pretrained(fx["model"])
    tokenizer.chat_template = CUSTOM
    row = {"instruction": "Reverse the word.", "input": "apple", "output": "elppa"}
    cols = {"instruction": "instruction", "input": "input", "output": "output"}
    enc = encode_batch([row], "alpaca", cols, tokenizer, 128, template="chat")[0]
    msgs = [{"role": "user", "content": "Reverse the word.\n\napple"}, {"role": "assistant", "content": "elppa"}]
    assert tokenizer.decode(enc["input_ids"]) == tokenizer.apply_chat_template(msgs, tokenize=False)
    assert _trained(enc, tokenizer) == "elppa<|im_end|>\n"
    pc = encode_batch([{"prompt": "2+2=", "completion": "4"}], "prompt_completion",
                      {"prompt": "prompt", "completion": "completion"}, tokenizer, 128, template="chat")[0]
    assert tokenizer.decode(pc["input_ids"]).startswith("<|im_start|>USER: 2+2=") and _trained(pc, tokenizer) == \
        "4<|im_end|>\n"
    run = tmp_path / "run"
    run.mkdir()
    (run / "recipe.resolved.yaml").write_text("stage: sft\ndata: {format: alpaca, template: chat}\n")
    assert run_template(run) == "chat"


CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1+1?"},
                {"role": "assistant", "content": "2"}, {"role": "user", "content": "Double it."},
                {"role": "assistant", "content": "4"}]


@pytest.mark.parametrize("train_on,expected", [
    ("assistant", "2<|im_end|>\n4<|im_end|>\n"),
    ("last_assistant", "4<|im_end|>\n"),
    ("all", None),  # every token of the rendered conversation
])
def test_train_on_choices_decode_to_the_trained_turns(tokenizer, train_on, expected):
    enc = encode_batch([{"messages": CONVERSATION}], "messages", {"messages": "messages"}, tokenizer, 256,
                       train_on=train_on)[0]
    rendered = tokenizer.apply_chat_template(CONVERSATION, tokenize=False)
    assert tokenizer.decode(enc["input_ids"]) == rendered
    assert _trained(enc, tokenizer) == (rendered if expected is None else expected)


def test_train_on_all_for_alpaca_trains_the_prompt_too(tokenizer):
    from posttrain.data.formats import alpaca_prompt

    row = {"instruction": "Say hi.", "output": "hi"}
    enc = encode_batch([row], "alpaca", {"instruction": "instruction", "output": "output"}, tokenizer, 256,
                       train_on="all")[0]
    assert all(t != IGNORE_INDEX for t in enc["labels"])
    assert _trained(enc, tokenizer) == alpaca_prompt("Say hi.") + "hi<|endoftext|>"


def test_validate_preview_says_what_is_trained(fx, cli):
    code, out, err = cli("validate", "alpaca_gpt2", f"model.name_or_path={fx['model']}", f"data.train={fx['messages']}",
                         "data.format=messages", "data.train_on=last_assistant", "data.eval_fraction=null",
                         "training.eval_strategy=no")
    assert code == 0, err
    assert "train_on: last_assistant (the last assistant turn)" in out


def test_shipped_chat_recipe_copies_with_its_template(tmp_path):
    from posttrain.shipped import copy

    target = copy("chat_mixture_gpt2", str(tmp_path))
    assert (tmp_path / "templates" / "chatml.jinja").is_file()
    recipe = load_recipe(str(target))
    assert "<|im_start|>" in recipe.model["chat_template"] and len(recipe.data["train"]) == 3


def test_template_with_transformers_generation_tag_is_accepted(fx, tmp_path):
    """transformers compiles chat templates with its `{% generation %}` extension (SmolLM3's template uses it):
    plain Jinja refuses the tag, the check must not."""
    tpl = "{% for m in messages %}{% generation %}{{ m['content'] }}{% endgeneration %}{% endfor %}"
    assert load_recipe(str(_recipe(tmp_path, fx, f"chat_template: {json.dumps(tpl)}"))).model["chat_template"] == tpl
    with pytest.raises(RecipeError, match="not a valid Jinja template"):
        load_recipe(str(_recipe(tmp_path, fx, f"chat_template: {json.dumps(tpl.replace('{% endgeneration %}', ''))}")))
