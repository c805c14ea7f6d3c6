"""Client helpers for TF Serving's REST API: image file -> `:predict` request -> mm landmarks.

Current exports answer from the image itself (`keraslm.export`: signatures `predict_image` and
`predict_array`), so `ServingClient` is thin: a PNG / JPEG / BMP file goes as its bytes,

    {"signature_name": "predict_image",
     "instances": [{"image_bytes": {"b64": "<base64 of the file>"}, "spacing": [sx, sy]}]}

and any other image (DICOM, NIfTI, TIFF, an `Image`) is read with `keraslm.io` and goes as its
array and geometry, one image per request,

    {"signature_name": "predict_array",
     "inputs": {"image": <array>, "spacing": [...], "origin": [...], "direction": [[...]]}}

and the answer's `landmarks_index`, `landmarks_mm` and `confidence` become the same
`keraslm.inference.Prediction` objects `keraslm.predict` returns. Preprocessing, network, local
stage and mapping back all run in the served graph.

Exports of earlier keraslm versions (grid-level signatures only), or `signature_name="landmarks"`
/ `"grid_heatmaps"`, use the grid-level protocol below.

The grid-level signatures take images already on the model's network
grid and answers landmarks in grid index units `(x, y[, z])`. The client does the rest, exactly
as `keraslm.inference.predict`: it reads the image (`keraslm.io`), normalises and resamples it
onto the grid from the model metadata (`assets/keraslm.json` of the export), remembers the
placement, and maps the answered points back:

    grid index --placement--> original image index --image.index_to_physical--> mm (LPS)

REST request bodies (TF Serving, `POST /v1/models/<name>[/versions/<v>]:predict`):

    {"signature_name": "landmarks", "instances": [<grid image (*grid_shape, 1) as nested lists>]}
    {"signature_name": "grid_heatmaps", "inputs": {"images": [<grid image>, ...]}}

    {"signature_name": "refine", "inputs": {"images": [<fine grid image>], "centres": [...]}}

The third exists in a coarse-to-fine export (`keraslm-export ... --refine`): after the
`landmarks` answer, the client puts each image onto the local stage's fine grid
(`metadata["refine"]`), maps the global estimates there and asks `refine` for the refined
points, which go back through the fine grid's placement.

Row format ("instances") answers `{"predictions": [{"landmarks": ..., "confidence": ...}, ...]}`
(one object per image); columnar format ("inputs") answers
`{"outputs": {"landmarks": [...], "confidence": [...]}}`. Both are read by `parse_response`.

The transport is pluggable: any `transport(path, body) -> response` callable with `path` like
`/v1/models/hand:predict` and `body` / `response` JSON-compatible dicts; `http_transport` posts
to a TF Serving server with urllib.
"""
import dataclasses
import json
import os
import urllib.error
import urllib.request

import numpy as np

from keraslm.calibration import blend_stages, local_weight_of
from keraslm.errors import KeraslmError
from keraslm.inference import (
    Prediction,
    check_metadata,
    check_plain_image_spacing,
    check_storage_orientation,
    input_image_ids,
    load_input_image,
)
from keraslm.files import read_json
from keraslm.preprocessing import GridSpec

SIGNATURES = ("landmarks", "grid_heatmaps")
IMAGE_SIGNATURES = ("predict_image", "predict_array")
IMAGE_OUTPUTS = ("landmarks_index", "landmarks_mm", "confidence")
#: Image-signature outputs of newer exports (expected_error_mm: calibrated models only).
OPTIONAL_IMAGE_OUTPUTS = ("spread_mm", "expected_error_mm")
FORMATS = ("instances", "inputs")
#: Files the `predict_image` signature decodes itself (sent as bytes).
BYTES_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")


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


