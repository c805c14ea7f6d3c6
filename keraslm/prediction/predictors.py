"""Predictors: what `keraslm.predict` runs. Each has a `spec` (`keraslm.spec.DetectorSpec`) and
`locate(image)`, which runs the one prediction graph (`keraslm.prediction.graph`) on one
`keraslm.io.Image`:

- `DetectorPredictor`: a `LandmarkDetector` (any number of global and local stages), the graph
  compiled here once per pixel dtype;
- `SavedModelPredictor`: an exported SavedModel's `predict_array` signature (the same graph,
  saved).

`load_predictor` makes one from files, detectors, or lists of them (an ensemble).

TF-only edge: `tf.function`, `tf.saved_model.load`.
"""
import json
import os
import re

import numpy as np
import tensorflow as tf

from keraslm.errors import KeraslmError, ModelFileError
from keraslm.prediction.detector import LandmarkDetector, combine_detectors, load_detector
from keraslm.run_folder import RunFolder
from keraslm.spec import upgrade_spec

#: A SavedModel's asset that holds the spec (`keraslm.export` writes it).
SPEC_ASSET = "keraslm.json"
_VERSION = re.compile(r"^[0-9]+$")


class Predictor:
    """What `keraslm.predict` needs of a model: `spec` and `locate(image) -> dict` of NumPy
    arrays for one `keraslm.io.Image`: `landmarks_index` `(L, ndim)` and `landmarks_mm`
    `(L, ndim)` float64, `confidence`, `spread_mm`, `second_peak` (not from SavedModels exported
    before keraslm gave it) and, for a calibrated model,
    `expected_error_mm` `(L,)` (`keraslm.prediction.graph.image_to_landmarks`). An image the
    model cannot take (larger than its field of view, stored otherwise than its training
    images) raises `tf.errors.InvalidArgumentError` with the reason."""

    spec = None

    def locate(self, image):
        raise NotImplementedError


def _pixels(image):
    pixels = np.asarray(image.array)
    return pixels.astype(np.uint8) if pixels.dtype == bool else pixels


class DetectorPredictor(Predictor):
    """A `LandmarkDetector` run through the prediction graph, compiled once per pixel dtype
    (any image size).

    Args:
        detector: LandmarkDetector.
        precision: str. The networks' compute precision: "float32" (default; the same numbers
            as the float32 SavedModel export), "bfloat16", "float16" or "auto"
            (`keraslm.precision.choose_precision`). Decoding is float32 in every case.
        iterations: int >= 1. Local passes; each centres the crops on the previous estimate.
    """

    def __init__(self, detector, precision="float32", iterations=1):
        from keraslm.precision import choose_precision, with_precision

        if iterations != 1 and not detector.spec.local_stages:
            raise KeraslmError(f"`iterations` ({iterations!r}) counts the passes of a local "
                               "stage; this model has none")
        self.precision = choose_precision(precision)
        self.detector = LandmarkDetector(
            detector.spec, [with_precision(n, self.precision) for n in detector.networks],
            [with_precision(n, self.precision) for n in detector.local_networks])
        self.spec = detector.spec
        self._locate = self.detector.locate_function(iterations)  # Checks the spec's stages.
        self._compiled = {}

    def locate(self, image):
        pixels = _pixels(image)
        if pixels.dtype not in self._compiled:
            ndim = self.spec.ndim
            self._compiled[pixels.dtype] = tf.function(self._locate, input_signature=[
                tf.TensorSpec([None] * ndim, tf.as_dtype(pixels.dtype)),
                tf.TensorSpec([ndim], tf.float64), tf.TensorSpec([ndim], tf.float64),
                tf.TensorSpec([ndim, ndim], tf.float64)])
        outputs = self._compiled[pixels.dtype](
            pixels, np.asarray(image.spacing, np.float64), np.asarray(image.origin, np.float64),
            np.asarray(image.direction, np.float64))
        return {key: value.numpy() for key, value in outputs.items()}


def saved_model_versions(base_dir):
    """Sorted integer versions found as numeric sub-folders of `base_dir` (empty if none)."""
    base_dir = os.fspath(base_dir)
    if not os.path.isdir(base_dir):
        return []
    return sorted(int(name) for name in os.listdir(base_dir)
                  if _VERSION.match(name) and os.path.isdir(os.path.join(base_dir, name)))


