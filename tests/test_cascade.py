"""Tests of the coarse-to-fine (cascade) path: crops on the device, the local stage's training,
refinement back to physical mm, and the cascade SavedModel."""
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from keraslm import KeraslmError
from keraslm.detector import Predictor
from keraslm.inference import CascadePredictor, KerasPredictor, load_predictor, predict
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
from keraslm.preprocessing import GridSpec, place_on_grid

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
# Refinement back to physical mm
# ---------------------------------------------------------------------------------------------


def _tiling_network(num_landmarks, ndim):
    """A 'perfect' local network: every heatmap channel is the input crop itself."""
    inputs = keras.Input((None,) * ndim + (1,))
    outputs = keras.layers.Concatenate()([inputs] * num_landmarks)
    network = keras.Model(inputs, outputs)
    network.output_stride = 1
    return network


class _OffsetGlobal(Predictor):
    """A global stage stub: the true landmarks on its grid, moved by a fixed offset."""

    def __init__(self, metadata, truth_mm, offset):
        self.metadata, self.truth_mm, self.offset = metadata, truth_mm, offset
        self.image = None

    def grid_points(self, images):
        grid = GridSpec(tuple(self.metadata["grid_shape"]), tuple(self.metadata["grid_spacing"]))
        placement = place_on_grid(self.image, grid)
        points = placement.image_index_to_grid(self.image.physical_to_index(self.truth_mm))
        return (points + self.offset)[None].astype(np.float32), np.ones((1, len(points)))


def _metadata(names, grid_shape, spacing, stage, crop_shape=None):
    metadata = {"format": "keraslm-landmarks/1", "landmark_names": names, "ndim": 2,
                "grid_shape": list(grid_shape), "grid_spacing": [spacing, spacing],
                "normalization": "none", "output_stride": 1, "size_divisor": 1, "sigma": 2.0,
                "decode_method": "quadratic", "stage": stage}
    if crop_shape:
        metadata["crop_shape"] = list(crop_shape)
    return metadata


def test_cascade_refines_to_the_true_millimetres():
    # An anisotropic image with an origin, Gaussian blobs at known physical positions; the
    # global stage is off by up to 3 of its pixels, the local stage sees the blobs themselves.
    spacing = np.array([0.2, 0.3])
    origin = np.array([-12.0, 40.0])
    height, width = 300, 260
    truth_index = np.array([[40.3, 50.7], [200.2, 70.4], [120.6, 230.1]])
    yy, xx = np.mgrid[:height, :width]
    array = np.zeros((height, width), np.float32)
    for x, y in truth_index:
        array += np.exp(-(((xx - x) * spacing[0]) ** 2 + ((yy - y) * spacing[1]) ** 2) / (2 * 0.8 ** 2))
    image = Image(array, spacing=spacing, origin=origin)
    truth_mm = image.index_to_physical(truth_index)
    names = ["a", "b", "c"]
    coarse = _OffsetGlobal(_metadata(names, (64, 64), 1.5, "global"), truth_mm,
                           np.array([[1.5, -2.0], [-2.5, 1.0], [0.7, 2.2]]))
    coarse.image = image
    local = KerasPredictor(_tiling_network(3, 2),
                           _metadata(names, (180, 180), 0.5, "local", crop_shape=(24, 24)))
    [prediction] = predict(coarse, [image], refine=local)
    np.testing.assert_allclose(prediction.points_mm, truth_mm, atol=0.05)
    np.testing.assert_allclose(prediction.points_index, truth_index, atol=0.2)
    [twice] = predict(CascadePredictor(coarse, local, iterations=2), [image])
    np.testing.assert_allclose(twice.points_mm, truth_mm, atol=0.05)
    # Without refinement the global stage's offset remains.
    [unrefined] = predict(coarse, [image])
    assert np.linalg.norm(unrefined.points_mm - truth_mm, axis=-1).min() > 1.0


