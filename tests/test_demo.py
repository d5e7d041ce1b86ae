"""The demo's wiring, end to end on a tiny model (DEMO_FAST), plus `posttrain generate` and `report` on its runs.

Fast mode measures nothing meaningful, so these tests check that every number is there, not that it moved.
"""

import json
import math

import pytest

from posttrain.demo import data as demo_data
from posttrain.demo.run import FAST_SIZES


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from posttrain.demo.run import run_demo

    root = tmp_path_factory.mktemp("demo")
    assert run_demo(root, fast=True) == 0
    return root


def _numbers(node):
    if isinstance(node, dict):
        for v in node.values():
            yield from _numbers(v)
    elif isinstance(node, list):
        for v in node:
            yield from _numbers(v)
    elif isinstance(node, (int, float)) and not isinstance(node, bool):
        yield node


@pytest.mark.slow
def test_demo_runs_every_stage_and_measures_it(demo, capsys):
    pipeline = json.loads((demo / "pipeline.json").read_text())
    assert pipeline["status"] == "finished"
    statuses = {s["stage"]: s["status"] for s in pipeline["stages"]}
    assert statuses == dict.fromkeys(("sft", "reward", "ppo", "dpo"), "ran")
    result = json.loads((demo / "demo.json").read_text())
    assert result["fast"] is True and pipeline["demo"]["policies"].keys() == result["policies"].keys()
    assert set(result["policies"]) == {"base", "sft", "ppo", "dpo"}
    for name, m in result["policies"].items():
        keys = ("exact_match", "reward_score") + (("preference_accuracy",) if name in ("sft", "dpo") else ())
        for key in keys:
            assert isinstance(m[key], float) and math.isfinite(m[key]), (name, key)
        assert len(m["answers"]) == result["held_out"]["prompts"]
    for key in ("before", "after"):
        assert 0 <= result["reward_model"][key]["accuracy"] <= 1
    for name in ("ppo", "dpo"):  # paired against SFT: the exact-match difference is gained - lost
        vs, n = result["policies"][name]["vs_sft"], result["held_out"]["prompts"]
        em = result["policies"][name]["exact_match"] - result["policies"]["sft"]["exact_match"]
        assert math.isclose(em, (vs["gained"] - vs["lost"]) / n, abs_tol=1e-9), name
    assert {"accuracy", "margin", "beta"} <= set(result["dpo"])
    assert result["ppo"]["updates"] == 2 and math.isfinite(result["ppo"]["kl_last"])
    assert all(math.isfinite(x) for x in _numbers(result))


@pytest.mark.slow
def test_demo_lm_eval_row_gives_the_demos_own_answers(demo):
    """lm-eval on the same held-out prompts: the same prompts, the same greedy answers, the same exact match."""
    pytest.importorskip("lm_eval")
    result = json.loads((demo / "demo.json").read_text())
    prompts = [json.loads(line) for line in next((demo / "data").glob("*/prompts_heldout.jsonl")).read_text().splitlines()]
    for name, m in result["policies"].items():
        samples = json.loads((demo / name / "eval.json").read_text())["samples"]["demo_heldout"]
        assert [s["prompt"] for s in samples] == [p["prompt"] for p in prompts], name
        assert [s["response"][0].strip() for s in samples] == m["answers"], name
        assert m["lm_eval_exact_match"] == m["exact_match"], name


@pytest.mark.slow
def test_demo_prints_the_table(demo, capsys):
    from posttrain.demo.run import table

    text = table(json.loads((demo / "demo.json").read_text()))
    for needle in ("exact match", "base", "sft", "ppo", "dpo", "reward model accuracy", "DPO implicit reward",
                   "PPO over 2 updates", "relative to SFT"):
        assert needle in text


