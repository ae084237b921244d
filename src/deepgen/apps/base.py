"""What the scikit-learn estimators of :mod:`deepgen.apps` share.

:class:`AutoencoderEstimator` is a mixin over :class:`sklearn.base.BaseEstimator`:

* input validation (scikit-learn's ``validate_data`` / ``check_array``: NaN and inf are
  refused, sparse and complex input too) for tables (N, F) and image arrays (N, H, W),
  (N, C, H, W) or (N, H, W, C) with C in 1, 3, 4 (:func:`image_layout`: the rule, and one
  ValueError for shapes it cannot read);
* the conversion of arrays to the model's space and back, fitted once in ``fit``
  (:class:`ArrayCodec`): tables are standardised with the training rows' mean and
  standard deviation (``deepgen.data.tables.standardise``, the data layer's own, kept as
  ``Dataset.state`` so ``Dataset.to_original`` undoes it); images become (N, C, H, W)
  values in [0, 1], so that convolutional networks see images: integer images 0..255 as
  the data layer reads them (``continuous`` with 256 levels, pixels / 255; ``binary`` when
  only 0 and 1), other images ``continuous`` without levels (those in [0, 1] as they are,
  others / their maximum); outputs go back to the layout and dtype given;
* building the registered model (weights seeded by ``random_state``), training it with
  deepgen's one :class:`~deepgen.training.Trainer` without a run folder, and batched
  inference (``batch_size`` rows at a time, in eval mode, without gradients);
* pickling: a fitted estimator pickles its model as (name, config, spec, CPU weights) and
  rebuilds it on unpickling, so it loads on a machine without the training GPU.

Torch's global random state is left as it was: training runs inside ``torch.random.fork_rng``.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
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
CHANNELS = (1, 3, 4)  # channel counts of image arrays: grey, RGB, RGBA
LAYOUTS = ("auto", "channels_first", "channels_last")
ACCEPTED_SHAPES = (
    "accepted: tables (N, F), grey images (N, H, W), and images (N, C, H, W) (channels first) or "
    "(N, H, W, C) (channels last) with C in 1, 3, 4 (any C with layout='channels_first' or 'channels_last')"
)


def image_layout(shape: tuple[int, ...], layout: str = "auto") -> str:
    """How an array of ``shape`` (N, ...) is read: ``"table"`` (N, F), ``"hw"`` (N, H, W),
    ``"chw"`` (N, C, H, W) or ``"hwc"`` (N, H, W, C), with C in :data:`CHANNELS`.

    With ``layout="auto"`` a 4-D array is channels first when only axis 1 is a channel
    count, channels last when only axis 3 is, and a ValueError when both are (e.g.
    (N, 3, 4, 4)) or neither. ``layout="channels_first"`` / ``"channels_last"`` says where
    the channels are, for any number of them (e.g. two-channel (N, 2, H, W) images). Any
    other shape is a ValueError saying what is accepted.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}.")
    if len(shape) == 2:
        return "table"
    if len(shape) in (3, 4) and 0 in shape[1:]:  # scikit-learn checks the features of tables only
        raise ValueError(f"X has shape {shape}: images with an axis of size 0 hold no pixels; {ACCEPTED_SHAPES}.")
    if len(shape) == 3:
        return "hw"
    if len(shape) != 4:
        raise ValueError(f"X has shape {shape} ({len(shape)} dimensions); {ACCEPTED_SHAPES}.")
    if layout == "channels_first":
        return "chw"
    if layout == "channels_last":
        return "hwc"
    first, last = shape[1] in CHANNELS, shape[3] in CHANNELS
    if first and last:
        raise ValueError(f"X has shape {shape}: ambiguous, axis 1 and axis 3 could both hold the channels; "
                         f"pass layout='channels_first' or layout='channels_last' ({ACCEPTED_SHAPES}).")
    if first:
        return "chw"
    if last:
        return "hwc"
    raise ValueError(f"X has shape {shape}: neither axis 1 nor axis 3 is a channel count (1, 3 or 4); {ACCEPTED_SHAPES}.")


