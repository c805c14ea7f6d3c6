"""Export a trained heatmap network as a TensorFlow SavedModel for TF Serving.

TF-only edge: this module builds `tf.function` signatures and writes / reads SavedModels.

Layout. TF Serving serves `<base>/<integer version>/`; `export_saved_model` writes such a
version folder through a hidden temporary folder beside it that is renamed into place, so a
server watching `<base>` never sees half a model:

    <base>/<version>/saved_model.pb
    <base>/<version>/variables/...
    <base>/<version>/assets/keraslm.json     the model metadata (`keraslm.inference`)

Signatures (both take the input `images`, float32 `(batch, *spatial, 1)` with every spatial
size None, i.e. any size; a wrong rank, channel count or dtype is rejected by the signature's
TensorSpec, and NaN / Inf pixels by a numerics check, each an error and no crash):

    serving_default  -> heatmaps   float32 (batch, *(spatial // output_stride), num_landmarks)
                        landmarks  float32 (batch, num_landmarks, ndim)
                        confidence float32 (batch, num_landmarks)
    landmarks        -> landmarks, confidence (small responses)

Inside the graph each spatial size `n` is padded at its end with 0.0 up to the next multiple
of the network's `size_divisor`, the network runs, and the heatmaps are cropped to the first
`n // output_stride` pixels per axis: heatmap pixel `j` covers input pixels
`[s*j, s*j + s - 1]` (s = output_stride), so only pixels that lie wholly on the unpadded image
are kept. When `n` is not a multiple of s, the last `n % s` input rows / columns have no
heatmap pixel of their own (a landmark there is still found, at the border of the crop).

`landmarks` are `(x, y[, z])` in INPUT grid index units (pixel centres at integers), sub-pixel,
decoded exactly as `keraslm.ops.heatmaps.HeatmapCodec.decode` does with the metadata's
`decode_method` and `sigma`; `confidence` is the heatmap peak. The inputs are images already
on the model's network grid (normalised and resampled as in training); mapping the landmarks
back to the original image and to millimetres is the client's part (`keraslm.serving`,
`keraslm.inference.predict`), through the grid placement and the grid spacing in the metadata.

A plain TensorFlow process (no keraslm) reads the export with `tf.saved_model.load(path)`:
`loaded.signatures["landmarks"](images=...)`, the landmark names as
`loaded.landmark_names.numpy()` (bytes), the metadata JSON as `loaded.metadata_json.numpy()`
and its asset file as `loaded.metadata_file.asset_path`.
"""
import json
import os
import re
import tempfile

import numpy as np
import tensorflow as tf

from keraslm.errors import KeraslmError
from keraslm.detector import (
    Predictor,
    decode_image_bytes,
    image_to_landmarks,
    locate_on_grid,
    refine_function,
)
from keraslm.metadata import check_metadata
from keraslm.files import atomic_folder, check_output_folder, read_json
from keraslm.ops.heatmaps import METHODS, HeatmapCodec

METADATA_ASSET = "keraslm.json"
SIGNATURES = ("serving_default", "landmarks")
_VERSION = re.compile(r"^[0-9]+$")


def saved_model_versions(base_dir):
    """Sorted integer versions found as numeric sub-folders of `base_dir` (empty if none).

    Args:
        base_dir: str. a TF Serving model base folder.
    """
    base_dir = os.fspath(base_dir)
    if not os.path.isdir(base_dir):
        return []
    return sorted(
        int(name) for name in os.listdir(base_dir)
        if _VERSION.match(name) and os.path.isdir(os.path.join(base_dir, name))
    )


