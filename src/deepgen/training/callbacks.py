"""What the trainer calls back during ``fit``: a small protocol, no family, no pictures.

A callback is any object with some of these methods, each taking the trainer:

* ``on_step_end(trainer)``: after every training step, once the step's log, checkpoint
  and (graph mode) stream join are done. The callback decides whether it is due; the
  trainer says what kind of step this was: ``trainer.step`` (steps so far),
  ``trainer.epoch_ended`` (the step finished an epoch), ``trainer.fit_ending`` (the last
  step of this ``fit``) and ``trainer.sample_due`` (a sample point of
  ``TrainConfig.sample_every``: every N steps, or each epoch end when it is 0, and the
  last step).
* ``on_epoch_end(trainer)``: after the step that finished an epoch (after
  ``on_step_end``).
* ``on_fit_end(trainer)``: once, when ``fit`` ends normally (not on an error or an
  interrupt), after the last step's ``on_step_end``/``on_epoch_end``.

A plain callable ``callback(trainer)`` with none of these methods is called at the end of
every epoch (as ``on_epoch_end``).

Callbacks run on the host between steps: the trainer joins its CUDA-graph stream before
calling them, so they may read the model and do device work. They must not change the
weights or the random streams if a resumed run is to equal an uninterrupted one
(sampling with their own ``torch.Generator`` is fine). ``deepgen.pictures.SamplePictures``
is the one the command line installs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from .trainer import Trainer

HOOKS = ("on_step_end", "on_epoch_end", "on_fit_end")


@runtime_checkable
class Callback(Protocol):
    """The full protocol; a callback may define any subset of these methods."""

    def on_step_end(self, trainer: Trainer) -> None: ...

    def on_epoch_end(self, trainer: Trainer) -> None: ...

    def on_fit_end(self, trainer: Trainer) -> None: ...


def hooks(callbacks: Sequence[Any], name: str) -> list[Callable[[Any], None]]:
    """The bound ``name`` methods of ``callbacks``, in order; a plain callable with none
    of :data:`HOOKS` counts as ``on_epoch_end``. Anything else is a TypeError."""
    out = []
    for cb in callbacks:
        if any(callable(getattr(cb, h, None)) for h in HOOKS):
            method = getattr(cb, name, None)
            if callable(method):
                out.append(method)
        elif callable(cb):
            if name == "on_epoch_end":
                out.append(cb)
        else:
            raise TypeError(f"a callback must be callable or have one of {', '.join(HOOKS)}; got {cb!r}")
    return out
