"""The recipes shipped with posttrain: `posttrain recipes` lists them, `posttrain recipes copy` copies one.

A recipe's description is the first comment line of its file.
"""

from __future__ import annotations

import shutil
from contextlib import suppress
from pathlib import Path

import yaml

from posttrain import chat_templates, stages
from posttrain.errors import PosttrainError, RecipeError
from posttrain.recipe import NOT_FAMILIES, RECIPES_DIR, resolve_pipeline_path, resolve_recipe_path, shipped_recipes


def _description(path: Path) -> str:
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
        if line.strip():
            break
    return ""


def _chain(path: Path) -> list[Path]:
    """The file and the files it extends, child first."""
    out = [path]
    while True:
        doc = yaml.safe_load(out[-1].read_text(encoding="utf-8")) or {}
        parent = doc.get("extends") if isinstance(doc, dict) else None
        if not isinstance(parent, str):
            return out
        nxt = (out[-1].parent / parent).resolve()
        if nxt in out or not nxt.is_file():
            return out
        out.append(nxt)


def _merged_field(path: Path, *keys):
    """The value the nearest file of the chain gives (a null there removes what the files it extends set)."""
    for p in _chain(path):
        node = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        for k in keys:
            if not isinstance(node, dict) or k not in node:
                break
            node = node[k]
        else:
            return node
    return None


def stage_of(name_or_path: str):
    """The stage a recipe (name or path) declares, read through `extends:` without checking anything."""
    return _merged_field(resolve_recipe_path(name_or_path), "stage")


def method(path: Path) -> str:
    """full, lora or qlora: how a recipe trains the policy's weights."""
    if _merged_field(path, "quantization"):
        return "qlora"
    return "lora" if _merged_field(path, "peft") else "full"


def _needs(stage, refusals: dict) -> str:
    """` [needs TRL < 1.13]` for a stage the installed TRL cannot run (its one line kept for the footer), else ''."""
    spec = stages.all_stages().get(stage)
    line = spec.unavailable() if spec else None
    if not line:
        return ""
    refusals[stage] = line
    return f" [needs TRL {spec.trl.spec}]"


def pipeline_stages(path: Path) -> list:
    """The stages a pipeline file's recipes declare, read without checking anything."""
    entries = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("stages") or {}
    out = []
    for entry in entries.values():
        name = entry.get("recipe") if isinstance(entry, dict) else None
        if isinstance(name, str):
            local = path.parent / name
            with suppress(RecipeError):
                out.append(stage_of(str(local) if local.is_file() else name))
    return out


def listing(model: str | None = None, stage: str | None = None, how: str | None = None) -> str:
    """The shipped recipes, pipelines and chat templates; `model` keeps the recipes and pipelines whose name or
    model contains it (any case), `stage` and `how` (full, lora, qlora) the recipes that train so."""
    refusals: dict[str, str] = {}
    rows = [("recipe", "stage", "method", "model", "description")]
    for name, p in shipped_recipes().items():
        row = (name, str(_merged_field(p, "stage") or "?"), method(p), str(_merged_field(p, "model", "name_or_path") or "-"))
        if (not model or model.lower() in f"{row[0]} {row[3]}".lower()) and stage in (None, row[1]) and how in (None, row[2]):
            rows.append((*row, _description(p) + _needs(row[1], refusals)))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4] for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths) + "  " + "-" * 11)
    pipelines = [p for p in sorted((RECIPES_DIR / "pipelines").glob("*.yaml"))
                 if not stage and not how and (not model or model.lower() in p.stem.lower())]
    if pipelines:
        width = max(20, *(len(p.stem) + 2 for p in pipelines))
        lines += ["", "pipeline".ljust(width) + "description"]
        for p in pipelines:
            needs = "".join(dict.fromkeys(_needs(s, refusals) for s in pipeline_stages(p)))
            lines.append(p.stem.ljust(width) + _description(p) + needs)
    lines += ["", *refusals.values()] if refusals else []
    if not (model or stage or how):
        lines += ["", "chat template       other names  (model.chat_template: NAME)", chat_templates.listing()]
    lines += ["", "posttrain validate NAME | posttrain plan NAME | posttrain train NAME | posttrain pipeline NAME | "
                  "posttrain recipes copy NAME [DEST]"]
    return "\n".join(lines)


def _source(name: str) -> Path:
    for resolve in (resolve_recipe_path, resolve_pipeline_path):
        try:
            return resolve(name)
        except RecipeError:
            pass
    cand = RECIPES_DIR / name  # e.g. accelerate/ddp.yaml
    if cand.is_file():
        return cand
    return resolve_recipe_path(name)  # raises with a did-you-mean


def copy(name: str, dest: str | None = None, *, overwrite: bool = False) -> Path:
    """Copy a shipped recipe to edit: DEST may be a directory or a file path (default ./NAME.yaml).
    Files it `extends:` are copied next to it (unless already there), so the copy validates on its own."""
    src = _source(name)
    family = src.parent.name if src.parent.parent == RECIPES_DIR and src.parent.name not in NOT_FAMILIES else None
    # a family's recipe lands in a folder of that name, beside its family's base.yaml
    target = Path(dest) if dest else Path.cwd() / (family or "") / src.name
    if target.is_dir():
        target = target / src.name
    if target.exists() and not overwrite:
        raise PosttrainError(f"{target} exists; pass --overwrite to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, target)
    copied = [(src, target)]
    for parent in _chain(src)[1:]:
        rel = parent.relative_to(src.parent.resolve()) if parent.is_relative_to(src.parent.resolve()) else None
        there = target.parent / (rel if rel is not None else parent.name)
        _copy_if_missing(parent, there)
        copied.append((parent, there))
    for file, there in copied:  # a model.chat_template file it names (relative to it) goes along too
        doc = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
        tpl = (doc.get("model") or {}).get("chat_template") if isinstance(doc, dict) else None
        if isinstance(tpl, str) and "{" not in tpl and not Path(tpl).is_absolute() and (file.parent / tpl).is_file():
            _copy_if_missing(file.parent / tpl, there.parent / tpl)
    return target


def _copy_if_missing(src: Path, dest: Path):
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
