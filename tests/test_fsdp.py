"""FSDP2 over two CPU processes (gloo, recipes/accelerate/fsdp_cpu_2proc.yaml) through `accelerate launch`.

Each launch serves several checks: the model really is sharded (DTensor parameters on both ranks), the
per-step losses equal one process at the same global batch, the saved model loads and generates, and a
run SIGKILLed (the whole process group) after a checkpoint, then resumed, ends on the uninterrupted loss.
The uninterrupted runs (full SFT, packed LoRA SFT, LoRA DPO) share one launch, trained in turn by the same ranks
(one start and one round of imports); the one-process references run in this test process (no launch, no
imports to pay again).
"""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_distributed import REPO, _free_port

pytestmark = pytest.mark.slow  # launches processes

FSDP_CONFIG = REPO / "recipes/accelerate/fsdp_cpu_2proc.yaml"
LAUNCH_TIMEOUT_S = 240
PROBE = REPO / "tests/launch_probe.py"  # posttrain's CLI with FSDP promoted on CPU, and what the ranks see


def _env(**extra) -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **extra}


def _launch_cmd(probe_dir: Path, argv: list[str], config: Path = FSDP_CONFIG, extra: list[str] = ()) -> list[str]:
    probe_dir.mkdir(parents=True, exist_ok=True)
    return [str(Path(sys.executable).parent / "accelerate"), "launch", "--config_file", str(config),
            "--main_process_port", str(_free_port()), *extra, str(PROBE), str(probe_dir), *argv]


def launch(probe_dir: Path, argv: list[str], **env) -> list[dict]:
    """Two FSDP ranks to the end; returns what each rank's probe saw."""
    _run_launch(probe_dir, argv, LAUNCH_TIMEOUT_S, **env)
    return _probes(probe_dir)


def launch_many(probe_dir: Path, runs: list[list[str]]) -> list[list[dict]]:
    """Two FSDP ranks training each argument list in turn (tests/launch_probe.py); per run, what each rank's probe
    saw."""
    _run_launch(probe_dir, [json.dumps(runs)], LAUNCH_TIMEOUT_S * len(runs))
    return [_probes(probe_dir / str(i)) for i in range(len(runs))]


def _run_launch(probe_dir: Path, argv: list[str], timeout_s: float, **env):
    proc = subprocess.Popen(_launch_cmd(probe_dir, argv), env=_env(**env), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=timeout_s)
    finally:
        if proc.poll() is None:  # timed out: the ranks too, not only the launcher
            kill_tree(proc)
    (probe_dir / "stderr.txt").write_text(stderr)
    said = [line for line in stderr.splitlines() if line.startswith(("posttrain:", "[rank"))]
    assert proc.returncode == 0, "\n".join(said[-20:]) or stderr[-4000:]


def kill_tree(proc: subprocess.Popen):
    """SIGKILL the launcher and every process under it. torch's elastic agent starts each rank in a session of
    its own, so killing the launcher's process group leaves the ranks running (and holding the run's lock)."""
    import psutil

    tree = [proc.pid, *(c.pid for c in psutil.Process(proc.pid).children(recursive=True))]
    for pid in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait(30)
    psutil.wait_procs([p for p in map(_process, tree) if p], timeout=30)


def _process(pid: int):
    import psutil

    try:
        return psutil.Process(pid)
    except psutil.NoSuchProcess:
        return None


def _probes(probe_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(probe_dir.glob("probe-*.json"))]


def _assert_sharded(ranks: list[dict]):
    assert [r["world_size"] for r in ranks] == [2, 2], ranks
    assert all(r["fsdp"] and r["sharded"] == r["parameters"] > 0 for r in ranks), ranks


def losses(out: Path) -> list[float]:
    """Per-step training losses from the run's trainer state (log_history.json is its log_history)."""
    return [e["loss"] for e in json.loads((out / "log_history.json").read_text()) if "loss" in e]


def common_args(fx, recipe: str, data: str, steps: int, *extra: str) -> list[str]:
    return [recipe, f"model.name_or_path={fx['model']}", f"data.train={fx[data]}", "data.split=train",
            "data.eval_fraction=null", "data.eval=null", "training.eval_strategy=no", f"training.max_steps={steps}",
            "training.logging_steps=1", "training.warmup_steps=0", "training.gradient_accumulation_steps=1",
            "training.seed=7", *extra]


# SFT's loss is a token mean per rank, averaged over ranks: tokens are weighed slightly differently from one
# process's mean over the whole batch (measured 0.36% full, 0.24% LoRA packed). DPO's is a mean over pairs
# (measured 1e-7).
SFT_REL, DPO_REL = 5e-3, 1e-4
# The resumed run against the uninterrupted one: the same world size, so the same arithmetic (measured: equal).
RESUME_REL = 1e-5


def _one_process(cli, tmp_path, name, args, per_device):
    out = tmp_path / name
    code, _, err = cli("train", *args, f"output_dir={out}", f"training.per_device_train_batch_size={per_device}")
    assert code == 0, err[-3000:]
    return out


def full_args(fx) -> list[str]:
    return common_args(fx, "alpaca_gpt2", "alpaca", 6, "training.learning_rate=5e-3", "training.save_steps=3")


