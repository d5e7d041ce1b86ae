"""Packing (training.packing): rows packed into one sequence train exactly as they do alone.

Isolation is proved numerically (the tiny GPT-2 fixture, learned positions; tiny Llama, Phi-3 and Gemma 3
built here with their real configs' structure: rotary/longrope, fused qkv, sliding windows shorter than some
rows, 5:1 local/global layers, softcapping), for eager and sdpa: each row's logits and loss inside a packed
batch equal the row run alone. The architecture allow-list is checked against the installed transformers source.
"""

import json
import re
from pathlib import Path

import pytest

from posttrain.data import packing
from posttrain.data.collator import IGNORE_INDEX, SFTCollator, tokenize_dataset
from posttrain.errors import RecipeError

ATOL = 1e-5


@pytest.fixture(scope="module")
def rows(fx, tokenizer):
    from datasets import Dataset

    raw = Dataset.from_list([json.loads(line) for line in Path(fx["alpaca"]).read_text().splitlines()])
    ds, _ = tokenize_dataset(raw, "alpaca", tokenizer, 512, "alpaca")
    return [ds[i] for i in range(len(ds))]


def _llama(tokenizer, tmp: Path) -> Path:
    """A tiny random Llama (rotary positions, grouped KV heads, no dropout) with the fixture's tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
    LlamaForCausalLM(cfg).save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    return tmp


# Tiny sliding window: the fixture's first five rows are 39, 71, 63, 47 and 37 tokens, so some rows fit in it
# and some do not (and the window reaches across a row boundary in the pack if it counted flat indices).
WINDOW = 48


def _phi3(tokenizer, longrope: bool = False, original: int = 128):
    """Phi-3 as microsoft/Phi-3-mini-4k-instruct's config.json sets it (model_type phi3, fused qkv_proj and
    gate_up_proj, rope_theta 10000, rope_scaling null, sliding_window 2047, max_position_embeddings 4096,
    num_key_value_heads = num_attention_heads 32, rms_norm_eps 1e-5, untied embeddings, silu), window scaled
    down to WINDOW. longrope: as Phi-3-mini-128k-instruct / Phi-3.5-mini-instruct (rope_scaling type longrope
    with short_factor and long_factor per rotary dim pair, original_max_position_embeddings 4096,
    max_position_embeddings 131072), the 4096 scaled down to 128 (longer than every row here)."""
    from transformers import Phi3Config, Phi3ForCausalLM

    rope = {}
    if longrope:
        rope = {"original_max_position_embeddings": original, "max_position_embeddings": 4096,
                "rope_scaling": {"type": "longrope", "short_factor": [1.0, 1.1, 1.3, 1.9],
                                 "long_factor": [1.0, 2.0, 8.0, 30.0]}}
    cfg = Phi3Config(**{"vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64,
                        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4,
                        "max_position_embeddings": 512, "original_max_position_embeddings": 512,
                        "rope_theta": 10000.0, "rope_scaling": None, "sliding_window": WINDOW,
                        "rms_norm_eps": 1e-5, "hidden_act": "silu", "tie_word_embeddings": False,
                        "bos_token_id": tokenizer.eos_token_id, "eos_token_id": tokenizer.eos_token_id,
                        "pad_token_id": tokenizer.eos_token_id, **rope})
    return Phi3ForCausalLM(cfg)


def _gemma3_text_config(tokenizer, vocab: int) -> dict:
    """google/gemma-3-1b-it's config.json (model_type gemma3_text): sliding_window 512 on 5 of every 6 layers
    (sliding_window_pattern 6), query_pre_attn_scalar 256 = head_dim, rope_theta 1e6 on global layers,
    rope_local_base_freq 1e4 on local ones, num_key_value_heads 1, gelu_pytorch_tanh, rms_norm_eps 1e-6;
    attn_logit_softcapping and final_logit_softcapping are null there, set here (Gemma 2's 50 and 30) so that
    they are covered too. Sizes tiny, window scaled down to WINDOW."""
    return {"vocab_size": vocab, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 6,
            "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 8, "query_pre_attn_scalar": 8,
            "sliding_window": WINDOW, "sliding_window_pattern": 6, "rope_theta": 1_000_000.0,
            "rope_local_base_freq": 10_000.0, "max_position_embeddings": 512,
            "hidden_activation": "gelu_pytorch_tanh", "rms_norm_eps": 1e-6, "attn_logit_softcapping": 50.0,
            "final_logit_softcapping": 30.0, "bos_token_id": tokenizer.eos_token_id,
            "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.eos_token_id}


def _gemma3_text(tokenizer):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    cfg = Gemma3TextConfig(**_gemma3_text_config(tokenizer, len(tokenizer)))
    assert cfg.layer_types == ["sliding_attention"] * 5 + ["full_attention"]
    return Gemma3ForCausalLM(cfg)


def _gemma3(tokenizer):
    """google/gemma-3-4b-it (model_type gemma3, Gemma3ForConditionalGeneration): the same text stack
    (sliding_window 1024 there) with rope_scaling linear factor 8 on global layers, and a SigLIP vision tower
    (tiny here) that text rows skip."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    vocab = len(tokenizer) + 3  # + begin/end of image and the image token, as the real vocabulary ends
    text = {**_gemma3_text_config(tokenizer, vocab), "rope_scaling": {"rope_type": "linear", "factor": 8.0}}
    vision = {"model_type": "siglip_vision_model", "hidden_size": 16, "intermediate_size": 32,
              "num_hidden_layers": 1, "num_attention_heads": 2, "image_size": 28, "patch_size": 14}
    cfg = Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4, boi_token_index=vocab - 3,
                       eoi_token_index=vocab - 2, image_token_index=vocab - 1)
    return Gemma3ForConditionalGeneration(cfg)


