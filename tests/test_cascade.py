"""Tests of the coarse-to-fine (cascade) path: crops on the device, the local stage's training,
refinement back to physical mm in the one prediction graph, the cascade SavedModel, and the
recorded model descriptions (`keraslm.spec`) of keraslm 0.1 and 0.2."""
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from helpers import subprocess_env
from keraslm import KeraslmError
from keraslm.io import Image
from keraslm.ops import (
    AugmentationConfig,
    HeatmapCodec,
    choose_crop_landmarks,
    crop_stage,
    crop_to_grid,
    extract_crops,
    sample_transforms,
)
from keraslm.prediction import (
    DetectorPredictor,
    LandmarkDetector,
    SavedModelPredictor,
    combine_detectors,
    load_detector,
    load_predictor,
    predict,
)
from keraslm.preprocessing import place_on_grid
from keraslm.spec import DetectorSpec, StageSpec, upgrade_spec

# ---------------------------------------------------------------------------------------------
# Device ops
# ---------------------------------------------------------------------------------------------


def _dot_images(shape, num_landmarks, batch=2, seed=0):
    """Images with one bright pixel per landmark (landmark 0 brightest) and their points."""
    rng = np.random.default_rng(seed)
    ndim = len(shape)
    images = np.zeros((batch, *shape, 1), np.float32)
    points = np.zeros((batch, num_landmarks, ndim), np.float32)
    for b in range(batch):
        for k in range(num_landmarks):
            point = np.array([rng.integers(6, n - 6) for n in shape[::-1]])
            points[b, k] = point
            images[(b, *point[::-1], 0)] = 1.0 if k == 0 else 0.5
    return images, points


@pytest.mark.parametrize("shape", [(48, 60), (20, 28, 36)])
def test_crop_stage_moves_crops_and_landmarks_together(shape):
    ndim = len(shape)
    images, points = _dot_images(shape, num_landmarks=3)
    crop = (12,) * ndim
    codec = HeatmapCodec(crop, stride=1, sigma=1.0)
    config = AugmentationConfig(rotation_degrees=20, translation_mm=2.0, scale=0.1,
                                intensity_scale=0.0, intensity_shift=0.0)
    index = choose_crop_landmarks(points, 3)
    transforms = sample_transforms(7, 6, crop, 1.0, config)
    crops, heatmaps, weights, moved = (np.asarray(t) for t in crop_stage(
        images, points, index, transforms, codec))
    assert crops.shape == (6, *crop, 1) and heatmaps.shape == (6, *crop, 3)
    np.testing.assert_array_equal(weights, np.tile(np.eye(3), (2, 1)))  # own landmark only
    for n in range(6):
        own = n % 3
        # The crop was centred on its own landmark: it moved by at most the translation
        # (2 px) plus scaling of a zero offset.
        centre = (np.array(crop[::-1]) - 1) / 2
        assert np.all(np.abs(moved[n, own] - centre) <= 2.0 + 1e-4)
        if own == 0:  # The brightest pixel of the crop is where the landmark moved to.
            peak = np.unravel_index(np.argmax(crops[n, ..., 0]), crop)[::-1]
            assert np.all(np.abs(np.array(peak) - moved[n, 0]) <= 1.0)
        target_peak = np.unravel_index(np.argmax(heatmaps[n, ..., own]), crop)[::-1]
        assert np.all(np.abs(np.array(target_peak) - moved[n, own]) <= 0.5 + 1e-4)


def test_extract_crops_and_crop_to_grid_invert_each_other():
    # Four dots far apart (one per crop), crops of odd size: integer centres give exact crops.
    points = np.array([[[8, 9], [30, 10], [9, 33], [40, 30]],
                       [[12, 7], [35, 14], [7, 28], [31, 33]]], np.float32)
    images = np.zeros((2, 40, 50, 1), np.float32)
    for b in range(2):
        for x, y in points[b].astype(int):
            images[b, y, x, 0] = 1.0
    centres = points + np.array([2.0, -3.0], np.float32)
    crops = np.asarray(extract_crops(images, centres, (9, 11)))
    assert crops.shape == (8, 9, 11, 1)
    np.testing.assert_allclose(crops.max(axis=(1, 2, 3)), 1.0)
    peaks = np.array([np.unravel_index(np.argmax(c[..., 0]), c.shape[:2])[::-1] for c in crops])
    back = np.asarray(crop_to_grid(peaks.reshape(2, 4, 2), centres, (9, 11)))
    np.testing.assert_allclose(back, points, atol=1e-5)


def test_choose_crop_landmarks():
    points = np.zeros((3, 5, 2), np.float32)
    points[:, 1] = np.nan
    everything = np.asarray(choose_crop_landmarks(points, 5))
    np.testing.assert_array_equal(everything, np.tile(np.arange(5), (3, 1)))
    subset = np.asarray(choose_crop_landmarks(points, 4, seed=2))
    for row in subset:
        assert len(set(row.tolist())) == 4 and 1 not in row.tolist()  # missing one left out
    with pytest.raises(ValueError, match="landmarks_per_image"):
        choose_crop_landmarks(points, 6)


# ---------------------------------------------------------------------------------------------
# Refinement back to physical mm: stub networks in the one prediction graph
# ---------------------------------------------------------------------------------------------


def _tiling_network(num_landmarks, ndim):
    """A 'perfect' local network: every heatmap channel is the input crop itself."""
    inputs = keras.Input((None,) * ndim + (1,))
    outputs = keras.layers.Concatenate()([inputs] * num_landmarks)
    return keras.Model(inputs, outputs)


class FixedHeatmaps(keras.Model):
    """A global network stub: whatever the grid image, these heatmaps `(1, *grid, L)`."""

    def __init__(self, heatmaps):
        super().__init__()
        self.heatmaps = np.asarray(heatmaps, np.float32)

    def call(self, images, training=False):
        return keras.ops.zeros_like(images[..., :1]) + self.heatmaps


def _stage(grid_shape, spacing, crop_shape=None, offset_prior_mm=None):
    return StageSpec(architecture=None, grid_shape=tuple(grid_shape),
                     grid_spacing=(spacing,) * len(grid_shape), normalization="none",
                     output_stride=1, size_divisor=1, sigma=2.0, crop_shape=crop_shape,
                     offset_prior_mm=offset_prior_mm)


def _offset_global(names, image, truth_mm, offset, grid_shape, spacing):
    """A global stage (LandmarkDetector) whose heatmaps peak at the true landmarks of `image`
    on its grid, moved by `offset` grid pixels."""
    stage = _stage(grid_shape, spacing)
    placement = place_on_grid(image, stage.grid)
    points = placement.image_index_to_grid(image.physical_to_index(truth_mm)) + offset
    heatmaps = np.asarray(stage.codec.encode(points[None].astype(np.float32)))
    spec = DetectorSpec(tuple(names), 2, (stage,))
    return LandmarkDetector(spec, [FixedHeatmaps(heatmaps)])


def _local(names, grid_shape, spacing, crop_shape, offset_prior_mm=None):
    """A local stage saved on its own (no global stage): the tiling network."""
    stage = _stage(grid_shape, spacing, crop_shape, offset_prior_mm)
    return LandmarkDetector(DetectorSpec(tuple(names), 2, (), (stage,)), [],
                            [_tiling_network(len(names), 2)])


