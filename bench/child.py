"""One timed training run in its own process (bench/overhead.py).

    child.py RESULT.json posttrain:STAGE ARGV...       # posttrain.cli.main(ARGV), a timer added to the trainer
    child.py RESULT.json plain_trl_sft|plain_trl_dpo ARGV...

Writes time to first step (wall, from the top of this file before any import; and process CPU time),
steady-state steps per wall second and per CPU second, peak RSS, wall time (including the final save)
and the final train loss to RESULT.json. CPU time barely moves when a neighbour takes the other core.
"""

import time

T0 = time.time()

import importlib  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from transformers import TrainerCallback  # noqa: E402

WARMUP_STEPS = 2  # steps/s counts from the end of step 2: the first steps pay one-off allocations


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class StepTimer(TrainerCallback):
    def __init__(self):
        self.ends, self.cpu_ends, self.train_loss = [], [], None

    def on_step_end(self, args, state, control, **kw):
        self.ends.append(time.time())
        self.cpu_ends.append(cpu_seconds())

    def on_log(self, args, state, control, logs=None, **kw):
        if logs and "train_loss" in logs:
            self.train_loss = logs["train_loss"]  # same data, seed and steps must give the same loss


def run(runner: str, argv: list[str], timer: StepTimer) -> int:
    if runner.startswith("posttrain:"):
        import dataclasses

        from posttrain import stages
        from posttrain.cli import main

        registry = stages.all_stages()
        stage = registry[runner.split(":")[1]]

        def build(recipe):
            trainer, stats = stage.build(recipe)
            trainer.add_callback(timer)
            return trainer, stats

        registry[stage.name] = dataclasses.replace(stage, build=build)
        return main(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    importlib.import_module(runner).main(argv, callbacks=[timer])
    return 0


def main():
    out, runner, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
    timer = StepTimer()
    code = run(runner, argv, timer)
    wall = time.time() - T0
    skip = WARMUP_STEPS - 1 if len(timer.ends) > WARMUP_STEPS else 0
    ends, cpu_ends = timer.ends[skip:], timer.cpu_ends[skip:]
    result = {
        "exit_code": code,
        "steps": len(timer.ends),
        "first_step_s": timer.ends[0] - T0 if timer.ends else None,
        "first_step_cpu_s": timer.cpu_ends[0] if timer.ends else None,
        "steps_per_s": (len(ends) - 1) / (ends[-1] - ends[0]) if len(ends) > 1 else None,
        "steps_per_cpu_s": (len(ends) - 1) / (cpu_ends[-1] - cpu_ends[0]) if len(ends) > 1 else None,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # KiB on Linux
        "wall_s": wall,
        "train_loss": timer.train_loss,
    }
    Path(out).write_text(json.dumps(result))
    return code


if __name__ == "__main__":
    raise SystemExit(main())
