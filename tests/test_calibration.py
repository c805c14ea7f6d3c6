"""Expected errors: the heatmap spread feature, the calibration fit and its use in the
prediction graph, exports and reports (`keraslm.calibration`)."""
import json

import numpy as np
import pytest
import tensorflow as tf

from keraslm.calibration import (
    calibration_quality,
    damped_confidence,
    check_calibration,
    cross_fitted_expected_error,
    expected_error_mm,
    fit_calibration,
    fit_shape_vote,
    shape_vote_residual_mm,
    spearman,
)
from keraslm.errors import CalibrationError, KeraslmError
from keraslm.ops.heatmaps import HeatmapCodec

NAMES = ["a", "b", "c"]


def _spread_reference(heatmap, stride, spacing_xyz, floor=0.1):
    """Brute-force spread of one heatmap `(*spatial,)` in mm."""
    mass = np.maximum(heatmap - floor * max(heatmap.max(), 0.0), 0.0)
    mass = mass / mass.sum()
    positions = np.meshgrid(*[np.arange(n) * stride + (stride - 1) / 2.0 for n in heatmap.shape],
                            indexing="ij")
    variance = 0.0
    for axis, position in enumerate(positions):
        position = position * spacing_xyz[heatmap.ndim - 1 - axis]
        mean = (mass * position).sum()
        variance += (mass * (position - mean) ** 2).sum()
    return np.sqrt(variance)


@pytest.mark.parametrize("shape,stride,spacing", [((40, 36), 1, (0.5, 0.5)),
                                                  ((16, 20, 12), 2, (1.0, 2.0, 1.5))])
def test_spread_matches_a_brute_force_reference(shape, stride, spacing):
    rng = np.random.default_rng(0)
    codec = HeatmapCodec(shape, stride=stride, sigma=1.5)
    heatmaps = rng.random((2, *codec.output_shape, 3)).astype(np.float32) ** 4
    got = np.asarray(codec.spread(heatmaps, spacing))
    for b in range(2):
        for k in range(3):
            assert got[b, k] == pytest.approx(
                _spread_reference(heatmaps[b, ..., k], stride, spacing), rel=1e-4)


def test_spread_grows_with_width_and_with_a_second_peak():
    codec = HeatmapCodec((64, 64), sigma=2.0)
    points = np.array([[[30.0, 30.0]]], np.float32)
    narrow = float(np.asarray(codec.spread(codec.encode(points), 0.5))[0, 0])
    wide = float(np.asarray(codec.spread(HeatmapCodec((64, 64), sigma=4.0).encode(points), 0.5))[0, 0])
    assert wide == pytest.approx(2 * narrow, rel=0.02)
    assert narrow == pytest.approx(1.1, abs=0.05)  # 2D Gaussian, sigma 1 mm.
    two = codec.encode(np.array([[[30.0, 30.0], [50.0, 30.0]]], np.float32))
    split = np.maximum(two[..., :1], 0.9 * two[..., 1:])  # Two look-alike places 10 mm apart.
    assert float(np.asarray(codec.spread(split, 0.5))[0, 0]) > 3 * narrow


def _synthetic(num_images=60, seed=0):
    """Errors that grow as the score falls, per-landmark scales 1, 2, 4."""
    rng = np.random.default_rng(seed)
    confidence = rng.uniform(5, 100, (num_images, 3))
    spread = rng.uniform(0.5, 3.0, (num_images, 3))
    typical = 30.0 * spread / confidence  # exp(-score) up to the 0.1 mm offset.
    errors = typical * np.array([1.0, 2.0, 4.0]) * rng.gamma(8.0, 1 / 8.0, typical.shape)
    return confidence, spread, errors


