"""Added tokens: `model.add_tokens`, `add_special_tokens`, `special_tokens`, `resize_to_multiple_of`.

The tiny tokenizer has 600 tokens (ids 0-599; `<|im_end|>` is id 2) and the tiny GPT-2 600 tied embedding rows.
"""

import json

import pytest

from posttrain.checks import load_recipe
from posttrain.errors import PosttrainError

TOOL = ["<tool>", "</tool>"]


def _args(fx, tmp_path, *extra, tokens="model.add_tokens=['<tool>', '</tool>']"):
    return [f"model.name_or_path={fx['model']}", f"data.train={fx['alpaca']}", f"output_dir={tmp_path / 'run'}",
            tokens, *extra]


def _section(fx, **keys):
    return {"name_or_path": str(fx["model"]), **keys}


def test_tokens_are_added_special_ones_stay_whole_and_known_ones_are_left_alone(fx, tmp_path):
    from posttrain.models import NEW_TOKEN_IDS, load_tokenizer

    base = load_tokenizer(_section(fx))
    tok = load_tokenizer(_section(fx, add_tokens=["<tool>", "apple"], add_special_tokens=["<call>", "<|im_end|>"],
                                  special_tokens={"pad_token": "<pad>", "eos_token": "<|im_end|>"}))
    assert len(tok) == len(base) + 3 and getattr(tok, NEW_TOKEN_IDS) == [600, 601, 602]
    assert tok.convert_tokens_to_ids(["<tool>", "<call>", "<pad>"]) == [600, 601, 602]
    assert (tok.pad_token, tok.eos_token, tok.eos_token_id) == ("<pad>", "<|im_end|>", 2)
    ids = tok("x <tool> y <call> z", add_special_tokens=False)["input_ids"]
    assert 600 in ids and 601 in ids  # neither is split
    assert tok.decode(ids, skip_special_tokens=True) == "x <tool> y  z"  # a special token is dropped, an ordinary kept
    # 'apple' was already a token: not added again, so a word around it splits as before
    assert tok("pineapples")["input_ids"] == base("pineapples")["input_ids"]
    # a run that added them (the next pipeline stage's model): nothing is new to it
    tok.save_pretrained(tmp_path / "run")
    again = load_tokenizer({"name_or_path": str(tmp_path / "run"), "add_tokens": ["<tool>"]})
    assert len(again) == len(tok) and getattr(again, NEW_TOKEN_IDS) == []


def test_validate_says_which_tokens_are_new_and_the_rows_they_need(fx, tmp_path, cli):
    code, out, err = cli("validate", "alpaca_gpt2", *_args(
        fx, tmp_path, "model.add_special_tokens=['<|im_end|>', '<call>']", "model.resize_to_multiple_of=64"), "--no-data")
    assert code == 0, err
    assert ("ok: model tokens: 3 new ('<tool>' id 600, '</tool>' id 601, '<call>' id 602); already tokens, kept as "
            "they are: '<|im_end|>'; embedding 600 -> 640 rows") in out
    # training.eos_token may be a token the recipe adds
    code, _, err = cli("validate", "alpaca_gpt2", *_args(fx, tmp_path, "training.eos_token='<|end|>'",
                                                         tokens="model.add_special_tokens=['<|end|>']"), "--no-data")
    assert code == 0, err