# LoRA runs: case -> (recipe, data, extra overrides, relative tolerance against one process)
LORA = {"sft-lora-packed": ("alpaca_gpt2_lora", "alpaca", ["training.packing=true", "training.learning_rate=5e-3"],
                            SFT_REL),
        "dpo-lora": ("dpo_gpt2_lora", "preference", ["training.learning_rate=5e-3"], DPO_REL)}


def lora_args(fx, case) -> list[str]:
    recipe, data, extra, _ = LORA[case]
    return common_args(fx, recipe, data, 4, "training.save_strategy=no", *extra)


@pytest.fixture(scope="module")
def fsdp_runs(fx, tmp_path_factory):
    """The uninterrupted FSDP runs, two ranks of 2 rows each (a global batch of 4), in one launch: case -> (output
    dir, what each rank's probe saw), and the launch's stderr."""
    root = tmp_path_factory.mktemp("fsdp")
    cases = {"full": full_args(fx), **{case: lora_args(fx, case) for case in LORA}}
    probes = launch_many(root / "probe", [["train", *args, f"output_dir={root / case}",
                                           "training.per_device_train_batch_size=2"] for case, args in cases.items()])
    return {case: (root / case, ranks) for case, ranks in zip(cases, probes)}, (root / "probe" / "stderr.txt").read_text()


def test_fsdp_sft_full_matches_one_process_saves_a_loadable_model_and_resumes_after_sigkill(fx, tmp_path, cli,
                                                                                           fsdp_runs):
    args = full_args(fx)
    single = losses(_one_process(cli, tmp_path, "single", args, 4))

    # uninterrupted, two FSDP ranks, 2 rows each: the same global batch of 4
    (full, ranks), stderr = fsdp_runs[0]["full"], fsdp_runs[1]
    _assert_sharded(ranks)
    double = losses(full)
    # launched as is, Accelerate would run this config as plain data parallel on CPU; posttrain says so
    assert "FSDP with use_cpu: Accelerate runs it on CPU as plain data parallel" in stderr
    assert len(single) == len(double) == 6
    assert double == pytest.approx(single, rel=SFT_REL), (single, double)
    manifest = json.loads((full / "manifest.json").read_text())
    assert manifest["status"] == "finished" and manifest["world_size"] == 2 and manifest["effective_batch"] == 4

    # the full state dict was gathered into one loadable model, and generate runs on it
    from transformers import AutoModelForCausalLM

    saved = AutoModelForCausalLM.from_pretrained(full)
    assert sum(p.numel() for p in saved.parameters()) == manifest["model"]["parameters"]
    code, out, err = cli("generate", full, "--prompt", "Add 2 and 3.", "--max-new-tokens", "4")
    assert code == 0 and out.strip(), err

    # killed (the whole process group) while hanging after checkpoint-3 is written, then --resume
    killed = tmp_path / "killed"
    cmd = _launch_cmd(tmp_path / "probe-killed", ["train", *args, f"output_dir={killed}",
                                                  "training.per_device_train_batch_size=2"])
    proc = subprocess.Popen(cmd, env=_env(HANG_AFTER_SAVE="3"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        deadline = time.time() + LAUNCH_TIMEOUT_S
        while not (killed / "checkpoint-3" / "trainer_state.json").exists():
            assert proc.poll() is None, proc.stderr.read()[-4000:]
            assert time.time() < deadline, "no checkpoint-3 in time"
            time.sleep(0.5)
        time.sleep(1)  # both ranks past the save, hanging in on_save
    finally:
        kill_tree(proc)
    assert json.loads((killed / "manifest.json").read_text())["status"] == "running"  # nobody got to write
    # an FSDP checkpoint: the gathered model, the optimizer state, one RNG state per rank
    assert {"pytorch_model_fsdp.bin", "optimizer.bin", "rng_state_0.pth", "rng_state_1.pth"} <= {
        p.name for p in (killed / "checkpoint-3").iterdir()}
    _assert_sharded(launch(tmp_path / "probe-resumed", ["train", *args, f"output_dir={killed}",
                                                        "training.per_device_train_batch_size=2", "--resume"]))
    resumed = json.loads((killed / "manifest.json").read_text())
    assert resumed["status"] == "finished" and resumed["resumed_from"] == "checkpoint-3"
    assert losses(killed)[3:] == pytest.approx(double[3:], rel=RESUME_REL), (double, losses(killed))
    assert resumed["metrics"]["last_logged_loss"] == pytest.approx(double[-1], rel=RESUME_REL)


@pytest.mark.parametrize("case", list(LORA))
def test_fsdp_lora_matches_one_process(fx, tmp_path, cli, fsdp_runs, case):
    args, rel = lora_args(fx, case), LORA[case][3]
    single = losses(_one_process(cli, tmp_path, "single", args, 4))
    out, ranks = fsdp_runs[0][case]
    _assert_sharded(ranks)
    double = losses(out)
    assert len(single) == len(double) == 4
    assert double == pytest.approx(single, rel=rel), (single, double)
    assert double[-1] != double[0]  # it trained
    assert (out / "adapter_model.safetensors").is_file()
    code, text, err = cli("generate", out, "--prompt", "Add 2 and 3.", "--max-new-tokens", "4")
    assert code == 0, err
