"""Errors a user can fix. The CLI prints them as one line and exits with code 2."""


class PosttrainError(Exception):
    """Base class: bad input (recipe, data, run directory) rather than a bug."""


class RecipeError(PosttrainError):
    """A recipe (or override) that cannot be run; the message names the dotted key."""


class DataError(PosttrainError):
    """A dataset that is missing, unreadable, or not in the shape its format needs."""


class RunDirError(PosttrainError):
    """An output directory that would lose work if used as asked."""