@pytest.fixture(scope="module")
def blobs():
    """An anisotropic image with an origin and Gaussian blobs at known physical positions; a
    global stage off by up to 3 of its pixels and a local stage that sees the blobs themselves;
    the global stage's prediction and the cascade's:
    (image, truth_index, truth_mm, coarse detector, local detector, unrefined, refined)."""
    spacing = np.array([0.2, 0.3])
    origin = np.array([-12.0, 40.0])
    height, width = 300, 260
    truth_index = np.array([[40.3, 50.7], [200.2, 70.4], [120.6, 230.1]])
    yy, xx = np.mgrid[:height, :width]
    array = np.zeros((height, width), np.float32)
    for x, y in truth_index:
        array += np.exp(-(((xx - x) * spacing[0]) ** 2 + ((yy - y) * spacing[1]) ** 2)
                        / (2 * 0.8 ** 2))
    image = Image(array, spacing=spacing, origin=origin)
    truth_mm = image.index_to_physical(truth_index)
    names = ["a", "b", "c"]
    coarse = _offset_global(names, image, truth_mm,
                            np.array([[1.5, -2.0], [-2.5, 1.0], [0.7, 2.2]]), (64, 64), 1.5)
    local = _local(names, (180, 180), 0.5, (24, 24))
    [unrefined] = predict(coarse, [image])
    [refined] = predict(coarse, [image], refine=local)
    return image, truth_index, truth_mm, coarse, local, unrefined, refined


def test_cascade_refines_to_the_true_millimetres(blobs):
    image, truth_index, truth_mm, coarse, local, unrefined, refined = blobs
    np.testing.assert_allclose(refined.points_mm, truth_mm, atol=0.05)
    np.testing.assert_allclose(refined.points_index, truth_index, atol=0.2)
    assert np.all(refined.spread_mm > 0) and refined.expected_error_mm is None
    # Without refinement the global stage's offset remains.
    assert np.linalg.norm(unrefined.points_mm - truth_mm, axis=-1).min() > 1.0
    # One detector, one graph: the global stage and the local stage that refines it.
    cascade = load_predictor(coarse, refine=local)
    assert isinstance(cascade, DetectorPredictor)
    assert cascade.spec == combine_detectors([coarse, local]).spec
    assert cascade.spec.global_stages == coarse.spec.global_stages
    assert cascade.spec.local_stages == local.spec.local_stages
    assert len(cascade.detector.networks) == len(cascade.detector.local_networks) == 1


def test_refine_iterations_centre_the_crops_on_the_previous_estimate():
    # A ridge two pixels high whose brightness falls along x: in every crop the brightest
    # column is the first, so each pass moves the estimate by half a crop (10 px) towards the
    # bright end, from where the previous pass left it.
    spacing = 0.5
    array = np.zeros((60, 120), np.float32)
    array[30:32] = 1.0 - np.arange(120) / 200.0
    image = Image(array, spacing=(spacing, spacing))
    # The global stage finds (80.5, 30.5), a whole pixel of its grid: decoded exactly.
    start_mm = image.index_to_physical(np.array([[80.5, 30.5]]))
    coarse = _offset_global(["a"], image, start_mm, np.zeros((1, 2)), (30, 60), 1.0)
    local = _local(["a"], (60, 120), spacing, (21, 21))
    once = load_predictor(coarse, refine=local).locate(image)
    twice = DetectorPredictor(combine_detectors([coarse, local]), iterations=2).locate(image)
    np.testing.assert_allclose(once["landmarks_index"], [[70.5, 30.5]], atol=1e-3)
    np.testing.assert_allclose(twice["landmarks_index"], [[60.5, 30.5]], atol=1e-3)
    # The confidence is the last pass's: the ridge's brightness at the point found.
    np.testing.assert_allclose(once["confidence"], [1.0 - 70.5 / 200.0], atol=1e-3)
    np.testing.assert_allclose(twice["confidence"], [1.0 - 60.5 / 200.0], atol=1e-3)
    with pytest.raises(KeraslmError, match=r"`iterations` \(2\) counts the passes of a local "
                       "stage; this model has none"):
        DetectorPredictor(coarse, iterations=2)
    with pytest.raises(KeraslmError, match="`iterations` must be an int >= 1"):
        load_predictor(coarse, refine=local, iterations=0)


def test_offset_prior_prefers_the_peak_near_the_coarse_estimate():
    # Landmark a at x = 20 mm, a brighter look-alike 7 mm to its right; the global stage is
    # 1 mm off. Without a prior the local stage jumps to the look-alike.
    spacing = 0.5
    yy, xx = np.mgrid[:80, :80] * spacing
    truth_mm, decoy_mm = np.array([[20.0, 20.0]]), np.array([27.0, 20.0])
    array = (0.6 * np.exp(-((xx - 20.0) ** 2 + (yy - 20.0) ** 2) / 2.0)
             + np.exp(-((xx - decoy_mm[0]) ** 2 + (yy - decoy_mm[1]) ** 2) / 2.0))
    image = Image(array.astype(np.float32), spacing=(spacing, spacing))
    coarse = _offset_global(["a"], image, truth_mm, np.array([[0.5, 0.0]]),  # of its 2 mm pixels
                            (20, 20), 2.0)
    found = {}
    for prior_mm in (None, 2.0):
        local = _local(["a"], (80, 80), spacing, (40, 40), offset_prior_mm=prior_mm)
        [prediction] = predict(coarse, [image], refine=local)
        found[prior_mm] = prediction.points_mm[0]
    np.testing.assert_allclose(found[None], decoy_mm, atol=0.05)
    np.testing.assert_allclose(found[2.0], truth_mm[0], atol=0.05)


def _calibration(names, local_weight=None):
    from keraslm.calibration import fit_calibration

    rng = np.random.default_rng(0)
    shape = (6, len(names))
    calibration = fit_calibration(rng.uniform(0.2, 1.0, shape), rng.uniform(0.5, 3, shape),
                                  rng.uniform(0, 3, shape), names)
    if local_weight is not None:
        calibration["local_weight"] = list(local_weight)
    return calibration


def test_local_weight_blends_the_stages_per_landmark(blobs):
    """A calibration's `local_weight` makes the cascade answer `w * refined + (1 - w) * global`
    per landmark, in the graph."""
    from keraslm.calibration import expected_error_mm

    image, _, _, coarse, local, global_only, refined = blobs
    names = list(coarse.spec.landmark_names)
    weight = np.array([0.0, 0.5, 1.0])
    calibration = _calibration(names, weight)
    cascade = combine_detectors([coarse, local])
    calibrated = LandmarkDetector(cascade.spec.replace(calibration=calibration), cascade.networks,
                                  cascade.local_networks)
    assert calibrated.spec.local_weight == weight.tolist()
    [blended] = predict(calibrated, [image])
    expected = global_only.points_mm + weight[:, None] * (refined.points_mm - global_only.points_mm)
    np.testing.assert_allclose(blended.points_mm, expected, atol=1e-6)
    assert np.abs(blended.points_mm - refined.points_mm).max() > 1.0  # the blend moved points
    # The refined stage's confidence and spread, and the expected error from them.
    np.testing.assert_allclose(blended.confidence, refined.confidence)
    np.testing.assert_allclose(blended.expected_error_mm, np.asarray(
        expected_error_mm(calibration, refined.confidence, refined.spread_mm)), rtol=1e-5)
    assert refined.expected_error_mm is None
    # The second peak is the global stage's, whatever refines it; a calibration with
    # second_peak_power damps the confidence by it in the graph.
    np.testing.assert_allclose(refined.second_peak, global_only.second_peak, atol=1e-6)
    np.testing.assert_allclose(blended.second_peak, global_only.second_peak, atol=1e-6)
    assert np.all((global_only.second_peak > 0) & (global_only.second_peak < 1))
    wide = {**calibration, "knots": [-20.0, 20.0], "values": [5.0, 0.5]}  # Every score inside.
    answers = {}
    for power in (0.0, 2.0):
        damped = {**wide, "second_peak_power": power}
        [answers[power]] = predict(LandmarkDetector(cascade.spec.replace(calibration=damped),
                                                    cascade.networks, cascade.local_networks),
                                   [image])
        np.testing.assert_allclose(answers[power].expected_error_mm, np.asarray(expected_error_mm(
            damped, refined.confidence, refined.spread_mm, second_peak=global_only.second_peak)),
            rtol=1e-5)
    assert np.all(answers[2.0].expected_error_mm > answers[0.0].expected_error_mm)
    # A blending calibration needs a local stage; one without weights keeps the refined points,
    # and the first detector's calibration is the combined one's.
    with pytest.raises(KeraslmError, match="this model has no local stage"):
        coarse.spec.replace(calibration=calibration)
    no_blend = _calibration(names)
    plain = LandmarkDetector(coarse.spec.replace(calibration=no_blend), coarse.networks)
    assert combine_detectors([plain, local]).spec.calibration == no_blend
    [kept] = predict(plain, [image], refine=local)
    np.testing.assert_allclose(kept.points_mm, refined.points_mm, atol=1e-9)
    assert kept.expected_error_mm is not None


