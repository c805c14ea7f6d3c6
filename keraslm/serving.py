"""Client of TF Serving's REST API: image file -> `:predict` request -> landmarks in mm.

An export answers from the image itself (`keraslm.export`: signatures `predict_image` and
`predict_array`, the whole prediction graph), so the client is thin: a PNG / JPEG / BMP file
goes as its bytes,

    {"signature_name": "predict_image",
     "instances": [{"image_bytes": {"b64": "<base64 of the file>"}, "spacing": [sx, sy]}]}

and any other image (DICOM, NIfTI, TIFF, an `Image`) is read with `keraslm.io` and goes as its
array and geometry, one image per request,

    {"signature_name": "predict_array",
     "inputs": {"image": <array>, "spacing": [...], "origin": [...], "direction": [[...]]}}

and the answer's `landmarks_index`, `landmarks_mm`, `confidence` (and `spread_mm`,
`second_peak`, `expected_error_mm`) become the same `keraslm.prediction.Prediction` objects `keraslm.predict`
returns. Row format ("instances") answers `{"predictions": [{...}, ...]}`, columnar format
("inputs") `{"outputs": {...}}`; both are read.

The transport is pluggable: any `transport(path, body) -> response` callable with `path` like
`/v1/models/hand:predict` and `body` / `response` JSON-compatible dicts; `http_transport` posts
to a TF Serving server with urllib.
"""
import http.client
import json
import os
import urllib.error
import urllib.request

import numpy as np

from keraslm.errors import KeraslmError
from keraslm.prediction import (
    Prediction,
    check_plain_image_spacing,
    input_image_ids,
    load_input_image,
)
from keraslm.prediction.predictors import (graph_takes_any_orientation, in_graph_frame,
                                           in_image_frame, read_saved_model_spec,
                                           saved_model_folder)
from keraslm.spec import DetectorSpec

OUTPUTS = ("landmarks_index", "landmarks_mm", "confidence")
#: Outputs of every current export (expected_error_mm: calibrated models only).
OPTIONAL_OUTPUTS = ("spread_mm", "expected_error_mm", "second_peak")
#: Files the `predict_image` signature decodes itself (sent as bytes).
BYTES_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")


def _graph_decodes(path):
    """Whether `path` goes to `predict_image` as bytes: PNG / JPEG, and BMP of 24 or 32 bits
    (exports before keraslm 0.4.4 read an 8-bit BMP's palette indices as its pixels; other BMPs
    go as arrays, read by keraslm.io)."""
    lower = path.lower()
    if not lower.endswith(BYTES_EXTENSIONS):
        return False
    if lower.endswith(".bmp"):
        with open(path, "rb") as handle:
            header = handle.read(30)
        return len(header) == 30 and int.from_bytes(header[28:30], "little") in (24, 32)
    return True


def image_request_body(paths, spacings):
    """The `predict_image` body for image files: their bytes, base64 as TF Serving's REST API
    expects for a string input, and their spacing (x, y) in mm per pixel."""
    import base64

    instances = []
    for path, spacing in zip(paths, spacings):
        with open(path, "rb") as handle:
            data = base64.b64encode(handle.read()).decode("ascii")
        instances.append({"image_bytes": {"b64": data}, "spacing": [float(v) for v in spacing]})
    return {"signature_name": "predict_image", "instances": instances}


def array_request_body(image):
    """The `predict_array` body for one `keraslm.io.Image`: its array and geometry."""
    return {"signature_name": "predict_array", "inputs": {
        "image": np.asarray(image.array, np.float32).tolist(),
        "spacing": np.asarray(image.spacing, float).tolist(),
        "origin": np.asarray(image.origin, float).tolist(),
        "direction": np.asarray(image.direction, float).tolist()}}


