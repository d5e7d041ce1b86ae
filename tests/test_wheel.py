"""The built wheel carries the recipes: installed without the checkout, from an empty directory,
`posttrain recipes` lists them and shipped recipe and pipeline names validate."""

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

    def posttrain(*argv):
        return subprocess.run([sys.executable, "-m", "posttrain", *argv], capture_output=True, text=True, cwd=empty,
                              env=env)

    where = subprocess.run([sys.executable, "-c", "import posttrain; print(posttrain.__file__)"], capture_output=True,
                           text=True, cwd=empty, env=env)
    assert where.stdout.strip().startswith(str(site)), where  # the wheel's copy, not the checkout's
    listed = posttrain("recipes")
    assert listed.returncode == 0, listed.stderr
    for name in ("alpaca_gpt2", "dpo_gpt2", "kto_gpt2", "orpo_gpt2", "rlhf_gpt2"):
        assert name in listed.stdout
    one = posttrain("validate", "alpaca_gpt2", "--no-data")
    assert one.returncode == 0 and "ok: recipe checked (training -> SFTConfig)" in one.stdout, one.stderr
    chain = posttrain("validate", "rlhf_gpt2")
    assert chain.returncode == 0 and "ok: ppo (ppo) after sft, reward" in chain.stdout, chain.stderr
    copied = posttrain("recipes", "copy", "alpaca_gpt2_lora")
    assert copied.returncode == 0, copied.stderr
    assert (empty / "alpaca_gpt2_lora.yaml").is_file() and (empty / "alpaca_gpt2.yaml").is_file()  # and its parent
    again = posttrain("validate", "alpaca_gpt2_lora.yaml", "--no-data")  # the copy, found as a file
    assert again.returncode == 0 and "peft -> LoraConfig" in again.stdout, again.stderr
    assert posttrain("recipes", "copy", "alpaca_gpt2_lora").returncode == 2  # never overwrites silently