def load_metadata(path):
    """Model metadata from a SavedModel version folder (its `assets/keraslm.json`) or a JSON
    file (`keraslm.json` of an export, or `model.json` of a training run).

    Args:
        path: str. folder or file.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "assets", "keraslm.json")
    return check_metadata(read_json(path, f"{path}: no model metadata file"), path)


@dataclasses.dataclass
class PreparedImage:
    """One image on the network grid, with what maps its answer back.

    Args:
        image_id: str. File name without extension (or `image<k>`), unique among the images
            prepared together (`keraslm.inference.input_image_ids`).
        image_path: str or None.
        grid_image: np.ndarray `(*grid_shape, 1)` float32. The request's input.
        placement: keraslm.preprocessing.GridPlacement. Grid index -> original image index.
        header: keraslm.io.Image. The original image's geometry.
        fine_image, fine_placement: the same on the local stage's fine grid (cascade exports
            only, else None).
    """

    image_id: str
    image_path: str
    grid_image: np.ndarray
    placement: object
    header: object
    fine_image: np.ndarray = None
    fine_placement: object = None


def prepare_images(images, metadata, spacing=None):
    """Reads images and puts them on the model's grid, as `keraslm.inference.predict` does.

    Args:
        images: sequence of str paths or `keraslm.io.Image`s (one path or Image allowed).
        metadata: dict. the model metadata (`load_metadata`).
        spacing: float or sequence or None. spacing of plain images (PNG/JPEG) that hold none;
            required when `images` holds such files
            (`keraslm.inference.check_plain_image_spacing`).

    Returns:
        list of PreparedImage.
    """
    from keraslm.io import Image
    from keraslm.preprocessing import prepare_image

    metadata = check_metadata(metadata, "metadata")
    grid = GridSpec(tuple(metadata["grid_shape"]), tuple(metadata["grid_spacing"]))
    if isinstance(images, (str, os.PathLike, Image)):
        images = [images]
    image_ids = input_image_ids(images)
    check_plain_image_spacing(images, spacing, metadata)
    prepared = []
    for index, item in enumerate(images):
        image_id, path, image = load_input_image(item, index, grid.ndim, spacing, image_ids[index])
        check_storage_orientation(image, metadata, path or image_id)
        array, placement = prepare_image(image, grid, metadata["normalization"])
        fine_array = fine_placement = None
        if "refine" in metadata:  # A coarse-to-fine export: also the local stage's fine grid.
            local = metadata["refine"]
            fine_grid = GridSpec(tuple(local["grid_shape"]), tuple(local["grid_spacing"]))
            fine_array, fine_placement = prepare_image(image, fine_grid, local["normalization"])
            fine_array = np.asarray(fine_array, np.float32)[..., np.newaxis]
        prepared.append(PreparedImage(image_id, path,
                                      np.asarray(array, np.float32)[..., np.newaxis], placement,
                                      image.header(), fine_array, fine_placement))
    return prepared


def refine_request_body(prepared, predictions, request_format="inputs"):
    """The body of the `refine` request of a coarse-to-fine export: the images on the fine grid
    and the global stage's estimates (`predictions`, from `parse_response`) mapped onto it."""
    if request_format not in FORMATS:
        raise KeraslmError(f"`request_format` must be one of {FORMATS}. Received: "
                           f"request_format={request_format!r}")
    if any(item.fine_placement is None for item in prepared):
        raise KeraslmError("these images were prepared without a local stage (the metadata has "
                           "no 'refine' entry)")
    images = [item.fine_image.tolist() for item in prepared]
    centres = [item.fine_placement.image_index_to_grid(p.points_index).tolist()
               for item, p in zip(prepared, predictions)]
    if request_format == "instances":
        return {"signature_name": "refine", "instances": [
            {"images": image, "centres": centre} for image, centre in zip(images, centres)]}
    return {"signature_name": "refine", "inputs": {"images": images, "centres": centres}}


def parse_refine_response(response, prepared, predictions, local_weight=None):
    """Predictions with the refined points (and the local stage's confidence) of a `refine`
    response; with `local_weight` (a blending calibration's) each point is the per-landmark
    blend of the refined and the global estimate, as the export's image signatures answer."""
    outputs = _outputs(response, len(prepared))
    refined = []
    for item, prediction, points_fine, peaks in zip(prepared, predictions, outputs["landmarks"],
                                                    outputs["confidence"]):
        points_index = item.fine_placement.grid_to_image_index(points_fine)
        if local_weight is not None:
            points_index = np.asarray(blend_stages(np.asarray(prediction.points_index, np.float64),
                                                   np.asarray(points_index, np.float64), local_weight))
        refined.append(dataclasses.replace(
            prediction, points_mm=item.header.index_to_physical(points_index),
            points_index=points_index, confidence=np.asarray(peaks)))
    return refined


def request_body(prepared, signature_name="landmarks", request_format="instances"):
    """The JSON body of a TF Serving REST `:predict` request.

    Args:
        prepared: sequence of PreparedImage (from `prepare_images`).
        signature_name: str. "landmarks" (coordinates and confidences) or "grid_heatmaps"
            (also the heatmaps).
        request_format: str. "instances" (row format) or "inputs" (columnar format).

    Returns:
        dict.
    """
    if signature_name not in SIGNATURES:
        raise KeraslmError(
            f"`signature_name` must be one of {SIGNATURES}. Received: "
            f"signature_name={signature_name!r}")
    if request_format not in FORMATS:
        raise KeraslmError(
            f"`request_format` must be one of {FORMATS}. Received: "
            f"request_format={request_format!r}")
    if len(prepared) == 0:
        raise KeraslmError("`prepared` must hold at least one image. Received: 0 images")
    images = [item.grid_image.tolist() for item in prepared]
    if request_format == "instances":
        return {"signature_name": signature_name, "instances": images}
    return {"signature_name": signature_name, "inputs": {"images": images}}


