"""What the scikit-learn estimators of :mod:`deepgen.apps` share.

:class:`AutoencoderEstimator` is a mixin over :class:`sklearn.base.BaseEstimator`:

* input validation (scikit-learn's ``validate_data`` / ``check_array``: NaN and inf are
  refused, sparse and complex input too) for tables (N, F) and image arrays (N, H, W) or
  (N, C, H, W);
* the conversion of arrays to the model's space and back, fitted once in ``fit``
  (:class:`ArrayCodec`): tables are standardised with the training rows' mean and
  standard deviation (``deepgen.data.tables.standardise``, the data layer's own, kept as
  ``Dataset.state`` so ``Dataset.to_original`` undoes it); images become ``continuous``
  values in [0, 1] (uint8 pixels / 255, other non-negative images / their maximum) and
  keep their shape, so that convolutional networks see images;
* building the registered model (weights seeded by ``random_state``), training it with
  deepgen's one :class:`~deepgen.training.Trainer` without a run folder, and batched
  inference (``batch_size`` rows at a time, in eval mode, without gradients);
* pickling: a fitted estimator pickles its model as (name, config, spec, CPU weights) and
  rebuilds it on unpickling, so it loads on a machine without the training GPU.

Torch's global random state is left as it was: training runs inside ``torch.random.fork_rng``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

try:  # scikit-learn >= 1.6
    from sklearn.utils.validation import validate_data
except ImportError:  # older: the estimator's own method

    def validate_data(_estimator: Any, /, X: Any = "no_validation", **check_params: Any) -> Any:  # type: ignore[misc]
        return _estimator._validate_data(X, **check_params)

from ..data.dataset import Dataset, DataSpec, Split
from ..data.tables import standardise
from ..devices import resolve_device
from ..errors import UserError
from ..models import model_class, model_names
from ..models.base import GenerativeModel
from ..training import TrainConfig, Trainer

FLOATS = (np.float64, np.float32)


@dataclasses.dataclass
class ArrayCodec:
    """How arrays map to the model's space, fitted on the training array.

    ``image``: True for (N, H, W) / (N, C, H, W) input; ``input_shape``: one example's
    shape as given; ``spec``: what the model sees. Tables: ``mean`` / ``std`` (F,) of the
    standardisation. Images: values ``(x - low) / (high - low)`` in [0, 1].
    """

    image: bool
    input_shape: tuple[int, ...]
    spec: DataSpec
    mean: np.ndarray | None = None
    std: np.ndarray | None = None
    low: float = 0.0
    high: float = 1.0

    @classmethod
    def fit(cls, X: np.ndarray, integer_input: bool) -> tuple[ArrayCodec, np.ndarray]:
        """The codec for training array ``X`` (validated, float) and ``X`` in model space (float32)."""
        shape = tuple(X.shape[1:])
        if X.ndim == 2:
            x, _, mean, std = standardise(X, X[:0])
            spec = DataSpec(shape=shape, kind="real", name="sklearn")
            return cls(False, shape, spec, mean=mean, std=std), x
        lo, hi = float(X.min()), float(X.max())
        low = min(lo, 0.0)
        if hi <= 1.0 and low == 0.0:
            high = 1.0
        elif integer_input and low == 0.0 and hi <= 255:
            high = 255.0  # uint8-like pixels
        else:
            high = hi
        if high <= low:
            high = low + 1.0
        model_shape = (1, *shape) if X.ndim == 3 else shape
        spec = DataSpec(shape=model_shape, kind="continuous", name="sklearn")
        codec = cls(True, shape, spec, low=low, high=high)
        return codec, codec.to_model(X)

    @property
    def state(self) -> dict[str, np.ndarray]:
        """What ``Dataset.state`` keeps to undo the preprocessing (tables: mean and std)."""
        return {} if self.mean is None or self.std is None else {"mean": self.mean, "std": self.std}

    def to_model(self, X: np.ndarray) -> np.ndarray:
        """Validated input (N, *input_shape) -> model space (N, *spec.shape), float32.
        Image values are clipped to the training range [low, high]."""
        if not self.image:
            assert self.mean is not None and self.std is not None
            return ((np.asarray(X, dtype=np.float64) - self.mean) / self.std).astype(np.float32)
        x = (np.asarray(X, dtype=np.float64) - self.low) / (self.high - self.low)
        return np.clip(x, 0.0, 1.0).astype(np.float32).reshape(len(X), *self.spec.shape)

    def from_model(self, x: np.ndarray) -> np.ndarray:
        """Model space (N, *spec.shape) -> the input's space and shape (N, *input_shape);
        images clipped to the training range."""
        if not self.image:
            assert self.mean is not None and self.std is not None
            return x.astype(np.float64) * self.std + self.mean
        out = np.clip(x.astype(np.float64), 0.0, 1.0) * (self.high - self.low) + self.low
        return out.reshape(len(x), *self.input_shape)


def models_with(capability: Any) -> list[str]:
    """The registered model names whose class has ``capability`` (a runtime Protocol)."""
    return [n for n in model_names() if issubclass(model_class(n), capability)]


def config_fields(name: str) -> set[str]:
    """The setting names of registered model ``name`` (its config's fields)."""
    return {f.name for f in dataclasses.fields(model_class(name).config_class)}


class AutoencoderEstimator:
    """Fitting, inference and pickling shared by the estimators (mixed into BaseEstimator).

    Subclasses list their parameters in ``__init__`` (scikit-learn reads them from its
    signature) and may override :meth:`_check_model` (capabilities the job needs, before
    training) and :meth:`_extra_settings` (settings the job sets, e.g. the corruption).

    Common parameters: ``model`` (a registered model name), ``settings`` (a dict of the
    model's settings, or None), ``latent_dim`` (None: the model's default), ``epochs``,
    ``batch_size`` (training and batched inference), ``lr`` (None: the model's default),
    ``device`` ("auto", "cpu", "cuda", "cuda:N"), ``random_state`` (int or None: seeds the
    weights, the batch order and the training noise), ``verbose`` (progress bar).
    """

    # Filled by subclasses' __init__ (declared for type checkers).
    model: str
    settings: Mapping[str, Any] | None
    latent_dim: int | None
    epochs: int
    batch_size: int
    lr: float | None
    device: str
    random_state: int | None
    verbose: bool

    # -- hooks ----------------------------------------------------------------------------
    def _check_model(self, cls: type[GenerativeModel]) -> None:
        """Raise a clear error when model class ``cls`` lacks what the job needs."""

    def _extra_settings(self) -> dict[str, Any]:
        """Model settings the job itself sets (merged over ``settings``)."""
        return {}

    # -- validation -----------------------------------------------------------------------
    def _validate_fit_input(self, X: Any) -> tuple[np.ndarray, bool]:
        """(validated float X, whether it held integers); sets ``n_features_in_``."""
        integer = hasattr(X, "dtype") and np.dtype(X.dtype).kind in "iub"
        X = validate_data(self, X, allow_nd=True, dtype=FLOATS, ensure_min_samples=1)
        if X.ndim > 4:
            raise ValueError(f"X has {X.ndim} dimensions {X.shape}; expected a table (N, F) or images (N, H, W) / (N, C, H, W).")
        return X, integer

    def _validate_input(self, X: Any) -> np.ndarray:
        """New input validated against the fitted one (features and, for images, shape)."""
        check_is_fitted(self, "model_")
        X = validate_data(self, X, allow_nd=True, dtype=FLOATS, reset=False)
        if tuple(X.shape[1:]) != self.codec_.input_shape:
            raise ValueError(f"X has examples of shape {tuple(X.shape[1:])}, but this estimator was fitted on {self.codec_.input_shape}.")
        return X

    # -- settings and the model -------------------------------------------------------------
    def _model_settings(self, codec: ArrayCodec) -> dict[str, Any]:
        """The model's settings: ``settings``, then ``lr`` / ``latent_dim`` / the job's, then
        the network (``"auto"`` or unset: conv for images big enough, else mlp)."""
        cls = model_class(self.model)  # an unknown name: UserError listing the names
        fields = config_fields(self.model)
        settings = dict(self.settings or {})
        if self.lr is not None:
            settings["lr"] = self.lr
        if self.latent_dim is not None:
            if "latent_dim" not in fields:
                raise UserError(f"the {self.model} model has no latent_dim setting; pass latent_dim=None.")
            if "latent_dim" in settings and settings["latent_dim"] != self.latent_dim:
                raise UserError(
                    f"latent_dim={self.latent_dim} and settings['latent_dim']={settings['latent_dim']} disagree; set one of them."
                )
            settings["latent_dim"] = self.latent_dim
        settings.update(self._extra_settings())
        channels = settings.get("channels", getattr(cls.config_class(), "channels", None))
        # The encoder-decoder families' conv networks halve the size once per entry of
        # ``channels``; other families (a diffusion U-Net: one int width) choose for themselves.
        if "network" in fields and settings.get("network", "auto") == "auto" and isinstance(channels, (tuple, list)):
            small = min(codec.spec.shape[1:]) < 2 ** len(channels) if codec.image else True
            settings["network"] = "mlp" if small or not codec.image else "conv"
        return settings

    def _seed(self) -> int:
        return int(check_random_state(self.random_state).randint(0, 2**31 - 1))

    def _fit_arrays(self, X: Any) -> AutoencoderEstimator:
        """Validate X, fit the codec, build and train the model; sets the fitted attributes."""
        X, integer = self._validate_fit_input(X)
        codec, x = ArrayCodec.fit(X, integer)
        self._check_model(model_class(self.model))
        settings = self._model_settings(codec)
        device = resolve_device(self.device)
        seed = self._seed()
        data = Dataset(
            "sklearn",
            codec.spec,
            Split(torch.from_numpy(np.ascontiguousarray(x))),
            Split(torch.zeros((0, *codec.spec.shape))),
            state=codec.state,
        )
        config = TrainConfig(
            epochs=self.epochs,
            batch_size=self.batch_size,
            seed=seed,
            device=str(device),
            progress=bool(self.verbose),
            tensorboard=False,
            val_limit=0,
        )
        forked = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=forked, device_type="cuda"):
            torch.manual_seed(seed)
            model = self._create(settings, codec.spec)
            Trainer(model, data, config, run_dir=None).fit()
        model.eval()
        self.codec_ = codec
        self.model_ = model
        self.seed_ = seed
        return self

    def _create(self, settings: dict[str, Any], spec: DataSpec) -> GenerativeModel:
        cls = model_class(self.model)
        config = cls.config_class().replace(**settings) if settings else cls.config_class()
        return cls(config, spec)

    # -- inference ------------------------------------------------------------------------
    @torch.no_grad()
    def _batched(self, fn: Callable[[torch.Tensor, int], torch.Tensor], x: np.ndarray) -> np.ndarray:
        """``fn(batch, index)`` over ``x`` (model-space numpy) ``batch_size`` rows at a time;
        the results concatenated as float32 numpy."""
        model = self.model_
        model.eval()
        device = model.device
        step = max(1, int(self.batch_size))
        outs = []
        for i, start in enumerate(range(0, len(x), step)):
            batch = torch.from_numpy(np.ascontiguousarray(x[start:start + step])).to(device)
            outs.append(fn(batch, i).detach().float().cpu().numpy())
        if not outs:
            return np.zeros((0,), dtype=np.float32)
        return np.concatenate(outs).astype(np.float32, copy=False)

    def _reconstruction_error(self, x: np.ndarray) -> np.ndarray:
        """Mean squared reconstruction error per example in model space: (N, *shape) -> (N,)."""

        def err(batch: torch.Tensor, _: int) -> torch.Tensor:
            recon = self.model_.reconstruct(batch)  # type: ignore[operator]
            return (recon - batch).pow(2).reshape(len(batch), -1).mean(dim=1)

        return self._batched(err, x)

    # -- pickling -------------------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()  # type: ignore[misc]
        state = dict(state)
        model = state.pop("model_", None)
        if model is not None:
            state["_model_record"] = {
                "class": type(model),
                "config": model.config,
                "spec": model.spec,
                "weights": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
            }
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        record = state.pop("_model_record", None)
        super().__setstate__(state)  # type: ignore[misc]
        if record is not None:
            model = record["class"](record["config"], record["spec"])
            model.load_state_dict(record["weights"])
            try:
                device = resolve_device(self.device)
            except UserError:
                device = torch.device("cpu")  # unpickled where the training device is missing
            self.model_ = model.to(device).eval()

