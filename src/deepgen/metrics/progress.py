"""Progress bars for the long steps of evaluation (one switch, tqdm underneath).

Every step that can take more than a few seconds (the evaluator's batches, drawing
samples, extracting features, training a feature network, the leaderboard's models)
shows a tqdm bar on stderr. One switch governs them all: ``progress=True`` / ``False``,
or ``None`` for "on when stderr is a terminal" (:func:`resolve_progress`), so logs and
pipes stay clean and ``deepgen ... --quiet`` turns them off. A switched-off bar is a
tqdm with ``disable=True``: the same calls, no output, no cost worth naming.

Inside :func:`deepgen.metrics.evaluate`, ``progress=None`` anywhere below (a feature
network trained on first use, the stacked-MNIST classifier) means the evaluation's own
switch (:func:`progress_switch`), so one ``evaluate(..., progress=False)`` silences all.

Bars count host-side numbers only (batches, samples, steps): updating one never reads a
device tensor, so it adds no host synchronisation to a training step.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

_SWITCH: ContextVar[bool | None] = ContextVar("deepgen_progress", default=None)


def resolve_progress(progress: bool | None) -> bool:
    """``progress`` as a bool; ``None`` -> the enclosing :func:`progress_switch` if any,
    else True exactly when stderr is a terminal.

    tqdm writes to stderr whether or not it is a terminal (a log file then fills with
    carriage-return frames), hence the default off there.
    """
    if progress is not None:
        return bool(progress)
    inherited = _SWITCH.get()
    if inherited is not None:
        return inherited
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


@contextmanager
def progress_switch(on: bool) -> Iterator[None]:
    """Within the block, ``resolve_progress(None)`` is ``on`` (evaluate() wraps its metrics in it)."""
    token = _SWITCH.set(bool(on))
    try:
        yield
    finally:
        _SWITCH.reset(token)


def progress_bar(total: int | None, desc: str, *, enabled: bool, unit: str = "it", leave: bool = False, **kwargs: Any) -> Any:
    """A tqdm bar of ``total`` ``unit``s labelled ``desc``; a disabled (silent) one unless ``enabled``.

    Use it as a context manager (closed on errors and Ctrl-C too) and call
    ``bar.update(k)`` with host integers only. ``leave=False``: the bar disappears when
    done, so the printed results are not buried under finished bars.
    """
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=leave, disable=not enabled, dynamic_ncols=True, **kwargs)
