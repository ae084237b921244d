"""The networks behind deepgen's sample-quality features (pure ``nn.Module`` code).

* :class:`DigitCNN` (shape: :class:`CNNArchitecture`): the small classifier for 1x28x28
  images whose 128-d penultimate activations are the MNIST / Fashion-MNIST features.
* :class:`_AECodes`: a trained deepgen autoencoder seen as a feature network
  (``features(x)`` = its codes), for datasets without a classifier recipe.
* :class:`FeatureNet`: either of them frozen, in eval mode, with the facts the metrics
  print and the cache checks.

How they are trained, which recipe applies to which dataset, and the on-disk cache live
in :mod:`deepgen.metrics.features`, which re-exports these names; this module only
builds and runs networks (no data, no training, no files).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torch import nn

from ..errors import UserError

FEATURE_DIM = 128  # classifier features: the penultimate (fc) layer's width

Kind = Literal["classifier", "autoencoder"]

_DISPLAY = {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST"}


def _display(name: str) -> str:
    """A dataset's name as people write it (``mnist`` -> ``MNIST``), for messages."""
    return _DISPLAY.get(name, name)


# -- the classifier network ----------------------------------------------------------------


@dataclass(frozen=True)
class CNNArchitecture:
    """The classifier's shape: three 3x3 conv stages, global average pool, fc, fc.

    (N, 1, 28, 28) -conv c1, maxpool, BN, ReLU-> (N, c1, 14, 14) -conv c2, maxpool, BN,
    ReLU-> (N, c2, 7, 7) -conv c3 (no padding), BN, ReLU-> (N, c3, 5, 5) -mean-> (N, c3)
    -fc, ReLU-> (N, feature_dim) [features] -dropout, fc-> (N, num_classes).
    About 0.11M parameters and 5.6M multiply-adds per image. Pooling right after the
    conv runs batch norm and ReLU on a quarter of the activations: on a CPU those
    memory-bound passes cost as much as the convolutions, and this order trains about
    25% faster than conv-BN-ReLU-pool, with the same accuracy.
    """

    channels: tuple[int, int, int] = (32, 64, 128)
    feature_dim: int = FEATURE_DIM
    num_classes: int = 10
    dropout: float = 0.2  # before the last layer only, so the features themselves are never dropped
    input_shape: tuple[int, int, int] = (1, 28, 28)

    def to_dict(self) -> dict[str, Any]:
        return {"name": "deepgen-cnn-v1", **{k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}}


