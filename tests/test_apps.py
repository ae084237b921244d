"""The scikit-learn estimators of deepgen.apps: scikit-learn's own estimator checks, the
three jobs on scikit-learn's digits (embedding, denoising, anomaly detection), their use in
Pipeline / GridSearchCV / clone / pickle, and the errors they raise."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GridSearchCV, train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from deepgen.apps import AutoencoderDenoiser, AutoencoderEmbedding, AutoencoderOutlierDetector
from deepgen.errors import UserError

# Tiny networks, one epoch: scikit-learn's checks fit each estimator dozens of times.
TINY = dict(settings={"hidden": (8,), "channels": (4,)}, latent_dim=2, epochs=1, batch_size=16, random_state=0, device="cpu")
# Small but useful: a few epochs on digits.
SMALL = dict(settings={"hidden": (64,), "channels": (16, 32)}, lr=1e-2, epochs=8, batch_size=32, random_state=0, device="cpu")


@parametrize_with_checks([AutoencoderEmbedding(**TINY), AutoencoderDenoiser(**TINY), AutoencoderOutlierDetector(**TINY)])
def test_sklearn_checks(estimator, check):
    check(estimator)


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    return d.data, d.target  # (1797, 64) values 0..16, labels 0..9


@pytest.fixture(scope="module")
def split(digits):
    X, y = digits
    return train_test_split(X, y, test_size=0.3, random_state=0)


# -- embedding ----------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["table", "image"])
def test_embedding_codes_help_a_linear_classifier(split, layout):
    Xtr, Xte, ytr, yte = split
    if layout == "image":
        Xtr, Xte = Xtr.reshape(-1, 8, 8), Xte.reshape(-1, 8, 8)
    emb = AutoencoderEmbedding(**SMALL).fit(Xtr)
    assert emb.model_.config.network == ("conv" if layout == "image" else "mlp")
    codes = emb.transform(Xtr)
    assert codes.shape == (len(Xtr), 10) and codes.dtype == np.float32 and np.isfinite(codes).all()
    acc = LogisticRegression(max_iter=2000).fit(codes, ytr).score(emb.transform(Xte), yte)
    assert acc > 0.7, acc  # chance is 0.1
    back = emb.inverse_transform(emb.transform(Xte[:5]))
    assert back.shape == Xte[:5].shape
    # Decoded values are in the data's own space (pixels 0..16), not the model's; images
    # keep the training range, tables are un-standardised (unbounded).
    assert back.max() > 2.0
    if layout == "image":
        assert back.min() >= 0.0 and back.max() <= 16.0


def test_embedding_is_deterministic_and_leaves_torch_rng(split):
    Xtr = split[0][:300]
    before = torch.random.get_rng_state()
    a = AutoencoderEmbedding(**TINY).fit(Xtr).transform(Xtr)
    assert torch.equal(torch.random.get_rng_state(), before)
    b = AutoencoderEmbedding(**TINY).fit(Xtr).transform(Xtr)
    c = AutoencoderEmbedding(**{**TINY, "random_state": 1}).fit(Xtr).transform(Xtr)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_embedding_batched_inference_matches_one_batch(split):
    Xtr = split[0][:200]
    emb = AutoencoderEmbedding(**{**TINY, "batch_size": 7}).fit(Xtr)
    whole = emb.set_params(batch_size=1000).transform(Xtr)
    emb.set_params(batch_size=7)
    np.testing.assert_allclose(emb.transform(Xtr), whole, rtol=1e-5, atol=1e-6)


def test_pipeline_gridsearch_clone_pickle(split):
    Xtr, Xte, ytr, yte = split
    Xtr, ytr = Xtr[:400], ytr[:400]
    small = {**SMALL, "epochs": 3, "settings": {"hidden": (32,)}}
    pipe = Pipeline([("scale", StandardScaler()), ("emb", AutoencoderEmbedding(**small)), ("clf", LogisticRegression(max_iter=500))])
    search = GridSearchCV(pipe, {"emb__latent_dim": [2, 8]}, cv=2).fit(Xtr, ytr)
    assert search.best_params_["emb__latent_dim"] in (2, 8)
    assert search.score(Xte, yte) > 0.5

    twin = clone(pipe)
    assert twin.get_params()["emb__settings"] == {"hidden": (32,)} and not hasattr(twin.named_steps["emb"], "model_")

    fitted = search.best_estimator_
    restored = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_array_equal(restored.predict(Xte), fitted.predict(Xte))
    emb = fitted.named_steps["emb"]
    emb2 = restored.named_steps["emb"]
    np.testing.assert_array_equal(emb2.transform(Xte), emb.transform(Xte))


# -- denoising ----------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["image", "table"])
def test_denoiser_lowers_the_error(digits, layout):
    X, _ = digits
    clean = X / 16.0
    rng = np.random.default_rng(0)
    test = clean[1200:]
    level = 0.3 if layout == "image" else 1.0
    if layout == "image":
        # Images: noise_level is the noise std on the [0, 1] pixel scale.
        clean, test = clean.reshape(-1, 8, 8), test.reshape(-1, 8, 8)
        noisy = np.clip(test + level * rng.standard_normal(test.shape), 0, 1)
    else:
        # Tables: noise_level is in units of each feature's standard deviation.
        noisy = test + level * clean[:1200].std(axis=0) * rng.standard_normal(test.shape)
    den = AutoencoderDenoiser(noise="gaussian", noise_level=level, **{**SMALL, "lr": 3e-3, "epochs": 10}).fit(clean[:1200])
    assert den.model_.config.corruption == "gaussian" and den.model_.config.noise == pytest.approx(level)
    out = den.transform(noisy)
    assert out.shape == noisy.shape
    if layout == "image":
        assert out.min() >= 0.0 and out.max() <= 1.0  # the training range
    noisy_mse = ((noisy - test) ** 2).mean()
    denoised_mse = ((out - test) ** 2).mean()
    assert denoised_mse < 0.8 * noisy_mse, (denoised_mse, noisy_mse)


def test_denoiser_maps_other_corruptions_and_refuses_plain_models(digits):
    X = digits[0][:100]
    den = AutoencoderDenoiser(noise="masking", noise_level=0.5, **TINY).fit(X)
    assert den.model_.config.corruption == "masking" and den.model_.config.noise == 0.5
    with pytest.raises(UserError, match="denoising-ae"):
        AutoencoderDenoiser(model="ae", **TINY).fit(X)
    with pytest.raises(UserError, match="gaussian, masking, salt-pepper"):
        AutoencoderDenoiser(noise="pink", **TINY).fit(X)


# -- anomaly detection --------------------------------------------------------------------


def _normal_and_outliers(digits, layout):
    X, y = digits
    if layout == "image":
        X = X.reshape(-1, 8, 8)
    normal = X[y == 0]  # 178 zeros
    test = np.concatenate([normal[120:], X[y != 0][:200]])
    is_normal = np.r_[np.ones(len(normal) - 120), np.zeros(200)]
    return normal[:120], test, is_normal


@pytest.mark.parametrize("layout", ["table", "image"])
def test_outlier_detector_ranks_other_digits_lower(digits, layout):
    train, test, is_normal = _normal_and_outliers(digits, layout)
    det = AutoencoderOutlierDetector(contamination=0.1, latent_dim=4, **{**SMALL, "epochs": 15}).fit(train)
    assert det.model_.config.network == ("conv" if layout == "image" else "mlp")
    scores = det.score_samples(test)
    assert roc_auc_score(is_normal, scores) > 0.8
    flagged = (det.predict(train) == -1).mean()
    assert abs(flagged - 0.1) <= 0.02, flagged
    np.testing.assert_allclose(det.decision_function(test), scores - det.offset_)
    assert set(np.unique(det.predict(test))) <= {-1, 1}


def test_outlier_detector_on_a_shifted_blob():
    rng = np.random.default_rng(0)
    train = rng.standard_normal((400, 5))
    test = np.concatenate([rng.standard_normal((100, 5)), rng.standard_normal((100, 5)) + 4.0])
    det = AutoencoderOutlierDetector(contamination=0.05, latent_dim=2, **{**SMALL, "epochs": 10}).fit(train)
    assert roc_auc_score(np.r_[np.ones(100), np.zeros(100)], det.score_samples(test)) > 0.8
    assert abs((det.predict(train) == -1).mean() - 0.05) <= 0.02


def test_likelihood_scores_with_a_vae(digits):
    train, test, is_normal = _normal_and_outliers(digits, "table")
    det = AutoencoderOutlierDetector(model="vae", score_type="likelihood", latent_dim=4, **{**SMALL, "epochs": 15})
    det.set_params(settings={"hidden": (64,), "iwae_k": 8}).fit(train)
    scores = det.score_samples(test)
    np.testing.assert_array_equal(scores, det.score_samples(test))  # fixed draws: scores repeat
    assert roc_auc_score(is_normal, scores) > 0.8
    restored = pickle.loads(pickle.dumps(det))
    np.testing.assert_array_equal(restored.score_samples(test), scores)
    np.testing.assert_array_equal(restored.predict(test), det.predict(test))


def test_likelihood_needs_log_prob(digits):
    with pytest.raises(UserError, match="log_prob.*vae"):
        AutoencoderOutlierDetector(model="ae", score_type="likelihood", **TINY).fit(digits[0][:50])


# -- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [AutoencoderEmbedding, AutoencoderDenoiser, AutoencoderOutlierDetector])
def test_errors(cls, digits):
    X = digits[0][:60]
    bad = X.copy()
    bad[3, 5] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        cls(**TINY).fit(bad)
    est = cls(**TINY)
    method = est.score_samples if cls is AutoencoderOutlierDetector else est.transform
    with pytest.raises(NotFittedError):
        method(X)
    est.fit(X)
    method = est.score_samples if cls is AutoencoderOutlierDetector else est.transform
    with pytest.raises(ValueError, match="features"):
        method(X[:, :10])
    with pytest.raises(ValueError, match="NaN"):
        method(bad)
    with pytest.raises(UserError, match="ae.*vae"):  # the message lists the registered names
        cls(**{**TINY, "model": "no-such-model"}).fit(X)


def test_image_shape_is_checked(digits):
    images = digits[0][:60].reshape(-1, 8, 8)
    emb = AutoencoderEmbedding(**TINY).fit(images)
    with pytest.raises(ValueError, match="shape"):
        emb.transform(images[:, :, :4])  # (N, 8, 4): 8 "features" along axis 1, but not 8x8 images


def test_embedding_refuses_models_without_encode(digits):
    with pytest.raises(UserError, match="encode.*Models that do: .*vae"):
        AutoencoderEmbedding(model="gan", **TINY).fit(digits[0][:50])


def test_embedding_with_a_vae_and_a_flow(digits):
    X = digits[0][:80]
    emb = AutoencoderEmbedding(model="vae", **TINY).fit(X)
    codes = emb.transform(X)
    assert codes.shape == (80, 2)
    np.testing.assert_array_equal(codes, emb.transform(X))  # the posterior mean: no sampling
    assert emb.inverse_transform(codes).shape == X.shape
    with pytest.raises(UserError, match="latent_dim=None"):  # a flow's code is the data's size
        AutoencoderEmbedding(model="realnvp", **TINY).fit(X)


def test_bad_settings_and_contamination(digits):
    X = digits[0][:50]
    with pytest.raises(UserError, match="hiden"):
        AutoencoderEmbedding(**{**TINY, "settings": {"hiden": (8,)}}).fit(X)
    with pytest.raises(ValueError, match="contamination"):
        AutoencoderOutlierDetector(**{**TINY, "contamination": 0.7}).fit(X)
    with pytest.raises(UserError, match="disagree"):
        AutoencoderEmbedding(**{**TINY, "settings": {"latent_dim": 5}}).fit(X)


def test_a_diffusion_model_scores_outliers_by_its_bound_on_images():
    """Families whose ``channels`` is one width (the ddpm U-Net) pick their own network: the
    encoder-decoder rule (one halving per entry of a channels tuple) is not applied to them."""
    rng = np.random.default_rng(0)
    det = AutoencoderOutlierDetector(model="ddpm", score_type="likelihood", latent_dim=None, epochs=1, random_state=0,
                                     settings={"channels": 8, "channel_mult": (1, 2), "res_blocks": 1, "heads": 2, "timesteps": 20, "steps": 5,
                                               "bound_stride": 5}).fit(rng.random((30, 8, 8)))
    scores = det.score_samples(rng.random((4, 8, 8)))
    assert scores.shape == (4,) and np.isfinite(scores).all() and det.model_.config.network == "auto"
