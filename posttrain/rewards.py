"""The `rewards:` section of grpo/rloo recipes: parsing, validation and the built-in rule rewards.

Each item is a reward model or a rule, with an optional `weight` (default 1.0; -> the TRL config's
`reward_weights`):

    rewards:
      - models/my_reward_model                  # a reward model path or hub id (same as {model: ...})
      - {model: runs/reward_gpt2, weight: 0.5}
      - {rule: exact_match, column: answer}     # + optional pattern, see ExactMatch
      - {rule: length_penalty, target: 64}      # target in completion tokens, see LengthPenalty

Pure Python: validation runs before anything heavy is imported or loaded.
"""

from __future__ import annotations

import dataclasses
import math
import re

from posttrain.util import Where, as_number, did_you_mean, show

# rule -> (required keys, optional keys) besides `rule` and `weight`
RULES = {
    "exact_match": (("column",), ("pattern",)),
    "length_penalty": (("target",), ()),
}
MODEL_KEYS = ("model", "weight")
# TRL passes these to reward functions itself: a data column with such a name cannot hold a reference.
RESERVED_COLUMNS = ("prompt", "prompts", "completion", "completions", "completion_ids", "trainer_state",
                    "log_extra", "log_metric", "environments")


@dataclasses.dataclass(frozen=True)
class RewardSpec:
    """One validated `rewards:` item. `name` is unique in the list and names its metrics."""

    name: str
    weight: float
    model: str | None = None  # a reward model path or hub id
    rule: str | None = None
    options: dict = dataclasses.field(default_factory=dict)  # the rule's own keys (column, pattern, target)


def _check_keys(w: Where, where: str, item: dict, known: tuple[str, ...]):
    for k in item:
        if k not in known:
            w.fail(f"{where}.{k}", f"unknown key in {where}{did_you_mean(k, known)}")


def _rule_options(w: Where, where: str, rule: str, item: dict) -> dict:
    required, optional = RULES[rule]
    _check_keys(w, where, item, ("rule", "weight", *required, *optional))
    for k in required:
        if item.get(k) is None:
            w.fail(f"{where}.{k}", f"is required for rule {rule}")
    opts = {k: item[k] for k in (*required, *optional) if item.get(k) is not None}
    if "column" in opts:
        col = opts["column"]
        if not isinstance(col, str) or not col.strip():
            w.fail(f"{where}.column", f"expected a data column name, got {show(col)}")
        if col in RESERVED_COLUMNS:
            w.fail(f"{where}.column", f"'{col}' is not a reference column (TRL passes it to rewards itself)")
    if "pattern" in opts:
        if not isinstance(opts["pattern"], str):
            w.fail(f"{where}.pattern", f"expected a regular expression, got {show(opts['pattern'])}")
        try:
            re.compile(opts["pattern"])
        except re.error as e:
            w.fail(f"{where}.pattern", f"not a valid regular expression ({e})")
    if "target" in opts:
        t = opts["target"]
        if isinstance(t, bool) or not isinstance(t, int) or t < 1:
            w.fail(f"{where}.target", f"expected a positive number of tokens, got {show(t)}")
    return opts


def parse_rewards(raw, where: Where | None = None) -> list[RewardSpec]:
    """Validate a recipe's `rewards:` value; RecipeError with the dotted key (`rewards[1].rule`) if wrong,
    prefixed with the file:line `where` knows for it."""
    w = where or Where()
    example = "e.g. [{model: runs/reward_gpt2}, {rule: exact_match, column: answer}]"
    if raw is None or raw == []:
        w.fail("rewards", f"is empty; list at least one reward model or rule ({example})")
    if not isinstance(raw, list):
        w.fail("rewards", f"expected a list of reward models and/or rules ({example}), got {show(raw)}")
    specs, names = [], set()
    for i, item in enumerate(raw):
        where = f"rewards[{i}]"
        if isinstance(item, str):
            item = {"model": item}
        if not isinstance(item, dict):
            w.fail(where, f"expected a reward model path, {{model: path}} or {{rule: ...}}, got {show(item)}")
        if "model" in item and "rule" in item:
            w.fail(where, "set either model or rule, not both")
        if "model" not in item and "rule" not in item:
            _check_keys(w, where, item, ("model", "rule", "weight"))
            w.fail(where, f"expected {{model: path}} or {{rule: one of {', '.join(RULES)}}}")
        weight = 1.0 if item.get("weight") is None else as_number(item["weight"])
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
            w.fail(f"{where}.weight", f"expected a number, got {show(weight)}")
        if "model" in item:
            _check_keys(w, where, item, MODEL_KEYS)
            path = item["model"]
            if not isinstance(path, str) or not path.strip():
                w.fail(f"{where}.model", f"expected a reward model path or hub id, got {show(path)}")
            base, model, rule, opts = path.rstrip("/").split("/")[-1], path, None, {}
        else:
            rule = item["rule"]
            if not isinstance(rule, str) or rule not in RULES:
                hint = did_you_mean(rule, RULES) or f" (rules: {', '.join(RULES)})"
                w.fail(f"{where}.rule", f"unknown rule {rule!r}{hint}")
            base, model, opts = rule, None, _rule_options(w, where, rule, item)
        name, n = base, 1
        while name in names:  # metrics are keyed by name: two items must not share one
            n += 1
            name = f"{base}_{n}"
        names.add(name)
        specs.append(RewardSpec(name=name, weight=float(weight), model=model, rule=rule, options=opts))
    return specs