class _LandmarkModule(tf.Module):
    """The exported object: the network's variables, the metadata and two signatures.

    The network is held in the signature functions' closure, not as an attribute: the saved
    object graph then holds the plain tf.Variables the functions capture (as
    `keras.export.ExportArchive` does), which TF1-style loaders (TF Serving, saved_model_cli)
    need to restore them.
    """

    def __init__(self, network, metadata, metadata_path, local_network=None, ensemble=None):
        """`ensemble`, if given: `(networks, metadatas, local_networks, local_metadatas)` of an
        ensemble (lists); `network` / `local_network` are then its first members and the
        grid-level signatures are made only for a stage of one network."""
        super().__init__(name="keraslm_landmarks")
        self.landmark_names = tf.Variable(
            [str(name) for name in metadata["landmark_names"]], trainable=False,
            dtype=tf.string, name="landmark_names",
        )
        self.metadata_json = tf.Variable(
            json.dumps(metadata, sort_keys=True), trainable=False, dtype=tf.string,
            name="metadata_json",
        )
        self.metadata_file = tf.saved_model.Asset(metadata_path)
        ndim = int(metadata["ndim"])
        spec = tf.TensorSpec((None,) * (ndim + 1) + (1,), tf.float32, name="images")
        local = metadata.get("refine")
        if ensemble is None:
            ensemble = ([network], [metadata], [] if local_network is None else [local_network],
                        [] if local is None else [local])
        networks, metadatas, local_networks, local_metadatas = ensemble
        self.concrete_signatures = {}
        if len(networks) == 1:
            serve = _serving_function(network, metadata)
            self.serve = tf.function(serve, input_signature=[spec], autograph=False)
            self.landmarks = tf.function(
                lambda images: {key: value for key, value in serve(images).items()
                                if key != "heatmaps"},
                input_signature=[spec], autograph=False)
            self.concrete_signatures["grid_heatmaps"] = self.serve.get_concrete_function()
            self.concrete_signatures["landmarks"] = self.landmarks.get_concrete_function()
        locate = image_to_landmarks(
            networks, metadatas, local_networks or None, local_metadatas or None)
        num_landmarks = len(metadata["landmark_names"])
        self.predict_array = tf.function(
            _array_function(locate, ndim), autograph=False, input_signature=[
                tf.TensorSpec([None] * ndim, tf.float32, name="image"),
                tf.TensorSpec([ndim], tf.float32, name="spacing"),
                tf.TensorSpec([ndim], tf.float32, name="origin"),
                tf.TensorSpec([ndim, ndim], tf.float32, name="direction")])
        self.concrete_signatures["predict_array"] = self.predict_array.get_concrete_function()
        if ndim == 2:
            self.predict_image = tf.function(
                _image_function(locate, num_landmarks, _locate_keys(metadata)), autograph=False,
                input_signature=[
                    tf.TensorSpec([None], tf.string, name="image_bytes"),
                    tf.TensorSpec([None, 2], tf.float32, name="spacing")])
            self.concrete_signatures["predict_image"] = self.predict_image.get_concrete_function()
        self.concrete_signatures["serving_default"] = self.concrete_signatures[
            "predict_image" if ndim == 2 else "predict_array"]
        if len(local_networks) == 1:
            fine_spec = tf.TensorSpec((None, *local["grid_shape"], 1), tf.float32, name="images")
            centre_spec = tf.TensorSpec((None, len(local["landmark_names"]), ndim), tf.float32,
                                        name="centres")
            self.refine = tf.function(_refine_function(local_network, local),
                                      input_signature=[fine_spec, centre_spec], autograph=False)
            self.concrete_signatures["refine"] = self.refine.get_concrete_function()
        self._captured_variables = [
            v for signature in self.concrete_signatures.values() for v in signature.variables]


def _refine_function(network, metadata):
    """(images `(batch, *fine grid, 1)`, centres `(batch, L, ndim)` fine grid index) ->
    {"landmarks", "confidence"}: `keraslm.detector.refine_function` per image (static shapes
    inside, any batch size outside)."""
    refine = refine_function(network, metadata)
    ndim = int(metadata["ndim"])

    def serve(images, centres):
        images = tf.debugging.check_numerics(images, "`images` holds NaN or Inf pixels")
        centres = tf.debugging.check_numerics(centres, "`centres` holds NaN or Inf values")

        def one(item):
            image, centre = item
            points, confidence = refine(image[tf.newaxis], centre[tf.newaxis])
            return points[0], confidence[0]

        num_landmarks = len(metadata["landmark_names"])
        points, confidence = tf.map_fn(
            one, (images, centres),
            fn_output_signature=(tf.TensorSpec((num_landmarks, ndim), tf.float32),
                                 tf.TensorSpec((num_landmarks,), tf.float32)))
        return {"landmarks": points, "confidence": confidence}

    return serve


