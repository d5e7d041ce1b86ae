"""`posttrain eval` (lm-evaluation-harness) on tiny runs: full, LoRA, chat template; local tasks; refusals."""

import json
import shutil
from pathlib import Path

import pytest
from conftest import manifest, one_error_line

from posttrain.recipe import RECIPES_DIR

pytest.importorskip("lm_eval")

TASKS = RECIPES_DIR / "eval"
ARITH, CAPITALS = TASKS / "arithmetic.yaml", TASKS / "capitals.yaml"
TRAIN = ["training.max_steps=1", "training.warmup_steps=0", "training.eval_strategy=no", "data.eval_fraction=null",
         "training.save_strategy=no"]


def _train(cli, fx, out, recipe="alpaca_gpt2", *extra):
    code, _, err = cli("train", recipe, f"model.name_or_path={fx['model']}", f"data.train={fx['alpaca']}",
                       f"output_dir={out}", *TRAIN, *extra)
    assert code == 0, err
    return out


@pytest.fixture(scope="module")
def sft_run(fx, tmp_path_factory):
    from posttrain.cli import main

    out = tmp_path_factory.mktemp("eval") / "sft"
    assert main(["train", "alpaca_gpt2", f"model.name_or_path={fx['model']}", f"data.train={fx['alpaca']}",
                 f"output_dir={out}", *TRAIN]) == 0
    return out


