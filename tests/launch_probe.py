"""`accelerate launch ... tests/launch_probe.py PROBE_DIR posttrain-args...`: posttrain's CLI, plus what the
FSDP and multi-node tests need to see inside the ranks.

`... tests/launch_probe.py PROBE_DIR '[[args...], [args...]]'` (a JSON list of argument lists) runs each in turn
in the same ranks, stopping at the first that fails, with run i's probe files in PROBE_DIR/i: several runs for one
launch (one start and one round of imports).

- Accelerate 1.15 takes its FSDP path only on accelerators: with `use_cpu: true` its state becomes MULTI_CPU
  and the FSDP plugin is dropped, so `distributed_type: FSDP` silently runs plain data parallel (nothing is
  sharded). Here the state is promoted back to FSDP when a plugin was configured, so the CPU ranks run
  Accelerate's and transformers' own FSDP2 code (fully_shard, full-state-dict gather, FSDP checkpoints) as
  they run on GPUs. Test-only: posttrain itself never patches Accelerate.
- Each rank writes probe-RANK.json: world size, whether the trainer runs FSDP, how many parameters are
  sharded (DTensor).
- Each call of SFT's tokenization appends "RANK HF_DATASETS_CACHE" to PROBE_DIR/tokenized.txt.
- HANG_AFTER_SAVE=N: every rank sleeps after checkpoint-N is written, for the test to SIGKILL the group.
"""

import dataclasses
import json
import os
import sys
import time

from accelerate import state as accelerate_state
from accelerate.utils import DistributedType
from transformers import TrainerCallback

_init = accelerate_state.AcceleratorState.__init__


def _fsdp_on_cpu(self, *args, fsdp_plugin=None, **kwargs):
    _init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
        self.distributed_type = DistributedType.FSDP
        self.fsdp_plugin = fsdp_plugin
        accelerate_state.PartialState._shared_state["distributed_type"] = DistributedType.FSDP


accelerate_state.AcceleratorState.__init__ = _fsdp_on_cpu


class Probe(TrainerCallback):
    def __init__(self, trainer, out: str):
        self.trainer, self.out = trainer, out

    def on_train_begin(self, args, state, control, **kw):
        from torch.distributed.tensor import DTensor

        params = list(self.trainer.model.parameters())
        with open(os.path.join(self.out, f"probe-{os.environ.get('RANK', '0')}.json"), "w") as f:
            json.dump({"world_size": args.world_size, "fsdp": self.trainer.is_fsdp_enabled,
                       "sharded": sum(isinstance(p, DTensor) for p in params), "parameters": len(params)}, f)

    def on_save(self, args, state, control, **kw):
        if state.global_step == int(os.environ.get("HANG_AFTER_SAVE", "-1")):
            time.sleep(600)


def main(out: str, runs: list[list[str]], one_dir_each: bool = False) -> int:
    from posttrain import stages
    from posttrain.cli import main as posttrain

    where = [out]  # the current run's probe directory

    def probed(spec):
        def build(recipe):
            trainer, stats = spec.build(recipe)
            trainer.add_callback(Probe(trainer, where[0]))
            return trainer, stats

        return dataclasses.replace(spec, build=build)

    from posttrain.stages import sft

    tokenize = sft.tokenize_dataset

    def counted(*args, **kwargs):
        with open(os.path.join(where[0], "tokenized.txt"), "a") as f:
            f.write(f"{os.environ.get('RANK', '0')} {os.environ.get('HF_DATASETS_CACHE')}\n")
        return tokenize(*args, **kwargs)

    sft.tokenize_dataset = counted
    for name, spec in list(stages.all_stages().items()):
        stages.all_stages()[name] = probed(spec)
    for i, argv in enumerate(runs):
        if one_dir_each:
            where[0] = os.path.join(out, str(i))
            os.makedirs(where[0], exist_ok=True)
        code = posttrain(argv)
        if code:
            return code
    return 0


if __name__ == "__main__":
    many = len(sys.argv) == 3 and sys.argv[2].startswith("[")
    raise SystemExit(main(sys.argv[1], json.loads(sys.argv[2]), True) if many else main(sys.argv[1], [sys.argv[2:]]))
