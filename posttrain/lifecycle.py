"""The run lifecycle: lock the run dir, build the stage's trainer, train, save atomically, and keep the manifest
true at every point. The CLI and the pipeline call `train(recipe)` with a recipe checked up to the `model` level
(posttrain.checks), so what validate refuses never reaches the run dir."""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from posttrain import launch, runs, stages, tracking, watchdog
from posttrain.errors import PosttrainError, RunDirError, RunStopped
from posttrain.models import full_copies_in_base_dtype
from posttrain.stages import common
from posttrain.util import is_main_process, world_size

if TYPE_CHECKING:
    from posttrain.recipe import Recipe
    from posttrain.stages import Stage

log = logging.getLogger("posttrain")


def train(recipe: Recipe, **kw) -> dict:
    """Train a checked recipe with its stage from the registry (see run)."""
    return run(recipe, stages.get(recipe.stage), **kw)


def run(recipe: Recipe, stage: Stage, *, resume: bool = False, overwrite: bool = False, force: bool = False,
        on_build=None) -> dict:
    """Lock the output dir, train, save atomically, and keep the manifest true at every point.

    From the stage: `build(recipe)` returns (trainer, data_stats); `extra_metrics(trainer)` may add
    stage metrics; `save(trainer, path)` replaces trainer.save_model for the final model. Every rank
    trains, saves (collective under FSDP/ZeRO-3) and evaluates; only the main process touches the run dir.
    The recipe comes checked by posttrain.checks up to the `model` level (every rank checks it alike), so
    what validate refuses never reaches the run dir.
    """
    build, resumable, extra_metrics, save = stage.build, stage.resumable, stage.extra_metrics, stage.save
    out = Path(recipe.output_dir)
    if resume and not resumable:
        raise RunDirError(f"{recipe.stage} runs cannot be resumed (its TRL trainer has no resume); use --overwrite")
    main = is_main_process()
    # what the trackers of training.report_to read from the environment (tracking:), set for this run only
    env = tracking.environment(recipe.tracking, recipe.training.get("report_to"))
    with runs.locked(out) if main else contextlib.nullcontext(), tracking.environ(env):
        ckpt = _agree(lambda: runs.prepare(out, recipe.hash, resume=resume, overwrite=overwrite, force=force),
                      recipe.training.get("ddp_timeout"))
        launch.warn_if_output_dir_not_shared(out)  # a node-local output_dir breaks --resume
        manifest = None
        if main:
            (out / runs.RESOLVED).write_text(recipe.to_yaml())
            manifest = runs.Manifest(out, recipe.stage, recipe.hash, recipe.source)
            manifest.update(resumed_from=ckpt.name if ckpt else None)
            if ckpt:
                log.info("resuming from %s", ckpt)
        dog = watchdog.of(recipe)
        try:
            trainer, data_stats = build(recipe)
            common.new_rows_train(recipe, trainer)
            if dog is not None:
                trainer.add_callback(watchdog.callback(dog))
            # TRL's bf16 cast of a quantized model's trainable parameters, undone where no autocast runs
            full_copies_in_base_dtype(trainer.model, trainer.args)
            if on_build is not None:  # e.g. a benchmark's callbacks and hooks on the trainer the stage built
                on_build(trainer)
            a = trainer.args
            batch = a.per_device_train_batch_size * a.gradient_accumulation_steps * world_size()
            if main:
                log.info("effective batch %d = %d per device x %d accumulation x %d process(es)",
                         batch, a.per_device_train_batch_size, a.gradient_accumulation_steps, world_size())
                manifest.update(device=str(a.device), data=data_stats, effective_batch=batch,
                                model=model_facts(getattr(trainer, "policy_model", trainer.model)))
            if resumable:
                result = trainer.train(resume_from_checkpoint=str(ckpt) if ckpt else None)
            else:
                result = trainer.train()
            if dog is not None and dog.tripped:
                _stopped(trainer, result, dog.tripped, out, manifest)
            metrics = headline_metrics(trainer, result)
            if resumable and trainer.eval_dataset is not None:
                metrics.update({k: v for k, v in trainer.evaluate().items() if isinstance(v, (int, float))})
            if extra_metrics is not None:
                metrics.update(extra_metrics(trainer))
            if main:
                manifest.update(metrics=metrics, status="saving")
                runs.clear_staging(out)
            _barrier()
            (save or (lambda t, path: t.save_model(path)))(trainer, str(out / runs.SAVING))
            _barrier()
            if main:
                runs.commit_staging(out)
                _write_log_history(out, trainer)
                manifest.end("finished")
        except RunStopped:
            raise
        except KeyboardInterrupt:
            if manifest:
                manifest.end("interrupted")
            raise
        except BaseException:
            if manifest:
                manifest.end("failed")
            raise
    return manifest.data if manifest else {}


def _write_log_history(out: Path, trainer):
    (out / "log_history.json").write_text(json.dumps(trainer.state.log_history, indent=1) + "\n")


def _stopped(trainer, result, tripped: dict, out: Path, manifest):
    """The watchdog stopped the run: the Trainer saved a checkpoint at that step; the manifest says why, the run stays
    unfinished (no final model), and every rank stops with one line."""
    ckpt = runs.checkpoints(out)
    tripped = {**tripped, "checkpoint": ckpt[-1].name if ckpt else None}
    if manifest is not None:
        manifest.update(metrics=headline_metrics(trainer, result), stopped=tripped)
        _write_log_history(out, trainer)
        manifest.end(watchdog.STOPPED)
    loss = tripped["loss"]
    raise RunStopped(f"loss watchdog stopped the run at step {tripped['step']}: {tripped['why']} (loss "
                     f"{f'{loss:.4g}' if isinstance(loss, float) else loss}); {tripped['checkpoint'] or 'no checkpoint'} "
                     f"kept in {out}, the run is unfinished (--resume continues it)")


def model_facts(model) -> dict:
    params = list(model.parameters())
    return {
        "class": type(model).__name__,
        "parameters": sum(p.numel() for p in params),
        "trainable_parameters": sum(p.numel() for p in params if p.requires_grad),
        "quantized": "4bit" if getattr(model, "is_loaded_in_4bit", False)
        else "8bit" if getattr(model, "is_loaded_in_8bit", False) else None,
        "dtype": str(next(p.dtype for p in params)).replace("torch.", ""),
    }


def headline_metrics(trainer, train_result) -> dict:
    metrics = getattr(train_result, "metrics", None) or {}
    out = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    out["global_step"] = trainer.state.global_step
    train_logs = [e for e in trainer.state.log_history if "loss" in e]
    if train_logs:
        out["first_logged_loss"] = train_logs[0]["loss"]
        out["last_logged_loss"] = train_logs[-1]["loss"]
    return out


def _barrier():
    if world_size() > 1:
        common.distributed_state().wait_for_everyone()


def _agree(decide, timeout_s: float | None = None):
    """Run decide() on the main process and give every rank its result, or its PosttrainError: under
    DDP a refusal must stop all ranks, not leave the others waiting in a collective."""
    result, error = None, None
    if is_main_process():
        try:
            result = decide()
        except PosttrainError as e:
            error = (type(e), str(e))
    if world_size() > 1:
        from accelerate.utils import broadcast_object_list

        common.distributed_state(timeout_s)  # initialises the process group when launched by accelerate/torchrun
        box = [(result, error)]
        broadcast_object_list(box, from_process=0)
        result, error = box[0]
    if error:
        raise error[0](error[1])
    return result
