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

import pytest
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
else:  # stays up, out of the collective, until rank 1's barrier has ended (or SLOW_S * 10 has passed)
    while not os.path.exists(os.path.join(sys.argv[1], "rank1.json")) and time.time() - t0 < 10 * float(os.environ["SLOW_S"]):
        time.sleep(0.05)
with open(os.path.join(sys.argv[1], f"rank{rank}.json.tmp"), "w") as f:
    json.dump({"code": code, "control_timed_out": timed_out, "control_s": time.time() - t0}, f)
os.replace(os.path.join(sys.argv[1], f"rank{rank}.json.tmp"), os.path.join(sys.argv[1], f"rank{rank}.json"))
os._exit(code)
"""


@pytest.mark.slow
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


def test_a_failure_during_preprocessing_stops_the_other_ranks_with_its_line(monkeypatch):
    """In-process, with a plain key-value store standing in for the process group's: the main process posts
    its error, and a replica waiting for it raises that one line instead of waiting forever."""
    import pytest
    import torch.distributed as dist
    from torch.distributed import distributed_c10d

    from posttrain.errors import DataError, PosttrainError
    from posttrain.stages import common

    store = dist.HashStore()
    monkeypatch.setattr(distributed_c10d, "_get_default_store", lambda: store)
    monkeypatch.setattr(common, "distributed_state", lambda timeout_s=None: None)
    monkeypatch.setattr(common, "_prep_calls", iter([7, 7]))  # both "ranks" run the same (7th) block
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(DataError), common.main_process_first("tokenizing"):
        raise DataError("rows.jsonl: no column 'output'")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(PosttrainError, match="^rows.jsonl: no column 'output'$"), common.main_process_first("tokenizing"):
        raise AssertionError("a replica must not run the block after the main process failed")