def saved_model_folder(path):
    """`path` (absolute) if it is a SavedModel version folder, else a KeraslmError that says
    what it is (a base folder names its newest version)."""
    path = os.path.abspath(os.fspath(path))
    if not os.path.isdir(path):
        raise KeraslmError(f"{path}: no such SavedModel folder")
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        return path
    versions = saved_model_versions(path)
    if versions:
        newest = os.path.join(path, str(versions[-1]))
        raise KeraslmError(
            f"{path} is a SavedModel base folder with versions {', '.join(map(str, versions))}, "
            f"not a version folder; pass {newest}")
    raise KeraslmError(f"{path}: not a SavedModel folder (no saved_model.pb and no numeric "
                       "version sub-folders)")


def graph_takes_any_orientation(path, spec):
    """Whether the prediction graph of the SavedModel version folder `path` brings an image into
    the canonical frame itself. An export whose description recorded no canonical frame, of a
    model `upgrade_spec` finds canonical (trained on images stored canonically), does not: its
    caller brings images into the canonical frame (`Image.canonical`) before `predict_array`."""
    if not spec.canonical_orientation:
        return True  # Its graph refuses (or takes) images as the model was trained.
    try:
        with open(os.path.join(path, "assets", SPEC_ASSET), encoding="utf-8") as handle:
            return bool(json.load(handle).get("canonical_orientation", False))
    except (OSError, ValueError, AttributeError):
        return True


def in_graph_frame(image, takes_any_orientation):
    """`image` as a SavedModel's `predict_array` takes it: in the canonical frame where the
    graph does not bring it there itself (`graph_takes_any_orientation`)."""
    return image if takes_any_orientation else image.canonical()[0]


def in_image_frame(outputs, image, sent):
    """`outputs` of `predict_array` for `sent` (`in_graph_frame(image, ...)`) as answers for
    `image`: the points in mm are the same; the indices are `image`'s."""
    if sent is not image:
        outputs["landmarks_index"] = image.physical_to_index(outputs["landmarks_mm"])
    return outputs


def read_saved_model_spec(path):
    """The DetectorSpec of a SavedModel version folder (its `assets/keraslm.json`)."""
    asset = os.path.join(path, "assets", SPEC_ASSET)
    try:
        with open(asset, encoding="utf-8") as handle:
            recorded = json.load(handle)
    except FileNotFoundError:
        raise KeraslmError(f"{path}: no assets/{SPEC_ASSET}: not a keraslm export") from None
    except (OSError, ValueError) as error:
        raise KeraslmError(f"{asset}: unreadable ({error})") from None
    return upgrade_spec(recorded, asset)


class SavedModelPredictor(Predictor):
    """A SavedModel written by `keraslm.export`: its `predict_array` signature.

    Args:
        path: str. A SavedModel version folder `<base>/<version>/`.

    Raises:
        KeraslmError: not a version folder, no keraslm spec, or an export of keraslm 0.1 made
            before the image signatures (no `predict_array`).
    """

    def __init__(self, path):
        self.path = saved_model_folder(path)
        self.spec = read_saved_model_spec(self.path)
        self._loaded = tf.saved_model.load(self.path)
        if "predict_array" not in self._loaded.signatures:
            raise KeraslmError(
                f"{self.path}: exported by an early keraslm 0.1 (grid-level signatures only, "
                f"found {sorted(self._loaded.signatures)}), which keraslm 0.2 no longer runs; "
                "export its .keras model again: keraslm-export RUN_OR_MODEL.keras BASE_DIR")
        self._predict = self._loaded.signatures["predict_array"]
        self._takes_any_orientation = graph_takes_any_orientation(self.path, self.spec)

    def locate(self, image):
        sent = in_graph_frame(image, self._takes_any_orientation)
        outputs = self._predict(
            image=tf.constant(np.asarray(sent.array, np.float32)),
            spacing=tf.constant(np.asarray(sent.spacing, np.float32)),
            origin=tf.constant(np.asarray(sent.origin, np.float32)),
            direction=tf.constant(np.asarray(sent.direction, np.float32)))
        found = {key: value.numpy() for key, value in outputs.items()}
        for key in ("landmarks_index", "landmarks_mm"):
            found[key] = found[key].astype(np.float64)
        return in_image_frame(found, image, sent)


def ensemble_members(item):
    """A model argument as a list: one model (path or detector), or an ensemble's members."""
    return list(item) if isinstance(item, (list, tuple)) else [item]


