"""`posttrain convert`: another tool's training config -> a posttrain recipe, with every key's fate.

One module per tool holds its mapping table as data (built from that tool's own option definitions) and
the implicit defaults a faithful translation must spell out; `core` holds the fates, the shared rules and
the writing; `check` the type of every key read, before converting; `names` what validate says of another tool's
key. Nothing here imports torch or TRL: converting is reading YAML (the TRL fields' types are a snapshot,
field_types.json).
"""

from __future__ import annotations

from pathlib import Path

from posttrain.convert import axolotl, llama_factory, torchtune, trl
from posttrain.convert.core import Conversion, fate_lines, recipe_text, stage_rules
from posttrain.errors import PosttrainError
from posttrain.recipe import read_yaml
from posttrain.util import Where

TOOLS = {"axolotl": axolotl, "llama-factory": llama_factory, "trl": trl, "torchtune": torchtune}


def detect(raw: dict) -> str:
    """Which tool a config is for, from its keys (each module's `looks_like`); TRL scripts last."""
    if isinstance(raw.get("model"), dict) and "name_or_path" in raw["model"]:
        raise PosttrainError("this is already a posttrain recipe (model.name_or_path); check it with `posttrain validate`")
    if "distributed_type" in raw or "compute_environment" in raw:
        raise PosttrainError("this is an Accelerate launch config, not a training config: keep it as it is and launch "
                             "with it (`accelerate launch --config_file FILE -m posttrain train RECIPE`; `posttrain "
                             "validate RECIPE --accelerate-config FILE` checks the recipe against it)")
    if isinstance(raw.get("model"), str) and ("train_dataset" in raw or "dist_config" in raw):
        raise PosttrainError("a LLaMA-Factory v1 config (model:, train_dataset:): posttrain translates LLaMA-Factory's "
                             "llamafactory-cli configs (model_name_or_path:, dataset:); write the recipe by hand")
    for name in ("torchtune", "llama-factory", "axolotl", "trl"):
        if TOOLS[name].looks_like(raw):
            return name
    raise PosttrainError("cannot tell which tool this config is for; pass --from axolotl|llama-factory|trl|torchtune")


def read(path: Path) -> tuple[dict, str, Where]:
    """The config as validate reads a recipe (UTF-8, YAML errors at their line, a key given twice refused), its
    text and its key lines."""
    raw, lines = read_yaml(path, "config", unique=True)
    return raw, path.read_text(encoding="utf-8"), Where({k: f"{path}:{n}" for k, n in lines.items()})


def convert(path: str | Path, tool: str | None = None, stage: str | None = None) -> Conversion:
    path = Path(path)
    raw, text, where = read(path)
    return convert_raw(raw, text, path, where, tool, stage)


def convert_raw(raw: dict, text: str, path: Path, where: Where, tool: str | None = None,
                stage: str | None = None) -> Conversion:
    """Convert a config already read (`read`): its type check pass, then the tool module, then every key's fate."""
    tool = tool or detect(raw)
    if stage and tool != "trl":
        raise PosttrainError(f"--stage is for TRL-script configs; a {tool} config names its own stage")
    conv = Conversion(tool, path, raw, stage)
    conv.where = where
    TOOLS[tool].convert(conv, text)
    conv.put("stage", conv.stage)
    stage_rules(conv)
    seen = {f.key.split(".")[0].split("[")[0] for f in conv.fates}
    for key, value in raw.items():  # a key no rule gave a fate: said, never dropped silently
        if key not in seen:
            conv.no(key, value, f"not translated by posttrain's {tool} table (for this combination of settings)")
    return conv


def run(path: str, out: str | None, tool: str | None, overwrite: bool, stage: str | None = None) -> int:
    """The command: convert, print every key's fate, write the recipe. 0: all mapped or dropped; 3: some
    keys are NOT TRANSLATED (the recipe is written all the same, with them as comments)."""
    src = Path(path)
    if not src.is_file():
        raise PosttrainError(f"config file not found: {path}")
    dest = Path(out) if out else Path(f"{src.stem}.posttrain.yaml")
    if dest.exists() and not overwrite:
        raise PosttrainError(f"{dest} exists; pass --overwrite to replace it (or -o another file)")
    conv = convert(src, tool, stage)
    print(f"{src} ({conv.tool} config) -> {dest} (stage: {conv.recipe.get('stage')})")
    print("\n".join(fate_lines(conv)))
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(recipe_text(conv, dest), encoding="utf-8")
    n = len(conv.untranslated)
    print(f"wrote {dest}: {len(conv.fates) - n} key(s) mapped, dropped or made explicit"
          + (f"; {n} NOT TRANSLATED (see the comments at its top)" if n else "") + f". Next: posttrain validate {dest}")
    return 3 if n else 0
