"""Checkable tasks for the demo, generated from a seed: no copied datasets.

Twelve kinds of short task (arithmetic, word transformations, counting, sorting, comparing, formatting,
facts from a fixed table), each with one exact answer and a plausible wrong one. Every task is unique by
(instruction, input) and lands in exactly one split:

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

SPLITS = ("train", "dev", "heldout")


def _nums(rng, k, lo=1, hi=99):
    return rng.sample(range(lo, hi + 1), k)


# Each task: rng -> (instruction, input, answer, wrong answer). Instructions vary in wording.

def add(rng):
    a, b = rng.randint(2, 60), rng.randint(2, 39)
    ins = rng.choice(["Add the two numbers.", "What is the sum?", "Compute the sum of the numbers."])
    return ins, f"{a} + {b}", str(a + b), str(a + b + rng.choice([-10, -2, -1, 1, 2, 10]))


def subtract(rng):
    a, b = rng.randint(20, 99), rng.randint(1, 19)
    ins = rng.choice(["Subtract the second number from the first.", "What is the difference?"])
    return ins, f"{a} - {b}", str(a - b), str(a - b + rng.choice([-2, -1, 1, 2, 2 * b]))


def uppercase(rng):
    w = rng.choice(WORDS)
    ins = rng.choice(["Write the word in capital letters.", "Convert the word to uppercase."])
    return ins, w, w.upper(), rng.choice([w, w.capitalize()])


def reverse_list(rng):
    items = rng.sample(rng.choice([COLORS, ANIMALS]), rng.choice([3, 4]))
    ins = rng.choice(["Reverse the order of the words.", "List the words in reverse order."])
    wrong = items[1:] + items[:1] if rng.random() < 0.5 else items[:]
    return ins, ", ".join(items), ", ".join(items[::-1]), ", ".join(wrong)


def sort_numbers(rng):
    nums = _nums(rng, rng.choice([3, 4]))
    if nums == sorted(nums):
        nums.reverse()
    ins = rng.choice(["Sort the numbers from smallest to largest.", "Put the numbers in ascending order."])
    desc = sorted(nums, reverse=True)
    return ins, ", ".join(map(str, nums)), ", ".join(map(str, sorted(nums))), ", ".join(map(str, desc))


def count_items(rng):
    items = rng.sample(ANIMALS, rng.randint(2, 7))
    ins = rng.choice(["How many animals are in the list?", "Count the animals in the list."])
    return ins, ", ".join(items), str(len(items)), str(len(items) + rng.choice([-1, 1, 2]))


def largest(rng):
    nums = _nums(rng, rng.choice([3, 4]))
    ins = rng.choice(["Which number is the largest?", "Give the largest number."])
    return ins, ", ".join(map(str, nums)), str(max(nums)), str(rng.choice([n for n in nums if n != max(nums)]))


def capital(rng):
    country = rng.choice(sorted(CAPITALS))
    others = [c for k, c in CAPITALS.items() if k != country]
    ins = rng.choice(["What is the capital of this country?", "Name the capital city of the country."])
    return ins, country, CAPITALS[country], rng.choice(others)


def successor(rng):
    n = rng.randint(10, 998)
    ins = rng.choice(["What number comes right after this one?", "Add one to the number."])
    return ins, str(n), str(n + 1), str(n + rng.choice([-1, 2, 10]))


def date_format(rng):
    y, m, d = rng.randint(1990, 2030), rng.randint(1, 12), rng.randint(1, 28)
    if m == d:
        d = d % 28 + 1
    ins = "Rewrite the date in the DD/MM/YYYY format."
    return ins, f"{y}-{m:02d}-{d:02d}", f"{d:02d}/{m:02d}/{y}", f"{m:02d}/{d:02d}/{y}"


def first_letter(rng):
    w = rng.choice(WORDS)
    ins = rng.choice(["What is the first letter of the word?", "Give the first letter of the word."])
    return ins, w, w[0], rng.choice([w[-1], w[1]])


def compare(rng):
    a, b = _nums(rng, 2)
    ins = "Is the first number larger than the second? Answer yes or no."
    right = "yes" if a > b else "no"
    return ins, f"{a}, {b}", right, "no" if right == "yes" else "yes"


TASKS = {f.__name__: f for f in (add, subtract, uppercase, reverse_list, sort_numbers, count_items, largest,
                                 capital, successor, date_format, first_letter, compare)}


def off_format(rng, answer: str) -> str:
    """The right content in a form exact match (and a user) would not accept."""
    return rng.choice([f"The answer is {answer}.", f"{answer}. Let me know if you need anything else!",
                       f"Sure! Here it is: {answer}", f"Answer: {answer}"])


def generate(sizes: dict[str, int], seed: int = 0) -> dict[str, list[dict]]:
    """{split: [task rows]}, rows {task, instruction, input, output, wrong}. A task's input decides its answer,
    so (task, input) is what must never be in two splits (a reworded instruction would not make it new).
    dev and heldout rows are all distinct; train may repeat its own inputs (the capitals table is small).
    Tasks take turns, so every split holds every kind in equal measure."""
    rng = random.Random(seed)
    taken: set[tuple[str, str]] = set()
    out = {}
    for split in ("heldout", "dev", "train"):  # the measured splits first, so they never run short
        rows = []
        while len(rows) < sizes[split]:
            name = list(TASKS)[len(rows) % len(TASKS)]
            for _ in range(1000):
                ins, inp, ans, wrong = TASKS[name](rng)
                if (name, inp) not in taken and wrong != ans:
                    break
            else:
                raise RuntimeError(f"task {name}: ran out of distinct inputs")
            if split != "train":
                taken.add((name, inp))
            rows.append({"task": name, "instruction": ins, "input": inp, "output": ans, "wrong": wrong})
        out[split] = rows
    return out


def preference_rows(rows: list[dict], seed: int, off_format_share: float = 0.35) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for r in rows:
        rejected = off_format(rng, r["output"]) if rng.random() < off_format_share else r["wrong"]
        out.append({"prompt": alpaca_prompt(r["instruction"], r["input"]), "chosen": r["output"],
                    "rejected": rejected, "task": r["task"]})
    return out


def prompt_rows(rows: list[dict]) -> list[dict]:
    return [{"prompt": alpaca_prompt(r["instruction"], r["input"]), "answer": r["output"], "task": r["task"]}
            for r in rows]


def sft_rows(rows: list[dict]) -> list[dict]:
    return [{"instruction": r["instruction"], "input": r["input"], "output": r["output"], "task": r["task"]}
            for r in rows]


DEFAULT_SIZES = {"train": 720, "dev": 24, "heldout": 60}


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
