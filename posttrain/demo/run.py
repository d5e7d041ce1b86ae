"""`posttrain demo`: prepare model and data, run recipes/pipelines/demo.yaml, measure every stage on held-out data.

DEMO_FAST=1 (or fast=True) runs the same path on a tiny random model with a few steps per stage: it checks
the wiring in seconds and measures nothing meaningful.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import yaml

from posttrain import evaluate, runs
from posttrain.demo import data as demo_data
from posttrain.demo import evaluate as ev
from posttrain.demo import model as demo_model
from posttrain.errors import PosttrainError
from posttrain.merge import loadable_model
from posttrain.pipeline import run_pipeline
from posttrain.recipe import RECIPES_DIR

log = logging.getLogger("posttrain")

PIPELINE = RECIPES_DIR / "pipelines" / "demo.yaml"
MAX_NEW_TOKENS = 16  # the longest answer (a date) is 11 tokens
CRITIC_LAYERS = 4  # PPO's value model: the first layers of the base model (see model.small_critic)

# DEMO_FAST: the same stages, a few steps each, on a tiny model and small splits.
FAST_SIZES = {"train": 48, "dev": 12, "heldout": 12}
FAST_OVERRIDES = [
    "sft.training.max_steps=2", "sft.training.per_device_train_batch_size=4", "sft.training.logging_steps=1",
    "reward.training.max_steps=2", "reward.training.per_device_train_batch_size=4", "reward.training.logging_steps=1",
    "ppo.training.max_steps=2", "ppo.training.per_device_train_batch_size=4", "ppo.training.response_length=4",
    "dpo.training.max_steps=2", "dpo.training.per_device_train_batch_size=4", "dpo.training.logging_steps=1",
]
DATA_FILES = {"sft": ("sft_train", "sft_dev"), "reward": ("pairs_train", "pairs_dev"),
              "ppo": ("prompts_train", "prompts_dev"), "dpo": ("pairs_train", "pairs_dev")}


def fast_mode() -> bool:
    return os.environ.get("DEMO_FAST", "").strip().lower() not in ("", "0", "false", "no")


def prepare(root: Path, fast: bool) -> tuple[Path, Path, dict[str, Path]]:
    """The starting model, PPO's value model and the data files under root/data."""
    files = demo_data.write_all(root / "data", FAST_SIZES if fast else None, by_content=True)
    if fast:
        corpus = [line for path in files.values() for line in path.read_text(encoding="utf-8").splitlines()]
        model = demo_model.tiny_model(root / "tiny-model", corpus)
        return model, demo_model.small_critic(model, layers=1), files
    model = demo_model.pretrained_model()
    return model, demo_model.small_critic(model, layers=CRITIC_LAYERS), files


def write_pipeline(root: Path) -> Path:
    """recipes/pipelines/demo.yaml with output_root = root and its recipe paths made absolute, saved in root."""
    doc = yaml.safe_load(PIPELINE.read_text())
    doc["output_root"] = str(root)
    for entry in doc["stages"].values():
        entry["recipe"] = str((PIPELINE.parent / entry["recipe"]).resolve())
    path = root / "pipeline.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def overrides(model_dir: Path, critic: Path, files: dict[str, Path], fast: bool) -> list[str]:
    out = [f"sft.model.name_or_path={model_dir}", f"ppo.value_model={critic}"]
    for stage, (train, dev) in DATA_FILES.items():
        out += [f"{stage}.data.train={files[train]}", f"{stage}.data.eval={files[dev]}"]
    return out + (FAST_OVERRIDES if fast else [])


def _resolved(run_dir: Path) -> dict:
    return yaml.safe_load((run_dir / runs.RESOLVED).read_text())


