"""The Accelerate launch a recipe will run under, read before launch, and the combinations that cannot work.

`validate` and `plan` read the launch from `--accelerate-config FILE`, else from ACCELERATE_CONFIG_FILE, else
from what `accelerate launch` puts in its ranks' environment (ACCELERATE_USE_FSDP, ACCELERATE_USE_DEEPSPEED,
ACCELERATE_DEEPSPEED_*, FSDP_*, WORLD_SIZE). Every `check_*(recipe, where, launch)` refuses through
`where.fail(dotted, msg)` (one line, exit 2); the checks are listed in CHECKS, in the order they run.

Nothing here launches or shards anything: Accelerate launches, FSDP/DeepSpeed shard.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from posttrain import needs, plan, runs
from posttrain.errors import PosttrainError
from posttrain.models import has_cuda
from posttrain.util import first_line, is_main_process, rank

if TYPE_CHECKING:
    from posttrain.recipe import Recipe
    from posttrain.util import Where

log = logging.getLogger("posttrain")


@dataclasses.dataclass(frozen=True)
class Launch:
    """What posttrain needs to know of an Accelerate launch config."""

    sharding: str = "none"  # none (one process) | ddp | zero2 | zero3 | fsdp
    processes: int = 1  # in all, over every machine
    machines: int = 1
    offload_params: bool = False  # ZeRO-3 offload_param_device cpu/nvme, FSDP fsdp_offload_params
    offload_optimizer: bool = False  # ZeRO offload_optimizer_device cpu/nvme (FSDP offloads both or neither)
    use_cpu: bool = False
    source: str = "accelerate's environment"  # the file it came from, for messages

    @property
    def name(self) -> str:
        return {"zero2": "DeepSpeed ZeRO-2", "zero3": "DeepSpeed ZeRO-3", "fsdp": "FSDP", "ddp": "DDP",
                "none": "one process"}[self.sharding]


def _on(value) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes", "on")


def _offloaded(device) -> bool:
    return str(device or "none").strip().lower() in ("cpu", "nvme")


def from_config(path: str | os.PathLike) -> Launch:
    """An Accelerate config file (the YAML `accelerate config` writes; JSON works too)."""
    import yaml

    path = Path(path)
    try:
        cfg = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise PosttrainError(f"accelerate config {path}: cannot read it: {first_line(e)}") from None
    if not isinstance(cfg, dict):
        raise PosttrainError(f"accelerate config {path}: not a mapping of settings")
    kind = str(cfg.get("distributed_type", "NO")).upper()
    procs, machines = int(cfg.get("num_processes") or 1), int(cfg.get("num_machines") or 1)
    common = {"processes": procs, "machines": machines, "use_cpu": bool(cfg.get("use_cpu")), "source": str(path)}
    if kind == "DEEPSPEED":
        ds = cfg.get("deepspeed_config") or {}
        stage = ds.get("zero_stage")
        if ds.get("deepspeed_config_file"):  # a DeepSpeed JSON: its zero_optimization section says the stage
            stage, ds = _deepspeed_json(Path(ds["deepspeed_config_file"]), path)
        return Launch(sharding="zero3" if int(stage or 0) == 3 else "zero2",
                      offload_params=_offloaded(ds.get("offload_param_device")),
                      offload_optimizer=_offloaded(ds.get("offload_optimizer_device")), **common)
    if kind == "FSDP":
        off = _on((cfg.get("fsdp_config") or {}).get("fsdp_offload_params", False))
        return Launch(sharding="fsdp", offload_params=off, offload_optimizer=off, **common)
    return Launch(sharding="ddp" if procs > 1 else "none", **common)


def _deepspeed_json(ds_file: Path, config: Path) -> tuple[int, dict]:
    import json

    if not ds_file.is_absolute() and not ds_file.exists():
        ds_file = config.parent / ds_file
    try:
        zero = json.loads(ds_file.read_text()).get("zero_optimization") or {}
    except (OSError, ValueError) as e:
        raise PosttrainError(f"accelerate config {config}: deepspeed_config_file {ds_file}: {first_line(e)}") from None
    return int(zero.get("stage") or 0), {
        "offload_param_device": (zero.get("offload_param") or {}).get("device"),
        "offload_optimizer_device": (zero.get("offload_optimizer") or {}).get("device")}


def from_environment(env=None) -> Launch | None:
    """What `accelerate launch` sets in each rank's environment; None when no launch is visible."""
    env = os.environ if env is None else env
    if env.get("ACCELERATE_CONFIG_FILE"):
        return from_config(env["ACCELERATE_CONFIG_FILE"])
    procs = int(env.get("WORLD_SIZE") or 1)
    # accelerate sets ACCELERATE_USE_CPU for DDP launches but not for FSDP ones: inside a rank, no CUDA is CPU
    common = {"processes": procs, "use_cpu": _on(env.get("ACCELERATE_USE_CPU", False)) or (
        _on(env.get("ACCELERATE_USE_FSDP", False)) and not _cuda())}
    if _on(env.get("ACCELERATE_USE_DEEPSPEED", False)):
        return Launch(sharding="zero3" if int(env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") or 2) == 3 else "zero2",
                      offload_params=_offloaded(env.get("ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE")),
                      offload_optimizer=_offloaded(env.get("ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE")), **common)
    if _on(env.get("ACCELERATE_USE_FSDP", False)):
        off = _on(env.get("FSDP_OFFLOAD_PARAMS", False))
        return Launch(sharding="fsdp", offload_params=off, offload_optimizer=off, **common)
    return Launch(sharding="ddp", **common) if procs > 1 else None


def _cuda() -> bool:
    return has_cuda()


def resolve(path: str | None = None) -> Launch | None:
    """The launch named by `--accelerate-config`, else the one the environment shows, else None."""
    return from_config(path) if path else from_environment()


def plan_args(launch: Launch | None, gpus: int | None, sharding: str | None) -> tuple[int, str]:
    """(processes, sharding) for plan: what the command line says, else the launch config, else one GPU."""
    named = launch.sharding if launch and launch.sharding in ("zero2", "zero3", "fsdp") else "none"
    sharding = sharding or named
    return gpus or (launch.processes if launch and sharding != "none" else 1), sharding


# --- checks: def check_x(recipe, where, launch) -> None, refusing with where.fail(dotted, msg) -------------


def check_deepspeed_installed(recipe: Recipe, where: Where, launch: Launch):
    if launch.sharding in ("zero2", "zero3") and not needs.installed("deepspeed"):
        where.fail("accelerate", f"{launch.source} launches {launch.name}, but the `deepspeed` package is not "
                                 "installed (pip install deepspeed)")


def check_qlora_sharding(recipe: Recipe, where: Where, launch: Launch):
    """ZeRO-3 and FSDP shard parameters by dtype: 4-bit weights packed into uint8 cannot be sharded with the
    bf16 rest of the model unless bitsandbytes stores them in that dtype (bnb_4bit_quant_storage)."""
    q = recipe.quantization or {}
    if launch.sharding in ("zero3", "fsdp") and q.get("load_in_4bit") and not q.get("bnb_4bit_quant_storage"):
        dtype = q.get("bnb_4bit_compute_dtype") or "bfloat16"
        where.fail("quantization", f"QLoRA under {launch.name} ({launch.source}) needs the 4-bit weights stored in "
                                   f"the model's dtype to be sharded: set quantization.bnb_4bit_quant_storage: {dtype}")


def host_ram_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def offload_bytes(recipe: Recipe, launch: Launch) -> int | None:
    """Host memory one machine needs for what the launch offloads to CPU, or None when the model's config
    cannot be read. Offloaded optimizer: fp32 master weights, fp32 gradients and two fp32 AdamW states per
    trainable parameter (16 bytes); offloaded parameters: the frozen ones in the compute dtype too. Each
    machine holds the share of its processes."""
    if not (launch.offload_params or launch.offload_optimizer):
        return 0
    try:
        arch = plan.arch(recipe.model, recipe.peft)
    except PosttrainError:
        return None
    need = arch.trainable * 16 if launch.offload_optimizer else 0
    if launch.offload_params:
        need += (arch.params - arch.trainable) * plan.compute_bytes(recipe)
    return need // max(launch.machines, 1)


def check_offload_fits_host_ram(recipe: Recipe, where: Where, launch: Launch):
    need = offload_bytes(recipe, launch)
    have = host_ram_bytes()
    if need and need > have:
        where.fail("model.name_or_path", f"{launch.name} offloads to CPU ({launch.source}): this model needs "
                                         f"{need / 2**30:.1f} GiB of host memory per machine, this machine has "
                                         f"{have / 2**30:.1f} GiB; shard over more machines or turn offload off")


def note_fsdp_on_cpu(recipe: Recipe, where: Where, launch: Launch):
    """Not a refusal: Accelerate (1.15) runs `distributed_type: FSDP` with `use_cpu: true` as plain data
    parallel — its state becomes MULTI_CPU and the FSDP plugin is dropped — so nothing is sharded."""
    if launch.sharding == "fsdp" and launch.use_cpu and is_main_process():
        log.warning("%s: FSDP with use_cpu: Accelerate runs it on CPU as plain data parallel (nothing is sharded)",
                    launch.source)


# run by posttrain.checks (its `launch_fits` step), each on its own
CHECKS = (check_deepspeed_installed, check_qlora_sharding, check_offload_fits_host_ram, note_fsdp_on_cpu)


# --- at run time ---------------------------------------------------------------------------------------------


def warn_if_output_dir_not_shared(out: Path):
    """On every node's main process but the global main one: the run dir is made by the global main process
    before this runs, so a node that cannot see it has output_dir on a node-local disk. Checkpoints are then
    split over the nodes (each rank writes its RNG state into its own node's copy) and --resume cannot work."""
    if rank() == 0 or int(os.environ.get("LOCAL_RANK", "0")) != 0:
        return
    if not (Path(out) / runs.LOCK).exists():
        log.warning("output_dir %s is not visible from the node of process %d (a node-local disk?): the run is "
                    "written on the main node only, checkpoints are split over the nodes and --resume cannot "
                    "continue; put output_dir on a disk every node shares", out, rank())
