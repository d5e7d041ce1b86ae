"""What every stage shares: the TRL config with device-fitting defaults, and the run lifecycle."""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from posttrain import runs
from posttrain.errors import PosttrainError, RecipeError, RunDirError
from posttrain.util import first_line, is_main_process, world_size

if TYPE_CHECKING:
    from posttrain.recipe import Recipe
    from posttrain.stages import Stage

log = logging.getLogger("posttrain")


def device_defaults(training: dict) -> dict:
    """Fill precision and activation checkpointing for the device, honouring what the recipe set.

    TRL defaults to bf16 and gradient checkpointing on; on a CPU bf16 raises and checkpointing only
    slows the run, so there both default off. On a GPU: bf16 where supported, else fp16.
    """
    from posttrain.models import bf16_supported, has_cuda

    kw = dict(training)
    cuda = has_cuda()
    if "bf16" not in kw and "fp16" not in kw:
        kw["bf16"] = bf16_supported()
        kw["fp16"] = cuda and not kw["bf16"]
    elif kw.get("fp16") and not kw.get("bf16"):
        kw.setdefault("bf16", False)
    if not cuda:
        # use_cpu: bf16 autocast on CPU needs it, and under torchrun it makes Accelerate join the CPU ranks
        # into one gloo group instead of running each process as its own single-process job.
        kw.setdefault("use_cpu", True)
        if kw.get("fp16"):
            log.warning("training.fp16 on a machine without CUDA: mixed precision does nothing on CPU")
            kw["fp16"] = False
    # transformers 5 renamed gradient_checkpointing -> activation_checkpointing; accept both spellings.
    for old, new in (("gradient_checkpointing", "activation_checkpointing"),
                     ("gradient_checkpointing_kwargs", "activation_checkpointing_kwargs")):
        if old in kw:
            kw.setdefault(new, kw.pop(old))
        kw[old] = None
    kw.setdefault("activation_checkpointing", cuda)
    kw.setdefault("report_to", "none")
    kw.setdefault("dataloader_pin_memory", cuda)
    kw.setdefault("ddp_find_unused_parameters", False)  # True costs a graph traversal per step under DDP
    return kw


def build_config(recipe: Recipe, **managed):
    """The stage's TRL config from `training:` plus posttrain's managed keys.

    Errors raised by the config's own checks (impossible combinations) become RecipeErrors.
    """
    from posttrain import stages
    from posttrain.schema import config_class, fields_of

    cls = config_class(stages.get(recipe.stage).trl_config)
    kw = device_defaults(recipe.training)
    # data.* settings that TRL configs hold under their own names (refused under training.*)
    fields = fields_of(cls)
    for data_key, field in (("num_proc", "dataset_num_proc"), ("pad_to_multiple_of", "pad_to_multiple_of")):
        if recipe.data.get(data_key) is not None and field in fields:
            kw[field] = recipe.data[data_key]
    kw.update(managed)
    kw["output_dir"] = recipe.output_dir
    try:
        return cls(**kw)
    except (ValueError, TypeError, ArithmeticError) as e:
        raise RecipeError(f"training: {cls.__name__} rejects these settings: {first_line(e)}") from None


def training_with_defaults(recipe: Recipe) -> dict:
    """The recipe's `training:` over the stage's TRL config defaults, for checks that need a field's
    effective value before the config is built."""
    import dataclasses

    from posttrain import stages
    from posttrain.schema import config_class

    fields = dataclasses.fields(config_class(stages.get(recipe.stage).trl_config))
    return {**{f.name: f.default for f in fields if f.init and f.default is not dataclasses.MISSING},
            **recipe.training}


def last_logged(*keys: str):
    """An `extra_metrics` for the manifest: the last logged value of each key and of its eval_ form."""

    def metrics(trainer) -> dict:
        out = {}
        for entry in trainer.state.log_history:
            for key in keys:
                for k in (key, f"eval_{key}"):
                    if k in entry:
                        out[k] = entry[k]
        return out

    return metrics


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
        from accelerate import PartialState

        PartialState().wait_for_everyone()


def _agree(decide):
    """Run decide() on the main process and give every rank its result, or its PosttrainError: under
    DDP a refusal must stop all ranks, not leave the others waiting in a collective."""
    result, error = None, None
    if is_main_process():
        try:
            result = decide()
        except PosttrainError as e:
            error = (type(e), str(e))
    if world_size() > 1:
        from accelerate import PartialState
        from accelerate.utils import broadcast_object_list

        PartialState()  # initialises the process group when launched by accelerate/torchrun
        box = [(result, error)]
        broadcast_object_list(box, from_process=0)
        result, error = box[0]
    if error:
        raise error[0](error[1])
    return result


def run(recipe: Recipe, stage: Stage, *, resume: bool = False, overwrite: bool = False, force: bool = False) -> dict:
    """Lock the output dir, train, save atomically, and keep the manifest true at every point.

    From the stage: `build(recipe)` returns (trainer, data_stats); `extra_metrics(trainer)` may add
    stage metrics; `save(trainer, path)` replaces trainer.save_model for the final model. Every rank
    trains, saves (collective under FSDP/ZeRO-3) and evaluates; only the main process touches the run dir.
    """
    from posttrain import preflight

    build, resumable, extra_metrics, save = stage.build, stage.resumable, stage.extra_metrics, stage.save
    out = Path(recipe.output_dir)
    if resume and not resumable:
        raise RunDirError(f"{recipe.stage} runs cannot be resumed (its TRL trainer has no resume); use --overwrite")
    # what validate refuses fails here too, on every rank alike, before the run dir or any weights:
    preflight.target_modules(recipe)  # a LoRA that matches no module
    preflight.data(recipe)  # missing/unreadable local data, wrong columns, unusable rows
    main = is_main_process()
    with runs.locked(out) if main else contextlib.nullcontext():
        ckpt = _agree(lambda: runs.prepare(out, recipe.hash, resume=resume, overwrite=overwrite, force=force))
        manifest = None
        if main:
            (out / runs.RESOLVED).write_text(recipe.to_yaml())
            manifest = runs.Manifest(out, recipe.stage, recipe.hash, recipe.source)
            manifest.update(resumed_from=ckpt.name if ckpt else None)
            if ckpt:
                log.info("resuming from %s", ckpt)
        try:
            trainer, data_stats = build(recipe)
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
                (out / "log_history.json").write_text(json.dumps(trainer.state.log_history, indent=1) + "\n")
                manifest.end("finished")
        except KeyboardInterrupt:
            if manifest:
                manifest.end("interrupted")
            raise
        except BaseException:
            if manifest:
                manifest.end("failed")
            raise
    return manifest.data if manifest else {}