def ppo_curve(run_dir: Path) -> dict:
    """Mean reward and KL over PPO updates, from TRL's log (first and last thirds averaged: single updates
    of a small batch are noisy)."""
    logs = [e for e in json.loads((run_dir / "log_history.json").read_text()) if "objective/scores" in e]
    if not logs:
        return {}
    k = max(1, len(logs) // 3)

    def mean(key, part):
        return sum(e[key] for e in part) / len(part)

    return {"updates": len(logs), "score_first": mean("objective/scores", logs[:k]),
            "score_last": mean("objective/scores", logs[-k:]), "kl_last": mean("objective/kl", logs[-k:]),
            "score": [e["objective/scores"] for e in logs], "kl": [e["objective/kl"] for e in logs]}


def measure(root: Path, base: Path, files: dict[str, Path], max_new_tokens: int) -> dict:
    prompts, pairs = ev.read_jsonl(files["prompts_heldout"]), ev.read_jsonl(files["pairs_heldout"])
    policies = {"base": base, "sft": root / "sft", "ppo": root / "ppo", "dpo": root / "dpo"}
    result = {"held_out": {"prompts": len(prompts), "pairs": len(pairs)}, "policies": {}}
    for name, path in policies.items():
        # pair log-probs are what DPO moves (its implicit reward is the log-ratio of dpo to sft); the others skip them
        result["policies"][name] = ev.policy_metrics(path, prompts, pairs if name in ("sft", "dpo") else None,
                                                     max_new_tokens=max_new_tokens, name=name)

    reward_dir = root / "reward"
    seed = (_resolved(reward_dir).get("training") or {}).get("seed", 42)
    rm, tok = ev.load_reward_model(loadable_model(root / "sft"), seed=seed)
    result["reward_model"] = {"before": ev.reward_model_metrics(rm, tok, pairs, "reward model before training")}
    rm, tok = ev.load_reward_model(reward_dir)
    result["reward_model"]["after"] = ev.reward_model_metrics(rm, tok, pairs, "reward model")
    for name, m in result["policies"].items():
        scores = ev.sequence_scores(rm, tok, [p["prompt"] + a for p, a in zip(prompts, m["answers"])],
                                    desc=f"reward model: scoring {name}'s answers")
        m["reward_score"] = sum(scores) / len(scores)

    # paired, on the same prompts: how many answers each stage turned right and turned wrong relative to SFT
    sft_hits = result["policies"]["sft"]["correct"]
    for name in ("ppo", "dpo"):
        hits = result["policies"][name]["correct"]
        result["policies"][name]["vs_sft"] = {"gained": sum(h and not s for h, s in zip(hits, sft_hits)),
                                              "lost": sum(s and not h for h, s in zip(hits, sft_hits))}

    if evaluate.missing_extra() is None:  # the same prompts through lm-eval: a cross-check of both measurements
        task = heldout_task(files["prompts_heldout"], base, max_new_tokens)
        for name, path in policies.items():
            got = evaluate.evaluate(str(path), str(task), template="raw", batch_size=64, out=root / "base" if name == "base"
                                    else None)
            result["policies"][name]["lm_eval_exact_match"] = got[TASK]["exact_match"]["value"]

    beta = (_resolved(root / "dpo").get("training") or {}).get("beta", 0.1)
    result["dpo"] = {"beta": beta, **ev.dpo_implicit_reward(result["policies"]["dpo"], result["policies"]["sft"], beta)}
    result["ppo"] = ppo_curve(root / "ppo")
    return result


TASK = "demo_heldout"


def heldout_task(prompts: Path, base: Path, max_new_tokens: int) -> Path:
    """The held-out prompts (already in the Alpaca template) as an lm-eval task decoded like the demo's own measure:
    greedy, `max_new_tokens`, stopping only at EOS, the answer stripped."""
    from transformers import AutoTokenizer

    eos = AutoTokenizer.from_pretrained(base).eos_token
    task = prompts.parent / f"{TASK}.yaml"
    task.write_text(yaml.safe_dump({
        "task": TASK, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": prompts.name}},
        "test_split": "test", "output_type": "generate_until", "doc_to_text": "{{prompt}}", "doc_to_target": "{{answer}}",
        "generation_kwargs": {"until": [eos], "do_sample": False, "max_gen_toks": max_new_tokens},
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True,
                         "regexes_to_ignore": ["^\\s+", "\\s+$"]}]}, sort_keys=False))
    return task