def _outputs(response, count, keys=OUTPUTS, optional=()):
    """The answer's `keys` (and those of `optional` it holds) as float64 arrays, from either
    REST format; `count` None: an unbatched answer, not counted."""
    if not isinstance(response, dict):
        raise KeraslmError(
            f"the TF Serving response must be a JSON object. Received: {type(response).__name__}")
    if "error" in response:
        raise KeraslmError(f"TF Serving answered an error: {response['error']}")
    if "predictions" in response:
        rows = response["predictions"]
        if not (isinstance(rows, list) and all(isinstance(row, dict) for row in rows)):
            raise KeraslmError("`predictions` in the TF Serving response must be a list of "
                               f"objects with {', '.join(map(repr, keys))}")
        missing = [key for key in keys if not all(key in row for row in rows)]
        if missing:
            raise KeraslmError(f"the TF Serving response lacks a numeric `{missing[0]}` output")
        present = [key for key in optional if rows and all(key in row for row in rows)]
        outputs = {key: [row[key] for row in rows] for key in list(keys) + present}
    elif "outputs" in response and isinstance(response["outputs"], dict):
        outputs = response["outputs"]
    else:
        raise KeraslmError(
            "the TF Serving response has neither `predictions` nor `outputs` with named "
            f"tensors. Received keys: {sorted(response)}")
    result = {}
    for key in list(keys) + [key for key in optional if key in outputs]:
        try:
            result[key] = np.asarray(outputs[key], np.float64)
        except (KeyError, TypeError, ValueError):
            raise KeraslmError(f"the TF Serving response lacks a numeric `{key}` output") from None
        if count is not None and len(result[key]) != count:
            raise KeraslmError(
                f"the TF Serving response answers {len(result[key])} images for `{key}`; "
                f"{count} were sent")
    return result


