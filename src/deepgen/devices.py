"""Which device a run uses, and how many CPU threads (bottom layer: the trainer, the
feature networks and the CLI all resolve device names and thread counts the same way).

CPU threads and the OpenMP wait. torch runs its intra-op parallel regions on an OpenMP
team (libgomp in the Linux wheels; Intel's or LLVM's runtime in other builds). By
default a team thread that has finished its share *spins* (libgomp: 300,000 polls,
GOMP_SPINCOUNT; Intel/LLVM: 200 ms, KMP_BLOCKTIME) waiting for the next region or for
its teammates at the barrier. On cores shared with other busy processes the spinning
thread holds a core that a descheduled teammate needs, so each of the hundreds of small
parallel regions of a training step can cost a scheduler time slice instead of
microseconds, and a run of seconds takes minutes. A short spin (GOMP_SPINCOUNT=1000, the
count libgomp itself falls back to when it has more threads than cores, and
KMP_BLOCKTIME=1 ms for the other runtimes) removes the stall and costs a few percent on
idle cores.

The runtime reads these variables once, when torch loads it, so this module sets them
(only those the user has not set) *before* it imports torch; ``deepgen/__init__.py``
imports it first. :data:`SHORT_WAIT` records whether it was in time. When torch was
imported earlier with the default spin, :func:`default_threads` is 1, which cannot stall.
Child processes (torchrun workers) inherit the variables.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable
from typing import TypeVar

_WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
SHORT_WAIT_ENV = {"GOMP_SPINCOUNT": "1000", "KMP_BLOCKTIME": "1"}


def _install_short_wait() -> bool:
    """Ask OpenMP for a short spin before torch loads it; True when the wait is settled.

    The user's own setting of any of the wait variables stands (True: their choice).
    Otherwise True when the variables were set before the OpenMP runtime was loaded,
    False when torch was already imported (too late: the runtime keeps its long spin).
    """
    if any(name in os.environ for name in _WAIT_VARIABLES):
        return True
    if "torch" in sys.modules:
        return False
    os.environ.update(SHORT_WAIT_ENV)
    return True


SHORT_WAIT: bool = _install_short_wait()

import torch  # noqa: E402  (after the OpenMP wait variables: the runtime reads them on load)

from .errors import UserError  # noqa: E402

log = logging.getLogger(__name__)

# torch's own default, read before anyone changes it: physical cores, or OMP_NUM_THREADS /
# MKL_NUM_THREADS when the user set them.
_TORCH_DEFAULT_THREADS = torch.get_num_threads()


def resolve_device(name: str | torch.device) -> torch.device:
    """``auto`` -> cuda when available, else cpu; anything else must be a usable device."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}. Accepted: auto, cpu, cuda, cuda:N, mps.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name!r} asked for, but this machine has no CUDA GPU. Use device=cpu or auto.")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"device {name!r} asked for, but MPS is not available here. Use device=cpu or auto.")
    return device


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. under taskset or a
    container's cpuset), else the machine's count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return max(1, os.cpu_count() or 1)


def default_threads() -> int:
    """The thread count deepgen uses unless told otherwise.

    With the short OpenMP wait in place (:data:`SHORT_WAIT`): torch's own default
    (physical cores, or the user's OMP_NUM_THREADS) capped at the cores this process may
    use. Without it (torch was imported before deepgen and the runtime spins long): 1,
    since more threads can stall for seconds per step when other processes share the cores.
    """
    if not SHORT_WAIT:
        return 1
    return max(1, min(available_cores(), _TORCH_DEFAULT_THREADS))


def configure_threads(n: int | None = None) -> int:
    """Set torch's intra-op CPU threads to ``n`` (None or 0: :func:`default_threads`); return the count.

    Safe to call any number of times (it only calls ``torch.set_num_threads`` when the
    count changes; inter-op threads, which torch lets be set only once, are left alone).
    The OpenMP wait that keeps several threads from stalling on shared cores is set when
    this module is imported (see the module docstring); asking for more than one thread
    when that was too late logs a warning saying how to avoid the stall.
    """
    if n is None or n == 0:
        n = default_threads()
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise UserError(f"threads must be a whole number >= 0 (0 = deepgen's default, {default_threads()}), got {n!r}")
    if n > 1 and not SHORT_WAIT:
        log.warning(
            "%d CPU threads with OpenMP's default long spin (torch was imported before deepgen): on cores "
            "shared with other busy processes training can stall. Import deepgen before torch, or set "
            "GOMP_SPINCOUNT=1000 (KMP_BLOCKTIME=1) in the environment, or use 1 thread.",
            n,
        )
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


R = TypeVar("R")


def compiler_disable(fn: Callable[..., R]) -> Callable[..., R]:
    """``torch.compiler.disable(fn)``, applied on the first call instead of at import.

    The decorator imports torch._dynamo (about 2.5 s) when it runs; on a method that is at
    class definition, so loading a family (the GANs' gradient penalty and unrolled step, the
    VAE's DReG hook) would cost every process that time, compiled or not. Here: without
    torch._dynamo loaded nothing can be tracing, so ``fn`` is called as it is; once it is
    loaded (``torch.compile`` loads it), ``fn`` runs through ``torch.compiler.disable(fn)``,
    made once and kept: traced, the call is a graph break and ``fn`` runs eagerly, as under
    the decorator. (The first traced call also breaks at making it and recompiles this
    wrapper once, in the warm-up: reading the kept one is a guard of the compiled wrapper.)
    """
    disabled: Callable[..., R] | None = None

    @functools.wraps(fn)
    def call(*args: object, **kwargs: object) -> R:
        nonlocal disabled
        # is_compiling() first: a constant while traced, so the sys.modules read is never traced.
        if not torch.compiler.is_compiling() and "torch._dynamo" not in sys.modules:
            return fn(*args, **kwargs)
        if disabled is None:
            disabled = torch.compiler.disable(fn)
        return disabled(*args, **kwargs)

    return call