@pytest.mark.parametrize("extra,expected", [
    (["model.add_tokens=['<a>', 3]"], "model.add_tokens: expected a list of tokens (strings), e.g. ['<tool>', "
                                      "'</tool>'], got 3 (int) in it"),
    (["model.add_tokens='<a>'"], "model.add_tokens: expected a list, got '<a>' (str)"),
    (["model.add_special_tokens=['<tool>']"], "model.add_special_tokens: '<tool>' is listed twice (also in "
                                               "model.add_tokens)"),
    (["model.special_tokens={eos: '<e>'}"], "model.special_tokens.eos: is not one of bos_token, eos_token, pad_token, "
                                            "unk_token; did you mean 'eos_token'?"),
    (["model.special_tokens={pad_token: 5}"], "model.special_tokens.pad_token: expected a token (a string), got 5 (int)"),
    (["model.special_tokens={eos_token: '<e>'}", "training.eos_token='<f>'"],
     "training.eos_token: '<f>' contradicts model.special_tokens.eos_token '<e>'; set one of them"),
    (["model.resize_to_multiple_of=0"], "model.resize_to_multiple_of: 0 is out of range (must be >= 1)"),
])
def test_refusals_are_one_line_each(fx, tmp_path, cli, extra, expected):
    code, _, err = cli("validate", "alpaca_gpt2", *_args(fx, tmp_path, *extra), "--no-data")
    lines = [line for line in err.splitlines() if line.startswith("posttrain: error:")]
    assert code == 2 and len(lines) == 1 and expected in lines[0], err


def test_stages_that_reload_a_reference_from_disk_are_refused(fx, tmp_path):
    """RLOO's default beta (0.05) without LoRA: TRL reloads the reference from name_or_path, without the new tokens.
    Refused when the stage builds (before any weight loads): only the tokenizer knows whether the tokens are new (an
    upstream sft run that added them passes)."""
    from posttrain.errors import RecipeError
    from posttrain.stages import grpo

    args = [f"model.name_or_path={fx['model']}", f"data.train={fx['prompts']}", "model.add_tokens=['<tool>']",
            f"output_dir={tmp_path / 'run'}"]
    with pytest.raises(RecipeError, match=r"^with training.beta 0.05 and no peft, rloo's trainer reloads its reference "
                                          r"policy from '.*' without the tokens this recipe adds \(<tool>\); add them"):
        grpo.build(load_recipe("rloo_gpt2", args))
    with pytest.raises(RecipeError, match="without the tokens"):
        grpo.build(load_recipe("grpo_gpt2", [*args, "training.beta=0.1"]))


def _sft_fuses_the_head() -> bool:
    from trl import SFTTrainer

    from posttrain.stages.common import fuses_lm_head

    return fuses_lm_head(SFTTrainer)


def _skip_where_sft_fuses_the_head():
    if _sft_fuses_the_head():
        pytest.skip("this TRL's SFT reads lm_head.weight directly: new tokens under LoRA are refused (test below)")


def test_lora_with_new_tokens_is_refused_where_trl_fuses_the_lm_head(fx, tmp_path):
    from posttrain.errors import RecipeError
    from posttrain.stages import common, sft

    if not _sft_fuses_the_head():
        pytest.skip("this TRL's SFT computes whole logits (nll): new tokens train under LoRA (tests above and below)")
    recipe = load_recipe("alpaca_gpt2", _args(fx, tmp_path, "peft={r: 4, lora_alpha: 8, target_modules: [c_attn]}"))
    trainer, _ = sft.build(recipe)
    with pytest.raises(RecipeError, match="SFTTrainer computes the loss from lm_head.weight.*peft: null.*trl<1.13"):
        common.new_rows_train(recipe, trainer)


def test_sft_under_lora_computes_whole_logits_only_for_new_rows(fx, tmp_path):
    """TRL's chunked_nll reads the output head past peft's token wrappers: nll when tokens are new to the model,
    chunked_nll (TRL's default, less memory) kept when they are all known; chunked_nll by hand with new tokens refused."""
    _skip_where_sft_fuses_the_head()
    from posttrain.errors import RecipeError
    from posttrain.models import load_tokenizer
    from posttrain.stages import common, sft

    def loss(*extra):
        recipe = load_recipe("alpaca_gpt2", _args(fx, tmp_path, "peft={r: 4, lora_alpha: 8, target_modules: [c_attn]}",
                                                  *extra))
        args = sft.config(recipe)
        before = args.loss_type  # TRL's default (chunked_nll on 1.12, nll on 1.16)
        common.whole_logits_for_new_rows(recipe, args, load_tokenizer(recipe.model))
        return before, args.loss_type

    assert loss()[1] == "nll"
    before, after = loss("model.add_tokens=['<|im_end|>']")  # already a token: TRL's default stays
    assert after == before
    with pytest.raises(RecipeError, match="training.loss_type: chunked_nll reads the output head's weight past"):
        loss("training.loss_type=chunked_nll")