def _as_decimal_float64(values):
    """float32 geometry -> float64 of the shortest decimal that reads back as the same float32
    (0.1f -> 0.1, not 0.10000000149): the value the client meant, so the signatures place the
    image exactly as `keraslm.predict` does with float64 geometry."""
    result = tf.cast(values, tf.float64)
    for digits in (8, 7, 6, 5, 4, 3, 2, 1, 0):  # 1 + digits significant digits, longest first.
        candidate = tf.strings.to_number(
            tf.strings.as_string(values, precision=digits, scientific=True), out_type=tf.float64)
        result = tf.where(tf.equal(tf.cast(candidate, tf.float32), values), candidate, result)
    return result


def _check_geometry(spacing, origin=None, direction=None, name="spacing"):
    """InvalidArgument errors for NaN / non-positive spacing and non-finite geometry."""
    spacing = tf.debugging.check_numerics(spacing, f"`{name}` holds NaN or Inf")
    checks = [tf.debugging.assert_positive(spacing, message=f"`{name}` must be positive mm per pixel")]
    if origin is not None:
        checks.append(tf.debugging.check_numerics(origin, "`origin` holds NaN or Inf"))
        checks.append(tf.debugging.check_numerics(direction, "`direction` holds NaN or Inf"))
        checks.append(tf.debugging.assert_greater(
            tf.abs(tf.linalg.det(tf.cast(direction, tf.float64))), tf.constant(1e-6, tf.float64),
            message="`direction` must be an invertible matrix (columns: unit directions of the "
            "index axes)"))
    return checks


def _array_function(locate, ndim):
    """`predict_array`: one image array of any size with its geometry -> landmarks in original
    index and LPS mm (see `keraslm.detector.image_to_landmarks`)."""

    def serve(image, spacing, origin, direction):
        image = tf.ensure_shape(image, [None] * ndim)
        spacing = tf.ensure_shape(spacing, [ndim])
        origin, direction = tf.ensure_shape(origin, [ndim]), tf.ensure_shape(direction, [ndim, ndim])
        tf.debugging.assert_positive(tf.size(image), message="`image` is empty")
        image = tf.debugging.check_numerics(image, "`image` holds NaN or Inf pixels")
        with tf.control_dependencies(_check_geometry(spacing, origin, direction)):
            outputs = locate(image, _as_decimal_float64(spacing), _as_decimal_float64(origin),
                             _as_decimal_float64(direction))
        return {key: tf.cast(value, tf.float32) for key, value in outputs.items()}

    return serve


def _locate_keys(metadata):
    """The outputs of `keraslm.detector.image_to_landmarks` for this metadata."""
    keys = ["landmarks_index", "landmarks_mm", "confidence", "spread_mm"]
    return keys + (["expected_error_mm"] if metadata.get("calibration") is not None else [])


def _image_function(locate, num_landmarks, keys):
    """`predict_image` (2D): PNG / JPEG / BMP files and their pixel spacing -> landmarks in
    original pixel index and mm, one row per image; images may differ in size."""

    def serve(image_bytes, spacing):
        image_bytes = tf.ensure_shape(image_bytes, [None])
        spacing = tf.ensure_shape(spacing, [None, 2])
        checks = [
            tf.debugging.assert_positive(tf.size(image_bytes),
                                         message="`image_bytes` is empty: send at least one image"),
            tf.debugging.assert_equal(tf.shape(spacing)[0], tf.size(image_bytes), message=(
                "`spacing` needs one row (x, y mm per pixel) per image of `image_bytes`")),
        ] + _check_geometry(spacing)
        with tf.control_dependencies(checks):
            image_bytes = tf.identity(image_bytes)

        def one(item):
            data, pixel_spacing = item
            outputs = locate(decode_image_bytes(data), _as_decimal_float64(pixel_spacing),
                             tf.zeros([2], tf.float64),
                             tf.eye(2, dtype=tf.float64))
            return {key: tf.cast(outputs[key], tf.float32) for key in keys}

        return tf.map_fn(one, (image_bytes, spacing), fn_output_signature={
            key: tf.TensorSpec((num_landmarks, 2) if key.startswith("landmarks_")
                               else (num_landmarks,), tf.float32) for key in keys})

    return serve


