"""One small module per stage; each maps a validated recipe onto its TRL config and trainer.

A stage module provides `config(recipe)` (the TRL config, built without loading anything) and
`train(recipe, resume=, overwrite=, force=)`.
"""

import importlib
from pathlib import Path

from posttrain.recipe import STAGES

IMPLEMENTED = tuple(s for s in STAGES if (Path(__file__).parent / f"{s}.py").exists())


def stage_module(stage: str):
    from posttrain.errors import RecipeError

    if stage not in IMPLEMENTED:
        raise RecipeError(f"stage: '{stage}' recipes validate, but training it is not implemented in this version yet")
    return importlib.import_module(f"posttrain.stages.{stage}")