def test_offset_prior_prefers_the_peak_near_the_coarse_estimate():
    # Landmark a at x = 20 mm, a brighter look-alike 7 mm to its right; the global stage is
    # 1 mm off. Without a prior the local stage jumps to the look-alike.
    spacing = 0.5
    yy, xx = np.mgrid[:80, :80] * spacing
    truth_mm, decoy_mm = np.array([[20.0, 20.0]]), np.array([27.0, 20.0])
    array = (0.6 * np.exp(-((xx - 20.0) ** 2 + (yy - 20.0) ** 2) / 2.0)
             + np.exp(-((xx - decoy_mm[0]) ** 2 + (yy - decoy_mm[1]) ** 2) / 2.0))
    image = Image(array.astype(np.float32), spacing=(spacing, spacing))
    coarse = _OffsetGlobal(_metadata(["a"], (20, 20), 2.0, "global"), truth_mm,
                           np.array([[0.5, 0.0]]))  # 0.5 of its 2 mm pixels
    coarse.image = image
    found = {}
    for prior_mm in (None, 2.0):
        metadata = _metadata(["a"], (80, 80), spacing, "local", crop_shape=(40, 40))
        metadata["offset_prior_mm"] = prior_mm
        [prediction] = predict(coarse, [image], refine=KerasPredictor(_tiling_network(1, 2), metadata))
        found[prior_mm] = prediction.points_mm[0]
    np.testing.assert_allclose(found[None], decoy_mm, atol=0.05)
    np.testing.assert_allclose(found[2.0], truth_mm[0], atol=0.05)


def test_cascade_checks_its_stages():
    names = ["a", "b"]
    local = KerasPredictor(_tiling_network(2, 2), _metadata(names, (32, 32), 0.5, "local", (8, 8)))
    coarse = _OffsetGlobal(_metadata(names, (16, 16), 2.0, "global"), None, None)
    with pytest.raises(KeraslmError, match="must be a local stage"):
        CascadePredictor(coarse, coarse)
    with pytest.raises(KeraslmError, match="first model of a cascade"):
        CascadePredictor(local, local)
    other = KerasPredictor(_tiling_network(3, 2),
                           _metadata(["a", "b", "c"], (32, 32), 0.5, "local", (8, 8)))
    with pytest.raises(KeraslmError, match="disagree in their landmarks"):
        CascadePredictor(coarse, other)
    with pytest.raises(KeraslmError, match="local stage of a coarse-to-fine model"):
        predict(local, [Image(np.zeros((8, 8)), spacing=(1.0, 1.0))])


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
    root, dataset, _, local = cascade_runs
    metadata = json.load(open(os.path.join(local.output_dir, "model.json")))
    assert metadata["stage"] == "local" and metadata["crop_shape"] == [16, 16]
    assert metadata["grid_spacing"] == [2.0, 2.0]
    # Trained on crop-centre offsets uniform within +-4 mm per axis: their SD is 4 / sqrt(3).
    assert metadata["offset_prior_mm"] == pytest.approx(4.0 / np.sqrt(3.0))
    # The fine grid covers every image whole (64 px of the phantom's spacing at 2 mm).
    extent = max(dataset.read_image_header(r).size[0] * dataset.read_image_header(r).spacing[0]
                 for r in dataset.records)
    assert metadata["grid_shape"][1] == int(np.ceil(extent / 2.0 - 1e-6))
    assert np.all(np.isfinite(local.errors_mm)) and local.errors_mm.shape == (2, 37)
    history = json.load(open(os.path.join(local.output_dir, "history.json")))
    assert "val_point_error_mm" in history


