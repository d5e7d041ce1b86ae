"""The chat templates shipped with posttrain, by name: `model.chat_template: qwen3` is recipes/templates/qwen3.jinja.

Each .jinja is written from its family's published format (the source is named at its top) so that a conversation
renders as growing prefixes: data.formats.chat_segments masks by rendering diffs, and each assistant turn's
end-of-turn token is in the trained part.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

TEMPLATES_DIR = Path(str(resources.files("posttrain") / "recipes" / "templates"))

# Other names of a shipped template: family members that share it, and other tools' spellings.
ALIASES = {
    "qwen25": "qwen2", "qwen2_5": "qwen2", "qwen_25": "qwen2", "qwen": "qwen2",
    "gemma2": "gemma", "gemma3": "gemma",
    "mistral_v3": "mistral", "mistral_v2v3": "mistral",
    "llama3_1": "llama3", "llama3_2": "llama3", "llama3_3": "llama3", "llama31": "llama3", "llama32": "llama3",
    "llama33": "llama3",
    "phi3_5": "phi3", "phi35": "phi3", "phi_3": "phi3", "phi_35": "phi3", "phi4_mini": "phi4",
    "deepseek3": "deepseek", "deepseek_v3": "deepseek", "deepseekv3": "deepseek", "deepseekr1": "deepseek_r1",
    "vicuna_v1_1": "vicuna",
}
# A shipped template with some of its options fixed (as a row's chat_template_kwargs would pass them).
VARIANTS = {"qwen3_nothink": ("qwen3", {"enable_thinking": False})}

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


def shipped() -> list[str]:
    """The names of the shipped .jinja files."""
    return sorted(p.stem for p in TEMPLATES_DIR.glob("*.jinja"))


def names() -> list[str]:
    """Every name model.chat_template accepts: shipped files, their variants and aliases."""
    return sorted({*shipped(), *VARIANTS, *ALIASES})


def is_name(value) -> bool:
    """A bare word (no path separator, no extension, no Jinja) names a shipped template rather than a file."""
    return isinstance(value, str) and _NAME.fullmatch(value) is not None


def canonical(name: str) -> str:
    """The name a template is listed under (an alias resolved)."""
    return ALIASES.get(name, name)


def text(name: str) -> str | None:
    """The Jinja text of a shipped template by name (or alias, or variant); None if there is none."""
    name = canonical(name)
    base, options = VARIANTS.get(name, (name, {}))
    path = TEMPLATES_DIR / f"{base}.jinja"
    if not path.is_file():
        return None
    fixed = "".join(f"{{%- set {k} = {str(v).lower() if isinstance(v, bool) else repr(v)} %}}\n" for k, v in options.items())
    return fixed + path.read_text(encoding="utf-8")


def listing() -> str:
    """One line per shipped template with its other names, for `posttrain recipes`."""
    others: dict[str, list[str]] = {}
    for alias, name in ALIASES.items():
        others.setdefault(name, []).append(alias)
    for variant, (base, _) in VARIANTS.items():
        others.setdefault(base, []).append(variant)
    return "\n".join(f"{n:<20}{', '.join(sorted(others.get(n, [])))}".rstrip() for n in shipped())