def http_transport(host="localhost", port=8501, timeout=60.0):
    """A transport that POSTs to TF Serving's REST API with urllib.

    Args:
        host: str. server name.
        port: int. REST port (8501 in the official container).
        timeout: float. seconds per request.

    Returns:
        callable(path, body) -> response dict.
    """
    def transport(path, body):
        url = f"http://{host}:{port}{path}"
        request = urllib.request.Request(
            url, data=json.dumps(body).encode("utf-8"),
            headers={"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as answer:
                text = answer.read().decode("utf-8")
        except urllib.error.HTTPError as error:
            detail = error.read().decode("utf-8", "replace")
            raise KeraslmError(f"{url}: HTTP {error.code}: {detail}") from None
        except urllib.error.URLError as error:
            raise KeraslmError(f"{url}: {error.reason}") from None
        except TimeoutError:
            raise KeraslmError(f"{url}: no answer within {timeout:g} s (timeout=)") from None
        except (OSError, http.client.HTTPException) as error:  # Reset, dropped connection.
            raise KeraslmError(f"{url}: the connection failed ({type(error).__name__}: "
                               f"{error})") from None
        except UnicodeDecodeError:
            raise KeraslmError(f"{url}: the answer is not UTF-8 text") from None
        try:
            return json.loads(text)
        except ValueError:
            raise KeraslmError(f"{url}: the answer is not JSON (a proxy's page?): "
                               f"{text[:120]!r}") from None

    return transport


class ServingClient:
    """Finds landmarks with a model served by TF Serving.

    Args:
        model_name: str. The served model name (`MODEL_NAME` of the container).
        spec: keraslm.spec.DetectorSpec, or the exported SavedModel version folder it is read
            from (its `assets/keraslm.json`).
        version: int, "latest" or None. The model version asked for. None: the version of the
            folder `spec` is read from (so that the answers are the model whose landmark names
            and geometry the client uses), or the newest the server has for a `DetectorSpec`;
            "latest": the newest the server has.
        transport: callable(path, body) -> response dict, or None for `http_transport(host, port,
            timeout)`.
        host: str. Used by the default transport.
        port: int. Used by the default transport.
        timeout: float. Seconds per request of the default transport.

    Examples:
    >>> client = ServingClient("isbi2015", "saved_models/isbi2015_scn/8")
    >>> prediction = client.predict(["image.jpg"], spacing=0.1)[0]
    >>> prediction.points_mm                     # (num_landmarks, 2), physical mm
    """

    def __init__(self, model_name, spec, version=None, transport=None, host="localhost",
                 port=8501, timeout=60.0):
        if not (isinstance(model_name, str) and model_name and "/" not in model_name):
            raise KeraslmError(f"`model_name` must be a non-empty name without '/'. Received: "
                               f"model_name={model_name!r}")
        if version not in (None, "latest") and not (
                isinstance(version, int) and not isinstance(version, bool) and version >= 1):
            raise KeraslmError(f"`version` must be an int >= 1, 'latest' or None. Received: "
                               f"version={version!r}")
        self.model_name = model_name
        folder_version = None
        self._takes_any_orientation = True  # A spec given: its export's graph matches it.
        if isinstance(spec, DetectorSpec):
            self.spec = spec
        else:
            folder = saved_model_folder(spec)
            self.spec = read_saved_model_spec(folder)
            self._takes_any_orientation = graph_takes_any_orientation(folder, self.spec)
            name = os.path.basename(folder)
            folder_version = int(name) if name.isdigit() and int(name) >= 1 else None
        self.version = (folder_version if version is None
                        else None if version == "latest" else version)
        self.transport = transport or http_transport(host, port, timeout)

    @property
    def path(self):
        """The REST path, `/v1/models/<name>[/versions/<v>]:predict`."""
        version = "" if self.version is None else f"/versions/{self.version}"
        return f"/v1/models/{self.model_name}{version}:predict"

    def predict(self, images, spacing=None, batch_size=4):
        """Landmarks of images: one `predict_image` request per batch of PNG / JPEG / BMP files
        (2D models), one `predict_array` request per other image.

        Args:
            images: sequence of str paths or `keraslm.io.Image`s.
            spacing: float or None. Spacing of plain images that hold none (e.g. 0.1 for
                ISBI); required when `images` holds such files.
            batch_size: int >= 1. Image files per `predict_image` request.

        Returns:
            list of `keraslm.prediction.Prediction`, one per image, in order.
        """
        from keraslm.io import Image, read_image_header

        if not (isinstance(batch_size, int) and batch_size >= 1):
            raise KeraslmError(f"`batch_size` must be an int >= 1. Received: batch_size={batch_size!r}")
        if isinstance(images, (str, os.PathLike, Image)):
            images = [images]
        image_ids = input_image_ids(images)
        check_plain_image_spacing(images, spacing, self.spec)
        names = tuple(self.spec.landmark_names)
        ndim = self.spec.ndim
        results = [None] * len(images)
        files = []  # (position, path, header) of images sent as bytes.
        for index, item in enumerate(images):
            path = None if isinstance(item, Image) else os.fspath(item)
            if ndim == 2 and path and _graph_decodes(path):
                files.append((index, path, read_image_header(path, spacing=spacing)))
                continue
            image_id, path, image = load_input_image(item, index, ndim, spacing, image_ids[index])
            sent = in_graph_frame(image, self._takes_any_orientation)
            outputs = in_image_frame(
                _outputs(self.transport(self.path, array_request_body(sent)), None, OUTPUTS,
                         OPTIONAL_OUTPUTS), image, sent)
            results[index] = _prediction(image_id, path, names, outputs, ndim)
        for start in range(0, len(files), batch_size):
            batch = files[start:start + batch_size]
            body = image_request_body([path for _, path, _ in batch],
                                      [header.spacing for _, _, header in batch])
            outputs = _outputs(self.transport(self.path, body), len(batch), OUTPUTS,
                               OPTIONAL_OUTPUTS)
            for n, (index, path, _) in enumerate(batch):
                row = {key: value[n] for key, value in outputs.items()}
                results[index] = _prediction(image_ids[index], path, names, row, ndim)
        return results


def _prediction(image_id, path, names, outputs, ndim):
    """A `Prediction` from one image's answer of an image signature; an answer of another
    shape than `(L, ndim)` points and `(L,)` values is an error."""
    values = {}
    for key in OUTPUTS + OPTIONAL_OUTPUTS:
        if key not in outputs:
            continue
        value = np.asarray(outputs[key], np.float64)
        shape = (len(names), ndim) if key.startswith("landmarks_") else (len(names),)
        if value.shape == (1, *shape):  # An unbatched answer in row format: one row.
            value = value[0]
        if value.shape != shape:
            raise KeraslmError(
                f"the TF Serving response answers {key} of shape {value.shape} per image; the "
                f"model has {len(names)} landmarks in {ndim}D")
        values[key] = value
    optional = {key: values[key] for key in OPTIONAL_OUTPUTS if key in values}
    return Prediction(image_id, path, names, values["landmarks_mm"], values["landmarks_index"],
                      values["confidence"], **optional)
