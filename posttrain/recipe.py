"""Recipes: load YAML safely, resolve `extends:`, apply `a.b=c` overrides; the checked `Recipe` a stage receives.

Checking a loaded mapping is posttrain.checks (one pass that reports every problem). This module imports no
other posttrain module but `errors` and `util`, and never torch.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import re
from importlib import resources
from pathlib import Path

import yaml

from posttrain import chat_templates
from posttrain.errors import RecipeError
from posttrain.util import Where, did_you_mean

# The recipes shipped inside the package (`posttrain recipes` lists them); the checkout's recipes/ links here.
RECIPES_DIR = Path(str(resources.files("posttrain") / "recipes"))

# ---------------------------------------------------------------------------------------------
# Loading


@dataclasses.dataclass
class Recipe:
    """A resolved, validated recipe: what a stage module receives."""

    stage: str
    model: dict
    data: dict
    training: dict
    output_dir: str
    peft: dict | None = None
    quantization: dict | None = None
    extra: dict = dataclasses.field(default_factory=dict)  # stage-specific keys
    watchdog: dict | None = None  # stop a diverging run (posttrain.watchdog)
    tracking: dict | None = None  # what the trackers of training.report_to read (posttrain.tracking)
    eval: dict | None = None  # measured after training (posttrain.evaluate); not part of the run's identity
    source: str = ""
    resolved: dict = dataclasses.field(default_factory=dict)  # what is saved as recipe.resolved.yaml
    upstream: dict = dataclasses.field(default_factory=dict)  # pipeline: hashes of the stages it builds on
    where: Where = dataclasses.field(default_factory=Where, repr=False, compare=False)  # file:line of each key
    notes: list = dataclasses.field(default_factory=list, repr=False, compare=False)  # what the checks could not check
    facts: list = dataclasses.field(default_factory=list, repr=False, compare=False)  # what they found worth saying
    parsed: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)  # stage keys read (Stage.parse)
    samples: list = dataclasses.field(default_factory=list, repr=False, compare=False)  # first rows the checks read

    @property
    def hash(self) -> str:
        """Identity of the run: the resolved recipe, plus (in a pipeline) the runs it starts from, so a
        re-trained upstream stage makes its dependants re-run although their paths did not change."""
        return recipe_hash({**self.resolved, "upstream": self.upstream} if self.upstream else self.resolved)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.resolved, sort_keys=False, allow_unicode=True)


def recipe_hash(resolved: dict) -> str:
    canon = json.dumps(resolved, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(canon.encode()).hexdigest()[:16]


FAMILY_BASE = "base.yaml"  # a family's shared settings, which its recipes extend: not a recipe of its own
NOT_FAMILIES = ("accelerate", "demo", "eval", "pipelines")


def shipped_recipes() -> dict[str, Path]:
    """Name -> file of every shipped recipe: recipes/NAME.yaml, and recipes/FAMILY/NAME.yaml named FAMILY/NAME."""
    out = {p.stem: p for p in sorted(RECIPES_DIR.glob("*.yaml"))}
    for p in sorted(RECIPES_DIR.glob("*/*.yaml")):
        if p.parent.name not in NOT_FAMILIES and p.name != FAMILY_BASE:
            out[f"{p.parent.name}/{p.stem}"] = p
    return out


def _resolve(name_or_path: str, kind: str, subdir: str) -> Path:
    """A path to a file, or a bare name looked up as <subdir>/<name>.yaml: in ./recipes first, then in
    the recipes shipped with the package."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    if p.suffix in (".yaml", ".yml") or name_or_path.startswith((".", "/", "~")):
        raise RecipeError(f"{kind} file not found: {name_or_path}")
    for root in (Path.cwd() / "recipes", RECIPES_DIR):
        cand = root / subdir / f"{name_or_path}.yaml"  # a family's recipe: FAMILY/NAME, e.g. qwen3/1.7b_lora
        if cand.is_file():
            return cand
    names = sorted(shipped_recipes()) if not subdir else sorted(q.stem for q in (RECIPES_DIR / subdir).glob("*.yaml"))
    raise RecipeError(f"{kind} '{name_or_path}' not found in recipes/{subdir + '/' if subdir else ''}"
                      f"{did_you_mean(name_or_path, names)}")


def resolve_recipe_path(name_or_path: str) -> Path:
    return _resolve(name_or_path, "recipe", "")


def resolve_pipeline_path(name_or_path: str) -> Path:
    return _resolve(name_or_path, "pipeline", "pipelines")


def _key_lines(node, prefix="", out=None) -> dict[str, int]:
    """Map dotted key paths to 1-based line numbers from a composed YAML node tree."""
    out = {} if out is None else out
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode):
                path = f"{prefix}{k.value}"
                out[path] = k.start_mark.line + 1
                _key_lines(v, path + ".", out)
    return out


