"""Packing benchmark: trained tokens per second of SFT with packed batches vs dynamic padding vs TRL's packing.

    python bench/packing.py [--reps 3] [--quick] [--out bench/RESULTS.md]

Two workloads, each on the same rows for every variant:
  alpaca  the synthetic Alpaca-like length mix of bench/workload.py (long-tailed), the bench's tiny GPT-2,
          max_length 512, batch 8, full fine-tune;
  demo    the demo's SFT rows (posttrain/demo/data.py), a random Llama of SmolLM2-135M's width (576, 9 heads,
          3 KV heads, MLP 1536; 4 of its 30 layers), LoRA r=16 on all linear layers, max_length 96, batch 8:
          the demo's SFT recipe on a model that fits this benchmark's time.
Variants (one epoch over the rows each, repetitions interleaved):
  padded      posttrain's dynamic padding (SFTCollator), the default;
  packed      training.packing: each batch's rows as they come, in one padding-free sequence (PackedCollator),
              attention per row (packing.SEGMENT_SDPA), as sft.build sets it up;
  packed-mask the same batches on plain sdpa: transformers' block-diagonal mask over the whole pack;
  packed-bfd  the alternative: rows bin-packed best-fit-decreasing into bins of max_length tokens, `batch`
              bins per step, then the same padding-free collation (TRL's packing semantics, our labels);
  trl         TRL's own `packing=True` (bfd, padding-free) on the same rows as prompt/completion text.
Trained tokens = labels the loss scores (after its one-position shift), counted per batch. Ratios are per
repetition against `padded` in the same repetition (median shown), from process CPU time (what a neighbour
on the other core barely moves) and from wall time. One thread (OMP_NUM_THREADS=1) for stable timing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH.parent), str(BENCH)]

import table as table_md  # noqa: E402
import workload  # noqa: E402

BATCH = 8
DEMO_MODEL = {"hidden_size": 576, "intermediate_size": 1536, "num_attention_heads": 9, "num_key_value_heads": 3,
              "num_hidden_layers": 4, "max_position_embeddings": 512, "tie_word_embeddings": True}


def bfd_bins(lengths: list[int], budget: int) -> list[list[int]]:
    """Best-fit decreasing: row indices grouped so each bin's total length fits the budget."""
    bins, room = [], []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        n = lengths[i]
        fits = [b for b in range(len(bins)) if room[b] >= n]
        if fits:
            b = min(fits, key=lambda b: room[b])
            bins[b].append(i)
            room[b] -= n
        else:
            bins.append([i])
            room.append(budget - n)
    return bins


class Counted:
    """Wraps a collator; counts the labels the loss scores and the positions computed."""

    def __init__(self, collate):
        self.collate, self.trained, self.positions = collate, 0, 0

    def __call__(self, features):
        batch = self.collate(features)
        self.trained += int((batch["labels"][:, 1:] != -100).sum())
        self.positions += batch["input_ids"].numel()
        return batch


def workloads(quick: bool) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from posttrain.data.formats import alpaca_prompt
    from posttrain.demo import data as demo_data

    paths = workload.build()
    tok = AutoTokenizer.from_pretrained(paths["model"])
    alpaca = workload.alpaca_rows(96 if quick else 256, seed=11)
    demo = demo_data.build()["sft_train"][: 64 if quick else 192]
    llama_dir = workload.CACHE / "llama-smollm2-width-4l"
    if not (llama_dir / "config.json").exists():
        torch.manual_seed(0)
        cfg = LlamaConfig(vocab_size=len(tok), bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id,
                          **DEMO_MODEL)
        LlamaForCausalLM(cfg).save_pretrained(llama_dir)
        tok.save_pretrained(llama_dir)
    out = {}
    for name, rows, model, max_length, lora in (("alpaca", alpaca, paths["model"], 512, False),
                                                ("demo", demo, llama_dir, 96, True)):
        out[name] = {"rows": rows, "model": model, "max_length": max_length, "lora": lora, "tok": tok,
                     "raw": Dataset.from_list([{"prompt": alpaca_prompt(r["instruction"], r.get("input", "")),
                                                "completion": r["output"]} for r in rows])}
    return out