def test_fit_recovers_a_monotone_relation_and_landmark_scales():
    confidence, spread, errors = _synthetic()
    calibration = fit_calibration(confidence, spread, errors, NAMES, source="synthetic")
    check_calibration(calibration, NAMES)
    json.dumps(calibration)  # Serialisable as it is stored in model metadata.
    assert np.all(np.diff(calibration["knots"]) >= 0)
    assert np.all(np.diff(calibration["values"]) <= 1e-12)  # Decreasing in the score.
    scale = np.asarray(calibration["landmark_scale"])
    np.testing.assert_allclose(scale / scale[0], [1, 2, 4], rtol=0.25)
    expected = cross_fitted_expected_error(confidence, spread, errors, NAMES)
    quality = calibration_quality(expected, errors)
    assert quality["spearman"] > 0.8
    assert quality["mean_expected_mm"] == pytest.approx(quality["mean_actual_mm"], rel=0.2)


def test_cross_fitting_finds_no_relation_where_there_is_none():
    rng = np.random.default_rng(1)
    confidence, spread = rng.uniform(5, 100, (60, 3)), rng.uniform(0.5, 3, (60, 3))
    errors = rng.gamma(2.0, 1.0, (60, 3))  # Independent of the features and the landmark.
    quality = calibration_quality(cross_fitted_expected_error(confidence, spread, errors, NAMES), errors)
    assert abs(quality["spearman"]) < 0.25


def test_expected_error_in_the_graph_equals_numpy_interpolation():
    confidence, spread, errors = _synthetic()
    calibration = fit_calibration(confidence, spread, errors, NAMES, max_knots=6)
    assert len(calibration["knots"]) == 6
    # Scores inside, at and beyond the knots.
    test_confidence = np.array([[1.0, 50.0, 1e4], [20.0, 5.0, 80.0]], np.float32)
    test_spread = np.array([[9.0, 1.0, 0.01], [2.0, 0.5, 1.0]], np.float32)
    score = np.log(np.maximum(test_confidence, 1e-3)) - np.log(test_spread + 0.1)
    reference = np.interp(score, calibration["knots"], calibration["values"]) * np.asarray(
        calibration["landmark_scale"])
    graph = tf.function(lambda c, s: expected_error_mm(calibration, c, s))
    np.testing.assert_allclose(graph(test_confidence, test_spread).numpy(), reference, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(expected_error_mm(calibration, test_confidence, test_spread)),
                               reference, rtol=1e-5)


def test_bad_calibrations_and_inputs_are_named():
    confidence, spread, errors = _synthetic()
    calibration = fit_calibration(confidence, spread, errors, NAMES)
    with pytest.raises(CalibrationError, match=r"for other landmarks: landmarks 'c' that the "
                       r"model does not have, and not its 'x'"):
        check_calibration(calibration, ["a", "b", "x"])
    with pytest.raises(CalibrationError, match=r"the same landmarks in another order "
                       r"\(position 0: 'a', the model's 'b'\)"):
        check_calibration(calibration, ["b", "a", "c"])
    with pytest.raises(CalibrationError, match=r"3 landmarks, the model has 2"):
        check_calibration(calibration, ["a", "b"])
    with pytest.raises(KeraslmError, match="not a keraslm calibration"):
        check_calibration({"knots": [1.0]}, NAMES)
    with pytest.raises(KeraslmError, match="malformed"):
        check_calibration({**calibration, "landmark_scale": [1.0]}, NAMES)
    # Wrong types are named, not a TypeError.
    for broken in ({"local_weight": 0.5}, {"values": ["a"] * len(calibration["values"])},
                   {"landmark_names": None}):
        with pytest.raises(CalibrationError):
            check_calibration({**calibration, **broken}, NAMES)
    # The stage structure it was fitted on, when recorded, must be the model's.
    staged = {**calibration, "stages": {"global": 1, "local": 0}}
    check_calibration(staged, NAMES, {"global": 1, "local": 0})
    check_calibration(calibration, NAMES, {"global": 2, "local": 0})  # Not recorded: no check.
    with pytest.raises(CalibrationError, match=r"fitted on a model of 1 global and 0 local "
                       r"stage\(s\), this one has 2 and 0"):
        check_calibration(staged, NAMES, {"global": 2, "local": 0})
    with pytest.raises(KeraslmError, match="same shape"):
        fit_calibration(confidence, spread[:, :2], errors, NAMES)
    missing = errors.copy()
    missing[:, 1] = np.nan
    with pytest.raises(KeraslmError, match="landmark.s. b"):
        fit_calibration(confidence, spread, missing, NAMES)


