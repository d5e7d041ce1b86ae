"""What the stage modules share: the TRL config with device-fitting defaults, loading the policy, running work on the
main process first. The run lifecycle that calls a stage is posttrain.lifecycle."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import os
import sys
import time
from typing import TYPE_CHECKING

from posttrain import stages, tracking, util
from posttrain.errors import PosttrainError, RecipeError
from posttrain.models import NEW_TOKEN_IDS, bf16_supported, has_cuda, load_causal_lm
from posttrain.schema import config_class, fields_of
from posttrain.util import first_line, world_size

if TYPE_CHECKING:
    from posttrain.recipe import Recipe

log = logging.getLogger("posttrain")

# Collective timeout posttrain uses unless training.ddp_timeout says otherwise. posttrain's own preprocessing
# never waits in a collective (see main_process_first), but TRL's RewardTrainer/DPOTrainer tokenize preference
# pairs inside accelerate's main_process_first, a barrier bounded by this timeout; transformers' 30 minutes is
# what large datasets hit (LLaMA-Factory#2424, alignment-handbook#190).
DDP_TIMEOUT_S = 4 * 3600


def device_defaults(training: dict) -> dict:
    """Fill precision and activation checkpointing for the device, honouring what the recipe set.

    TRL defaults to bf16 and gradient checkpointing on; on a CPU bf16 raises and checkpointing only
    slows the run, so there both default off. On a GPU: bf16 where supported, else fp16.
    """
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
    kw.setdefault("ddp_timeout", DDP_TIMEOUT_S)
    return kw


def build_config(recipe: Recipe, **managed):
    """The stage's TRL config from `training:` plus posttrain's managed keys.

    Any error raised by the config's own checks (impossible combinations, a DeepSpeed config it cannot
    read, a missing integration) becomes a one-line RecipeError.
    """

    cls = config_class(stages.get(recipe.stage).trl_config)
    kw = device_defaults(recipe.training)
    # data.* settings that TRL configs hold under their own names (refused under training.*)
    fields = fields_of(cls)
    for data_key, field in (("num_proc", "dataset_num_proc"), ("pad_to_multiple_of", "pad_to_multiple_of")):
        if recipe.data.get(data_key) is not None and field in fields:
            kw[field] = recipe.data[data_key]
    if recipe.watchdog and recipe.watchdog["nonfinite"]:  # else a NaN/inf loss is averaged away before it is logged
        kw.setdefault("logging_nan_inf_filter", False)
    kw.update({k: v for k, v in tracking.config_fields(recipe.tracking).items() if k in fields})
    kw.update(managed)
    for new, old in (("activation_checkpointing", "gradient_checkpointing"),
                     ("activation_checkpointing_kwargs", "gradient_checkpointing_kwargs")):
        if new not in fields and new in kw:  # transformers before the rename (5.17, the GPU image, has only the old)
            kw[old] = kw.pop(new)
    kw["output_dir"] = recipe.output_dir
    # Create the process group ourselves: TrainingArguments creates it while the config is built, and on CPU
    # (gloo) without passing ddp_timeout at all.
    distributed_state(kw["ddp_timeout"])
    try:
        args = cls(**kw)
    except Exception as e:  # noqa: BLE001 - whatever the constructor raises, validate reports it in one line
        raise RecipeError(f"training: {cls.__name__} rejects these settings: {first_line(e)}") from None
    # The stages tokenize inside `args.main_process_first(...)`; ours waits without a collective (see below).
    args.main_process_first = _MainProcessFirst(args.ddp_timeout)
    return args


def max_length_config(recipe: Recipe):
    """The TRL config of a stage whose TRL max_length is data.max_length and that manages nothing else."""
    return build_config(recipe, max_length=recipe.data["max_length"])


class _MainProcessFirst:
    """`args.main_process_first(desc=...)` bound to ours; a class, not a lambda: Trainer pickles its args."""

    def __init__(self, timeout_s):
        self.timeout_s = timeout_s

    def __call__(self, local: bool = True, desc: str = "work"):
        return main_process_first(desc, self.timeout_s)


def distributed_state(timeout_s: float | None = None):
    """accelerate's PartialState, created (on first use) with the recipe's collective timeout: whoever creates it
    first fixes the process group's timeout, and TrainingArguments would otherwise find it made with the default."""
    from datetime import timedelta

    from accelerate import PartialState

    if PartialState._shared_state or world_size() == 1:
        return PartialState()
    return PartialState(timeout=timedelta(seconds=timeout_s or DDP_TIMEOUT_S))


_prep_calls = itertools.count()


def _store_wait(store, done, prefix: str):
    """Poll the rendezvous store until done() holds; a failure another process posted stops this one too."""
    while not done():
        if store.check([f"{prefix}/error"]):
            raise PosttrainError(store.get(f"{prefix}/error").decode())
        time.sleep(0.2)


