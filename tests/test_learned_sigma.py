"""Learned per-landmark target sigma (Payer et al. 2019): the targets, the penalty's balance, and
the training runs that learn it (global and local stage, resume, command line)."""
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from keraslm.datasets import make_phantom
from keraslm.ops import HeatmapCodec
from keraslm.training import TrainingConfig, train
from keraslm.training.trainer import (
    DEFAULT_SIGMA_PENALTY,
    learned_sigma_targets,
    sigma_penalty,
    weighted_l2,
)

TINY = {"filters": 8}


def test_learned_sigma_targets_keep_the_reference_volume():
    codec = HeatmapCodec((64, 64), stride=1, sigma=2.0, amplitude=100.0)
    points = np.array([[[31.3, 30.6], [31.3, 30.6]]], np.float32)
    targets = learned_sigma_targets(codec, points, tf.constant([2.0, 4.0]), 2.0).numpy()
    np.testing.assert_allclose(targets[..., 0], codec.encode(points).numpy()[..., 0], atol=1e-4)
    peaks = targets.max(axis=(1, 2))[0]
    np.testing.assert_allclose(peaks, [100.0 * np.exp(-(0.3**2 + 0.4**2) / 8), 25.0], rtol=0.02)
    volumes = targets.sum(axis=(1, 2))[0]
    np.testing.assert_allclose(volumes[1], volumes[0], rtol=0.01)  # Wider is also lower.


def _expected_sigma_gradient(error_sd, sigma0=2.0, amplitude=100.0, size=48, samples=3000):
    """d/d sigma at sigma0 of the expected loss + penalty for a network that predicts the best
    heatmap for a landmark it localises with Gaussian error `error_sd` per axis (pixels): the
    target's mean over the error, a wider and lower Gaussian."""
    codec = HeatmapCodec((size, size), stride=1, sigma=sigma0, amplitude=amplitude)
    rng = np.random.default_rng(0)
    centre = (size - 1) / 2.0
    points = (centre + rng.normal(0.0, error_sd, (samples, 1, 2))).astype(np.float32)
    yy, xx = np.mgrid[:size, :size]
    width = sigma0**2 + error_sd**2
    best = amplitude * sigma0**2 / width * np.exp(-((xx - centre)**2 + (yy - centre)**2) / (2 * width))
    heatmaps = tf.constant(np.broadcast_to(best[None, ..., None], (samples, size, size, 1)), tf.float32)
    weights = tf.ones((samples, 1))
    sigma = tf.Variable([sigma0])
    with tf.GradientTape(persistent=True) as tape:
        fit = weighted_l2(heatmaps, learned_sigma_targets(codec, points, sigma, sigma0), weights)
        total = fit + sigma_penalty(sigma, weights, amplitude, size * size, DEFAULT_SIGMA_PENALTY)
    return float(tape.gradient(total, sigma)[0]), float(tape.gradient(fit, sigma)[0])


def test_the_default_penalty_keeps_sigma_where_the_error_is_sigma_and_moves_it_otherwise():
    balanced, fit_alone = _expected_sigma_gradient(error_sd=2.0)
    assert fit_alone < 0 and abs(balanced) < 0.1 * abs(fit_alone)  # Fit pulls up, penalty down.
    assert _expected_sigma_gradient(error_sd=1.0)[0] > 0  # A surer landmark: sharper target.
    assert _expected_sigma_gradient(error_sd=4.0)[0] < 0  # A less sure one: wider.


@pytest.fixture(scope="module")
def phantom_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantom") / "phantom2d"
    make_phantom(root, ndim=2, num_images=12, seed=3, image_size=(96, 96))
    return str(root)