def test_lora_trains_the_new_rows_on_the_embedding_and_an_untied_head(fx):
    """peft's trainable_token_indices: the input embedding (a tied head follows it), an untied head too, and no
    layer that modules_to_save trains whole; the recipe's own indices kept."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from posttrain.models import token_rows

    tied = AutoModelForCausalLM.from_pretrained(fx["model"])
    assert token_rows(tied, [600, 601], None) == {"wte": [600, 601]}
    assert token_rows(tied, [600], [5]) == {"wte": [5, 600]}
    cfg = AutoConfig.from_pretrained(fx["model"])
    cfg.tie_word_embeddings = False
    untied = AutoModelForCausalLM.from_config(cfg)
    assert token_rows(untied, [600], None) == {"wte": [600], "lm_head": [600]}
    assert token_rows(untied, [600], None, ["wte"]) == {"lm_head": [600]}
    assert token_rows(untied, [600], None, ["wte", "lm_head"]) is None


def test_a_reference_grown_from_the_same_base_starts_equal_to_the_policy(fx, tmp_path):
    """New rows are drawn from a fixed seed: DPO's reference (a second load) starts where the policy starts."""
    import torch

    from posttrain.models import load_tokenizer
    from posttrain.stages import common, dpo

    recipe = load_recipe("dpo_gpt2", [f"model.name_or_path={fx['model']}", f"data.train={fx['preference']}",
                                      "model.add_tokens=['<tool>', '</tool>']", f"output_dir={tmp_path / 'run'}"])
    args = common.max_length_config(recipe)
    tok = load_tokenizer(recipe.model)
    policy = common.load_policy(recipe, args, tok)
    ref = dpo.reference(recipe, args, tok)
    new = policy.get_input_embeddings().weight[600:602]
    assert policy.get_input_embeddings().weight.shape[0] == 602
    assert torch.equal(new, ref.get_input_embeddings().weight[600:602])
    assert not torch.equal(new[0], new[1])  # drawn, not one mean copied


def test_a_frozen_model_must_know_the_added_tokens(fx):
    from posttrain.models import knows_new_tokens, load_tokenizer

    tok = load_tokenizer(_section(fx, add_tokens=TOOL))
    with pytest.raises(PosttrainError, match=r"the reward model '.*' does not know the tokens this recipe adds "
                                             r"\(<tool>, </tool>\) and stays frozen"):
        knows_new_tokens({"name_or_path": str(fx["model"])}, tok, "reward model")
    knows_new_tokens({"name_or_path": str(fx["model"])}, load_tokenizer(_section(fx)), "reward model")  # none added


def test_plan_counts_the_grown_embedding(fx):
    from posttrain.plan import estimate

    base = estimate(load_recipe("alpaca_gpt2", [f"model.name_or_path={fx['model']}"]))
    grown = estimate(load_recipe("alpaca_gpt2", [f"model.name_or_path={fx['model']}", "model.add_tokens=['<tool>']",
                                                 "model.resize_to_multiple_of=64"]))
    assert grown["params"] - base["params"] == 40 * 32  # 600 -> 640 rows of 32, tied: counted once


def _tool_data(tmp_path):
    """Every answer is the two new tokens (then EOS): a model that learned them generates them."""
    path = tmp_path / "tool.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"Use the tool {i % 4}:", "completion": "<tool></tool>"}) + "\n"
                            for i in range(16)))
    return path


def _train_tool(fx, tmp_path, cli, *extra):
    code, _, err = cli("train", "alpaca_gpt2", f"model.name_or_path={fx['model']}", f"data.train={_tool_data(tmp_path)}",
                       "data.format=prompt_completion", "data.max_length=32", f"output_dir={tmp_path / 'run'}",
                       "model.add_tokens=['<tool>', '</tool>']", "training.per_device_train_batch_size=8",
                       "training.gradient_accumulation_steps=1", "training.warmup_steps=0", "training.save_strategy=no",
                       "training.eval_strategy=no", "data.eval_fraction=null", *extra)
    assert code == 0, err
    return tmp_path / "run"


