"""Tests of keraslm.serving: `ServingClient` against the exported image signatures run in-process
(a transport that answers as TF Serving's REST API does, in row and columnar format), compared
with keraslm.predict on the same images; request bodies, response parsing and every error on a
hand-made transport; `http_transport` against a local HTTP server."""
import base64
import http.server
import json
import shutil
import threading
import time

import numpy as np
import pytest
import tensorflow as tf

from keraslm import KeraslmError
from keraslm.io import Image
from keraslm.prediction import predict
from keraslm.prediction.predictors import read_saved_model_spec
from keraslm.serving import (
    BYTES_EXTENSIONS,
    OPTIONAL_OUTPUTS,
    OUTPUTS,
    ServingClient,
    array_request_body,
    image_request_body,
)
from keraslm.spec import DetectorSpec, StageSpec

from helpers import saved_model_transport


@pytest.fixture(scope="module")
def served(trained_2d):
    """(training result, image paths: PNG and DICOM files, plain-image spacing (x, y)) of
    conftest.py's exported `trained_2d`."""
    result, dataset = trained_2d
    paths = [record.image_path for record in dataset.records[:5]]
    assert paths[0].endswith(".png") and paths[1].endswith(".dcm")
    spacing = tuple(np.broadcast_to(dataset.image_spacing, (2,)).tolist())
    return result, paths, spacing


@pytest.fixture(scope="module")
def served_answers(served):
    """(the loaded SavedModel, keraslm.predict's predictions of `served`'s images with it)."""
    result, paths, spacing = served
    return tf.saved_model.load(result.export_path), predict(result.export_path, paths, spacing=spacing)