# ---------------------------------------------------------------------------------------------
# Rule rewards. TRL calls them with the batch's completions and every other data column as keyword
# lists; they return one float per completion (None: "does not apply", ignored by TRL).


def _completion_text(completion) -> str:
    """A completion is a string, or for conversational prompts a list of messages."""
    if isinstance(completion, list):
        return "".join(str(m.get("content", "")) for m in completion if isinstance(m, dict))
    return str(completion)


def _extract(pattern: re.Pattern, text: str) -> str | None:
    m = pattern.search(text)
    return None if m is None else (m.group(1) if pattern.groups else m.group(0)).strip()


class ExactMatch:
    """1.0 when the completion gives the reference answer from the row's `column`, else 0.0.

    Without `pattern`: the stripped completion must start with the stripped reference, followed by
    the end of the text or a non-word character ("72" matches "72." and "72 clips", not "721").
    "Starts with" because a base model rarely stops right after the answer; it runs on until EOS or
    max_completion_length.
    With `pattern` (a regex; its first group, else the whole match): the answer is extracted from the
    completion and compared for equality with the one extracted from the reference (the whole
    stripped reference when the pattern does not match it). E.g. GSM8K: pattern '####\\s*(\\S+)'.
    A row whose reference is empty gets None (not scored).
    """

    def __init__(self, column: str, pattern: str | None = None, name: str = "exact_match"):
        self.column = column
        self.pattern = re.compile(pattern) if pattern else None
        self.__name__ = name  # TRL names the reward's metrics after it

    def score(self, completion, reference) -> float | None:
        if reference is None or not str(reference).strip():
            return None
        text, ref = _completion_text(completion).strip(), str(reference).strip()
        if self.pattern is not None:
            ref = _extract(self.pattern, ref) or ref
            return 1.0 if _extract(self.pattern, text) == ref else 0.0
        if not text.startswith(ref):
            return 0.0
        rest = text[len(ref):]
        return 1.0 if not rest or not (rest[0].isalnum() or rest[0] == "_") else 0.0

    def __call__(self, completions, **kwargs) -> list[float | None]:
        if self.column not in kwargs:
            raise KeyError(f"reward {self.__name__}: the data has no column '{self.column}'")
        return [self.score(c, r) for c, r in zip(completions, kwargs[self.column])]


class LengthPenalty:
    """0.0 for a completion of at most `target` tokens; beyond that, falling linearly to -1.0 at twice
    the target, and -1.0 from there on. Tokens are the policy's, as generated (an EOS counts)."""

    def __init__(self, target: int, name: str = "length_penalty"):
        self.target = target
        self.__name__ = name

    def score(self, n_tokens: int) -> float:
        return 0.0 if n_tokens <= self.target else -min(1.0, (n_tokens - self.target) / self.target)

    def __call__(self, completions, completion_ids, **kwargs) -> list[float]:
        return [self.score(len(ids)) for ids in completion_ids]


def rule_reward(spec: RewardSpec):
    if spec.rule == "exact_match":
        return ExactMatch(spec.options["column"], spec.options.get("pattern"), spec.name)
    return LengthPenalty(spec.options["target"], spec.name)
