"""`tracking:` in a recipe: the settings experiment trackers read from the environment (project, entity, group, tags,
model upload, local directory), set for the run from the recipe, so the recipe carries them.

Each tracker's own names (ENV) are what its documentation and transformers' integration callbacks read. Trackio
takes its project from TrainingArguments.project (set from tracking.project). The run's name stays TRL's
`training.run_name`; secrets (API keys, tokens) never go in a recipe (refused by the check pass: set WANDB_API_KEY etc.
in the environment).
"""

from __future__ import annotations

import contextlib
import json
import os

# tracking key -> {training.report_to name: the environment variable that tracker reads}
ENV = {
    "project": {"wandb": "WANDB_PROJECT", "mlflow": "MLFLOW_EXPERIMENT_NAME", "comet_ml": "COMET_PROJECT_NAME",
                "swanlab": "SWANLAB_PROJECT"},
    "entity": {"wandb": "WANDB_ENTITY", "comet_ml": "COMET_WORKSPACE"},
    "group": {"wandb": "WANDB_RUN_GROUP"},
    "tags": {"wandb": "WANDB_TAGS", "mlflow": "MLFLOW_TAGS"},
    "log_model": {"wandb": "WANDB_LOG_MODEL", "mlflow": "HF_MLFLOW_LOG_ARTIFACTS"},
    "dir": {"tensorboard": "TENSORBOARD_LOGGING_DIR", "wandb": "WANDB_DIR"},
}
CONFIG_FIELD = {"project": {"trackio": "project"}}  # tracking key -> {tracker: the TrainingArguments field it reads}
LOG_MODEL = {"wandb": ("end", "checkpoint", "false"), "mlflow": ("end", "false")}  # what each can do with log_model


def readers(key: str) -> list[str]:
    return [*ENV.get(key, {}), *CONFIG_FIELD.get(key, {})]


def trackers(report_to) -> list[str]:
    """The trackers a training.report_to value names ("all": every one posttrain sets anything for)."""
    if report_to in (None, "none", [], False):
        return []
    names = [report_to] if isinstance(report_to, str) else list(report_to)
    if "all" in names:
        return sorted({t for key in ENV for t in readers(key)})
    return [n for n in names if n != "none"]


def log_model_word(value) -> str:
    """tracking.log_model as one word: true means at the end."""
    return {True: "end", False: "false"}.get(value, value) if isinstance(value, bool) else str(value)


def _env_value(key: str, tracker: str, value) -> str:
    if key == "tags":
        return json.dumps(dict.fromkeys(value, "")) if tracker == "mlflow" else ",".join(value)
    if key == "log_model":
        word = log_model_word(value)
        return ("FALSE" if word == "false" else "TRUE") if tracker == "mlflow" else word
    return str(value)


def environment(tracking: dict | None, report_to) -> dict[str, str]:
    """The environment variables a run sets for the trackers in report_to."""
    env = {}
    for key, value in (tracking or {}).items():
        if value is None:
            continue
        for tracker, var in ENV.get(key, {}).items():
            if tracker in trackers(report_to):
                env[var] = _env_value(key, tracker, value)
    return env


def config_fields(tracking: dict | None) -> dict:
    """The TrainingArguments fields set from tracking (trackio's project)."""
    return {field: (tracking or {})[key] for key, by in CONFIG_FIELD.items() for field in by.values()
            if (tracking or {}).get(key) is not None}


@contextlib.contextmanager
def environ(env: dict[str, str]):
    """Set `env` while the block runs (a run), and put back what was there: the next stage of a pipeline starts clean."""
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
