"""Orchestration overhead: `posttrain train` vs a hand-written TRL script, same model, data, batch, steps, seed.

    python bench/overhead.py [--quick] [--out bench/RESULTS.md]

Each run is its own process (bench/child.py), posttrain and plain TRL interleaved per repetition; ratios
and differences are taken per repetition. Writes the "overhead" section of RESULTS.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import table
from table import cell, differences, med, ratios
from workload import CHILD_ENV, MAX_LENGTH

NAME = "overhead"
TITLE = "1. Orchestration overhead vs plain TRL"
FULL = {"overhead_reps": 5, "sft_steps": 40, "dpo_steps": 30, "dpo": True}
QUICK = {"overhead_reps": 1, "sft_steps": 3, "dpo_steps": 3, "dpo": False}
BATCH_SFT, BATCH_DPO = 8, 4
BENCH = Path(__file__).resolve().parent


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


def _variants(stage: str, paths: dict, steps: int):
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
    variants = _variants(stage, paths, steps)
    runs = {name: [] for name in variants}
    for r, name in table.interleaved(list(variants), reps):
        runner, argv = variants[name]
        work = tmp / f"{stage}-{name.replace(' ', '_')}-{r}"
        runs[name].append(_child(runner, argv(work / "out"), work))
        print(f"  {stage} rep {r + 1}/{reps} {name}: first step {runs[name][-1]['first_step_s']:.2f} s, "
              f"{runs[name][-1]['steps_per_s']:.3f} steps/s", flush=True)
    pt, pl = runs["posttrain"], runs["plain TRL"]

    def per_rep(key, how=ratios):
        return how([r[key] for r in pt], [r[key] for r in pl])

    return {
        "runs": runs,
        "throughput_ratio": per_rep("steps_per_s"),
        "cpu_throughput_ratio": per_rep("steps_per_cpu_s"),
        "first_step_ratio": per_rep("first_step_s"),
        "startup_overhead_s": per_rep("first_step_s", differences),
        "startup_overhead_cpu_s": per_rep("first_step_cpu_s", differences),
        "rss_ratio": per_rep("peak_rss_mib"),
        "wall_ratio": per_rep("wall_s"),
        "same_loss": all(a["train_loss"] is not None and abs(a["train_loss"] - b["train_loss"]) < 1e-4
                         for a, b in zip(pt, pl)),
    }


def overhead_table(stage: str, res: dict, steps: int) -> str:
    pt, pl = res["runs"]["posttrain"], res["runs"]["plain TRL"]

    def col(runs, key, fmt="{:.2f}"):
        return cell([r[key] for r in runs], fmt)

    rows = [
        ["time to first step (s)", col(pt, "first_step_s"), col(pl, "first_step_s"),
         cell(res["first_step_ratio"], "{:.3f}")],
        ["CPU seconds to first step", col(pt, "first_step_cpu_s"), col(pl, "first_step_cpu_s"), ""],
        ["startup overhead = posttrain − plain, wall (s)", "", "", cell(res["startup_overhead_s"], "{:+.2f}")],
        ["startup overhead = posttrain − plain, CPU (s)", "", "", cell(res["startup_overhead_cpu_s"], "{:+.2f}")],
        ["steady-state steps/s", col(pt, "steps_per_s", "{:.3f}"), col(pl, "steps_per_s", "{:.3f}"),
         cell(res["throughput_ratio"], "{:.3f}")],
        ["steady-state steps per CPU second", col(pt, "steps_per_cpu_s", "{:.3f}"),
         col(pl, "steps_per_cpu_s", "{:.3f}"), cell(res["cpu_throughput_ratio"], "{:.3f}")],
        ["peak RSS (MiB)", col(pt, "peak_rss_mib", "{:.0f}"), col(pl, "peak_rss_mib", "{:.0f}"),
         cell(res["rss_ratio"], "{:.3f}")],
        ["wall, start to exit incl. save (s)", col(pt, "wall_s"), col(pl, "wall_s"), cell(res["wall_ratio"], "{:.3f}")],
        ["final train loss", col(pt, "train_loss", "{:.4f}"), col(pl, "train_loss", "{:.4f}"),
         "identical" if res["same_loss"] else "DIFFERENT"],
    ]
    batch = BATCH_SFT if stage == "sft" else BATCH_DPO
    title = (f"{stage.upper()}: `posttrain train` vs a hand-written TRL script ({steps} steps, batch {batch}, "
             f"{len(pt)} run{'s' if len(pt) > 1 else ''} each)")
    return f"### {title}\n\n" + table.table(["metric", "posttrain", "plain TRL", "posttrain / plain"], rows)


def run(cfg: dict, paths: dict, tmp: Path) -> tuple[dict, str, list[str]]:
    results, text, targets = {}, [], []
    for stage in ["sft", "dpo"] if cfg["dpo"] else ["sft"]:
        steps = cfg[f"{stage}_steps"]
        res = results[f"overhead_{stage}"] = overhead(stage, paths, steps, cfg["overhead_reps"], tmp)
        text.append(overhead_table(stage, res, steps))
        tp, su = res["throughput_ratio"], res["startup_overhead_s"]
        targets.append(table.target(f"{stage.upper()} throughput ratio ≥ 0.98", med(tp) >= 0.98,
                                    f"median {med(tp):.3f}, range {min(tp):.3f}–{max(tp):.3f}; "
                                    f"per CPU second {med(res['cpu_throughput_ratio']):.3f}"))
        targets.append(table.target(f"{stage.upper()} startup overhead ≤ 1 s", med(su) <= 1.0,
                                    f"median {med(su):+.2f} s, range {min(su):+.2f}–{max(su):+.2f} s; in CPU "
                                    f"seconds {med(res['startup_overhead_cpu_s']):+.2f} s"))
    if not cfg["dpo"]:
        text.append("DPO: skipped in this mode.")
    return results, "\n\n".join(text), targets


if __name__ == "__main__":
    import run as driver

    driver.main(only=[NAME])
