"""GPU check: every stage for a few steps on one GPU, through posttrain's own stage code, measured.

    bash bench/gpu_check.sh                  # on the GPU machine (installs the wheels in .whl/ first)
    python bench/gpu_check.py --dry-run      # tiny shapes, one step per row, on CPU (tests/test_gpu_check.py)

No hub, no network: models are random-initialised from the configs in tests/data/configs (SmolLM2-135M and
Llama-3.2-1B shapes), the tokenizer is a byte-level BPE trained here on synthetic text, data is synthetic.
Per row: steps/s and trained tokens/s (tokens through forwards with gradients, from the end of the first
step), MFU = 6 x parameters x tokens/s / the GPU's dense bf16 peak, peak memory
(torch.cuda.max_memory_allocated) next to `posttrain plan`'s estimate; and plain TRL's steps/s for the
sft full bf16 setting in the same run (bench/plain_trl_sft.py). Writes bench/GPU.md (--out).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import random
import sys
import time
import traceback
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(BENCH))
CONFIGS = REPO / "tests" / "data" / "configs"

# Dense bf16 peaks from the datasheets (FLOP/s), by a substring of torch.cuda.get_device_name().
PEAKS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12, "L4": 121e12}
TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 2048}
WORDS = ("ka ri to na me su lo vi de pa ne ro mi ta sa ku be lu fo ga hi jo wa ze an el in or um ex al on ur "
         "is").split()


class Sizes:
    def __init__(self, dry: bool):
        self.dry = dry
        self.steps = 1 if dry else 10
        self.online_steps = 1 if dry else 5
        self.seq = 96 if dry else 1024  # SFT/DPO/reward rows are long enough to fill it
        self.batch = 2 if dry else 8
        self.pref_batch = 2 if dry else 4
        self.prompt_len = 32 if dry else 128
        self.response = 8 if dry else 64
        self.vocab = 1000 if dry else 8000
        self.rows = 16 if dry else 256


# ---------------------------------------------------------------- assets (built once per run)

def _text(rng: random.Random, n: int) -> str:
    return " ".join("".join(rng.choice(WORDS) for _ in range(rng.choice((1, 2, 3)))) for _ in range(n))


def build_assets(work: Path, s: Sizes) -> dict:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        PreTrainedTokenizerFast,
    )

    from posttrain.data.formats import alpaca_prompt

    rng = random.Random(0)
    # SFT rows run past max_length (the collator cuts them), so every sequence has the planned shape
    alpaca = [{"instruction": _text(rng, 12), "input": "", "output": _text(rng, s.seq)} for _ in range(s.rows)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=s.vocab, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([r["instruction"] + " " + r["output"] for r in alpaca] + [alpaca_prompt("x", "")], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                   unk_token="<|endoftext|>")
    # Preference pairs are dropped by TRL's reward stage when over max_length: size them to ~90% of it
    sample = _text(rng, 200)
    per_word = len(fast(sample)["input_ids"]) / 200
    pref = []
    for r in alpaca:
        prompt = r["instruction"] + "\nAnswer: "
        n = max(4, int((0.9 * s.seq - len(fast(prompt)["input_ids"])) / per_word))
        pref.append({"prompt": prompt, "chosen": _text(rng, n), "rejected": _text(rng, n)})
    prompts = [{"prompt": _text(rng, max(2, int(0.8 * s.prompt_len / per_word)))} for _ in range(s.rows)]
    files = {}
    for name, data in (("alpaca", alpaca), ("preference", pref), ("prompts", prompts),
                       ("prompt_completion", [{"prompt": alpaca_prompt(r["instruction"], ""),
                                               "completion": r["output"]} for r in alpaca])):
        files[name] = work / f"{name}.jsonl"
        files[name].write_text("".join(json.dumps(r) + "\n" for r in data))

    dtype = torch.float32 if s.dry else torch.bfloat16
    out = {"files": files}
    for key, config in (("small", "smollm2-135m"), ("1b", "llama-3.2-1b")):
        cfg = AutoConfig.from_pretrained(CONFIGS / config)
        if s.dry:
            for k, v in TINY.items():
                setattr(cfg, k, v)
        cfg.bos_token_id = cfg.eos_token_id = fast.eos_token_id
        cfg.pad_token_id = None
        torch.manual_seed(0)
        with torch.device("cuda" if torch.cuda.is_available() else "cpu"):  # random init of 1B: seconds on a GPU
            model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
        path = work / f"model-{key}"
        model.save_pretrained(path)
        fast.save_pretrained(path)
        out[key] = path
        out[f"{key}_shape"] = f"{config}{' (tiny)' if s.dry else ''}"
        if key == "small":  # the PPO reward model: the same shape with a scalar head
            cfg.num_labels = 1
            rm = AutoModelForSequenceClassification.from_config(cfg, dtype=dtype)
            rm.config.pad_token_id = fast.eos_token_id
            out["reward_model"] = work / "reward-small"
            rm.save_pretrained(out["reward_model"])
            fast.save_pretrained(out["reward_model"])
        del model
    return out


# ---------------------------------------------------------------- rows

LORA = {"r": 16, "lora_alpha": 32, "target_modules": "all-linear"}


def rows(a: dict, s: Sizes) -> list[dict]:
    """(name, model key, recipe mapping). Training keys common to all rows are added in recipe()."""
    f = a["files"]
    sft = {"stage": "sft", "data": {"train": str(f["alpaca"]), "format": "alpaca", "max_length": s.seq},
           "training": {"per_device_train_batch_size": s.batch, "max_steps": s.steps, "learning_rate": 1e-4}}
    pref = {"data": {"train": str(f["preference"]), "format": "preference", "max_length": s.seq},
            "training": {"per_device_train_batch_size": s.pref_batch, "max_steps": s.steps, "learning_rate": 1e-5}}
    prompts = {"data": {"train": str(f["prompts"]), "format": "prompt", "max_length": s.prompt_len}}
    return [
        ("sft full bf16", "1b", sft),
        ("sft LoRA", "1b", {**sft, "peft": LORA}),
        ("sft QLoRA nf4", "1b", {**sft, "peft": LORA,
                                 "quantization": {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}}),
        ("sft packed", "1b", {**sft, "training": {**sft["training"], "packing": True}}),
        ("dpo LoRA", "1b", {"stage": "dpo", **pref, "peft": LORA}),
        ("reward", "small", {"stage": "reward", **pref}),
        ("ppo LoRA", "small", {"stage": "ppo", **prompts, "peft": LORA, "reward_model": str(a["reward_model"]),
                               "training": {"per_device_train_batch_size": s.pref_batch, "max_steps": s.online_steps,
                                            "response_length": s.response, "num_ppo_epochs": 1,
                                            "learning_rate": 1e-6}}),
        ("grpo", "small", {"stage": "grpo", **prompts, "rewards": [{"rule": "length_penalty", "target": s.response // 2}],
                           "training": {"per_device_train_batch_size": max(4, s.batch), "num_generations": 4,
                                        "max_completion_length": s.response, "max_steps": s.online_steps,
                                        "learning_rate": 1e-6}}),
    ]


def recipe(mapping: dict, model: Path, out: Path, name: str):
    from posttrain.checks import validate

    raw = {**mapping, "model": {"name_or_path": str(model)}, "output_dir": str(out)}
    raw["training"] = {"logging_steps": 1, "save_strategy": "no", "report_to": "none", "seed": 0,
                       **mapping.get("training", {})}
    return validate(json.loads(json.dumps(raw)), source=f"gpu_check: {name}", level="model")


# ---------------------------------------------------------------- measuring

class Meter:
    """Step ends (wall clock) and tokens through forwards that build a graph, counted at each step end."""

    def __init__(self):
        self.tokens, self.begin, self.ends, self.at_end = 0, None, [], []

    def hook(self, module, args, kwargs):
        import torch

        ids = kwargs.get("input_ids", args[0] if args else None)
        if torch.is_grad_enabled() and module.training and ids is not None:
            self.tokens += ids.numel()

    def callback(self):
        from transformers import TrainerCallback

        meter = self

        class Timer(TrainerCallback):
            def on_train_begin(self, args, state, control, **kw):
                meter.begin = time.time()

            def on_step_end(self, args, state, control, **kw):
                meter.ends.append(time.time())
                meter.at_end.append(meter.tokens)

        return Timer()

    def rates(self) -> tuple[float | None, float | None]:
        """steps/s and tokens/s from the end of the first step (it pays one-off allocation); with one step, all."""
        if not self.ends:
            return None, None
        if len(self.ends) > 2:
            dt, steps, tokens = self.ends[-1] - self.ends[0], len(self.ends) - 1, self.at_end[-1] - self.at_end[0]
        else:
            dt, steps, tokens = self.ends[-1] - self.begin, len(self.ends), self.at_end[-1]
        return steps / dt, tokens / dt


def _cuda():
    import torch

    return torch.cuda.is_available()


def _reset_memory():
    import torch

    gc.collect()
    if _cuda():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak() -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() if _cuda() else None


def run_row(name: str, r, meter: Meter) -> dict:
    """Train `r` with its stage module, the meter hooked into the trainer the stage builds."""
    from posttrain import lifecycle

    facts = {}

    def hook(trainer):
        trainer.add_callback(meter.callback())
        model = getattr(trainer, "policy_model", None) or trainer.model  # PPO: the policy inside its wrapper
        model.register_forward_pre_hook(meter.hook, with_kwargs=True)
        facts["params"] = sum(p.numel() for p in model.parameters())

    lifecycle.train(r, overwrite=True, on_build=hook)
    return facts


def run_plain(a: dict, s: Sizes, work: Path, meter: Meter):
    import plain_trl_sft

    argv = ["--model", str(a["1b"]), "--data", str(a["files"]["prompt_completion"]), "--output_dir",
            str(work / "plain_trl_sft"), "--max_steps", str(s.steps), "--batch_size", str(s.batch),
            "--max_length", str(s.seq), "--learning_rate", "1e-4", "--logging_steps", "1", "--seed", "0"]
    if _cuda():
        argv += ["--bf16", "--activation_checkpointing"]  # what posttrain picks on a GPU

    from transformers import TrainerCallback

    class Hook(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kw):
            model.register_forward_pre_hook(meter.hook, with_kwargs=True)

    plain_trl_sft.main(argv, callbacks=[Hook(), meter.callback()])


def _plain_steps(a: dict, s: Sizes, work: Path) -> float | None:
    meter = Meter()
    _reset_memory()
    try:
        run_plain(a, s, work, meter)
    except Exception:  # noqa: BLE001 - the table is written whatever happens
        traceback.print_exc()
        return None
    return meter.rates()[0]


def device_line() -> tuple[str, float | None]:
    import torch

    if not _cuda():
        return f"CPU ({platform.processor() or platform.machine()}), torch {torch.__version__}: dry run, no MFU", None
    name = torch.cuda.get_device_name()
    peak = next((v for k, v in PEAKS.items() if k in name), None)
    total = torch.cuda.get_device_properties(0).total_memory / 2**30
    shown = f"dense bf16 peak {peak / 1e12:.0f} TFLOP/s (datasheet)" if peak else "peak unknown: no MFU"
    return f"{name}, {total:.0f} GiB, torch {torch.__version__} (CUDA {torch.version.cuda}); {shown}", peak


def _versions() -> str:
    from importlib import metadata

    out = []
    for p in ("transformers", "trl", "peft", "accelerate", "datasets", "bitsandbytes"):
        try:
            out.append(f"{p} {metadata.version(p)}")
        except metadata.PackageNotFoundError:
            out.append(f"{p} missing")
    return ", ".join(out)


def fmt(v, spec="{:.3g}"):
    return "n/a" if v is None else spec.format(v)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true", help="tiny shapes, one step per row (CPU is fine)")
    p.add_argument("--out", default=str(BENCH / "GPU.md"))
    p.add_argument("--work", default=str(REPO / "runs" / "gpu_check"))
    p.add_argument("--only", nargs="*", help="row names to run (default: all)")
    p.add_argument("--budget-s", type=float, default=450, help="skip the rows left once this much time has passed")
    args = p.parse_args(argv)
    t0 = time.time()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from posttrain.errors import RecipeError
    from posttrain.plan import estimate

    s = Sizes(args.dry_run)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_DATASETS_CACHE", str(work / "hf_datasets"))
    a = build_assets(work, s)
    device, peak = device_line()
    print(f"gpu_check: {device}; assets built in {time.time() - t0:.0f} s", flush=True)
    table, results, plain = [], {}, None
    for name, key, mapping in rows(a, s):
        if args.only and name not in args.only:
            continue
        if time.time() - t0 > args.budget_s:
            table.append([name, "skipped: time budget spent"] + [""] * 6)
            continue
        try:
            r = recipe(mapping, a[key], work / name.replace(" ", "_"), name)
        except RecipeError as e:
            table.append([name, f"skipped: {e}"] + [""] * 6)
            continue
        est = estimate(r)["total"]
        meter = Meter()
        _reset_memory()
        t = time.time()
        try:
            facts = run_row(name, r, meter)
        except Exception as e:  # noqa: BLE001 - one row failing must not lose the others' numbers
            traceback.print_exc()
            table.append([name, f"FAILED: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"]
                         + [""] * 6)
            continue
        steps_s, tok_s = meter.rates()
        measured = _peak()
        mfu = 6 * facts["params"] * tok_s / peak if peak and tok_s else None
        results[name] = {"steps_per_s": steps_s, "tokens_per_s": tok_s, "mfu": mfu, "peak_bytes": measured,
                         "plan_bytes": est, "params": facts["params"], "wall_s": time.time() - t}
        table.append([name, f"{a[key + '_shape']}, {facts['params'] / 1e6:.3g}M", fmt(steps_s), fmt(tok_s, "{:.0f}"),
                      fmt(mfu and 100 * mfu, "{:.1f}%"), fmt(measured and measured / 2**30, "{:.2f}"),
                      f"{est / 2**30:.2f}", fmt(measured and measured / est, "{:.2f}")])
        print(f"gpu_check: {name}: {results[name]}", flush=True)
        if name == "sft full bf16":  # the same setting by hand with TRL, next to it in time
            plain = _plain_steps(a, s, work)
    ours = results.get("sft full bf16", {}).get("steps_per_s")
    lines = [
        "# GPU check (`make gpu-check`, bench/gpu_check.py)" + (" — DRY RUN (tiny shapes, CPU)" if args.dry_run else ""),
        "",
        f"- Device: {device}",
        f"- Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; {_versions()}",
        (f"- Models random-initialised from tests/data/configs ({a['small_shape']}, {a['1b_shape']}); a byte-level "
        f"BPE tokenizer trained on synthetic text ({s.vocab} tokens); posttrain's defaults for the device (on a GPU: "
        f"bf16, activation checkpointing, sdpa); SFT {s.batch} x {s.seq} tokens, DPO/reward {s.pref_batch} pairs of "
        f"~{int(0.9 * s.seq)} tokens each; {s.steps} steps (online stages {s.online_steps}), rates from the end of the first step."),
        ("- tokens/s: tokens through forwards that build a graph (generation and reference passes excluded); "
        "MFU = 6 x all parameters x tokens/s / peak (LoRA rows do ~4N of work, so their MFU overstates; "
        "recomputation under checkpointing is not counted). Memory: torch.cuda.max_memory_allocated vs "
        "`posttrain plan` (its total, with 10% overhead)."),
        f"- plain TRL (bench/plain_trl_sft.py, same model, rows, batch and length as `sft full bf16`): "
        f"{fmt(plain)} steps/s vs posttrain {fmt(ours)} steps/s"
        + (f" (posttrain/plain = {ours / plain:.2f})" if ours and plain else ""),
        f"- Total wall time {time.time() - t0:.0f} s.",
        "",
        "| row | model | steps/s | tokens/s | MFU | peak GiB | plan GiB | peak/plan |",
        "|---|---|---|---|---|---|---|---|",
    ] + ["| " + " | ".join(str(c) for c in row) + " |" for row in table]
    Path(args.out).write_text("\n".join(lines) + "\n")
    (Path(args.out).with_suffix(".json")).write_text(json.dumps(
        {"device": device, "rows": results, "plain_trl_steps_per_s": plain, "table": table}, indent=1) + "\n")
    print("\n".join(lines))
    return 0 if all(not str(row[1]).startswith("FAILED") for row in table) else 1


if __name__ == "__main__":
    raise SystemExit(main())
