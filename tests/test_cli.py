"""The command line (posttrain.cli): how arguments are read."""

import pytest

from posttrain.cli import _parse


@pytest.mark.parametrize("argv", [
    ["train", "r", "--resume", "a.b=1", "c=2"],
    ["validate", "r", "--no-data", "a.b=1", "--accelerate-config", "f.yaml", "c=2"],
    ["plan", "r", "a.b=1", "--gpu-gib", "40", "c=2"],
    ["pipeline", "p", "--overwrite", "a.b=1", "c=2"],
])
def test_overrides_may_follow_options(argv):
    assert _parse(argv).overrides == ["a.b=1", "c=2"]


def test_an_override_after_an_option_is_applied_and_an_unknown_option_is_still_refused(cli, capsys):
    code, out, _ = cli("validate", "alpaca_gpt2", "--no-data", "training.max_steps=3", "--stage", "sft",
                       "training.logging_steps=7")
    assert code == 0 and "  max_steps: 3\n" in out and "  logging_steps: 7\n" in out
    for argv in (["validate", "alpaca_gpt2", "--no-data", "--bogus"], ["report", "run_dir", "a.b=1"]):
        with pytest.raises(SystemExit) as e:
            _parse(argv)
        assert e.value.code == 2 and "unrecognized arguments: " + argv[-1] in capsys.readouterr().err
