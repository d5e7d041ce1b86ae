"""The built wheel carries the recipes: installed without the checkout, from an empty directory,
`posttrain recipes` lists them and shipped recipe and pipeline names validate.

`python -m posttrain recipes` runs as its own process; the commands after it run one after another in one more
process (posttrain's CLI main on the wheel's copy), which pays the imports of validate once instead of three times.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent


def test_wheel_ships_recipes_and_validates_them_outside_the_checkout(tmp_path):
    dist, site, empty = tmp_path / "dist", tmp_path / "site", tmp_path / "empty"
    empty.mkdir()
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(dist), str(REPO)], capture_output=True, text=True, cwd=tmp_path)
    assert build.returncode == 0, build.stderr
    wheel = next(dist.glob("posttrain-*.whl"))
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site),
                              str(wheel)], capture_output=True, text=True)
    assert install.returncode == 0, install.stderr
    env = {**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1"}

    listed = subprocess.run([sys.executable, "-m", "posttrain", "recipes"], capture_output=True, text=True, cwd=empty,
                            env=env)
    assert listed.returncode == 0, listed.stderr
    for name in ("alpaca_gpt2", "dpo_gpt2", "kto_gpt2", "orpo_gpt2", "rlhf_gpt2"):
        assert name in listed.stdout
    assert "qwen3/8b_qlora" in listed.stdout and "llama3_sft_dpo" in listed.stdout
    where, (one, chain, copied, again, copied_again, family) = _in_one_process(env, empty, [
        ["validate", "alpaca_gpt2", "--no-data"], ["validate", "rlhf_gpt2"], ["recipes", "copy", "alpaca_gpt2_lora"],
        ["validate", "alpaca_gpt2_lora.yaml", "--no-data"], ["recipes", "copy", "alpaca_gpt2_lora"],
        ["plan", "llama3/8b_qlora", "--gpu-gib", "24"]])
    assert where.startswith(str(site)), where  # the wheel's copy, not the checkout's
    assert one.returncode == 0 and "ok: recipe checked (training -> SFTConfig)" in one.stdout, one.stderr
    assert chain.returncode == 0 and "ok: ppo (ppo) after sft, reward" in chain.stdout, chain.stderr
    assert copied.returncode == 0, copied.stderr
    assert (empty / "alpaca_gpt2_lora.yaml").is_file() and (empty / "alpaca_gpt2.yaml").is_file()  # and its parent
    # the copy, found as a file
    assert again.returncode == 0 and "peft -> LoraConfig" in again.stdout, again.stderr
    assert copied_again.returncode == 2  # never overwrites silently
    # a family recipe plans offline from the published config the wheel carries
    assert family.returncode == 0 and "8.05e+03M parameters" in family.stdout and "fits a 24 GiB GPU" in family.stdout, \
        family.stderr


# Runs posttrain's CLI main on each argument list in turn, in this process, each one's exit code and output caught
# (`python -m posttrain` turns main's return value into the exit code); prints where posttrain was imported from
# and the results as JSON.
MANY = """
import contextlib, io, json, sys
import posttrain
from posttrain.cli import main

results = []
for argv in json.loads(sys.argv[1]):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code
    results.append({"returncode": code, "stdout": out.getvalue(), "stderr": err.getvalue()})
print(json.dumps({"file": posttrain.__file__, "results": results}))
"""


def _in_one_process(env, cwd, commands):
    done = subprocess.run([sys.executable, "-c", MANY, json.dumps(commands)], capture_output=True, text=True, cwd=cwd,
                          env=env)
    assert done.returncode == 0, done.stderr
    said = json.loads(done.stdout.strip().splitlines()[-1])
    return said["file"], [subprocess.CompletedProcess(argv, r["returncode"], r["stdout"], r["stderr"])
                          for argv, r in zip(commands, said["results"])]