def run_variant(w: dict, variant: str, tmp: Path) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, PrinterCallback
    from trl import SFTConfig, SFTTrainer

    from posttrain.data.collator import SFTCollator, tokenize_dataset
    from posttrain.data.packing import PackedCollator, use_segment_sdpa

    tok, max_length = w["tok"], w["max_length"]
    pad = tok.eos_token_id
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(w["model"], dtype=torch.float32)
    base = dict(output_dir=str(tmp / variant), per_device_train_batch_size=BATCH, num_train_epochs=1,
                max_length=max_length, learning_rate=2e-4, logging_steps=10_000, save_strategy="no",
                report_to="none", bf16=False, activation_checkpointing=False, use_cpu=True,
                dataloader_pin_memory=False, disable_tqdm=True, seed=0)
    own = dict(dataset_kwargs={"skip_prepare_dataset": True}, remove_unused_columns=False)
    if variant == "trl":
        data, collate, extra = w["raw"], None, {"packing": True}
    else:
        ds, _ = tokenize_dataset(Dataset.from_list(w["rows"]), "alpaca", tok, max_length, "bench rows")
        extra = own
        if variant == "padded":
            data, collate = ds, SFTCollator(pad)
        elif variant in ("packed", "packed-mask"):
            data, collate = ds, PackedCollator(pad)
        else:  # packed-bfd: a dataset of bins, each expanded back into its rows at collation
            rows = [ds[i] for i in range(len(ds))]
            bins = bfd_bins([len(r["input_ids"]) for r in rows], max_length)
            data = Dataset.from_list([{"rows": [rows[i] for i in b]} for b in bins])
            packed = PackedCollator(pad)
            collate = lambda feats: packed([r for f in feats for r in f["rows"]])  # noqa: E731
    if variant in ("packed", "packed-bfd"):
        assert use_segment_sdpa(model)  # what sft.build does with training.packing
    peft = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM") if w["lora"] else None
    trainer = SFTTrainer(model=model, args=SFTConfig(**base, **extra), train_dataset=data, processing_class=tok,
                         data_collator=collate, peft_config=peft)
    trainer.data_collator = counted = Counted(trainer.data_collator)
    trainer.remove_callback(PrinterCallback)
    wall, cpu = time.perf_counter(), time.process_time()
    trainer.train()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"wall": wall, "cpu": cpu, "steps": trainer.state.global_step, "trained": counted.trained,
            "positions": counted.positions}


VARIANTS = ("padded", "packed", "packed-mask", "packed-bfd", "trl")


def measure(reps: int, quick: bool, tmp: Path) -> dict:
    import torch

    torch.set_num_threads(1)
    res = {}
    for name, w in workloads(quick).items():
        run_variant(w, "padded", tmp)  # warm-up: allocator, lazy imports
        res[name] = {v: [] for v in VARIANTS}
        for r in range(reps):
            order = VARIANTS[r % len(VARIANTS):] + VARIANTS[:r % len(VARIANTS)]
            for v in order:
                res[name][v].append(run_variant(w, v, tmp))
                x = res[name][v][-1]
                print(f"  {name} rep {r + 1}/{reps} {v:10s} {x['steps']:3d} steps {x['cpu']:6.2f} cpu-s "
                      f"{x['wall']:6.2f} s  {x['trained'] / x['cpu']:8.0f} trained tok/cpu-s", flush=True)
        res[name]["_rows"] = len(w["rows"])
        res[name]["_max_length"] = w["max_length"]
    return res


def table(res: dict) -> str:
    out = []
    for name, runs in res.items():
        rows, max_length = runs["_rows"], runs["_max_length"]
        pad = runs["padded"]
        out.append(f"**{name}** ({rows} rows, max_length {max_length}, batch {BATCH}; {len(pad)} repetitions)\n")
        out.append("| variant | steps | trained tokens | positions computed | trained tok / CPU s | "
                   "vs padded (CPU) | vs padded (wall) | vs TRL packing (CPU) |")
        out.append("|---|---|---|---|---|---|---|---|")
        for v in VARIANTS:
            rs = runs[v]
            rate = [r["trained"] / r["cpu"] for r in rs]
            def ratio(other, clock, rs=rs, runs=runs):
                return statistics.median((a["trained"] / a[clock]) / (b["trained"] / b[clock])
                                         for a, b in zip(rs, runs[other]))
            out.append(f"| {v} | {rs[0]['steps']} | {rs[0]['trained']} | {rs[0]['positions']} | "
                       f"{statistics.median(rate):.0f} | {ratio('padded', 'cpu'):.2f}x | {ratio('padded', 'wall'):.2f}x | "
                       f"{ratio('trl', 'cpu'):.2f}x |")
        out.append("")
    return "\n".join(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="fewer rows, one repetition: a smoke run")
    p.add_argument("--out", default=str(BENCH / "RESULTS.md"))
    args = p.parse_args(argv)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        res = measure(1 if args.quick else args.reps, args.quick, Path(tmp))
    body = table(res)
    print(body)
    notes = ("Same rows for every variant; `packed` and `padded` take the same rows per step (so the same "
             "optimisation), `packed-bfd` and `trl` put ~max_length x batch tokens in a step (fewer steps). "
             "Ratios: median over repetitions of (trained tokens/s) / (the other variant's, same repetition).")
    if not args.quick:
        table_md.write_section("packing", "Packing: trained tokens per second (bench/packing.py)",
                               f"{body}\n{notes}\n", out=args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
