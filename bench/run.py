"""posttrain benchmarks: orchestration overhead vs plain TRL, collators vs the seed, preprocessing, CLI latency.

    python bench/run.py [--quick] [--out bench/RESULTS.md]      (or: make bench BENCH_ARGS=--quick)

Prints one table per section and writes them, with the machine and package versions, to --out. Every
number is a median over repetitions with its min-max spread; variants that are compared run interleaved
within each repetition (alternating order), so a noisy neighbour hits both, and ratios are taken per
repetition. Torch runs on one thread: on a shared 2-core machine a second thread fights the neighbour
and makes steps several times slower and far noisier.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import workload  # noqa: E402

FULL = {"reps": 3, "overhead_reps": 5, "sft_steps": 40, "dpo_steps": 30, "dpo": True, "collator_rows": 128, "prep_rows": 50_000,
        "prep_reps": 2, "help_reps": 5, "validate_reps": 2}
QUICK = {"reps": 1, "sft_steps": 3, "dpo_steps": 3, "dpo": False, "collator_rows": 16, "prep_rows": 5_000,
         "prep_reps": 1, "help_reps": 2, "validate_reps": 1}
BATCH_SFT, BATCH_DPO, BATCH_SEED, MAX_LENGTH = 8, 4, 4, 512
CHILD_ENV = {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
             "TRL_EXPERIMENTAL_SILENCE": "1"}


# ---------------------------------------------------------------- formatting

def med(xs):
    return statistics.median(xs)


def cell(xs, fmt="{:.2f}"):
    """median [min-max] of the finite values."""
    xs = [x for x in xs if x is not None]
    if not xs:
        return "n/a"
    if len(xs) == 1:
        return fmt.format(xs[0])
    return f"{fmt.format(med(xs))} [{fmt.format(min(xs))}–{fmt.format(max(xs))}]"


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def interleaved(names: list[str], reps: int):
    """(rep, name) in alternating order: A B, B A, A B, ..."""
    for r in range(reps):
        for name in (names if r % 2 == 0 else names[::-1]):
            yield r, name


# ---------------------------------------------------------------- 1. overhead vs plain TRL

def _child(runner: str, argv: list[str], work: Path) -> dict:
    work.mkdir(parents=True)
    result = work / "result.json"
    # A fresh datasets cache per run: both sides tokenize for real, none reuses the other's cache.
    env = {**os.environ, **CHILD_ENV, "HF_DATASETS_CACHE": str(work / "hf_datasets")}
    with open(work / "log.txt", "w") as log:
        done = subprocess.run([sys.executable, str(BENCH / "child.py"), str(result), runner, *argv], env=env,
                              stdout=log, stderr=subprocess.STDOUT, cwd=BENCH.parent, check=False)
    if done.returncode != 0 or not result.exists():
        tail = (work / "log.txt").read_text()[-3000:]
        raise RuntimeError(f"{runner} failed (exit {done.returncode}):\n{tail}")
    return json.loads(result.read_text())


def _overhead_variants(stage: str, paths: dict, steps: int):
    """(runner, argv(out_dir)) for posttrain and the plain script: same model, data, batch, steps, seed."""
    model = str(paths["model"])
    if stage == "sft":
        recipe = ["alpaca_gpt2", f"data.train={paths['sft']}", "data.format=prompt_completion",
                  "data.eval_fraction=null", f"training.per_device_train_batch_size={BATCH_SFT}",
                  "training.gradient_accumulation_steps=1", "training.warmup_steps=0",
                  "training.learning_rate=2e-4"]
        plain = ["--data", str(paths["sft"]), "--batch_size", str(BATCH_SFT), "--learning_rate", "2e-4"]
    else:
        recipe = ["dpo_gpt2", f"data.train={paths['dpo']}", "data.split=train", "data.eval=null",
                  f"training.per_device_train_batch_size={BATCH_DPO}", "training.learning_rate=1e-6"]
        plain = ["--data", str(paths["dpo"]), "--batch_size", str(BATCH_DPO), "--learning_rate", "1e-6"]
    common = [f"training.max_steps={steps}", "training.eval_strategy=no", "training.save_strategy=no",
              "training.logging_steps=5", "training.seed=42", f"data.max_length={MAX_LENGTH}"]
    return {
        "posttrain": (f"posttrain:{stage}",
                      lambda out: ["train", recipe[0], f"model.name_or_path={model}", *recipe[1:], *common,
                                   f"output_dir={out}"]),
        "plain TRL": (f"plain_trl_{stage}",
                      lambda out: ["--model", model, *plain, "--max_steps", str(steps), "--max_length",
                                   str(MAX_LENGTH), "--logging_steps", "5", "--seed", "42", "--output_dir", str(out)]),
    }


def overhead(stage: str, paths: dict, steps: int, reps: int, tmp: Path) -> dict:
    variants = _overhead_variants(stage, paths, steps)
    runs = {name: [] for name in variants}
    for r, name in interleaved(list(variants), reps):
        runner, argv = variants[name]
        work = tmp / f"{stage}-{name.replace(' ', '_')}-{r}"
        runs[name].append(_child(runner, argv(work / "out"), work))
        print(f"  {stage} rep {r + 1}/{reps} {name}: first step {runs[name][-1]['first_step_s']:.2f} s, "
              f"{runs[name][-1]['steps_per_s']:.3f} steps/s", flush=True)
    pt, pl = runs["posttrain"], runs["plain TRL"]
    paired = list(zip(pt, pl))
    return {
        "runs": runs,
        "throughput_ratio": [a["steps_per_s"] / b["steps_per_s"] for a, b in paired],
        "cpu_throughput_ratio": [a["steps_per_cpu_s"] / b["steps_per_cpu_s"] for a, b in paired],
        "first_step_ratio": [a["first_step_s"] / b["first_step_s"] for a, b in paired],
        "startup_overhead_s": [a["first_step_s"] - b["first_step_s"] for a, b in paired],
        "startup_overhead_cpu_s": [a["first_step_cpu_s"] - b["first_step_cpu_s"] for a, b in paired],
        "rss_ratio": [a["peak_rss_mib"] / b["peak_rss_mib"] for a, b in paired],
        "wall_ratio": [a["wall_s"] / b["wall_s"] for a, b in paired],
        "same_loss": all(a["train_loss"] is not None and abs(a["train_loss"] - b["train_loss"]) < 1e-4
                         for a, b in paired),
    }


def overhead_table(stage: str, res: dict, steps: int) -> str:
    pt, pl = res["runs"]["posttrain"], res["runs"]["plain TRL"]

    def col(runs, key, fmt="{:.2f}"):
        return cell([r[key] for r in runs], fmt)

    rows = [
        ["time to first step (s)", col(pt, "first_step_s"), col(pl, "first_step_s"), cell(res["first_step_ratio"], "{:.3f}")],
        ["CPU seconds to first step", col(pt, "first_step_cpu_s"), col(pl, "first_step_cpu_s"), ""],
        ["startup overhead = posttrain − plain, wall (s)", "", "", cell(res["startup_overhead_s"], "{:+.2f}")],
        ["startup overhead = posttrain − plain, CPU (s)", "", "", cell(res["startup_overhead_cpu_s"], "{:+.2f}")],
        ["steady-state steps/s", col(pt, "steps_per_s", "{:.3f}"), col(pl, "steps_per_s", "{:.3f}"),
         cell(res["throughput_ratio"], "{:.3f}")],
        ["steady-state steps per CPU second", col(pt, "steps_per_cpu_s", "{:.3f}"), col(pl, "steps_per_cpu_s", "{:.3f}"),
         cell(res["cpu_throughput_ratio"], "{:.3f}")],
        ["peak RSS (MiB)", col(pt, "peak_rss_mib", "{:.0f}"), col(pl, "peak_rss_mib", "{:.0f}"), cell(res["rss_ratio"], "{:.3f}")],
        ["wall, start to exit incl. save (s)", col(pt, "wall_s"), col(pl, "wall_s"), cell(res["wall_ratio"], "{:.3f}")],
        ["final train loss", col(pt, "train_loss", "{:.4f}"), col(pl, "train_loss", "{:.4f}"),
         "identical" if res["same_loss"] else "DIFFERENT"],
    ]
    batch = BATCH_SFT if stage == "sft" else BATCH_DPO
    title = f"{stage.upper()}: `posttrain train` vs a hand-written TRL script ({steps} steps, batch {batch}, " \
            f"{len(pt)} run{'s' if len(pt) > 1 else ''} each)"
    return f"### {title}\n\n" + table(["metric", "posttrain", "plain TRL", "posttrain / plain"], rows)


# ---------------------------------------------------------------- 2. collators vs the seed

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

    base = dict(per_device_train_batch_size=BATCH_SEED, num_train_epochs=1, max_length=MAX_LENGTH,
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
    for r, name in interleaved(list(variants), reps):
        runs[name].append(epoch(name))
        print(f"  collator rep {r + 1}/{reps} {name}: {runs[name][-1]['seconds']:.2f} s", flush=True)

    sft_rows = [json.loads(line) for line in paths["sft"].read_text().splitlines()]
    lengths = [len(ids) + 1 for ids in tok([r["prompt"] + r["completion"] for r in sft_rows])["input_ids"]]
    model = AutoModelForCausalLM.from_pretrained(paths["model"])  # eval mode: no dropout
    sequences = [list(ours[i]["input_ids"]) for i in range(3)]
    return {"runs": runs, "rows": n_rows, "full_size": (len(lengths), padding_shares(lengths, BATCH_SEED, MAX_LENGTH)),
            # TRL's compute_loss passes use_cache=False; with the cache on, transformers skips packed-sequence masks
            "packing_logit_diff": packing_logit_diff(model, sequences, False),
            "packing_logit_diff_cache": packing_logit_diff(model, sequences, None),
            "ours_trained": runs["(b) posttrain: dynamic padding"][0]["trained"],
            "packed_trained": runs["(d) TRL packing (bfd, padding-free)"][0]["trained"]}


def collator_table(res: dict) -> tuple[str, dict]:
    runs = res["runs"]
    seed = runs["(a) seed: pad to max_length, mask pad id"]

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
    return table(header, rows), speedups


# ---------------------------------------------------------------- 3. preprocessing

def preprocessing(paths: dict, n_rows: int, reps: int, tmp: Path) -> dict:
    import datasets

    from posttrain.data.collator import tokenize_dataset
    from posttrain.data.formats import alpaca_prompt
    from posttrain.models import load_tokenizer

    source = workload.CACHE / f"alpaca_{n_rows}.jsonl"
    if not source.exists():
        workload.write_jsonl(source, workload.alpaca_rows(n_rows, seed=3))
    tok = load_tokenizer({"name_or_path": str(paths["model"])})
    ds = datasets.load_dataset("json", data_files=str(source), split="train", cache_dir=str(tmp / "prep_cache"))
    quiet = logging.getLogger("posttrain")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # the truncation warning, once per run, is noise here
    # The floor: the fast tokenizer alone on the same texts (a sample), no datasets, no labels.
    sample = ds.select(range(min(n_rows, 5000))).to_list()
    prompts = [alpaca_prompt(r["instruction"], r["input"]) for r in sample]
    outputs = [r["output"] for r in sample]

    def tokenizer_only():
        tok(prompts)
        tok(outputs, add_special_tokens=False)

    datasets.disable_caching()  # every repetition tokenizes for real instead of reading the last one's cache
    times = {1: [], 2: [], "tokenizer": []}
    try:
        for _, setting in interleaved([1, 2, "tokenizer"], reps):
            start = time.perf_counter()
            if setting == "tokenizer":
                tokenizer_only()
            else:
                tokenize_dataset(ds, "alpaca", tok, MAX_LENGTH, "bench", num_proc=setting if setting > 1 else None)
            times[setting].append(time.perf_counter() - start)
            print(f"  tokenize, {setting}: {times[setting][-1]:.2f} s", flush=True)
    finally:
        datasets.enable_caching()
        quiet.setLevel(level)
    return {"rows": n_rows, "sample_rows": len(sample), "seconds": times}


def preprocessing_table(res: dict) -> str:
    n, t = res["rows"], res["seconds"]
    rates = {1: [n / s for s in t[1]], 2: [n / s for s in t[2]], "tokenizer": [res["sample_rows"] / s for s in t["tokenizer"]]}
    names = {1: "tokenize_dataset, num_proc=1", 2: "tokenize_dataset, num_proc=2",
             "tokenizer": f"fast tokenizer alone, same texts ({res['sample_rows']:,}-row sample)"}
    rows = [[names[k], cell(t[k]), cell(rates[k], "{:,.0f}"), cell([r / b for r, b in zip(rates[k], rates[1])])]
            for k in names]
    return table(["setting", "time (s)", "rows/s", "× num_proc=1"], rows)


# ---------------------------------------------------------------- 4. CLI latency

IMPORT_CHECK = """
import json, sys
from posttrain.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(json.dumps(sorted(m for m in ("torch", "transformers", "trl", "datasets", "peft") if m in sys.modules)))
"""


def cli_latency(help_reps: int, validate_reps: int) -> dict:
    exe = str(Path(sys.executable).parent / "posttrain")
    commands = {"posttrain --help": [exe, "--help"],
                "posttrain validate alpaca_gpt2 --no-data": [exe, "validate", "alpaca_gpt2", "--no-data"]}
    env = {**os.environ, **CHILD_ENV}
    times = {name: [] for name in commands}
    for r in range(max(help_reps, validate_reps)):
        for name, cmd in commands.items():
            if r < (help_reps if "help" in name else validate_reps):
                start = time.perf_counter()
                subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True,
                               cwd=BENCH.parent)
                times[name].append(time.perf_counter() - start)
    out = subprocess.run([sys.executable, "-c", IMPORT_CHECK, "--help"], env=env, capture_output=True, text=True,
                         check=True, cwd=BENCH.parent).stdout
    return {"seconds": times, "help_imports": json.loads(out.strip().splitlines()[-1])}


def cli_table(res: dict) -> str:
    rows = [[f"`{name}`", len(ts), cell(ts, "{:.3f}") if ts else "not run",
             (", ".join(res["help_imports"]) or "none") if "help" in name else "torch, transformers, trl (by design)"]
            for name, ts in res["seconds"].items()]
    return table(["command", "runs", "wall time (s)", "heavy modules imported"], rows)


# ---------------------------------------------------------------- report

def machine() -> list[str]:
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "unknown")
    mem = next((int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemTotal")), 0)
    packages = ", ".join(f"{p} {metadata.version(p)}" for p in
                         ("posttrain", "torch", "transformers", "trl", "datasets", "accelerate", "tokenizers", "peft"))
    gpu = (f"{torch.cuda.get_device_name(0)} (the GPU section is not implemented yet)" if torch.cuda.is_available()
           else "not measured: no GPU available")
    load = os.getloadavg()[0]
    busy = "other work was running" if load > 0.5 * (os.cpu_count() or 1) else "little else was running"
    return [(f"- CPU: {cpu}, {os.cpu_count()} cores; RAM {mem / 2**20:.1f} GiB; load average at start "
             f"{load:.2f} over the last minute ({busy})"),
            f"- GPU: {gpu}",
            f"- Python {platform.python_version()} on {platform.system()} {platform.release()}; {packages}",
            f"- torch threads: {torch.get_num_threads()} (OMP_NUM_THREADS=1 for every child process)"]


def verdict(ok: bool) -> str:
    return "**met**" if ok else "**not met**"


def section_overhead(cfg, paths, tmp, results):
    text, targets = [], []
    for stage in ["sft", "dpo"] if cfg["dpo"] else ["sft"]:
        steps = cfg[f"{stage}_steps"]
        res = results[f"overhead_{stage}"] = overhead(stage, paths, steps, cfg.get("overhead_reps", cfg["reps"]), tmp)
        text.append(overhead_table(stage, res, steps))
        tp, su = res["throughput_ratio"], res["startup_overhead_s"]
        targets.append(f"- {stage.upper()} throughput ratio ≥ 0.98: {verdict(med(tp) >= 0.98)} (median {med(tp):.3f}, "
                       f"range {min(tp):.3f}–{max(tp):.3f}; per CPU second {med(res['cpu_throughput_ratio']):.3f})")
        targets.append(f"- {stage.upper()} startup overhead ≤ 1 s: {verdict(med(su) <= 1.0)} (median {med(su):+.2f} s, "
                       f"range {min(su):+.2f}–{max(su):+.2f} s; in CPU seconds "
                       f"{med(res['startup_overhead_cpu_s']):+.2f} s)")
    if not cfg["dpo"]:
        text.append("DPO: skipped in this mode.")
    return "1. Orchestration overhead vs plain TRL", "\n\n".join(text) + OVERHEAD_NOTES, targets


def section_collators(cfg, paths, tmp, results):
    res = results["collators"] = collators(paths, cfg["collator_rows"], cfg["reps"], tmp)
    text, speedups = collator_table(res)
    res["speedup_trained_tok_s"] = speedups
    exact = res["packing_logit_diff"] < 1e-4 and res["ours_trained"] == res["packed_trained"]
    notes = COLLATOR_NOTES.format(
        rows=res["rows"], batch=BATCH_SEED, max_length=MAX_LENGTH, diff=res["packing_logit_diff"],
        ours=res["ours_trained"], packed=res["packed_trained"], diff_cache=res["packing_logit_diff_cache"],
        full_rows=res["full_size"][0], full=res["full_size"][1],
        exact="exact on these rows" if exact else "NOT exact on these rows")
    targets = []
    # like for like: the same labels on both sides (response tokens under posttrain's objective; every token
    # under the seed's). (b)/(c) against every seed label compares different objectives: in the table only.
    for name, count, what in (
            ("(b) posttrain: dynamic padding", "response", "trained response tokens/s"),
            ("(c) (b) + group_by_length", "response", "trained response tokens/s"),
            ("(b2) (b), every token a label as in the seed", "labels", "trained tokens/s, same labels"),
            ("(c2) (c), every token a label as in the seed", "labels", "trained tokens/s, same labels")):
        x = speedups[count][name]
        targets.append(f"- {name} ≥ 2× the seed's {what} on CPU: {verdict(med(x) >= 2)} "
                       f"(median {med(x):.2f}×, range {min(x):.2f}–{max(x):.2f}×)")
    return "2. Collator: trained tokens per second vs the seed", text + notes, targets


def section_preprocessing(cfg, paths, tmp, results):
    res = results["preprocessing"] = preprocessing(paths, cfg["prep_rows"], cfg["prep_reps"], tmp)
    return (f"3. Preprocessing: format + tokenize {res['rows']:,} synthetic Alpaca rows",
            preprocessing_table(res) + PREP_NOTES, [])


def section_cli(cfg, paths, tmp, results):
    import torch

    res = results["cli"] = cli_latency(cfg["help_reps"], cfg["validate_reps"])
    targets = [(f"- `posttrain --help` does not import torch: {verdict('torch' not in res['help_imports'])} "
                f"(median {med(res['seconds']['posttrain --help']):.3f} s)"),
               "- 5. GPU: not measured: no GPU available" if not torch.cuda.is_available()
               else "- 5. GPU: not measured (this GPU section is not implemented yet)"]
    return "4. CLI latency", cli_table(res) + CLI_NOTES, targets


def main(argv=None, sizes: dict | None = None) -> dict:
    """Run every section and write the report; `sizes` overrides entries of FULL/QUICK (the smoke test)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes, one repetition: checks that everything runs")
    p.add_argument("--out", default=str(BENCH / "RESULTS.md"), help="where to write the report")
    args = p.parse_args(argv)
    cfg = {**(QUICK if args.quick else FULL), **(sizes or {})}
    for k, v in CHILD_ENV.items():
        os.environ.setdefault(k, v)

    import datasets
    import torch
    import transformers

    # in-process state this changes, restored at the end (the smoke test runs inside pytest)
    threads, verbosity = torch.get_num_threads(), transformers.logging.get_verbosity()
    bars = datasets.is_progress_bar_enabled(), transformers.utils.logging.is_progress_bar_enabled()
    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    started = time.time()
    header = machine()
    results, sections, targets = {}, [], []
    try:
        with tempfile.TemporaryDirectory(prefix="posttrain-bench-") as tmp:
            paths = workload.build()
            header.append(f"- workload: {workload.describe(paths)}")
            for section in (section_overhead, section_collators, section_preprocessing, section_cli):
                t = time.time()
                print(section.__name__, flush=True)
                title, body, section_targets = section(cfg, paths, Path(tmp), results)
                sections.append((title, body, time.time() - t))
                targets += section_targets
    finally:
        torch.set_num_threads(threads)
        transformers.logging.set_verbosity(verbosity)
        if bars[0]:
            datasets.enable_progress_bars()
        if bars[1]:
            transformers.utils.logging.enable_progress_bar()

    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    mode = "quick (small sizes, one repetition: the numbers are not meaningful)" if args.quick else "full"
    report = [(f"# posttrain benchmarks\n\n`python bench/run.py{' --quick' if args.quick else ''}` ({mode}), "
               f"{date}, took {time.time() - started:.0f} s. Cells are median [min–max] over repetitions.\n"),
              *header, f"- load average at end {os.getloadavg()[0]:.2f}\n"]
    for title, body, seconds in sections:
        report.append(f"## {title}\n\n{body}\n\n(section time {seconds:.0f} s)\n")
    report.append("## Targets\n\n" + "\n".join(targets) + "\n")
    text = "\n".join(report)
    print("\n" + text)
    Path(args.out).write_text(text)
    print(f"wrote {args.out}")
    results["targets"] = targets
    return results


