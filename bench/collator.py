"""Collators: trained tokens per second, posttrain's dynamic padding (and length grouping) vs the seed's
pad-to-max_length approach, and TRL's packing, one epoch over the same rows each.

    python bench/collator.py [--quick] [--out bench/RESULTS.md]

In-process, variants interleaved per repetition, speedups per repetition against the seed's run in the same
repetition. Writes the "collator" section of RESULTS.md.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import table
import workload
from table import cell, med
from workload import MAX_LENGTH

NAME = "collator"
TITLE = "2. Collator: trained tokens per second vs the seed"
FULL = {"reps": 3, "collator_rows": 128}
QUICK = {"reps": 1, "collator_rows": 16}
BATCH = 4
SEED = "(a) seed: pad to max_length, mask pad id"
# like for like: the same labels on both sides (response tokens under posttrain's objective; every token
# under the seed's). (b)/(c) against every seed label compares different objectives: in the table only.
TARGETS = (("(b) posttrain: dynamic padding", "response", "trained response tokens/s"),
           ("(c) (b) + group_by_length", "response", "trained response tokens/s"),
           ("(b2) (b), every token a label as in the seed", "labels", "trained tokens/s, same labels"),
           ("(c2) (c), every token a label as in the seed", "labels", "trained tokens/s, same labels"))


class Counting:
    """Wraps a collator; counts positions, real (non-pad) tokens, trained labels and trained EOS."""

    def __init__(self, collate, eos_id: int):
        self.collate, self.eos_id = collate, eos_id
        self.positions = self.real = self.trained = self.eos = self.batches = self.response = 0

    def __call__(self, features):
        batch = self.collate(features)
        ids, labels = batch["input_ids"], batch["labels"]
        self.batches += 1
        self.positions += ids.numel()
        # padding-free batches (TRL packing) carry no attention mask: every position is a real token
        self.real += int(batch["attention_mask"].sum()) if "attention_mask" in batch else ids.numel()
        trained = int((labels != -100).sum())
        self.trained += trained
        self.eos += int((labels == self.eos_id).sum())
        # trained response tokens: rows that train more than the response (the seed's, and (b2)/(c2)) say how
        # many of their labels are response tokens; every other variant trains only response tokens (+ EOS)
        self.response += sum(f["n_response"] for f in features) if "n_response" in features[0] else trained
        return batch


def seed_dataset(rows, tokenizer, max_length):
    """The seed's approach: pad every row to max_length, labels = input_ids with every pad id masked."""
    from datasets import Dataset

    pad = tokenizer.pad_token_id
    enc = tokenizer([r["prompt"] + r["completion"] + tokenizer.eos_token for r in rows], padding="max_length",
                    truncation=True, max_length=max_length)
    labels = [[-100 if t == pad else t for t in ids] for ids in enc["input_ids"]]
    # Alpaca prompts end in "\n", so the prompt's tokens are a prefix of the row's: what follows is response
    prompt_len = [len(ids) for ids in tokenizer([r["prompt"] for r in rows])["input_ids"]]
    n_response = [sum(t != -100 for t in lab[n:]) for lab, n in zip(labels, prompt_len)]
    return Dataset.from_dict({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels,
                              "n_response": n_response})


def stack(features):
    import torch

    return {k: torch.tensor([f[k] for f in features]) for k in ("input_ids", "attention_mask", "labels")}


def packing_logit_diff(model, sequences, use_cache) -> float:
    """Max |logit difference| between one padding-free packed forward (TRL's collator) and separate forwards."""
    import torch
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    packed = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)([{"input_ids": s} for s in sequences])
    with torch.no_grad():
        together = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"], use_cache=use_cache)
        apart = torch.cat([model(input_ids=torch.tensor([s])).logits[0] for s in sequences])
    return float((together.logits[0] - apart).abs().max())


