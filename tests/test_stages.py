"""Settings that reach what each stage builds (its TRL config, collator, tokenizer, models), and the ones a stage
cannot honour, refused naming where to set them."""


import pytest
from conftest import one_error_line, skip_where_refused

from posttrain import stages
from posttrain.checks import load_recipe


def _model(fx):
    return f"model.name_or_path={fx['model']}"


# ---------------------------------------------------------------------------------------------
# refused, naming where to set it


REFUSED = [
    ("alpaca_gpt2", "training.chat_template_path=t.jinja", "set `model.chat_template`"),
    ("reward_gpt2", "training.chat_template_path=t.jinja", "set `model.chat_template`"),
    ("alpaca_gpt2", "training.dataset_num_proc=4", "set `data.num_proc`"),
    ("dpo_gpt2", "training.dataset_num_proc=4", "set `data.num_proc`"),
    ("alpaca_gpt2", "training.pad_to_multiple_of=8", "set `data.pad_to_multiple_of`"),
    ("dpo_gpt2", "training.pad_to_multiple_of=8", "set `data.pad_to_multiple_of`"),
    ("alpaca_gpt2", "training.resume_from_checkpoint=runs/x/checkpoint-10", "posttrain train --resume"),
    ("alpaca_gpt2", "training.pad_token=<pad>", "model.special_tokens.pad_token"),
    ("dpo_gpt2", "training.model_init_kwargs={dtype: bfloat16}", "set `model.dtype`"),
    ("grpo_gpt2", "training.model_init_kwargs={dtype: bfloat16}", "set `model.dtype`"),
    ("alpaca_gpt2", "training.trust_remote_code=true", "set `model.trust_remote_code`"),
    ("orpo_gpt2", "data.pad_to_multiple_of=8", "ORPOConfig has no pad_to_multiple_of"),
    ("ppo_gpt2", "data.pad_to_multiple_of=8", "PPOConfig has no pad_to_multiple_of"),
]


@pytest.mark.parametrize("recipe,override,expected", REFUSED, ids=[f"{r}-{o.split('=')[0]}" for r, o, _ in REFUSED])
def test_ignored_settings_are_refused_with_where_to_set_them(cli, recipe, override, expected):
    skip_where_refused(recipe)
    code, out, err = cli("validate", recipe, override, "--no-data")
    one_error_line(code, out, err, expected)


# ---------------------------------------------------------------------------------------------
# honoured


# one shipped recipe per stage, for the tests that mean "every stage"
STAGE_RECIPE = {name: "alpaca_gpt2" if name == "sft" else f"{name}_gpt2" for name in stages.names()}


@pytest.mark.parametrize("name", stages.names())
def test_data_num_proc_reaches_every_trl_config_that_has_it(name):
    skip_where_refused(STAGE_RECIPE[name])
    recipe = load_recipe(STAGE_RECIPE[name], ["data.num_proc=3"])
    config = stages.get(recipe.stage).make_config(recipe)
    if hasattr(config, "dataset_num_proc"):
        assert config.dataset_num_proc == 3
    else:  # no such TRL field: posttrain's own prompt measuring takes it (the grpo test below)
        assert name in {"online_dpo", "grpo", "rloo", "distill"}


@pytest.mark.parametrize("name", ["reward_gpt2", "dpo_gpt2", "kto_gpt2", "grpo_gpt2", "rloo_gpt2"])
def test_data_pad_to_multiple_of_reaches_the_trl_collator(name):
    recipe = load_recipe(name, ["data.pad_to_multiple_of=8"])
    assert stages.get(recipe.stage).make_config(recipe).pad_to_multiple_of == 8


def test_grpo_prompt_measuring_uses_data_num_proc(fx, tokenizer, monkeypatch):
    """Through the stage's own loading path: dropping the argument in stages/grpo.py fails this test."""
    import contextlib
    import types

    import datasets

    from posttrain.stages import grpo

    seen = []
    real = datasets.Dataset.filter

    def spy(self, *a, **k):
        seen.append(k.get("num_proc"))
        return real(self, *a, **{**k, "num_proc": None})

    recipe = load_recipe("grpo_gpt2", [_model(fx), f"data.train={fx['prompts']}", "data.split=train", "data.num_proc=2",
                                       "data.column_map=null", "data.eval_fraction=null", "training.eval_strategy=no"])
    args = types.SimpleNamespace(seed=0, main_process_first=lambda desc=None: contextlib.nullcontext())
    monkeypatch.setattr(datasets.Dataset, "filter", spy)
    grpo.load_prompts(recipe, args, tokenizer, [])
    assert 2 in seen


def test_eos_token_ends_every_sft_row_and_the_saved_tokenizer(fx, cli):
    from posttrain.data.collator import tokenize_dataset
    from posttrain.data.sources import load_source
    from posttrain.models import load_tokenizer

    tok = load_tokenizer({"name_or_path": str(fx["model"])}, eos_token="<|im_end|>")
    assert tok.eos_token == "<|im_end|>"
    ds, _ = tokenize_dataset(load_source(str(fx["alpaca"])), "alpaca", tok, 256, "alpaca")
    end = tok.convert_tokens_to_ids("<|im_end|>")
    assert all(row[-1] == end for row in ds["input_ids"]) and all(lab[-1] == end for lab in ds["labels"])
    code, out, err = cli("validate", "alpaca_gpt2", _model(fx), f"data.train={fx['alpaca']}",
                         "training.eos_token=<|im_end|>")
    assert code == 0 and "<|im_end|>[/trained]" in out, err