def _given_twice(node, prefix="") -> str | None:
    """`LINE: dotted: given twice ...` for the first key given twice in one mapping, or None."""
    if isinstance(node, yaml.SequenceNode):
        return next(filter(None, (_given_twice(v, f"{prefix.removesuffix('.')}[{i}].") for i, v in enumerate(node.value))), None)
    seen: dict[str, int] = {}
    for k, v in node.value if isinstance(node, yaml.MappingNode) else ():
        name, line = getattr(k, "value", None), k.start_mark.line + 1
        if isinstance(name, str) and name in seen:
            return f"{line}: {prefix}{name}: given twice (also at line {seen[name]}); YAML would keep only the last"
        seen[name] = line
        found = _given_twice(v, f"{prefix}{name}.")
        if found:
            return found
    return None


def read_yaml(path: Path, what: str = "recipe", unique: bool = False) -> tuple[dict, dict[str, int]]:
    """Safe-load one YAML mapping (a recipe, or `what` else); returns it with the line of every dotted key. `unique`:
    a key given twice in one mapping is refused (YAML keeps the last silently)."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise RecipeError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise RecipeError(f"{path}: cannot read ({e.strerror})") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(e, "problem", None) or str(e)
        if "constructor for the tag" in str(problem):
            problem = f"YAML tag not allowed ({problem.split('tag')[-1].strip()}); {what}s are plain data"
        raise RecipeError(f"{where}: invalid YAML: {problem}") from None
    twice = _given_twice(node) if unique else None
    if twice:
        raise RecipeError(f"{path}:{twice}")
    if data is None:
        raise RecipeError(f"{path}: {what} is empty")
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a {what} must be a mapping of keys, got a {type(data).__name__}")
    return data, _key_lines(node)


def deep_merge(base: dict, child: dict, *, null_removes: bool = False) -> dict:
    """Child wins, mappings merge key by key. With null_removes (a child recipe over its `extends:`),
    `key: null` removes the inherited key, so the default applies (e.g. `peft: null`: full fine-tuning)."""
    out = copy.deepcopy(base)
    for k, v in child.items():
        if v is None and null_removes:
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v, null_removes=null_removes)
        else:
            out[k] = copy.deepcopy(v)
    return out


def load_raw(path: Path, _chain: tuple[Path, ...] = ()) -> tuple[dict, dict[str, str]]:
    """Load a recipe file with its `extends:` chain merged in (child wins).

    Returns the merged mapping and, for each dotted key, "file:line" of the file that set it last.
    """
    path = path.resolve()
    if path in _chain:
        cycle = " -> ".join(p.name for p in (*_chain, path))
        raise RecipeError(f"{path}: extends: cycle ({cycle})")
    data, lines = read_yaml(path)
    where = {k: f"{path.name}:{n}" for k, n in lines.items()}
    _anchor_template(data, path)
    parent = data.pop("extends", None)
    if parent is None:
        return data, where
    if not isinstance(parent, str):
        raise RecipeError(f"{path.name}:{lines.get('extends', '?')}: extends: expected a path, got {parent!r}")
    parent_path = (path.parent / parent)
    if not parent_path.is_file():
        raise RecipeError(f"{path.name}:{lines['extends']}: extends: file not found: {parent_path}")
    base, base_where = load_raw(parent_path, (*_chain, path))
    return deep_merge(base, data, null_removes=True), {**base_where, **where}


def is_template_path(value) -> bool:
    """A chat_template value names a file unless it holds Jinja ({{ }} or {% %})."""
    return isinstance(value, str) and "{{" not in value and "{%" not in value and "\n" not in value


def _anchor_template(data: dict, path: Path):
    """A relative model.chat_template path is relative to the recipe file that says it (also via extends:). A bare
    word names a shipped template (posttrain.chat_templates), unless no template has that name and the file exists."""
    model = data.get("model")
    value = model.get("chat_template") if isinstance(model, dict) else None
    if not is_template_path(value) or not value.strip() or Path(value).expanduser().is_absolute():
        return
    if chat_templates.is_name(value) and (chat_templates.text(value) is not None or not (path.parent / value).is_file()):
        return
    model["chat_template"] = str((path.parent / value).resolve())


_OVERRIDE_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def apply_overrides(recipe: dict, overrides: list[str], where: dict[str, str] | None = None) -> dict:
    """Apply `a.b=value` overrides; the value is parsed as YAML (`3`, `2e-4`, `[q, v]`, `null`)."""
    out = copy.deepcopy(recipe)
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not _OVERRIDE_KEY.match(key):
            raise RecipeError(f"override '{item}': expected KEY=VALUE with a dotted key, e.g. training.max_steps=10")
        if key == "extends" or key.startswith("extends."):
            raise RecipeError(f"override '{item}': extends cannot be overridden")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as e:
            raise RecipeError(f"override '{item}': value is not valid YAML ({getattr(e, 'problem', e)})") from None
        parts = key.split(".")
        node = out
        for i, part in enumerate(parts[:-1]):
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise RecipeError(f"override '{item}': {'.'.join(parts[: i + 1])} is not a section")
            node = nxt
        node[parts[-1]] = value
        if where is not None:
            where[key] = f"override {key}"  # not the value: it may be a secret
    return out