@dataclasses.dataclass
class ArrayCodec:
    """How arrays map to the model's space, fitted on the training array.

    ``image``: True for image input; ``input_shape``: one example's shape as given;
    ``channels_last``: the input is (N, H, W, C) (the model sees (N, C, H, W)); ``spec``:
    what the model sees; ``dtype``: the training input's dtype (quantised images come back
    in it). Tables: ``mean`` / ``std`` (F,) of the standardisation. Images: values
    ``(x - low) / (high - low)`` in [0, 1]; integer images 0..255 are 8-bit data, as the
    data layer reads them (``deepgen.data.arrays``): ``continuous`` with 256 levels, pixels
    / 255, or ``binary`` when they hold only 0 and 1.
    """

    image: bool
    input_shape: tuple[int, ...]
    spec: DataSpec
    mean: np.ndarray | None = None
    std: np.ndarray | None = None
    low: float = 0.0
    high: float = 1.0
    channels_last: bool = False
    dtype: str = "float64"

    @classmethod
    def fit(cls, X: np.ndarray, dtype: np.dtype, layout: str = "auto") -> tuple[ArrayCodec, np.ndarray]:
        """The codec for training array ``X`` (validated, float) given as ``dtype``, and ``X``
        in model space (float32). ``layout``: see :func:`image_layout`."""
        shape = tuple(X.shape[1:])
        how = image_layout(X.shape, layout)
        if how == "table":
            x, _, mean, std = standardise(X, X[:0])
            spec = DataSpec(shape=shape, kind="real", name="sklearn")
            return cls(False, shape, spec, mean=mean, std=std, dtype=dtype.name), x
        lo, hi = float(X.min()), float(X.max())
        kind, levels = "continuous", None
        if dtype.kind in "iub" and lo >= 0 and hi <= 255:
            # 8-bit data, as the data layer reads an integer array: 0/1 only -> binary,
            # else 256 levels k shown as k / 255 (dequantized to (k + u) / 256 for densities).
            low, high = 0.0, (1.0 if hi <= 1 else 255.0)
            kind, levels = ("binary", None) if hi <= 1 else ("continuous", 256)
        else:
            low = min(lo, 0.0)
            high = 1.0 if hi <= 1.0 and low == 0.0 else hi
            if high <= low:
                high = low + 1.0
        if how == "hw":
            model_shape = (1, *shape)  # one channel
        elif how == "hwc":
            model_shape = (shape[2], shape[0], shape[1])  # (H, W, C) -> (C, H, W)
        else:
            model_shape = shape
        spec = DataSpec(shape=model_shape, kind=kind, num_levels=levels, name="sklearn")
        codec = cls(True, shape, spec, low=low, high=high, channels_last=how == "hwc", dtype=dtype.name)
        return codec, codec.to_model(X)

    @property
    def quantised(self) -> bool:
        """True for images whose values are levels (8-bit or binary integer images)."""
        return self.image and np.dtype(self.dtype).kind in "iub" and (self.spec.kind == "binary" or self.spec.num_levels is not None)

    @property
    def state(self) -> dict[str, np.ndarray]:
        """What ``Dataset.state`` keeps to undo the preprocessing (tables: mean and std)."""
        return {} if self.mean is None or self.std is None else {"mean": self.mean, "std": self.std}

    def to_model(self, X: np.ndarray, clip: bool = True) -> np.ndarray:
        """Validated input (N, *input_shape) -> model space (N, *spec.shape), float32.
        Image values are clipped to the training range [low, high] unless ``clip`` is False
        (a denoiser's noisy inputs, which its training corruption left unclipped)."""
        if not self.image:
            assert self.mean is not None and self.std is not None
            return ((np.asarray(X, dtype=np.float64) - self.mean) / self.std).astype(np.float32)
        if clip:  # (a denoiser's noisy inputs, clip=False, may leave any range)
            self._check_scale(X)
        x = (np.asarray(X, dtype=np.float64) - self.low) / (self.high - self.low)
        x = (np.clip(x, 0.0, 1.0) if clip else x).astype(np.float32)
        if self.channels_last:
            # A copy, not ascontiguousarray: with one channel the transposed view already
            # counts as contiguous (numpy ignores the strides of size-1 axes) and keeps a
            # channel stride of 1, which torch's convolutions read as channels-last and
            # compute in another order (grey (N, H, W, 1) codes differed from (N, 1, H, W) ones by 4e-8).
            return x.transpose(0, 3, 1, 2).copy(order="C")
        return x.reshape(len(X), *self.spec.shape)

    def _check_scale(self, X: np.ndarray) -> None:
        """One UserError for images on another scale than the training images': 0..255 pixels
        given to an estimator fitted on [0, 1] images would be clipped to white, fractional
        [0, 1] values given to one fitted on 0..255 pixels read as almost black. The limit is
        ten times the training range: a denoiser's noisy inputs leave it, by a few noise stds."""
        x = np.asarray(X)
        if not x.size or self.low != 0.0:
            return
        hi = float(np.nanmax(x))
        if hi > 10 * self.high:
            raise UserError(
                f"these images hold values up to {hi:g}; the estimator was fitted on images in [0, {self.high:g}]. "
                f"Scale them as the training images were (0..255 pixels for one fitted on [0, 1] floats: divide by 255)."
            )
        if self.high == 255.0 and hi <= 1.0 and bool(np.any(x != np.round(x))):
            raise UserError(
                "these images hold fractional values in [0, 1]; the estimator was fitted on 0..255 pixels. "
                "Give them as 0..255 (multiply by 255), or fit on [0, 1] images."
            )

    def from_model(self, x: np.ndarray, dtype: np.dtype | str | None = None) -> np.ndarray:
        """Model space (N, *spec.shape) -> the input's space, shape and layout (N, *input_shape);
        images clipped to the training range. ``dtype``: of the result (default float64);
        an integer (or bool) dtype rounds to the nearest value."""
        dtype = np.dtype(dtype or np.float64)
        if not self.image:
            assert self.mean is not None and self.std is not None
            return (x.astype(np.float64) * self.std + self.mean).astype(dtype, copy=False)
        out = np.clip(x.astype(np.float64), 0.0, 1.0) * (self.high - self.low) + self.low
        if self.channels_last:
            out = np.ascontiguousarray(out.transpose(0, 2, 3, 1))
        out = out.reshape(len(x), *self.input_shape)
        return np.rint(out).astype(dtype) if dtype.kind in "iub" else out.astype(dtype, copy=False)

    def output_dtype(self, given: np.dtype | None) -> np.dtype:
        """The dtype of outputs in the data's space for input of dtype ``given`` (None: the
        training input's): float32 stays float32; the integer dtype of quantised images
        (uint8 pixels) stays; anything else is float64."""
        if given is None:
            return np.dtype(self.dtype) if self.quantised else np.dtype(np.float64)
        given = np.dtype(given)
        if given == np.float32:
            return given
        if given.kind in "iub" and self.quantised:
            return given
        return np.dtype(np.float64)