def test_eos_token_not_in_the_vocabulary_exits_2(fx, cli):
    code, out, err = cli("validate", "alpaca_gpt2", _model(fx), f"data.train={fx['alpaca']}",
                         "training.eos_token=<|eot|>")
    one_error_line(code, out, err, "training.eos_token: '<|eot|>' is not a token")


@pytest.mark.slow
def test_eos_token_reaches_the_saved_run(fx, tmp_path, cli):
    from transformers import AutoTokenizer, GenerationConfig

    out_dir = tmp_path / "run"
    code, out, err = cli("train", "alpaca_gpt2", _model(fx), f"data.train={fx['alpaca']}", "training.max_steps=1",
                         "training.eval_strategy=no", "data.eval_fraction=null", "training.eos_token=<|im_end|>",
                         f"output_dir={out_dir}")
    assert code == 0, err
    tok = AutoTokenizer.from_pretrained(out_dir)
    assert tok.eos_token == "<|im_end|>"
    assert GenerationConfig.from_pretrained(out_dir).eos_token_id == tok.eos_token_id


THINK = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['role'] == 'assistant' and enable_thinking "
         "is defined and not enable_thinking %}<no_think>{% endif %}{{ m['content'] }}<|im_end|>\n{% endfor %}"
         "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def test_per_row_chat_template_kwargs_reach_the_template(fx, tokenizer):
    from posttrain.data.formats import chat_segments, resolve_columns, segments

    tok = type(tokenizer).from_pretrained(fx["model"])
    tok.chat_template = THINK
    msgs = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
    plain = chat_segments(msgs, tok)
    assert not any("<no_think>" in text for text, _ in plain)
    row = {"messages": msgs, "chat_template_kwargs": {"enable_thinking": False}}
    honoured = segments(row, "messages", resolve_columns(list(row), "messages", "x"), tok)
    assert ("<no_think>4<|im_end|>\n", True) in honoured
    # another row's key, merged in by datasets as None, is not passed: the template sees it undefined
    merged = {"messages": msgs, "chat_template_kwargs": {"enable_thinking": None, "other": False}}
    assert segments(merged, "messages", resolve_columns(list(row), "messages", "x"), tok) == plain


def test_ppo_chat_prompts_use_their_chat_template_kwargs(fx, tokenizer):
    import datasets

    from posttrain.data.trl_rows import drop_long_prompts

    tok = type(tokenizer).from_pretrained(fx["model"])
    tok.chat_template = THINK
    chat = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
    ds = datasets.Dataset.from_list([{"prompt": chat, "chat_template_kwargs": {"enable_thinking": False}}])
    ids = drop_long_prompts(ds, tok, 256, {}, "train", keep_ids=True)["input_ids"][0]
    assert "<no_think>" in tok.decode(ids)


def test_preference_rows_keep_their_chat_template_kwargs(tmp_path):
    import datasets

    from posttrain.data.formats import clean_pairs_or_prompts

    ds = datasets.Dataset.from_list([{"prompt": "p", "chosen": "a", "rejected": "b", "other": 1,
                                      "chat_template_kwargs": {"enable_thinking": False}}] * 2)
    cleaned, _ = clean_pairs_or_prompts(ds, "preference", "x")
    assert set(cleaned.column_names) == {"prompt", "chosen", "rejected", "chat_template_kwargs"}


def test_attn_implementation_reaches_reward_value_and_reward_function_models(fx, tokenizer):
    from posttrain.errors import PosttrainError
    from posttrain.models import load_seq_cls
    from posttrain.rewards import RewardSpec
    from posttrain.stages import common, grpo

    m = load_seq_cls({"name_or_path": str(fx["model"]), "attn_implementation": "eager"}, tokenizer)
    assert m.config._attn_implementation == "eager"
    with pytest.raises(PosttrainError):  # flash-attn is not installed: the setting is used, so it fails
        load_seq_cls({"name_or_path": str(fx["model"]), "attn_implementation": "flash_attention_2"}, tokenizer)
    recipe = load_recipe("online_dpo_gpt2", ["model.attn_implementation=sdpa", "model.dtype=fp32"])
    spec = common.model_spec("runs/reward", recipe)
    assert spec["attn_implementation"] == "sdpa" and spec["dtype"] == "fp32"
    funcs, _ = grpo.reward_funcs([RewardSpec(name="rm", weight=1.0, model=str(fx["model"]))],
                                 {"attn_implementation": "eager", "dtype": "fp32"})
    assert funcs[0].config._attn_implementation == "eager"


def test_trl_loaded_reference_policy_gets_model_dtype_and_attention():
    recipe = load_recipe("rloo_gpt2", ["model.attn_implementation=eager", "model.dtype=bf16"])
    assert recipe.peft is None  # RLOO's beta 0.05: TRL reloads the reference policy itself
    cfg = stages.get("rloo").make_config(recipe)
    assert cfg.model_init_kwargs == {"dtype": "bfloat16", "attn_implementation": "eager"}
    grpo = load_recipe("grpo_gpt2")  # beta 0: no reference, nothing to pass
    assert stages.get("grpo").make_config(grpo).model_init_kwargs is None




def test_report_plots_what_each_stage_declares(tmp_path):
    """`posttrain report` draws a stage's own metrics from `Stage.plots` (no stage's metric names live in report.py)."""
    pytest.importorskip("matplotlib")
    from posttrain import report

    plt = report._pyplot()
    history = [{"step": i, "objective/scores": 0.1 * i, "objective/kl": 0.01 * i} for i in range(1, 4)]
    assert report.plot_metrics(plt, "run", "ppo", history, tmp_path / "ppo_run.png").is_file()
    assert report.plot_metrics(plt, "run", "sft", history, tmp_path / "sft_run.png") is None  # sft declares none
    for s in stages.all_stages().values():
        assert all(p.key and p.title for p in s.plots)