def _outputs(response, count, keys=("landmarks", "confidence"), optional=()):
    """`{"landmarks": (count, L, ndim), "confidence": (count, L)}` (or the given `keys`, and
    those of `optional` the answer holds) from either REST format; `count` None: an unbatched
    answer, not counted."""
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
        present = [key for key in optional if rows and all(key in row for row in rows)]
        outputs = {key: [row.get(key) for row in rows] for key in list(keys) + present}
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


def parse_response(response, prepared, metadata):
    """Turns a `:predict` response into one `keraslm.inference.Prediction` per image.

    Args:
        response: dict. the decoded JSON response (row or columnar format).
        prepared: sequence of PreparedImage. the images of the request, in order.
        metadata: dict. the model metadata.

    Returns:
        list of Prediction with `points_mm` (LPS), `points_index` and `confidence`.
    """
    outputs = _outputs(response, len(prepared))
    names = tuple(metadata["landmark_names"])
    ndim = int(metadata["ndim"])
    if outputs["landmarks"].shape[1:] != (len(names), ndim):
        raise KeraslmError(
            f"the TF Serving response has landmarks of shape {outputs['landmarks'].shape[1:]} per "
            f"image; the metadata says ({len(names)}, {ndim})")
    predictions = []
    for item, points_grid, peaks in zip(prepared, outputs["landmarks"], outputs["confidence"]):
        points_index = item.placement.grid_to_image_index(points_grid)
        predictions.append(Prediction(
            item.image_id, item.image_path, names, item.header.index_to_physical(points_index),
            points_index, np.asarray(peaks)))
    return predictions


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
                return json.loads(answer.read().decode("utf-8"))
        except urllib.error.HTTPError as error:
            detail = error.read().decode("utf-8", "replace")
            raise KeraslmError(f"{url}: HTTP {error.code}: {detail}") from None
        except urllib.error.URLError as error:
            raise KeraslmError(f"{url}: {error.reason}") from None

    return transport