def test_cascade_checks_its_stages(blobs):
    image, _, _, coarse, local, _, _ = blobs
    names = list(coarse.spec.landmark_names)
    with pytest.raises(KeraslmError, match="refine: the refining model must be a local stage"):
        load_predictor(coarse, refine=coarse)
    with pytest.raises(KeraslmError, match="the model is the local stage of a coarse-to-fine"):
        load_predictor(local, refine=local)
    with pytest.raises(KeraslmError, match="needs a global stage; all of these are local"):
        combine_detectors([local, local])
    other = _local(["a", "b", "x"], (180, 180), 0.5, (24, 24))
    with pytest.raises(KeraslmError, match=r"disagree in their landmarks: landmarks 'x' that "
                       r"the first does not have, and not its 'c'"):
        load_predictor(coarse, refine=other)
    with pytest.raises(KeraslmError, match="local stage of a coarse-to-fine model"):
        predict(local, [image])
    with pytest.raises(KeraslmError, match="local stage of a coarse-to-fine model"):
        local.locate_function()
    with pytest.raises(KeraslmError, match="the spec describes 1 global and 0 local stages; 1 "
                       "and 1 networks were given"):
        LandmarkDetector(coarse.spec, coarse.networks, local.local_networks)
    with pytest.raises(KeraslmError, match=r"a local stage \(crop_shape\) is listed among the "
                       "global stages"):
        DetectorSpec(tuple(names), 2, local.spec.local_stages)
    with pytest.raises(KeraslmError, match="a whole-image stage is listed among the local"):
        DetectorSpec(tuple(names), 2, coarse.spec.global_stages, coarse.spec.global_stages)
    with pytest.raises(KeraslmError, match="a 3D stage in a 2D detector"):
        DetectorSpec(tuple(names), 2, (_stage((8, 8, 8), 1.0),))
    with pytest.raises(KeraslmError, match="a detector needs at least one stage"):
        DetectorSpec(tuple(names), 2, ())


# ---------------------------------------------------------------------------------------------
# Recorded model descriptions: keraslm 0.1's metadata dicts and the current form
# ---------------------------------------------------------------------------------------------


def _old_metadata(stage, grid_shape, spacing, **changes):
    """keraslm 0.1's metadata of one network ("keraslm-landmarks/1"), as model.json, a
    LandmarkDetector's "metadata" and a SavedModel's assets/keraslm.json held it."""
    metadata = {"format": "keraslm-landmarks/1", "architecture": "unet",
                "landmark_names": ["nasion", "sella"], "ndim": 2, "grid_shape": list(grid_shape),
                "grid_spacing": [spacing, spacing], "normalization": "standardize",
                "output_stride": 1, "size_divisor": 4, "sigma": 2.0,
                "decode_method": "quadratic", "stage": stage}
    if stage == "local":
        metadata.update(crop_shape=[16, 16], offset_prior_mm=2.3)
    metadata.update(changes)
    return metadata


def test_upgrade_spec_reads_keraslm_0_1_metadata_with_a_local_stage_and_calibration():
    calibration = _calibration(["nasion", "sella"], [0.2, 1.0])
    recorded = _old_metadata(
        "global", (32, 48), 1.5, training_precision="bfloat16", storage_orientation=["+x", "+y"],
        plain_image_spacing=[0.1, 0.1], calibration=calibration,
        refine=_old_metadata("local", (120, 180), 0.5, architecture="scn", sigma=[1.5, 2.5],
                             decode_method="dark", training_precision="float32"))
    spec = upgrade_spec(json.loads(json.dumps(recorded)), "model.json")
    assert spec.landmark_names == ("nasion", "sella") and spec.ndim == 2
    assert spec.global_stages == (StageSpec(
        architecture="unet", grid_shape=(32, 48), grid_spacing=(1.5, 1.5),
        normalization="standardize", output_stride=1, size_divisor=4, sigma=2.0,
        decode_method="quadratic", training_precision="bfloat16"),)
    assert spec.local_stages == (StageSpec(
        architecture="scn", grid_shape=(120, 180), grid_spacing=(0.5, 0.5),
        normalization="standardize", output_stride=1, size_divisor=4, sigma=(1.5, 2.5),
        decode_method="dark", training_precision="float32", crop_shape=(16, 16),
        offset_prior_mm=2.3),)
    assert spec.calibration == calibration and spec.local_weight == [0.2, 1.0]
    # Trained on images stored +x +y: in the canonical frame.
    assert spec.canonical_orientation and spec.storage_orientation is None
    assert spec.plain_image_spacing == (0.1, 0.1)
    assert not spec.is_ensemble and not spec.is_local_only
    # A local stage's own metadata (a 0.1 LandmarkDetector's "local_metadata") is read alike.
    alone = dict(recorded)
    local_recorded = alone.pop("refine")
    assert upgrade_spec(alone, "model.keras", local_recorded) == spec
    # A local stage saved on its own; the metadata of a model without calibration or records.
    local_only = upgrade_spec(_old_metadata("local", (120, 180), 0.5), "local/model.json")
    assert local_only.is_local_only and local_only.global_stages == ()
    assert local_only.local_stages[0].crop_shape == (16, 16)
    plain = upgrade_spec(_old_metadata("global", (32, 48), 1.5), "model.json")
    assert plain.calibration is None and plain.storage_orientation is None
    assert plain.global_stages[0].training_precision is None and plain.local_stages == ()
    # What prediction needs, missing or inconsistent: named with the file.
    broken = {k: v for k, v in recorded.items() if k not in ("grid_shape", "sigma")}
    with pytest.raises(KeraslmError, match="^model.json: the model description lacks "
                       "grid_shape, sigma$"):
        upgrade_spec(broken, "model.json")
    no_crop = _old_metadata("local", (120, 180), 0.5)
    del no_crop["crop_shape"]
    with pytest.raises(KeraslmError, match="^model.json: a local stage without crop_shape"):
        upgrade_spec(dict(recorded, refine=no_crop), "model.json")
    with pytest.raises(KeraslmError, match=r"^model.json: .*no local stage"):
        upgrade_spec(dict(recorded, refine=None), "model.json")


def test_upgrade_spec_reads_keraslm_0_1_ensemble_metadata():
    members = [_old_metadata("global", (32, 32), 2.0), _old_metadata("global", (40, 40), 1.6)]
    locals_ = [_old_metadata("local", (64, 64), 1.0), _old_metadata("local", (80, 80), 0.8)]
    # An exported 0.1 ensemble: the first member's fields, its first local stage under
    # "refine", and every member under "ensemble" (members without training_precision).
    recorded = dict(members[0], training_precision="float16", refine=locals_[0],
                    ensemble={"global": members, "local": locals_},
                    calibration=_calibration(["nasion", "sella"]),
                    saved_model={"signatures": {}})
    spec = upgrade_spec(json.loads(json.dumps(recorded)), "assets/keraslm.json")
    assert spec.is_ensemble
    assert [s.grid_shape for s in spec.global_stages] == [(32, 32), (40, 40)]
    assert [s.grid_spacing for s in spec.global_stages] == [(2.0, 2.0), (1.6, 1.6)]
    assert [s.grid_shape for s in spec.local_stages] == [(64, 64), (80, 80)]
    assert all(s.is_local and s.crop_shape == (16, 16) for s in spec.local_stages)
    # The recorded precision is the first network's.
    assert [s.training_precision for s in spec.global_stages] == ["float16", None]
    assert spec.calibration == recorded["calibration"]
    # A global stage among the local ones is refused, naming the file.
    bad = dict(recorded, ensemble={"global": members, "local": [members[1]]})
    with pytest.raises(KeraslmError, match="^assets/keraslm.json: a whole-image stage is listed "
                       "among the local stages"):
        upgrade_spec(bad, "assets/keraslm.json")