@pytest.mark.slow
def test_cascade_prediction_keras_and_saved_model_agree(cascade_runs, cascade_export):
    root, dataset, coarse, local = cascade_runs
    paths = [r.image_path for r in dataset.records[:2]]
    refined = predict(coarse.model_path, paths, spacing=dataset.image_spacing,
                      refine=local.model_path)
    unrefined = predict(coarse.model_path, paths, spacing=dataset.image_spacing)
    assert refined[0].points_mm.shape == (37, 2)
    assert not np.allclose(refined[0].points_mm, unrefined[0].points_mm)
    version = cascade_export
    predictor = load_predictor(str(version))
    # One request: the export's predict_array signature runs both stages.
    assert "refine" in predictor.metadata and isinstance(predictor, Predictor)
    assert not isinstance(predictor, CascadePredictor)
    served = predict(str(version), paths, spacing=dataset.image_spacing)
    for a, b in zip(refined, served):
        np.testing.assert_allclose(a.points_mm, b.points_mm, atol=1e-3)
        np.testing.assert_allclose(a.confidence, b.confidence, rtol=1e-3, atol=1e-3)
    # Plain TensorFlow runs the refine signature without keraslm.
    code = (
        "import sys; sys.modules['keraslm'] = None\n"
        "import numpy as np, tensorflow as tf\n"
        f"m = tf.saved_model.load({str(version)!r})\n"
        "f = m.signatures['refine']\n"
        "shape = f.structured_input_signature[1]['images'].shape\n"
        "out = f(images=tf.zeros([2] + shape[1:].as_list()), centres=tf.fill([2, 37, 2], 5.0))\n"
        "print(out['landmarks'].shape, out['confidence'].shape)\n"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True).stdout
    assert "(2, 37, 2) (2, 37)" in output


def test_cascade_cli_and_mismatched_refine(cascade_runs, tmp_path, capsys):
    from keraslm.commands.predict import main

    root, dataset, coarse, local = cascade_runs
    path = dataset.records[0].image_path
    assert main([coarse.model_path, "--refine", local.model_path, path, "--spacing",
                 str(dataset.image_spacing[0]), "--output-dir", str(tmp_path / "p")]) == 0
    assert (tmp_path / "p" / "predictions.csv").exists()
    assert main([local.model_path, path, "--output-dir", str(tmp_path / "q")]) == 2
    assert "local stage" in capsys.readouterr().err
    assert main([local.model_path, "--refine", coarse.model_path, path, "--spacing",
                 str(dataset.image_spacing[0]), "--output-dir", str(tmp_path / "q")]) == 2
    assert f"{local.model_path} refined by {coarse.model_path}: " in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([coarse.model_path, "--refine", local.model_path, "--refine-iterations", "0", path])
    assert "expected a whole number >= 1, got '0'" in capsys.readouterr().err
    assert main([coarse.model_path, "--refine", local.model_path, "--refine-iterations", "2",
                 path, "--spacing", str(dataset.image_spacing[0]), "--output-dir",
                 str(tmp_path / "r")]) == 0
    assert main([coarse.model_path, "--refine-iterations", "2", path]) == 2
    assert "--refine-iterations needs --refine" in capsys.readouterr().err


@pytest.mark.parametrize("request_format", ["inputs", "instances"])
def test_serving_client_refines_like_predict(cascade_runs, cascade_export, request_format):
    import tensorflow as tf

    from keraslm.serving import ServingClient

    root, dataset, coarse, local = cascade_runs
    version = cascade_export
    loaded = tf.saved_model.load(version)
    calls = []

    def transport(path, body):  # answers as TF Serving's REST API does, through JSON
        body = json.loads(json.dumps(body))
        calls.append(body["signature_name"])
        signature = loaded.signatures[body["signature_name"]]
        if "instances" in body:
            rows = body["instances"]
            inputs = ({"images": rows} if not isinstance(rows[0], dict) else
                      {key: [row[key] for row in rows] for key in rows[0]})
        else:
            inputs = body["inputs"]
        outputs = signature(**{k: tf.constant(np.asarray(v, np.float32)) for k, v in inputs.items()})
        outputs = {k: v.numpy().tolist() for k, v in outputs.items()}
        if "instances" in body:
            count = len(next(iter(outputs.values())))
            return {"predictions": [{k: v[i] for k, v in outputs.items()} for i in range(count)]}
        return {"outputs": outputs}

    paths = [r.image_path for r in dataset.records[:3]]
    # The grid-level protocol (exports of earlier keraslm versions, or asked for by name).
    client = ServingClient("cascade", version, signature_name="landmarks",
                           request_format=request_format, transport=transport)
    served = client.predict(paths, spacing=dataset.image_spacing, batch_size=2)
    assert calls == ["landmarks", "refine", "landmarks", "refine"]
    expected = predict(coarse.model_path, paths, spacing=dataset.image_spacing,
                       refine=local.model_path)
    for a, b in zip(expected, served):
        np.testing.assert_allclose(a.points_mm, b.points_mm, atol=1e-3)


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
    with pytest.raises(KeraslmError, match="one local-stage run per run"):
        evaluate_runs([coarse.output_dir], refine_runs=[local.output_dir, local.output_dir])