@pytest.mark.slow
def test_eval_writes_metrics_into_the_manifest_with_prompts_in_the_runs_template(sft_run, cli, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # the task's data_files are relative to the task file, not the cwd
    code, out, err = cli("eval", sft_run, "--tasks", f"{ARITH},{CAPITALS}", "--limit", "3", "--batch-size", "2")
    assert code == 0, err
    assert "posttrain_arithmetic  exact_match" in out and "posttrain_capitals" in out
    ev = manifest(sft_run)["eval"]
    assert manifest(sft_run)["status"] == "finished"  # the training record is kept
    arith = ev["posttrain_arithmetic"]
    assert arith["limit"] == 3 and arith["samples"] == 3 and arith["template"] == "alpaca"
    assert arith["lm_eval_version"] and 0 <= arith["metrics"]["exact_match"]["value"] <= 1
    assert set(ev["posttrain_capitals"]["metrics"]) == {"acc"}
    record = json.loads((sft_run / "eval.json").read_text())
    first = json.loads((TASKS / "arithmetic.jsonl").read_text().splitlines()[0])
    from posttrain.data.formats import alpaca_prompt

    assert record["samples"]["posttrain_arithmetic"][0]["prompt"] == alpaca_prompt(first["instruction"])
    assert record["samples"]["posttrain_arithmetic"][0]["target"] == first["answer"]

    code, _, err = cli("eval", sft_run, "--tasks", str(ARITH), "--limit", "2", "--no-chat-template")
    assert code == 0, err
    record = json.loads((sft_run / "eval.json").read_text())
    assert record["samples"]["posttrain_arithmetic"][0]["prompt"] == first["instruction"]
    ev = manifest(sft_run)["eval"]
    assert ev["posttrain_arithmetic"]["limit"] == 2 and "posttrain_capitals" in ev  # one task replaced, others kept


@pytest.mark.slow
def test_eval_of_a_lora_run_loads_the_adapter_on_its_base(fx, tmp_path, cli):
    run = _train(cli, fx, tmp_path / "lora", "alpaca_gpt2_lora", "peft.target_modules=[c_attn]",
                 "training.learning_rate=0.5")
    code, out, err = cli("eval", run, "--tasks", str(CAPITALS), "--limit", "2")
    assert code == 0, err
    assert manifest(run)["eval"]["posttrain_capitals"]["metrics"]["acc"]["value"] in (0, 0.5, 1)

    from posttrain.generate import load_policy

    merged, _ = load_policy(run)
    base, _ = load_policy(fx["model"])
    assert not all((a == b).all() for a, b in zip(merged.state_dict().values(), base.state_dict().values()))


@pytest.mark.slow
def test_eval_of_a_chat_run_renders_prompts_with_the_runs_chat_template(fx, tmp_path, cli):
    template = "{% for m in messages %}[[{{ m['role'] }}]] {{ m['content'] }}\n{% endfor %}" \
               "{% if add_generation_prompt %}[[assistant]] {% endif %}"
    jinja = tmp_path / "t.jinja"
    jinja.write_text(template)
    run = _train(cli, fx, tmp_path / "chat", "alpaca_gpt2", "data.format=messages", f"data.train={fx['messages']}",
                 f"model.chat_template={jinja}")
    code, _, err = cli("eval", run, "--tasks", str(ARITH), "--limit", "1")
    assert code == 0, err
    first = json.loads((TASKS / "arithmetic.jsonl").read_text().splitlines()[0])
    prompt = json.loads((run / "eval.json").read_text())["samples"]["posttrain_arithmetic"][0]["prompt"]
    assert prompt == f"[[user]] {first['instruction']}\n[[assistant]] "
    assert manifest(run)["eval"]["posttrain_arithmetic"]["template"] == "chat"


def test_local_task_data_files_resolve_next_to_the_task_file(tmp_path, monkeypatch):
    from posttrain.evaluate import local_tasks

    folder = tmp_path / "tasks"
    shutil.copytree(TASKS, folder)
    (folder / "group.yaml").write_text("group: mine\ntask: [posttrain_arithmetic]\n")
    monkeypatch.chdir(tmp_path.parent)
    cfgs = local_tasks(str(folder))
    assert [c["task"] for c in cfgs] == ["posttrain_arithmetic", "posttrain_capitals"]
    assert cfgs[0]["dataset_kwargs"]["data_files"] == {"test": str(folder.resolve() / "arithmetic.jsonl")}


@pytest.mark.parametrize("text, expected", [
    (None, "no such file or folder"),
    ("task: [unclosed\n", "does not parse"),
    ("dataset_path: json\n", "not an lm-eval task file"),
    ("task: t\ndataset_path: json\ndataset_kwargs: {data_files: {test: gone.jsonl}}\n", "no such file"),
])
def test_bad_local_task_is_one_line(tmp_path, cli, text, expected):
    task = tmp_path / "t.yaml"
    if text is not None:
        task.write_text(text)
    code, out, err = cli("eval", tmp_path, "--tasks", str(task))
    assert expected in one_error_line(code, out, err, str(task))


def test_missing_extra_is_one_line_with_the_install_command(fx, tmp_path, cli, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "lm_eval" else real(name, *a))
    code, out, err = cli("eval", tmp_path, "--tasks", str(ARITH))
    one_error_line(code, out, err, "pip install 'posttrain[eval]'")
    code, out, err = cli("validate", "alpaca_gpt2", "eval={tasks: eval/arithmetic.yaml}", f"model.name_or_path={fx['model']}",
                         f"data.train={fx['alpaca']}", "--no-data")
    one_error_line(code, out, err, "eval.tasks: eval needs lm-evaluation-harness, not installed: pip install 'posttrain[eval]'")


def test_eval_refuses_a_reward_run(tmp_path, cli):
    (tmp_path / "recipe.resolved.yaml").write_text("stage: reward\n")
    code, out, err = cli("eval", tmp_path, "--tasks", str(ARITH))
    one_error_line(code, out, err, "holds a reward model (a scalar score head), not a policy")


def test_shipped_tasks_ship_their_data():
    for task in (ARITH, CAPITALS):
        assert Path(task.with_suffix(".jsonl")).is_file()


def _eval_pipeline(fx, tmp_path, ev):
    import yaml

    fast = {"max_steps": 1, "warmup_steps": 0, "eval_strategy": "no", "save_strategy": "no"}
    pref = {"train": str(fx["preference"]), "split": "train", "eval": None}
    doc = {"output_root": str(tmp_path / "pipe"), "stages": {
        "sft": {"recipe": "alpaca_gpt2", "model.name_or_path": str(fx["model"]),
                "data": {"train": str(fx["alpaca"]), "eval_fraction": None}, "training": fast},
        "reward": {"recipe": "reward_gpt2", "after": "sft", "data": pref, "training": fast},
        "dpo": {"recipe": "dpo_gpt2", "after": "sft", "data": pref, "training": fast},
    }, "eval": ev}
    path = tmp_path / "pipe.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.mark.slow
def test_pipeline_eval_measures_base_and_policy_stages_skips_on_rerun_and_reports(fx, tmp_path, cli):
    path = _eval_pipeline(fx, tmp_path, {"tasks": ["eval/capitals.yaml"], "limit": 2})
    code, out, err = cli("pipeline", path)
    assert code == 0, err
    doc = json.loads((tmp_path / "pipe" / "pipeline.json").read_text())
    assert {s["stage"]: s["status"] for s in doc["stages"]} == {
        "base": "measured", "sft": "ran, measured", "reward": "ran", "dpo": "ran, measured"}
    base = manifest(tmp_path / "pipe" / "base")
    assert base["eval"]["posttrain_capitals"]["model"] == str(fx["model"])
    assert base["eval"]["posttrain_capitals"]["template"] == "alpaca"
    assert "eval" not in manifest(tmp_path / "pipe" / "reward")
    code, out, err = cli("pipeline", path)
    assert code == 0, err
    doc = json.loads((tmp_path / "pipe" / "pipeline.json").read_text())
    assert {s["stage"]: s["status"] for s in doc["stages"]} == {
        "base": "measured before", "sft": "skipped, measured before", "reward": "skipped",
        "dpo": "skipped, measured before"}

    code, out, err = cli("report", tmp_path / "pipe")
    assert code == 0, err
    assert "| posttrain_capitals acc |" in out  # the table is printed too
    md = (tmp_path / "pipe" / "report.md").read_text()
    assert "| task metric | base | sft | dpo |" in md and "| posttrain_capitals acc |" in md
    assert (tmp_path / "pipe" / "eval.png").is_file()


@pytest.mark.parametrize("ev, expected", [
    ({"tasks": ["eval/capitals.yaml"], "stages": ["reward"]}, "eval.stages: reward: a reward stage has no policy model"),
    ({"tasks": ["eval/capitals.yaml"], "stages": ["sfx"]}, "did you mean 'sft'"),
    ({"tasks": ["nope/missing.yaml"]}, "eval.tasks: task nope/missing.yaml: no such file or folder"),
    ({"tasks": ["eval/capitals.yaml"], "limt": 2}, "eval.limt"),
])
def test_bad_pipeline_eval_is_one_line_at_validate(fx, tmp_path, cli, ev, expected):
    code, out, err = cli("validate", _eval_pipeline(fx, tmp_path, ev))
    one_error_line(code, out, err, expected)


def test_pipeline_eval_validates(fx, tmp_path, cli):
    code, out, err = cli("validate", _eval_pipeline(fx, tmp_path, {"tasks": "eval/capitals.yaml"}))
    assert code == 0, err
    assert "ok: eval eval/capitals.yaml after base, sft, dpo: checked" in out


@pytest.mark.parametrize("ev, stage, expected", [
    ("{tasks: [eval/capitals.yaml]}", "reward_gpt2", "eval: a reward run trains a reward model, not a policy"),
    pytest.param("{tasks: [hellaswagg]}", "alpaca_gpt2", "eval.tasks: task hellaswagg: not an lm-eval task; did you mean "
                 "'hellaswag'", marks=pytest.mark.slow),  # reads lm-eval's index of ~15k shipped tasks (10-30 s)
    ("{tasks: [eval/capitals.yaml], batch_size: 0}", "alpaca_gpt2", "eval.batch_size: 0 is out of range"),
])
def test_bad_recipe_eval_is_one_line_at_validate(fx, tmp_path, cli, ev, stage, expected):
    code, out, err = cli("validate", stage, f"eval={ev}", f"model.name_or_path={fx['model']}",
                         f"data.train={fx['preference' if stage.startswith('reward') else 'alpaca']}", "--no-data")
    one_error_line(code, out, err, expected)


@pytest.mark.slow
def test_recipe_eval_runs_after_training(fx, tmp_path, cli):
    run = _train(cli, fx, tmp_path / "sft", "alpaca_gpt2", "eval={tasks: eval/arithmetic.yaml, limit: 1}")
    assert manifest(run)["eval"]["posttrain_arithmetic"]["samples"] == 1
    import yaml

    assert "eval" not in yaml.safe_load((run / "recipe.resolved.yaml").read_text())  # not part of the run's identity
