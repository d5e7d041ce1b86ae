"""Under DDP, preprocessing longer than the collective timeout neither hangs nor times out the job.

Two gloo ranks; rank 0's tokenization is made slower (SLOW_S) than a deliberately small
training.ddp_timeout. The run must finish, and a control barrier in the same processes must time out
after it: the small timeout really is the one in force, and the tokenization wait did not use it.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

from test_distributed import REPO, _free_port

SLOW_S, TIMEOUT_S = 6, 2
PROBE = """
import json, os, sys, time
from posttrain.cli import main
from posttrain.stages import sft

real = sft.tokenize_dataset
def slow(*args, **kwargs):
    if os.environ["RANK"] == "0":
        time.sleep(float(os.environ["SLOW_S"]))
    return real(*args, **kwargs)
sft.tokenize_dataset = slow

code = main(sys.argv[2:])
import torch.distributed as dist
rank, t0, timed_out = os.environ["RANK"], time.time(), None
if rank == "1":  # control: a collective rank 0 never joins must fail after training.ddp_timeout
    try:
        dist.barrier()
        timed_out = False
    except Exception:
        timed_out = True
else:
    time.sleep(float(os.environ["SLOW_S"]))
with open(os.path.join(sys.argv[1], f"rank{rank}.json"), "w") as f:
    json.dump({"code": code, "control_timed_out": timed_out, "control_s": time.time() - t0}, f)
os._exit(code)
"""


def test_slow_tokenization_outlives_a_small_ddp_timeout(fx, tmp_path):
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "SLOW_S": str(SLOW_S),
           "HF_DATASETS_CACHE": str(tmp_path / "hf_datasets")}
    cmd = [str(Path(sys.executable).parent / "accelerate"), "launch", "--config_file",
           str(REPO / "recipes/accelerate/cpu_2proc.yaml"), "--num_processes", "2",
           "--main_process_port", str(_free_port()), str(script), str(tmp_path),
           "train", "alpaca_gpt2", f"model.name_or_path={fx['model']}", f"data.train={fx['alpaca']}",
           "data.split=train", "data.eval_fraction=null", "training.eval_strategy=no", "training.max_steps=1",
           "training.per_device_train_batch_size=2", "training.gradient_accumulation_steps=1",
           "training.save_strategy=no", f"training.ddp_timeout={TIMEOUT_S}", f"output_dir={out}"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stderr[-12000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["code"] for r in ranks] == [0, 0]
    assert json.loads((out / "manifest.json").read_text())["status"] == "finished"
    assert ranks[1]["control_timed_out"] is True, ranks
    assert TIMEOUT_S - 1 < ranks[1]["control_s"] < SLOW_S, ranks  # it was the recipe's timeout, not 30 min
