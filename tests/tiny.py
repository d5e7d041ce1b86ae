"""Build a tiny GPT-2-style model, a locally trained byte-level BPE tokenizer and small data files.

Nothing here touches the network; everything is deterministic. Used by the test fixtures, and by
hand to try posttrain offline:

    .venv/bin/python tests/tiny.py /tmp/tiny      # writes /tmp/tiny/{model,alpaca.jsonl,...}
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

WORDS = ("apple banana cherry river mountain cloud green blue quick slow happy seven twelve "
         "write list count sort reverse translate summarize explain answer number word letter").split()


def alpaca_rows(n: int = 48, seed: int = 0) -> list[dict]:
    """Alpaca rows with and without input, unicode, and leading/trailing spaces in responses."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        a, b = rng.randint(1, 50), rng.randint(1, 50)
        kind = i % 4
        if kind == 0:
            rows.append({"instruction": f"Add {a} and {b}.", "input": "", "output": f"{a + b}"})
        elif kind == 1:
            w = rng.sample(WORDS, 3)
            rows.append({"instruction": "Sort these words alphabetically.", "input": ", ".join(w),
                         "output": ", ".join(sorted(w))})
        elif kind == 2:
            w = rng.choice(WORDS)
            rows.append({"instruction": "Reverse the word.", "input": w, "output": w[::-1]})
        else:
            w = rng.sample(WORDS, 2)
            rows.append({"instruction": f"Write a short line about {w[0]}.",
                         "output": f" The {w[0]} is {w[1]} — ça va. "})
    return rows


def prompt_completion_rows(n: int = 24, seed: int = 1) -> list[dict]:
    """Prompts that end in a space (the case where tokenizing prompt+completion together merges across
    the boundary), and prompts that end in a newline."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        w = rng.choice(WORDS)
        if i % 2:
            rows.append({"prompt": "The opposite of slow is ", "completion": rng.choice(["quick", "fast", "rapid"])})
        else:
            rows.append({"prompt": f"Spell {w}:\n", "completion": " ".join(w)})
    return rows


def messages_rows(n: int = 16, seed: int = 2) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        msgs = [{"role": "system", "content": "You are terse."}] if i % 2 else []
        msgs += [{"role": "user", "content": f"{a}+{b}?"}, {"role": "assistant", "content": str(a + b)}]
        if i % 3 == 0:
            msgs += [{"role": "user", "content": "Double it."}, {"role": "assistant", "content": str(2 * (a + b))}]
        rows.append({"messages": msgs})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def make_tokenizer(out: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from posttrain.data.formats import ALPACA_NO_INPUT, ALPACA_WITH_INPUT

    corpus = [ALPACA_WITH_INPUT, ALPACA_NO_INPUT] * 4
    corpus += [json.dumps(r, ensure_ascii=False)
               for r in alpaca_rows(200) + prompt_completion_rows(50) + preference_rows(50) + prompt_rows(50)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>"
    )
    fast.chat_template = CHATML  # no pad token, like GPT-2: posttrain must cope with pad == eos
    fast.save_pretrained(out)
    return fast


POSITIONS = 1280


def make_model(out: Path, seed: int = 0) -> Path:
    """A 2-layer GPT-2 with random weights (~60k parameters) and its tokenizer, saved to `out`."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    out = Path(out)
    tok = make_tokenizer(out)
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=len(tok), n_positions=256, n_embd=32, n_layer=2, n_head=2,
                     bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)
    model = GPT2LMHeadModel(cfg)
    # 1280 learned positions, so the shipped recipes' max_length fits (validate refuses longer rows); the extra rows
    # are drawn apart, leaving every other weight as a 256-position model has always had it (tests measured on it)
    wpe = torch.nn.Embedding(POSITIONS, cfg.n_embd)
    with torch.no_grad():
        wpe.weight[:cfg.n_positions] = model.transformer.wpe.weight
        wpe.weight[cfg.n_positions:].normal_(0.0, cfg.initializer_range, generator=torch.Generator().manual_seed(seed))
    model.transformer.wpe = wpe
    model.config.n_positions = POSITIONS
    model.save_pretrained(out)
    return out


def make_all(root: Path) -> dict[str, Path]:
    root = Path(root)
    return {
        "model": make_model(root / "model"),
        "alpaca": write_jsonl(root / "alpaca.jsonl", alpaca_rows()),
        "prompt_completion": write_jsonl(root / "prompt_completion.jsonl", prompt_completion_rows()),
        "messages": write_jsonl(root / "messages.jsonl", messages_rows()),
        "preference": write_jsonl(root / "preference.jsonl", preference_rows()),
        "prompts": write_jsonl(root / "prompts.jsonl", prompt_rows()),
        "text": write_jsonl(root / "text.jsonl", [{"text": f"{r['instruction']} {r['output']}"} for r in alpaca_rows()]),
    }




def preference_rows(n: int = 32, seed: int = 3) -> list[dict]:
    """{prompt, chosen, rejected}: the right sum vs a wrong one."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(1, 30), rng.randint(1, 30)
        rows.append({"prompt": f"Add {a} and {b}. Answer: ", "chosen": f"{a + b}",
                     "rejected": f"{a + b + rng.choice([-3, -1, 1, 2, 5])}"})
    return rows


def prompt_rows(n: int = 24, seed: int = 4) -> list[dict]:
    """{prompt, answer}: prompts for online RL, with a reference answer for rule rewards."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(1, 20), rng.randint(1, 20)
        rows.append({"prompt": f"Add {a} and {b}. Answer: ", "answer": str(a + b)})
    return rows


if __name__ == "__main__":
    paths = make_all(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/tiny"))
    for k, v in paths.items():
        print(f"{k}: {v}")