def _generated(cli, run) -> str:
    code, out, err = cli("generate", run, "--prompt", "Use the tool 1:", "--max-new-tokens", "4")
    assert code == 0, err
    return out.splitlines()[0]


@pytest.mark.slow
def test_full_finetune_trains_the_new_rows_saves_the_tokenizer_and_generates_them(fx, tmp_path, cli):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from posttrain.models import grow_embeddings, load_tokenizer

    run = _train_tool(fx, tmp_path, cli, "training.max_steps=30", "training.learning_rate=3e-2")
    assert AutoTokenizer.from_pretrained(run).convert_tokens_to_ids(TOOL) == [600, 601]
    start = AutoModelForCausalLM.from_pretrained(fx["model"])
    grow_embeddings(start, load_tokenizer(_section(fx, add_tokens=TOOL)))  # the rows training started from
    trained = AutoModelForCausalLM.from_pretrained(run).get_input_embeddings().weight
    assert trained.shape[0] == 602
    assert not torch.allclose(trained[600:602], start.get_input_embeddings().weight[600:602])
    assert _generated(cli, run) == "<tool></tool>"


@pytest.mark.slow
def test_lora_trains_only_the_new_rows_and_its_adapter_loads_on_the_rounded_embedding(fx, tmp_path, cli):
    """LoRA + resize_to_multiple_of 64: the adapter holds the 640-row embedding, which generate and the next pipeline
    stage (the merged copy) load on a base grown the same way (peft's own loader would grow it to 602)."""
    _skip_where_sft_fuses_the_head()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from posttrain.merge import merge_adapter
    from posttrain.models import grow_embeddings, load_tokenizer

    run = _train_tool(fx, tmp_path, cli, "training.max_steps=60", "training.learning_rate=2e-2",
                      "peft={r: 16, lora_alpha: 32, target_modules: all-linear}", "model.resize_to_multiple_of=64")
    assert json.loads((run / "adapter_config.json").read_text())["trainable_token_indices"] == {"wte": [600, 601]}
    assert _generated(cli, run).startswith("<tool></tool>")
    merged = merge_adapter(run)
    assert AutoTokenizer.from_pretrained(merged).convert_tokens_to_ids(TOOL) == [600, 601]
    start = AutoModelForCausalLM.from_pretrained(fx["model"])
    grow_embeddings(start, load_tokenizer(_section(fx, add_tokens=TOOL)), 64)
    before = start.get_input_embeddings().weight
    after = AutoModelForCausalLM.from_pretrained(merged).get_input_embeddings().weight
    assert after.shape[0] == 640
    assert not torch.allclose(after[600:602], before[600:602])
    assert torch.equal(after[:600], before[:600]) and torch.equal(after[602:], before[602:])  # only the new rows train


# --- convert: each tool's spelling of added tokens ----------------------------------------------------------------

AXOLOTL = """\
base_model: Qwen/Qwen2.5-0.5B
datasets:
  - path: tatsu-lab/alpaca
    type: alpaca
sequence_len: 512
adapter: lora
lora_r: 8
lora_alpha: 16
lora_target_linear: true
micro_batch_size: 2
tokens: ["<tool>", "</tool>"]
special_tokens:
  eos_token: "<|im_end|>"
  pad_token: "<|pad|>"
  sep_token: "<sep>"
resize_token_embeddings_to_32x: true
mean_resizing_embeddings: false
"""
LLAMA_FACTORY = """\
model_name_or_path: Qwen/Qwen2.5-0.5B
stage: sft
do_train: true
finetuning_type: lora
lora_target: all
dataset: alpaca_en_demo
new_special_tokens: "<a>, <b>"
add_tokens: "<c>"
resize_vocab: true
init_special_tokens: noise_init
output_dir: saves/x
"""
TRL_SFT = """\
model_name_or_path: Qwen/Qwen2.5-0.5B
dataset_name: trl-lib/Capybara
eos_token: "<|im_end|>"
output_dir: out
"""


