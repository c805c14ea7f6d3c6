"""Export a trained detector as a TensorFlow SavedModel for TF Serving.

TF-only edge: this module builds `tf.function` signatures and writes SavedModels.

Layout. TF Serving serves `<base>/<integer version>/`; `export_saved_model` writes such a
version folder through a hidden temporary folder beside it that is renamed into place, so a
server watching `<base>` never sees half a model:

    <base>/<version>/saved_model.pb
    <base>/<version>/variables/...
    <base>/<version>/assets/keraslm.json     the detector's spec (`keraslm.spec`) and the signatures

Signatures: each runs the prediction graph (`keraslm.prediction.graph.image_to_landmarks`) -
preprocessing, every stage, the mapping back - so a client sends an image and gets millimetres:

    predict_image   (2D) image_bytes string (batch,) PNG / JPEG / BMP files,
                    spacing float32 (batch, 2) mm per pixel along x, y
    predict_array   image float32 (H, W) / (D, H, W), spacing (ndim,), origin (ndim,) LPS mm of
                    index 0, direction (ndim, ndim) (columns: the index axes' unit directions)
    serving_default predict_image for 2D detectors, predict_array for 3D

    outputs: landmarks_index (L, ndim) original image index, landmarks_mm (L, ndim) LPS mm,
             confidence (L,), spread_mm (L,), second_peak (L,), expected_error_mm (L,) for a
             calibrated detector
             (predict_image: one row per image)

A wrong rank or dtype is rejected by the signature, NaN / Inf pixels, a non-positive spacing,
a singular direction, an image larger than the field of view or stored otherwise than the
training images by a check in the graph: each an InvalidArgument error, no crash.

A plain TensorFlow process (no keraslm) reads the export with `tf.saved_model.load(path)`, the
landmark names as `loaded.landmark_names.numpy()` (bytes) and the spec JSON as
`loaded.metadata_json.numpy()`.
"""
import json
import os
import tempfile

import numpy as np
import tensorflow as tf

from keraslm.errors import KeraslmError
from keraslm.files import atomic_folder, check_output_folder
from keraslm.prediction import LandmarkDetector, decode_image_bytes
from keraslm.prediction.graph import output_names
from keraslm.prediction.predictors import SPEC_ASSET, read_saved_model_spec, saved_model_versions

SIGNATURES = ("predict_image", "predict_array", "serving_default")


