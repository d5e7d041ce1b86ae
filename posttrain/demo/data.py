"""Checkable tasks for the demo, generated from a seed: no copied datasets.

Twelve kinds of short task (arithmetic, word transformations, counting, sorting, comparing, formatting,
facts from a fixed table), each with one exact answer and a plausible wrong one. Every task is unique by
(kind, item) -- the item is what its answer depends on -- and lands in exactly one split:

    train    what the stages train on
    dev      what the recipes evaluate on during training, and what tuning looked at
    heldout  touched only by the final measurement (demo.json)

Files written per split: sft_<split>.jsonl (alpaca rows), pairs_<split>.jsonl (preference rows:
the Alpaca prompt, a correct well-formed answer, and a wrong or off-format one) and prompts_<split>.jsonl
(the Alpaca prompt and its reference answer).
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

from posttrain.data.formats import alpaca_prompt

WORDS = """apple river garden pencil window orange planet silver forest candle rabbit basket butter
castle dragon feather guitar harbor island jacket kitten ladder marble needle ocean pepper puzzle
rocket saddle tiger tunnel violin wagon yellow zebra anchor bridge cactus desert engine falcon glove
hammer igloo jungle kettle lemon magnet napkin oyster parrot quartz ribbon shadow tomato umbrella
valley walnut almond beacon cherry dolphin eagle fabric ginger helmet insect jigsaw koala lantern
meadow nickel otter pillow quiver robin spider turtle unicorn velvet whistle canyon blanket coffee
mirror pirate summer winter spring autumn copper circle square button carpet bottle cookie""".split()

COLORS = "red blue green black white pink brown gray purple gold".split()
ANIMALS = "cat dog bird fish horse sheep goat duck mouse frog bear wolf lion deer owl fox".split()

CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Japan": "Tokyo",
    "China": "Beijing", "Russia": "Moscow", "Egypt": "Cairo", "Canada": "Ottawa", "Greece": "Athens",
    "Portugal": "Lisbon", "Ireland": "Dublin", "Norway": "Oslo", "Sweden": "Stockholm", "Finland": "Helsinki",
    "Poland": "Warsaw", "Austria": "Vienna", "Hungary": "Budapest", "Kenya": "Nairobi", "Peru": "Lima",
    "Chile": "Santiago", "Cuba": "Havana", "Thailand": "Bangkok", "Vietnam": "Hanoi", "Denmark": "Copenhagen",
    "Belgium": "Brussels", "Argentina": "Buenos Aires", "Mexico": "Mexico City", "India": "New Delhi",
    "England": "London", "Turkey": "Ankara", "Iran": "Tehran", "Iraq": "Baghdad", "Colombia": "Bogota",
    "Netherlands": "Amsterdam", "Switzerland": "Bern", "Ukraine": "Kyiv", "Romania": "Bucharest",
    "Czechia": "Prague", "Indonesia": "Jakarta", "Philippines": "Manila", "South Korea": "Seoul",
}


def _nums(rng, k, lo=1, hi=99):
    return rng.sample(range(lo, hi + 1), k)


# Each task: rng -> (instruction, item, answer, wrong answer). The item is what the answer depends on; it is
# written into the instruction (Alpaca's no-input template: 14 tokens shorter than the one with an input,
# which matters at CPU speed). Wordings vary.

def add(rng):
    a, b = rng.randint(2, 60), rng.randint(2, 39)
    ins = rng.choice([f"What is {a} + {b}?", f"Add {a} and {b}."])
    return ins, f"{a}+{b}", str(a + b), str(a + b + rng.choice([-10, -2, -1, 1, 2, 10]))


def subtract(rng):
    a, b = rng.randint(20, 99), rng.randint(1, 19)
    ins = rng.choice([f"What is {a} - {b}?", f"Subtract {b} from {a}."])
    return ins, f"{a}-{b}", str(a - b), str(a - b + rng.choice([-2, -1, 1, 2, 2 * b]))


def uppercase(rng):
    w = rng.choice(WORDS)
    ins = rng.choice([f"Write the word '{w}' in capital letters.", f"Convert '{w}' to uppercase."])
    return ins, w, w.upper(), rng.choice([w, w.capitalize()])


def reverse_list(rng):
    items = rng.sample(rng.choice([COLORS, ANIMALS]), rng.choice([3, 4]))
    text = ", ".join(items)
    ins = rng.choice([f"Reverse the order of these words: {text}", f"List these words in reverse order: {text}"])
    wrong = items[1:] + items[:1] if rng.random() < 0.5 else items[:]
    return ins, text, ", ".join(items[::-1]), ", ".join(wrong)


def sort_numbers(rng):
    nums = _nums(rng, rng.choice([3, 4]))
    if nums == sorted(nums):
        nums.reverse()
    text = ", ".join(map(str, nums))
    ins = rng.choice([f"Sort from smallest to largest: {text}", f"Put these numbers in ascending order: {text}"])
    desc = sorted(nums, reverse=True)
    return ins, text, ", ".join(map(str, sorted(nums))), ", ".join(map(str, desc))


def count_items(rng):
    items = rng.sample(ANIMALS, rng.randint(2, 7))
    text = ", ".join(items)
    ins = rng.choice([f"How many animals are in this list: {text}?", f"Count the animals: {text}"])
    return ins, text, str(len(items)), str(len(items) + rng.choice([-1, 1, 2]))


def largest(rng):
    nums = _nums(rng, rng.choice([3, 4]))
    text = ", ".join(map(str, nums))
    ins = rng.choice([f"Which number is the largest: {text}?", f"Give the largest of these numbers: {text}"])
    return ins, text, str(max(nums)), str(rng.choice([n for n in nums if n != max(nums)]))


def capital(rng):
    country = rng.choice(sorted(CAPITALS))
    others = [c for k, c in CAPITALS.items() if k != country]
    ins = rng.choice([f"What is the capital of {country}?", f"Name the capital city of {country}."])
    return ins, country, CAPITALS[country], rng.choice(others)


def successor(rng):
    n = rng.randint(10, 998)
    ins = rng.choice([f"What number comes right after {n}?", f"Add one to {n}."])
    return ins, str(n), str(n + 1), str(n + rng.choice([-1, 2, 10]))


def date_format(rng):
    y, m, d = rng.randint(1990, 2030), rng.randint(1, 12), rng.randint(1, 28)
    if m == d:
        d = d % 28 + 1
    date = f"{y}-{m:02d}-{d:02d}"
    return f"Rewrite the date {date} in the DD/MM/YYYY format.", date, f"{d:02d}/{m:02d}/{y}", f"{m:02d}/{d:02d}/{y}"


def first_letter(rng):
    w = rng.choice(WORDS)
    ins = rng.choice([f"What is the first letter of the word '{w}'?", f"Give the first letter of '{w}'."])
    return ins, w, w[0], rng.choice([w[-1], w[1]])


def compare(rng):
    a, b = _nums(rng, 2)
    right = "yes" if a > b else "no"
    return f"Is {a} larger than {b}? Answer yes or no.", f"{a},{b}", right, "no" if right == "yes" else "yes"


TASKS = {f.__name__: f for f in (add, subtract, uppercase, reverse_list, sort_numbers, count_items, largest,
                                 capital, successor, date_format, first_letter, compare)}


def off_format(rng, answer: str) -> str:
    """The right content in a form exact match (and a user) would not accept."""
    return rng.choice([f"The answer is {answer}.", f"{answer}. Let me know if you need anything else!",
                       f"Sure! Here it is: {answer}", f"Answer: {answer}"])


def generate(sizes: dict[str, int], seed: int = 0) -> dict[str, list[dict]]:
    """{split: [task rows]}, rows {task, item, instruction, output, wrong}. A task's item decides its answer,
    so (task, item) is what must never be in two splits (a reworded instruction would not make it new).
    dev and heldout rows are all distinct; train may repeat its own items (the capitals table is small).
    Tasks take turns, so every split holds every kind in equal measure."""
    rng = random.Random(seed)
    taken: set[tuple[str, str]] = set()
    out = {}
    for split in ("heldout", "dev", "train"):  # the measured splits first, so they never run short
        rows = []
        while len(rows) < sizes[split]:
            name = list(TASKS)[len(rows) % len(TASKS)]
            for _ in range(1000):
                ins, item, ans, wrong = TASKS[name](rng)
                if (name, item) not in taken and wrong != ans:
                    break
            else:
                raise RuntimeError(f"task {name}: ran out of distinct items")
            if split != "train":
                taken.add((name, item))
            rows.append({"task": name, "item": item, "instruction": ins, "output": ans, "wrong": wrong})
        out[split] = rows
    return out


def preference_rows(rows: list[dict], seed: int, off_format_share: float = 0.35) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for r in rows:
        rejected = off_format(rng, r["output"]) if rng.random() < off_format_share else r["wrong"]
        out.append({"prompt": alpaca_prompt(r["instruction"]), "chosen": r["output"], "rejected": rejected,
                    "task": r["task"], "item": r["item"]})
    return out


def prompt_rows(rows: list[dict]) -> list[dict]:
    return [{"prompt": alpaca_prompt(r["instruction"]), "answer": r["output"], "task": r["task"], "item": r["item"]}
            for r in rows]


def sft_rows(rows: list[dict]) -> list[dict]:
    return [{"instruction": r["instruction"], "input": "", "output": r["output"], "task": r["task"],
             "item": r["item"]} for r in rows]


DEFAULT_SIZES = {"train": 720, "dev": 48, "heldout": 60}


def build(sizes: dict[str, int] | None = None, seed: int = 0) -> dict[str, list[dict]]:
    """Every file's rows, {"sft_train": [...], "pairs_dev": [...], ...}.

    The train pool is cut in two halves: SFT learns from one, the preference pairs and RL prompts come from
    the other, so the later stages see tasks the SFT model has not memorised.
    """
    splits = generate({**DEFAULT_SIZES, **(sizes or {})}, seed)
    train = splits["train"]
    half = len(train) // 2
    parts = {"train": (train[:half], train[half:]), "dev": (splits["dev"],) * 2,
             "heldout": (splits["heldout"],) * 2}
    files = {}
    for split, (sft_part, rl_part) in parts.items():
        files[f"sft_{split}"] = sft_rows(sft_part)
        files[f"pairs_{split}"] = preference_rows(rl_part, seed + 1)
        files[f"prompts_{split}"] = prompt_rows(rl_part)
    return files


def write_all(out_dir: str | Path, sizes: dict[str, int] | None = None, seed: int = 0,
              by_content: bool = False) -> dict[str, Path]:
    """Write every file as out_dir/<name>.jsonl; returns {name: path}.

    by_content writes into out_dir/<hash of the rows> instead: a pipeline stage's identity is its recipe, which
    names data files by path, so data that changed must live at a new path to make the stages re-run.
    """
    files = build(sizes, seed)
    texts = {name: "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows) for name, rows in files.items()}
    out_dir = Path(out_dir)
    if by_content:
        digest = hashlib.sha256("".join(f"{k}\n{v}" for k, v in sorted(texts.items())).encode()).hexdigest()
        out_dir = out_dir / digest[:12]
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, text in texts.items():
        paths[name] = out_dir / f"{name}.jsonl"
        if not paths[name].is_file() or paths[name].read_text(encoding="utf-8") != text:
            tmp = paths[name].with_name(f".{paths[name].name}.tmp")
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(paths[name])
    return paths
