"""The Accelerate launch, read before launch (posttrain/launch.py): every shipped launcher config is read
as what it is, impossible combinations are refused in one line by `validate` and `plan`, and `plan` shows
per-device memory sharded over the launch's processes, checked against figures computed by hand from
Llama-3.1-8B's published config (tests/data/configs/llama-3.1-8b)."""

from pathlib import Path

import pytest
from conftest import error_lines

from posttrain import launch
from posttrain.checks import load_recipe
from posttrain.plan import GIB, estimate

REPO = Path(__file__).resolve().parent.parent
ACCEL = REPO / "recipes" / "accelerate"
LLAMA_8B = Path(__file__).parent / "data" / "configs" / "llama-3.1-8b"
# Llama-3.1-8B: 32 layers, hidden 4096, 32 heads with 8 kv heads of 128, gated MLP 14336, vocab 128256, untied head
P_8B = 2 * 128256 * 4096 + 32 * (2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 14336 + 2 * 4096) + 4096


@pytest.mark.parametrize("name,sharding,processes,machines,use_cpu", [
    ("cpu_2proc", "ddp", 2, 1, True), ("ddp", "ddp", 8, 1, False), ("fsdp", "fsdp", 8, 1, False),
    ("fsdp_cpu_2proc", "fsdp", 2, 1, True), ("deepspeed_zero2", "zero2", 8, 1, False),
    ("deepspeed_zero3", "zero3", 8, 1, False), ("multi_node", "ddp", 16, 2, False),
    ("single_gpu", "none", 1, 1, False)])
def test_every_shipped_launcher_config_reads_as_what_it_is(name, sharding, processes, machines, use_cpu):
    got = launch.from_config(ACCEL / f"{name}.yaml")
    assert (got.sharding, got.processes, got.machines, got.use_cpu) == (sharding, processes, machines, use_cpu)
    assert not (got.offload_params or got.offload_optimizer)


def test_the_environment_accelerate_sets_is_read_like_its_config(tmp_path, monkeypatch):
    monkeypatch.setattr(launch, "_cuda", lambda: True)
    env = {"WORLD_SIZE": "4", "ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3",
           "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE": "cpu", "ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE": "none"}
    assert launch.from_environment(env) == launch.Launch("zero3", 4, offload_optimizer=True)
    assert launch.from_environment({"WORLD_SIZE": "2", "ACCELERATE_USE_FSDP": "true", "FSDP_OFFLOAD_PARAMS": "true"}) \
        == launch.Launch("fsdp", 2, offload_params=True, offload_optimizer=True)
    assert launch.from_environment({"WORLD_SIZE": "2"}) == launch.Launch("ddp", 2)
    assert launch.from_environment({}) is None
    named = launch.from_environment({"ACCELERATE_CONFIG_FILE": str(ACCEL / "fsdp.yaml"), "WORLD_SIZE": "3"})
    assert named.sharding == "fsdp" and named.processes == 8  # the file wins over what the env implies


def _validate(cli, *args):
    code, out, err = cli("validate", *args, "--no-data")
    return code, out, err.strip()


def test_deepspeed_not_installed_is_one_line(cli, fx, monkeypatch):
    monkeypatch.setattr("posttrain.needs.installed", lambda module: module != "deepspeed")
    code, _, err = _validate(cli, "alpaca_gpt2", f"model.name_or_path={fx['model']}",
                             "--accelerate-config", ACCEL / "deepspeed_zero2.yaml")
    assert code == 2 and len(error_lines(err)) == 1, err
    assert "deepspeed_zero2.yaml launches DeepSpeed ZeRO-2, but the `deepspeed` package is not installed" in err


@pytest.mark.parametrize("config", ["deepspeed_zero3", "fsdp"])
def test_qlora_under_zero3_or_fsdp_needs_the_quant_storage_dtype(cli, fx, monkeypatch, config):
    monkeypatch.setattr("posttrain.needs.installed", lambda module: True)
    qlora = ["alpaca_gpt2_qlora", f"model.name_or_path={fx['model']}"]
    code, _, err = _validate(cli, *qlora, "--accelerate-config", ACCEL / f"{config}.yaml")
    assert code == 2 and len(error_lines(err)) == 1, err
    assert "alpaca_gpt2_qlora.yaml" in err and "quantization: QLoRA under" in err
    assert "set quantization.bnb_4bit_quant_storage:" in err
    code, out, err = _validate(cli, *qlora, "quantization.bnb_4bit_quant_storage=float32",
                               "--accelerate-config", ACCEL / f"{config}.yaml")
    assert code == 0, err
    assert f"from {ACCEL / config}.yaml" in out
    # the same refusal when the launch comes from the environment accelerate sets in each rank
    monkeypatch.setenv("ACCELERATE_CONFIG_FILE", str(ACCEL / f"{config}.yaml"))
    code, _, err = _validate(cli, *qlora)
    assert code == 2 and "bnb_4bit_quant_storage" in err