def test_upgrade_spec_refuses_unknown_formats():
    for form in ("keraslm-landmarks/9", "keraslm-detector/3"):
        with pytest.raises(KeraslmError, match=f"^x/keraslm.json: unknown model description "
                           f"format '{form}'"):
            upgrade_spec(_old_metadata("global", (32, 32), 2.0, format=form), "x/keraslm.json")
    with pytest.raises(KeraslmError, match="^x.json: the model description is not a JSON object"):
        upgrade_spec([1, 2], "x.json")
    current = upgrade_spec(_old_metadata("global", (32, 32), 2.0), "m").to_json()
    del current["global_stages"]
    with pytest.raises(KeraslmError, match="^m: the model description is incomplete or "
                       "malformed .*global_stages"):
        upgrade_spec(current, "m")


def test_detector_spec_json_round_trips_through_upgrade_spec():
    calibration = _calibration(["nasion", "sella"], [0.0, 0.7])
    recorded = _old_metadata(
        "global", (32, 48), 1.5, training_precision="bfloat16", storage_orientation=["+x", "-y"],
        plain_image_spacing=[0.1, 0.12], calibration=calibration,
        ensemble={"global": [_old_metadata("global", (32, 48), 1.5),
                             _old_metadata("global", (40, 40), 1.6, sigma=[1.5, 2.5])],
                  "local": [_old_metadata("local", (120, 180), 0.5)]})
    spec = upgrade_spec(recorded, "model.json")
    written = spec.to_json()
    assert written["format"] == "keraslm-detector/2"
    again = upgrade_spec(json.loads(json.dumps(written)), "keraslm.json")
    assert again == spec
    assert again.global_stages[1].sigma == (1.5, 2.5)
    assert again.plain_image_spacing == (0.1, 0.12)
    assert again.storage_orientation == ("+x", "-y")
    # Every field is recorded: a change shows in the JSON and survives the round trip.
    changed = spec.replace(calibration=None, plain_image_spacing=None)
    assert upgrade_spec(changed.to_json(), "keraslm.json") == changed != spec
    local_only = DetectorSpec(("a",), 3, (), (StageSpec(
        None, (8, 8, 8), (1.0, 1.0, 2.0), "none", 2, 2, 1.0, "argmax", None, (4, 4, 4), None),))
    assert upgrade_spec(json.loads(json.dumps(local_only.to_json())), "k") == local_only
    # The mean training positions (the baseline), a landmark without any as None; a spec
    # written before they were recorded reads as None.
    with_means = spec.replace(mean_position_mm=((10.5, -3.0), None))
    assert upgrade_spec(json.loads(json.dumps(with_means.to_json())), "k") == with_means
    assert spec.mean_position_mm is None and "mean_position_mm" not in recorded
    with pytest.raises(KeraslmError, match="one 2D point"):
        spec.replace(mean_position_mm=((1.0, 2.0, 3.0), None))


# ---------------------------------------------------------------------------------------------
# Training a local stage, predicting and exporting the cascade
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cascade_runs(cascade_2d):
    """(root, dataset, global result, local result) of the shared cascade (conftest.py)."""
    return cascade_2d[:4]


@pytest.fixture(scope="module")
def cascade_export(cascade_2d):
    """The shared cascade exported once with `keraslm-export --refine`: its version folder."""
    return cascade_2d[4]


def test_local_stage_training_writes_a_local_model(cascade_runs):
    root, dataset, coarse, local = cascade_runs
    assert not os.path.exists(os.path.join(local.output_dir, "model.json"))
    detector = load_detector(local.model_path)
    assert detector.spec.is_local_only and len(detector.local_networks) == 1
    assert len(detector.networks) == 0
    [stage] = detector.spec.local_stages
    assert stage.crop_shape == (16, 16) and stage.grid_spacing == (2.0, 2.0)
    assert stage.architecture == "unet" and stage.training_precision is not None
    # Trained on crop-centre offsets uniform within +-4 mm per axis: their SD is 4 / sqrt(3).
    assert stage.offset_prior_mm == pytest.approx(4.0 / np.sqrt(3.0))
    # The fine grid covers every image whole (64 px of the phantom's spacing at 2 mm).
    extent = max(dataset.read_image_header(r).size[0] * dataset.read_image_header(r).spacing[0]
                 for r in dataset.records)
    assert stage.grid_shape[1] == int(np.ceil(extent / 2.0 - 1e-6))
    assert detector.spec.landmark_names == tuple(dataset.landmark_names)
    assert np.all(np.isfinite(local.errors_mm)) and local.errors_mm.shape == (2, 37)
    history = json.load(open(os.path.join(local.output_dir, "history.json")))
    assert "val_point_error_mm" in history
    # The global run: one whole-image stage.
    spec = load_detector(coarse.model_path).spec
    assert [s.grid_shape for s in spec.global_stages] == [(32, 32)] and spec.local_stages == ()


@pytest.mark.slow
def test_cascade_prediction_keras_and_saved_model_agree(cascade_runs, cascade_export, tmp_path):
    root, dataset, coarse, local = cascade_runs
    paths = [r.image_path for r in dataset.records[:2]]
    refined = predict(coarse.model_path, paths, spacing=dataset.image_spacing,
                      refine=local.model_path)
    unrefined = predict(coarse.model_path, paths, spacing=dataset.image_spacing)
    assert refined[0].points_mm.shape == (37, 2)
    assert not np.allclose(refined[0].points_mm, unrefined[0].points_mm)
    # Run folders name the same models.
    from_runs = predict(coarse.output_dir, paths, spacing=dataset.image_spacing,
                        refine=local.output_dir)
    for a, b in zip(refined, from_runs):
        np.testing.assert_allclose(a.points_mm, b.points_mm, atol=1e-9)
    # One SavedModel: its predict_array signature runs both stages.
    version = cascade_export
    predictor = load_predictor(str(version))
    assert isinstance(predictor, SavedModelPredictor)
    assert predictor.spec == load_predictor(coarse.model_path, refine=local.model_path).spec
    served = predict(str(version), paths, spacing=dataset.image_spacing)
    for a, b in zip(refined, served):
        np.testing.assert_allclose(a.points_mm, b.points_mm, atol=1e-3)
        np.testing.assert_allclose(a.points_index, b.points_index, atol=1e-3)
        np.testing.assert_allclose(a.confidence, b.confidence, rtol=1e-3, atol=1e-3)
    # Plain TensorFlow runs the cascade without keraslm.
    image = dataset.read_image(dataset.records[0])
    np.save(tmp_path / "image.npy", np.asarray(image.array, np.float32))
    code = (
        "import sys; sys.modules['keraslm'] = None\n"
        "import numpy as np, tensorflow as tf\n"
        f"m = tf.saved_model.load({str(version)!r})\n"
        f"out = m.signatures['predict_array'](image=tf.constant(np.load({str(tmp_path / 'image.npy')!r})),"
        f" spacing=tf.constant({list(map(float, image.spacing))}, tf.float32),"
        f" origin=tf.constant({list(map(float, image.origin))}, tf.float32),"
        f" direction=tf.constant({np.asarray(image.direction, float).tolist()}, tf.float32))\n"
        f"np.save({str(tmp_path / 'mm.npy')!r}, out['landmarks_mm'].numpy())\n"
    )
    subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                   env=subprocess_env(), timeout=300)
    np.testing.assert_allclose(np.load(tmp_path / "mm.npy"), served[0].points_mm, atol=1e-4)


