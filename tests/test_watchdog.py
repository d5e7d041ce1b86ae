"""The loss watchdog (posttrain.watchdog) stops a diverging run with its checkpoint kept and a manifest that says why;
tracking settings (posttrain.tracking) reach the environment the trackers read, for the run only."""

import dataclasses
import json
import math
import os
from pathlib import Path

import pytest
from conftest import refused, write_recipe

from posttrain import checks, lifecycle, needs, runs, stages, tracking
from posttrain.errors import DataError
from posttrain.watchdog import Watchdog

BASE = "stage: sft\nmodel: {name_or_path: gpt2}\ndata: {train: d.jsonl}\n"
STEPS = ["training.max_steps=8", "training.logging_steps=1", "training.warmup_steps=0", "training.save_steps=100",
         "training.eval_strategy=no", "data.eval_fraction=null", "training.gradient_accumulation_steps=1"]


def test_patience_counts_high_losses_in_a_row_and_a_nonfinite_loss_stops_at_once():
    w = Watchdog(loss_above=2.0, patience=3)
    assert not any(w.observe(step, loss) for step, loss in enumerate([3, 3, 1, 3, 3], 1))  # 1 resets the count
    assert w.observe(6, 2.5) and w.tripped["step"] == 6 and w.tripped["loss"] == 2.5
    assert "above watchdog.loss_above 2.0 for 3 logged step(s) in a row" in w.tripped["why"]
    w = Watchdog()  # nonfinite only
    assert not w.observe(1, 1e9) and w.observe(2, math.nan) and w.tripped["loss"] == "nan"
    assert not Watchdog(nonfinite=False).observe(1, math.inf)


@pytest.mark.parametrize("text, expected", [
    ("stage: ppo\nmodel: {name_or_path: gpt2}\ndata: {train: d.jsonl}\nreward_model: r\nwatchdog: {loss_above: 9}\n",
     "watchdog: the ppo trainer runs its own training loop"),
    (BASE + "watchdog: {patience: 2}\n", "watchdog.patience: counts logged losses above watchdog.loss_above"),
    (BASE + "watchdog: {nonfinite: false}\n", "watchdog: watches nothing"),
    (BASE + "watchdog: {loss_above: x}\n", "watchdog.loss_above: expected"),
    (BASE + "watchdog: {loss_above: 9, patience: 0}\n", "watchdog.patience: 0 is out of range"),
    (BASE + "watchdog: {}\ntraining: {logging_strategy: 'no'}\n", "training.logging_strategy: 'no' logs no training"),
    (BASE + "watchdog: {}\ntraining: {logging_nan_inf_filter: true}\n", "training.logging_nan_inf_filter: true averages"),
    (BASE + "watchdog: {los_above: 3}\n", "watchdog.los_above: unknown key in watchdog; did you mean 'loss_above'"),
])
def test_watchdog_refusals_are_one_line_at_their_key(tmp_path, text, expected):
    if text.startswith("stage: ppo") and stages.get("ppo").unavailable():
        pytest.skip(stages.get("ppo").unavailable())
    msg = refused(tmp_path, text)
    assert expected in msg and len(msg.splitlines()) == 1, msg


def test_watchdog_is_not_a_trl_field_and_turns_off_the_nan_filter(tmp_path):
    r = checks.load_recipe(str(write_recipe(tmp_path, BASE + "watchdog: {loss_above: 9}\n")))
    assert r.watchdog == {"loss_above": 9, "patience": 3, "nonfinite": True} and "watchdog" not in r.training
    assert r.resolved["watchdog"] == r.watchdog  # written with the run (recipe.resolved.yaml)
    args = stages.get("sft").make_config(r)
    assert args.logging_nan_inf_filter is False and not hasattr(args, "watchdog")
    plain = checks.load_recipe(str(write_recipe(tmp_path, BASE)))
    assert plain.watchdog is None and stages.get("sft").make_config(plain).logging_nan_inf_filter is True


def _stopped(code, err, out: Path, step: int) -> dict:
    """Exit 1 with one line; the manifest says stopped, why, at which step; that step's checkpoint kept; no final
    model; the run is unfinished (resumable)."""
    lines = [line for line in err.splitlines() if line.startswith("posttrain: ")]
    assert code == 1 and lines[-1].startswith("posttrain: error: loss watchdog stopped the run at step "), err
    assert sum(line.startswith("posttrain: error:") for line in lines) == 1 and "Traceback" not in err
    m = runs.read_manifest(out)
    assert m["status"] == "stopped" and m["stopped"]["by"] == "loss watchdog" and m["stopped"]["step"] == step, m
    assert m["stopped"]["checkpoint"] == f"checkpoint-{step}" and runs.checkpoints(out)[-1].name == f"checkpoint-{step}"
    assert not (out / "model.safetensors").exists() and m["metrics"]["global_step"] == step
    assert runs.prepare(out, m["recipe_hash"], resume=True, overwrite=False).name == f"checkpoint-{step}"
    return m


@pytest.mark.slow
def test_a_loss_above_the_threshold_for_its_patience_stops_the_run_with_its_checkpoint(fx, tmp_path, cli):
    out = tmp_path / "high"
    code, _, err = cli("train", "alpaca_gpt2", f"model.name_or_path={fx['model']}", f"data.train={fx['alpaca']}",
                       f"output_dir={out}", *STEPS, "watchdog.loss_above=0.01", "watchdog.patience=2")
    m = _stopped(code, err, out, 2)
    assert m["stopped"]["loss"] > 0.01 and "for 2 logged step(s) in a row" in m["stopped"]["why"]
    assert [e["step"] for e in json.loads((out / "log_history.json").read_text()) if "loss" in e] == [1, 2]


