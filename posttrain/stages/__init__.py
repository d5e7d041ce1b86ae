"""One small module per stage; each maps a validated recipe onto its TRL config and trainer."""

import importlib

IMPLEMENTED = ("sft",)


def stage_module(stage: str):
    from posttrain.errors import RecipeError

    if stage not in IMPLEMENTED:
        raise RecipeError(f"stage: '{stage}' recipes validate, but training it is not implemented in this version yet")
    return importlib.import_module(f"posttrain.stages.{stage}")
