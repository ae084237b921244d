"""The one training loop, for every family.

A training step runs the model's phases in order; each phase takes ``repeats`` optimizer
steps on its own parameters with its own optimizer, then its after-step hook. The loop
knows nothing about families: it sees phases, losses and device tensors to log.

The step stays free of host synchronisation: logged values are summed on the device and
read once every ``log_every`` steps (one sync), which is also where the NaN/Inf guard
looks. A checkpoint is written only after that guard has seen finite values, so the last
checkpoint is always a good one.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections import deque
from collections.abc import Callable, Generator, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..data import RESUMABLE_DATA, Batch, DataConfig, Dataset, iterate, make_loader
from ..devices import configure_threads, resolve_device
from ..errors import TrainingDiverged, UserError
from ..io import write_json
from ..models.base import DataInit, GenerativeModel, HasHistograms, Phase
from ..optim import (
    EMA,
    ParamGroup,
    build_optimizer,
    load_optimizer_state,
    optimizer_state,
    schedule_factor,
    set_lr,
)
from . import checkpoint as ckpt
from . import distributed
from .callbacks import Callback, hooks
from .config import TrainConfig
from .graphs import WARMUP_RUNS, PhaseGraph
from .logging import RunLogger

# What a callback may be: an object with some of Callback's methods, or a plain callable
# called at the end of every epoch.
CallbackLike = Callback | Callable[["Trainer"], None]


def seed_all(seed: int) -> None:
    """Seed torch's global generators (CPU and every GPU)."""
    torch.manual_seed(seed)


def lr_factor(config: TrainConfig, step: int, total: int) -> float:
    """Multiplier of the base lr at ``step`` of ``total``: warm-up, then the schedule."""
    return schedule_factor(config.schedule, config.warmup_steps, step, total)


def fit_together(trainers: Sequence[Trainer]) -> list[TrainResult]:
    """Train several trainers in this thread, one step of each in turn; their summaries.

    With ``cuda_graph=true`` the host only queues each run's captured step and moves on to
    the next run, so the GPU is never waiting for Python between steps, as several
    processes sharing a GPU are (they take turns on it without MPS). Measured on an H200
    (benchmarks/RESULTS.md, "CUDA graphs"): 5 captured DCGAN runs together make 1,104 steps/s
    summed, against 877 for 5 processes and 1,105 for one run alone: a captured step already
    keeps the GPU busy, so this saves the processes' overhead, not time per run. Each run is trained as by
    :meth:`Trainer.fit`, except that the runs draw their noise from torch's one global
    generator in turn: the group is reproducible, a run alone would draw other numbers.
    A time budget (``max_seconds``) counts wall time, which the runs share.
    """
    # Captured runs on one device share one stream: torch keeps one graph-safe state of the
    # default CUDA generator per device, which each replay sets before its kernels read it,
    # so replays on different streams could race for it. On one stream they stay in order,
    # and the host still queues one run's step while the GPU runs another's.
    shared: dict[torch.device, torch.cuda.Stream] = {}
    for t in trainers:
        if t._stream is not None:
            t._stream = shared.setdefault(t.device, t._stream)
    steps = [t.fit_steps() for t in trainers]
    results: list[TrainResult | None] = [None] * len(steps)
    try:
        active = list(range(len(steps)))
        while active:
            for i in list(active):
                try:
                    next(steps[i])
                except StopIteration as stop:
                    results[i] = stop.value
                    active.remove(i)
    finally:
        errors = []
        for gen in steps:  # a failed run's partners end cleanly (bars and loggers closed)
            try:
                gen.close()
            except Exception as e:  # keep closing the others; the first error is raised below
                errors.append(e)
        if errors and sys.exc_info()[1] is None:
            raise errors[0]
    return [r for r in results if r is not None]


def _micro_batches(batch: Batch, parts: int) -> list[Batch]:
    """``batch`` split into ``parts`` equal, consecutive micro-batches (views, no copies)."""
    if parts == 1:
        return [batch]
    size = len(batch) // parts
    return [
        Batch(batch.x[k * size:(k + 1) * size], None if batch.y is None else batch.y[k * size:(k + 1) * size])
        for k in range(parts)
    ]


def _weight_decay_override(phase: Phase, weight_decay: float) -> tuple[Any, list[ParamGroup]]:
    """``phase``'s optimizer spec and groups with ``weight_decay`` as the phase's weight decay.

    Groups that take the phase's decay (None) follow it, and so do groups that merely
    repeat the phase's own nonzero decay (nanoGPT's decayed matrices, which
    :func:`~deepgen.optim.decay_groups` gives the value explicitly); groups that declare
    another value, 0 for biases and norm gains above all, keep theirs."""
    own = phase.optimizer.weight_decay
    groups = [
        ParamGroup(g.params, None if g.weight_decay is None or (g.weight_decay == own and g.weight_decay != 0) else g.weight_decay)
        for g in phase.groups
    ]
    return dataclasses.replace(phase.optimizer, weight_decay=weight_decay), groups