def _serving_function(network, metadata):
    """images `(batch, *spatial, 1)` -> {"heatmaps", "landmarks", "confidence"} (see the module
    docstring for the padding and the crop)."""
    ndim = int(metadata["ndim"])
    divisor = int(metadata.get("size_divisor", getattr(network, "size_divisor", 1)))
    stride = int(metadata["output_stride"])
    method = metadata.get("decode_method", "quadratic")
    # decode takes the grid from the heatmaps; any input_shape divisible by the stride will do.
    codec = HeatmapCodec((stride,) * ndim, stride=stride, sigma=metadata["sigma"])

    def serve(images):
        # The signature wrapper of a loaded SavedModel checks the dtype but not the shape.
        images = tf.ensure_shape(images, (None,) * (ndim + 1) + (1,))
        images = tf.debugging.check_numerics(images, "`images` holds NaN or Inf pixels")
        shape = tf.shape(images)
        sizes = [shape[1 + a] for a in range(ndim)]
        padding = [[0, 0]] + [[0, (-n) % divisor] for n in sizes] + [[0, 0]]
        padded = tf.pad(images, padding, constant_values=0.0)
        heatmaps = tf.cast(network(padded, training=False), tf.float32)
        crop = tuple(slice(None, n // stride) for n in sizes)
        heatmaps = heatmaps[(slice(None),) + crop]  # Keeps the static number of landmarks.
        landmarks, confidence = codec.decode(heatmaps, method)
        return {"heatmaps": heatmaps, "landmarks": landmarks, "confidence": confidence}

    return serve


def export_saved_model(network, base_dir, metadata, version=None, local_network=None,
                       local_metadata=None):
    """Writes a TF Serving version folder `base_dir/<version>/` (see the module docstring).

    Args:
        network: keras.Model. a heatmap network from `keraslm.models.build_model` (trained), with
            None spatial input sizes. Exported to compute in float32 whatever precision it was
            trained or loaded in (`keraslm.precision.with_precision`), so any server runs it.
        base_dir: str. the model base folder TF Serving watches, e.g. `saved_models/<name>`.
        metadata: dict. from `keraslm.inference.model_metadata`; stored as `assets/keraslm.json`.
        version: int >= 1 or None. the version to write; default the next integer after the
            existing numeric versions (1 for an empty base folder). An existing version is never
            overwritten.
        local_network, local_metadata: optional. the local stage of a coarse-to-fine model
            (trained with `--crop-shape`, metadata "stage" "local"): exported with it as the
            signature `refine` (inputs `images` on the local stage's fine grid
            `(batch, *local_metadata["grid_shape"], 1)` and `centres` `(batch, L, ndim)`, the
            global estimates in fine grid index units; outputs refined `landmarks` in fine grid
            index units and `confidence`); the metadata then holds the local one under "refine".

    An ensemble: `network` and `metadata` (and / or `local_network` and `local_metadata`) as
    lists, one metadata per network, the first `metadata` holding the calibration. The image
    signatures average the members' points (`keraslm.detector.image_to_landmarks`); the
    grid-level signatures (`grid_heatmaps`, `landmarks`; `refine`) are written only for a stage
    of one network, and the metadata lists every member under "ensemble".

    Returns:
        str, the absolute path of the version folder.

    Raises:
        KeraslmError: bad metadata or version, or the version folder exists.

    Examples:
    >>> path = export_saved_model(network, "saved_models/hand", metadata)   # .../hand/1
    >>> tf.saved_model.load(path).signatures["landmarks"](images=grid_images)
    """
    from keraslm.detector import check_ensemble, ensemble_members

    if (local_network is None) != (local_metadata is None):
        raise KeraslmError("`local_network` and `local_metadata` go together")
    networks, metadatas = ensemble_members(network, metadata, "global")
    local_networks, local_metadatas = ensemble_members(local_network, local_metadata, "local")
    for number, meta in enumerate(metadatas):
        check_metadata(meta, "metadata" if number == 0 else f"metadata[{number}]")
    if metadatas[0].get("stage", "global") != "global":
        raise KeraslmError("`network` must be a whole-image (global) model; export a local stage "
                           "as local_network= together with its global model")
    for number, meta in enumerate(local_metadatas):
        check_metadata(meta, "local_metadata" if number == 0 else f"local_metadata[{number}]")
        if meta.get("stage") != "local" or "crop_shape" not in meta:
            raise KeraslmError("`local_metadata` must describe a local stage (stage 'local', "
                               "crop_shape)")
    check_ensemble(metadatas, local_metadatas)  # Stages, landmarks and dimension agree.
    for meta in metadatas + local_metadatas:
        if meta.get("decode_method", "quadratic") not in METHODS:
            raise KeraslmError(
                f"metadata['decode_method'] must be one of {METHODS}. Received: "
                f"{meta.get('decode_method')!r}")
    from keraslm.precision import with_precision

    networks = [with_precision(net, "float32") for net in networks]
    local_networks = [with_precision(net, "float32") for net in local_networks]
    ndim = int(metadatas[0]["ndim"])
    for net in networks:
        input_shape = tuple(net.input_shape)
        if len(input_shape) != ndim + 2 or input_shape[-1] != 1:
            raise KeraslmError(
                f"`network` must take one-channel {ndim}D images (batch, "
                f"{', '.join(['n'] * ndim)}, 1) as the metadata says. Received: "
                f"network.input_shape={input_shape}")
        if any(n is not None for n in input_shape[1:-1]):
            raise KeraslmError(
                "`network` must accept any spatial size (None) for a serving export. Received: "
                f"network.input_shape={input_shape}")
    base_dir = os.path.abspath(os.fspath(base_dir))
    check_output_folder(base_dir, "the model base folder")
    if version is None:
        version = (saved_model_versions(base_dir) or [0])[-1] + 1
    elif not (isinstance(version, (int, np.integer)) and not isinstance(version, bool)
              and version >= 1):
        raise KeraslmError(f"`version` must be an int >= 1 or None. Received: version={version!r}")
    path = os.path.join(base_dir, str(int(version)))
    if os.path.exists(path):
        raise KeraslmError(
            f"{path} exists; versions are never overwritten. Found versions "
            f"{saved_model_versions(base_dir)}; choose another version (--version, `version=`) or "
            "none for the next")
    metadata = dict(metadatas[0])
    if local_metadatas:
        metadata["refine"] = dict(local_metadatas[0])
    is_ensemble = len(networks) > 1 or len(local_networks) > 1
    if is_ensemble:
        def member(meta):
            return {k: v for k, v in meta.items() if k != "calibration"}

        metadata["ensemble"] = {"global": [member(m) for m in metadatas],
                                "local": [member(m) for m in local_metadatas]}
    image_outputs = ["landmarks_index", "landmarks_mm", "confidence"]
    metadata["saved_model"] = {
        "signatures": {
            "serving_default": image_outputs,
            "predict_array": image_outputs,
            "grid_heatmaps": ["heatmaps", "landmarks", "confidence"],
            "landmarks": ["landmarks", "confidence"],
        },
        "serving_default": "predict_image" if ndim == 2 else "predict_array",
        "inputs": {
            "predict_image": "image_bytes: string (batch,) PNG/JPEG/BMP files; spacing: float32 "
                             "(batch, 2) mm per pixel along x, y",
            "predict_array": "image: float32 (H, W) or (D, H, W); spacing (ndim,) mm per pixel "
                             "along x, y[, z]; origin (ndim,) LPS mm of index 0; direction "
                             "(ndim, ndim), columns = index axes' unit directions",
            "grid_heatmaps/landmarks": "images: float32 (batch, *grid spatial sizes, 1), "
                                       "normalised grid images",
        },
        "units": {
            "landmarks_index": "original image index (x, y[, z]), pixel centres at integers",
            "landmarks_mm": "physical millimetres (LPS)",
            "grid_heatmaps/landmarks": "input grid index (x, y[, z]), pixel centres at integers",
        },
    }
    if ndim == 2:
        metadata["saved_model"]["signatures"]["predict_image"] = image_outputs
    else:
        del metadata["saved_model"]["inputs"]["predict_image"]
    if len(networks) > 1:  # Grid-level signatures exist for a stage of one network only.
        for name in ("grid_heatmaps", "landmarks"):
            del metadata["saved_model"]["signatures"][name]
        del metadata["saved_model"]["inputs"]["grid_heatmaps/landmarks"]
        del metadata["saved_model"]["units"]["grid_heatmaps/landmarks"]
    if len(local_networks) == 1:
        metadata["saved_model"]["signatures"]["refine"] = ["landmarks", "confidence"]
        metadata["saved_model"]["refine_inputs"] = (
            "images: float32 (batch, *refine.grid_shape, 1) on the local stage's fine grid; "
            "centres: float32 (batch, num_landmarks, ndim), global estimates in fine grid index")
    with tempfile.TemporaryDirectory() as scratch:
        metadata_path = os.path.join(scratch, METADATA_ASSET)
        with open(metadata_path, "w", encoding="utf-8") as handle:
            json.dump(metadata, handle, indent=2)
        module = _LandmarkModule(
            networks[0], metadata, metadata_path, local_networks[0] if local_networks else None,
            ensemble=(networks, metadatas, local_networks, local_metadatas))
        with atomic_folder(path) as temporary:
            tf.saved_model.save(module, temporary, signatures=module.concrete_signatures)
    return path


class SavedModelPredictor(Predictor):
    """Runs an exported SavedModel's `landmarks` signature; the interface of
    `keraslm.inference.KerasPredictor` (`.metadata`, `.grid_points`).

    Args:
        path: str. a SavedModel version folder `<base>/<version>/`.
        metadata: dict or None. overrides `assets/keraslm.json`.
    """

    def __init__(self, path, metadata=None):
        self.path = _version_folder(path)
        if metadata is None:
            asset = os.path.join(self.path, "assets", METADATA_ASSET)
            metadata = read_json(
                asset, f"{self.path}: no assets/{METADATA_ASSET} (not a keraslm export); pass "
                "metadata=")
        self.metadata = check_metadata(metadata, self.path)
        self._loaded = tf.saved_model.load(self.path)
        signatures = self._loaded.signatures
        if "landmarks" not in signatures and "predict_array" not in signatures:
            raise KeraslmError(
                f"{self.path}: the SavedModel has neither a 'predict_array' nor a 'landmarks' "
                f"signature (found {sorted(signatures)}); export it with keraslm.export")
        # An ensemble's export has no grid-level signature (its members have their own grids).
        self._landmarks = signatures.get("landmarks")

    def locate(self, image):
        """One `keraslm.io.Image` -> the `Predictor.locate` dict: the export's
        `predict_array` signature (the whole prediction, local stage included), or for an
        export without it (keraslm before the image signatures) the grid-level `landmarks`
        signature with the preprocessing and mapping run here."""
        if "predict_array" in self._loaded.signatures:
            outputs = self._loaded.signatures["predict_array"](
                image=tf.constant(np.asarray(image.array, np.float32)),
                spacing=tf.constant(np.asarray(image.spacing, np.float32)),
                origin=tf.constant(np.asarray(image.origin, np.float32)),
                direction=tf.constant(np.asarray(image.direction, np.float32)))
            found = {key: value.numpy() for key, value in outputs.items()}
            for key in ("landmarks_index", "landmarks_mm"):
                found[key] = found[key].astype(np.float64)
            return found
        return locate_on_grid(self, image)

    def local_stage(self):
        """The exported local stage (`refine` signature) as a predictor, or None; None too
        when the export's `predict_array` signature runs the local stage itself."""
        if "refine" not in self.metadata or "predict_array" in self._loaded.signatures:
            return None
        if "refine" not in self._loaded.signatures:
            raise KeraslmError(f"{self.path}: metadata names a local stage but the SavedModel has "
                               "no 'refine' signature")
        return _SavedModelRefiner(self._loaded.signatures["refine"],
                                  check_metadata(self.metadata["refine"], self.path))

    def grid_points(self, images):
        """`(batch, *grid_shape, 1)` grid images -> (points `(batch, L, ndim)` in grid index,
        confidence `(batch, L)`)."""
        if self._landmarks is None:
            raise KeraslmError(f"{self.path}: an ensemble's export answers whole images only "
                               "(predict_array / predict_image); it has no grid-level signature")
        outputs = self._landmarks(images=tf.constant(np.asarray(images, np.float32)))
        return outputs["landmarks"].numpy(), outputs["confidence"].numpy()


class _SavedModelRefiner(Predictor):
    """The `refine` signature of a cascade export; the interface of a local-stage predictor."""

    def __init__(self, signature, metadata):
        self._refine = signature
        self.metadata = metadata

    def refine(self, images, centres):
        outputs = self._refine(images=tf.constant(np.asarray(images, np.float32)),
                               centres=tf.constant(np.asarray(centres, np.float32)))
        return outputs["landmarks"].numpy(), outputs["confidence"].numpy()


def _version_folder(path):
    """`path` if it is a SavedModel folder, else a KeraslmError that says what it is."""
    path = os.path.abspath(os.fspath(path))
    if not os.path.isdir(path):
        raise KeraslmError(f"{path}: no such SavedModel folder")
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        return path
    versions = saved_model_versions(path)
    if versions:
        found = ", ".join(map(str, versions))
        newest = os.path.join(path, str(versions[-1]))
        raise KeraslmError(
            f"{path} is a SavedModel base folder with versions {found}, not a version folder; "
            f"pass {newest}")
    raise KeraslmError(f"{path}: not a SavedModel folder (no saved_model.pb and no numeric "
                       "version sub-folders)")


def load_saved_model_predictor(path, metadata=None):
    """A predictor for a SavedModel version folder written by `export_saved_model`.

    Args:
        path: str. `<base>/<version>/` (a base folder is refused with the versions it holds).
        metadata: dict or None. overrides the exported `assets/keraslm.json`.

    Returns:
        SavedModelPredictor (`.metadata`, `.locate(image)`, `.grid_points(images)`); for a
        coarse-to-fine export of an earlier keraslm (no `predict_array` signature)
        `.local_stage()` gives its `refine` signature, which `keraslm.inference.load_predictor`
        pairs with it.

    Raises:
        KeraslmError: the folder is missing, a base folder, not a SavedModel or lacks the
            metadata or the `landmarks` signature.
    """
    return SavedModelPredictor(path, metadata)


def _network_from_variables(metadata, variables, source):
    """The Keras network of `metadata["architecture"]` whose weights are `variables` (matched by
    name and shape; the `small` and `paper` presets are tried), or a KeraslmError."""
    from keraslm.models import build_model

    by_name = {v.name.split(":")[0]: v for v in variables}
    for preset in ("small", "paper"):
        network = build_model(metadata["architecture"], int(metadata["ndim"]),
                              len(metadata["landmark_names"]), preset=preset)
        weights = {w.path: w for w in network.weights}
        if set(weights) == set(by_name) and all(
                tuple(weights[n].shape) == tuple(by_name[n].shape) for n in weights):
            for name, weight in weights.items():
                weight.assign(by_name[name].numpy())
            return network
    raise KeraslmError(
        f"{source}: the exported weights do not match the {metadata['architecture']!r} network "
        "of the small or paper preset; export it again from its .keras model instead")


def upgrade_saved_model(path, base_dir, version=None):
    """Re-exports a keraslm SavedModel with the current signatures (image signatures, one
    request for a cascade), with the same weights, as the next version of `base_dir`.

    Args:
        path: str. A version folder written by an earlier keraslm (`landmarks` / `refine`).
        base_dir: str. Model base folder of the new version.

    Returns:
        str, the new version folder.
    """
    predictor = SavedModelPredictor(path)
    if "ensemble" in predictor.metadata or "landmarks" not in predictor._loaded.signatures:
        raise KeraslmError(
            f"{path}: "
            + ("an ensemble's export" if "ensemble" in predictor.metadata else "this export")
            + " has no 'landmarks' signature to take its networks from, and it already has the "
            "image signatures: nothing to upgrade (an ensemble is exported again from its runs: "
            "keraslm-export A,B BASE --refine L,M)")
    metadata = {k: v for k, v in predictor.metadata.items() if k not in ("saved_model", "refine")}
    network = _network_from_variables(
        metadata, predictor._loaded.signatures["landmarks"].variables, path)
    local_network = local_metadata = None
    if "refine" in predictor.metadata:
        local_metadata = dict(predictor.metadata["refine"])
        local_network = _network_from_variables(
            local_metadata, predictor._loaded.signatures["refine"].variables, path)
    return export_saved_model(network, base_dir, metadata, version=version,
                              local_network=local_network, local_metadata=local_metadata)


if __name__ == "__main__":  # The command moved to keraslm.commands; say so instead of doing nothing.
    raise SystemExit("keraslm.export is a library module; run keraslm-export (python -m keraslm export)")
