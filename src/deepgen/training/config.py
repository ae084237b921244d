"""The trainer's config: everything about how to optimise, nothing about what."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from ..config import Config
from ..errors import UserError

#: The fields whose unset value (None) means "the model's default" (GenerativeModel.train_defaults), with their off values.
MODEL_DEFAULTED: dict[str, float] = {"ema": 0.0, "ema_warmup": 0.0}


@dataclass(frozen=True)
class TrainConfig(Config):
    epochs: int = 10
    batch_size: int = 128
    seed: int = 0  # seeds the weights (when the CLI builds the model), the data order and the noise
    device: str = "auto"  # auto = cuda when available, else cpu; or cpu, cuda, cuda:N, mps
    schedule: Literal["constant", "cosine", "linear", "iwae"] = "constant"  # lr factor over the run (iwae: Burda et al.'s staircase, optim.schedule_factor)
    warmup_steps: int = 0  # linear warm-up of the lr from 0 over this many steps
    grad_clip: float = 0.0  # max global gradient norm per phase; 0 = off
    bf16: bool = False  # bf16 autocast for the forward pass (weights and optimizer stay fp32)
    compile: bool = False  # torch.compile the loss (forward and backward); pays off on GPUs
    # torch.compile's mode: max-autotune-no-cudagraphs times Triton templates against the
    # library kernels for each matmul and convolution shape (minutes of compilation more;
    # cuda_graph=true does the capturing, so not max-autotune's own CUDA graphs).
    compile_mode: Literal["default", "max-autotune-no-cudagraphs"] = "default"
    cuda_graph: bool = False  # capture each phase's step in a CUDA graph, one launch per step (CUDA only); with compile, the compiled step is captured
    # None (unset): the model's own default (its train_defaults: ddpm 0.9999 and 0.75), else 0.
    ema: float | None = None  # decay of an exponential moving average of the weights; 0 = off
    ema_warmup: float | None = None  # power of diffusers' EMA warm-up: decay min(ema, 1 - (1 + step)^-power); 0 = off
    log_every: int = 50  # steps between reads of the logged device tensors (one sync each)
    osc_window: int = 20  # log points in the moving window of the oscillation measure (<key>_osc)
    sample_every: int = 0  # steps between sample points (trainer.sample_due: pictures); 0 = at the end of each epoch
    checkpoint_every: int = 0  # steps between checkpoints; 0 = at the end of each epoch
    keep_checkpoints: int = 2  # newest complete checkpoints kept in run/checkpoints; older ones go once a newer one is current
    keep_best: str = ""  # a logged value (e.g. loss): also keep the checkpoint where it was best; "" = off
    best_mode: Literal["min", "max"] = "min"  # keep_best: the lowest (min) or highest (max) value is best
    max_steps: int = 0  # stop after this many steps in all (0 = no limit)
    max_seconds: float = 0.0  # stop at the first step boundary past this much training time (0 = no limit)
    picture_samples: int = 64  # examples in each sample picture of deepgen.pictures.SamplePictures (2-D data: 20x as many points)
    progress: bool = True  # tqdm progress bar (shown when stderr is a terminal)
    # cuDNN times its algorithms for each convolution shape at first use and keeps the
    # fastest (torch.backends.cudnn.benchmark, a process-wide flag set at fit, never unset):
    # a one-off cost per shape, for convolutional networks trained on one batch shape (the
    # loader drops the tail). Off by default, as in torch; the chosen algorithms may differ
    # from run to run, so a resumed run's figures can differ in the last bits.
    cudnn_benchmark: bool = False
    threads: int = 0  # CPU threads; 0 = leave torch's (one per core; importing deepgen shortens OpenMP's spin-wait, so it does not stall beside busy processes)
    tensorboard: bool = True  # TensorBoard event files in run/tb (needs the tensorboard package)
    grad_accum: int = 1  # micro-batches per optimizer step: each batch is split in this many equal parts, their gradients summed
    weight_decay: float | None = None  # every phase's weight decay (param groups with their own keep it); None = each phase's own
    val_limit: int = 10000  # examples in the validation loss (val_loss) at each epoch's end and the fit's: the data's validation split (data setting validation=N), else the test split; 0 = off
    early_stop: int = 0  # patience in epochs on the validation figure (keep_best, default val_loss); 0 = off
    # Under torchrun: all-reduce the gradients in buckets while backward runs (DDP's overlap;
    # distributed.OverlappedReducer) instead of in one buffer after it; the buckets' size;
    # and the gradients' type on the wire (bfloat16 halves the bytes). Under compile=true the
    # compiled backward hands over every gradient at its end, so the buckets go out together
    # there (no overlap; DDP needs its DDPOptimizer for that).
    ddp_overlap: bool = False
    ddp_bucket_mb: float = 25.0
    ddp_grad_dtype: Literal["float32", "bfloat16"] = "float32"

    def for_model(self, defaults: Mapping[str, Any]) -> TrainConfig:
        """This config with each unset (None) field of :data:`MODEL_DEFAULTED` taken from a
        model's ``train_defaults`` (``defaults``), else its off value: what a trainer runs.
        A value the user set, 0 included, is kept; with the EMA off (ema=0), an unset
        warm-up is off too (there is nothing to warm up). A warm-up set for a model that
        has no EMA by default, with ema unset, is one :class:`UserError` (it would do nothing)."""
        filled = {k: defaults.get(k, off) for k, off in MODEL_DEFAULTED.items() if getattr(self, k) is None}
        if not filled.get("ema", self.ema):
            if "ema_warmup" in filled:
                filled["ema_warmup"] = 0.0
            elif "ema" in filled and self.ema_warmup:
                raise UserError(f"ema_warmup={self.ema_warmup} ramps up the EMA's decay, but this model trains without an EMA "
                                "by default; set ema (e.g. 0.999) as well")
        return self.replace(**filled)

    def validate(self) -> None:
        self.check(self.threads >= 0, f"threads must be >= 0 (0 = deepgen's choice), got {self.threads}")
        self.check(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}")
        self.check(self.compile or self.compile_mode == "default", f"compile_mode={self.compile_mode} is a mode of torch.compile: set compile=true as well")
        self.check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        self.check(self.warmup_steps >= 0, f"warmup_steps must be >= 0, got {self.warmup_steps}")
        self.check(self.grad_clip >= 0, f"grad_clip must be >= 0 (0 = off), got {self.grad_clip}")
        self.check(self.ema is None or 0.0 <= self.ema < 1.0, f"ema must be in [0, 1) (0 = off), got {self.ema}")
        self.check(self.ema_warmup is None or self.ema_warmup >= 0, f"ema_warmup must be >= 0 (0 = off), got {self.ema_warmup}")
        # ema=0 with a warm-up is allowed (the warm-up does nothing): a ddpm's defaults bring
        # ema_warmup=0.75, and ema=0 alone must turn its EMA off, on a resume too.
        self.check(self.log_every >= 1, f"log_every must be >= 1, got {self.log_every}")
        self.check(self.osc_window >= 2, f"osc_window must be >= 2, got {self.osc_window}")
        self.check(self.max_seconds >= 0, f"max_seconds must be >= 0 (0 = no limit), got {self.max_seconds}")
        self.check(self.keep_checkpoints >= 1, f"keep_checkpoints must be >= 1 (the current checkpoint is always kept), got {self.keep_checkpoints}")
        for name in ("sample_every", "checkpoint_every", "max_steps"):
            self.check(getattr(self, name) >= 0, f"{name} must be >= 0, got {getattr(self, name)}")
        self.check(self.grad_accum >= 1, f"grad_accum must be >= 1 (1 = off), got {self.grad_accum}")
        self.check(
            self.batch_size % self.grad_accum == 0,
            f"batch_size={self.batch_size} must split into grad_accum={self.grad_accum} equal micro-batches; "
            f"use a batch_size that is a multiple of {self.grad_accum}",
        )
        self.check(self.weight_decay is None or self.weight_decay >= 0, f"weight_decay must be >= 0 (or None = each phase's own), got {self.weight_decay}")
        self.check(self.val_limit >= 0, f"val_limit must be >= 0 (0 = off), got {self.val_limit}")
        self.check(self.early_stop >= 0, f"early_stop must be >= 0 (0 = off), got {self.early_stop}")
        self.check(
            not (self.early_stop and not self.val_limit),
            f"early_stop={self.early_stop} watches the validation loss, but val_limit=0 (off); set val_limit (e.g. 10000) as well",
        )
        self.check(self.ddp_bucket_mb > 0, f"ddp_bucket_mb must be > 0 (MiB of gradients per all-reduce), got {self.ddp_bucket_mb}")
        self.check(
            not (self.ddp_overlap and self.cuda_graph),
            "ddp_overlap=true launches each bucket's all-reduce from a backward hook, which a CUDA graph does not capture; "
            "use one of ddp_overlap and cuda_graph (under cuda_graph the gradients are all-reduced in one buffer, captured)",
        )
        self.check(self.picture_samples >= 1, f"picture_samples must be >= 1, got {self.picture_samples}")