def test_calibrated_cascade_carries_expected_errors_from_evaluation_to_serving(cascade_runs, tmp_path,
                                                                              capsys):
    """evaluate.py --calibrate -> export --calibration -> every prediction path returns the same
    expected_error_mm, which is the calibration applied to the prediction's confidence/spread."""
    import tensorflow as tf

    from evaluate import main as evaluate_main
    from keraslm.calibration import check_calibration, expected_error_mm
    from keraslm.evaluation import evaluate_model, write_report
    from keraslm.commands.export import main as export_main
    from keraslm.commands.predict import main as predict_main

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
    # --no-blend keeps the refined points: a calibration without weights.
    assert evaluate_main(["--runs", coarse.output_dir, "--refine", local.output_dir, "--no-plots",
                          "--output-dir", str(tmp_path / "eval_n"), "--no-blend", "--calibrate",
                          str(tmp_path / "plain.json")]) == 0
    assert "local_weight" not in json.loads((tmp_path / "plain.json").read_text())
    assert "stages blended" not in capsys.readouterr().out
    # A blending calibration applied without the local stage is refused, naming the file.
    assert evaluate_main(["--runs", coarse.output_dir, "--output-dir", str(tmp_path / "eval_x"),
                          "--no-plots", "--calibration", str(calibration_path)]) == 2
    assert "calibration.json: this calibration blends" in capsys.readouterr().err
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
    meta = json.loads((base / "1" / "assets" / "keraslm.json").read_text())
    keras_side = predict(load_predictor(coarse.model_path, metadata={**meta, "calibration": calibration},
                                        refine=local.model_path), paths, spacing=dataset.image_spacing)
    for a, b in zip(served, keras_side):
        assert a.expected_error_mm is not None and a.expected_error_mm.shape == (37,)
        np.testing.assert_allclose(
            a.expected_error_mm, np.asarray(expected_error_mm(calibration, a.confidence, a.spread_mm)),
            rtol=1e-4)
        np.testing.assert_allclose(a.expected_error_mm, b.expected_error_mm, rtol=1e-3, atol=1e-3)
        np.testing.assert_allclose(a.spread_mm, b.spread_mm, rtol=1e-3, atol=1e-3)
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
    out = capsys.readouterr().out
    assert "expected error" in out and "CHECK: expected error above 2.5 mm" in out
    header = (tmp_path / "p" / "expected_error.csv").read_text().splitlines()[0]
    assert header == ",".join(["id", *dataset.landmark_names])
    payload = json.loads((tmp_path / "p" / "predictions.json").read_text())
    assert "expected_error_mm" in next(iter(payload["predictions"][0]["landmarks"].values()))
    assert predict_main([coarse.model_path, paths[0], "--spacing", str(dataset.image_spacing[0]),
                         "--output-dir", str(tmp_path / "q")]) == 0
    assert not (tmp_path / "q" / "expected_error.csv").exists()
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
    assert export_main([coarse.output_dir, str(base), "--calibration", str(tmp_path / "other.json")]) == 2
    assert "other.json" in capsys.readouterr().err
    # Stages in the wrong place are named, in the command line's words.
    assert export_main([local.output_dir, str(base)]) == 2
    assert f"{local.output_dir}: a local stage" in capsys.readouterr().err
    assert export_main([coarse.output_dir, str(base), "--refine", coarse.output_dir]) == 2
    assert f"{coarse.output_dir}: a whole-image model, not a local stage" in capsys.readouterr().err
    assert export_main([coarse.output_dir, str(base), "--version", "1"]) == 2
    assert "choose another version (--version" in capsys.readouterr().err


