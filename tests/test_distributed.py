"""Two real processes (gloo on CPU) through `accelerate launch`: world size 2 on both ranks, identical
parameters at the end, and the loss curve of a single process with the same global batch.

One launch trains every case in turn (the ranks pay their start and imports once); the one-process references
run in this test process (no launch, no imports to pay again), as in test_fsdp."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # launches processes

REPO = Path(__file__).resolve().parent.parent
# argv[1]: the probe directory; argv[2]: a JSON list of posttrain argument lists, trained in turn. Each run's
# ranks write probe-RANK.json into PROBE_DIR/<index of the run>.
PROBE = """
import dataclasses, hashlib, json, os, sys
from transformers import TrainerCallback
from posttrain import stages
from posttrain.cli import main

where = [None]

class Probe(TrainerCallback):
    def on_train_end(self, args, state, control, model=None, **kw):
        import torch
        digest = hashlib.sha256()
        for name, p in sorted(model.named_parameters()):
            digest.update(p.detach().float().cpu().numpy().tobytes())
        rank = os.environ.get("RANK", "0")
        with open(os.path.join(where[0], f"probe-{rank}.json"), "w") as f:
            json.dump({"world_size": args.world_size, "digest": digest.hexdigest()}, f)

def probed(spec):
    def build(recipe):
        trainer, stats = spec.build(recipe)
        trainer.add_callback(Probe())
        return trainer, stats
    return dataclasses.replace(spec, build=build)

for name, spec in list(stages.all_stages().items()):
    stages.all_stages()[name] = probed(spec)
for i, argv in enumerate(json.loads(sys.argv[2])):
    where[0] = os.path.join(sys.argv[1], str(i))
    os.makedirs(where[0], exist_ok=True)
    code = main(argv)
    if code:
        raise SystemExit(code)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(probe_dir: Path, runs: list[list[str]]) -> list[list[dict]]:
    """Two gloo ranks through `accelerate launch`, training each argument list in turn; per run, what each rank's
    probe saw."""
    probe_dir.mkdir(parents=True, exist_ok=True)
    script = probe_dir / "probe.py"
    script.write_text(PROBE)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [str(Path(sys.executable).parent / "accelerate"), "launch", "--config_file",
           str(REPO / "recipes/accelerate/cpu_2proc.yaml"), "--num_processes", "2",
           "--main_process_port", str(_free_port()), str(script), str(probe_dir), json.dumps(runs)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300 * len(runs))
    assert done.returncode == 0, done.stderr[-3000:]
    return [[json.loads(p.read_text()) for p in sorted((probe_dir / str(i)).glob("probe-*.json"))]
            for i in range(len(runs))]


def _losses(out):
    return [e["loss"] for e in json.loads((out / "log_history.json").read_text()) if "loss" in e]


CASES = {"sft": ("alpaca_gpt2", "alpaca", []),
         "sft-packed": ("alpaca_gpt2", "alpaca", ["training.packing=true"]),
         "dpo": ("dpo_gpt2", "preference", [])}


def _common(fx, case):
    recipe, data, extra = CASES[case]
    return [recipe, f"model.name_or_path={fx['model']}", f"data.train={fx[data]}", "data.split=train",
            "data.eval_fraction=null", "data.eval=null", "training.eval_strategy=no", "training.max_steps=4",
            "training.logging_steps=1", "training.warmup_steps=0", "training.gradient_accumulation_steps=1",
            "training.learning_rate=5e-3", "training.save_steps=100", *extra]


@pytest.fixture(scope="module")
def two_processes(fx, tmp_path_factory):
    """Every case trained by two ranks of 2 rows each (a global batch of 4), in one launch: case -> (output dir,
    what each rank's probe saw)."""
    root = tmp_path_factory.mktemp("two_processes")
    outs = {case: root / f"out-{case}" for case in CASES}
    ranks = _launch(root / "probe", [["train", *_common(fx, case), f"output_dir={outs[case]}",
                                      "training.per_device_train_batch_size=2"] for case in CASES])
    return {case: (outs[case], r) for case, r in zip(CASES, ranks)}


@pytest.mark.parametrize("case", list(CASES))
def test_two_processes_match_one(fx, tmp_path, cli, two_processes, case):
    out2, ranks = two_processes[case]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert ranks[0]["digest"] == ranks[1]["digest"], "parameters differ across ranks"
    manifest = json.loads((out2 / "manifest.json").read_text())
    assert manifest["world_size"] == 2 and manifest["effective_batch"] == 4 and manifest["status"] == "finished"
    assert not list(out2.glob(".saving-final*"))
    # one process, 4 rows per step: the same global batch
    out1 = tmp_path / "out1"
    code, _, err = cli("train", *_common(fx, case), f"output_dir={out1}", "training.per_device_train_batch_size=4")
    assert code == 0, err[-3000:]
    single, double = _losses(out1), _losses(out2)
    assert len(single) == len(double) == 4
    # DPO's loss is a mean over pairs: identical. SFT's is a token mean per rank, then averaged over ranks,
    # which weighs tokens slightly differently from one process's mean over the whole batch (measured 0.3%).
    assert double == pytest.approx(single, rel=5e-3 if case != "dpo" else 1e-4), (single, double)
    assert double[-1] < double[0]