def padding_shares(lengths: list[int], batch: int, max_length: int) -> dict[str, float]:
    """Padding share of one epoch, from row lengths alone: seed (pad to max_length), random batches padded to
    their longest row, and transformers' length-grouped batches."""
    import torch
    from transformers.trainer_pt_utils import get_length_grouped_indices

    lengths = [min(n, max_length) for n in lengths]
    real = sum(lengths)

    def dynamic(order):
        batches = [order[i:i + batch] for i in range(0, len(order), batch)]
        return 1 - real / sum(len(b) * max(lengths[i] for i in b) for b in batches)

    g = torch.Generator().manual_seed(42)
    return {"seed": 1 - real / (len(lengths) * max_length),
            "dynamic": dynamic(torch.randperm(len(lengths), generator=g).tolist()),
            "grouped": dynamic(get_length_grouped_indices(lengths, batch, generator=g))}


def collators(paths: dict, n_rows: int, reps: int, tmp: Path) -> dict:
    """One epoch over the same rows per variant (so every variant trains the same responses); reps interleaved."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, PrinterCallback, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from posttrain.data.collator import SFTCollator, tokenize_dataset
    from posttrain.models import load_tokenizer

    tok = load_tokenizer({"name_or_path": str(paths["model"])})  # pad = eos, as with GPT-2
    rows = workload.prompt_completion_rows(n_rows, seed=7)
    raw = Dataset.from_list(rows)
    ours, _ = tokenize_dataset(raw, "prompt_completion", tok, MAX_LENGTH, "bench rows")
    seed_ds = seed_dataset(rows, tok, MAX_LENGTH)
    # the seed's objective (every token a label) through posttrain's collator: what padding alone costs
    every_token = ours.map(lambda r: {"labels": r["input_ids"], "n_response": sum(t != -100 for t in r["labels"])})

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            self.start, self.cpu_start = time.perf_counter(), time.process_time()

        def on_train_end(self, args, state, control, **kw):
            self.seconds, self.cpu_seconds = time.perf_counter() - self.start, time.process_time() - self.cpu_start

    base = dict(per_device_train_batch_size=BATCH, num_train_epochs=1, max_length=MAX_LENGTH,
                learning_rate=2e-4, logging_steps=10_000, save_strategy="no", report_to="none", bf16=False,
                activation_checkpointing=False, use_cpu=True, dataloader_pin_memory=False, disable_tqdm=True,
                seed=42)
    own = dict(dataset_kwargs={"skip_prepare_dataset": True}, remove_unused_columns=False)
    variants = {
        "(a) seed: pad to max_length, mask pad id": (seed_ds, stack, own),
        "(b) posttrain: dynamic padding": (ours, SFTCollator(tok.pad_token_id), own),
        "(c) (b) + group_by_length": (ours, SFTCollator(tok.pad_token_id),
                                      {**own, "train_sampling_strategy": "group_by_length"}),
        "(b2) (b), every token a label as in the seed": (every_token, SFTCollator(tok.pad_token_id), own),
        "(c2) (c), every token a label as in the seed": (every_token, SFTCollator(tok.pad_token_id),
                                                        {**own, "train_sampling_strategy": "group_by_length"}),
        "(d) TRL packing (bfd, padding-free)": (raw, None, {"packing": True}),
    }

    def epoch(name, max_steps=-1):
        data, collate, extra = variants[name]
        model = AutoModelForCausalLM.from_pretrained(paths["model"])
        cfg = SFTConfig(output_dir=str(tmp / "collator"), max_steps=max_steps, **base, **extra)
        trainer = SFTTrainer(model=model, args=cfg, train_dataset=data, processing_class=tok, data_collator=collate)
        counter = Counting(trainer.data_collator, tok.eos_token_id)
        trainer.data_collator = counter
        clock = Clock()
        trainer.add_callback(clock)
        trainer.remove_callback(PrinterCallback)
        trainer.train()
        return {"seconds": clock.seconds, "cpu_seconds": clock.cpu_seconds, "steps": trainer.state.global_step,
                **{k: getattr(counter, k) for k in ("positions", "real", "trained", "eos", "batches", "response")}}

    epoch("(b) posttrain: dynamic padding", max_steps=2)  # warm-up: allocator, lazy imports
    runs = {name: [] for name in variants}
    for r, name in table.interleaved(list(variants), reps):
        runs[name].append(epoch(name))
        print(f"  collator rep {r + 1}/{reps} {name}: {runs[name][-1]['seconds']:.2f} s", flush=True)

    sft_rows = [json.loads(line) for line in paths["sft"].read_text().splitlines()]
    lengths = [len(ids) + 1 for ids in tok([r["prompt"] + r["completion"] for r in sft_rows])["input_ids"]]
    model = AutoModelForCausalLM.from_pretrained(paths["model"])  # eval mode: no dropout
    sequences = [list(ours[i]["input_ids"]) for i in range(3)]
    return {"runs": runs, "rows": n_rows, "full_size": (len(lengths), padding_shares(lengths, BATCH, MAX_LENGTH)),
            # TRL's compute_loss passes use_cache=False; with the cache on, transformers skips packed-sequence masks
            "packing_logit_diff": packing_logit_diff(model, sequences, False),
            "packing_logit_diff_cache": packing_logit_diff(model, sequences, None),
            "ours_trained": runs["(b) posttrain: dynamic padding"][0]["trained"],
            "packed_trained": runs["(d) TRL packing (bfd, padding-free)"][0]["trained"]}


def collator_table(res: dict) -> tuple[str, dict]:
    runs = res["runs"]
    seed = runs[SEED]

    def rate(r, clock, count):
        return (r[count] if count else 1) / r[clock]

    def vs_seed(rs, clock, count="trained"):
        """Per repetition: trained tokens (or rows) per second over the seed's in the same repetition."""
        return [rate(r, clock, count) / rate(s, clock, count) for r, s in zip(rs, seed)]

    rows, speedups = [], {"labels": {}, "response": {}}
    for name, rs in runs.items():
        speedups["labels"][name] = vs_seed(rs, "seconds")
        speedups["response"][name] = vs_seed(rs, "seconds", "response")
        r0 = rs[0]
        rows.append([name, r0["steps"], cell([r["seconds"] for r in rs]), cell([r["cpu_seconds"] for r in rs]),
                     cell([rate(r, "seconds", "trained") for r in rs], "{:.0f}"), cell(speedups["labels"][name]),
                     cell(speedups["response"][name]), cell(vs_seed(rs, "cpu_seconds", "response")),
                     cell(vs_seed(rs, "seconds", None)), f"{1 - r0['real'] / r0['positions']:.1%}", r0["trained"],
                     r0["response"], r0["eos"]])
    header = ["variant", "steps", "epoch wall (s)", "epoch CPU (s)", "trained tok/s", "× seed, all labels",
              "× seed, response tokens", "× seed, response tokens per CPU s", "× seed rows/s", "padding share",
              "trained tokens (labels)", "of them response", "trained EOS"]
    return table.table(header, rows), speedups