def _grad_norm(params: Sequence[torch.nn.Parameter], device: torch.device) -> torch.Tensor:
    """The global 2-norm of the parameters' gradients, a 0-d device tensor (no sync)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros((), device=device)
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)).float())


@dataclass
class TrainResult:
    """What ``fit`` returns: steps taken, epochs completed, seconds, and the last logged values."""

    steps: int
    epochs: int
    seconds: float
    last: dict[str, float]


class Trainer:
    """Train ``model`` on ``dataset``; write the run folder ``run_dir`` (None: write nothing).

    >>> trainer = Trainer(model, dataset, TrainConfig(epochs=2), run_dir="runs/vae")
    >>> result = trainer.fit()

    ``callbacks``: objects with any of ``on_step_end``, ``on_epoch_end`` and
    ``on_fit_end`` (each called with the trainer; see :mod:`deepgen.training.callbacks`),
    or plain callables called at the end of every epoch. The trainer draws no pictures:
    ``callbacks=[deepgen.pictures.SamplePictures()]`` writes ``samples.png`` and its
    per-step copies, as ``deepgen train`` does.

    A model with the :class:`~deepgen.models.base.DataInit` capability gets
    ``data_init(batch)`` once, at the start of the first ``fit`` of a new run (never on
    resume), on the first ``batch_size`` training examples.
    """

    def __init__(
        self,
        model: GenerativeModel,
        dataset: Dataset,
        config: TrainConfig | None = None,
        run_dir: str | Path | None = None,
        *,
        data_config: DataConfig | None = None,
        callbacks: Sequence[CallbackLike] = (),
        _resume_state: dict[str, Any] | None = None,
    ) -> None:
        # Unset fields (None) take the model's defaults: TrainConfig(epochs=20) trains a ddpm
        # with its EMA, as the command line does; ema=0 said explicitly turns it off.
        self.config = (config or TrainConfig()).for_model(model.train_defaults)
        # Under torchrun: this process's rank; rank r trains on cuda:LOCAL_RANK, and only
        # rank 0 writes the run folder (the others keep run_dir None).
        self.world = distributed.current_world()
        self.device = self._world_device(resolve_device(self.config.device))
        distributed.setup(self.world, self.device)
        self.model = model.to(self.device)
        self.dataset = dataset
        self.run_dir = None if run_dir is None or not self.world.is_main else Path(run_dir)
        # How the dataset was loaded (max_train, label_column, ...): the caller's config, else
        # the one the dataset carries, else its name alone.
        self.data_config = data_config or getattr(dataset, "config", None) or DataConfig(name=dataset.name)
        self.callbacks = list(callbacks)
        hooks(self.callbacks, "on_step_end")  # a TypeError now for something that is no callback
        self.model_name = type(model).registered_name or type(model).__name__
        self.phases: list[Phase] = model.phases()
        self._check_phases()
        self._check_phase_epochs()
        self._check_cuda_graph()
        # The validation figures (TrainConfig.val_limit): val_loss, or <phase>/val_loss per phase.
        multi = len(self.phases) > 1
        self.val_keys = {p.name: f"{p.name}/val_loss" if multi else "val_loss" for p in self.phases}
        self._check_early_stop()
        graph = self.config.cuda_graph
        # One torch param group per ParamGroup of the phase (its own weight decay);
        # TrainConfig.weight_decay replaces each phase's own (see _weight_decay_override).
        wd = self.config.weight_decay
        self.optimizers = [
            build_optimizer(*(_weight_decay_override(p, wd) if wd is not None else (p.optimizer, p.groups)), self.device, graph)
            for p in self.phases
        ]
        self.base_lrs = [p.optimizer.lr for p in self.phases]
        self._lrs: list[float | None] = [None] * len(self.phases)  # the lr each optimizer holds now
        # CUDA graphs (TrainConfig.cuda_graph): every step runs on one side stream, where
        # each phase warms up eagerly and is then captured once and replayed.
        self._stream = torch.cuda.Stream(self.device) if graph else None
        self._graphs: dict[str, PhaseGraph] = {}
        # Under torchrun: the gradients' all-reduce (see _set_reducers, set at each fit).
        self._reducers: dict[str, distributed.OverlappedReducer] = {}
        self._eager_runs: dict[str, int] = {}
        self._stream_ahead = False  # steps queued on the stream that the default stream has not joined
        self._after_default = True  # the next step must wait for the default stream's work
        self.loader = make_loader(
            dataset, self.config.batch_size, self.device, seed=self.config.seed, shard=(self.world.rank, self.world.size),
            workers=self.data_config.workers,
        )
        if self.world.size > 1 and self.loader.batch_size != self.config.batch_size:
            raise UserError(
                f"batch_size={self.config.batch_size} is larger than the {self.loader.n} training examples; under "
                "torchrun the global batch must fit the data to split evenly over the processes."
            )
        if self.loader.batch_size % self.config.grad_accum:
            raise UserError(
                f"grad_accum={self.config.grad_accum} must split each process's batch of {self.loader.batch_size} examples "
                f"into equal micro-batches; use a batch_size (per process) that is a multiple of {self.config.grad_accum}."
            )
        self.ema = EMA(self.model, self.config.ema, self.config.ema_warmup) if self.config.ema > 0 else None
        # torch.compile of the loss (forward and, through AOTAutograd, backward): fewer,
        # fused kernels for launch-bound small models. Batches have one size (the loader
        # drops the tail), so static shapes: no dynamic-shape recompiles.
        mode = None if self.config.compile_mode == "default" else self.config.compile_mode
        self._loss = torch.compile(model.loss, dynamic=False, mode=mode) if self.config.compile else model.loss
        self.step = 0
        self.seconds = 0.0
        # Per phase: the names of its logged values and their running sums, one device
        # tensor (K,) per phase so that accumulating costs two kernels, not two per value.
        self._log_names: dict[str, list[str]] = {}
        self._sums: dict[str, torch.Tensor] = {}
        self._counts: dict[str, int] = {}
        self.last: dict[str, float] = {}
        self._figures: dict[str, float] = {}  # the latest logged value of every key (keep_best reads it)
        # Host-side history of the logged means of model.oscillation_keys (no extra sync).
        self._history: dict[str, deque[float]] = {k: deque(maxlen=self.config.osc_window) for k in model.oscillation_keys}
        # Throughput (samples_per_s): training examples drawn (all ranks), and the host clock
        # and count at the last log point.
        self._examples_seen = 0
        self._log_mark: tuple[float, int] | None = None
        # Early stopping (TrainConfig.early_stop): the best validation figure, its epoch,
        # epochs since it improved, and whether the run has stopped; kept in checkpoints.
        self._early: dict[str, Any] = {"best": None, "best_epoch": 0, "bad_epochs": 0, "stopped": False}
        self._resumed = _resume_state is not None
        self._pending_rng: dict[str, Any] | None = None  # a resumed checkpoint's random streams, set at fit
        # A new run's weights are finished at its first fit (data_init, rank 0's broadcast).
        self._initialised = self._resumed
        self._fit_start: float | None = None  # perf_counter at the (virtual) start of training
        self._fit_start_step = 0  # the step this fit started from
        # What kind of step the last one was, for callbacks (deepgen.training.callbacks).
        self.epoch_ended = False  # it finished an epoch
        self.fit_ending = False  # it is the last step of this fit
        self.sample_due = False  # a sample point: TrainConfig.sample_every, or an epoch end, or the last step
        if _resume_state is not None:
            self._restore(_resume_state)
        self._logger: RunLogger | None = None

    # -- setup ----------------------------------------------------------------------------
    def _check_phases(self) -> None:
        names = [p.name for p in self.phases]
        if len(set(names)) != len(names):
            raise ValueError(f"{self.model_name}: phase names must be distinct, got {names}")
        for p in self.phases:
            if not p.parameters:
                raise ValueError(f"{self.model_name}: phase {p.name!r} has no parameters")
            start, stop = p.epochs
            if start < 0 or (stop is not None and stop <= start):
                raise ValueError(f"{self.model_name}: phase {p.name!r} has an empty epoch window {p.epochs}")

    def _check_phase_epochs(self) -> None:
        """Refuse up front a run whose ``epochs`` end before some phase's window opens
        (greedy pretraining stages, then fine-tuning): that phase would never train."""
        epochs = self.config.epochs
        idle = [p for p in self.phases if p.epochs[0] >= epochs]
        if idle:
            needed = max(p.epochs[0] for p in self.phases) + 1
            each = [f"{p.name!r} (from epoch {p.epochs[0] + 1})" for p in idle]
            names = each[0] if len(each) == 1 else f"{', '.join(each[:-1])} and {each[-1]}"
            raise UserError(
                f"{self.model_name} would never train phase{'s' if len(idle) > 1 else ''} {names}: the run trains only "
                f"{epochs} epoch{'' if epochs == 1 else 's'}. Train at least {needed} epochs (epochs={needed}; "
                f"--epochs {needed} on the command line), so that every phase runs."
            )

    def _check_early_stop(self) -> None:
        """early_stop watches keep_best's figure, which must be a validation figure; with
        keep_best unset it is the last phase's (val_loss), so the best epoch's checkpoint is kept."""
        cfg = self.config
        if cfg.keep_best in self.val_keys.values() and not cfg.val_limit:
            raise UserError(f"keep_best={cfg.keep_best!r} is the validation loss, but val_limit=0 (off); set val_limit (e.g. 10000).")
        if not cfg.early_stop:
            return
        if not cfg.keep_best:
            self.config = cfg.replace(keep_best=self.val_keys[self.phases[-1].name])
        elif cfg.keep_best not in self.val_keys.values():
            raise UserError(
                f"early_stop={cfg.early_stop} stops on the validation figure that keep_best names, but keep_best={cfg.keep_best!r}; "
                f"set keep_best to one of {', '.join(self.val_keys.values())} (or leave it empty)."
            )

    def _world_device(self, device: torch.device) -> torch.device:
        """Several processes: each takes its own GPU (cuda:LOCAL_RANK); the batch splits evenly."""
        if self.world.size == 1:
            return device
        if self.config.batch_size % self.world.size:
            raise UserError(
                f"batch_size={self.config.batch_size} is the global batch and must split evenly over "
                f"{self.world.size} processes; use a multiple of {self.world.size}."
            )
        if self.config.cuda_graph:
            raise UserError("cuda_graph=true is for one process; under torchrun set cuda_graph=false.")
        if device.type == "cuda":  # rank r takes its own GPU, whatever index was named
            return torch.device("cuda", self.world.local_rank)
        return device

    def _check_cuda_graph(self) -> None:
        cfg = self.config
        if not cfg.cuda_graph:
            return
        if self.device.type != "cuda":
            raise UserError(f"cuda_graph=true needs a CUDA device, but this run is on {self.device}. Set cuda_graph=false or device=cuda.")
        if cfg.grad_accum > 1:
            raise UserError(
                f"cuda_graph=true captures one batch per optimizer step, but grad_accum={cfg.grad_accum}; "
                "set grad_accum=1 (a larger batch_size), or cuda_graph=false."
            )
        fixed_lr = cfg.schedule == "constant" and not cfg.warmup_steps
        sgd = [p.name for p in self.phases if p.optimizer.name == "sgd"]
        if sgd and not fixed_lr:
            raise UserError(
                f"cuda_graph=true with SGD (phase {', '.join(sgd)}) needs a constant lr: SGD's lr is fixed when the step "
                f"is captured, but schedule={cfg.schedule} warmup_steps={cfg.warmup_steps}. Use schedule=constant warmup_steps=0, "
                "Adam/RMSprop, or cuda_graph=false."
            )

    @property
    def batches_per_step(self) -> int:
        return 1 + sum(p.repeats - 1 for p in self.phases if p.new_batch)

    @property
    def total_steps(self) -> int:
        """Steps the run will take (for the lr schedule and the progress bar)."""
        per_epoch = max(1, self.loader.steps_per_epoch // self.batches_per_step)
        total = self.config.epochs * per_epoch
        return min(total, self.config.max_steps) if self.config.max_steps else total

    # -- the loop -------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        """Train until ``epochs`` are done or ``max_steps`` are taken; return a summary.

        The run folder is written from here on (not at construction), so a trainer that is
        built and then discarded leaves the folder as it was.
        """
        return fit_together([self])[0]

    def fit_steps(self) -> Generator[int, None, TrainResult]:
        """:meth:`fit` as a generator: yields the step count after each training step and
        returns the summary (``StopIteration.value``); :func:`fit_together` interleaves these."""
        cfg = self.config
        step_hooks = hooks(self.callbacks, "on_step_end")
        epoch_hooks = hooks(self.callbacks, "on_epoch_end")
        fit_hooks = hooks(self.callbacks, "on_fit_end")
        if cfg.threads:
            configure_threads(cfg.threads)
        if cfg.cudnn_benchmark and self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        self.model.train()
        if not self._initialised:
            self._initialise()
        self._set_reducers()
        if self.run_dir is not None:
            self._write_config()
        if self.step == 0:
            # The model's own noise (weights were seeded by the caller); each rank its own.
            seed_all(cfg.seed + 1 + 1_000_003 * self.world.rank)
            self._pending_rng = None  # a step-0 checkpoint's streams: superseded by the seed
        else:
            self._restore_random_state()  # a resumed run's streams (no-op on a later fit)
        last_epochs_done = self.loader.epochs_done
        start = time.perf_counter() - self.seconds
        self._fit_start = start
        self._log_mark = (time.perf_counter(), self._examples_seen)
        self._fit_start_step = self.step
        bar = None
        self._logger = RunLogger(self.run_dir, cfg.tensorboard, resume_step=self.step if self._resumed else None)
        try:
            bar = self._progress_bar()
            # The stop decision is taken once per step: with a time budget, asking twice
            # could end the loop on a step whose final checkpoint was never written.
            finished = self.finished
            while not finished:
                self._train_step()
                self.step += 1
                if bar is not None:
                    bar.update(1)
                epochs_done = self.loader.epochs_done
                epoch_ended = epochs_done > last_epochs_done
                last_epochs_done = epochs_done
                finished = self.finished
                # The validation loss: at each epoch's end and the fit's; early stopping
                # decides on it at epoch ends. A fit's end mid-epoch gives an interim figure,
                # which a resumed run drops from the log (an uninterrupted run has none there).
                # The phases validated: those that trained in the epoch that ended (or this one).
                val = self.validate(epochs_done - 1 if epoch_ended else epochs_done) if (epoch_ended or finished) and cfg.val_limit else None
                if val and epoch_ended and cfg.early_stop and self._early_stopping(val):
                    finished = True
                self.epoch_ended, self.fit_ending = epoch_ended, finished
                self.sample_due = bool((cfg.sample_every and self.step % cfg.sample_every == 0) or (not cfg.sample_every and epoch_ended) or finished)
                if self.step % cfg.log_every == 0 or epoch_ended or finished:
                    self.seconds = time.perf_counter() - start
                    self._flush_logs(bar, val=val, interim=bool(val) and not epoch_ended)
                if (cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0) or (not cfg.checkpoint_every and epoch_ended) or finished:
                    self.seconds = time.perf_counter() - start
                    self.save_checkpoint()
                if step_hooks or (epoch_ended and epoch_hooks):
                    self._join_default_stream()  # callbacks may read the model: every step so far has run
                    for hook in step_hooks:
                        hook(self)
                    if epoch_ended:
                        for hook in epoch_hooks:
                            hook(self)
                yield self.step
            if fit_hooks:
                self._join_default_stream()
                for hook in fit_hooks:
                    hook(self)
        finally:
            if bar is not None:
                bar.close()
            # The reducers' hooks come off the parameters (a backward outside fit, or after a
            # failed step that left one armed, must not start collectives); the next fit
            # puts them back.
            for reducer in self._reducers.values():
                reducer.remove()
            self._reducers = {}
            self._logger.close()
            self._join_default_stream()  # the caller's work after fit sees every step
        self.seconds = time.perf_counter() - start
        return TrainResult(self.step, self.loader.epochs_done, self.seconds, dict(self.last))

    def _set_reducers(self) -> None:
        """Under torchrun with ``ddp_overlap``: one :class:`~deepgen.training.distributed.OverlappedReducer`
        per phase (hooks on its parameters) for this fit, taken off again when it ends."""
        cfg = self.config
        if self.world.size > 1 and cfg.ddp_overlap:
            self._reducers = {
                phase.name: distributed.OverlappedReducer(phase.parameters, self.world.size, cfg.ddp_bucket_mb, self._wire_dtype)
                for phase in self.phases
            }

    @property
    def _wire_dtype(self) -> torch.dtype | None:
        """The gradients' dtype in the all-reduce (``ddp_grad_dtype``; None: their own)."""
        return torch.bfloat16 if self.config.ddp_grad_dtype == "bfloat16" else None

    @torch.no_grad()
    def _initialise(self) -> None:
        """Finish a new run's weights before its first step: the model's data-dependent
        initialisation (:class:`DataInit`) on the first ``batch_size`` training examples,
        then, under torchrun, rank 0's weights for every rank; the EMA starts from the
        result. The examples are read apart from the training loader (its batches, order
        and random streams stay as they are) with a generator of their own."""
        cfg = self.config
        if isinstance(self.model, DataInit):
            gen = torch.Generator(self.device).manual_seed(cfg.seed + 7)  # dynamic binarization, if any
            batch = next(iterate(self.dataset, "train", cfg.batch_size, self.device, gen, limit=cfg.batch_size))
            self.model.data_init(batch)
        if self.world.size > 1:
            distributed.broadcast_module(self.model)  # every rank starts from rank 0's weights
        if self.ema is not None:
            # In place: a caller that took trainer.eval_model before fit holds this copy.
            self.ema.reset(self.model)
        self._initialised = True

    @torch.no_grad()
    def validate(self, epoch: int | None = None) -> dict[str, float]:
        """The loss of every phase (active in ``epoch``; None: all) of :attr:`eval_model` (the
        EMA copy when the run keeps one: the weights that are evaluated and sampled, so that
        model selection and early stopping judge those) averaged over the
        validation split's (``dataset.validation_split``: the held-out training examples,
        else the test split) first ``val_limit`` examples, in eval mode: ``{val_loss: ...}``
        (``<phase>/val_loss`` for several phases); empty without test examples. The same examples and conversion
        draws every time (a generator of its own); torch's random streams are forked
        around it, so training goes on exactly as without it. Under torchrun every rank
        computes it and the ranks' mean is taken (one collective), so all agree."""
        cfg = self.config
        self._join_default_stream()  # graph mode: every step so far has run
        devices = [self.device] if self.device.type == "cuda" else []
        model = self.eval_model
        was_training = model.training
        gen = torch.Generator(self.device).manual_seed(cfg.seed + 11)
        phases = [p for p in self.phases if epoch is None or p.active(epoch)]
        sums: torch.Tensor | None = None
        n = 0
        if not phases:
            return {}
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16) if cfg.bf16 else nullcontext()
        with torch.random.fork_rng(devices=devices, device_type=self.device.type):
            # The model's own noise from fixed seeds too, so the figure moves only with the weights.
            torch.random.default_generator.manual_seed(cfg.seed + 13)
            if self.device.type == "cuda":
                torch.cuda.default_generators[torch.cuda.current_device() if self.device.index is None else self.device.index].manual_seed(cfg.seed + 13)
            model.eval()
            try:
                for batch in iterate(self.dataset, self.dataset.validation_split, cfg.batch_size, self.device, gen, limit=cfg.val_limit):
                    with autocast:
                        losses = torch.stack([model.loss(batch, p.name).loss.detach().float().reshape(()) for p in phases])
                    sums = losses * len(batch) if sums is None else sums + losses * len(batch)
                    n += len(batch)
            finally:
                model.train(was_training)
        if sums is None or n == 0:
            return {}
        if self.world.size > 1:
            sums = distributed.sum_over_ranks(sums) / self.world.size
        values = (sums / n).tolist()  # one sync
        return {self.val_keys[p.name]: v for p, v in zip(phases, values)}

    def _early_stopping(self, val: Mapping[str, float]) -> bool:
        """Count the epochs since keep_best's validation figure improved; True (and the
        run is stopped for good) when they reach ``early_stop``. Epochs where the figure's
        phase did not train (greedy pretraining) do not count."""
        cfg = self.config
        if cfg.keep_best not in val:
            return bool(self._early["stopped"])
        value = val[cfg.keep_best]
        state = self._early
        best = state["best"]
        if value is not None and math.isfinite(value) and (best is None or (value < best if cfg.best_mode == "min" else value > best)):
            state.update(best=value, best_epoch=self.loader.epochs_done, bad_epochs=0)
        else:
            state["bad_epochs"] += 1
        if state["bad_epochs"] >= cfg.early_stop:
            state["stopped"] = True
        return bool(state["stopped"])

    @property
    def stopped_early(self) -> bool:
        """True once early stopping has ended the run (it stays ended on resume)."""
        return bool(self._early["stopped"])

    @property
    def finished(self) -> bool:
        """True once ``epochs`` are complete, ``max_steps`` steps are taken, ``max_seconds``
        of training time have passed (each ``fit`` takes one step at least), or early
        stopping has ended the run."""
        cfg = self.config
        if self.stopped_early and cfg.early_stop:
            return True
        if self.loader.epochs_done >= cfg.epochs or (cfg.max_steps and self.step >= cfg.max_steps):
            return True
        if not cfg.max_seconds:
            return False
        if self._fit_start is None:  # outside fit: the training time recorded so far
            return self.step > 0 and self.seconds >= cfg.max_seconds
        # A time budget: host clock only, read at step boundaries (no device sync), so the
        # last step may still be running on the GPU when it triggers. Each fit takes at
        # least one step, so even a budget shorter than one step ends with a checkpoint.
        late = self.step > self._fit_start_step and time.perf_counter() - self._fit_start >= cfg.max_seconds
        if self.world.size == 1:
            return late
        # Several processes must stop at the same step: they agree at log points only (one
        # small collective per log_every steps, none per step).
        return self.step % cfg.log_every == 0 and distributed.agree(late, self.device)

    def _write_config(self) -> None:
        """config.json: written fresh for a new run; on resume, only the trainer settings
        (and the data settings of ``RESUMABLE_DATA``, which do not change the batches) change."""
        assert self.run_dir is not None
        if not self._resumed:
            ckpt.write_run_config(
                self.run_dir, self.model_name, self.model.config, self.data_config, self.config, self.dataset,
                networks=self.model.network_records,
            )
            return
        cfg = ckpt.read_run_config(self.run_dir)
        cfg["train"] = self.config.to_dict()
        for key in RESUMABLE_DATA:
            cfg["data"][key] = getattr(self.data_config, key)
        write_json(self.run_dir / ckpt.CONFIG, cfg)

    def _train_step(self) -> None:
        if self._stream is None:
            self._phases_step()
            return
        # Graph mode: the steps run on the trainer's own stream, joined with the default
        # stream only around the default stream's work (log reads, pictures, checkpoints),
        # not every step: so several trainers' steps can run at once (fit_together).
        if self._after_default:
            self._stream.wait_stream(torch.cuda.current_stream(self.device))
            self._after_default = False
        with torch.cuda.stream(self._stream):
            self._phases_step()
        self._stream_ahead = True

    def _join_default_stream(self) -> None:
        """Make the default stream wait for the steps so far (graph mode); the next step
        then waits for whatever the default stream does in between."""
        if self._stream is not None and self._stream_ahead:
            torch.cuda.current_stream(self.device).wait_stream(self._stream)
            self._stream_ahead = False
            self._after_default = True

    def _phases_step(self) -> None:
        cfg = self.config
        epoch = self.loader.epochs_done  # the epoch this step's batches come from
        factor = lr_factor(cfg, self.step, self.total_steps)
        batch = self.loader.next()
        drawn = 1
        for i, (phase, opt, base_lr) in enumerate(zip(self.phases, self.optimizers, self.base_lrs)):
            if not phase.active(epoch):
                continue
            if self._lrs[i] != base_lr * factor:  # constant lr: written once, not every step
                self._lrs[i] = base_lr * factor
                set_lr(opt, base_lr * factor)
            for r in range(phase.repeats):
                if r > 0 and phase.new_batch:
                    batch = self.loader.next()
                    drawn += 1
                self._phase_update(phase, opt, batch)
                self._counts[phase.name] = self._counts.get(phase.name, 0) + 1
        self._examples_seen += drawn * self.loader.batch_size * self.world.size
        if self.ema is not None:
            # The steps before this one: 0 at the first update, whose warm-up decay is 0
            # (the average starts as the weights; diffusers' EMAModel counts the same way).
            self.ema.update(self.model, self.step)

    def _phase_update(self, phase: Phase, opt: torch.optim.Optimizer, batch: Batch) -> None:
        """One optimizer step of ``phase`` on ``batch``: eager, or a CUDA graph's replay."""
        if self._stream is None:
            self._phase_step(phase, opt, batch)
            return
        graph = self._graphs.get(phase.name)
        if graph is None:
            runs = self._eager_runs.get(phase.name, 0)
            if runs < WARMUP_RUNS:
                self._eager_runs[phase.name] = runs + 1
                self._phase_step(phase, opt, batch)
                return
            # With compile: the warm-up runs compiled the step; a recompilation inside the
            # capture (a guard that changed) cannot be captured, so it fails at once, as
            # one clear error, instead of compiling under capture.
            stance = torch.compiler.set_stance("fail_on_recompile") if self.config.compile else nullcontext()
            with stance:
                graph = PhaseGraph(lambda b: self._phase_step(phase, opt, b), batch, self._stream, f"{self.model_name}/{phase.name}")
            self._graphs[phase.name] = graph
        graph.replay(batch)

    def _phase_step(self, phase: Phase, opt: torch.optim.Optimizer, batch: Batch) -> None:
        """Loss, backward, clip, optimizer step, after-step hook, log accumulation: all device work.

        With ``grad_accum`` > 1 the batch is split into that many equal micro-batches whose
        gradients of ``loss / grad_accum`` are summed before the one optimizer step (the
        same step as on the whole batch for a loss that is a mean over examples); the
        logged values are the micro-batches' means. Under torchrun the gradients are
        averaged over the ranks once, before the step."""
        cfg = self.config
        # A captured step may not cache bf16 weight copies across replays (autocast's cache).
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, cache_enabled=not cfg.cuda_graph) if cfg.bf16 else nullcontext()
        parts = cfg.grad_accum
        logs: dict[str, torch.Tensor] = {}
        reducer = self._reducers.get(phase.name)
        for k, micro in enumerate(_micro_batches(batch, parts)):
            with autocast:
                out = self._loss(micro, phase.name)
            if k == 0:
                self.model.zero_grad(set_to_none=True)
            if reducer is not None and k == parts - 1:
                reducer.arm()  # the last micro-batch's backward completes the gradients: reduce them as they come
            (out.loss if parts == 1 else out.loss / parts).backward()
            these = {"loss": out.loss, **out.logs}
            logs = {n: v.detach() if k == 0 else logs[n] + v.detach() for n, v in these.items()}
        if parts > 1:
            logs = {n: v / parts for n, v in logs.items()}
        if reducer is not None:
            reducer.wait()
        elif self.world.size > 1:
            distributed.average_gradients(phase.parameters, self.world.size, self._wire_dtype)
        if cfg.grad_clip > 0:
            logs["grad_norm"] = torch.nn.utils.clip_grad_norm_(phase.parameters, cfg.grad_clip, foreach=True)
        else:  # the same global norm, on the device (no sync): read at log points like the rest
            logs["grad_norm"] = _grad_norm(phase.parameters, self.device)
        opt.step()
        if phase.after_step is not None:
            phase.after_step()
        self._accumulate(phase.name, logs)

    def _accumulate(self, phase: str, logs: dict[str, torch.Tensor]) -> None:
        """Add this phase step's logged values to the phase's device sums (in place, so a
        captured step adds to the same tensor at every replay); the caller counts."""
        values = torch.stack([v.detach().float().reshape(()) for v in logs.values()])  # (K,)
        if phase in self._sums and self._log_names[phase] == list(logs):
            self._sums[phase] += values
            return
        if phase in self._sums:  # the logged names changed: read out what was summed so far
            self._flush_logs()
        self._log_names[phase] = list(logs)
        self._sums[phase] = values
        self._counts[phase] = 0

    def _flush_logs(self, bar: Any = None, *, val: Mapping[str, float] | None = None, interim: bool = False) -> None:
        """Read the summed device tensors (one sync), log their means, guard against NaN.

        ``val``: validation figures to log with them (``interim``: a resumed run drops
        them from the log). Logged beside the means, host-side: each phase's lr and the
        throughput since the last log point (``samples_per_s``)."""
        self._join_default_stream()
        phases = [p for p in self._sums if self._counts.get(p, 0) > 0]
        if not phases and not val:
            return
        prefix = len(self.phases) > 1
        means: dict[str, float] = {}
        if phases:
            stacked = torch.cat([self._sums[p] for p in phases])
            if self.world.size > 1:  # every rank logs (and guards) the mean over all ranks
                stacked = distributed.sum_over_ranks(stacked) / self.world.size
            values = stacked.tolist()
            for phase in phases:
                for name in self._log_names[phase]:
                    means[f"{phase}/{name}" if prefix else name] = values.pop(0) / self._counts[phase]
            # Zeroed in place: a captured step keeps adding to these very tensors.
            torch._foreach_zero_(list(self._sums.values()))
            self._counts.clear()
        if val:
            means.update(val)
        for key, history in self._history.items():
            if key in means:
                history.append(means[key])
                # "The loss oscillates" as a number: half the range over a moving window.
                means[f"{key}_osc"] = (max(history) - min(history)) / 2
        extra = {"epoch": self.loader.epochs_done, "seconds": round(self.seconds, 3)}
        host: dict[str, float] = {}
        for phase, lr in zip(self.phases, self._lrs):
            if lr is not None and phase.name in phases:  # the phases that stepped since the last log point
                host[f"{phase.name}/lr" if prefix else "lr"] = lr
        now = time.perf_counter()
        if self._log_mark is not None:
            then, seen = self._log_mark
            if now > then and self._examples_seen > seen:
                host["samples_per_s"] = (self._examples_seen - seen) / (now - then)
        self._log_mark = (now, self._examples_seen)
        if self._logger is not None:
            self._logger.log(self.step, {**means, **host}, interim=list(val) if val and interim else (), **extra)
            if isinstance(self.model, HasHistograms):
                self._logger.histograms(self.step, self.model.histograms())
        # The guard watches training; a validation loss may be infinite (a density model on an unseen example).
        bad = [n for n, v in means.items() if not math.isfinite(v) and not (val and n in val)]
        if bad:
            kept = self._kept_checkpoint()
            raise TrainingDiverged(
                f"training diverged: {', '.join(bad)} became NaN/Inf by step {self.step}; {kept}. "
                "Lower the model's learning rate lr, set the trainer's grad_clip=1.0, or turn off bf16 (on the command line: "
                "--set lr=..., --set grad_clip=1.0)."
            )
        self.last = means
        self._figures.update(means)
        if bar is not None:
            bar.set_postfix({k: f"{v:.4g}" for k, v in list(means.items())[:4]}, refresh=False)

    def _kept_checkpoint(self) -> str:
        if self.run_dir is None:
            return "no run folder was written"
        if ckpt.has_checkpoint(self.run_dir):
            return f"the last good checkpoint in {self.run_dir} is kept"
        return "no checkpoint had been written yet"

    def _progress_bar(self) -> Any:
        if not self.config.progress or not self.world.is_main or not sys.stderr.isatty():
            return None
        from tqdm.auto import tqdm

        return tqdm(total=self.total_steps, initial=min(self.step, self.total_steps), desc=self.model_name, unit="step", dynamic_ncols=True)

    # -- outputs --------------------------------------------------------------------------
    @property
    def eval_model(self) -> GenerativeModel:
        """The model used for pictures and evaluation: the EMA copy when there is one."""
        return self.ema.model if self.ema is not None else self.model  # type: ignore[return-value]

    def save_checkpoint(self) -> None:
        """Weights, EMA, optimizers, step, RNG states and data position, written atomically."""
        self._flush_logs()  # the NaN guard sees every step before the checkpoint is written (every rank); joins the streams
        # Every rank checks (the weights are identical, so all ranks stop together) and
        # hands rank 0 its random streams, which differ per rank.
        finite = torch.stack([p.detach().isfinite().all() for p in self.model.parameters()]).all()
        if not bool(finite):
            raise TrainingDiverged(f"a weight became NaN/Inf by step {self.step}; {self._kept_checkpoint()}.")
        rank_rng = distributed.gather_objects(self._random_state()) if self.world.size > 1 else None
        figure = self._checkpoint_figure()
        if self.run_dir is None:
            return
        if not (self.run_dir / ckpt.CONFIG).is_file():
            self._write_config()
        state: dict[str, Any] = {
            "step": self.step,
            "seconds": self.seconds,
            "optimizers": [optimizer_state(opt) for opt in self.optimizers],
            "loader": self.loader.state_dict(),
            "rng_cpu": torch.get_rng_state(),
            # The oscillation window, so that a resumed run's <key>_osc equals an uninterrupted run's.
            "osc_history": {key: list(history) for key, history in self._history.items()},
            "examples": len(self.dataset.train),  # a resumed run's data must have as many
        }
        if self.config.early_stop:
            state["early_stop"] = dict(self._early)  # the patience goes on where it stopped
        if self.device.type == "cuda":
            state["rng_cuda"] = torch.cuda.get_rng_state(self.device)
        if rank_rng is not None:
            state["rank_rng"] = rank_rng  # per rank: global CPU/CUDA generators, the loader's per-batch one
        pending = self._pending_rng
        if pending is not None:  # resumed but not yet fit: the run's streams are the checkpoint's, not the caller's
            state.update({k: pending[k] for k in ("rng_cpu", "rng_cuda", "rank_rng") if k in pending})
        ckpt.write_checkpoint(
            self.run_dir, self.step, self.model.state_dict(), state,
            ema=None if self.ema is None else self.ema.model.state_dict(),
            metadata={"step": str(self.step), "model": self.model_name},
            keep=self.config.keep_checkpoints, figure=figure, best_mode=self.config.best_mode,
        )

    def _checkpoint_figure(self) -> dict[str, Any] | None:
        """``keep_best``'s figure for the checkpoint of this step: the key's latest logged
        value (the mean over the log window that ends here, or a validation figure logged
        since the last checkpoint). A key never logged is a :class:`UserError`."""
        key = self.config.keep_best
        if not key:
            return None
        if self._figures and key not in self._figures and key not in self.val_keys.values():
            raise UserError(
                f"keep_best={key!r} is not a value this run logs; it logs {', '.join(sorted(self._figures))}. "
                "Set keep_best to one of them (keep_best=loss, with best_mode=min or max)."
            )
        value = self._figures.get(key)
        return {"key": key, "value": value if value is not None and math.isfinite(value) else None, "mode": self.config.best_mode}

    def _random_state(self) -> dict[str, torch.Tensor]:
        """This process's random streams: torch's global generators and the loader's per-batch one."""
        out = {"cpu": torch.get_rng_state(), "convert": self.loader.convert_gen.get_state()}
        if self.device.type == "cuda":
            out["cuda"] = torch.cuda.get_rng_state(self.device)
        return out

    def _restore(self, state: dict[str, Any]) -> None:
        """Take a checkpoint's trainer state (checked for its fields' presence and types by
        ``checkpoint.load_trainer_state``); one :class:`UserError` when it does not fit."""
        self.step = int(state["step"])
        self.seconds = float(state["seconds"])
        examples = state.get("examples")
        if examples is not None and examples != len(self.dataset.train):
            raise UserError(
                f"the checkpoint was trained on {examples} training examples, but the data now has "
                f"{len(self.dataset.train)} (data settings or files changed since); it cannot go on from there."
            )
        if len(state["optimizers"]) != len(self.optimizers):
            raise UserError(f"the checkpoint holds {len(state['optimizers'])} optimizers but {self.model_name} has {len(self.optimizers)} phases; it is from other code.")
        for phase, opt, sd in zip(self.phases, self.optimizers, state["optimizers"]):
            try:
                load_optimizer_state(opt, sd)
            except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as e:  # torch: another number or size of parameter groups
                raise UserError(f"the checkpoint's optimizer state does not fit phase {phase.name!r} ({e}); it is from other code.") from None
        try:
            self.loader.load_state_dict(state["loader"])
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as e:
            raise UserError(f"the checkpoint's data position does not fit this data ({type(e).__name__}: {e}); it is corrupt or from other code.") from None
        try:
            torch.Generator().set_state(state["rng_cpu"])  # checked here; set when fit starts
        except (TypeError, RuntimeError) as e:
            raise UserError(f"the checkpoint's random generator state is corrupt ({e}).") from None
        early = state.get("early_stop")
        if isinstance(early, dict) and self.config.early_stop:
            best = early.get("best")
            self._early = {
                "best": float(best) if isinstance(best, (int, float)) and not isinstance(best, bool) else None,
                "best_epoch": int(early.get("best_epoch", 0) or 0),
                "bad_epochs": int(early.get("bad_epochs", 0) or 0),
                "stopped": bool(early.get("stopped", False)),
            }
        for key, values in state.get("osc_history", {}).items():
            if key in self._history:
                self._history[key].extend(float(v) for v in values)
        # The global random streams are set when fit starts (_restore_random_state), not
        # here: whatever the caller draws between resume() and fit() cannot shift them, and
        # building a trainer leaves the caller's streams alone.
        self._pending_rng = state

    def _restore_random_state(self) -> None:
        """The checkpoint's global CPU (and CUDA, and per-rank) random streams, once, at the
        start of the first fit after a resume: the steps then draw what an uninterrupted run draws."""
        state, self._pending_rng = self._pending_rng, None
        if state is None:
            return
        torch.set_rng_state(state["rng_cpu"])
        if "rng_cuda" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng_cuda"], self.device)
        if self.world.size > 1:
            self._restore_rank_random_state(state.get("rank_rng"))

    def _restore_rank_random_state(self, saved: Any) -> None:
        """Under torchrun: this rank's own random streams from the checkpoint, or fresh
        per-rank ones if it was written by another number of processes (or device type)."""
        rank = self.world.rank
        if isinstance(saved, list) and len(saved) == self.world.size:
            mine = saved[rank]
            try:
                torch.set_rng_state(mine["cpu"])
                self.loader.convert_gen.set_state(mine["convert"])
                if self.device.type == "cuda" and "cuda" in mine:
                    torch.cuda.set_rng_state(mine["cuda"], self.device)
                return
            except (RuntimeError, KeyError):
                pass
        fresh = self.config.seed + 1 + 1_000_003 * rank + 7_919 * self.step
        seed_all(fresh)
        self.loader.convert_gen.manual_seed(fresh + 1)

    # -- resuming -------------------------------------------------------------------------
    @classmethod
    def resume(
        cls,
        run_dir: str | Path,
        *,
        callbacks: Sequence[CallbackLike] = (),
        data_overrides: Mapping[str, Any] | None = None,
        **train_overrides: Any,
    ) -> Trainer:
        """Continue a run folder exactly where its last checkpoint stopped.

        ``train_overrides`` change trainer settings (``epochs=40`` to train longer); the
        model and data configs are the saved ones; ``data_overrides`` may change only the
        data settings of ``RESUMABLE_DATA`` (``workers``: a streamed folder's decoding
        processes change the speed, not the batches). On the CPU, a resumed run's losses
        equal an uninterrupted run's.
        """
        run_dir = Path(run_dir)
        cfg = ckpt.read_run_config(run_dir)
        train_config = ckpt.saved_train_config(cfg)
        data_config = ckpt.saved_data_config(cfg)
        saved_spec = ckpt.saved_spec(cfg)
        found = ckpt.current_checkpoint(run_dir)
        if found is None:
            raise UserError(
                f"cannot resume {run_dir}: the run stopped before its first checkpoint, so there is nothing to "
                f"continue. Start it again with `deepgen train {cfg['model']} --data {data_config.name} --out {run_dir}` "
                "(the unfinished run there is replaced)."
            )
        state = ckpt.load_trainer_state(found)
        if train_overrides:
            train_config = train_config.replace(**train_overrides)
        if data_overrides:
            fixed = sorted(set(data_overrides) - set(RESUMABLE_DATA))
            if fixed:
                raise UserError(f"data settings {fixed} cannot change on resume; only {', '.join(RESUMABLE_DATA)} may.")
            data_config = data_config.replace(**data_overrides)
        # Rebuilding the data and the model (its weights' initial draws, overwritten below)
        # runs on a fork of the CPU stream: resuming leaves the caller's random stream as it
        # was, and the run's own streams are set when fit starts.
        with torch.random.fork_rng(devices=[]):
            dataset = ckpt.reload_dataset(run_dir, data_config)
            differs = ckpt.same_data(saved_spec, dataset.spec)
            if differs is not None:
                raise UserError(f"cannot resume {run_dir}: the data {data_config.name!r} now has {differs}.")
            ckpt.check_data_state(run_dir, dataset)
            model = ckpt.build_model(cfg, dataset)
            ckpt.load_weights(model, found)
            trainer = cls(model, dataset, train_config, run_dir, data_config=data_config, callbacks=callbacks, _resume_state=state)
        if trainer.ema is not None and found.has(ckpt.EMA_WEIGHTS):
            ckpt.load_weights(trainer.ema.model, found, ckpt.EMA_WEIGHTS)  # type: ignore[arg-type]
        return trainer