def dtype_of(X: Any) -> np.dtype:
    """The dtype ``X`` holds as given (a NumPy array's, a tensor's, or what NumPy makes of a list)."""
    try:
        return np.dtype(X.dtype)
    except (AttributeError, TypeError):  # no dtype (lists, data frames) or not NumPy's (torch)
        return np.asarray(X).dtype


def plain(value: Any) -> Any:
    """``value`` with NumPy scalars and arrays made Python ones, inside lists, tuples and dicts
    too. The model and training configs take Python ints, floats and tuples only, and
    scikit-learn users pass NumPy ones: ``GridSearchCV`` grids from ``np.arange`` /
    ``np.linspace`` hand ``latent_dim=np.int64(4)`` or ``lr=np.float32(1e-3)`` to ``set_params``."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return tuple(plain(v) for v in value.tolist())
    if isinstance(value, tuple):
        return tuple(plain(v) for v in value)
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    return value


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
    weights, the batch order and the training noise), ``verbose`` (progress bar),
    ``layout`` (4-D images: ``"auto"``, ``"channels_first"`` or ``"channels_last"``; see
    :func:`image_layout`).
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
    layout: str

    # -- hooks ----------------------------------------------------------------------------
    def _check_model(self, cls: type[GenerativeModel]) -> None:
        """Raise a clear error when model class ``cls`` lacks what the job needs."""

    def _extra_settings(self) -> dict[str, Any]:
        """Model settings the job itself sets (merged over ``settings``)."""
        return {}

    # -- validation -----------------------------------------------------------------------
    def _validate_fit_input(self, X: Any) -> tuple[np.ndarray, np.dtype]:
        """(validated float X, the dtype X was given in); sets ``n_features_in_``."""
        dtype = dtype_of(X)
        X = validate_data(self, X, allow_nd=True, dtype=FLOATS, ensure_min_samples=1)
        image_layout(X.shape, self.layout)  # a shape that is neither a table nor images: one clear ValueError
        return X, dtype

    def _validate_input(self, X: Any) -> np.ndarray:
        """New input validated against the fitted one (features and, for images, shape)."""
        check_is_fitted(self, "model_")
        shape = tuple(getattr(X, "shape", ())[1:])
        if self.codec_.image and shape and shape != self.codec_.input_shape:  # before the features: say which shape
            raise ValueError(self._shape_error(shape))
        # "numeric": integer pixels stay integers (no float64 copy of a large input); each
        # batch is converted to the model's space as it is used (_batched's ``convert``).
        X = validate_data(self, X, allow_nd=True, dtype="numeric", reset=False)
        if tuple(X.shape[1:]) != self.codec_.input_shape:
            raise ValueError(self._shape_error(tuple(X.shape[1:])))
        return X

    def _shape_error(self, shape: tuple[int, ...]) -> str:
        codec = self.codec_
        given = f" ({'channels last' if codec.channels_last else 'channels first'} images)" if len(codec.input_shape) == 3 else ""
        return f"X has examples of shape {shape}, but this estimator was fitted on {codec.input_shape}{given}."

    # -- settings and the model -------------------------------------------------------------
    def _model_settings(self, codec: ArrayCodec) -> dict[str, Any]:
        """The model's settings: ``settings``, then ``lr`` / ``latent_dim`` / the job's, then
        the network (``"auto"`` or unset: conv for images big enough, else mlp)."""
        cls = model_class(self.model)  # an unknown name: UserError listing the names
        fields = config_fields(self.model)
        settings = plain(dict(self.settings or {}))
        latent_dim = plain(self.latent_dim)
        if self.lr is not None:
            settings["lr"] = plain(self.lr)
        if latent_dim is not None:
            if "latent_dim" not in fields:
                raise UserError(f"the {self.model} model has no latent_dim setting; pass latent_dim=None.")
            if "latent_dim" in settings and settings["latent_dim"] != latent_dim:
                raise UserError(
                    f"latent_dim={latent_dim} and settings['latent_dim']={settings['latent_dim']} disagree; set one of them."
                )
            settings["latent_dim"] = latent_dim
        settings.update(plain(self._extra_settings()))
        channels = settings.get("channels", getattr(cls.config_class(), "channels", None))
        # The encoder-decoder families' conv networks halve the size once per entry of
        # ``channels``; other families (a diffusion U-Net: one int width) choose for themselves.
        if "network" in fields and settings.get("network", "auto") == "auto" and isinstance(channels, (tuple, list)):
            small = min(codec.spec.shape[1:]) < 2 ** len(channels) if codec.image else True
            settings["network"] = "mlp" if small or not codec.image else "conv"
        return settings

    def _seed(self) -> int:
        return int(check_random_state(self.random_state).randint(0, 2**31 - 1))

    def _fit_arrays(self, X: Any) -> None:
        """Validate X, fit the codec, build and train the model; sets the fitted attributes
        and warns if the training collapsed (:meth:`_warn_if_collapsed`)."""
        X, dtype = self._validate_fit_input(X)
        codec, x = ArrayCodec.fit(X, dtype, self.layout)
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
            epochs=plain(self.epochs),
            batch_size=plain(self.batch_size),
            seed=seed,
            device=str(device),
            progress=bool(self.verbose),
            tensorboard=False,
            val_limit=0,
        )
        forked = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=forked, device_type="cuda"):
            torch.manual_seed(seed)
            trainer = Trainer(self._create(settings, codec.spec), data, config, run_dir=None)
            trainer.fit()
        model = trainer.eval_model  # the EMA copy where the model trains with one (ddpm), as load_run and evaluate use
        model.eval()
        self.codec_ = codec
        self.model_ = model
        self.seed_ = seed
        self._warn_if_collapsed(x)

    def _collapse_outputs(self, x: np.ndarray) -> tuple[str, np.ndarray] | None:
        """What a collapsed model would give every example alike: (a name, outputs (n, ...))
        of model-space rows ``x``; None: nothing to check (the default)."""
        return None

    def _warn_if_collapsed(self, x: np.ndarray, rows: int = 1024) -> None:
        """``x``: training data in the model's space. Warns (``ConvergenceWarning``) if its
        first ``rows`` differ (as the model sees them) but :meth:`_collapse_outputs` do not."""
        # Session 9 on the GPU: (64, 128)-channel conv autoencoders at lr 2e-3 lost every
        # ReLU of a layer within an epoch; the embedding gave every image one code (probe at
        # chance), the denoiser returned the mean image for every input, and nothing said so.
        sample = x[:rows]
        flat = sample.reshape(len(sample), -1)
        if len(flat) < 2 or np.ptp(flat, axis=0).max() <= 1e-6:
            return  # (nearly) identical rows: identical outputs are right
        checked = self._collapse_outputs(sample)
        if checked is None:
            return
        name, out = checked
        out = out.reshape(len(out), -1)
        if np.ptp(out, axis=0).max() <= 1e-6 * (1.0 + float(np.abs(out).max())):
            warnings.warn(
                f"{type(self).__name__}: the model's {name} are the same for every training example (they vary by less "
                f"than 1e-6) although the examples differ: training collapsed, typically ReLUs that died at too high a "
                f"learning rate (lr={self.lr if self.lr is not None else 'the model default'}). Lower lr, or use a smaller network.",
                ConvergenceWarning,
                stacklevel=4,
            )

    def _create(self, settings: dict[str, Any], spec: DataSpec) -> GenerativeModel:
        cls = model_class(self.model)
        config = cls.config_class().replace(**settings) if settings else cls.config_class()
        return cls(config, spec)

    # -- inference ------------------------------------------------------------------------
    @torch.no_grad()
    def _batched(
        self,
        fn: Callable[[torch.Tensor, int], torch.Tensor],
        x: np.ndarray,
        convert: Callable[[np.ndarray], np.ndarray] | None = None,
        finish: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> np.ndarray:
        """``fn(batch, index)`` over ``x`` ``batch_size`` rows at a time; the results
        concatenated as float32 numpy. ``convert``: maps each slice of ``x`` to the model's
        space (``codec_.to_model``) as it is used; ``finish``: maps each batch's float32
        result on (``codec_.from_model``: the data's space and dtype), the results then
        concatenated in its dtype. So memory beyond the input and the output stays one
        batch's, whatever the number of rows. None: ``x`` is already in the model's space /
        the float32 results are the output."""
        model = self.model_
        model.eval()
        device = model.device
        step = max(1, int(self.batch_size))
        outs = []
        for i, start in enumerate(range(0, len(x), step)):
            part = x[start:start + step]
            batch = torch.from_numpy(np.ascontiguousarray(convert(part) if convert is not None else part)).to(device)
            out = fn(batch, i).detach().float().cpu().numpy()
            outs.append(finish(out) if finish is not None else out)
        if not outs:
            return np.zeros((0,), dtype=np.float32) if finish is None else finish(np.zeros((0, *self.codec_.spec.shape), dtype=np.float32))
        joined = np.concatenate(outs)
        return joined if finish is not None else joined.astype(np.float32, copy=False)

    def _reconstruction_error(self, x: np.ndarray) -> np.ndarray:
        """Mean squared reconstruction error per example in model space: validated input
        (N, *input_shape) -> (N,), converted batch by batch."""

        def err(batch: torch.Tensor, _: int) -> torch.Tensor:
            recon = self.model_.reconstruct(batch)  # type: ignore[operator]
            return (recon - batch).pow(2).reshape(len(batch), -1).mean(dim=1)

        return self._batched(err, x, self.codec_.to_model)

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

