"""recipes/slurm/posttrain.sbatch run as Slurm would run it, with fake `scontrol`, `srun` and `accelerate` on
PATH: scontrol expands the node list, srun runs its command once per node with that node's SLURM_NODEID (as a
step with --ntasks-per-node=1 does), and accelerate writes the arguments it got. Checks the exact launch
command on every node."""

import os
import stat
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # runs the sbatch script (bash) with fake Slurm commands

REPO = Path(__file__).resolve().parent.parent
SBATCH = REPO / "recipes" / "slurm" / "posttrain.sbatch"

FAKES = {
    # `scontrol show hostnames LIST`: what Slurm expands gpu-[07-08] to
    "scontrol": 'test "$1 $2" = "show hostnames" && test "$3" = "$SLURM_JOB_NODELIST" && printf "gpu-07\\ngpu-08\\n"\n',
    # one task per node, each with its own SLURM_NODEID; record srun's own options
    "srun": 'printf "%s\\n" "$1" "$2" > "$FAKE_OUT/srun.args"; shift 2\n'
            'for id in $(seq 0 $((SLURM_JOB_NUM_NODES - 1))); do SLURM_NODEID=$id "$@" || exit $?; done\n',
    "accelerate": 'printf "%s\\n" "$@" > "$FAKE_OUT/node$SLURM_NODEID.args"\n',
}


@pytest.fixture
def fake_slurm(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in FAKES.items():
        path = bin_dir / name
        path.write_text("#!/bin/bash\n" + body)
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_OUT": str(tmp_path), "HOME": str(tmp_path),
           "SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "gpu-[07-08]", "SLURM_JOB_NUM_NODES": "2",
           "SLURM_NNODES": "2", "SLURM_GPUS_PER_NODE": "h100:8", "SLURM_SUBMIT_DIR": str(REPO)}

    def run(*args, **extra):
        return subprocess.run(["bash", str(SBATCH), *args], env={**env, **extra}, cwd=tmp_path,
                              capture_output=True, text=True, timeout=60)

    return run, tmp_path


def test_sbatch_launches_one_accelerate_per_node_with_its_machine_rank(fake_slurm):
    run, out = fake_slurm
    done = run("train", "alpaca_gpt2", "training.max_steps=10", "data.train=my data/rows.jsonl")
    assert done.returncode == 0, done.stderr
    assert (out / "srun.args").read_text().splitlines() == ["--nodes=2", "--ntasks-per-node=1"]
    for node in (0, 1):
        assert (out / f"node{node}.args").read_text().splitlines() == [
            "launch", "--config_file", f"{REPO}/recipes/accelerate/ddp.yaml",
            "--num_machines", "2", "--num_processes", "16", "--machine_rank", str(node),
            "--main_process_ip", "gpu-07", "--main_process_port", str(20000 + 4242 % 10000),
            "-m", "posttrain", "train", "alpaca_gpt2", "training.max_steps=10", "data.train=my data/rows.jsonl"]
    assert "2 node(s) x 8 GPU(s), main gpu-07:24242" in done.stderr


def test_sbatch_pipeline_with_another_launcher_config_and_port(fake_slurm):
    run, out = fake_slurm
    done = run("pipeline", "rlhf_gpt2", ACCEL="fsdp", MAIN_PORT="29600", SLURM_GPUS_PER_NODE="4")
    assert done.returncode == 0, done.stderr
    args = (out / "node1.args").read_text().splitlines()
    assert args[args.index("--config_file") + 1] == f"{REPO}/recipes/accelerate/fsdp.yaml"
    assert args[args.index("--num_processes") + 1] == "8" and args[args.index("--machine_rank") + 1] == "1"
    assert args[args.index("--main_process_port") + 1] == "29600"
    assert args[-4:] == ["-m", "posttrain", "pipeline", "rlhf_gpt2"]


@pytest.mark.parametrize("argv", [[], ["generate", "runs/x"], ["train"]])
def test_sbatch_refuses_what_it_cannot_launch(fake_slurm, argv):
    run, out = fake_slurm
    done = run(*argv)
    assert done.returncode == 2 and done.stderr.startswith("usage: sbatch posttrain.sbatch")
    assert not list(out.glob("node*.args"))