@pytest.mark.slow
def test_a_nan_loss_stops_the_run(fx, tmp_path, cli):
    """A learning rate that overflows the weights: the loss turns NaN, which transformers would average away from
    the log (logging_nan_inf_filter); with the watchdog it stops the run at that step."""
    out = tmp_path / "nan"
    code, _, err = cli("train", "alpaca_gpt2", f"model.name_or_path={fx['model']}", f"data.train={fx['alpaca']}",
                       f"output_dir={out}", *STEPS, "training.learning_rate=1e38", "training.max_grad_norm=0",
                       "watchdog={}")
    step = ((runs.read_manifest(out) or {}).get("stopped") or {}).get("step")
    m = _stopped(code, err, out, step)
    assert m["stopped"]["loss"] in ("nan", "inf") and step < 8, m


# ---------------------------------------------------------------------------------------------
# tracking


def test_tracking_sets_what_each_tracker_of_report_to_reads():
    t = {"project": "p", "entity": "team", "group": "g", "tags": ["a", "b"], "log_model": True, "dir": "logs"}
    assert tracking.environment(t, ["wandb", "mlflow", "tensorboard"]) == {
        "WANDB_PROJECT": "p", "MLFLOW_EXPERIMENT_NAME": "p", "WANDB_ENTITY": "team", "WANDB_RUN_GROUP": "g",
        "WANDB_TAGS": "a,b", "MLFLOW_TAGS": '{"a": "", "b": ""}', "WANDB_LOG_MODEL": "end",
        "HF_MLFLOW_LOG_ARTIFACTS": "TRUE", "TENSORBOARD_LOGGING_DIR": "logs", "WANDB_DIR": "logs"}
    assert tracking.environment(t, "tensorboard") == {"TENSORBOARD_LOGGING_DIR": "logs"}
    assert tracking.environment(t, "none") == {} and tracking.config_fields(t) == {"project": "p"}


def test_the_run_sets_the_tracking_environment_and_puts_it_back(tmp_path, monkeypatch):
    """The run lifecycle sets the environment before the stage builds its trainer (transformers' callbacks read it
    there and at train begin), and restores it after, whatever happened: a pipeline's next stage starts clean."""
    monkeypatch.setattr(needs, "installed", lambda module: True)  # the trackers are not installed here
    monkeypatch.setenv("WANDB_PROJECT", "from-the-shell")
    monkeypatch.delenv("WANDB_TAGS", raising=False)
    p = write_recipe(tmp_path, BASE + "training: {report_to: [wandb, trackio]}\n"
                     f"tracking: {{project: mine, tags: [sft, tiny]}}\noutput_dir: {tmp_path / 'run'}\n")
    recipe = checks.load_recipe(str(p))
    assert stages.get("sft").make_config(recipe).project == "mine"  # trackio reads TrainingArguments.project
    seen = {}

    def build(r):
        seen.update({k: os.environ.get(k) for k in ("WANDB_PROJECT", "WANDB_TAGS", "MLFLOW_EXPERIMENT_NAME")})
        raise DataError("stop here: no training in a fast test")

    with pytest.raises(DataError):
        lifecycle.run(recipe, dataclasses.replace(stages.get("sft"), build=build))
    assert seen == {"WANDB_PROJECT": "mine", "WANDB_TAGS": "sft,tiny", "MLFLOW_EXPERIMENT_NAME": None}
    assert os.environ["WANDB_PROJECT"] == "from-the-shell" and "WANDB_TAGS" not in os.environ


@pytest.mark.parametrize("text, expected", [
    ("tracking: {project: p}\n", "tracking: training.report_to names no tracker"),
    ("training: {report_to: tensorboard}\ntracking: {entity: e}\n",
     "tracking.entity: no tracker of training.report_to (tensorboard) reads it (read by wandb, comet_ml)"),
    ("training: {report_to: wandb}\ntracking: {tags: [a, 'b,c']}\n", "tracking.tags: expected a list of labels"),
    ("training: {report_to: mlflow}\ntracking: {log_model: checkpoint}\n", "tracking.log_model: 'checkpoint' is not"),
    ("training: {report_to: trackio, project: a}\ntracking: {project: b}\n", "training.project: set the project once"),
    ("training: {report_to: wandb}\ntracking: {api_key: abc123}\n", "tracking.api_key: secrets never go in a recipe"),
    ("training: {report_to: wandb}\ntracking: {wandb_api_key: abc123}\n", "tracking.wandb_api_key: secrets never go"),
    ("training: {report_to: wandb}\ntracking: {name: r1}\n", "tracking.name: the run's name is TRL's training.run_name"),
])
def test_tracking_refusals_are_one_line(tmp_path, monkeypatch, text, expected):
    monkeypatch.setattr(needs, "installed", lambda module: True)
    msg = refused(tmp_path, BASE + text)
    assert expected in msg and len(msg.splitlines()) == 1 and "abc123" not in msg, msg


def test_an_empty_tracking_section_is_no_tracking(tmp_path):
    r = checks.load_recipe(str(write_recipe(tmp_path, BASE + "tracking: {project: null}\n")))
    assert r.tracking is None and "tracking" not in r.resolved
    assert r.hash == checks.load_recipe(str(write_recipe(tmp_path, BASE))).hash