# Slow (20 s: three command-line runs); the Python path of refine= is in the default run.
@pytest.mark.slow
def test_cascade_cli_and_mismatched_refine(cascade_runs, tmp_path, capsys):
    from keraslm.commands.predict import main

    root, dataset, coarse, local = cascade_runs
    path = dataset.records[0].image_path  # a PNG: the spacing is given
    spacing = ",".join(str(s) for s in dataset.image_spacing)
    assert main([coarse.model_path, "--refine", local.model_path, path, "--spacing", spacing,
                 "--output-dir", str(tmp_path / "p")]) == 0
    written = json.loads((tmp_path / "p" / "predictions.json").read_text())["predictions"][0]
    [expected] = predict(coarse.model_path, [path], spacing=dataset.image_spacing,
                         refine=local.model_path)
    np.testing.assert_allclose([written["landmarks"][n]["mm"] for n in expected.landmark_names],
                               expected.points_mm, atol=1e-4)
    capsys.readouterr()
    assert main([local.model_path, path, "--output-dir", str(tmp_path / "q")]) == 2
    assert (f"{local.model_path} is the local stage of a coarse-to-fine model"
            in capsys.readouterr().err)
    assert main([local.model_path, "--refine", coarse.model_path, path, "--spacing", spacing,
                 "--output-dir", str(tmp_path / "q")]) == 2
    assert (f"{local.model_path} is the local stage of a coarse-to-fine model"
            in capsys.readouterr().err)
    assert main([coarse.model_path, "--refine", coarse.model_path, path, "--spacing", spacing,
                 "--output-dir", str(tmp_path / "q")]) == 2
    assert (f"{coarse.model_path}: the refining model must be a local stage"
            in capsys.readouterr().err)
    assert not (tmp_path / "q").exists()
    with pytest.raises(SystemExit):
        main([coarse.model_path, "--refine", local.model_path, "--refine-iterations", "0", path])
    assert "expected a whole number >= 1, got '0'" in capsys.readouterr().err
    assert main([coarse.model_path, "--refine", local.model_path, "--refine-iterations", "2",
                 path, "--spacing", spacing, "--output-dir", str(tmp_path / "r")]) == 0
    twice = json.loads((tmp_path / "r" / "predictions.json").read_text())["predictions"][0]
    [expected] = predict(load_predictor(coarse.model_path, refine=local.model_path, iterations=2),
                         [path], spacing=dataset.image_spacing)
    np.testing.assert_allclose([twice["landmarks"][n]["mm"] for n in expected.landmark_names],
                               expected.points_mm, atol=1e-4)
    capsys.readouterr()
    assert main([coarse.model_path, "--refine-iterations", "2", path]) == 2
    assert "--refine-iterations needs --refine" in capsys.readouterr().err


def test_serving_client_refines_like_predict(cascade_runs, cascade_export):
    """The client against the cascade's export, through JSON as TF Serving's REST API answers:
    image files as bytes (`predict_image`, rows), other images as arrays (`predict_array`,
    columns)."""
    import base64

    import tensorflow as tf

    from keraslm.serving import ServingClient

    root, dataset, coarse, local = cascade_runs
    version = cascade_export
    loaded = tf.saved_model.load(version)
    calls = []

    def transport(path, body):
        body = json.loads(json.dumps(body))
        calls.append((path, body["signature_name"]))
        signature = loaded.signatures[body["signature_name"]]
        if "instances" in body:
            rows = body["instances"]
            outputs = signature(
                image_bytes=tf.constant([base64.b64decode(r["image_bytes"]["b64"]) for r in rows]),
                spacing=tf.constant([r["spacing"] for r in rows], tf.float32))
            outputs = {k: v.numpy().tolist() for k, v in outputs.items()}
            return {"predictions": [{k: v[i] for k, v in outputs.items()} for i in range(len(rows))]}
        outputs = signature(**{k: tf.constant(np.asarray(v, np.float32))
                               for k, v in body["inputs"].items()})
        return {"outputs": {k: v.numpy().tolist() for k, v in outputs.items()}}

    records = dataset.records
    paths = ([r.image_path for r in records if r.image_path.lower().endswith(".png")][:2]
             + [r.image_path for r in records if not r.image_path.lower().endswith(".png")][:1])
    assert len(paths) == 3
    client = ServingClient("cascade", version, transport=transport)
    assert len(client.spec.local_stages) == 1
    served = client.predict(paths, spacing=dataset.image_spacing, batch_size=2)
    assert sorted(name for _, name in calls) == ["predict_array", "predict_image"]
    # The version of the folder the spec is read from is asked for.
    assert all(path == "/v1/models/cascade/versions/1:predict" for path, _ in calls)
    expected = predict(coarse.model_path, paths, spacing=dataset.image_spacing,
                       refine=local.model_path)
    for a, b in zip(expected, served):
        assert a.image_id == b.image_id
        np.testing.assert_allclose(a.points_mm, b.points_mm, atol=1e-3)
        np.testing.assert_allclose(a.confidence, b.confidence, rtol=1e-3, atol=1e-3)


def test_evaluate_runs_with_refine_runs(cascade_runs):
    from keraslm.evaluation import evaluate_runs

    root, dataset, coarse, local = cascade_runs
    evaluation = evaluate_runs([coarse.output_dir], refine_runs=[local.output_dir])
    assert evaluation.method == "unet + local unet"
    test_ids = json.load(open(os.path.join(coarse.output_dir, "metrics.json")))["validation_ids"]
    test_set = dataset.subset(test_ids)
    expected = predict(coarse.model_path, [r.image_path for r in test_set.records],
                       spacing=dataset.image_spacing, refine=local.model_path)
    errors = np.linalg.norm(np.stack([p.points_mm for p in expected]) - test_set.points_mm, axis=-1)
    np.testing.assert_allclose(evaluation.errors.errors_mm, errors, atol=1e-3)
    np.testing.assert_allclose(evaluation.confidence, np.stack([p.confidence for p in expected]),
                               rtol=1e-5)
    with pytest.raises(KeraslmError, match="one local-stage run per run"):
        evaluate_runs([coarse.output_dir], refine_runs=[local.output_dir, local.output_dir])


