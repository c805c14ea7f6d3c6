"""Tests of keraslm.export: SavedModel signatures vs the Keras model, plain-TF loading,
saved_model_cli, versions, bad input; and `HeatmapCodec.decode` on run-time shapes (as the export uses it)."""
import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from helpers import subprocess_env
from keraslm import KeraslmError
from keraslm.export import export_saved_model, load_saved_model_predictor, saved_model_versions
from keraslm.inference import KerasPredictor, load_predictor, model_metadata
from keraslm.models import build_model
from keraslm.ops.heatmaps import HeatmapCodec
from keraslm.preprocessing import GridSpec
from keraslm.serving import prepare_images

CLI = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
NAMES = ("nasion", "sella", "menton")
# name: (architecture, ndim, decode method, grid shape, sizes: divisible ones, then not divisible)
MODELS = {
    "down2d": ("downsampling", 2, "quadratic", (32, 32), [(36, 20), (30, 37)]),  # stride 4
    "scn2d": ("scn", 2, "dark", (32, 32), [(24, 40), (29, 35)]),  # stride 1, divisor 8
    "down3d": ("downsampling", 3, "quadratic", (8, 8, 8), [(10, 6, 14), (9, 7, 11)]),  # stride 2
}



@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """name -> (network, metadata, version folder)."""
    keras.utils.set_random_seed(3)
    base = tmp_path_factory.mktemp("saved_models")
    result = {}
    for name, (architecture, ndim, method, grid_shape, _) in MODELS.items():
        network = build_model(architecture, ndim, len(NAMES), preset="small", filters=4)
        metadata = model_metadata(network, GridSpec(grid_shape, 1.5), "subtract_mean", NAMES,
                                  1.5, method)
        result[name] = (network, metadata, export_saved_model(network, base / name, metadata))
    return result


def _images(shape, seed):
    return np.random.default_rng(seed).normal(size=(2, *shape, 1)).astype(np.float32)