def test_quality_counts_flags_and_catches():
    expected = np.array([0.5, 3.0, 1.0, 2.6, np.nan, 0.7])
    actual = np.array([0.4, 5.0, 4.5, 1.0, 9.0, 0.2])
    quality = calibration_quality(expected, actual, flag_mm=2.5, large_mm=4.0, num_bins=2)
    assert quality["num_points"] == 5 and quality["num_large"] == 2
    assert quality["flagged_fraction"] == pytest.approx(2 / 5)
    assert quality["caught_fraction"] == pytest.approx(1 / 2)
    assert [b["count"] for b in quality["bins"]] == [3, 2]
    assert spearman([1, 2, 2, 3], [1, 2, 2, 3]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # Ties get average ranks: [1, 2, 2, 3] has ranks [0, 1.5, 1.5, 3].
    assert spearman([1, 2, 2, 3], [0, 1, 2, 3]) == pytest.approx(np.corrcoef([0, 1.5, 1.5, 3], [0, 1, 2, 3])[0, 1])


def test_local_weight_follows_the_stages_error_variances():
    """Per landmark, the weight of the refined point that minimises the mean error: about the
    inverse-variance weight of two independent estimates (global SD 1; refined SD 0.3, 1, 5 ->
    0.92, 0.5, 0.04)."""
    from keraslm.calibration import blend_stages, cross_fitted_blend, fit_local_weight

    rng = np.random.default_rng(0)
    truth = rng.normal(size=(400, 3, 2)) * 10
    global_mm = truth + rng.normal(size=truth.shape)
    refined_mm = truth + rng.normal(size=truth.shape) * np.array([0.3, 1.0, 5.0])[None, :, None]
    np.testing.assert_allclose(fit_local_weight(global_mm, refined_mm, truth), [0.9, 0.5, 0.0])
    blended = np.asarray(blend_stages(global_mm, refined_mm, [0.0, 0.5, 1.0]))
    np.testing.assert_allclose(blended[:, 0], global_mm[:, 0])
    np.testing.assert_allclose(blended[:, 1], (global_mm[:, 1] + refined_mm[:, 1]) / 2)
    np.testing.assert_allclose(blended[:, 2], refined_mm[:, 2])
    # Cross-fitted: an image's blended points do not depend on its own truth.
    crossed = cross_fitted_blend(global_mm, refined_mm, truth)
    moved = truth.copy()
    moved[0] = refined_mm[0]  # its refined points would now look perfect
    np.testing.assert_allclose(cross_fitted_blend(global_mm, refined_mm, moved)[0], crossed[0])
    errors = lambda p: np.linalg.norm(p - truth, axis=-1).mean(0)  # noqa: E731
    assert np.all(errors(crossed) <= np.minimum(errors(global_mm), errors(refined_mm)) + 0.02)
    # Missing truth is left out of the fit; a landmark without any is named.
    truth_gaps = truth.copy()
    truth_gaps[:200, 1] = np.nan
    assert fit_local_weight(global_mm, refined_mm, truth_gaps)[1] == pytest.approx(0.5, abs=0.1)
    truth_gaps[:, 2] = np.nan
    with pytest.raises(KeraslmError, match=r"landmark\(s\) \[2\]"):
        fit_local_weight(global_mm, refined_mm, truth_gaps)

def test_cross_fitting_by_group_fits_each_group_on_the_others():
    """With `groups` (e.g. the cross-validation fold of each image) an image's blend weights and
    expected errors come from the OTHER groups only: changing one group's truth changes the other
    groups' answers and leaves its own alone; a single group or a wrong length is refused."""
    from keraslm.calibration import cross_fitted_blend

    rng = np.random.default_rng(1)
    truth = rng.normal(size=(90, 2, 2)) * 10
    global_mm = truth + rng.normal(size=truth.shape)
    refined_mm = truth + rng.normal(size=truth.shape)
    groups = np.repeat([0, 1, 2], 30)
    crossed = cross_fitted_blend(global_mm, refined_mm, truth, groups=groups)
    moved = truth.copy()
    moved[groups == 0] = refined_mm[groups == 0]  # group 0 says: trust the refined points
    shifted = cross_fitted_blend(global_mm, refined_mm, moved, groups=groups)
    np.testing.assert_allclose(shifted[groups == 0], crossed[groups == 0])
    assert not np.allclose(shifted[groups == 1], crossed[groups == 1])
    # By position (no groups) every fifth image is a round: group 0's images are spread over all.
    assert not np.allclose(cross_fitted_blend(global_mm, refined_mm, moved)[groups == 0],
                           crossed[groups == 0])
    confidence = rng.uniform(0.2, 1.0, size=(90, 2))
    spread = rng.uniform(0.5, 2.0, size=(90, 2))
    errors = np.linalg.norm(refined_mm - truth, axis=-1)
    expected = cross_fitted_expected_error(confidence, spread, errors, ["a", "b"], groups=groups)
    errors_moved = errors.copy()
    errors_moved[groups == 0] *= 5
    expected_moved = cross_fitted_expected_error(confidence, spread, errors_moved, ["a", "b"],
                                                 groups=groups)
    np.testing.assert_allclose(expected_moved[groups == 0], expected[groups == 0])
    assert np.all(expected_moved[groups == 1] > expected[groups == 1])
    with pytest.raises(KeraslmError, match="at least 2 groups"):
        cross_fitted_blend(global_mm, refined_mm, truth, groups=np.zeros(90))
    with pytest.raises(KeraslmError, match=r"one group label per image \(90\)"):
        cross_fitted_blend(global_mm, refined_mm, truth, groups=groups[:60])



def test_check_calibration_names_a_bad_local_weight():
    from keraslm.calibration import check_calibration, fit_calibration

    rng = np.random.default_rng(1)
    calibration = fit_calibration(rng.uniform(1, 9, (5, 2)), rng.uniform(1, 3, (5, 2)),
                                  rng.uniform(0, 3, (5, 2)), ["a", "b"])
    check_calibration({**calibration, "local_weight": [0.0, 1.0]}, ["a", "b"])
    for bad in ([0.5], [0.5, 1.5], [0.5, float("nan")]):
        with pytest.raises(KeraslmError, match="local_weight must hold one weight in"):
            check_calibration({**calibration, "local_weight": bad}, ["a", "b"])


def _shapes(num_shapes=80, seed=3):
    """Eight landmarks on a base shape (mm), each shape shifted, rotated up to 5 degrees, scaled
    by up to 5 % and jittered by 0.5 mm per coordinate."""
    rng = np.random.default_rng(seed)
    base = np.array([[0, 0], [40, 5], [80, 0], [90, 40], [70, 80], [30, 85], [0, 60], [45, 45]],
                    np.float64)
    shapes = []
    for _ in range(num_shapes):
        angle = np.radians(rng.uniform(-5, 5))
        rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        shapes.append(rng.uniform(0.95, 1.05) * base @ rotation.T + rng.uniform(-20, 20, 2)
                      + rng.normal(0, 0.5, base.shape))
    return np.stack(shapes)


def test_the_shape_vote_raises_the_expected_error_of_a_point_the_others_place_elsewhere():
    """A point moved 15 mm off its shape lies about 15 mm from the other landmarks' vote; the
    others stay near their vote (about their normal variation), so its expected error rises to
    the distance beyond `margin` x its variation and the others keep the heatmap's. The graph
    (keras.ops in tf.function) gives NumPy's numbers; a mirrored shape is as consistent as its
    original when the mirror axis is given."""
    names = [f"p{i}" for i in range(8)]
    shapes = _shapes()
    vote = fit_shape_vote(shapes[:60], names, margin=2.0)
    json.dumps(vote)
    scale = np.asarray(vote["scale_mm"])
    assert np.all((scale > 0.3) & (scale < 3.0))  # Jitter 0.5 mm x sqrt(2), widened by the fit.
    test = shapes[60:].copy()
    test[:, 3] += [15.0, 0.0]
    residual = np.asarray(shape_vote_residual_mm(vote, test))
    # The others' votes shift too (the moved point is one of the 7 each of them is voted by):
    # by a fraction of the 15 mm.
    others = np.delete(residual, 3, axis=1)
    assert np.all(residual[:, 3] > 11.0) and np.all(residual[:, 3] > 2.5 * others.max(axis=1))
    assert np.median(np.asarray(shape_vote_residual_mm(vote, shapes[60:]))) < 2.0
    confidence, spread, errors = _synthetic(num_images=20)
    calibration = {**fit_calibration(np.ones((20, 8)) * 50, np.ones((20, 8)),
                                     np.ones((20, 8)), names), "shape_vote": vote}
    check_calibration(calibration, names)
    heatmap = np.ones((20, 8), np.float32)
    expected = np.asarray(expected_error_mm(calibration, heatmap * 50, heatmap, test))
    np.testing.assert_allclose(expected, np.maximum(1.0, residual - 2.0 * scale), rtol=1e-5)
    assert np.all(expected[:, 3] > 5.0)
    graph = tf.function(lambda c, s, p: expected_error_mm(calibration, c, s, p))
    np.testing.assert_allclose(graph(heatmap[0] * 50, heatmap[0], test[0]).numpy(), expected[0],
                               rtol=1e-5)
    # Any leading dimensions, also unknown ones (a batch in a traced function).
    batched = tf.function(lambda p: shape_vote_residual_mm(vote, p),
                          input_signature=[tf.TensorSpec([None, 8, 2], tf.float64)])
    np.testing.assert_allclose(batched(test).numpy(), residual, rtol=1e-6)
    # A shape with a missing point has no vote: the heatmap's expected errors stand.
    missing = test[:1].copy()
    missing[0, 5] = np.nan
    np.testing.assert_allclose(
        np.asarray(expected_error_mm(calibration, heatmap[:1] * 50, heatmap[:1], missing)), 1.0,
        rtol=1e-5)
    mirrored = test * [-1.0, 1.0]
    np.testing.assert_allclose(np.asarray(shape_vote_residual_mm(vote, mirrored, mirror_axis=0)),
                               residual, rtol=1e-6)
    assert np.median(np.asarray(shape_vote_residual_mm(vote, mirrored))) > 20.0
    with pytest.raises(KeraslmError, match="needs the points"):
        expected_error_mm(calibration, heatmap, heatmap)
    with pytest.raises(KeraslmError, match="shape_vote is malformed"):
        check_calibration({**calibration, "shape_vote": {**vote, "scale_mm": [1.0]}}, names)
    with pytest.raises(KeraslmError, match="at least 6 complete shapes"):
        fit_shape_vote(shapes[:5], names)


def test_evaluate_applies_a_shape_vote_with_the_models_mirror_axis():
    """`keraslm-evaluate --calibration` gives a model with a mirror check the expected errors its
    own graph gives: the shape vote accepts the mirrored shape (a left-facing image's answer is
    not flagged for its facing); without the mirror axis the whole mirrored shape would be."""
    import dataclasses

    from keraslm.commands.evaluate import _with_calibration
    from keraslm.evaluation.metrics import point_errors
    from keraslm.evaluation.sources import Evaluation

    names = [f"p{i}" for i in range(8)]
    shapes = _shapes()
    calibration = {**fit_calibration(np.ones((20, 8)) * 50, np.ones((20, 8)),
                                     np.ones((20, 8)), names),
                   "shape_vote": fit_shape_vote(shapes[:60], names, margin=2.0)}
    mirrored = shapes[60:] * [-1.0, 1.0]
    heatmap = np.ones(mirrored.shape[:2])
    evaluation = Evaluation("model", tuple(f"i{n}" for n in range(20)), tuple(names), mirrored,
                            mirrored, point_errors(mirrored, mirrored), confidence=heatmap * 50,
                            spread_mm=heatmap, second_peak=None, mirror_axis=0)
    checked = _with_calibration(evaluation, calibration, "calibration.json").expected_error_mm
    upright = np.asarray(expected_error_mm(calibration, heatmap * 50, heatmap, shapes[60:]))
    np.testing.assert_allclose(checked, upright, rtol=1e-5)
    assert np.median(checked) < 2.0
    unchecked = _with_calibration(dataclasses.replace(evaluation, mirror_axis=None), calibration,
                                  "calibration.json").expected_error_mm
    assert np.median(unchecked) > 10.0


def test_cross_fitting_with_a_shape_vote_fits_each_round_on_the_other_shapes():
    """`cross_fitted_expected_error(..., shape_vote_margin=)`: each round's vote comes from the
    other rounds' annotated shapes, so a far-off prediction is flagged from shapes that do not
    include its own image; without a margin nothing changes."""
    names = [f"p{i}" for i in range(8)]
    shapes = _shapes(num_shapes=40)
    predicted = shapes + np.random.default_rng(5).normal(0, 0.3, shapes.shape)
    predicted[7, 2] += [0.0, 20.0]
    confidence, spread = np.full((40, 8), 50.0), np.ones((40, 8))
    errors = np.linalg.norm(predicted - shapes, axis=-1)
    plain = cross_fitted_expected_error(confidence, spread, errors, names)
    voted = cross_fitted_expected_error(confidence, spread, errors, names, points_mm=predicted,
                                        shapes_mm=shapes, shape_vote_margin=2.0)
    assert plain[7, 2] < 2.0 and voted[7, 2] > 12.0
    held = np.arange(40) % 5 == 7 % 5  # Image 7's round (images by position, modulo 5).
    vote = fit_shape_vote(shapes[~held], names, margin=2.0)
    beyond = (np.asarray(shape_vote_residual_mm(vote, predicted[held]))
              - 2.0 * np.asarray(vote["scale_mm"]))
    np.testing.assert_allclose(voted[held], np.maximum(plain[held], beyond), rtol=1e-5)


def test_evaluate_calibrate_stores_a_shape_vote(trained_2d, phantom2d_root, tmp_path, capsys):
    """evaluate.py --calibrate JSON --shape-vote-margin M: the calibration holds a vote fitted on
    the evaluated images' shapes; --shape-vote-margin alone is refused."""
    from evaluate import main as evaluate_main

    result, dataset = trained_2d
    path = tmp_path / "calibration.json"
    assert evaluate_main(["--model", result.model_path, "--dataset", str(phantom2d_root),
                          "--all-images", "--no-plots", "--output-dir",
        str(tmp_path / "eval"), "--calibrate", str(path), "--shape-vote-margin", "2"]) == 0
    calibration = json.loads(path.read_text())
    check_calibration(calibration, dataset.landmark_names)
    assert calibration["shape_vote"]["margin"] == 2.0
    assert calibration["shape_vote"]["num_shapes"] == len(dataset.records)
    with pytest.raises(SystemExit):
        evaluate_main(["--model", result.model_path, "--shape-vote-margin", "2"])
    assert "--shape-vote-margin goes with --calibrate" in capsys.readouterr().err


def test_second_peak_is_the_runner_up_place_over_the_peak():
    codec = HeatmapCodec((64, 64), sigma=2.0)
    points = np.array([[[30.0, 30.0], [50.0, 30.0]]], np.float32)
    two = codec.encode(points)  # 1 mm per pixel below: the Gaussians are 20 mm apart.
    single = np.asarray(codec.second_peak(two[..., :1], 1.0, radius_mm=5.0))[0, 0]
    assert single == pytest.approx(np.exp(-26 / 8.0), abs=0.01)  # The flank beyond 5 mm.
    split = np.maximum(two[..., :1], 0.6 * two[..., 1:])
    heights = np.stack([split[..., 0], 0.6 * split[..., 0], -split[..., 0]], -1)
    got = np.asarray(codec.second_peak(heights, 1.0, radius_mm=5.0))[0]
    assert got[0] == pytest.approx(0.6, abs=1e-5) and got[1] == pytest.approx(0.6, abs=1e-5)
    assert got[2] == 0.0  # No positive peak.
    # Millimetres, not pixels: at 0.2 mm per pixel the second Gaussian is 4 mm away.
    assert np.asarray(codec.second_peak(split, 0.2, radius_mm=5.0))[0, 0] < 0.2
    # Spacing per axis (x, y) against array axes (y, x): 1 mm along x, 3 mm along y.
    spikes = np.zeros((1, 64, 64, 1), np.float32)
    spikes[0, 30, 30, 0], spikes[0, 32, 30, 0], spikes[0, 30, 34, 0] = 1.0, 0.5, 0.8
    got = np.asarray(codec.second_peak(spikes, (1.0, 3.0), radius_mm=5.0))[0, 0]
    assert got == pytest.approx(0.5)  # 6 mm away along y counts; the 0.8, 4 mm along x, not.
    # A strided 3D codec (x, y, z spacing 1, 1, 2 mm): output pixels are 2 input pixels.
    codec3 = HeatmapCodec((16, 16, 32), stride=2, sigma=1.0)
    heatmaps = np.zeros((1, 8, 8, 16, 1), np.float32)
    heatmaps[0, 4, 4, 4, 0] = 1.0
    heatmaps[0, 4, 4, 7, 0] = 0.3  # 3 output = 6 input pixels along x: 6 mm, counts.
    heatmaps[0, 4, 6, 4, 0] = 0.9  # 2 output pixels along y: 4 mm, the peak's own flank.
    heatmaps[0, 5, 4, 4, 0] = 0.8  # 1 output pixel along z: 4 mm, too.
    got = np.asarray(codec3.second_peak(heatmaps, (1.0, 1.0, 2.0), radius_mm=5.0))[0, 0]
    assert got == pytest.approx(0.3)
    with pytest.raises(KeraslmError, match="radius_mm"):
        codec.second_peak(two, 1.0, radius_mm=0.0)


def test_the_second_peak_damps_the_confidence_a_calibration_reads():
    """A calibration fitted with the global second peak records its power, ranks errors that
    grow with the second peak better than one without it, expects more error of a point with a
    stronger runner-up, and computes the same in the graph as in NumPy."""
    rng = np.random.default_rng(3)
    confidence, spread = rng.uniform(5, 100, (80, 3)), rng.uniform(0.5, 3.0, (80, 3))
    second_peak = rng.uniform(0.1, 0.9, (80, 3))
    typical = 30.0 * spread / (confidence * (1.0 - second_peak) ** 2)
    errors = typical * np.array([1.0, 2.0, 4.0]) * rng.gamma(8.0, 1 / 8.0, typical.shape)
    calibration = fit_calibration(confidence, spread, errors, NAMES, second_peak=second_peak)
    check_calibration(calibration, NAMES)
    json.dumps(calibration)
    assert calibration["second_peak_power"] == 2.0 and "second_peak" in calibration["score"]
    assert "second_peak_power" not in fit_calibration(confidence, spread, errors, NAMES)
    with_peak = calibration_quality(cross_fitted_expected_error(
        confidence, spread, errors, NAMES, second_peak=second_peak), errors)
    without = calibration_quality(cross_fitted_expected_error(confidence, spread, errors, NAMES),
                                  errors)
    assert with_peak["spearman"] > without["spearman"] + 0.1
    # The same heatmap peak and spread: a stronger runner-up expects more error.
    same_c, same_s = np.full((1, 3), 40.0, np.float32), np.full((1, 3), 1.0, np.float32)
    peaks = np.array([0.1, 0.5, 0.9], np.float32)
    by_peak = [np.asarray(expected_error_mm(calibration, same_c, same_s,
                                            second_peak=np.full((1, 3), p, np.float32)))
               for p in peaks]
    assert np.all(by_peak[0] < by_peak[1]) and np.all(by_peak[1] < by_peak[2])
    # Graph and NumPy agree on the damped score.
    test_c = np.array([[1.0, 50.0, 1e4], [20.0, 5.0, 80.0]], np.float32)
    test_s = np.array([[9.0, 1.0, 0.01], [2.0, 0.5, 1.0]], np.float32)
    test_p = np.array([[0.0, 0.5, 1.0], [0.2, 1.5, -0.5]], np.float32)  # Outside [0, 1]: clipped.
    damped = test_c * (1.0 - np.clip(test_p, 0.0, 1.0)) ** 2
    np.testing.assert_allclose(np.asarray(damped_confidence(test_c, test_p, 2.0)), damped, rtol=1e-6)
    score = np.log(np.maximum(damped, 1e-3)) - np.log(test_s + 0.1)
    reference = np.interp(score, calibration["knots"], calibration["values"]) * np.asarray(
        calibration["landmark_scale"])
    graph = tf.function(lambda c, s, p: expected_error_mm(calibration, c, s, second_peak=p))
    np.testing.assert_allclose(graph(test_c, test_s, test_p).numpy(), reference, rtol=1e-5)
    with pytest.raises(KeraslmError, match="needs second_peak"):
        expected_error_mm(calibration, test_c, test_s)
    with pytest.raises(KeraslmError, match="second_peak_power"):
        check_calibration({**calibration, "second_peak_power": -1.0}, NAMES)
    with pytest.raises(KeraslmError, match="second_peak_power"):
        check_calibration({**calibration, "second_peak_power": "2"}, NAMES)
    assert "second_peak_power" not in fit_calibration(confidence, spread, errors, NAMES,
                                                      second_peak=second_peak,
                                                      second_peak_power=0)
    with pytest.raises(KeraslmError, match="second_peak must have"):
        fit_calibration(confidence, spread, errors, NAMES, second_peak=second_peak[:, :2])
    with pytest.raises(KeraslmError, match="second_peak_power"):
        fit_calibration(confidence, spread, errors, NAMES, second_peak=second_peak,
                        second_peak_power=-1.0)


def test_evaluate_calibrate_damps_by_the_second_peak(trained_2d, phantom2d_root, tmp_path, capsys):
    """evaluate.py --calibrate reads the predictions' second peak (power 2 by default, 0 leaves it
    out); --calibration applies such a calibration; a negative power is refused."""
    from evaluate import main as evaluate_main

    result, dataset = trained_2d
    common = ["--model", result.model_path, "--dataset", str(phantom2d_root), "--all-images",
              "--no-plots"]
    damped, plain = tmp_path / "damped.json", tmp_path / "plain.json"
    assert evaluate_main(common + ["--output-dir", str(tmp_path / "a"),
                                   "--calibrate", str(damped)]) == 0
    assert evaluate_main(common + ["--output-dir", str(tmp_path / "b"), "--calibrate", str(plain),
                                   "--second-peak-power", "0"]) == 0
    assert json.loads(damped.read_text())["second_peak_power"] == 2.0
    assert "second_peak_power" not in json.loads(plain.read_text())
    assert evaluate_main(common + ["--output-dir", str(tmp_path / "c"),
                                   "--calibration", str(damped)]) == 0
    report = json.loads((tmp_path / "c" / "metrics.json").read_text())
    assert report["expected_error"] is not None
    for bad in ("-1", "inf", "nan"):
        with pytest.raises(SystemExit):
            evaluate_main(common + ["--calibrate", str(damped), "--second-peak-power", bad])
        assert "--second-peak-power must be a number >= 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        evaluate_main(common + ["--second-peak-power", "2"])
    assert "--second-peak-power goes with --calibrate" in capsys.readouterr().err
