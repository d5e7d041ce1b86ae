"""Two simulated nodes x 1 process, each with node-local disks: its own working directory, HF_HOME and
HF_DATASETS_CACHE, and a relative output_dir that resolves to a different directory on each node.

What it proves:
- tokenization happens once per node, by that node's main process, into that node's own cache (posttrain's
  main_process_first is per node: LOCAL_RANK 0 first); nothing assumes another node's cache is visible;
- the run dir, manifest and final model are written once, by the global main process (node 0); node 1's
  copy of output_dir gets only what the Trainer writes per rank into a checkpoint (its RNG state), which is
  why output_dir must be on a disk every node shares for --resume to work; node 1 warns about it.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_distributed import REPO, _free_port

pytestmark = pytest.mark.slow  # launches processes

PROBE = REPO / "tests/launch_probe.py"


def test_two_nodes_with_node_local_disks(fx, tmp_path):
    port = _free_port()
    argv = ["train", "alpaca_gpt2", f"model.name_or_path={fx['model']}", f"data.train={fx['alpaca']}",
            "data.split=train", "data.eval_fraction=null", "training.eval_strategy=no", "training.max_steps=2",
            "training.per_device_train_batch_size=2", "training.gradient_accumulation_steps=1",
            "training.logging_steps=1", "training.save_steps=2", "output_dir=runs/two_nodes"]
    nodes = []
    for rank in (0, 1):
        disk = tmp_path / f"node{rank}"
        (disk / "probe").mkdir(parents=True)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO),
               "HF_HOME": str(disk / "hf"), "HF_DATASETS_CACHE": str(disk / "hf" / "datasets")}
        cmd = [str(Path(sys.executable).parent / "accelerate"), "launch",
               "--config_file", str(REPO / "recipes/accelerate/cpu_2proc.yaml"),
               "--num_machines", "2", "--machine_rank", str(rank), "--num_processes", "2",
               "--main_process_ip", "127.0.0.1", "--main_process_port", str(port),
               str(PROBE), str(disk / "probe"), *argv]
        nodes.append((disk, subprocess.Popen(cmd, cwd=disk, env=env, stdout=subprocess.DEVNULL,
                                             stderr=subprocess.PIPE, text=True, start_new_session=True)))
    said = []
    for _disk, proc in nodes:
        try:
            _, err = proc.communicate(timeout=240)
            said.append(err)
        finally:
            if proc.poll() is None:
                from test_fsdp import kill_tree

                kill_tree(proc)
        assert proc.returncode == 0, err[-4000:]

    (disk0, _), (disk1, _) = nodes
    for rank, disk in enumerate((disk0, disk1)):
        cache = disk / "hf" / "datasets"
        # once per node, by the node's main process, into the node's own cache
        assert (disk / "probe" / "tokenized.txt").read_text().splitlines() == [f"{rank} {cache}"]
        assert list(cache.rglob("cache-*.arrow")), f"node {rank} has no tokenized cache of its own"
    # written once, by the global main process
    run0, run1 = disk0 / "runs/two_nodes", disk1 / "runs/two_nodes"
    manifest = json.loads((run0 / "manifest.json").read_text())
    assert manifest["status"] == "finished" and manifest["world_size"] == 2
    assert (run0 / "model.safetensors").is_file() and (run0 / "recipe.resolved.yaml").is_file()
    assert {"rng_state_0.pth", "rng_state_1.pth"} - {p.name for p in (run0 / "checkpoint-2").iterdir()} == {
        "rng_state_1.pth"}
    # node 1's local output_dir: no manifest, no model, no resolved recipe; only its rank's checkpoint RNG state
    written = sorted(str(p.relative_to(run1)) for p in run1.rglob("*") if p.is_file()) if run1.exists() else []
    assert written == ["checkpoint-2/rng_state_1.pth"], written
    # and node 1 says so: with output_dir on a node-local disk, --resume cannot continue
    assert "is not visible from the node of process 1" not in said[0]
    assert "output_dir runs/two_nodes is not visible from the node of process 1 (a node-local disk?)" in said[1]
