"""Review of deepgen.apps (session 17): NumPy-typed parameters (GridSearchCV grids), the
codes' width of models without a latent_dim (flows), the denoiser's noise_level checks
and its feature names."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline

from deepgen.apps import AutoencoderDenoiser, AutoencoderEmbedding, AutoencoderOutlierDetector
from deepgen.errors import UserError

TINY = dict(settings={"hidden": (8,)}, latent_dim=2, epochs=1, batch_size=16, random_state=0, device="cpu")


@pytest.fixture(scope="module")
def table() -> np.ndarray:
    return np.random.default_rng(0).random((40, 6))


def test_numpy_scalar_parameters_are_read_as_python_ones(table):
    """np.arange / np.linspace grids give NumPy scalars; the configs took Python ones only
    ("AEConfig.latent_dim must be an integer, got np.int64(3)")."""
    given = dict(settings={"hidden": np.array([8])}, latent_dim=np.int64(3), epochs=np.int64(1),
                 batch_size=np.int32(16), lr=np.float32(0.01), random_state=0, device="cpu")
    codes = AutoencoderEmbedding(**given).fit(table).transform(table)
    python = dict(settings={"hidden": (8,)}, latent_dim=3, epochs=1, batch_size=16, lr=float(np.float32(0.01)), random_state=0, device="cpu")
    np.testing.assert_array_equal(codes, AutoencoderEmbedding(**python).fit(table).transform(table))

    det = AutoencoderOutlierDetector(**{**TINY, "contamination": np.float32(0.25)}).fit(table)
    assert det.offset_ == pytest.approx(np.percentile(det.score_samples(table), 25.0))

    y = (table[:, 0] > 0.5).astype(int)
    pipe = Pipeline([("emb", AutoencoderEmbedding(**TINY)), ("clf", LogisticRegression())])
    search = GridSearchCV(pipe, {"emb__latent_dim": np.arange(2, 4)}, cv=2, error_score="raise").fit(table, y)
    assert search.best_params_["emb__latent_dim"] in (2, 3)


@pytest.mark.parametrize("shape", [(40, 6), (40, 4, 4)])
def test_flow_codes_have_the_datas_width(shape):
    """A flow has no latent_dim (it must be None): its codes are the data's size, and
    get_feature_names_out / inverse_transform said 0 ("codes have 6 features, but the
    embedding has 0")."""
    X = np.random.default_rng(1).random(shape)
    emb = AutoencoderEmbedding(model="realnvp", latent_dim=None, epochs=1, batch_size=16, random_state=0, device="cpu").fit(X)
    codes = emb.transform(X)
    width = int(np.prod(shape[1:]))
    assert codes.shape == (len(X), width)
    assert len(emb.get_feature_names_out()) == width
    np.testing.assert_allclose(emb.inverse_transform(codes), X, atol=1e-4)  # an invertible map


@pytest.mark.parametrize("noise, level", [
    ("gaussian", None), ("gaussian", "0.3"), ("gaussian", -0.1), ("gaussian", True), ("gaussian", float("nan")),
    ("masking", 1.5), ("salt-pepper", -0.2),
])
def test_denoiser_noise_level_is_checked_under_its_own_name(table, noise, level):
    """None was a bare TypeError, "0.3" and True were read as numbers, and a level out of
    range was reported as the model's ``noise`` setting (this estimator's name for the kind)."""
    with pytest.raises(UserError, match=r"noise_level must be .* got"):
        AutoencoderDenoiser(**{**TINY, "noise": noise, "noise_level": level}).fit(table)


def test_denoiser_has_feature_names_for_tables_and_set_output(table):
    """Pipeline.set_output failed with "set_output is not available" for the denoiser."""
    den = AutoencoderDenoiser(**TINY).fit(table)
    assert list(den.get_feature_names_out()) == [f"x{i}" for i in range(6)]
    assert list(den.get_feature_names_out(list("abcdef"))) == list("abcdef")
    y = (table[:, 0] > 0.5).astype(int)
    pipe = Pipeline([("den", AutoencoderDenoiser(**TINY)), ("clf", LogisticRegression())]).set_output(transform="default")
    assert pipe.fit(table, y).predict(table).shape == (40,)
    images = AutoencoderDenoiser(**TINY).fit(table.reshape(40, 2, 3))
    with pytest.raises(ValueError, match="tables"):
        images.get_feature_names_out()


@pytest.mark.parametrize("shape", [(10, 0, 8), (10, 8, 0), (10, 1, 0, 4), (10, 4, 4, 0)])
def test_images_of_zero_size_are_one_clear_error(shape):
    """Was numpy's "zero-size array to reduction operation minimum which has no identity"."""
    for layout in ("auto", "channels_first"):
        with pytest.raises(ValueError, match=r"axis of size 0 .*accepted: tables"):
            AutoencoderEmbedding(**{**TINY, "layout": layout}).fit(np.zeros(shape))


def test_outlier_scores_keep_the_fitted_score_type(table):
    """set_params(score_type=...) after fit made score_samples use the new score against the
    old score's offset_: a VAE then flagged every training row (or crashed for an ae)."""
    det = AutoencoderOutlierDetector(**{**TINY, "model": "vae"}).fit(table)
    before = det.score_samples(table)
    det.set_params(score_type="likelihood")
    assert det.score_type_ == "reconstruction"
    np.testing.assert_array_equal(det.score_samples(table), before)
    assert (det.predict(table) == -1).mean() == pytest.approx(0.1)
    det.fit(table)  # the new score from the next fit on
    assert det.score_type_ == "likelihood" and (det.predict(table) == -1).mean() == pytest.approx(0.1)


def test_images_on_another_scale_than_the_training_images_are_refused():
    """0..255 pixels to an estimator fitted on [0, 1] floats were clipped to white, [0, 1]
    floats to one fitted on 0..255 pixels read as almost black: one clear error each."""
    rng = np.random.default_rng(3)
    floats = rng.random((32, 8, 8))
    pixels = (floats * 255).round().astype(np.uint8)
    on_floats = AutoencoderEmbedding(**TINY).fit(floats)
    with pytest.raises(UserError, match="fitted on images in \\[0, 1\\].*divide by 255"):
        on_floats.transform(pixels)
    assert on_floats.transform(floats).shape == (32, 2)
    on_pixels = AutoencoderEmbedding(**TINY).fit(pixels)
    with pytest.raises(UserError, match="fitted on 0..255 pixels"):
        on_pixels.transform(floats)
    assert on_pixels.transform(pixels.astype(np.float64)).shape == (32, 2)  # 0..255 as floats is the same scale
