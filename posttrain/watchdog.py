"""The loss watchdog (`watchdog:` in a recipe): stop a run whose training loss diverges, keeping a checkpoint.

axolotl's loss_watchdog_threshold / loss_watchdog_patience mean the same: a loss above the threshold that many
logged steps in a row stops the run. Also a NaN or infinite loss (`nonfinite`, on by default), which TrainingArguments
hides from the log unless logging_nan_inf_filter is off (posttrain turns it off for the watchdog).

The watchdog reads each logged training loss (every training.logging_steps, averaged over the steps since the last
log and over the processes, so every rank stops at the same step); when it trips, the Trainer saves a checkpoint and
stops, and the run lifecycle (posttrain.stages.common.run) marks the manifest and exits non-zero.
"""

from __future__ import annotations

import dataclasses
import math

STOPPED = "stopped"  # manifest status of a run the watchdog stopped (unfinished: `--resume` continues it)


@dataclasses.dataclass
class Watchdog:
    loss_above: float | None = None
    patience: int = 3
    nonfinite: bool = True
    high: int = 0  # logged losses above loss_above in a row so far
    tripped: dict | None = None  # what stopped the run: {"by", "step", "loss", "why"}

    def observe(self, step: int, loss: float) -> bool:
        """One logged training loss; True when it stops the run."""
        if self.tripped is None:
            if not math.isfinite(loss):
                if self.nonfinite:
                    self.tripped = self._stop(step, loss, f"the loss is {loss} (not finite)")
            elif self.loss_above is not None and loss > self.loss_above:
                self.high += 1
                if self.high >= self.patience:
                    self.tripped = self._stop(step, loss, f"the loss has been above watchdog.loss_above "
                                              f"{self.loss_above} for {self.high} logged step(s) in a row")
            else:
                self.high = 0
        return self.tripped is not None

    @staticmethod
    def _stop(step: int, loss: float, why: str) -> dict:
        # json has no NaN/Infinity: a non-finite loss is written as its name
        return {"by": "loss watchdog", "step": step, "loss": loss if math.isfinite(loss) else str(loss), "why": why}


def of(recipe) -> Watchdog | None:
    """The recipe's watchdog, or None when it has no `watchdog:` section."""
    w = recipe.watchdog
    return Watchdog(w["loss_above"], w["patience"], w["nonfinite"]) if w else None


def callback(watchdog: Watchdog):
    """A transformers TrainerCallback that feeds each logged training loss to `watchdog` and, when it trips, has
    the Trainer save a checkpoint at this step and stop."""
    from transformers import TrainerCallback

    class LossWatchdog(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            loss = (logs or {}).get("loss")
            if isinstance(loss, (int, float)) and watchdog.observe(state.global_step, float(loss)):
                control.should_save = True
                control.should_training_stop = True
            return control

    return LossWatchdog()
