"""posttrain runs on every TRL in pyproject's range (1.12 to 1.16, CI tests both ends): a stage that needs another TRL
(ppo: TRL 1.13 removed PPOTrainer) is refused by every command in one line with the fix, marked in `posttrain
recipes`, and its TRL class is neither walked nor imported. On TRL 1.12 the newer TRL is simulated (the version
read from package metadata); on 1.16 it is the real one. Fast: nothing trains."""

import pytest
from conftest import PPO_REFUSED, error_lines

from posttrain import options, stages
from posttrain.stages import NeedsTRL

LINE = ("stage ppo needs TRL < 1.13 (TRL 1.13 removed PPOTrainer); installed: {v} — pip install 'trl<1.13', or train "
        "against the reward model with rloo/grpo")


@pytest.fixture
def newer_trl(monkeypatch):
    """The installed TRL, as one without PPOTrainer: the real one where it lacks it, else 1.16.0 as metadata says."""
    if not PPO_REFUSED:
        monkeypatch.setattr(stages, "trl_version", lambda: "1.16.0")
    return stages.trl_version()


def test_a_stage_states_the_trl_it_needs_and_the_fix():
    need = NeedsTRL("<1.13", "TRL 1.13 removed PPOTrainer", "train against the reward model with rloo/grpo")
    assert need.refusal("ppo", "1.12.0") is None and need.refusal("ppo", "1.12.1.dev0") is None
    assert need.refusal("ppo", "1.13.0") == LINE.format(v="1.13.0")
    assert NeedsTRL(">=1.14", "TRL 1.14 added it").refusal("x", "1.12.0") == \
        "stage x needs TRL >= 1.14 (TRL 1.14 added it); installed: 1.12.0 — pip install 'trl>=1.14'"
    assert stages.get("ppo").trl.spec == "<1.13" and all(s.trl is None for n, s in stages.all_stages().items()
                                                         if n != "ppo")


@pytest.mark.both_ends
@pytest.mark.parametrize("command", ["validate", "plan", "train"])
def test_every_command_refuses_ppo_in_one_line_on_a_trl_without_it(newer_trl, cli, tmp_path, command):
    out = tmp_path / "out"
    code, stdout, err = cli(command, "ppo_gpt2", f"output_dir={out}")
    assert code == 2 and error_lines(err) == [f"ppo_gpt2.yaml:5: stage: {LINE.format(v=newer_trl).removeprefix('stage ')}"], err
    assert "Traceback" not in err and not out.exists()


@pytest.mark.both_ends
def test_a_pipeline_with_a_ppo_stage_is_refused_before_any_stage_trains(newer_trl, cli, tmp_path):
    code, _, err = cli("pipeline", "rlhf_gpt2", f"sft.output_dir={tmp_path / 'sft'}")
    assert code == 2 and error_lines(err) == [f"stage ppo (ppo_gpt2.yaml): ppo_gpt2.yaml:5: stage: "
                                              f"{LINE.format(v=newer_trl).removeprefix('stage ')}"], err
    assert not (tmp_path / "sft").exists()


def test_recipes_marks_what_the_installed_trl_cannot_run(newer_trl, cli):
    code, out, _ = cli("recipes")
    assert code == 0
    marked = {line.split()[0] for line in out.splitlines() if line.endswith("[needs TRL <1.13]")}
    assert marked == {"ppo_gpt2", "ppo_gpt2_lora", "demo", "rlhf_gpt2", "rlhf_gpt2_lora"}
    assert LINE.format(v=newer_trl) in out.splitlines()


def test_recipes_marks_nothing_where_every_stage_runs(monkeypatch, cli):
    monkeypatch.setattr(stages, "trl_version", lambda: "1.12.0")
    code, out, _ = cli("recipes")
    assert code == 0 and "needs TRL" not in out


def test_the_options_walk_leaves_out_a_class_the_installed_trl_lacks_and_keeps_its_snapshot(newer_trl):
    assert "trl.experimental.ppo:PPOConfig" not in options.owners() and "trl:GRPOConfig" in options.owners()
    assert not [names for a in options.audit().values() for names in a.values() if names]
    assert options.generate_snapshot()["trl.experimental.ppo:PPOConfig"] == \
        options.snapshot()["trl.experimental.ppo:PPOConfig"]