class ServingClient:
    """Finds landmarks with a model served by TF Serving.

    Args:
        model_name: str. the served model name (`MODEL_NAME` of the container).
        metadata: dict or str. the model metadata, or a path for `load_metadata` (the exported
            version folder or its `assets/keraslm.json`).
        version: int or None. a fixed model version; None = the newest the server has.
        signature_name: str. "landmarks" (default, small responses) or "grid_heatmaps".
        request_format: str. "instances" or "inputs".
        transport: callable(path, body) -> response dict, or None for `http_transport(host, port)`.
        host: str. used by the default transport.
        port: int. used by the default transport.

    Examples:
    >>> client = ServingClient("hand", "saved_models/hand/1")
    >>> prediction = client.predict(["image.png"], spacing=0.1)[0]
    >>> prediction.points_mm                     # (num_landmarks, 2), physical mm
    """

    def __init__(self, model_name, metadata, version=None, signature_name=None,
                 request_format="instances", transport=None, host="localhost", port=8501):
        if not (isinstance(model_name, str) and model_name and "/" not in model_name):
            raise KeraslmError(f"`model_name` must be a non-empty name without '/'. Received: "
                               f"model_name={model_name!r}")
        if version is not None and not (isinstance(version, int) and not isinstance(version, bool)
                                        and version >= 1):
            raise KeraslmError(f"`version` must be an int >= 1 or None. Received: version={version!r}")
        if signature_name not in (None,) + SIGNATURES:
            raise KeraslmError(f"`signature_name` must be None (the image signatures) or one "
                               f"of {SIGNATURES}. Received: signature_name={signature_name!r}")
        if request_format not in FORMATS:
            raise KeraslmError(f"`request_format` must be one of {FORMATS}. Received: "
                               f"request_format={request_format!r}")
        self.model_name = model_name
        self.metadata = (check_metadata(metadata, "metadata") if isinstance(metadata, dict)
                         else load_metadata(metadata))
        self.version = version
        exported = self.metadata.get("saved_model", {}).get("signatures", {})
        # None: the image signatures where the export has them, else the grid-level protocol.
        self.image_signatures = signature_name is None and "predict_array" in exported
        self.signature_name = signature_name or "landmarks"
        if (not self.image_signatures and exported
                and self.signature_name not in exported):
            raise KeraslmError(
                f"the export has no {self.signature_name!r} signature (it has "
                f"{sorted(exported)}; an ensemble's export answers whole images only); use "
                "signature_name=None")
        self.request_format = request_format
        self.transport = transport or http_transport(host, port)

    @property
    def path(self):
        """The REST path, `/v1/models/<name>[/versions/<v>]:predict`."""
        version = "" if self.version is None else f"/versions/{self.version}"
        return f"/v1/models/{self.model_name}{version}:predict"

    def predict(self, images, spacing=None, batch_size=4):
        """Landmarks of images, one request per batch.

        Args:
            images: sequence of str paths or `keraslm.io.Image`s.
            spacing: float or None. spacing of plain images that hold none (e.g. 0.1 for ISBI);
                required when `images` holds such files.
            batch_size: int >= 1. images per request.

        Returns:
            list of `keraslm.inference.Prediction`, one per image, in order. For a
            coarse-to-fine export each batch takes two requests (`landmarks`, then `refine`).
        """
        if not (isinstance(batch_size, int) and batch_size >= 1):
            raise KeraslmError(f"`batch_size` must be an int >= 1. Received: batch_size={batch_size!r}")
        if self.image_signatures:
            return self._predict_images(images, spacing, batch_size)
        prepared = prepare_images(images, self.metadata, spacing=spacing)
        predictions = []
        for start in range(0, len(prepared), batch_size):
            batch = prepared[start:start + batch_size]
            body = request_body(batch, self.signature_name, self.request_format)
            answers = parse_response(self.transport(self.path, body), batch, self.metadata)
            if "refine" in self.metadata:  # Coarse-to-fine: a second request per batch.
                body = refine_request_body(batch, answers, self.request_format)
                answers = parse_refine_response(self.transport(self.path, body), batch, answers,
                                                local_weight_of(self.metadata))
            predictions += answers
        return predictions

    def _predict_images(self, images, spacing, batch_size):
        """One `predict_image` request per batch of PNG / JPEG / BMP files, one `predict_array`
        request per other image; the answers as `Prediction`s."""
        from keraslm.io import Image, read_image_header

        if isinstance(images, (str, os.PathLike, Image)):
            images = [images]
        image_ids = input_image_ids(images)
        check_plain_image_spacing(images, spacing, self.metadata)
        names = tuple(self.metadata["landmark_names"])
        ndim = int(self.metadata["ndim"])
        results = [None] * len(images)
        files = []  # (position, path, spacing) of images sent as bytes.
        for index, item in enumerate(images):
            path = None if isinstance(item, Image) else os.fspath(item)
            if ndim == 2 and path and path.lower().endswith(BYTES_EXTENSIONS):
                header = read_image_header(path, spacing=spacing)  # Checks the file, no decoding.
                check_storage_orientation(header, self.metadata, path)
                files.append((index, path, header))
                continue
            image_id, path, image = load_input_image(item, index, ndim, spacing, image_ids[index])
            check_storage_orientation(image, self.metadata, path or image_id)
            outputs = _outputs(self.transport(self.path, array_request_body(image)), None,
                               IMAGE_OUTPUTS, OPTIONAL_IMAGE_OUTPUTS)
            results[index] = _prediction(image_id, path, names, outputs, header=image)
        for start in range(0, len(files), batch_size):
            batch = files[start:start + batch_size]
            body = image_request_body([path for _, path, _ in batch],
                                      [header.spacing for _, _, header in batch])
            outputs = _outputs(self.transport(self.path, body), len(batch), IMAGE_OUTPUTS,
                               OPTIONAL_IMAGE_OUTPUTS)
            for n, (index, path, header) in enumerate(batch):
                row = {key: value[n] for key, value in outputs.items()}
                results[index] = _prediction(image_ids[index], path, names, row, header)
        return results


def _prediction(image_id, path, names, outputs, header):
    """A `Prediction` from one image's answer of an image signature."""
    points_index = np.asarray(outputs["landmarks_index"], np.float64).reshape(len(names), -1)
    points_mm = np.asarray(outputs["landmarks_mm"], np.float64).reshape(len(names), -1)
    optional = {key: np.asarray(outputs[key], np.float64).reshape(len(names))
                for key in OPTIONAL_IMAGE_OUTPUTS if key in outputs}
    return Prediction(image_id, path, names, points_mm, points_index,
                      np.asarray(outputs["confidence"], np.float64).reshape(len(names)), **optional)
