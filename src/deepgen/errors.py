"""The one exception type for mistakes a user can make.

Anything that a user can cause (an unknown name, a bad value, a missing or corrupt file,
NaN in the data) raises :class:`UserError` with one message that says what was wrong and
what is accepted. The command line prints the message without a traceback and exits
with status 2.
"""

from __future__ import annotations


class UserError(ValueError):
    """A mistake in what the user asked for; the message says what is accepted."""


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; the message names the step and the kept checkpoint."""


def did_you_mean(name: str, choices: list[str] | tuple[str, ...]) -> str:
    """A short hint listing accepted names, closest first (``difflib``)."""
    import difflib

    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return f"Accepted: {', '.join(sorted(choices))}.{hint}"