def test_a_global_run_learns_records_and_predicts_with_per_landmark_sigma(phantom_root, tmp_path):
    from keraslm.prediction import load_detector, predict

    messages = []
    result = train(TrainingConfig(
        dataset=phantom_root, grid_shape=(32, 32), batch_size=4, steps=4, steps_per_epoch=2,
        test_fraction=0.25, output_dir=str(tmp_path / "run"), model_overrides=TINY,
        learn_sigma=True, sigma_penalty=3.0, jit="off", plots=False), log=messages.append)
    sigma = load_detector(result.model_path).spec.global_stages[0].sigma
    assert isinstance(sigma, tuple) and len(sigma) == 37 and all(s >= 0.5 for s in sigma)
    assert len(set(sigma)) > 1 and any(abs(s - 2.0) > 1e-4 for s in sigma)  # Learned, per landmark.
    config = json.load(open(tmp_path / "run" / "config.json"))
    assert config["learn_sigma"] is True and config["settings"]["sigma_penalty"] == 3.0
    assert any(m.startswith("learned target sigma per landmark") for m in messages)
    assert result.summary["count"] > 0
    history = json.load(open(tmp_path / "run" / "history.json"))
    assert len(history["sigma_mean"]) == 2 and history["sigma_min"][-1] == pytest.approx(min(sigma))
    assert history["sigma_max"][-1] == pytest.approx(max(sigma))
    dataset = make_phantom(phantom_root, ndim=2, num_images=12, seed=3, image_size=(96, 96))
    image = dataset.read_image(dataset.record(dataset.ids[0]))
    [prediction] = predict(result.model_path, [image])
    assert prediction.points_mm.shape == (37, 2) and np.all(np.isfinite(prediction.points_mm))


def test_a_local_run_learns_per_landmark_sigma(phantom_root, tmp_path):
    from keraslm.prediction import load_detector

    result = train(TrainingConfig(
        dataset=phantom_root, architecture="unet", crop_shape=(16, 16), grid_spacing=2.0,
        batch_size=1, landmarks_per_image=8, steps=2, steps_per_epoch=2, test_fraction=0.25,
        output_dir=str(tmp_path / "local"), model_overrides={"filters": 4, "num_levels": 2},
        learn_sigma=True, jit="off", plots=False))
    spec = load_detector(result.model_path).spec
    assert spec.is_local_only and len(spec.local_stages[0].sigma) == 37
    assert any(abs(s - 2.0) > 1e-4 for s in spec.local_stages[0].sigma)


def test_a_run_that_fails_after_training_resumes_with_its_learned_sigma(phantom_root, tmp_path,
                                                                          monkeypatch):
    import keraslm.training.run as run_module

    config = TrainingConfig(
        dataset=phantom_root, grid_shape=(32, 32), batch_size=2, steps=2, steps_per_epoch=2,
        test_fraction=0.25, output_dir=str(tmp_path / "run"), model_overrides=TINY,
        learn_sigma=True, jit="off", plots=False)
    original = run_module.summarize
    monkeypatch.setattr(run_module, "summarize", lambda errors: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        train(config)
    saved = json.load(open(tmp_path / "run" / "trained_sigma.json"))["sigma"]
    monkeypatch.setattr(run_module, "summarize", original)
    train(config.replace(resume=True))
    from keraslm.prediction import load_detector

    spec = load_detector(tmp_path / "run" / "model.keras").spec
    assert spec.global_stages[0].sigma == pytest.approx(saved)
    assert not os.path.exists(tmp_path / "run" / "trained_sigma.json")


def test_bad_learned_sigma_settings_are_named():
    from keraslm.errors import UsageError
    from keraslm.models import build_model
    from keraslm.training.trainer import HeatmapTrainer

    network = build_model("unet", 2, 3, preset="small", filters=4, num_levels=2,
                          input_shape=(16, 16, 1))
    with pytest.raises(UsageError, match=r"`sigma_penalty` must be > 0. Received: 0.0"):
        HeatmapTrainer(network, (16, 16), (1.0, 1.0), learn_sigma=True, sigma_penalty=0.0)
    with pytest.raises(UsageError, match="starts from one sigma for all landmarks"):
        HeatmapTrainer(network, (16, 16), (1.0, 1.0), sigma=[2.0, 1.0, 2.0], learn_sigma=True)
    assert HeatmapTrainer(network, (16, 16), (1.0, 1.0), sigma=[2.0, 1.0, 2.0]).target_sigma is None