def _save(model, tokenizer, tmp: Path) -> Path:
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    return tmp


SLIDING = ("phi3", "phi3_longrope", "gemma3_text", "gemma3")


@pytest.fixture(scope="module")
def models(fx, tokenizer, tmp_path_factory):
    import torch

    built = {"phi3": lambda: _phi3(tokenizer), "phi3_longrope": lambda: _phi3(tokenizer, longrope=True),
             "gemma3_text": lambda: _gemma3_text(tokenizer), "gemma3": lambda: _gemma3(tokenizer)}
    out = {"gpt2": Path(fx["model"]), "llama": _llama(tokenizer, tmp_path_factory.mktemp("llama"))}
    for name, make in built.items():
        torch.manual_seed(0)
        out[name] = _save(make(), tokenizer, tmp_path_factory.mktemp(name))
    return out


def _row_loss(logits, labels):
    """Sum of token losses and count, with the loss's own one-position shift."""
    import torch.nn.functional as F

    tgt = F.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), tgt.reshape(-1), reduction="sum",
                           ignore_index=IGNORE_INDEX), int((tgt != IGNORE_INDEX).sum())


@pytest.mark.parametrize("attn", ["eager", "sdpa", packing.SEGMENT_SDPA])
@pytest.mark.parametrize("arch", ["gpt2", "llama", *SLIDING])
def test_packed_rows_equal_rows_alone(models, rows, tokenizer, arch, attn):
    import torch
    from transformers import AutoModelForCausalLM

    segments = attn == packing.SEGMENT_SDPA
    model = AutoModelForCausalLM.from_pretrained(models[arch], dtype=torch.float32,
                                                 attn_implementation="sdpa" if segments else attn).eval()
    assert packing.packing_problem(model.config.model_type, model.config._attn_implementation) is None
    if segments and arch in SLIDING:  # per-row sdpa has no window: these stay on sdpa's (isolating) mask
        assert not packing.use_segment_sdpa(model) and model.config._attn_implementation == "sdpa"
    elif segments:
        assert packing.use_segment_sdpa(model) and model.config._attn_implementation == attn
    batch_rows = rows[:5]
    if arch in SLIDING:  # rows inside and beyond the window
        assert min(len(r["input_ids"]) for r in batch_rows) < WINDOW < max(len(r["input_ids"]) for r in batch_rows)
    packed = packing.PackedCollator(tokenizer.eos_token_id)(batch_rows)
    assert set(packed) == {"input_ids", "labels", "position_ids"}  # no attention_mask: that would hide the boundaries
    with torch.no_grad():
        out = model(**packed, use_cache=False)  # what TRL's SFTTrainer.compute_loss passes
    start, total_loss, total_n = 0, 0.0, 0
    for r in batch_rows:
        n = len(r["input_ids"])
        ids = torch.tensor([r["input_ids"]])
        labels = torch.tensor([r["labels"]])
        with torch.no_grad():
            alone = model(input_ids=ids, labels=labels)
        piece = out.logits[:, start:start + n]
        assert packed["position_ids"][0, start:start + n].tolist() == list(range(n))
        assert torch.allclose(piece, alone.logits, atol=ATOL), float((piece - alone.logits).abs().max())
        loss_sum, count = _row_loss(piece, packed["labels"][:, start:start + n])
        assert abs(float(loss_sum) / count - float(alone.loss)) < ATOL  # the row's loss, computed in the pack
        # the decoded trained labels of the row are its output + EOS, nothing of the prompt or the next row
        trained = [t for t in packed["labels"][0, start:start + n].tolist() if t != IGNORE_INDEX]
        assert trained[-1] == tokenizer.eos_token_id
        assert trained == [t for t in r["labels"] if t != IGNORE_INDEX]
        total_loss, total_n, start = total_loss + float(loss_sum), total_n + count, start + n
    assert start == packed["input_ids"].shape[1]  # no padding
    # the model's own loss over the pack (shift inside the flat sequence) = token mean over the rows
    with torch.no_grad():
        assert abs(float(model(**packed, use_cache=False).loss) - total_loss / total_n) < ATOL
    if segments:  # a padded batch (eval, anything with an attention mask) still gets the ordinary sdpa mask
        padded = SFTCollator(tokenizer.eos_token_id)(batch_rows)
        with torch.no_grad():
            logits = model(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"]).logits
            for i, r in enumerate(batch_rows):
                n = len(r["input_ids"])
                alone = model(input_ids=torch.tensor([r["input_ids"]])).logits[0]
                assert torch.allclose(logits[i, :n], alone, atol=ATOL)


def test_decoded_labels_are_output_plus_eos(fx, rows, tokenizer):
    raw = [json.loads(line) for line in Path(fx["alpaca"]).read_text().splitlines()]
    packed = packing.PackedCollator(tokenizer.eos_token_id)(rows[:4])
    labels, start = packed["labels"][0].tolist(), 0
    for r, src in zip(rows[:4], raw[:4]):
        n = len(r["input_ids"])
        trained = [t for t in labels[start:start + n] if t != IGNORE_INDEX]
        assert labels[start] == IGNORE_INDEX  # the first token of a row is never the previous row's target
        assert tokenizer.decode(trained[:-1]) == src["output"] and trained[-1] == tokenizer.eos_token_id
        start += n


def test_cache_on_would_leak_across_rows(models, rows, tokenizer):
    """Why use_cache=False matters: with a cache transformers skips the packed-sequence mask (TRL turns it off)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(models["gpt2"], attn_implementation="sdpa").eval()
    packed = packing.PackedCollator(tokenizer.eos_token_id)(rows[:2])
    with torch.no_grad():
        on = model(**packed, use_cache=True).logits
        off = model(**packed, use_cache=False).logits
    assert (on - off).abs().max() > 1e-3


def test_packed_batches_train_the_same_tokens_as_padded(rows, tokenizer):
    pad = SFTCollator(tokenizer.eos_token_id)
    pack = packing.PackedCollator(tokenizer.eos_token_id, pad_to_multiple_of=8)
    padded = packed = 0
    for i in range(0, len(rows), 8):
        b = rows[i:i + 8]
        padded += int((pad(b)["labels"][:, 1:] != IGNORE_INDEX).sum())  # what the loss scores after its shift
        p = pack(b)
        assert p["input_ids"].shape[1] % 8 == 0
        packed += int((p["labels"][:, 1:] != IGNORE_INDEX).sum())
    assert packed == padded == sum(sum(t != IGNORE_INDEX for t in r["labels"][1:]) for r in rows)


def _args(fx, out, *extra, model=None):
    return [f"model.name_or_path={model or fx['model']}", f"data.train={fx['alpaca']}", f"output_dir={out}",
            "training.max_steps=3", "training.logging_steps=1", "training.warmup_steps=0", "training.eval_steps=3",
            "training.save_steps=3", "training.gradient_accumulation_steps=1", *extra]


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["alpaca_gpt2", "alpaca_gpt2_lora"])
def test_packed_sft_run_matches_padded_run(fx, models, tmp_path, cli, recipe):
    """The real CLI/stage path, full fine-tune and LoRA: a packed run finishes, writes the manifest, and logs
    the losses of the padded run (same rows per step, same trained tokens). The Llama fixture has no dropout,
    so the two runs see the same computation."""
    peft = ["peft.target_modules=all-linear"] if "lora" in recipe else []
    got = {}
    for name, extra in (("padded", []), ("packed", ["training.packing=true"])):
        out = tmp_path / name
        code, _, err = cli("train", recipe, *_args(fx, out, *peft, *extra, model=models["llama"]))
        assert code == 0, err
        m = json.loads((out / "manifest.json").read_text())
        assert m["status"] == "finished" and m["metrics"]["global_step"] == 3
        got[name] = ([e["loss"] for e in json.loads((out / "log_history.json").read_text()) if "loss" in e],
                     m["metrics"]["eval_loss"])
    assert got["packed"][0] == pytest.approx(got["padded"][0], abs=1e-4)
    assert got["packed"][1] == pytest.approx(got["padded"][1], abs=1e-4)


@pytest.mark.slow
def test_packed_qlora_run(fx, tmp_path, cli):
    out = tmp_path / "qlora"
    code, _, err = cli("train", "alpaca_gpt2_qlora", *_args(fx, out, "training.packing=true", "training.max_steps=2",
                                                            "training.eval_strategy=no", "data.eval_fraction=null"))
    assert code == 0, err
    assert json.loads((out / "manifest.json").read_text())["model"]["quantized"] == "4bit"


def _validate(fx, tmp_path, *extra, recipe="alpaca_gpt2"):
    from posttrain.checks import load_recipe

    return load_recipe(recipe, [f"model.name_or_path={fx['model']}", f"data.train={fx['alpaca']}",
                                f"output_dir={tmp_path / 'v'}", *extra])


def test_refusals_at_validate(fx, tmp_path):
    assert _validate(fx, tmp_path, "training.packing=true").training["packing"] is True
    opt = tmp_path / "opt"
    opt.mkdir()
    (opt / "config.json").write_text(json.dumps({"model_type": "opt"}))
    cases = {
        (f"model.name_or_path={opt}", "training.packing=true"): "model type 'opt' cannot keep packed rows apart",
        ("model.attn_implementation=flex_attention", "training.packing=true"): "attention implementation 'flex",
        ("training.padding_free=true",): "use `training.packing: true`",
        ("training.packing_strategy=wrapped",): "as they come",
    }
    for extra, msg in cases.items():
        with pytest.raises(RecipeError, match=re.escape(msg)) as e:
            _validate(fx, tmp_path, *extra)
        assert "\n" not in str(e.value)
    with pytest.raises(RecipeError, match="DPOTrainer turns it off"):
        _validate(fx, tmp_path, "training.padding_free=true", f"data.train={fx['preference']}", recipe="dpo_gpt2")
    with pytest.raises(RecipeError, match="training.padding_free"):  # RewardConfig has no such field
        _validate(fx, tmp_path, "training.padding_free=true", f"data.train={fx['preference']}", recipe="reward_gpt2")


def test_refusal_exits_2(fx, tmp_path, cli):
    opt = tmp_path / "opt"
    opt.mkdir()
    (opt / "config.json").write_text(json.dumps({"model_type": "bloom"}))
    code, _, err = cli("validate", "alpaca_gpt2", f"model.name_or_path={opt}", "training.packing=true")
    assert code == 2 and "ALiBi" in err


@pytest.mark.parametrize("kind", ["phi3", "gemma3_text", "gemma3"])
def test_phi3_and_gemma3_pass_validate(fx, tmp_path, kind):
    cfg = tmp_path / kind
    cfg.mkdir()
    (cfg / "config.json").write_text(json.dumps({"model_type": kind}))
    assert _validate(fx, tmp_path, f"model.name_or_path={cfg}", "training.packing=true").training["packing"] is True


def test_refused_on_the_loaded_model_too():
    from types import SimpleNamespace

    with pytest.raises(RecipeError, match="'opt'"):
        packing.check_model(SimpleNamespace(config=SimpleNamespace(model_type="opt", _attn_implementation="sdpa")))
    packing.check_model(SimpleNamespace(config=SimpleNamespace(model_type="llama", _attn_implementation="sdpa")))


# The allow-list, against the installed transformers: every listed decoder builds its causal masks with
# position_ids (the packed-sequence detection needs them) and has no ALiBi bias from the attention mask.
_MASK_CALL = re.compile(r"\b(create_causal_mask|create_sliding_window_causal_mask|mask_function)\(")


def _call_args(src: str, at: int) -> str:
    i = j = src.index("(", at)
    depth = 0
    while True:
        depth += {"(": 1, ")": -1}.get(src[j], 0)
        if depth == 0:
            return src[i + 1:j]
        j += 1


def _dict_has_position_ids(src: str, name: str) -> bool:
    """`name = {... "position_ids": ...}`, or `name = other.copy()` of such a dict."""
    if re.search(rf"\b{name}\s*=\s*\{{[^}}]*\"position_ids\"", src, re.DOTALL):
        return True
    copy = re.search(rf"\b{name}\s*=\s*(\w+)\.copy\(\)", src)
    return bool(copy) and copy.group(1) != name and _dict_has_position_ids(src, copy.group(1))


def _builds_masks_from_position_ids(src: str) -> bool:
    calls = [_call_args(src, m.start()) for m in _MASK_CALL.finditer(src)]
    if not calls or "alibi" in src.lower():
        return False
    for args in calls:
        spread = re.match(r"\s*\*\*(\w+)\s*(,|$)", args)  # create_causal_mask(**mask_kwargs[, more=...])
        if "position_ids" not in args and not (spread and _dict_has_position_ids(src, spread.group(1))):
            return False
    return True


@pytest.mark.parametrize("kind", sorted(packing.ISOLATING))
def test_allow_list_matches_transformers_source(kind):
    import transformers
    from transformers.models.auto.configuration_auto import model_type_to_module_name

    name = model_type_to_module_name(kind)
    src = (Path(transformers.__file__).parent / "models" / name / f"modeling_{name}.py").read_text()
    assert _builds_masks_from_position_ids(src), kind


@pytest.mark.parametrize("kind", sorted(packing.KNOWN_NOT))
def test_refused_architectures_really_cannot(kind):
    import transformers

    src = (Path(transformers.__file__).parent / "models" / kind / f"modeling_{kind}.py").read_text()
    assert not _builds_masks_from_position_ids(src), kind


@pytest.mark.parametrize("arch", ["phi3", "gemma3_text"])
def test_the_tiny_window_is_really_used(models, rows, arch):
    """The sliding-window models above are tested with rows both inside and beyond their window, and the window
    changes a longer row's logits: isolation there covers the sliding-window mask, not just the causal one."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(models[arch], attn_implementation="sdpa").eval()
    short, long = (torch.tensor([r["input_ids"]]) for r in (rows[0], rows[1]))  # 39 and 71 tokens
    with torch.no_grad():
        windowed = [model(input_ids=ids).logits for ids in (short, long)]
        model.config.sliding_window = 10_000
        full = [model(input_ids=ids).logits for ids in (short, long)]
    assert torch.equal(windowed[0], full[0])
    assert (windowed[1] - full[1]).abs().max() > 1e-3


def test_longrope_switches_per_batch_padded_or_packed(rows, tokenizer):
    """Phi-3 longrope picks short or long rope factors from the largest position id in the whole batch. A row
    beyond original_max_position_embeddings switches the other rows of its batch to the long factors, but a
    padded batch does that just the same: packed logits equal padded ones (packing trains what padding trains)."""
    import torch

    torch.manual_seed(0)
    model = _phi3(tokenizer, longrope=True, original=64).eval()
    batch_rows = rows[:5]
    assert max(len(r["input_ids"]) for r in batch_rows) > 64 > len(batch_rows[0]["input_ids"])
    packed = packing.PackedCollator(tokenizer.eos_token_id)(batch_rows)
    padded = SFTCollator(tokenizer.eos_token_id)(batch_rows)
    with torch.no_grad():
        out = model(**packed, use_cache=False).logits
        pad_out = model(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"]).logits
        first_alone = model(input_ids=torch.tensor([batch_rows[0]["input_ids"]])).logits
    start = 0
    for i, r in enumerate(batch_rows):
        n = len(r["input_ids"])
        assert torch.allclose(out[:, start:start + n], pad_out[i:i + 1, :n], atol=ATOL)
        start += n
    n0 = len(batch_rows[0]["input_ids"])
    assert (out[:, :n0] - first_alone).abs().max() > 1e-4  # the batch-wide switch, not a leak of attention


def test_bench_helpers(tmp_path):
    """bench/packing.py: bins fit their budget and keep every row once (its RESULTS.md section is written by
    bench/table.py's write_section, tested with the other benchmarks)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_packing", Path(__file__).parent.parent / "bench/packing.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    lengths = [5, 90, 40, 60, 7, 33, 96, 1]
    bins = bench.bfd_bins(lengths, 96)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= 96 for b in bins)
