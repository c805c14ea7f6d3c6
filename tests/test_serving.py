"""Tests of keraslm.serving: the REST request / response helpers run against the exported
signatures in-process (a transport that answers as TF Serving's REST API does), compared with
keraslm.inference.predict on the same images."""
import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from keraslm import KeraslmError
from keraslm.datasets import make_phantom
from keraslm.export import export_saved_model
from keraslm.inference import model_metadata, predict
from keraslm.io import Image
from keraslm.models import build_model
from keraslm.serving import (
    ServingClient,
    load_metadata,
    parse_response,
    prepare_images,
    request_body,
)
from keraslm.training.pipeline import choose_grid


def saved_model_transport(version_dir, log):
    """Runs the requested signature of the SavedModel and answers like TF Serving's REST API:
    row format -> {"predictions": [one object per instance]}, columnar -> {"outputs": {...}};
    bodies and answers go through JSON as over the wire."""
    loaded = tf.saved_model.load(version_dir)

    def transport(path, body):
        body = json.loads(json.dumps(body))
        log.append((path, body["signature_name"], "instances" in body))
        signature = loaded.signatures[body.get("signature_name", "grid_heatmaps")]
        images = body["instances"] if "instances" in body else body["inputs"]["images"]
        outputs = signature(images=tf.constant(np.asarray(images, np.float32)))
        outputs = {key: value.numpy().tolist() for key, value in outputs.items()}
        if "instances" in body:
            count = len(images)
            response = {"predictions": [{key: value[i] for key, value in outputs.items()}
                                        for i in range(count)]}
        else:
            response = {"outputs": outputs}
        return json.loads(json.dumps(response))

    return transport


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(network, metadata, version folder, image paths, plain-image spacing)."""
    root = tmp_path_factory.mktemp("phantom") / "phantom2d"
    dataset = make_phantom(root, ndim=2, num_images=8, image_size=(64, 64))
    keras.utils.set_random_seed(5)
    network = build_model("downsampling", 2, dataset.num_landmarks, preset="small", filters=4)
    grid = choose_grid(dataset, (32, 32))
    metadata = model_metadata(network, grid, "equalize_standardize", dataset.landmark_names, 1.5,
                              "quadratic")
    path = export_saved_model(network, tmp_path_factory.mktemp("saved_models") / "phantom",
                              metadata)
    paths = [record.image_path for record in dataset.records[:5]]  # PNG and DICOM files
    return network, metadata, path, paths, dataset.image_spacing


@pytest.mark.parametrize("signature_name, request_format", [
    ("landmarks", "instances"), ("grid_heatmaps", "inputs"), ("grid_heatmaps", "instances"),
])
def test_client_equals_inference_predict(served, signature_name, request_format):
    network, metadata, path, paths, spacing = served
    log = []
    client = ServingClient("phantom", path, signature_name=signature_name,
                           request_format=request_format,
                           transport=saved_model_transport(path, log))
    answers = client.predict(paths, spacing=spacing, batch_size=2)
    expected = predict(network, paths, spacing=spacing, metadata=metadata)
    assert [entry[0] for entry in log] == ["/v1/models/phantom:predict"] * 3  # 2 + 2 + 1 images
    assert {entry[1:] for entry in log} == {(signature_name, request_format == "instances")}
    assert len(answers) == len(expected) == len(paths)
    for answer, reference in zip(answers, expected):
        assert answer.image_id == reference.image_id and answer.image_path == reference.image_path
        assert answer.landmark_names == reference.landmark_names
        np.testing.assert_allclose(answer.points_index, reference.points_index, atol=1e-4)
        np.testing.assert_allclose(answer.points_mm, reference.points_mm, atol=1e-4)
        np.testing.assert_allclose(answer.confidence, reference.confidence, atol=1e-5)


def test_request_body_layout_and_response_parsing(served):
    _, metadata, path, paths, spacing = served
    assert load_metadata(path) == load_metadata(f"{path}/assets/keraslm.json")
    prepared = prepare_images(paths[:2], metadata, spacing=spacing)
    assert prepared[0].grid_image.shape == (32, 32, 1)
    body = request_body(prepared)
    assert set(body) == {"signature_name", "instances"} and body["signature_name"] == "landmarks"
    assert np.asarray(body["instances"]).shape == (2, 32, 32, 1)
    body = request_body(prepared, "grid_heatmaps", "inputs")
    assert np.asarray(body["inputs"]["images"]).shape == (2, 32, 32, 1)
    # Grid-centre landmarks map back through each image's placement.
    num = len(metadata["landmark_names"])
    row = {"landmarks": [[15.5, 15.5]] * num, "confidence": [1.0] * num}
    predictions = parse_response({"predictions": [row, row]}, prepared, metadata)
    for item, prediction in zip(prepared, predictions):
        expected = item.placement.grid_to_image_index(np.full((num, 2), 15.5))
        np.testing.assert_allclose(prediction.points_index, expected)
        np.testing.assert_allclose(prediction.points_mm, item.header.index_to_physical(expected))
    columnar = parse_response({"outputs": {"landmarks": [row["landmarks"]] * 2,
                                           "confidence": [row["confidence"]] * 2}},
                              prepared, metadata)
    np.testing.assert_allclose(columnar[1].points_mm, predictions[1].points_mm)


def test_client_paths_and_bad_input(served):
    _, metadata, path, paths, spacing = served
    assert ServingClient("hand", metadata).path == "/v1/models/hand:predict"
    assert ServingClient("hand", metadata, version=3).path == "/v1/models/hand/versions/3:predict"
    for kwargs, message in [
        ({"model_name": ""}, "model_name=''"),
        ({"version": 0}, "version=0"),
        ({"signature_name": "heatmaps"}, "signature_name='heatmaps'"),
        ({"request_format": "rows"}, "request_format='rows'"),
    ]:
        arguments = {"model_name": "hand", "metadata": metadata, **kwargs}
        with pytest.raises(KeraslmError, match=message):
            ServingClient(**arguments)
    with pytest.raises(KeraslmError, match="no model metadata file"):
        ServingClient("hand", path + "-missing")
    prepared = prepare_images(paths[:1], metadata, spacing=spacing)
    with pytest.raises(KeraslmError, match="answered an error: Servable not found"):
        parse_response({"error": "Servable not found"}, prepared, metadata)
    with pytest.raises(KeraslmError, match="answers 2 images for `landmarks`; 1 were sent"):
        row = {"landmarks": [[0.0, 0.0]] * 37, "confidence": [0.0] * 37}
        parse_response({"predictions": [row, row]}, prepared, metadata)
    with pytest.raises(KeraslmError, match=r"landmarks of shape \(2, 2\) per image"):
        parse_response({"predictions": [{"landmarks": [[0.0, 0.0]] * 2, "confidence": [0, 0]}]},
                       prepared, metadata)
    with pytest.raises(KeraslmError, match="neither `predictions` nor `outputs`"):
        parse_response({"result": []}, prepared, metadata)
    with pytest.raises(KeraslmError, match="at least one image"):
        request_body([])
    client = ServingClient("hand", metadata, transport=lambda path, body: {})
    with pytest.raises(KeraslmError, match="is 3D but the model expects 2D"):
        client.predict([Image(np.zeros((4, 5, 6), np.float32), spacing=(1.0, 1.0, 1.0))])
    with pytest.raises(KeraslmError, match="image 1 contains non-finite pixel values"):
        client.predict([paths[0], Image(np.full((16, 16), np.inf, np.float32), spacing=1.0)],
                       spacing=spacing)


def test_client_gives_images_with_the_same_name_unique_ids(served, tmp_path):
    import shutil

    _, metadata, path, paths, spacing = served
    copies = [tmp_path / "da" / "x.png", tmp_path / "db" / "x.png"]
    for copy in copies:
        copy.parent.mkdir()
        shutil.copy(paths[0], copy)
    prepared = prepare_images([str(c) for c in copies] + [paths[1]], metadata, spacing=spacing)
    assert [item.image_id for item in prepared] == ["da/x", "db/x", "phantom2d_001"]


def test_client_needs_the_spacing_of_plain_images(served):
    network, metadata, path, paths, spacing = served
    assert paths[0].endswith(".png") and paths[1].endswith(".dcm")
    message = r"phantom2d_000\.png: a PNG file stores no pixel spacing; .*\(Python: spacing=\)$"
    with pytest.raises(KeraslmError, match=message):
        prepare_images(paths[:2], metadata)
    for signature_name in ("landmarks", None):  # The grid protocol and the image signatures.
        client = ServingClient("phantom", path, signature_name=signature_name,
                               transport=lambda path, body: pytest.fail("a request was sent"))
        with pytest.raises(KeraslmError, match=message):
            client.predict(paths[:2])
    assert prepare_images(paths[1:2], metadata)[0].image_id == "phantom2d_001"  # DICOM: its own.