@pytest.mark.parametrize("answer", ["request", "rows", "columns"])
def test_client_equals_predict(served, served_answers, answer):
    result, paths, spacing = served
    loaded, expected = served_answers
    log = []
    client = ServingClient("phantom", result.export_path,
                           transport=saved_model_transport(loaded, log, answer))
    answers = client.predict(paths, spacing=spacing, batch_size=2)
    files = [p for p in paths if p.endswith(BYTES_EXTENSIONS)]
    arrays = [p for p in paths if not p.endswith(BYTES_EXTENSIONS)]
    assert files and arrays
    # Each DICOM alone through predict_array (columnar); the PNG files as bytes, 2 per request.
    # The version of the export the spec is read from (its folder "1") is asked for.
    path = "/v1/models/phantom/versions/1:predict"
    assert log == ([(path, "predict_array", False)] * len(arrays)
                   + [(path, "predict_image", True)] * ((len(files) + 1) // 2))
    assert len(answers) == len(expected) == len(paths)
    for answer_, reference in zip(answers, expected):
        assert answer_.image_id == reference.image_id and answer_.image_path == reference.image_path
        assert answer_.landmark_names == reference.landmark_names
        assert answer_.points_mm.shape == reference.points_mm.shape == (len(reference.landmark_names), 2)
        np.testing.assert_allclose(answer_.points_index, reference.points_index, atol=1e-3)
        np.testing.assert_allclose(answer_.points_mm, reference.points_mm, atol=1e-4)
        np.testing.assert_allclose(answer_.confidence, reference.confidence, atol=1e-5)
        np.testing.assert_allclose(answer_.spread_mm, reference.spread_mm, atol=1e-4)
        np.testing.assert_allclose(answer_.second_peak, reference.second_peak, atol=1e-4)
        assert answer_.expected_error_mm is None and reference.expected_error_mm is None


# -- a hand-made transport ------------------------------------------------------------------

NAMES = ("nasion", "sella", "menton")
STAGE = StageSpec("unet", (32, 32), (1.5, 1.5), "subtract_mean", 1, 8, 1.5)
SPEC = DetectorSpec(NAMES, 2, (STAGE,))


def _answer(seed, calibrated=False):
    """One image's made-up answer of an image signature."""
    rng = np.random.default_rng(seed)
    answer = {"landmarks_index": rng.uniform(0, 30, (3, 2)).tolist(),
              "landmarks_mm": rng.uniform(-50, 50, (3, 2)).tolist(),
              "confidence": rng.uniform(0, 1, 3).tolist(), "spread_mm": rng.uniform(1, 3, 3).tolist()}
    if calibrated:
        answer["expected_error_mm"] = rng.uniform(0.5, 4, 3).tolist()
        answer["second_peak"] = rng.uniform(0, 1, 3).tolist()
    return answer


def recording_transport(bodies, calibrated=False, columnar=False):
    """Records each body; answers each image with `_answer(number of images answered before)`,
    row format for `instances`, columnar for `inputs` (or columnar always)."""
    answered = []

    def transport(path, body):
        body = json.loads(json.dumps(body))
        bodies.append((path, body))
        count = len(body["instances"]) if "instances" in body else None
        answers = [_answer(len(answered) + n, calibrated) for n in range(count or 1)]
        answered.extend(answers)
        if count is None:
            return {"outputs": answers[0]}
        if columnar:
            return {"outputs": {key: [a[key] for a in answers] for key in answers[0]}}
        return {"predictions": answers}

    return transport


def _png(path, shape=(12, 10), seed=0):
    from PIL import Image as PILImage

    pixels = np.random.default_rng(seed).integers(0, 255, shape, dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    PILImage.fromarray(pixels).save(path)
    return str(path)


@pytest.mark.parametrize("calibrated, columnar", [(False, False), (True, False), (True, True)])
def test_request_bodies_and_answers_in_order(tmp_path, calibrated, columnar):
    pngs = [_png(tmp_path / f"p{n}.png", seed=n) for n in range(3)]
    array = np.arange(20, dtype=np.float32).reshape(4, 5)
    image = Image(array, spacing=(0.5, 0.25), origin=(3.0, -2.0),
                  direction=((0.0, 1.0), (1.0, 0.0)))
    bodies = []
    client = ServingClient("hand", SPEC, version=3,
                           transport=recording_transport(bodies, calibrated, columnar))
    found = client.predict([pngs[0], image, pngs[1], pngs[2]], spacing=(0.3, 0.4), batch_size=2)
    assert [path for path, _ in bodies] == ["/v1/models/hand/versions/3:predict"] * 3
    # The array first (as it is read), then the files in batches of 2, in input order.
    array_body = bodies[0][1]
    assert array_body == {"signature_name": "predict_array", "inputs": {
        "image": array.tolist(), "spacing": [0.5, 0.25], "origin": [3.0, -2.0],
        "direction": [[0.0, 1.0], [1.0, 0.0]]}}
    assert [body["signature_name"] for _, body in bodies[1:]] == ["predict_image"] * 2
    sent = [row for _, body in bodies[1:] for row in body["instances"]]
    assert [set(row) for row in sent] == [{"image_bytes", "spacing"}] * 3
    for row, path in zip(sent, [pngs[0], pngs[1], pngs[2]]):
        with open(path, "rb") as handle:
            assert base64.b64decode(row["image_bytes"]["b64"]) == handle.read()
        assert row["spacing"] == [0.3, 0.4]
    # Answer n was the n-th image answered: the array (0), then the files (1, 2, 3).
    order = {1: 0, 0: 1, 2: 2, 3: 3}
    assert [p.image_id for p in found] == ["p0", "image0001", "p1", "p2"]
    assert [p.image_path for p in found] == [pngs[0], None, pngs[1], pngs[2]]
    for position, prediction in enumerate(found):
        expected = _answer(order[position], calibrated)
        assert prediction.landmark_names == NAMES
        assert prediction.points_mm.shape == prediction.points_index.shape == (3, 2)
        np.testing.assert_allclose(prediction.points_index, expected["landmarks_index"])
        np.testing.assert_allclose(prediction.points_mm, expected["landmarks_mm"])
        np.testing.assert_allclose(prediction.confidence, expected["confidence"])
        np.testing.assert_allclose(prediction.spread_mm, expected["spread_mm"])
        if calibrated:
            np.testing.assert_allclose(prediction.expected_error_mm, expected["expected_error_mm"])
            np.testing.assert_allclose(prediction.second_peak, expected["second_peak"])
            assert prediction.to_dict()["landmarks"]["sella"]["second_peak"] == pytest.approx(
                expected["second_peak"][1])
        else:  # An export of an older keraslm: no second peak either.
            assert prediction.expected_error_mm is None and prediction.second_peak is None
            assert "second_peak" not in prediction.to_dict()["landmarks"]["sella"]


def test_request_body_helpers(tmp_path):
    pngs = [_png(tmp_path / "a.png"), _png(tmp_path / "b.png", (7, 9), seed=1)]
    body = image_request_body(pngs, [(0.1, 0.1), np.array([0.2, 0.3])])
    assert body["signature_name"] == "predict_image" and set(body) == {"signature_name", "instances"}
    assert [row["spacing"] for row in body["instances"]] == [[0.1, 0.1], [0.2, 0.3]]
    assert base64.b64decode(body["instances"][1]["image_bytes"]["b64"]) == open(pngs[1], "rb").read()
    json.dumps(body)  # JSON-serialisable as sent.
    image = Image(np.ones((2, 3, 4), np.uint16), spacing=(1.0, 2.0, 3.0))
    body = array_request_body(image)
    assert body["signature_name"] == "predict_array"
    assert np.asarray(body["inputs"]["image"]).shape == (2, 3, 4)
    assert body["inputs"]["spacing"] == [1.0, 2.0, 3.0] and body["inputs"]["origin"] == [0.0] * 3
    assert body["inputs"]["direction"] == np.eye(3).tolist()
    json.dumps(body)
    assert set(OUTPUTS) == {"landmarks_index", "landmarks_mm", "confidence"}
    assert set(OPTIONAL_OUTPUTS) == {"spread_mm", "expected_error_mm", "second_peak"}


def test_client_arguments_and_bad_input(served, tmp_path):
    result, paths, spacing = served
    assert ServingClient("hand", SPEC).path == "/v1/models/hand:predict"
    assert ServingClient("hand", SPEC, version=3).path == "/v1/models/hand/versions/3:predict"
    # The spec read from the export's assets/keraslm.json; its version asked for unless the
    # newest is ("latest") or another one.
    client = ServingClient("hand", result.export_path)
    assert client.spec == read_saved_model_spec(result.export_path) and client.spec.ndim == 2
    assert client.path == "/v1/models/hand/versions/1:predict"
    assert ServingClient("hand", result.export_path, version="latest").path == (
        "/v1/models/hand:predict")
    assert ServingClient("hand", result.export_path, version=2).path == (
        "/v1/models/hand/versions/2:predict")
    for kwargs, message in [
        ({"model_name": ""}, "model_name=''"),
        ({"model_name": "a/b"}, "model_name='a/b'"),
        ({"version": 0}, "version=0"),
        ({"version": True}, "version=True"),
        ({"version": "2"}, "version='2'"),
    ]:
        with pytest.raises(KeraslmError, match=message):
            ServingClient(**{"model_name": "hand", "spec": SPEC, **kwargs})
    with pytest.raises(KeraslmError, match="no such SavedModel folder"):
        ServingClient("hand", result.export_path + "-missing")
    base = result.export_path[:-len("/1")]
    with pytest.raises(KeraslmError, match=r"is a SavedModel base folder with versions 1, not a "
                       r"version folder; pass .*/1$"):
        ServingClient("hand", base)

    client = ServingClient("hand", SPEC, transport=lambda path, body: pytest.fail("a request was sent"))
    with pytest.raises(KeraslmError, match=r"Received: batch_size=0"):
        client.predict(paths[:1], spacing=spacing, batch_size=0)
    with pytest.raises(KeraslmError, match="image 0 is 3D but the model expects 2D"):
        client.predict([Image(np.zeros((4, 5, 6), np.float32), spacing=(1.0, 1.0, 1.0))])
    with pytest.raises(KeraslmError, match="image 1 contains non-finite pixel values"):
        client.predict([paths[0], Image(np.full((16, 16), np.inf, np.float32), spacing=1.0)],
                       spacing=spacing)
    with pytest.raises(KeraslmError, match="the same image is given more than once"):
        client.predict([paths[0], paths[0]], spacing=spacing)


@pytest.mark.parametrize("response, message", [
    ({"error": "Servable not found"}, "TF Serving answered an error: Servable not found"),
    (["x"], "must be a JSON object. Received: list"),
    ({"result": []}, "neither `predictions` nor `outputs`"),
    ({"outputs": [1, 2]}, "neither `predictions` nor `outputs`"),
    ({"predictions": {"landmarks_mm": []}}, "`predictions` in the TF Serving response must be a "
                                            "list of objects"),
    ({"predictions": [_answer(0), _answer(1)]}, "answers 2 images for `landmarks_index`; 1 were sent"),
    ({"outputs": {k: [v] for k, v in _answer(0).items() if k != "landmarks_mm"}},
     "lacks a numeric `landmarks_mm` output"),
    ({"outputs": {**{k: [v] for k, v in _answer(0).items()}, "confidence": "high"}},
     "lacks a numeric `confidence` output"),
])
def test_bad_responses_are_keraslm_errors(tmp_path, response, message):
    client = ServingClient("hand", SPEC, transport=lambda path, body: response)
    with pytest.raises(KeraslmError, match=message):
        client.predict([_png(tmp_path / "a.png")], spacing=0.5)


@pytest.mark.parametrize("case", ["row without landmarks_mm", "2 landmarks", "3D points"])
def test_malformed_answers_are_keraslm_errors(tmp_path, case):
    row = _answer(0)
    if case == "row without landmarks_mm":
        del row["landmarks_mm"]
    elif case == "2 landmarks":
        row = {key: value[:2] for key, value in row.items()}
    else:
        row = {**row, "landmarks_index": [[1.0, 2.0, 3.0]] * 3, "landmarks_mm": [[1.0, 2.0, 3.0]] * 3}
    client = ServingClient("hand", SPEC, transport=lambda path, body: {"predictions": [row]})
    message = ("lacks a numeric `landmarks_mm` output" if case.startswith("row")
               else r"answers landmarks_index of shape \(\d, \d\) per image; the model has 3 landmarks in 2D")
    with pytest.raises(KeraslmError, match=message):
        client.predict([_png(tmp_path / "a.png")], spacing=0.5)


def test_client_gives_images_with_the_same_name_unique_ids(served, tmp_path):
    result, paths, spacing = served
    copies = [tmp_path / "da" / "x.png", tmp_path / "db" / "x.png"]
    for copy in copies:
        copy.parent.mkdir()
        shutil.copy(paths[0], copy)
    spec = read_saved_model_spec(result.export_path)
    client = ServingClient("phantom", spec, transport=_constant_transport(spec))
    found = client.predict([str(c) for c in copies] + [paths[1]], spacing=spacing)
    assert [p.image_id for p in found] == ["da/x", "db/x", "phantom2d_001"]


def _constant_transport(spec):
    """Answers any request with zeros for every image (row / columnar as TF Serving)."""
    zeros = {"landmarks_index": np.zeros((spec.num_landmarks, spec.ndim)).tolist(),
             "landmarks_mm": np.zeros((spec.num_landmarks, spec.ndim)).tolist(),
             "confidence": [0.0] * spec.num_landmarks}

    def transport(path, body):
        if "instances" in body:
            return {"predictions": [zeros] * len(body["instances"])}
        return {"outputs": zeros}

    return transport


def test_client_needs_the_spacing_of_plain_images(served):
    result, paths, spacing = served
    spec = read_saved_model_spec(result.export_path)
    refuse = ServingClient("phantom", spec.replace(plain_image_spacing=None),
                           transport=lambda path, body: pytest.fail("a request was sent"))
    message = r"phantom2d_000\.png: a PNG file stores no pixel spacing; .*\(Python: spacing=\)$"
    with pytest.raises(KeraslmError, match=message):
        refuse.predict(paths[:2])
    # A model trained on plain images names their spacing as the likely value.
    hinted = ServingClient("phantom", spec.replace(plain_image_spacing=(0.25, 0.25)),
                           transport=lambda path, body: pytest.fail("a request was sent"))
    with pytest.raises(KeraslmError, match=r"\(Python: spacing=\); the model was trained on plain "
                       r"images of 0\.25 mm per pixel \(--spacing 0\.25\)"):
        hinted.predict(paths[:2])
    # A DICOM file holds its own spacing.
    client = ServingClient("phantom", spec, transport=_constant_transport(spec))
    assert [p.image_id for p in client.predict(paths[1:2])] == ["phantom2d_001"]


# -- http_transport -------------------------------------------------------------------------

@pytest.fixture
def http_server():
    """A local HTTP server on a free port: POSTs to a `:predict` path are answered with made-up
    landmarks for every instance, any other path with 404 and a TF Serving style error.
    Yields (port, list of (path, body) received)."""
    received = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            received.append((self.path, self.headers["Content-Type"], body))
            if self.path.startswith("/v1/models/slow/"):
                time.sleep(1.5)  # Longer than the client's timeout below.
                return
            if self.path.startswith("/v1/models/drop/"):
                self.close_connection = True  # Closed without an answer.
                return
            if self.path.startswith("/v1/models/proxy/"):
                data, status = "<html>Bad gateway page</html>", 200
            elif self.path.endswith("/versions/2:predict"):
                data = json.dumps({"predictions": [_answer(0)] * len(body["instances"])})
                status = 200
            else:
                data, status = json.dumps({"error": "Servable not found for request"}), 404
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(data.encode("utf-8"))

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield server.server_address[1], received
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_http_transport_posts_json_and_names_http_errors(http_server, tmp_path):
    port, received = http_server
    png = _png(tmp_path / "a.png")
    found = ServingClient("hand", SPEC, version=2, host="127.0.0.1", port=port).predict(
        [png], spacing=0.5)
    assert len(received) == 1
    path, content_type, body = received[0]
    assert path == "/v1/models/hand/versions/2:predict" and content_type == "application/json"
    assert body["signature_name"] == "predict_image" and len(body["instances"]) == 1
    np.testing.assert_allclose(found[0].points_mm, _answer(0)["landmarks_mm"])
    with pytest.raises(KeraslmError, match=rf"http://127\.0\.0\.1:{port}/v1/models/hand:predict: "
                       r"HTTP 404: .*Servable not found for request"):
        ServingClient("hand", SPEC, host="127.0.0.1", port=port).predict([png], spacing=0.5)


def test_http_transport_names_timeouts_dropped_connections_and_answers_not_json(http_server,
                                                                              tmp_path):
    """No raw socket or JSON exception escapes the client: each is a KeraslmError naming the
    URL (and the timeout)."""
    port, _ = http_server
    png = _png(tmp_path / "a.png")
    for name, message in (("drop", r"the connection failed \(RemoteDisconnected"),
                          ("proxy", r"the answer is not JSON \(a proxy's page\?\): "
                                    r"'<html>Bad gateway page</html>'"),
                          # Last: the one-thread server sleeps through it.
                          ("slow", r"no answer within 0\.5 s \(timeout=\)")):
        client = ServingClient(name, SPEC, version=2, host="127.0.0.1", port=port, timeout=0.5)
        with pytest.raises(KeraslmError, match=rf"http://127\.0\.0\.1:{port}/v1/models/{name}/"
                           rf"versions/2:predict: {message}"):
            client.predict([png], spacing=0.5)


def test_http_transport_names_an_unreachable_server(tmp_path):
    import socket

    with socket.socket() as probe:  # A port nothing listens on.
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(KeraslmError, match=rf"http://127\.0\.0\.1:{port}/v1/models/hand:predict: "):
        ServingClient("hand", SPEC, host="127.0.0.1", port=port).predict(
            [_png(tmp_path / "a.png")], spacing=0.5)