class _LandmarkModule(tf.Module):
    """The exported object: the networks' variables, the spec and the signatures.

    The networks are held in the signature functions' closure, not as attributes: the saved
    object graph then holds the plain tf.Variables the functions capture (as
    `keras.export.ExportArchive` does), which TF1-style loaders (TF Serving, saved_model_cli)
    need to restore them.
    """

    def __init__(self, detector, asset_json, asset_path):
        super().__init__(name="keraslm_landmarks")
        spec = detector.spec
        self.landmark_names = tf.Variable(
            [str(name) for name in spec.landmark_names], trainable=False, dtype=tf.string,
            name="landmark_names")
        self.metadata_json = tf.Variable(asset_json, trainable=False, dtype=tf.string,
                                         name="metadata_json")
        self.metadata_file = tf.saved_model.Asset(asset_path)
        ndim = spec.ndim
        locate = detector.locate_function()
        self.concrete_signatures = {}
        self.predict_array = tf.function(
            _array_function(locate, ndim), autograph=False, input_signature=[
                tf.TensorSpec([None] * ndim, tf.float32, name="image"),
                tf.TensorSpec([ndim], tf.float32, name="spacing"),
                tf.TensorSpec([ndim], tf.float32, name="origin"),
                tf.TensorSpec([ndim, ndim], tf.float32, name="direction")])
        self.concrete_signatures["predict_array"] = self.predict_array.get_concrete_function()
        if ndim == 2:
            self.predict_image = tf.function(
                _image_function(locate, spec.num_landmarks, output_names(spec)), autograph=False,
                input_signature=[
                    tf.TensorSpec([None], tf.string, name="image_bytes"),
                    tf.TensorSpec([None, 2], tf.float32, name="spacing")])
            self.concrete_signatures["predict_image"] = self.predict_image.get_concrete_function()
        self.concrete_signatures["serving_default"] = self.concrete_signatures[
            "predict_image" if ndim == 2 else "predict_array"]
        self._captured_variables = [
            v for signature in self.concrete_signatures.values() for v in signature.variables]


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
    index and LPS mm (see `keraslm.prediction.graph.image_to_landmarks`)."""

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


def _signature_description(spec):
    """What the asset says of the signatures (for people reading it; clients need nothing)."""
    outputs = list(output_names(spec))
    description = {
        "serving_default": "predict_image" if spec.ndim == 2 else "predict_array",
        "outputs": outputs,
        "inputs": {
            "predict_array": "image: float32 (H, W) or (D, H, W); spacing (ndim,) mm per pixel "
                             "along x, y[, z]; origin (ndim,) LPS mm of index 0; direction "
                             "(ndim, ndim), columns = index axes' unit directions"},
        "units": {"landmarks_index": "original image index (x, y[, z]), pixel centres at integers",
                  "landmarks_mm": "physical millimetres (LPS)"},
    }
    if spec.ndim == 2:
        description["inputs"]["predict_image"] = (
            "image_bytes: string (batch,) PNG/JPEG/BMP files; spacing: float32 (batch, 2) mm "
            "per pixel along x, y")
    return description


def check_export_base(base_dir, landmark_names, ndim, name="the model base folder"):
    """Raises a KeraslmError when `base_dir`'s newest version answers other landmarks or
    another image dimension than a model about to be exported into it: TF Serving serves the
    newest version under the base folder's name, so clients asking for those landmarks would
    get others without a word (as when two experiments' runs of the same folder name export
    into `saved_models/<name>`). Nothing to check for a missing or empty base folder.

    Args:
        base_dir: str. The model base folder.
        landmark_names: sequence of str. The new model's, in order.
        ndim: int. The new model's image dimension.
        name: str. What names `base_dir` in the message (e.g. "--export-dir").
    """
    base_dir = os.fspath(base_dir)
    for marker, what in (("saved_model.pb", "a SavedModel version folder"),
                         ("model.keras", "a training run folder"),
                         ("config.json", "a training run folder")):
        if os.path.isfile(os.path.join(base_dir, marker)):
            raise KeraslmError(f"{name} {base_dir} is {what} ({marker}), not a model base "
                               "folder: versions written into it would make it unreadable as "
                               "what it is; choose a base folder such as saved_models/<name>")
    versions = saved_model_versions(base_dir)
    if not versions:
        return
    newest = os.path.join(base_dir, str(versions[-1]))
    try:
        spec = read_saved_model_spec(newest)
    except KeraslmError as error:
        raise KeraslmError(f"{name} {base_dir}: its newest version cannot be read as a keraslm "
                           f"export ({error}); export into another folder") from None
    differences = []
    if spec.ndim != ndim:
        differences.append(f"{spec.ndim}D images, not {ndim}D")
    if tuple(spec.landmark_names) != tuple(landmark_names):
        differences.append(f"landmarks {', '.join(spec.landmark_names[:3])}"
                           f"{', ...' if len(spec.landmark_names) > 3 else ''} "
                           f"({len(spec.landmark_names)}), not {', '.join(landmark_names[:3])}"
                           f"{', ...' if len(landmark_names) > 3 else ''} ({len(landmark_names)})")
    if differences:
        raise KeraslmError(
            f"{name} {base_dir}: its newest version {versions[-1]} is another model "
            f"({'; '.join(differences)}); TF Serving would serve the new export under the same "
            "name to clients of that one: export into another folder")


def export_saved_model(detector, base_dir, version=None):
    """Writes a TF Serving version folder `base_dir/<version>/` (see the module docstring).

    Args:
        detector: keraslm.prediction.LandmarkDetector with at least one global stage (a
            coarse-to-fine model or an ensemble is one detector:
            `keraslm.prediction.combine_detectors`). Its networks must accept any spatial size
            (None); they are exported to compute in float32 whatever precision they trained in.
        base_dir: str. The model base folder TF Serving watches.
        version: int >= 1 or None. None: one above the highest version in `base_dir`.

    Returns:
        str. The written version folder.

    Raises:
        KeraslmError: a local stage alone, a network that does not take one-channel images of
            any size, an existing version (versions are never overwritten), a base folder whose
            newest version answers other landmarks (`check_export_base`), or an output folder
            that cannot be written.
    """
    from keraslm.precision import with_precision

    if not isinstance(detector, LandmarkDetector):
        raise KeraslmError("`detector` must be a keraslm.prediction.LandmarkDetector. Received: "
                           f"{type(detector).__name__}")
    spec = detector.spec
    if spec.is_local_only:
        raise KeraslmError("a local stage is not exported alone: export it with its global "
                           "model (keraslm-export GLOBAL BASE_DIR --refine LOCAL)")
    ndim = spec.ndim
    for net in list(detector.networks) + list(detector.local_networks):
        input_shape = tuple(net.input_shape)
        if len(input_shape) != ndim + 2 or input_shape[-1] != 1:
            raise KeraslmError(
                f"a network must take one-channel {ndim}D images (batch, "
                f"{', '.join(['n'] * ndim)}, 1) as the spec says. Received: "
                f"input_shape={input_shape}")
        if any(n is not None for n in input_shape[1:-1]):
            raise KeraslmError(
                "a network must accept any spatial size (None) for a serving export. Received: "
                f"input_shape={input_shape}")
    detector = LandmarkDetector(spec, [with_precision(n, "float32") for n in detector.networks],
                                [with_precision(n, "float32") for n in detector.local_networks])
    base_dir = os.path.abspath(os.fspath(base_dir))
    check_output_folder(base_dir, "the model base folder")
    check_export_base(base_dir, spec.landmark_names, spec.ndim)
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
    asset = {**spec.to_json(), "saved_model": _signature_description(spec)}
    with tempfile.TemporaryDirectory() as scratch:
        asset_path = os.path.join(scratch, SPEC_ASSET)
        with open(asset_path, "w", encoding="utf-8") as handle:
            json.dump(asset, handle, indent=2)
        module = _LandmarkModule(detector, json.dumps(asset, sort_keys=True), asset_path)
        created = not os.path.isdir(base_dir)
        try:
            with atomic_folder(path) as temporary:
                tf.saved_model.save(module, temporary, signatures=module.concrete_signatures)
        except BaseException:
            if created and os.path.isdir(base_dir) and not os.listdir(base_dir):
                os.rmdir(base_dir)  # A failed first export leaves no empty base folder.
            raise
    return path