def load_model(item, what="model"):
    """A LandmarkDetector from a detector, a `.keras` file or a training run folder; a
    SavedModel version folder's SavedModelPredictor.

    Raises:
        KeraslmError: naming `item` when it is none of these.
    """
    if isinstance(item, LandmarkDetector):
        return item
    if isinstance(item, Predictor):
        raise KeraslmError(f"a predictor cannot be combined with other stages; give the {what} "
                           "as a LandmarkDetector or a file")
    if not isinstance(item, (str, os.PathLike)):
        raise KeraslmError(f"a {what} must be a LandmarkDetector, a .keras file, a run folder or "
                           f"a SavedModel folder. Received: {type(item).__name__}")
    path = os.fspath(item)
    if path.endswith(".keras"):
        return load_detector(path)
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "saved_model.pb")) or saved_model_versions(path):
            return SavedModelPredictor(path)
        run_model = RunFolder(path).model_path
        if os.path.isfile(run_model):
            return load_detector(run_model)
        raise ModelFileError(f"{path}: not a SavedModel folder nor a finished training run (no "
                           f"{os.path.basename(run_model)})")
    if not os.path.exists(path):
        raise ModelFileError(f"{path}: no such model file or folder")
    raise ModelFileError(f"{path}: not a .keras file, a training run folder or a SavedModel folder")


def load_predictor(model, refine=None, precision="float32", iterations=1, calibration=None):
    """A predictor from a detector, a `.keras` file, a training run folder or a SavedModel
    version folder.

    Args:
        model: a `LandmarkDetector`, a path, a `Predictor` (returned as it is), or a list of
            detectors / paths: an ensemble whose global points are averaged.
        refine: the same kinds (not a SavedModel), optional. The local stage(s) of a
            coarse-to-fine model (trained with `--crop-shape`) that refine `model`'s estimate.
        precision: str. Compute precision of Keras models (`DetectorPredictor`); a SavedModel
            computes as it was exported (float32), so only "float32" and "auto" apply to it.
        iterations: int >= 1. Local passes; each centres the crops on the previous estimate.
        calibration: dict, optional. A calibration (`keraslm.calibration`, e.g. one that
            blends the stages) replacing the first model's; not for a SavedModel.

    Raises:
        KeraslmError: a path that is none of these, stages in the wrong place or that disagree
            in landmarks or dimension, a SavedModel combined with other stages.
    """
    if isinstance(model, Predictor) and refine is None and calibration is None:
        return model
    loaded = [load_model(item) for item in ensemble_members(model)]
    local = [] if refine is None else [load_model(item, "local stage") for item in ensemble_members(refine)]
    saved = [m for m in loaded + local if isinstance(m, SavedModelPredictor)]
    if saved:
        if len(loaded) + len(local) > 1:
            raise KeraslmError(f"{saved[0].path}: a SavedModel answers as it was exported and "
                               "cannot be combined with other stages; export the ensemble or "
                               "the coarse-to-fine model as one (keraslm-export A,B BASE --refine L,M)")
        if precision not in ("auto", "float32"):
            raise KeraslmError(
                f"{saved[0].path}: a SavedModel computes in the precision it was exported in "
                f"(float32); precision={precision!r} applies to .keras models only")
        if iterations != 1:
            raise KeraslmError(f"{saved[0].path}: a SavedModel runs its local stage as it was "
                               "exported (one pass)")
        if calibration is not None:
            raise KeraslmError(f"{saved[0].path}: a SavedModel holds the calibration it was "
                               "exported with; export again with --calibration")
        return saved[0]
    for item, detector in zip(ensemble_members(model), loaded):
        if detector.spec.is_local_only:
            name = os.fspath(item) if isinstance(item, (str, os.PathLike)) else "the model"
            raise KeraslmError(
                f"{name} is the local stage of a coarse-to-fine model: it refines estimates of a "
                "global model. Predict with the global model and pass this one as refine= "
                "(keraslm-predict GLOBAL_MODEL --refine LOCAL_MODEL)")
    for item, detector in zip(ensemble_members(refine) if refine is not None else [], local):
        if detector.spec.global_stages:
            name = os.fspath(item) if isinstance(item, (str, os.PathLike)) else "refine"
            raise KeraslmError(
                f"{name}: the refining model must be a local stage (trained with --crop-shape); "
                "this one is a whole-image model")
    return DetectorPredictor(combine_detectors(loaded + local, calibration), precision, iterations)
