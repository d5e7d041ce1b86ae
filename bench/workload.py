"""The benchmark workload: synthetic Alpaca-like data, a byte-level BPE tokenizer and a small random GPT-2.

Everything is deterministic (seeded) and built offline into a cache directory under runs/ (gitignored).
Lengths are long-tailed like yahma/alpaca-cleaned: most responses are a few dozen words, a few run to
hundreds, so padding every row to max_length wastes most of the compute.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
from pathlib import Path

from posttrain.data.formats import alpaca_prompt

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / "runs" / "bench_cache"
SYLLABLES = ("ka ri to na me su lo vi de pa ne ro mi ta sa ku be lu fo ga hi jo wa ze "
             "an el in or um ex al on ur is").split()
# GPT-2 small is 768 wide x 12 layers; this keeps a 1-thread CPU step under a second.
MODEL = {"n_embd": 128, "n_layer": 2, "n_head": 4, "n_positions": 1024}
VOCAB = 4096
MAX_LENGTH = 512
# every benchmark process (and child process): offline, one torch thread, quiet
CHILD_ENV = {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
             "TRL_EXPERIMENTAL_SILENCE": "1"}


@contextlib.contextmanager
def measuring():
    """One torch thread, no progress bars, errors-only logging; restored on exit (the smoke test runs in pytest).

    On a shared 2-core machine a second torch thread fights the neighbour and makes steps several times
    slower and far noisier.
    """
    for k, v in CHILD_ENV.items():
        os.environ.setdefault(k, v)
    import datasets
    import torch
    import transformers

    threads, verbosity = torch.get_num_threads(), transformers.logging.get_verbosity()
    bars = datasets.is_progress_bar_enabled(), transformers.utils.logging.is_progress_bar_enabled()
    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        transformers.logging.set_verbosity(verbosity)
        if bars[0]:
            datasets.enable_progress_bars()
        if bars[1]:
            transformers.utils.logging.enable_progress_bar()


def _lexicon(rng: random.Random, n: int = 4000) -> list[str]:
    words = set()
    while len(words) < n:
        words.add("".join(rng.choice(SYLLABLES) for _ in range(rng.choice((1, 2, 2, 3, 3, 4)))))
    return sorted(words)


def _lognormal_int(rng: random.Random, median: float, sigma: float, lo: int, hi: int) -> int:
    return max(lo, min(hi, round(rng.lognormvariate(math.log(median), sigma))))


def alpaca_rows(n: int, seed: int = 0) -> list[dict]:
    """{instruction, input, output}; ~40% with an input; word counts lognormal (long right tail)."""
    rng = random.Random(seed)
    lex = _lexicon(random.Random(1234))
    cum, total = [], 0.0
    for i in range(len(lex)):  # Zipf-like word frequencies
        total += 1 / (i + 1)
        cum.append(total)

    def text(k: int) -> str:
        words = rng.choices(lex, cum_weights=cum, k=k)
        out = []
        for i, w in enumerate(words):
            out.append(w.capitalize() if i == 0 or out[-1].endswith(".") else w)
            if rng.random() < 0.08:
                out[-1] += rng.choice(".,.,;:")
        return " ".join(out) + "."

    rows = []
    for _ in range(n):
        instruction = text(_lognormal_int(rng, 11, 0.45, 3, 80))
        inp = text(_lognormal_int(rng, 14, 0.9, 1, 300)) if rng.random() < 0.4 else ""
        output = text(_lognormal_int(rng, 50, 1.0, 1, 900))
        rows.append({"instruction": instruction, "input": inp, "output": output})
    return rows


def prompt_completion_rows(n: int, seed: int = 0) -> list[dict]:
    """The same rows, formatted with the Alpaca template: what a hand-written TRL script would feed."""
    return [{"prompt": alpaca_prompt(r["instruction"], r["input"]), "completion": r["output"]}
            for r in alpaca_rows(n, seed)]


def preference_rows(n: int, seed: int = 0) -> list[dict]:
    """{prompt, chosen, rejected}: an Alpaca prompt, its response, and a shuffled shorter one."""
    rng = random.Random(seed + 1)
    rows = []
    for r in prompt_completion_rows(n, seed):
        words = r["completion"].split()
        rng.shuffle(words)
        rows.append({"prompt": r["prompt"], "chosen": r["completion"],
                     "rejected": " ".join(words[: max(1, len(words) * 2 // 3)])})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(path)
    return path


def make_tokenizer(out: Path):
    """A GPT-2-like tokenizer: byte-level BPE, <|endoftext|> as BOS/EOS, no pad token (pad == eos)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = [alpaca_prompt(r["instruction"], r["input"]) + r["output"] for r in alpaca_rows(3000, seed=99)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                   unk_token="<|endoftext|>")
    fast.save_pretrained(out)
    return fast


def build(cache: Path | None = None, n_sft: int = 2000, n_pref: int = 600) -> dict[str, Path]:
    """Model + tokenizer and data files, built on first use and reused (the names carry the sizes)."""
    cache = Path(cache or CACHE)
    model = cache / f"gpt2-{MODEL['n_layer']}x{MODEL['n_embd']}-v{VOCAB}"
    paths = {"model": model, "sft": cache / f"sft_{n_sft}.jsonl", "dpo": cache / f"dpo_{n_pref}.jsonl"}
    if not (paths["model"] / "config.json").exists():
        import torch
        from transformers import GPT2Config, GPT2LMHeadModel

        tok = make_tokenizer(paths["model"])
        torch.manual_seed(0)
        cfg = GPT2Config(vocab_size=len(tok), bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id, **MODEL)
        GPT2LMHeadModel(cfg).save_pretrained(paths["model"])
    if not paths["sft"].exists():
        write_jsonl(paths["sft"], prompt_completion_rows(n_sft))
    if not paths["dpo"].exists():
        write_jsonl(paths["dpo"], preference_rows(n_pref))
    return paths


def describe(paths: dict[str, Path]) -> str:
    """One line on the workload: the model and the token lengths of the SFT rows."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(paths["model"])
    params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(paths["model"]).parameters())
    rows = [json.loads(line) for line in paths["sft"].read_text().splitlines()]
    lengths = sorted(len(ids) + 1 for ids in tok([r["prompt"] + r["completion"] for r in rows])["input_ids"])

    def pct(q):
        return lengths[min(len(lengths) - 1, int(q * len(lengths)))]

    return (f"random GPT-2 ({MODEL['n_layer']} layers, width {MODEL['n_embd']}, vocab {len(tok)}, "
            f"{params / 1e6:.2f}M parameters) with a byte-level BPE tokenizer trained on the synthetic text "
            f"(pad = EOS, as GPT-2); {len(rows)} synthetic Alpaca-like rows, tokens per row (prompt + response + "
            f"EOS): median {pct(0.5)}, mean {sum(lengths) / len(lengths):.0f}, p90 {pct(0.9)}, p99 {pct(0.99)}, "
            f"max {lengths[-1]}; {sum(n > MAX_LENGTH for n in lengths) / len(lengths):.1%} longer than {MAX_LENGTH}")