def _keras_reference(network, metadata, images):
    """Pad at the end to the size divisor, run Keras, crop to n // stride, decode statically."""
    divisor, stride = network.size_divisor, network.output_stride
    spatial = images.shape[1:-1]
    padded = np.pad(images, [(0, 0)] + [(0, -n % divisor) for n in spatial] + [(0, 0)])
    heatmaps = np.asarray(network(padded, training=False))
    crop = tuple(n // stride for n in spatial)
    heatmaps = heatmaps[(slice(None),) + tuple(slice(0, c) for c in crop)]
    codec = HeatmapCodec(tuple(c * stride for c in crop), stride=stride, sigma=metadata["sigma"])
    points, confidence = codec.decode(heatmaps, metadata["decode_method"])
    return heatmaps, np.asarray(points), np.asarray(confidence)


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
def test_signatures_equal_the_keras_model_with_and_without_padding(exports, name):
    network, metadata, path = exports[name]
    loaded = tf.saved_model.load(path)
    ndim = MODELS[name][1]
    assert set(loaded.signatures) == {"serving_default", "grid_heatmaps", "landmarks",
                                      "predict_array"} | ({"predict_image"} if ndim == 2 else set())
    for seed, shape in enumerate(MODELS[name][4]):
        images = _images(shape, seed)
        heatmaps, points, confidence = _keras_reference(network, metadata, images)
        full = loaded.signatures["grid_heatmaps"](images=tf.constant(images))
        small = loaded.signatures["landmarks"](images=tf.constant(images))
        assert set(full) == {"heatmaps", "landmarks", "confidence"}
        assert set(small) == {"landmarks", "confidence"}
        assert full["heatmaps"].shape == heatmaps.shape
        np.testing.assert_allclose(full["heatmaps"].numpy(), heatmaps, atol=1e-5)
        for outputs in (full, small):
            assert outputs["landmarks"].dtype == tf.float32
            assert outputs["landmarks"].shape == (2, len(NAMES), len(shape))
            np.testing.assert_allclose(outputs["landmarks"].numpy(), points, atol=1e-5)
            np.testing.assert_allclose(outputs["confidence"].numpy(), confidence, atol=1e-5)


def test_metadata_asset_and_landmark_names(exports):
    _, metadata, path = exports["down2d"]
    with open(os.path.join(path, "assets", "keraslm.json"), encoding="utf-8") as handle:
        stored = json.load(handle)
    assert {key: stored[key] for key in metadata} == metadata
    assert set(stored["saved_model"]["signatures"]) == {
        "serving_default", "grid_heatmaps", "landmarks", "predict_array", "predict_image"}
    assert stored["saved_model"]["serving_default"] == "predict_image"
    loaded = tf.saved_model.load(path)
    assert [n.decode() for n in loaded.landmark_names.numpy()] == list(NAMES)
    assert json.loads(loaded.metadata_json.numpy())["grid_shape"] == [32, 32]
    assert loaded.metadata_file.asset_path.numpy().decode().endswith("assets/keraslm.json")


def test_saved_model_rejects_wrong_rank_channels_dtype_and_nan(exports):
    _, _, path = exports["down2d"]
    landmarks = tf.saved_model.load(path).signatures["landmarks"]
    bad = {
        "rank 3": np.zeros((1, 16, 16), np.float32),
        "rank 5": np.zeros((1, 4, 16, 16, 1), np.float32),
        "2 channels": np.zeros((1, 16, 16, 2), np.float32),
        "float64": np.zeros((1, 16, 16, 1), np.float64),
        "int32": np.zeros((1, 16, 16, 1), np.int32),
    }
    for case, images in bad.items():
        with pytest.raises((tf.errors.InvalidArgumentError, ValueError, TypeError)) as info:
            landmarks(images=tf.constant(images))
        expected = "float tensor" if case in ("float64", "int32") else "not compatible with expected shape"
        assert expected in str(info.value), case
    images = np.zeros((1, 16, 16, 1), np.float32)
    images[0, 3, 4, 0] = np.nan
    with pytest.raises(tf.errors.InvalidArgumentError, match="NaN or Inf"):
        landmarks(images=tf.constant(images))


# -- plain TensorFlow and saved_model_cli ----------------------------------------------------

PLAIN_TF = textwrap.dedent("""
    import sys
    sys.modules["keraslm"] = None  # Any keraslm import fails.
    import json, numpy as np, tensorflow as tf
    jobs = json.loads(sys.argv[1])
    for path, inputs, output in jobs:
        loaded = tf.saved_model.load(path)
        images = tf.constant(np.load(inputs))
        full = loaded.signatures["grid_heatmaps"](images=images)
        small = loaded.signatures["landmarks"](images=images)
        np.savez(output, names=np.array([n.decode() for n in loaded.landmark_names.numpy()]),
                 **{k: v.numpy() for k, v in full.items()},
                 **{"small_" + k: v.numpy() for k, v in small.items()})
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
    """Also the trained phantom model: trained, exported by `train`, reloaded without keraslm,
    the same landmarks as the trained Keras model."""
    result, dataset = trained_run
    assert result.export_path == os.path.join(os.path.dirname(result.output_dir), "saved_models",
                                              "run", "1")
    predictor = load_predictor(result.model_path)  # model.keras + model.json
    prepared = prepare_images([r.image_path for r in dataset.records[:4]], predictor.metadata,
                              spacing=dataset.image_spacing)
    trained_images = np.stack([item.grid_image for item in prepared])
    np.save(tmp_path / "trained.npy", trained_images)
    jobs = [(result.export_path, str(tmp_path / "trained.npy"), str(tmp_path / "trained.npz"))]
    expected = []
    for name in ("down2d", "down3d"):
        network, metadata, path = exports[name]
        for seed, shape in enumerate(MODELS[name][4]):
            images = _images(shape, 10 + seed)
            inputs, output = tmp_path / f"{name}{seed}.npy", tmp_path / f"{name}{seed}.npz"
            np.save(inputs, images)
            jobs.append((path, str(inputs), str(output)))
            expected.append((output, _keras_reference(network, metadata, images)))
    _run_plain_tf(jobs)
    points, confidence = predictor.grid_points(trained_images)
    with np.load(tmp_path / "trained.npz") as answer:
        assert list(answer["names"]) == list(dataset.landmark_names)
        np.testing.assert_allclose(answer["small_landmarks"], points, atol=1e-5)
        np.testing.assert_allclose(answer["landmarks"], points, atol=1e-5)
        np.testing.assert_allclose(answer["confidence"], confidence, atol=1e-5)
    for output, (heatmaps, points, confidence) in expected:
        with np.load(output) as answer:
            assert list(answer["names"]) == list(NAMES)
            np.testing.assert_allclose(answer["heatmaps"], heatmaps, atol=1e-5)
            for prefix in ("", "small_"):
                np.testing.assert_allclose(answer[prefix + "landmarks"], points, atol=1e-5)
                np.testing.assert_allclose(answer[prefix + "confidence"], confidence, atol=1e-5)


@pytest.mark.slow
def test_saved_model_cli_shows_and_runs_the_signatures(exports, tmp_path):
    _, _, path = exports["down2d"]
    show = subprocess.run([CLI, "show", "--all", "--dir", path], capture_output=True, text=True,
                          env=subprocess_env(), timeout=120)
    assert show.returncode == 0, show.stderr[-3000:]
    for text in ("signature_def['serving_default']", "signature_def['grid_heatmaps']",
                 "signature_def['landmarks']", "signature_def['predict_image']",
                 "signature_def['predict_array']", "inputs['image_bytes']",
                 "inputs['images']", "outputs['heatmaps']", "outputs['landmarks']",
                 "outputs['confidence']", "shape: (-1, -1, -1, 1)"):
        assert text in show.stdout, text
    # This TF's CLI evaluates --input_exprs as Python literals only (no np.zeros(...)), so
    # the image goes in as a .npy file through --inputs.
    np.save(tmp_path / "images.npy", np.zeros((1, 32, 32, 1), np.float32))
    run = subprocess.run(
        [CLI, "run", "--dir", path, "--tag_set", "serve", "--signature_def", "landmarks",
         "--inputs", f"images={tmp_path / 'images.npy'}"],
        capture_output=True, text=True, env=subprocess_env(), timeout=120,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Result for output key landmarks" in run.stdout
    assert "Result for output key confidence" in run.stdout


# -- versions and loading -------------------------------------------------------------------

def test_versions_are_numbered_never_overwritten_and_written_atomically(exports, tmp_path):
    network, metadata, _ = exports["down2d"]
    base = tmp_path / "hand"
    first = export_saved_model(network, base, metadata)
    assert first == str(base / "1")
    assert export_saved_model(network, base, metadata, version=7) == str(base / "7")
    assert export_saved_model(network, str(base), metadata) == str(base / "8")
    assert saved_model_versions(base) == [1, 7, 8]
    assert sorted(os.listdir(base)) == ["1", "7", "8"]  # No temporary folders left behind.
    with pytest.raises(KeraslmError, match=r"hand/7 exists; versions are never overwritten"):
        export_saved_model(network, base, metadata, version=7)
    for version in (0, -1, "2", 1.0, True):
        with pytest.raises(KeraslmError, match=f"Received: version={version!r}"):
            export_saved_model(network, base, metadata, version=version)
    (tmp_path / "file").write_text("x")
    with pytest.raises(KeraslmError, match="file is a file, not a folder"):
        export_saved_model(network, tmp_path / "file", metadata)
    with pytest.raises(KeraslmError, match=r"file.x cannot be made: .*file is a file"):
        export_saved_model(network, tmp_path / "file" / "x", metadata)


def test_export_bad_network_or_metadata(exports, tmp_path):
    network, metadata, _ = exports["down2d"]
    fixed = build_model("downsampling", 2, 3, preset="small", filters=4, input_shape=(32, 32, 1))
    with pytest.raises(KeraslmError, match=r"any spatial size .* network.input_shape=\(None, 32, 32, 1\)"):
        export_saved_model(fixed, tmp_path / "m", metadata)
    network3d, _, _ = exports["down3d"]
    with pytest.raises(KeraslmError, match="one-channel 2D images"):
        export_saved_model(network3d, tmp_path / "m", metadata)
    with pytest.raises(KeraslmError, match="lacks sigma"):
        export_saved_model(network, tmp_path / "m", {k: v for k, v in metadata.items() if k != "sigma"})
    with pytest.raises(KeraslmError, match="decode_method"):
        export_saved_model(network, tmp_path / "m", {**metadata, "decode_method": "mean"})
    assert not (tmp_path / "m").exists() or os.listdir(tmp_path / "m") == []


def test_load_saved_model_predictor_and_folder_errors(exports, tmp_path):
    network, metadata, path = exports["scn2d"]
    predictor = load_saved_model_predictor(path)
    assert predictor.metadata["landmark_names"] == list(NAMES)
    images = _images((32, 32), 5)
    points, confidence = predictor.grid_points(images)
    expected = KerasPredictor(network, metadata).grid_points(images)
    np.testing.assert_allclose(points, expected[0], atol=1e-5)
    np.testing.assert_allclose(confidence, expected[1], atol=1e-5)
    assert load_predictor(path).metadata["grid_shape"] == [32, 32]  # via keraslm.inference
    base = os.path.dirname(path)
    with pytest.raises(KeraslmError, match=rf"{base} is a SavedModel base folder with versions 1, "
                       rf"not a version folder; pass {path}$"):
        load_saved_model_predictor(base)
    with pytest.raises(KeraslmError, match="no such SavedModel folder"):
        load_saved_model_predictor(tmp_path / "missing")
    with pytest.raises(KeraslmError, match="not a SavedModel folder"):
        load_saved_model_predictor(tmp_path)
    (tmp_path / "saved_model.pb").write_bytes(b"")
    with pytest.raises(KeraslmError, match="no assets/keraslm.json"):
        load_saved_model_predictor(tmp_path)