OVERHEAD_NOTES = """

Each run is its own process. Time to first step counts from the first line of the process (before any
import) to the end of optimizer step 1: imports, recipe checks, data loading and tokenization (a fresh
datasets cache per run), model load and trainer setup. Steady-state steps/s counts from the end of
step 2 to the last step. The CPU-second rows measure the same with the process's CPU time
(`getrusage`): it leaves out time spent waiting for a core, but not the slowdown from sharing caches
and memory with the neighbour, so it narrows the spread only partly. Peak RSS is `ru_maxrss`. Both sides train the same
synthetic prompt/completion rows with the same model, batch, steps and seed; the plain scripts
(`bench/plain_trl_sft.py`, `bench/plain_trl_dpo.py`) use TRL's own tokenization and collator and set only
`bf16=False` and `activation_checkpointing=False`, which posttrain picks on a CPU (TRL's default bf16
raises on a CPU; with its default activation checkpointing a hand-written CPU run is slower still).
An identical final loss shows both sides did the same work."""

COLLATOR_NOTES = """

Every variant trains one epoch over the same {rows} synthetic Alpaca-like rows, so the same responses
(batch {batch}, max_length {max_length}; the step count differs for packing), in-process, after a
warm-up; the clock covers the training loop only (data already tokenized). Trained tokens are
labels ≠ -100; "of them response" counts the labels at response positions. Padding share is pad positions /
all positions fed to the model. "× seed" columns are per repetition, against the seed's run in the same
repetition: every trained label per wall second, trained response tokens per wall second, the same per CPU
second, and rows per wall second. Response tokens are the like-for-like measure (same rows, same responses,
the tokens the objective asks to train): the seed also trains its prompt tokens (its labels are the input ids
with only pad ids masked), which inflates its label count with tokens that should not be trained, and it
never trains EOS (GPT-2 pads with EOS, so masking the pad id masks every EOS: the model never learns to stop;
trl#1623). (b2) and (c2) feed posttrain's collator the seed's objective (labels = every input token, EOS
included): the same labels as the seed plus one EOS per row, so "× seed, all labels" is like for like there and
isolates what dynamic padding and length grouping save. Reading (b)/(c) against every seed label instead
compares two objectives (theirs trains about 1.8× more labels per row) and is shown for completeness only.

(c) is transformers' `train_sampling_strategy="group_by_length"`: megabatches of min(50, rows / (4 ×
batch)) batches sorted by length, so with {rows} rows the groups are small and the padding share stays
above what a full-size dataset gets. From lengths alone (no training), an epoch over the {full_rows:,}-row
file at batch {batch} would pad {full[seed]:.1%} (seed), {full[dynamic]:.1%} (dynamic) and
{full[grouped]:.1%} (grouped, 50-batch megabatches): training time follows the positions fed to the
model, so a full-size grouped run gains more over (b) than this small sample shows. (d) is TRL's `packing=True`
(best-fit decreasing, padding-free) on the raw prompt/completion rows with its completion-only loss:
{exact}. Boundary: TRL trained {packed} tokens and posttrain {ours} (Alpaca prompts end in "\\n", so
BPE does not merge across it; a prompt ending in a space would lose one token per row). Attention: a
padding-free packed forward differs from separate forwards by at most {diff:.1e} in the logits with
`use_cache=False`, which TRL's `compute_loss` passes (transformers 5 then builds a block-diagonal mask
from position_ids, no FlashAttention needed), but by {diff_cache:.2f} with GPT-2's default
`use_cache=True`, where the packed-sequence detection is skipped and rows attend to each other. It is
slow here: padding-free flattens the whole batch into one row of up to batch × max_length tokens, and
without a varlen kernel SDPA computes the full masked attention over it. posttrain does not offer
packing (it refuses TRL's packing/padding-free modes)."""

PREP_NOTES = """

`posttrain.data.collator.tokenize_dataset` (batched `datasets.map`: Alpaca template, prompt and
response tokenized separately, EOS appended, labels built, rows checked and counted, then filtered) on
a memory-mapped JSON dataset, datasets caching off so each repetition tokenizes. "Fast tokenizer alone"
is the floor: the same prompt and response texts through the Rust tokenizer in two batched calls, with no
datasets, no labels, no Arrow writes; the gap to it is what posttrain and datasets add. num_proc=2 forks
two workers (TOKENIZERS_PARALLELISM=false); on 2 cores shared with other work it cannot gain much."""

CLI_NOTES = """

Wall time of the installed console script in a fresh process. For `--help`, "heavy modules imported"
is checked by running `posttrain.cli.main(["--help"])` in a fresh interpreter and reading `sys.modules`.
`validate` checks the recipe against TRL's config class, so it imports TRL (and with it torch and
transformers): nearly all of its time is those imports."""


if __name__ == "__main__":
    main()