@pytest.mark.parametrize("name,text,model,fates", [
    ("axolotl.yml", AXOLOTL,
     {"add_tokens": TOOL, "special_tokens": {"eos_token": "<|im_end|>", "pad_token": "<|pad|>"},
      "resize_to_multiple_of": 32},
     {"tokens": "mapped", "special_tokens.eos_token": "mapped", "special_tokens.pad_token": "mapped",
      "special_tokens.sep_token": "NOT TRANSLATED", "resize_token_embeddings_to_32x": "mapped",
      "mean_resizing_embeddings": "dropped"}),
    ("llama_factory.yaml", LLAMA_FACTORY,
     {"add_special_tokens": ["<a>", "<b>"], "add_tokens": ["<c>"], "resize_to_multiple_of": 64},
     {"new_special_tokens": "mapped", "add_tokens": "mapped", "resize_vocab": "dropped",
      "init_special_tokens": "dropped"}),
    ("sft/trl.yaml", TRL_SFT, {"special_tokens": {"eos_token": "<|im_end|>"}}, {"eos_token": "mapped"}),
])
def test_convert_maps_added_tokens_and_the_result_validates(fx, tmp_path, cli, name, text, model, fates):
    """Inline configs written as each tool documents these keys: axolotl `tokens`/`special_tokens`/
    `resize_token_embeddings_to_32x` (docs.axolotl.ai config reference), LLaMA-Factory `new_special_tokens`/
    `add_tokens` (comma-separated) with `resize_vocab` (hparams/model_args.py; it pads the grown embedding to a
    multiple of 64), TRL SFTConfig `eos_token`."""
    import yaml

    from posttrain.convert import convert

    src = tmp_path / name
    src.parent.mkdir(exist_ok=True)
    src.write_text(text)
    conv = convert(src)
    assert {f.key: f.kind for f in conv.fates if f.key in fates} == fates
    assert {k: v for k, v in conv.recipe["model"].items() if k in model} == model
    out = tmp_path / "recipe.yaml"
    code, _, err = cli("convert", src, "-o", out)
    assert code in (0, 3), err
    recipe = yaml.safe_load(out.read_text())
    data = fx["messages"] if recipe["data"].get("format") == "messages" else fx["alpaca"]
    code, stdout, err = cli("validate", out, f"model.name_or_path={fx['model']}", f"data.train={data}",
                            "data.split=train", "data.name=null", "data.max_length=512", "--no-data")
    assert code == 0, err
    assert "ok: model tokens: " in stdout


@pytest.mark.slow
def test_a_converted_axolotl_config_with_tokens_trains_a_step(fx, tmp_path, cli):
    """LoRA with new ordinary tokens, a new pad token, an EOS already in the vocabulary, rows rounded up to 32."""
    _skip_where_sft_fuses_the_head()
    from transformers import AutoTokenizer

    from posttrain.merge import load_adapter

    src = tmp_path / "axolotl.yml"
    src.write_text(AXOLOTL)
    out = tmp_path / "recipe.yaml"
    assert cli("convert", src, "-o", out)[0] == 3  # special_tokens.sep_token is NOT TRANSLATED
    run = tmp_path / "run"
    code, _, err = cli("train", out, f"model.name_or_path={fx['model']}", f"data.train={fx['alpaca']}",
                       "data.split=train", "data.max_length=128", "training.max_steps=1", f"output_dir={run}")
    assert code == 0, err
    tok = AutoTokenizer.from_pretrained(run)
    assert tok.convert_tokens_to_ids([*TOOL, "<|pad|>"]) == [600, 601, 602] and tok.pad_token == "<|pad|>"
    assert tok.eos_token_id == 2
    assert load_adapter(run).get_input_embeddings().weight.shape[0] == 608  # 603 rounded up to 32