@contextlib.contextmanager
def main_process_first(desc: str = "work", timeout_s: float | None = None):
    """Each node's main process runs the block first (tokenizing into the datasets cache), then the others
    (reading the cache). Unlike TrainingArguments.main_process_first, nobody waits in a collective: the
    others poll the process group's key-value store, so no NCCL/gloo timeout bounds the preprocessing, however
    large the dataset. A failure on any process is posted to the store and stops every process with its line."""
    if world_size() == 1:
        yield
        return
    from torch.distributed import distributed_c10d

    distributed_state(timeout_s)
    store = distributed_c10d._get_default_store()
    prefix = f"posttrain/prep{next(_prep_calls)}"
    rank, local = util.rank(), int(os.environ.get("LOCAL_RANK", "0"))
    node_main = f"{prefix}/main{rank - local}"
    if local != 0:
        _store_wait(store, lambda: store.check([node_main]), prefix)
    try:
        yield
    except BaseException as e:
        store.set(f"{prefix}/error", first_line(e) if isinstance(e, PosttrainError) else
                  f"process {rank} failed while {desc}: {type(e).__name__}: {first_line(e)}")
        raise
    if local == 0:
        store.set(node_main, "done")
    store.add(f"{prefix}/finished", 1)
    # and all leave together, so no process waits in the trainer's first collective while another still reads
    _store_wait(store, lambda: store.add(f"{prefix}/finished", 0) >= world_size(), prefix)


def training_with_defaults(recipe: Recipe) -> dict:
    """The recipe's `training:` over the stage's TRL config defaults, for checks that need a field's
    effective value before the config is built."""

    fields = dataclasses.fields(config_class(stages.get(recipe.stage).trl_config))
    return {**{f.name: f.default for f in fields if f.init and f.default is not dataclasses.MISSING},
            **recipe.training}


def training_value(key: str):
    """A footprint callable (e.g. `generated_tokens`): the recipe's effective training.<key>."""

    def value(recipe: Recipe):
        return training_with_defaults(recipe)[key]

    return value


def model_spec(value, recipe: Recipe) -> dict:
    """A stage key naming a model (`reward_model: path`, or a mapping like `model:`) as a model section; dtype and
    attention as the policy's unless given."""
    spec = dict(value) if isinstance(value, dict) else {"name_or_path": str(value)}
    spec.setdefault("dtype", recipe.model.get("dtype") or "auto")
    spec.setdefault("attn_implementation", recipe.model.get("attn_implementation"))
    return spec


def load_policy(recipe: Recipe, args, tokenizer):
    """The recipe's model, loaded after seeding: a LoRA adapter's initial weights (and any new embedding rows)
    come from this RNG."""
    from transformers import set_seed

    set_seed(args.seed)
    return load_causal_lm(recipe.model, recipe.quantization, tokenizer)


def fuses_lm_head(trainer_class) -> bool:
    """Whether a TRL trainer computes its loss through a fused LM head, reading lm_head.weight directly (TRL newer than
    1.12: SFT, DPO, KTO, GRPO, RLOO)."""
    return hasattr(sys.modules[trainer_class.__module__], "add_fused_lm_head")


def new_rows_train(recipe: Recipe, trainer):
    """Added tokens under LoRA train through peft's wrappers on the embedding and output head; a trainer that reads
    lm_head.weight past them would fail at its first step (or never train the rows): refused in one line."""
    if recipe.peft and getattr(trainer.processing_class, NEW_TOKEN_IDS, None) and fuses_lm_head(type(trainer)):
        raise RecipeError(f"model tokens under LoRA: TRL {stages.trl_version()}'s {type(trainer).__name__} computes "
                          "the loss from lm_head.weight directly (its fused LM head), past the peft wrappers that train "
                          "the new tokens' rows; train them with full fine-tuning (peft: null), or install trl<1.13")


def whole_logits_for_new_rows(recipe: Recipe, args, tokenizer):
    """Under LoRA the rows of tokens new to the model train through peft wrappers around the embedding and the output
    head; TRL's `chunked_nll` SFT loss (its default) reads the head's weight directly, past them (an AttributeError,
    or rows that never learn). Then SFT computes `nll`, the same loss on whole logits; `chunked_nll` set by hand is
    refused. Tokens the model already has (an upstream run added them) change nothing."""
    if not (recipe.peft and getattr(tokenizer, NEW_TOKEN_IDS, None)):
        return
    if getattr(args, "loss_type", None) != "chunked_nll":
        return
    if recipe.training.get("loss_type") == "chunked_nll":
        raise RecipeError("training.loss_type: chunked_nll reads the output head's weight past the peft wrappers that "
                          "train the added tokens' rows; remove it (posttrain then uses nll, the same loss on whole "
                          "logits)")
    log.info("training.loss_type: nll (whole logits), so the new tokens' rows train under LoRA")
    args.loss_type = "nll"


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