@pytest.mark.slow
def test_calibrated_cascade_carries_expected_errors_from_evaluation_to_serving(cascade_runs, tmp_path,
                                                                              capsys, monkeypatch):
    """evaluate.py --calibrate -> export --calibration -> every prediction path returns the same
    expected_error_mm, which is the calibration applied to the prediction's confidence/spread."""
    import tensorflow as tf

    from evaluate import main as evaluate_main
    from keraslm.calibration import check_calibration, expected_error_mm
    from keraslm.commands.export import main as export_main
    from keraslm.commands.predict import main as predict_main
    from keraslm.evaluation import evaluate_model, write_report
    from keraslm.prediction.predictors import read_saved_model_spec

    root, dataset, coarse, local = cascade_runs
    calibration_path = tmp_path / "calibration.json"
    assert evaluate_main(["--runs", coarse.output_dir, "--refine", local.output_dir,
                          "--output-dir", str(tmp_path / "eval"), "--calibrate",
                          str(calibration_path)]) == 0
    out = capsys.readouterr().out
    assert ("cross-fitted on these images (each image's expected errors from a calibration fitted "
            "without its fifth of the images): Spearman") in out
    assert "stages blended per landmark (each image's weights fitted without its fifth of the images)" in out
    assert (tmp_path / "eval" / "calibration_reliability.png").exists()
    calibration = json.loads(calibration_path.read_text())
    check_calibration(calibration, dataset.landmark_names)
    assert len(calibration["local_weight"]) == 37
    assert calibration["second_peak_power"] == 2.0  # Damped by the global second peak.
    # --no-blend keeps the refined points: a calibration without weights.
    assert evaluate_main(["--runs", coarse.output_dir, "--refine", local.output_dir, "--no-plots",
                          "--output-dir", str(tmp_path / "eval_n"), "--no-blend", "--calibrate",
                          str(tmp_path / "plain.json")]) == 0
    assert "local_weight" not in json.loads((tmp_path / "plain.json").read_text())
    assert "stages blended" not in capsys.readouterr().out
    # A blending calibration applied without the local stage is refused, naming the file.
    assert evaluate_main(["--runs", coarse.output_dir, "--output-dir", str(tmp_path / "eval_x"),
                          "--no-plots", "--calibration", str(calibration_path)]) == 1
    assert ("calibration.json: the calibration was fitted on a model of 1 global and 1 local "
            "stage(s), this one has 1 and 0") in capsys.readouterr().err
    assert calibration["stages"] == {"global": 1, "local": 1}
    # Applied to (other) held-out predictions, its quality is reported.
    assert evaluate_main(["--runs", coarse.output_dir, "--refine", local.output_dir, "--output-dir",
                          str(tmp_path / "eval_c"), "--no-plots", "--calibration", str(calibration_path)]) == 0
    assert "expected error of the model: Spearman" in capsys.readouterr().out
    assert "(stages blended)" in (tmp_path / "eval_c" / "report.md").read_text()  # its weights applied
    assert json.loads((tmp_path / "eval_c" / "metrics.json").read_text())["expected_error"]["num_points"] > 0
    assert calibration["num_points"] > 0 and "spearman" in calibration["quality_cross_fitted"]

    base = tmp_path / "served"
    assert export_main([coarse.output_dir, str(base), "--refine", local.output_dir,
                        "--calibration", str(calibration_path)]) == 0
    paths = [r.image_path for r in dataset.records[:2]]
    served = predict(str(base / "1"), paths, spacing=dataset.image_spacing)
    # The export records the cascade's spec with the calibration; the same detector in Keras.
    cascade = combine_detectors([load_detector(coarse.model_path), load_detector(local.model_path)])
    calibrated = LandmarkDetector(cascade.spec.replace(calibration=calibration), cascade.networks,
                                  cascade.local_networks)
    assert read_saved_model_spec(str(base / "1")) == calibrated.spec
    asset = json.loads((base / "1" / "assets" / "keraslm.json").read_text())
    assert asset["format"] == "keraslm-detector/2" and asset["calibration"] == calibration
    assert "predict_array" in asset["saved_model"]["inputs"]
    keras_side = predict(calibrated, paths, spacing=dataset.image_spacing)
    for a, b in zip(served, keras_side):
        assert a.expected_error_mm is not None and a.expected_error_mm.shape == (37,)
        np.testing.assert_allclose(a.expected_error_mm, np.asarray(expected_error_mm(
            calibration, a.confidence, a.spread_mm, second_peak=a.second_peak)), rtol=1e-4)
        np.testing.assert_allclose(a.second_peak, b.second_peak, atol=1e-3)
        np.testing.assert_allclose(a.expected_error_mm, b.expected_error_mm, rtol=1e-3, atol=1e-3)
        np.testing.assert_allclose(a.spread_mm, b.spread_mm, rtol=1e-3, atol=1e-3)
        np.testing.assert_allclose(a.points_mm, b.points_mm, atol=1e-3)
    # The image signature (TF Serving's default) answers it too.
    png = next(r.image_path for r in dataset.records if r.image_path.endswith(".png"))
    outputs = tf.saved_model.load(str(base / "1")).signatures["serving_default"](
        image_bytes=tf.constant([open(png, "rb").read()]),
        spacing=tf.constant([dataset.image_spacing[:2]], tf.float32))
    reference = predict(str(base / "1"), [png], spacing=dataset.image_spacing)[0]
    np.testing.assert_allclose(outputs["expected_error_mm"][0].numpy(), reference.expected_error_mm,
                               rtol=1e-3)
    # The CLI prints and writes it; an uncalibrated model writes no expected_error.csv.
    assert predict_main([str(base / "1"), paths[0], "--spacing", str(dataset.image_spacing[0]),
                         "--output-dir", str(tmp_path / "p")]) == 0
    printed = capsys.readouterr()
    out = printed.out
    assert "expected error" in out
    header, row = (tmp_path / "p" / "expected_error.csv").read_text().splitlines()[:2]
    assert header == ",".join(["id", *dataset.landmark_names, "check"])
    # The last column names the landmarks above 2.5 mm; one warning line for the image if any,
    # and the CHECK legend only then.
    values = row.split(",")
    flagged = [n for n, e in zip(dataset.landmark_names, values[1:-1]) if float(e) > 2.5]
    assert values[-1] == ";".join(flagged)
    assert ("CHECK: expected error above 2.5 mm" in out) == bool(flagged)
    assert ("no landmark flagged: every expected error is at most 2.5 mm" in out) != bool(flagged)
    warnings = [line for line in printed.err.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == (1 if flagged else 0)
    if flagged:
        assert f"{len(flagged)} landmark(s) to check by hand" in warnings[0]
        assert all(name in warnings[0] for name in flagged)
    payload = json.loads((tmp_path / "p" / "predictions.json").read_text())
    entries = payload["predictions"][0]["landmarks"]
    assert "expected_error_mm" in next(iter(entries.values()))
    assert [n for n, entry in entries.items() if entry["check"]] == flagged
    assert payload["flag_mm"] == 2.5
    # --flag-mm: another threshold, the same expected errors; 0.01 mm flags every landmark.
    assert predict_main([str(base / "1"), paths[0], "--spacing", str(dataset.image_spacing[0]),
                         "--output-dir", str(tmp_path / "f"), "--flag-mm", "0.01"]) == 0
    printed = capsys.readouterr()
    assert "CHECK: expected error above 0.01 mm" in printed.out
    header, all_row = (tmp_path / "f" / "expected_error.csv").read_text().splitlines()[:2]
    assert all_row.split(",")[:-1] == values[:-1]
    assert all_row.split(",")[-1] == ";".join(dataset.landmark_names)
    assert f"{len(dataset.landmark_names)} landmark(s) to check by hand" in printed.err
    flagged_all = json.loads((tmp_path / "f" / "predictions.json").read_text())
    assert flagged_all["flag_mm"] == 0.01 and all(
        entry["check"] for entry in flagged_all["predictions"][0]["landmarks"].values())
    with pytest.raises(SystemExit):
        predict_main([str(base / "1"), paths[0], "--flag-mm", "-1"])
    assert "expected a positive number, got '-1'" in capsys.readouterr().err
    # An uncalibrated model: no expected_error.csv, and --flag-mm is said to do nothing.
    assert predict_main([coarse.model_path, paths[0], "--spacing", str(dataset.image_spacing[0]),
                         "--output-dir", str(tmp_path / "q"), "--flag-mm", "2"]) == 0
    assert not (tmp_path / "q" / "expected_error.csv").exists()
    printed = capsys.readouterr()
    assert (f"warning: --flag-mm has no effect: {coarse.model_path} has no calibration"
            in printed.err) and "CHECK" not in printed.out and "flagged" not in printed.out
    # Evaluating the calibrated export reports how well its expected errors rank the errors.
    test_set = dataset.subset(dataset.ids[:2])
    evaluation = evaluate_model(str(base / "1"), test_set)
    written = write_report(str(tmp_path / "eval2"), evaluation)
    metrics = json.loads((tmp_path / "eval2" / "metrics.json").read_text())
    assert metrics["expected_error"]["num_points"] == 2 * 37
    assert any(path.endswith("reliability.png") for path in written)
    # A calibration of other landmarks is refused, naming the file.
    other = dict(calibration, landmark_names=["x"] * 37)
    (tmp_path / "other.json").write_text(json.dumps(other))
    assert export_main([coarse.output_dir, str(base), "--calibration", str(tmp_path / "other.json")]) == 1
    assert "other.json" in capsys.readouterr().err
    # A calibration of the pair given to its global stage alone: another stage structure.
    assert export_main([coarse.output_dir, str(base), "--calibration", str(calibration_path)]) == 1
    assert "fitted on a model of 1 global and 1 local stage(s)" in capsys.readouterr().err
    # A calibration path that is a folder, or not JSON: named, exit 1, before the models load.
    (tmp_path / "not_json.json").write_bytes(b"\xe9")
    for bad in (tmp_path, tmp_path / "not_json.json"):
        assert export_main([coarse.output_dir, str(base), "--calibration", str(bad)]) == 1
        error = capsys.readouterr().err
        assert error.startswith(f"error: {bad}") and "Traceback" not in error
    # A SavedModel given as the model, and a run folder given as the base folder: refused.
    for model in (base / "1", base):
        assert export_main([str(model), str(tmp_path / "again")]) == 2
        assert "a SavedModel is exported already" in capsys.readouterr().err
    assert export_main([coarse.output_dir, local.output_dir]) == 2
    assert "is a training run folder (model.keras), not a model base folder" in (
        capsys.readouterr().err)
    assert not any(name.isdigit() for name in os.listdir(local.output_dir))  # No version.
    with pytest.raises(SystemExit):
        export_main([coarse.output_dir, str(base), "--version", "0"])
    assert "expected a whole number >= 1" in capsys.readouterr().err
    # Stages in the wrong place are named, in the command line's words.
    assert export_main([local.output_dir, str(base)]) == 2
    assert f"{local.output_dir}: a local stage" in capsys.readouterr().err
    assert export_main([coarse.output_dir, str(base), "--refine", coarse.output_dir]) == 2
    assert f"{coarse.output_dir}: a whole-image model, not a local stage" in capsys.readouterr().err
    assert export_main([coarse.output_dir, str(base), "--version", "1"]) == 2
    assert "choose another version (--version" in capsys.readouterr().err
    # A version below the newest one is written (the export itself faked here) with a warning:
    # TF Serving would go on serving the newest.
    import keraslm.export

    def write_version(detector, base_dir, version=None):
        version = version or max(int(name) for name in os.listdir(base_dir)) + 1
        os.makedirs(os.path.join(base_dir, str(version)))
        return os.path.join(base_dir, str(version))

    monkeypatch.setattr(keraslm.export, "export_saved_model", write_version)
    (tmp_path / "versions" / "9").mkdir(parents=True)
    assert export_main([coarse.output_dir, str(tmp_path / "versions"), "--version", "3"]) == 0
    printed = capsys.readouterr()
    assert "exported" in printed.out and (
        "holds version 9, which TF Serving serves rather than 3" in printed.err)
    assert export_main([coarse.output_dir, str(tmp_path / "versions")]) == 0
    assert "warning" not in capsys.readouterr().err  # Version 10, the newest.


@pytest.mark.slow
def test_blending_calibration_mixes_the_stages_in_every_path(cascade_runs, tmp_path, capsys):
    """A calibration's `local_weight` makes the cascade answer `w * refined + (1 - w) * global`
    per landmark: the Keras graph and the export alike; a single-stage export refuses it."""
    from keraslm.calibration import fit_calibration
    from keraslm.commands.export import main as export_main

    root, dataset, coarse, local = cascade_runs
    paths = [r.image_path for r in dataset.records[:2]]
    spacing = dataset.image_spacing
    global_only = predict(coarse.model_path, paths, spacing=spacing)
    refined = predict(coarse.model_path, paths, spacing=spacing, refine=local.model_path)
    rng = np.random.default_rng(0)
    calibration = fit_calibration(rng.uniform(1, 100, (6, 37)), rng.uniform(0.5, 3, (6, 37)),
                                  rng.uniform(0, 3, (6, 37)), dataset.landmark_names)
    weight = np.resize([0.0, 0.5, 1.0, 0.3], 37)
    calibration["local_weight"] = weight.tolist()
    # A blending calibration belongs to the combined detector (the global one has no local stage).
    detector = load_detector(coarse.model_path)
    with pytest.raises(KeraslmError, match="this model has no local stage"):
        detector.spec.replace(calibration=calibration)
    cascade = combine_detectors([detector, load_detector(local.model_path)])
    calibrated = LandmarkDetector(cascade.spec.replace(calibration=calibration), cascade.networks,
                                  cascade.local_networks)
    keras_side = predict(calibrated, paths, spacing=spacing)
    (tmp_path / "blend.json").write_text(json.dumps(calibration))
    assert export_main([coarse.output_dir, str(tmp_path / "served"), "--refine", local.output_dir,
                        "--calibration", str(tmp_path / "blend.json")]) == 0
    served = predict(str(tmp_path / "served" / "1"), paths, spacing=spacing)
    for g, r, k, s in zip(global_only, refined, keras_side, served):
        expected = g.points_mm + weight[:, None] * (r.points_mm - g.points_mm)
        np.testing.assert_allclose(k.points_mm, expected, atol=1e-3)
        np.testing.assert_allclose(s.points_mm, expected, atol=1e-3)
        assert np.abs(s.points_mm - r.points_mm).max() > 0.01  # the blend moved points
        np.testing.assert_allclose(s.confidence, r.confidence, rtol=1e-3, atol=1e-3)
    capsys.readouterr()
    assert export_main([coarse.output_dir, str(tmp_path / "single"), "--calibration",
                        str(tmp_path / "blend.json")]) == 1  # A calibration that does not fit.
    assert "blend.json: the calibration blends a global and a local stage (local_weight); this " \
           "model has no local stage" in capsys.readouterr().err
    assert not (tmp_path / "single").exists()


def test_stage_points_are_kept_and_predicted_again_for_a_new_model(cascade_runs, tmp_path, monkeypatch):
    """The ISBI driver's held-out points of both stages: predicted once and kept in the global
    run's folder; a run trained again (another model file) is predicted again."""
    import shutil

    from keraslm.experiments import runs as experiment_runs

    _, dataset, coarse, local = cascade_runs
    global_dir, local_dir = tmp_path / "global", tmp_path / "local"
    shutil.copytree(coarse.output_dir, global_dir)
    shutil.copytree(local.output_dir, local_dir)
    calls = []
    evaluate = experiment_runs.evaluate_runs
    monkeypatch.setattr(experiment_runs, "evaluate_runs",
                        lambda *args, **kwargs: calls.append(args) or evaluate(*args, **kwargs))
    first = experiment_runs.stage_points(str(global_dir), str(local_dir))
    assert len(calls) == 2 and (global_dir / "stage_points_mm.npz").is_file()
    assert first.global_mm.shape == first.refined_mm.shape == (2, 37, 2)
    assert not np.allclose(first.global_mm, first.refined_mm)
    errors = experiment_runs.refined_run_errors(str(global_dir), str(local_dir), dataset.landmark_names)
    assert len(calls) == 2  # kept
    np.testing.assert_allclose(errors.errors_mm,
                               np.linalg.norm(first.refined_mm - first.ground_truth_mm, axis=-1))
    model = global_dir / "model.keras"
    os.utime(model, ns=(model.stat().st_atime_ns, model.stat().st_mtime_ns + 10**9))
    again = experiment_runs.stage_points(str(global_dir), str(local_dir))
    assert len(calls) == 4
    np.testing.assert_allclose(again.refined_mm, first.refined_mm, atol=1e-4)


def test_a_calibration_is_attached_when_stages_are_combined(cascade_2d):
    """`combine_detectors(..., calibration)` / `load_predictor(..., calibration=)`: a blending
    calibration belongs to the combined detector (the global stage alone refuses it)."""
    from keraslm.calibration import check_calibration
    from keraslm.prediction import combine_detectors, load_detector, load_predictor

    root, dataset, coarse, local, exported = cascade_2d
    names = list(dataset.landmark_names)
    calibration = {"format": "keraslm-calibration-1", "score": "log_confidence_over_spread",
                   "knots": [0.0, 1.0], "values": [2.0, 1.0], "landmark_scale": [1.0] * len(names),
                   "landmark_names": names, "num_points": 2, "source": "test",
                   "local_weight": [0.5] * len(names)}
    check_calibration(calibration, names)
    detectors = [load_detector(coarse.model_path), load_detector(local.model_path)]
    combined = combine_detectors(detectors, calibration)
    assert combined.spec.calibration == calibration and combined.spec.local_weight == [0.5] * len(names)
    predictor = load_predictor(coarse.output_dir, refine=local.output_dir, calibration=calibration)
    assert predictor.spec == combined.spec
    with pytest.raises(KeraslmError, match="this model has no local stage"):
        combine_detectors(detectors[:1], calibration)
    with pytest.raises(KeraslmError, match="holds the calibration it was exported with"):
        load_predictor(exported, calibration=calibration)


def test_a_shape_vote_in_the_calibration_raises_expected_errors_in_the_graph(cascade_2d):
    """A calibration with a shape vote (`fit_shape_vote` on the training shapes): the
    prediction graph's expected error is the larger of the heatmap's and the point's distance
    from the other landmarks' vote beyond `margin` x its variation, computed on the answer's
    points (blended) - with and without a mirror check (the vote then takes the nearer facing)."""
    from keraslm.calibration import fit_shape_vote, shape_vote_residual_mm
    from keraslm.prediction import combine_detectors, load_detector, predict
    from keraslm.spec import MirrorCheck

    root, dataset, coarse, local, exported = cascade_2d
    names = list(dataset.landmark_names)
    vote = fit_shape_vote(dataset.points_mm, names, margin=0.5, num_folds=4)
    calibration = {"format": "keraslm-calibration-1", "score": "log_confidence_over_spread",
                   "knots": [0.0, 1.0], "values": [0.01, 0.001], "landmark_scale": [1.0] * len(names),
                   "landmark_names": names, "num_points": 2, "source": "test",
                   "local_weight": [0.5] * len(names), "shape_vote": vote}
    detectors = [load_detector(coarse.model_path), load_detector(local.model_path)]
    combined = combine_detectors(detectors, calibration)
    images = [dataset.read_image(record) for record in dataset.records[:2]]
    checked = LandmarkDetector(combined.spec.replace(mirror_check=MirrorCheck("x", -1.0)),
                               combined.networks, combined.local_networks)
    for detector, axis in ((combined, None), (checked, 0)):
        for answer in predict(detector, images):
            beyond = (np.asarray(shape_vote_residual_mm(vote, answer.points_mm, axis))
                      - 0.5 * np.asarray(vote["scale_mm"]))
            np.testing.assert_allclose(answer.expected_error_mm, np.maximum(0.01, beyond),
                                       rtol=1e-4, atol=1e-5)
            assert np.any(beyond > 0.01)  # The vote decides somewhere: the test is not idle.
    # keraslm-evaluate --calibration applies the vote with the model's mirror axis too.
    from keraslm.evaluation import evaluate_model
    two = dataset.subset(dataset.ids[:2])
    assert evaluate_model(checked, two).mirror_axis == 0
    assert evaluate_model(combined, two).mirror_axis is None
    volumes = np.random.default_rng(0).normal(size=(10, len(names), 3))
    with pytest.raises(KeraslmError, match="shape vote is for 3D points, the detector is 2D"):
        combine_detectors(detectors, {**calibration,
                                      "shape_vote": fit_shape_vote(volumes, names, num_folds=4)})


def test_a_local_stage_trained_with_refine_of_saves_and_validates_the_pair(cascade_2d, tmp_path):
    """`refine_of`: the run's model.keras is the coarse-to-fine pair, its metrics.json is the
    pair's error through the prediction graph (= evaluating the saved pair), and it exports."""
    from keraslm.evaluation import evaluate_runs
    from keraslm.prediction import load_detector
    from keraslm.run_folder import RunFolder
    from keraslm.training import TrainingConfig, train

    root, dataset, coarse, local, exported = cascade_2d
    common = dict(dataset=str(root / "phantom"), architecture="unet", steps=2, steps_per_epoch=2,
                  test_fraction=0.25, model_overrides={"filters": 4, "num_levels": 2}, jit="off",
                  plots=False)
    result = train(TrainingConfig(
        crop_shape=(16, 16), grid_spacing=2.0, batch_size=1, landmarks_per_image=8,
        translation_mm=4.0, refine_of=coarse.output_dir, output_dir=str(tmp_path / "pair"),
        export_dir=str(tmp_path / "served"), **common))
    spec = load_detector(result.model_path).spec
    assert len(spec.global_stages) == 1 and len(spec.local_stages) == 1
    assert spec.global_stages[0] == load_detector(coarse.model_path).spec.global_stages[0]
    trained = RunFolder(result.output_dir).read_metrics()
    evaluated = evaluate_runs([result.output_dir])
    per_landmark = np.nanmean(evaluated.errors.errors_mm, axis=0)
    np.testing.assert_allclose(
        per_landmark, [trained["per_landmark_mean_mm"][n] for n in evaluated.landmark_names],
        atol=1e-4, rtol=0)
    assert result.export_path and os.path.isdir(result.export_path)
    with pytest.raises(KeraslmError, match=r"--refine-of .*: it held out other images"):
        train(TrainingConfig(crop_shape=(16, 16), grid_spacing=2.0, batch_size=1,
                             refine_of=coarse.output_dir, output_dir=str(tmp_path / "other"),
                             **{**common, "test_fraction": 0.5}))
    with pytest.raises(KeraslmError, match=r"--refine-of .*: a run of a local stage"):
        train(TrainingConfig(crop_shape=(16, 16), grid_spacing=2.0, batch_size=1,
                             refine_of=local.output_dir, output_dir=str(tmp_path / "local2"),
                             **common))
    with pytest.raises(KeraslmError, match=r"--refine-of trains a local stage on a global one"):
        train(TrainingConfig(grid_shape=(32, 32), batch_size=2, refine_of=coarse.output_dir,
                             output_dir=str(tmp_path / "global2"), **common))


def _largest_constants(version_dir):
    """(elements, node name) of the largest Const nodes in a SavedModel's graphs, largest last."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel()
    with open(os.path.join(version_dir, "saved_model.pb"), "rb") as handle:
        saved.ParseFromString(handle.read())
    sizes = []
    for graph in saved.meta_graphs:
        nodes = list(graph.graph_def.node)
        for function in graph.graph_def.library.function:
            nodes += list(function.node_def)
        sizes += [(int(np.prod([d.size for d in node.attr["value"].tensor.tensor_shape.dim])),
                   node.name) for node in nodes if node.op == "Const"]
    return sorted(sizes)


def test_exported_cascade_holds_no_per_pixel_constants(cascade_runs, cascade_export):
    """The crops' index grid and the local centre prior are built in the graph from one short
    vector per axis: an exported graph holds no constant as large as a crop (it would be copied
    into every signature and mirror branch)."""
    _, _, _, local = cascade_runs
    [stage] = load_detector(local.model_path).spec.local_stages
    crop_pixels = int(np.prod(stage.crop_shape))
    largest = _largest_constants(str(cascade_export))
    assert largest and largest[-1][0] < crop_pixels, largest[-3:]
