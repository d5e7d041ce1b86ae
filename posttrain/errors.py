"""Errors a user can fix. The CLI prints them as one line and exits with `exit_code` (2: bad input)."""


class PosttrainError(Exception):
    """Base class: bad input (recipe, data, run directory) rather than a bug."""

    exit_code = 2


class RecipeError(PosttrainError):
    """A recipe (or override) that cannot be run; the message names the dotted key."""


class DataError(PosttrainError):
    """A dataset that is missing, unreadable, or not in the shape its format needs."""


class RunDirError(PosttrainError):
    """An output directory that would lose work if used as asked."""


class RunStopped(PosttrainError):
    """A run posttrain stopped on purpose (the loss watchdog): its checkpoint kept, the run unfinished."""

    exit_code = 1


class Problems(RecipeError):
    """Every problem one check pass found (posttrain.checks): one line each, the first SHOWN of them."""

    SHOWN = 20

    def __init__(self, lines: list[str]):
        self.lines = list(lines)
        more = len(self.lines) - self.SHOWN
        super().__init__("\n".join(self.lines[: self.SHOWN] + ([f"... and {more} more"] if more > 0 else [])))
