"""Measurements on held-out data: what each stage changed.

- exact match: the greedy answer, stripped of surrounding whitespace, equals the reference answer;
- reward score: the trained reward model's mean score of those greedy answers (what PPO maximises);
- preference accuracy: how often a policy gives the correct answer of a held-out pair a higher
  log-probability than the wrong or off-format one; for the DPO run also DPO's implicit reward
  (beta x log-ratio to its reference, the SFT model), whose accuracy and margin TRL reports in training;
- reward-model accuracy: how often the reward model scores chosen above rejected, before training
  (the SFT model with the reward stage's freshly initialised head) and after.
"""

from __future__ import annotations

import json
from pathlib import Path

from tqdm.auto import tqdm

from posttrain.generate import generate, load_policy
from posttrain.models import load_seq_cls


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def _batches(n: int, size: int, desc: str):
    return tqdm(range(0, n, size), desc=desc, unit="batch")


def completion_logps(model, tokenizer, prompts: list[str], completions: list[str], batch_size: int = 16,
                     desc: str = "log-probs") -> list[float]:
    """Sum of log p(completion + EOS | prompt), prompt and completion tokenized apart as DPO does."""
    import torch

    out = []
    for i in _batches(len(prompts), batch_size, desc):
        rows = []
        for p, c in zip(prompts[i:i + batch_size], completions[i:i + batch_size]):
            p_ids = tokenizer(p)["input_ids"]
            c_ids = tokenizer(c, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            rows.append((p_ids + c_ids, len(p_ids)))
        width = max(len(ids) for ids, _ in rows)
        ids = torch.full((len(rows), width), tokenizer.pad_token_id)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, (seq, _) in enumerate(rows):  # right padding: positions stay the ones training saw
            ids[r, :len(seq)] = torch.tensor(seq)
            mask[r, :len(seq)] = 1
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask).logits.float()
        logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None])[..., 0]
        for r, (seq, n_prompt) in enumerate(rows):
            out.append(float(logp[r, n_prompt - 1:len(seq) - 1].sum()))
    return out


def sequence_scores(model, tokenizer, texts: list[str], batch_size: int = 16, desc: str = "scoring") -> list[float]:
    """A sequence-classification model's scalar for each text + EOS, read where training read it."""
    import torch

    out = []
    tokenizer.padding_side = "right"
    for i in _batches(len(texts), batch_size, desc):
        batch = tokenizer([t + tokenizer.eos_token for t in texts[i:i + batch_size]], return_tensors="pt",
                          padding=True)
        with torch.no_grad():
            out += model(**batch).logits[:, 0].float().tolist()
    return out


def policy_metrics(model_dir, prompts: list[dict], pairs: list[dict] | None, *, max_new_tokens: int,
                   name: str) -> dict:
    """Greedy answers and exact match on held-out prompts and, given pairs, their log-probs, for one policy."""
    model, tokenizer = load_policy(model_dir)
    # one batch of 64: on a CPU, 60 prompts in one batch take 2/3 of the time they take in batches of 16
    answers = generate(model, tokenizer, [r["prompt"] for r in prompts], max_new_tokens=max_new_tokens,
                       batch_size=64, desc=f"{name}: answering {len(prompts)} held-out prompts")
    hits = [a == r["answer"] for a, r in zip(answers, prompts)]
    per_task: dict[str, list[int]] = {}
    for r, hit in zip(prompts, hits):
        per_task.setdefault(r["task"], []).append(int(hit))
    out = {"exact_match": sum(hits) / len(hits), "per_task": {t: sum(v) / len(v) for t, v in sorted(per_task.items())},
           "answers": answers, "correct": hits}
    if pairs:
        lp_c, lp_r = (completion_logps(model, tokenizer, [p["prompt"] for p in pairs], [p[side] for p in pairs],
                                       desc=f"{name}: log-probs of {side}") for side in ("chosen", "rejected"))
        out.update(preference_accuracy=sum(c > r for c, r in zip(lp_c, lp_r)) / len(pairs),
                   logp_chosen=lp_c, logp_rejected=lp_r)
    return out


def reward_model_metrics(model, tokenizer, pairs: list[dict], desc: str) -> dict:
    chosen, rejected = (sequence_scores(model, tokenizer, [p["prompt"] + p[side] for p in pairs], desc=f"{desc}: {side}")
                        for side in ("chosen", "rejected"))
    return {"accuracy": sum(c > r for c, r in zip(chosen, rejected)) / len(pairs),
            "margin": sum(c - r for c, r in zip(chosen, rejected)) / len(pairs)}


def load_reward_model(path, *, seed: int | None = None):
    """The reward run's model; or, with `seed`, the starting point of a reward run on `path`: the model with
    a score head initialised exactly as the reward stage initialised it (set_seed, then load)."""
    from transformers import AutoTokenizer, set_seed

    tokenizer = AutoTokenizer.from_pretrained(path)
    if seed is not None:
        set_seed(seed)
    return load_seq_cls({"name_or_path": str(path)}, tokenizer).eval(), tokenizer


def dpo_implicit_reward(policy: dict, reference: dict, beta: float) -> dict:
    """TRL's rewards/accuracies and rewards/margins, on held-out pairs: beta * log(pi / pi_ref)."""
    chosen = [beta * (a - b) for a, b in zip(policy["logp_chosen"], reference["logp_chosen"])]
    rejected = [beta * (a - b) for a, b in zip(policy["logp_rejected"], reference["logp_rejected"])]
    n = len(chosen)
    return {"accuracy": sum(c > r for c, r in zip(chosen, rejected)) / n,
            "margin": sum(c - r for c, r in zip(chosen, rejected)) / n}
