"""Tests of keraslm.export: the SavedModel's signatures vs the Keras networks, its spec asset,
plain-TF loading, saved_model_cli, versions, bad input, reading it back (`SavedModelPredictor`,
keraslm 0.1 exports refused); and `HeatmapCodec.decode` on run-time shapes (as the graph uses it)."""
import io
import json
import os
import shutil
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from helpers import subprocess_env
from keraslm import KeraslmError
from keraslm.calibration import expected_error_mm
from keraslm.export import export_saved_model
from keraslm.io import Image, read_image
from keraslm.models import build_model
from keraslm.ops.heatmaps import HeatmapCodec
from keraslm.prediction import (
    LandmarkDetector,
    SavedModelPredictor,
    load_predictor,
    predict,
    saved_model_versions,
)
from keraslm.prediction.predictors import read_saved_model_spec
from keraslm.preprocessing import GridSpec, prepare_on_grid
from keraslm.spec import SPEC_FORMAT, DetectorSpec, StageSpec, stage_spec, upgrade_spec

CLI = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
NAMES = ("nasion", "sella", "menton")
# name: (architecture, ndim, decode method, grid shape, image shapes [y, x] / [z, y, x])
MODELS = {
    "down2d": ("downsampling", 2, "quadratic", (32, 32), [(36, 20), (30, 37)]),  # stride 4
    "scn2d": ("scn", 2, "dark", (32, 32), [(24, 40), (29, 35)]),  # stride 1, divisor 8
    "down3d": ("downsampling", 3, "quadratic", (8, 8, 8), [(10, 6, 14), (9, 7, 11)]),  # stride 2
}
# down3d is exported with a calibration: its answers carry expected_error_mm.
CALIBRATION = {"format": "keraslm-calibration-1", "knots": [-12.0, -6.0, 0.0, 6.0],
               "values": [8.0, 4.0, 2.0, 1.0], "landmark_scale": [1.0, 1.5, 0.5],
               "landmark_names": list(NAMES)}


def _detector(name, **build):
    architecture, ndim, method, grid_shape, _ = MODELS[name]
    network = build_model(architecture, ndim, len(NAMES), preset="small", filters=4, **build)
    spec = DetectorSpec(NAMES, ndim, (stage_spec(network, GridSpec(grid_shape, 1.5),
                                                 "subtract_mean", 1.5, method),),
                        calibration=CALIBRATION if name == "down3d" else None)
    return LandmarkDetector(spec, [network])


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """name -> (LandmarkDetector, version folder)."""
    keras.utils.set_random_seed(3)
    base = tmp_path_factory.mktemp("saved_models")
    result = {}
    for name in MODELS:
        detector = _detector(name)
        result[name] = (detector, export_saved_model(detector, base / name))
    return result