def test_splits_never_overlap_and_are_deterministic(tmp_path):
    a = demo_data.write_all(tmp_path / "a", {"train": 240, "dev": 24, "heldout": 24})
    b = demo_data.write_all(tmp_path / "b", {"train": 240, "dev": 24, "heldout": 24})
    assert all(a[k].read_text() == b[k].read_text() for k in a)

    def keys(name):
        return {(r["task"], r["item"]) for r in map(json.loads, a[name].read_text().splitlines())}

    train = keys("sft_train") | keys("pairs_train") | keys("prompts_train")
    assert not train & keys("sft_heldout") and not train & keys("sft_dev")
    assert not keys("sft_dev") & keys("sft_heldout")
    pairs = [json.loads(line) for line in a["pairs_train"].read_text().splitlines()]
    assert all(p["chosen"] != p["rejected"] for p in pairs)
    assert len({r["task"] for r in pairs}) == len(demo_data.TASKS)


@pytest.mark.slow
def test_generate_uses_the_runs_template(demo, cli):
    from posttrain.generate import run_template

    assert run_template(demo / "sft") == "alpaca"
    assert run_template(demo / "dpo") == "alpaca"  # via the SFT run it started from
    assert run_template(demo / "ppo") == "alpaca"
    for run in ("sft", "dpo", "ppo"):  # LoRA adapters, merged in memory
        code, out, err = cli("generate", demo / run, "--prompt", "What is 2 + 3?", "--max-new-tokens", "4")
        assert code == 0, err
        assert "template: alpaca" in out
    code, _, err = cli("generate", demo / "reward", "--prompt", "hi")
    assert code == 2 and "reward model" in err


@pytest.mark.slow
def test_report_writes_plots_and_summary(demo, cli):
    pytest.importorskip("matplotlib")
    code, out, err = cli("report", demo)
    assert code == 0, err
    for name in ("loss_sft.png", "loss_reward.png", "loss_dpo.png", "ppo_ppo.png", "accuracy.png", "report.md"):
        assert (demo / name).is_file() and (demo / name).stat().st_size > 0, name
    md = (demo / "report.md").read_text()
    assert "| sft | sft | finished |" in md and "exact match" in md and "![accuracy](accuracy.png)" in md
    assert "relative to SFT (same prompts): ppo +" in md
    code, _, err = cli("report", demo / "sft")  # a single run dir
    assert code == 0, err
    assert (demo / "sft" / "report.md").is_file() and (demo / "sft" / "loss_sft.png").is_file()


def test_prepare_only_writes_model_and_data_and_trains_nothing(tmp_path, cli):
    code, out, err = cli("demo", "--fast", "--prepare-only", "--root", tmp_path)
    assert code == 0, err
    assert "demo prepared" in out
    data = list((tmp_path / "data").glob("*/sft_train.jsonl"))
    assert len(data) == 1 and data[0].read_text().count("\n") == FAST_SIZES["train"] // 2  # the SFT half of train
    assert (tmp_path / "tiny-model" / "config.json").is_file()
    assert not (tmp_path / "sft").exists() and not (tmp_path / "pipeline.json").exists()


@pytest.mark.slow
def test_recipe_trains_straight_from_a_gguf_file(fx, tmp_path, cli):
    """`model.gguf_file`: a recipe trains from a GGUF checkpoint (dequantized on load, LoRA on top). Needs the
    demo's GGUF in the cache (`make demo ARGS=--prepare-only`) and the `gguf` package; skipped without them."""
    pytest.importorskip("gguf")
    from posttrain.demo import model as demo_model

    gguf = demo_model.cache_dir() / "gguf" / demo_model.GGUF_NAME
    if not gguf.is_file():
        pytest.skip(f"no {gguf} (run `make demo ARGS=--prepare-only` once)")
    out = tmp_path / "run"
    code, _, err = cli("train", "recipes/demo/sft.yaml", f"model.name_or_path={gguf.parent}",
                       f"model.gguf_file={gguf.name}", f"data.train={fx['alpaca']}", "data.eval=null",
                       "training.max_steps=1", "training.per_device_train_batch_size=2", f"output_dir={out}")
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "finished"
    assert (out / "adapter_model.safetensors").is_file()