def test_blending_calibration_mixes_the_stages_in_every_path(cascade_runs, tmp_path, capsys):
    """A calibration's `local_weight` makes the cascade answer `w * refined + (1 - w) * global`
    per landmark: the Keras graph, stage by stage and the export alike; a single-stage export
    refuses it."""
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
    with open(os.path.join(coarse.output_dir, "model.json"), encoding="utf-8") as handle:
        metadata = {**json.load(handle), "calibration": calibration}
    keras_side = predict(load_predictor(coarse.model_path, metadata=metadata, refine=local.model_path),
                         paths, spacing=spacing)
    # Stage by stage (a local stage that is not a Keras graph, as an export without image
    # signatures gives): CascadePredictor.locate blends after refining.
    from keraslm.detector import Predictor
    from keraslm.inference import CascadePredictor

    class StageByStage(Predictor):
        def __init__(self, inner):
            self.inner, self.metadata = inner, inner.metadata

        def refine(self, images, centres):
            return self.inner.refine(images, centres)

    stagewise = CascadePredictor(load_predictor(coarse.model_path, metadata=metadata),
                                 StageByStage(load_predictor(local.model_path)))
    stagewise_refined = CascadePredictor(load_predictor(coarse.model_path),
                                         StageByStage(load_predictor(local.model_path)))
    for g, r, k in zip(global_only, predict(stagewise_refined, paths, spacing=spacing),
                       predict(stagewise, paths, spacing=spacing)):
        np.testing.assert_allclose(k.points_mm, g.points_mm + weight[:, None] * (r.points_mm - g.points_mm),
                                   atol=1e-3)
    (tmp_path / "blend.json").write_text(json.dumps(calibration))
    assert export_main([coarse.output_dir, str(tmp_path / "served"), "--refine", local.output_dir,
                        "--calibration", str(tmp_path / "blend.json")]) == 0
    served = predict(str(tmp_path / "served" / "1"), paths, spacing=spacing)
    for g, r, k, s in zip(global_only, refined, keras_side, served):
        expected = g.points_mm + weight[:, None] * (r.points_mm - g.points_mm)
        np.testing.assert_allclose(k.points_mm, expected, atol=1e-3)
        np.testing.assert_allclose(s.points_mm, expected, atol=1e-3)
        assert np.abs(s.points_mm - r.points_mm).max() > 0.01  # the blend moved points
    # The grid-level serving protocol (landmarks, then refine; the client blends) answers alike.
    import tensorflow as tf

    from keraslm.serving import ServingClient

    loaded = tf.saved_model.load(str(tmp_path / "served" / "1"))

    def transport(path, body):
        outputs = loaded.signatures[body["signature_name"]](**{
            k: tf.constant(np.asarray(v, np.float32)) for k, v in body["inputs"].items()})
        return {"outputs": {k: v.numpy().tolist() for k, v in outputs.items()}}

    client = ServingClient("blend", str(tmp_path / "served" / "1"), signature_name="landmarks",
                           request_format="inputs", transport=transport)
    for g, r, c in zip(global_only, refined, client.predict(paths, spacing=spacing)):
        np.testing.assert_allclose(c.points_mm, g.points_mm + weight[:, None] * (r.points_mm - g.points_mm),
                                   atol=1e-3)
    capsys.readouterr()
    assert export_main([coarse.output_dir, str(tmp_path / "single"), "--calibration",
                        str(tmp_path / "blend.json")]) != 0
    assert "this model has no local stage" in capsys.readouterr().err


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