class DigitCNN(nn.Module):
    """The small classifier for 1x28x28 images (see :class:`CNNArchitecture`)."""

    def __init__(self, arch: CNNArchitecture = CNNArchitecture()) -> None:
        super().__init__()
        c1, c2, c3 = arch.channels
        cin = arch.input_shape[0]

        def stage(i: int, o: int, padding: int, pool: bool) -> list[nn.Module]:
            # No conv bias: the batch norm after it has one.
            conv = nn.Conv2d(i, o, 3, padding=padding, bias=False)
            return [conv, *([nn.MaxPool2d(2)] if pool else []), nn.BatchNorm2d(o), nn.ReLU(inplace=True)]

        self.trunk = nn.Sequential(
            *stage(cin, c1, 1, pool=True),  # (N, c1, 14, 14)
            *stage(c1, c2, 1, pool=True),  # (N, c2, 7, 7)
            *stage(c2, c3, 0, pool=False),  # (N, c3, 5, 5)
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),  # (N, c3)
            nn.Linear(c3, arch.feature_dim), nn.ReLU(inplace=True),  # (N, F)
        )  # fmt: skip
        self.dropout = nn.Dropout(arch.dropout)
        self.head = nn.Linear(arch.feature_dim, arch.num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, F) penultimate activations."""
        return self.trunk(x)

    def classify(self, h: torch.Tensor) -> torch.Tensor:
        """Features (N, F) -> logits (N, num_classes)."""
        return self.head(self.dropout(h))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.features(x))


class _AECodes(nn.Module):
    """Wraps a deepgen autoencoder so that ``features(x)`` is its ``encode(x)``.

    ``features``: (N, *spec.shape) in model space -> (N, latent_dim) codes. The
    autoencoder's weights are stored under ``ae.`` (the cache's key names).
    """

    def __init__(self, ae: nn.Module) -> None:
        super().__init__()
        self.ae = ae

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.ae.encode(x)  # type: ignore[operator]


# -- the feature network handed to the metrics ---------------------------------------------


class FeatureNet(nn.Module):
    """A frozen feature network: ``features(x)`` (N, F) for sample-quality metrics.

    Always in eval mode (``train()`` is a no-op), so batch norm uses its running
    statistics and dropout is off: the features of an image do not depend on the other
    images in its batch. (Leaving the feature network in training mode makes FID depend
    on the batch size and on what else is in the batch.) Parameters do not require
    gradients; gradients with respect to the input still flow, for feature-matching losses.

    Metadata: ``name`` (the dataset it was trained on), ``kind`` ("classifier" or
    "autoencoder"), ``accuracy`` (test accuracy in [0, 1]; None for an autoencoder),
    ``data_sha256`` (SHA-256 of the training data), ``seed``, ``feature_dim``,
    ``input_shape`` (one example, as the model sees it), ``info`` (every stored fact).
    """

    def __init__(
        self,
        net: nn.Module,
        *,
        name: str,
        kind: Kind,
        input_shape: tuple[int, ...],
        feature_dim: int,
        accuracy: float | None,
        data_sha256: str,
        seed: int,
        info: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.net = net
        self.name = name
        self.kind: Kind = kind
        self.input_shape = tuple(input_shape)
        self.feature_dim = feature_dim
        self.accuracy = accuracy
        self.data_sha256 = data_sha256
        self.seed = seed
        self.info: dict[str, Any] = dict(info or {})
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> FeatureNet:
        """Stays in eval mode whatever ``mode`` says (see the class docstring)."""
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def _check(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            got = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
            raise UserError(
                f"{self.name} features need a float tensor in model space (values in [0, 1] for images), "
                f"got {got}. Convert raw data with dataset.convert()."
            )
        if x.dim() != len(self.input_shape) + 1 or tuple(x.shape[1:]) != self.input_shape:
            want = "x".join(map(str, self.input_shape))
            raise UserError(
                f"{self.describe()} takes (N, {', '.join(map(str, self.input_shape))}) inputs "
                f"(examples of {want}, the size it was trained on), got shape {tuple(x.shape)}."
            )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations (classifier) or codes (autoencoder): (N, *input_shape) -> (N, F).

        ``x`` is in model space (images in [0, 1]) on this network's device.
        """
        self._check(x)
        return self.net.features(x)  # type: ignore[operator]

    forward = features

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (N, *input_shape) -> (N, num_classes); classifiers only."""
        if self.kind != "classifier":
            raise UserError(f"{self.describe()}: it has no classes, so no logits.")
        self._check(x)
        return self.net(x)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Most likely class (N, *input_shape) -> (N,) int64; classifiers only."""
        return self.logits(x).argmax(dim=1)

    @torch.no_grad()
    def extract(self, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
        """Features of many examples, ``batch_size`` at a time: (N, *input_shape) on any
        device -> (N, F) float32 on this network's device. No gradients."""
        if batch_size < 1:
            raise UserError(f"batch_size must be >= 1, got {batch_size}")
        self._check(x)
        dev = self.device
        out = [self.features(x[i : i + batch_size].to(dev, torch.float32)) for i in range(0, len(x), batch_size)]
        return torch.cat(out) if out else torch.empty(0, self.feature_dim, device=dev)

    def describe(self) -> str:
        """One line saying what these features are, printed beside every FID."""
        if self.kind == "classifier":
            acc = "test accuracy unknown" if self.accuracy is None else f"test accuracy {100 * self.accuracy:.2f}%"
            return f"{_display(self.name)} classifier ({acc}, seed {self.seed})"
        why = "no labels" if self.info.get("num_classes") is None else "no classifier recipe"
        # Trained on the run's own training rows: two runs of other rows (another max_train,
        # another file) get other features, and their FIDs do not compare; the data's hash
        # says which features a figure used.
        return (
            f"autoencoder features for {self.name} ({why}: not a classifier; "
            f"{self.feature_dim}-d ae codes, seed {self.seed}, trained on data {self.data_sha256[:12]}: "
            f"FIDs compare between runs with these features only)"
        )

    def extra_repr(self) -> str:
        return self.describe()


__all__ = ["FEATURE_DIM", "CNNArchitecture", "DigitCNN", "FeatureNet", "Kind"]