def test_cpu_offload_of_a_model_bigger_than_host_ram_is_refused(cli, tmp_path, monkeypatch):
    monkeypatch.setattr("posttrain.needs.installed", lambda module: True)
    monkeypatch.setattr(launch, "host_ram_bytes", lambda: 64 * GIB)
    cfg = tmp_path / "zero3_offload.yaml"
    cfg.write_text((ACCEL / "deepspeed_zero3.yaml").read_text().replace("offload_optimizer_device: none",
                                                                         "offload_optimizer_device: cpu"))
    args = ["alpaca_gpt2", f"model.name_or_path={LLAMA_8B}", "--accelerate-config", cfg]
    code, _, err = _validate(cli, *args)
    # full fine-tuning: fp32 master weights, gradients and two AdamW states per parameter on the host
    assert code == 2 and len(error_lines(err)) == 1, err
    assert f"this model needs {P_8B * 16 / GIB:.1f} GiB of host memory per machine, this machine has 64.0 GiB" in err
    assert f"{P_8B * 16 / GIB:.1f}" == "119.7"
    # LoRA: only the adapter's optimizer is offloaded, which fits
    code, _, err = _validate(cli, "alpaca_gpt2_lora", f"model.name_or_path={LLAMA_8B}", "--accelerate-config", cfg)
    assert code == 0, err


def test_plan_shards_llama_8b_per_device_as_computed_by_hand(cli, fx):
    assert P_8B == 8_030_261_248
    recipe = load_recipe("alpaca_gpt2", [f"model.name_or_path={LLAMA_8B}"])
    one = estimate(recipe)
    assert one["params"] == P_8B
    # full fine-tuning in bf16: weights 2 B, gradients 2 B, AdamW states 2 x 2 B per parameter
    assert one["parts"]["weights"] == one["parts"]["gradients"] == P_8B * 2
    assert one["parts"]["optimizer"] == P_8B * 4
    fsdp = estimate(recipe, 8, "fsdp")
    for part, per_param in (("weights", 2), ("gradients", 2), ("optimizer", 4)):
        assert fsdp["parts"][part] == P_8B * per_param / 8  # 1.87, 1.87, 3.74 GiB
    assert fsdp["parts"]["activations"] == one["parts"]["activations"]  # each device runs its own batch
    zero2 = estimate(recipe, 8, "zero2")
    assert zero2["parts"]["weights"] == P_8B * 2 and zero2["parts"]["optimizer"] == P_8B * 4 / 8
    assert estimate(recipe, 8, "zero3")["parts"] == fsdp["parts"]

    # the command line: --nproc N --sharding fsdp, and the same read from the launch config (fsdp.yaml: 8)
    data = [f"data.train={fx['alpaca']}", "data.split=train"]
    by_hand = cli("plan", "alpaca_gpt2", f"model.name_or_path={LLAMA_8B}", *data, "--nproc", "8", "--sharding", "fsdp")
    from_config = cli("plan", "alpaca_gpt2", f"model.name_or_path={LLAMA_8B}", *data,
                      "--accelerate-config", ACCEL / "fsdp.yaml")
    assert by_hand[0] == from_config[0] == 0 and by_hand[1] == from_config[1]
    lines = by_hand[1].splitlines()
    assert "8 GPUs, fsdp" in lines[0]
    assert f"  weights       {P_8B * 2 / 8 / GIB:8.2f} GiB" in lines  # 1.87 GiB
    assert f"  optimizer     {P_8B * 4 / 8 / GIB:8.2f} GiB" in lines  # 3.74 GiB
    single = cli("plan", "alpaca_gpt2", f"model.name_or_path={LLAMA_8B}", *data, "--gpu-gib", "80")
    assert f"  weights       {P_8B * 2 / GIB:8.2f} GiB" in single[1].splitlines()  # 14.96 GiB unsharded


def test_train_refuses_in_the_ranks_before_any_weights_or_run_dir(cli, fx, tmp_path, monkeypatch):
    """Under `accelerate launch` each rank sees the launch in its environment; train checks it first."""
    monkeypatch.setattr("posttrain.needs.installed", lambda module: True)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    out = tmp_path / "run"
    code, _, err = cli("train", "alpaca_gpt2_qlora", f"model.name_or_path={fx['model']}", f"output_dir={out}")
    assert code == 2 and len(error_lines(err)) == 1, err
    assert "QLoRA under FSDP (accelerate's environment)" in err and "bnb_4bit_quant_storage" in err
    assert not out.exists()


def test_a_pipeline_is_checked_against_the_launch_too(cli, fx, tmp_path, monkeypatch):
    monkeypatch.setattr("posttrain.needs.installed", lambda module: True)
    p = tmp_path / "pipe.yaml"
    p.write_text(f"stages:\n  sft: {{recipe: alpaca_gpt2_qlora, model.name_or_path: {fx['model']}, "
                 f"data.train: {fx['alpaca']}}}\n")
    code, _, err = cli("validate", p, "--accelerate-config", ACCEL / "deepspeed_zero3.yaml")
    errors = error_lines(err)
    assert code == 2 and len(errors) == 1, err
    assert errors[0].startswith("stage sft (alpaca_gpt2_qlora.yaml): ") and "bnb_4bit_quant_storage" in errors[0]