def run(cfg: dict, paths: dict, tmp: Path) -> tuple[dict, str, list[str]]:
    res = collators(paths, cfg["collator_rows"], cfg["reps"], tmp)
    text, speedups = collator_table(res)
    res["speedup_trained_tok_s"] = speedups
    exact = res["packing_logit_diff"] < 1e-4 and res["ours_trained"] == res["packed_trained"]
    shares = res["full_size"][1]
    text += (f"\n\nMeasured with it ({res['rows']} rows, batch {BATCH}, max_length {MAX_LENGTH}):\n\n"
             f"- padding share of one epoch over the {res['full_size'][0]:,}-row file, from lengths alone: "
             f"{shares['seed']:.1%} (seed), {shares['dynamic']:.1%} (dynamic), {shares['grouped']:.1%} "
             "(grouped, 50-batch megabatches)\n"
             f"- (d) TRL packing vs posttrain: {'exact' if exact else 'NOT exact'} on these rows; TRL trained "
             f"{res['packed_trained']} tokens and posttrain {res['ours_trained']}\n"
             f"- packed vs separate forwards, max |logit difference|: {res['packing_logit_diff']:.1e} with "
             f"`use_cache=False`, {res['packing_logit_diff_cache']:.2f} with GPT-2's default `use_cache=True`")
    targets = []
    for name, count, what in TARGETS:
        x = speedups[count][name]
        targets.append(table.target(f"{name} ≥ 2× the seed's {what} on CPU", med(x) >= 2,
                                    f"median {med(x):.2f}×, range {min(x):.2f}–{max(x):.2f}×"))
    return {"collators": res}, text, targets


if __name__ == "__main__":
    import run as driver

    driver.main(only=[NAME])