def _image(shape, seed):
    """A random image with spacing, origin and a rotated direction (nothing is axis-aligned)."""
    ndim = len(shape)
    angle = np.deg2rad(30.0)
    rotation = np.eye(ndim)
    rotation[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    array = np.random.default_rng(seed).normal(50.0, 20.0, size=shape).astype(np.float32)
    return Image(array, spacing=(0.8, 1.1, 0.9)[:ndim], origin=(-12.5, 7.0, 3.25)[:ndim],
                 direction=rotation)


def _keras_reference(detector, image):
    """(index, mm, confidence, spread_mm, second_peak) of one image through the Keras network
    without the prediction graph: the image on the grid (`prepare_on_grid`), the network, the
    codec, and back through the placement and the image geometry."""
    stage = detector.spec.global_stages[0]
    grid_image, grid_to_image = prepare_on_grid(
        image.array, tf.constant(image.spacing, tf.float64), stage.grid, stage.normalization)
    heatmaps = detector.networks[0](grid_image[tf.newaxis, ..., tf.newaxis], training=False)
    points, confidence = stage.codec.decode(heatmaps, method=stage.decode_method)
    spread = stage.codec.spread(heatmaps, stage.grid_spacing)
    second_peak = stage.codec.second_peak(heatmaps, stage.grid_spacing, stage.second_peak_radius_mm)
    matrix = np.asarray(grid_to_image)
    index = np.asarray(points[0], np.float64) @ matrix[:-1, :-1].T + matrix[:-1, -1]
    index_to_mm = np.asarray(image.direction) * np.asarray(image.spacing)[np.newaxis, :]
    mm = index @ index_to_mm.T + np.asarray(image.origin)
    return (index, mm, np.asarray(confidence[0]), np.asarray(spread[0]),
            np.asarray(second_peak[0]))


def _array_inputs(image):
    return {"image": tf.constant(np.asarray(image.array, np.float32)),
            "spacing": tf.constant(image.spacing, tf.float32),
            "origin": tf.constant(image.origin, tf.float32),
            "direction": tf.constant(image.direction, tf.float32)}


def _png_bytes(pixels):
    from PIL import Image as PILImage

    buffer = io.BytesIO()
    PILImage.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


# -- decode on run-time shapes ----------------------------------------------------------------

@pytest.mark.parametrize("ndim", [2, 3])
def test_decode_on_run_time_shapes_equals_decode_on_static_shapes(ndim):
    shape = (13, 17) if ndim == 2 else (7, 9, 6)
    rng = np.random.default_rng(ndim)
    heatmaps = rng.random((2, *shape, 4)).astype(np.float32)
    heatmaps[0, (3,) * ndim] = 2.0  # An interior peak for "dark"'s Newton step.
    for stride in (1, 3):
        codec = HeatmapCodec(tuple(n * stride for n in shape), stride=stride, sigma=1.0)
        for method in ("quadratic", "dark", "argmax"):
            traced = tf.function(lambda h, m=method: codec.decode(h, m),
                                 input_signature=[tf.TensorSpec((None,) * (ndim + 1) + (4,))])
            points, confidence = traced(heatmaps)
            expected = codec.decode(heatmaps, method)
            np.testing.assert_array_equal(points.numpy(), expected[0].numpy())
            np.testing.assert_array_equal(confidence.numpy(), expected[1].numpy())
            # The grid is the tensor's: a codec of another input_shape decodes the same.
            other = HeatmapCodec((stride,) * ndim, stride=stride, sigma=1.0).decode(heatmaps, method)
            np.testing.assert_array_equal(other[0].numpy(), expected[0].numpy())


def test_decode_bad_input():
    codec = HeatmapCodec((8, 8), stride=2)
    with pytest.raises(ValueError, match=r"Received: heatmaps.shape=\(2, 4, 4\)"):
        codec.decode(np.zeros((2, 4, 4), np.float32))
    with pytest.raises(ValueError, match="Received: method='mean'"):
        codec.decode(np.zeros((2, 4, 4, 1), np.float32), method="mean")


# -- signatures vs Keras --------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(MODELS))
def test_signatures_equal_the_keras_network_for_images_of_any_size(exports, name):
    detector, path = exports[name]
    loaded = tf.saved_model.load(path)
    ndim = MODELS[name][1]
    assert set(loaded.signatures) == (
        {"serving_default", "predict_array"} | ({"predict_image"} if ndim == 2 else set()))
    outputs_expected = {"landmarks_index", "landmarks_mm", "confidence", "spread_mm", "second_peak"}
    if name == "down3d":
        outputs_expected.add("expected_error_mm")
    for seed, shape in enumerate(MODELS[name][4]):
        image = _image(shape, seed)
        index, mm, confidence, spread, second_peak = _keras_reference(detector, image)
        outputs = loaded.signatures["predict_array"](**_array_inputs(image))
        assert set(outputs) == outputs_expected
        assert outputs["landmarks_mm"].dtype == tf.float32
        assert outputs["landmarks_mm"].shape == outputs["landmarks_index"].shape == (len(NAMES), ndim)
        np.testing.assert_allclose(outputs["landmarks_index"].numpy(), index, atol=1e-3)
        np.testing.assert_allclose(outputs["landmarks_mm"].numpy(), mm, atol=1e-3)
        np.testing.assert_allclose(outputs["confidence"].numpy(), confidence, atol=1e-5)
        np.testing.assert_allclose(outputs["spread_mm"].numpy(), spread, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(outputs["second_peak"].numpy(), second_peak, atol=1e-5)
        if name == "down3d":
            np.testing.assert_allclose(outputs["expected_error_mm"].numpy(),
                                       expected_error_mm(CALIBRATION, confidence, spread), rtol=1e-4)
    shapes = MODELS[name][4]
    pixels = [np.random.default_rng(7 + n).integers(0, 255, shapes[n], dtype=np.uint8) for n in (0, 1)]
    array_answers = [loaded.signatures["predict_array"](**_array_inputs(Image(p, (0.8,) * ndim)))
                     for p in pixels]
    array_answer = array_answers[0]
    if ndim == 2:
        # predict_image: each PNG file's bytes (of different sizes in one batch) answer as its
        # pixels through predict_array.
        data = [_png_bytes(p) for p in pixels]
        image_answer = loaded.signatures["predict_image"](
            image_bytes=tf.constant(data), spacing=tf.constant([[0.8, 0.8]] * 2))
        for n, answer in enumerate(array_answers):
            for key, value in answer.items():
                assert image_answer[key].shape == (2, *value.shape)
                np.testing.assert_allclose(image_answer[key][n].numpy(), value.numpy(), atol=1e-5)
        data = data[:1]
        default = loaded.signatures["serving_default"](
            image_bytes=tf.constant(data), spacing=tf.constant([[0.8, 0.8]]))
        np.testing.assert_array_equal(default["landmarks_mm"].numpy(),
                                      image_answer["landmarks_mm"][:1].numpy())
    else:
        default = loaded.signatures["serving_default"](**_array_inputs(Image(pixels[0], (0.8,) * 3)))
        np.testing.assert_array_equal(default["landmarks_mm"].numpy(),
                                      array_answer["landmarks_mm"].numpy())


def test_spec_asset_and_landmark_names(exports):
    for name, serving_default in (("down2d", "predict_image"), ("down3d", "predict_array")):
        detector, path = exports[name]
        with open(os.path.join(path, "assets", "keraslm.json"), encoding="utf-8") as handle:
            stored = json.load(handle)
        assert stored["format"] == SPEC_FORMAT
        assert {key: stored[key] for key in detector.spec.to_json()} == detector.spec.to_json()
        # A 2D description without a storage orientation is read as canonical (as trained on
        # images stored +x +y, `keraslm.spec._in_canonical_frame`); 3D as it is.
        assert upgrade_spec(stored, "asset") == upgrade_spec(detector.spec.to_json(), "spec") == (
            read_saved_model_spec(path))
        described = stored["saved_model"]
        assert described["serving_default"] == serving_default
        assert set(described["inputs"]) == {"predict_array", serving_default}
        assert described["outputs"] == ["landmarks_index", "landmarks_mm", "confidence", "spread_mm",
                                         "second_peak"] + (
            ["expected_error_mm"] if name == "down3d" else [])
        loaded = tf.saved_model.load(path)
        assert [n.decode() for n in loaded.landmark_names.numpy()] == list(NAMES)
        assert json.loads(loaded.metadata_json.numpy()) == stored
        assert loaded.metadata_file.asset_path.numpy().decode().endswith("assets/keraslm.json")
    assert stored["calibration"] == CALIBRATION
    assert stored["global_stages"][0]["grid_shape"] == [8, 8, 8]


def test_saved_model_rejects_wrong_rank_dtype_shape_and_non_finite_input(exports):
    _, path = exports["down2d"]
    predict_array = tf.saved_model.load(path).signatures["predict_array"]
    good = {"image": np.ones((20, 30), np.float32), "spacing": np.ones(2, np.float32),
            "origin": np.zeros(2, np.float32), "direction": np.eye(2, dtype=np.float32)}
    cases = [
        ({"image": np.zeros((1, 20, 30), np.float32)}, r"tensor image \[1,20,30\] is not compatible"),
        ({"image": np.zeros((20,), np.float32)}, r"tensor image \[20\] is not compatible"),
        ({"image": np.zeros((20, 30), np.float64)}, "expected to be a float tensor but is a double"),
        ({"image": np.zeros((20, 30), np.int32)}, "expected to be a float tensor but is a int32"),
        ({"spacing": np.ones(3, np.float32)}, r"tensor spacing \[3\] is not compatible"),
        ({"direction": np.eye(3, dtype=np.float32)}, r"tensor direction \[3,3\] is not compatible"),
        ({"image": np.full((20, 30), np.nan, np.float32)}, "`image` holds NaN or Inf pixels"),
        ({"origin": np.array([np.inf, 0.0], np.float32)}, "`origin` holds NaN or Inf"),
        ({"direction": np.array([[np.nan, 0], [0, 1]], np.float32)}, "`direction` holds NaN or Inf"),
        ({"spacing": np.array([0.0, 1.0], np.float32)}, "`spacing` must be positive"),
    ]
    for change, message in cases:
        inputs = {key: tf.constant(value) for key, value in {**good, **change}.items()}
        with pytest.raises(tf.errors.InvalidArgumentError, match=message):
            predict_array(**inputs)
    assert set(predict_array(**{k: tf.constant(v) for k, v in good.items()})) >= {"landmarks_mm"}


# -- plain TensorFlow and saved_model_cli ----------------------------------------------------

PLAIN_TF = textwrap.dedent("""
    import sys
    sys.modules["keraslm"] = None  # Any keraslm import fails.
    import json, numpy as np, tensorflow as tf
    for path, signature, inputs, output in json.loads(sys.argv[1]):
        loaded = tf.saved_model.load(path)
        with np.load(inputs, allow_pickle=False) as data:
            if signature == "predict_image":
                arguments = {"image_bytes": tf.constant([open(f, "rb").read() for f in data["files"]]),
                             "spacing": tf.constant(data["spacing"], tf.float32)}
            else:
                arguments = {key: tf.constant(data[key], tf.float32) for key in data.files}
        answer = loaded.signatures[signature](**arguments)
        np.savez(output, names=np.array([n.decode() for n in loaded.landmark_names.numpy()]),
                 spec=np.array(loaded.metadata_json.numpy().decode()),
                 **{key: value.numpy() for key, value in answer.items()})
    try:
        import keraslm
    except ImportError:
        print("keraslm not importable")
""")


def _run_plain_tf(jobs):
    result = subprocess.run(
        [sys.executable, "-c", PLAIN_TF, json.dumps(jobs)], capture_output=True, text=True,
        env=subprocess_env(), timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "keraslm not importable" in result.stdout


@pytest.fixture(scope="module")
def trained_run(trained_2d):
    """A brief training on the 2D phantom that exported at the end: (TrainingResult, dataset)
    (conftest.py's `trained_2d`)."""
    return trained_2d


@pytest.mark.slow
def test_export_runs_in_plain_tensorflow_without_keraslm(exports, trained_run, tmp_path):
    """Also the trained phantom model: trained, exported by `train`, run without keraslm on
    PNG files and a DICOM array, the same landmarks as keraslm.predict of model.keras."""
    result, dataset = trained_run
    assert result.export_path == os.path.join(os.path.dirname(result.output_dir), "saved_models",
                                              "run", "1")
    records = dataset.records[:4]
    pngs = [r.image_path for r in records if r.image_path.endswith(".png")][:2]
    dicom = [r.image_path for r in records if r.image_path.endswith(".dcm")][0]
    spacing = np.broadcast_to(dataset.image_spacing, (2,)).astype(np.float32)
    np.savez(tmp_path / "files.npz", files=np.array(pngs), spacing=np.stack([spacing] * len(pngs)))
    dicom_image = read_image(dicom)
    np.savez(tmp_path / "dicom.npz", **{k: v.numpy() for k, v in _array_inputs(dicom_image).items()})
    jobs = [(result.export_path, "predict_image", str(tmp_path / "files.npz"), str(tmp_path / "png_out.npz")),
            (result.export_path, "predict_array", str(tmp_path / "dicom.npz"), str(tmp_path / "dicom_out.npz"))]
    expected = []
    for name in ("down2d", "down3d"):
        detector, path = exports[name]
        image = _image(MODELS[name][4][1], 10)
        inputs, output = tmp_path / f"{name}.npz", tmp_path / f"{name}_out.npz"
        np.savez(inputs, **{k: v.numpy() for k, v in _array_inputs(image).items()})
        jobs.append((path, "predict_array", str(inputs), str(output)))
        expected.append((output, _keras_reference(detector, image)))
    _run_plain_tf(jobs)
    trained = predict(result.model_path, pngs + [dicom_image], spacing=tuple(spacing.tolist()))
    with np.load(tmp_path / "png_out.npz") as answer:
        assert list(answer["names"]) == list(dataset.landmark_names)
        assert json.loads(str(answer["spec"]))["landmark_names"] == list(dataset.landmark_names)
        for n, reference in enumerate(trained[:2]):
            np.testing.assert_allclose(answer["landmarks_mm"][n], reference.points_mm, atol=0.01)
            np.testing.assert_allclose(answer["confidence"][n], reference.confidence, atol=1e-3)
    with np.load(tmp_path / "dicom_out.npz") as answer:
        np.testing.assert_allclose(answer["landmarks_mm"], trained[2].points_mm, atol=0.01)
    for output, (index, mm, confidence, _, _) in expected:
        with np.load(output) as answer:
            assert list(answer["names"]) == list(NAMES)
            np.testing.assert_allclose(answer["landmarks_index"], index, atol=1e-3)
            np.testing.assert_allclose(answer["landmarks_mm"], mm, atol=1e-3)
            np.testing.assert_allclose(answer["confidence"], confidence, atol=1e-5)


@pytest.mark.slow
def test_saved_model_cli_shows_and_runs_the_signatures(exports, tmp_path):
    _, path = exports["down2d"]
    show = subprocess.run([CLI, "show", "--all", "--dir", path], capture_output=True, text=True,
                          env=subprocess_env(), timeout=120)
    assert show.returncode == 0, show.stderr[-3000:]
    for text in ("signature_def['serving_default']", "signature_def['predict_image']",
                 "signature_def['predict_array']", "inputs['image_bytes']", "inputs['image']",
                 "inputs['spacing']", "inputs['origin']", "inputs['direction']",
                 "outputs['landmarks_index']", "outputs['landmarks_mm']", "outputs['confidence']",
                 "outputs['spread_mm']", "shape: (-1, -1)", "shape: (-1, 2)"):
        assert text in show.stdout, text
    for text in ("signature_def['landmarks']", "signature_def['grid_heatmaps']"):
        assert text not in show.stdout, text
    # This TF's CLI evaluates --input_exprs as Python literals only (no np.zeros(...)), so
    # the inputs go in as .npy files through --inputs.
    image = _image((30, 37), 3)
    inputs = []
    for key, value in _array_inputs(image).items():
        np.save(tmp_path / f"{key}.npy", value.numpy())
        inputs.append(f"{key}={tmp_path / f'{key}.npy'}")
    run = subprocess.run(
        [CLI, "run", "--dir", path, "--tag_set", "serve", "--signature_def", "predict_array",
         "--inputs", ";".join(inputs)],
        capture_output=True, text=True, env=subprocess_env(), timeout=120,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    for key in ("landmarks_index", "landmarks_mm", "confidence", "spread_mm", "second_peak"):
        assert f"Result for output key {key}" in run.stdout, key


# -- versions and bad input -------------------------------------------------------------------

def test_versions_are_numbered_never_overwritten_and_written_atomically(exports, tmp_path):
    detector, _ = exports["down3d"]
    base = tmp_path / "hand"
    first = export_saved_model(detector, base)
    assert first == str(base / "1")
    assert export_saved_model(detector, base, version=7) == str(base / "7")
    assert export_saved_model(detector, str(base)) == str(base / "8")
    assert saved_model_versions(base) == [1, 7, 8]
    assert sorted(os.listdir(base)) == ["1", "7", "8"]  # No temporary folders left behind.
    with pytest.raises(KeraslmError, match=r"hand/7 exists; versions are never overwritten"):
        export_saved_model(detector, base, version=7)
    for version in (0, -1, "2", 1.0, True):
        with pytest.raises(KeraslmError, match=f"Received: version={version!r}"):
            export_saved_model(detector, base, version=version)
    assert sorted(os.listdir(base)) == ["1", "7", "8"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(KeraslmError, match="file is a file, not a folder"):
        export_saved_model(detector, tmp_path / "file")
    with pytest.raises(KeraslmError, match=r"file.x cannot be made: .*file is a file"):
        export_saved_model(detector, tmp_path / "file" / "x")


def test_export_refuses_a_base_folder_of_another_model(exports, tmp_path):
    """A base folder's newest version answering other landmarks or another dimension refuses
    the export (TF Serving would serve it to that model's clients); the same model goes on."""
    from keraslm.export import check_export_base

    detector3d, _ = exports["down3d"]
    detector2d, _ = exports["down2d"]
    base = tmp_path / "served"
    export_saved_model(detector3d, base)
    with pytest.raises(KeraslmError, match=r"served: its newest version 1 is another model "
                       r"\(3D images, not 2D.*export into another folder"):
        export_saved_model(detector2d, base)
    names = list(detector3d.spec.landmark_names)
    with pytest.raises(KeraslmError, match=r"--export-dir .*served: .*landmarks .*, not other"):
        check_export_base(str(base), ["other"] + names[1:], 3, "--export-dir")
    check_export_base(str(base), names, 3)
    check_export_base(str(tmp_path / "new"), ["x"], 2)  # Nothing there: nothing to check.
    assert export_saved_model(detector3d, base) == str(base / "2")
    assert saved_model_versions(base) == [1, 2]


def test_failed_first_export_leaves_no_folder(exports, tmp_path, monkeypatch):
    """A full disk in the middle of the first export: no version, and no empty base folder."""
    import tensorflow as tf

    detector, _ = exports["down2d"]

    def full_disk(module, path, signatures=None):
        with open(os.path.join(path, "saved_model.pb"), "wb") as handle:
            handle.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tf.saved_model, "save", full_disk)
    with pytest.raises(OSError, match="No space left"):
        export_saved_model(detector, tmp_path / "new_base")
    assert not (tmp_path / "new_base").exists()


def test_export_bad_detector(exports, tmp_path):
    detector, _ = exports["down2d"]
    fixed = _detector("down2d", input_shape=(32, 32, 1))
    with pytest.raises(KeraslmError, match=r"any spatial size \(None\) for a serving export. "
                       r"Received: input_shape=\(None, 32, 32, 1\)"):
        export_saved_model(fixed, tmp_path / "m")
    detector3d, _ = exports["down3d"]
    with pytest.raises(KeraslmError, match=r"must take one-channel 2D images"):
        export_saved_model(LandmarkDetector(detector.spec, detector3d.networks), tmp_path / "m")
    with pytest.raises(KeraslmError, match="`detector` must be a keraslm.prediction.LandmarkDetector. "
                       "Received: DownsamplingNet"):
        export_saved_model(detector.networks[0], tmp_path / "m")
    local = StageSpec("unet", (32, 32), (0.5, 0.5), "subtract_mean", 1, 8, 1.5, crop_shape=(16, 16))
    local_only = LandmarkDetector(DetectorSpec(NAMES, 2, (), (local,)), [], detector.networks)
    with pytest.raises(KeraslmError, match="a local stage is not exported alone: export it with "
                       r"its global model \(keraslm-export GLOBAL BASE_DIR --refine LOCAL\)"):
        export_saved_model(local_only, tmp_path / "m")
    assert not (tmp_path / "m").exists() or os.listdir(tmp_path / "m") == []


# -- reading an export back -----------------------------------------------------------------

def test_saved_model_predictor_equals_the_keras_network(exports):
    detector, path = exports["down3d"]  # Calibrated.
    predictor = SavedModelPredictor(path)
    assert predictor.path == path and predictor.spec == detector.spec
    image = _image((9, 7, 11), 5)
    found = predictor.locate(image)
    assert set(found) == {"landmarks_index", "landmarks_mm", "confidence", "spread_mm",
                          "second_peak", "expected_error_mm"}
    assert found["landmarks_mm"].dtype == found["landmarks_index"].dtype == np.float64
    index, mm, confidence, spread, second_peak = _keras_reference(detector, image)
    np.testing.assert_allclose(found["second_peak"], second_peak, atol=1e-5)
    np.testing.assert_allclose(found["landmarks_index"], index, atol=1e-3)
    np.testing.assert_allclose(found["landmarks_mm"], mm, atol=1e-3)
    np.testing.assert_allclose(found["confidence"], confidence, atol=1e-5)
    np.testing.assert_allclose(found["expected_error_mm"],
                               expected_error_mm(CALIBRATION, confidence, spread), rtol=1e-4)
    assert isinstance(load_predictor(path, precision="auto"), SavedModelPredictor)
    with pytest.raises(KeraslmError, match="cannot be combined with other stages"):
        load_predictor([path, path])
    with pytest.raises(KeraslmError, match=r"precision='float16' applies to \.keras models only"):
        load_predictor(path, precision="float16")
    with pytest.raises(KeraslmError, match=r"runs its local stage as it was exported \(one pass\)"):
        load_predictor(path, iterations=2)


def test_saved_model_folder_errors(exports, tmp_path):
    _, path = exports["scn2d"]
    base = os.path.dirname(path)
    with pytest.raises(KeraslmError, match=rf"{base} is a SavedModel base folder with versions 1, "
                       rf"not a version folder; pass {path}$"):
        SavedModelPredictor(base)
    with pytest.raises(KeraslmError, match="no such SavedModel folder"):
        SavedModelPredictor(tmp_path / "missing")
    with pytest.raises(KeraslmError, match="not a SavedModel folder"):
        SavedModelPredictor(tmp_path)
    (tmp_path / "saved_model.pb").write_bytes(b"")
    with pytest.raises(KeraslmError, match="no assets/keraslm.json: not a keraslm export"):
        SavedModelPredictor(tmp_path)
    # A spec asset that is not JSON, lacks what prediction needs, or has an unknown format.
    copy = tmp_path / "copy"
    shutil.copytree(path, copy)
    asset = copy / "assets" / "keraslm.json"
    stored = json.loads(asset.read_text())
    without_sigma = json.loads(asset.read_text())
    del without_sigma["global_stages"][0]["sigma"]
    for content, message in [
        ("{not json", r"keraslm\.json: unreadable"),
        (json.dumps(without_sigma), r"keraslm\.json: the model description is incomplete or "
                                    r"malformed \(KeyError: 'sigma'\)"),
        (json.dumps({**stored, "format": "keraslm-detector/9"}),
         r"keraslm\.json: unknown model description format 'keraslm-detector/9'"),
    ]:
        asset.write_text(content)
        with pytest.raises(KeraslmError, match=message):
            SavedModelPredictor(copy)


def test_export_of_keraslm_0_1_without_image_signatures_is_refused(tmp_path):
    """A keraslm 0.1 export before the image signatures (grid-level `landmarks` only, its spec
    in keraslm 0.1's metadata form): a clear error naming it and how to export it again."""

    class GridLevel(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 1], tf.float32, name="images")])
        def landmarks(self, images):
            batch = tf.shape(images)[0]
            return {"landmarks": tf.zeros([batch, len(NAMES), 2]),
                    "confidence": tf.zeros([batch, len(NAMES)])}

    module = GridLevel()
    path = tmp_path / "hand" / "1"
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.landmarks,
                                                        "landmarks": module.landmarks})
    (path / "assets").mkdir(exist_ok=True)
    (path / "assets" / "keraslm.json").write_text(json.dumps({
        "format": "keraslm-landmarks/1", "architecture": "downsampling",
        "landmark_names": list(NAMES), "ndim": 2, "grid_shape": [32, 32],
        "grid_spacing": [1.5, 1.5], "normalization": "subtract_mean", "output_stride": 4,
        "sigma": 1.5, "decode_method": "quadratic", "stage": "global"}))
    assert read_saved_model_spec(str(path)).global_stages[0].grid_shape == (32, 32)
    message = (r"hand/1: exported by an early keraslm 0\.1 \(grid-level signatures only, found "
               r"\['landmarks', 'serving_default'\]\), which keraslm 0\.2 no longer runs; export "
               r"its \.keras model again: keraslm-export RUN_OR_MODEL\.keras BASE_DIR$")
    with pytest.raises(KeraslmError, match=message):
        SavedModelPredictor(path)
    with pytest.raises(KeraslmError, match=message):
        predict(str(path), [Image(np.zeros((8, 8), np.float32), spacing=1.0)])
