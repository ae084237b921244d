"""Pictures during training: the trainer callback that draws a run's samples as it learns.

The trainer draws nothing (it is below the presentation layer); ``deepgen train``,
``deepgen demo`` and ``deepgen bench`` install :class:`SamplePictures`, and Python users
pass it themselves::

    from deepgen.pictures import SamplePictures
    Trainer(model, dataset, config, run_dir="runs/vae", callbacks=[SamplePictures()]).fit()

At every sample point (``TrainConfig.sample_every`` steps, or each epoch end when it is 0,
and the last step) it writes into the run folder:

* ``samples.png``: ``picture_samples`` samples of the EMA model when there is one (a grid
  for images, their means; a scatter for 2-D points, 20x as many, with the dataset's true
  modes as red crosses), from a generator seeded with ``seed + 12345``, so that the
  pictures of one run are comparable from step to step; conditional models
  (``model.num_classes`` set) get labels ``arange(n) % num_classes``;
* ``samples/stepNNNNNNN.png``: a copy of it per sample point (``deepgen report`` shows
  them as a strip);
* ``histograms.png``: the model's value histograms where it has the ``histograms``
  capability (a critic's weights), beside the TensorBoard histograms the trainer logs.

Other data (tables, vectors) gets no sample picture, nor does a model whose ``sample``
raises NotImplementedError (training goes on). Nothing is written without a run
folder (``run_dir=None``, or the ranks other than 0 under torchrun).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .io import atomic_path
from .models.base import HasHistograms
from .training.checkpoint import HISTOGRAMS, SAMPLES, SAMPLES_DIR
from .viz import save_histograms, save_samples

if TYPE_CHECKING:
    from .training import Trainer

PICTURE_SEED = 12345  # added to TrainConfig.seed: the generator of every sample picture
POINTS_PER_PICTURE = 20  # 2-D data: picture_samples x this many points in a scatter


class SamplePictures:
    """A trainer callback (``on_step_end``) that writes ``samples.png``, its per-step copy
    under ``samples/`` and ``histograms.png`` at each sample point of the run.

    ``n``: samples per picture (None: ``TrainConfig.picture_samples``; 2-D data draws
    :data:`POINTS_PER_PICTURE` times as many points).
    """

    def __init__(self, n: int | None = None) -> None:
        if n is not None and n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        self.n = n

    def on_step_end(self, trainer: Trainer) -> None:
        if trainer.sample_due:
            self.draw(trainer)

    @torch.no_grad()
    def draw(self, trainer: Trainer) -> Path | None:
        """Write the pictures for the trainer's current step now; the path of
        ``samples.png``, or None when nothing was drawn (no run folder, or data that has
        no picture)."""
        run_dir = trainer.run_dir
        if run_dir is None:
            return None
        spec = trainer.dataset.spec
        n = (self.n or trainer.config.picture_samples) * (POINTS_PER_PICTURE if spec.shape == (2,) else 1)
        model = trainer.eval_model
        was_training = model.training
        model.eval()
        try:
            gen = torch.Generator(trainer.device).manual_seed(trainer.config.seed + PICTURE_SEED)
            cond = torch.arange(n, device=trainer.device) % model.num_classes if model.num_classes else None
            try:
                samples = model.sample(n, generator=gen, cond=cond, mean=spec.is_image)
            except NotImplementedError:  # a model without a sampler: training goes on, without sample pictures
                samples = None
            if isinstance(model, HasHistograms):
                save_histograms(model.histograms(), run_dir / HISTOGRAMS, title=f"step {trainer.step}")
        finally:
            model.train(was_training)
        path = run_dir / SAMPLES
        if samples is None or not save_samples(samples, spec, path, reference=trainer.dataset.meta.get("modes")):
            return None
        with atomic_path(run_dir / SAMPLES_DIR / f"step{trainer.step:07d}.png") as tmp:
            tmp.write_bytes(path.read_bytes())
        return path


__all__ = ["SamplePictures"]
