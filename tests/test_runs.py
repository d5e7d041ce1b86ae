"""Interrupted work resumes, a kill mid-save never looks finished, runs never collide, secrets stay out."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from posttrain import runs

STEPS = ["training.max_steps=40", "training.save_steps=5", "training.logging_steps=1", "training.warmup_steps=0",
         "training.gradient_accumulation_steps=1", "training.learning_rate=5e-3", "training.eval_strategy=no",
         "data.eval_fraction=null"]


def _args(fx, out, *extra):
    return ["alpaca_gpt2", f"model.name_or_path={fx['model']}", f"data.train={fx['alpaca']}", f"output_dir={out}",
            *STEPS, *extra]


def _losses(out):
    return {e["step"]: e["loss"] for e in json.loads((Path(out) / "log_history.json").read_text()) if "loss" in e}


# A training process started ahead of its test: it imports what training needs (seconds of CPU on one core), then
# reads one line from stdin, {"prelude": code, "argv": [...]}, runs the prelude and exits with posttrain's
# main(argv). The module's processes start together when its first test that needs one starts, so their imports
# overlap with each other and with the tests' in-process runs instead of each test waiting for its own.
WARM = """
import json, sys
import peft, torch, transformers, trl  # noqa: F401
import posttrain.stages.sft  # noqa: F401
job = json.loads(sys.stdin.readline())
exec(job["prelude"])
from posttrain.cli import main
raise SystemExit(main(job["argv"]))
"""


@pytest.fixture(scope="module")
def spawn(request):
    """spawn(argv, prelude=""): a started, warm training process running `posttrain` argv (after prelude)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    wanted = sum(item.module is request.module and "spawn" in item.fixturenames for item in request.session.items)
    pool = [subprocess.Popen([sys.executable, "-c", WARM], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for _ in range(max(wanted, 1))]
    started = list(pool)

    def run(argv, prelude=""):
        proc = pool.pop() if pool else subprocess.Popen(
            [sys.executable, "-c", WARM], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)
        started.append(proc)
        proc.stdin.write(json.dumps({"prelude": prelude, "argv": [str(a) for a in argv]}) + "\n")
        proc.stdin.flush()
        return proc

    yield run
    for proc in started:  # those no test took (a deselected test), and any a failed test left running
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.mark.slow
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_sigkill_after_checkpoint_then_resume_matches_uninterrupted(fx, tmp_path, cli, spawn, lora):
    extra = ["peft={r: 4, lora_alpha: 8, target_modules: [c_attn]}"] if lora else []
    ref = tmp_path / "ref"
    assert cli("train", *_args(fx, ref, *extra))[0] == 0

    out = tmp_path / "killed"
    proc = spawn(["train", *_args(fx, out, *extra)])
    deadline = time.time() + 120
    while not runs.checkpoints(out) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    manifest = runs.read_manifest(out)
    assert manifest["status"] == "running" and runs.checkpoints(out)
    newest = runs.checkpoints(out)[-1].name

    code, _, err = cli("train", *_args(fx, out, *extra))
    assert code == 2 and "unfinished run" in err and "--resume" in err
    code, _, err = cli("train", *_args(fx, out, *extra), "--resume")
    assert code == 0, err
    m = runs.read_manifest(out)
    assert m["status"] == "finished" and m["resumed_from"] == newest and m["metrics"]["global_step"] == 40
    assert _losses(out)[40] == pytest.approx(_losses(ref)[40], abs=1e-4)


KILL_MID_SAVE = textwrap.dedent("""
    import os, signal
    from posttrain import runs
    _replace, moved = os.replace, []
    def replace(src, dst):
        _replace(src, dst)
        if runs.SAVING in str(src):
            moved.append(dst)
            if len(moved) == 2:
                os.kill(os.getpid(), signal.SIGKILL)
    runs.os.replace = replace
""")


@pytest.mark.slow
def test_kill_during_final_save_leaves_an_unfinished_run_that_resumes(fx, tmp_path, cli, spawn):
    out = tmp_path / "mid_save"
    proc = spawn(["train", *_args(fx, out, "training.max_steps=5")], prelude=KILL_MID_SAVE)
    proc.communicate(timeout=180)
    assert proc.returncode == -signal.SIGKILL
    assert runs.read_manifest(out)["status"] == "saving"  # never "finished"
    code, _, err = cli("train", *_args(fx, out, "training.max_steps=5"))
    assert code == 2 and "unfinished run" in err
    code, _, err = cli("train", *_args(fx, out, "training.max_steps=5"), "--resume")
    assert code == 0, err
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(out)
    assert runs.read_manifest(out)["status"] == "finished" and not (out / runs.SAVING).exists()


def test_second_run_on_the_same_dir_refuses(fx, tmp_path, cli):
    out = tmp_path / "busy"
    with runs.locked(out):
        code, _, err = cli("train", *_args(fx, out))
    assert code == 2 and "in use by another posttrain run" in err
    assert not (out / "manifest.json").exists()


def test_resume_with_changed_recipe_needs_force(fx, tmp_path, cli):
    out = tmp_path / "changed"
    out.mkdir()
    (out / "checkpoint-5").mkdir()
    (out / "checkpoint-5" / "trainer_state.json").write_text("{}")
    (out / "checkpoint-10").mkdir()  # cut short by a kill: no trainer_state.json
    runs.write_json_atomic(out / "manifest.json", {"status": "running", "recipe_hash": "0000"})
    assert [p.name for p in runs.checkpoints(out)] == ["checkpoint-5"]
    with pytest.raises(runs.RunDirError, match="different recipe"):
        runs.prepare(out, "1111", resume=True, overwrite=False)
    assert runs.prepare(out, "1111", resume=True, overwrite=False, force=True).name == "checkpoint-5"
    with pytest.raises(runs.RunDirError, match="contradict"):
        runs.prepare(out, "1111", resume=True, overwrite=True)


def test_foreign_directory_is_never_cleared(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("precious")
    for resume, overwrite in ((False, False), (True, False), (False, True)):
        with pytest.raises(runs.RunDirError, match="holds no posttrain run"):
            runs.prepare(out, "h", resume=resume, overwrite=overwrite)
    assert (out / "notes.txt").read_text() == "precious"


@pytest.mark.slow
def test_secrets_never_reach_the_run_dir(fx, tmp_path, cli, monkeypatch):
    secret_hf, secret_wandb = "hf_SECRETtoken1234567890", "wandb_SECRET_0987654321"
    monkeypatch.setenv("HF_TOKEN", secret_hf)
    monkeypatch.setenv("WANDB_API_KEY", secret_wandb)
    out = tmp_path / "secrets"
    code, _, err = cli("train", *_args(fx, out, "training.max_steps=2"))
    assert code == 0, err
    for path in out.rglob("*"):
        if path.is_file():
            blob = path.read_bytes()
            assert secret_hf.encode() not in blob and secret_wandb.encode() not in blob, path
    code, _, err = cli("validate", "alpaca_gpt2", f"training.hub_token={secret_hf}", "--no-data")
    assert code == 2 and "training.hub_token: secrets never go in a recipe" in err and secret_hf not in err