def table(result: dict) -> str:
    pol = result["policies"]
    names = list(pol)
    rows = [("held-out metric", *names)]
    for key, label in (("exact_match", "exact match (greedy)"), ("lm_eval_exact_match", "exact match (lm-eval)"),
                       ("reward_score", "reward-model score of answers"),
                       ("preference_accuracy", "pair accuracy, log p(chosen) > log p(rejected)")):
        rows.append((label, *(f"{pol[n][key]:.3f}" if key in pol[n] else "-" for n in names)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    rm, dpo, ppo, held = result["reward_model"], result["dpo"], result["ppo"], result["held_out"]
    lines += [
        "",
        f"reward model accuracy on {held['pairs']} held-out pairs: {rm['before']['accuracy']:.3f} before -> "
        f"{rm['after']['accuracy']:.3f} after (mean margin {rm['before']['margin']:.3f} -> {rm['after']['margin']:.3f})",
        f"DPO implicit reward on held-out pairs (beta {dpo['beta']}, reference = SFT): accuracy "
        f"{dpo['accuracy']:.3f}, margin {dpo['margin']:.3f} (both 0 before DPO)",
    ]
    changed = [f"{n.upper()} +{pol[n]['vs_sft']['gained']} / -{pol[n]['vs_sft']['lost']}" for n in names
               if "vs_sft" in pol[n]]
    if changed:
        lines.append(f"answers turned right / wrong relative to SFT, same {held['prompts']} prompts: " + ", ".join(changed))
    if ppo:
        lines.append(f"PPO over {ppo['updates']} updates: mean reward {ppo['score_first']:.3f} (first third) -> "
                     f"{ppo['score_last']:.3f} (last third), KL {ppo['kl_last']:.3f} (last third)")
    per_task = ["/".join(f"{pol[n]['per_task'][t]:.2f}" for n in names) for t in pol[names[0]]["per_task"]]
    lines.append(f"exact match per task ({' / '.join(names)}): "
                 + ", ".join(f"{t} {v}" for t, v in zip(pol[names[0]]["per_task"], per_task)))
    return "\n".join(lines)


def run_demo(root: str | Path = "runs/demo", *, fast: bool | None = None, overwrite: bool = False,
             prepare_only: bool = False) -> int:
    t0 = time.time()
    fast = fast_mode() if fast is None else fast
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    log.info("demo%s: preparing the model and data under %s", " (DEMO_FAST: tiny model)" if fast else "", root)
    base, critic, files = prepare(root, fast)
    t_prepared = time.time()
    if prepare_only:
        print(f"demo prepared in {t_prepared - t0:.0f} s: model {base}, value model {critic}, "
              f"data {files['sft_train'].parent}", flush=True)
        return 0
    code = run_pipeline(str(write_pipeline(root)), overrides(base, critic, files, fast), overwrite=overwrite)
    if code:
        return code
    t_trained = time.time()
    log.info("demo: measuring every stage on the held-out split")
    result = measure(root, base, files, 4 if fast else MAX_NEW_TOKENS)
    result.update(fast=fast, base_model=str(base), timings_s={
        "prepare": round(t_prepared - t0, 1), "pipeline": round(t_trained - t_prepared, 1),
        "measure": round(time.time() - t_trained, 1), "total": round(time.time() - t0, 1)})
    runs.write_json_atomic(root / "demo.json", result)
    summary = {k: v for k, v in result.items() if k != "policies"}
    summary["policies"] = {n: {k: v for k, v in m.items() if k not in ("answers", "correct", "logp_chosen", "logp_rejected")}
                           for n, m in result["policies"].items()}
    pipeline_json = root / "pipeline.json"
    doc = json.loads(pipeline_json.read_text()) if pipeline_json.is_file() else {}
    runs.write_json_atomic(pipeline_json, {**doc, "demo": summary})
    print("\n" + table(result))
    print(f"\ndemo finished in {result['timings_s']['total']:.0f} s (prepare {result['timings_s']['prepare']:.0f} s, "
          f"pipeline {result['timings_s']['pipeline']:.0f} s, measure {result['timings_s']['measure']:.0f} s); "
          f"results in {root / 'demo.json'}" + ("  [DEMO_FAST: tiny random model, numbers mean nothing]" if fast else ""),
          flush=True)
    return 0


def main(root: str = "runs/demo", fast: bool | None = None, overwrite: bool = False, prepare_only: bool = False) -> int:
    try:
        return run_demo(root, fast=fast, overwrite=overwrite, prepare_only=prepare_only)
    except ImportError as e:
        raise PosttrainError(f"the demo needs its extra packages ({e}); pip install 'posttrain[demo]'") from None
