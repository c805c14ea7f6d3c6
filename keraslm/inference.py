"""Finding landmarks in new images: `predict(model, images)` (the `keraslm-predict` command is
`keraslm.commands.predict`).

One image's way: it is read (`keraslm.io`), normalised and resampled onto the model's network
grid exactly as in training (`keraslm.preprocessing.prepare_image`), the network gives
heatmaps, the heatmap codec decodes them (argmax plus sub-pixel refinement) into grid index
points, and the recorded placement and the image geometry map them to the original image's
index `(x, y[, z])` and to physical millimetres (LPS):

    grid index --placement--> image index --image.index_to_physical--> mm

A model is a trained Keras network plus its *metadata* (`MODEL_METADATA_FILE` beside a
`.keras` file, or the SavedModel's `assets/` for exports): landmark names, dimension, grid
shape and spacing, normalisation, output stride and sigma.
"""
import dataclasses
import os

import numpy as np

from keraslm.calibration import blend_stages, local_weight_of
from keraslm.data import image_id_from_path
from keraslm.errors import KeraslmError, UsageError
from keraslm.io import Image, holds_geometry, read_image, storage_orientation, strip_image_extension
from keraslm.files import atomic_folder, atomic_path, write_json
from keraslm.detector import Predictor, locate_on_grid
from keraslm.preprocessing import GridSpec, place_on_grid, prepare_image

# Re-exported: the metadata helpers live in keraslm.metadata (below inference and export).
from keraslm.metadata import (  # noqa: E402,F401
    METADATA_FORMAT,
    MODEL_METADATA_FILE,
    check_metadata,
    model_metadata,
    offset_prior_mm,
)


EXPECTED_ERROR_FILE = "expected_error.csv"
MARKUPS_FOLDER = "markups"


@dataclasses.dataclass
class Prediction:
    """Landmarks found in one image.

    Args:
        image_id: str. The image's file name without extension, unique among the images
            predicted together (`input_image_ids`).
        image_path: str or None.
        landmark_names: tuple of str.
        points_mm: np.ndarray `(num_landmarks, ndim)`. Physical millimetres, LPS.
        points_index: np.ndarray `(num_landmarks, ndim)`. Original image index `(x, y[, z])`.
        confidence: np.ndarray `(num_landmarks,)`. Heatmap peak value (scale of training
            targets: about `heatmap_scale` for a sure detection).
        spread_mm: np.ndarray `(num_landmarks,)` or None. How wide the heatmap's peak is, mm
            (`keraslm.ops.heatmaps.HeatmapCodec.spread`); None for old SavedModels.
        expected_error_mm: np.ndarray `(num_landmarks,)` or None. The error to expect for each
            landmark, mm, from the model's calibration (`keraslm.calibration`); None when the
            model has none. Check the landmarks whose expected error is high.
    """

    image_id: str
    image_path: str
    landmark_names: tuple
    points_mm: np.ndarray
    points_index: np.ndarray
    confidence: np.ndarray
    spread_mm: np.ndarray = None
    expected_error_mm: np.ndarray = None

    def to_dict(self):
        landmarks = {}
        for i, name in enumerate(self.landmark_names):
            entry = {"mm": self.points_mm[i].tolist(), "index": self.points_index[i].tolist(),
                     "confidence": float(self.confidence[i])}
            if self.spread_mm is not None:
                entry["spread_mm"] = float(self.spread_mm[i])
            if self.expected_error_mm is not None:
                entry["expected_error_mm"] = float(self.expected_error_mm[i])
            landmarks[name] = entry
        return {"id": self.image_id, "image_path": self.image_path, "landmarks": landmarks}


def _pixels(image):
    pixels = np.asarray(image.array)
    return pixels.astype(np.uint8) if pixels.dtype == bool else pixels


class GraphLocator(Predictor):
    """`locate(image)` through one compiled `keraslm.detector.image_to_landmarks` graph per
    pixel dtype (any image size). Subclasses set `self.metadata` and implement `_function()`.
    """

    def _function(self):
        raise NotImplementedError

    def locate(self, image):
        """One `keraslm.io.Image` -> the `Predictor.locate` dict of NumPy arrays."""
        import tensorflow as tf  # TF-only edge: the compiled prediction graph.

        pixels = _pixels(image)
        cache = self.__dict__.setdefault("_locators", {})
        if pixels.dtype not in cache:
            ndim = int(self.metadata["ndim"])
            cache[pixels.dtype] = tf.function(self._function(), input_signature=[
                tf.TensorSpec([None] * ndim, tf.as_dtype(pixels.dtype)),
                tf.TensorSpec([ndim], tf.float64), tf.TensorSpec([ndim], tf.float64),
                tf.TensorSpec([ndim, ndim], tf.float64)])
        outputs = cache[pixels.dtype](pixels, np.asarray(image.spacing, np.float64),
                                      np.asarray(image.origin, np.float64),
                                      np.asarray(image.direction, np.float64))
        return {key: value.numpy() for key, value in outputs.items()}


class KerasPredictor(GraphLocator):
    """A Keras heatmap network with its metadata. `locate(image)` runs the whole prediction
    graph (`keraslm.detector`); `grid_points` runs the network on grid images, and for a local
    stage `refine` runs it on crops around coarse estimates.

    Args:
        network: keras.Model. Maps grid images to heatmaps.
        metadata: dict. See `model_metadata`.
        precision: str. The network's compute precision for prediction: "float32" (default;
            the same numbers as the float32 SavedModel export), "bfloat16", "float16" or
            "auto" (`keraslm.precision.choose_precision`). Decoding is float32 in every case.
    """

    def __init__(self, network, metadata, precision="float32"):
        import tensorflow as tf  # TF-only edge: the compiled prediction function.

        from keraslm.detector import refine_function
        from keraslm.ops.heatmaps import HeatmapCodec
        from keraslm.precision import choose_precision, with_precision

        self.precision = choose_precision(precision)
        network = with_precision(network, self.precision)
        self.network = network
        self.metadata = check_metadata(metadata, getattr(network, "name", "model"))
        self.codec = HeatmapCodec(
            tuple(metadata["grid_shape"]), stride=metadata["output_stride"], sigma=metadata["sigma"]
        )
        method = metadata.get("decode_method", "quadratic")
        self._predict = tf.function(
            lambda images: self.codec.decode(self.network(images, training=False), method=method)
        )
        if metadata.get("stage") == "local":
            self._refine = tf.function(refine_function(network, metadata))

    def _function(self):
        from keraslm.detector import image_to_landmarks

        return image_to_landmarks(self.network, self.metadata)

    def grid_points(self, images):
        """`(batch, *grid_shape, 1)` grid images -> (points `(batch, L, ndim)` in grid index,
        confidence `(batch, L)`)."""
        points, confidence = self._predict(np.asarray(images, np.float32))
        return np.asarray(points), np.asarray(confidence)

    def refine(self, images, centres):
        """Local stage: `(batch, *fine_shape, 1)` fine grid images and coarse estimates
        `(batch, L, ndim)` in fine grid index -> (refined points, confidence)."""
        points, confidence = self._refine(np.asarray(images, np.float32),
                                          np.asarray(centres, np.float32))
        return np.asarray(points), np.asarray(confidence)


class CascadePredictor(GraphLocator):
    """A coarse-to-fine model: a global stage that finds every landmark on a coarse grid of the
    whole image, and a local stage that refines each estimate on a crop of a fine grid.

    Two Keras stages run as one graph (`keraslm.detector.image_to_landmarks`); stages from a
    SavedModel exported before the image signatures existed run stage by stage.

    Args:
        global_predictor: predictor of the whole-image (global) stage.
        local_predictor: predictor of the local stage (`metadata["stage"] == "local"`).
        iterations: int >= 1. Local passes; each centres the crops on the previous estimate.
    """

    def __init__(self, global_predictor, local_predictor, iterations=1):
        if not (isinstance(iterations, int) and iterations >= 1):
            raise KeraslmError(f"`iterations` must be an int >= 1. Received: iterations={iterations!r}")
        self.iterations = iterations
        coarse, fine = global_predictor.metadata, local_predictor.metadata
        if coarse.get("stage", "global") != "global":
            raise KeraslmError("the first model of a cascade must be a global (whole-image) "
                               "model; this one is a local stage")
        if fine.get("stage") != "local":
            raise KeraslmError("the refining model must be a local stage (trained with "
                               "--crop-shape); this one is a whole-image model")
        if (list(coarse["landmark_names"]) != list(fine["landmark_names"])
                or coarse["ndim"] != fine["ndim"]):
            raise KeraslmError(
                "the global and the local model disagree in their landmarks or dimension: "
                f"{coarse['ndim']}D {list(coarse['landmark_names'])} vs {fine['ndim']}D "
                f"{list(fine['landmark_names'])}")
        self.global_predictor = global_predictor
        self.local = local_predictor
        self.metadata = {**coarse, "refine": fine}

    def _function(self):
        from keraslm.detector import image_to_landmarks

        return image_to_landmarks(self.global_predictor.network, self.global_predictor.metadata,
                                  self.local.network, self.local.metadata, self.iterations)

    def locate(self, image):
        if isinstance(self.global_predictor, KerasPredictor) and isinstance(self.local, KerasPredictor):
            return super().locate(image)
        # Stage by stage: the global stage's own points (not its answer as a whole model - a
        # blending calibration needs both stages and is applied here).
        coarse = locate_on_grid(self.global_predictor, image)
        points_index, confidence = self.refine_image(image, coarse["landmarks_index"])
        local_weight = local_weight_of(self.global_predictor.metadata)
        if local_weight is not None:
            points_index = np.asarray(blend_stages(coarse["landmarks_index"], points_index, local_weight))
        return {"landmarks_index": points_index, "landmarks_mm": image.index_to_physical(points_index),
                "confidence": confidence}

    def grid_points(self, images):
        return self.global_predictor.grid_points(images)

    def refine_image(self, image, points_index):
        """Refines one image's coarse landmarks `(L, ndim)` (image index) -> (image index points,
        local confidence). The image goes onto the local stage's fine grid (its training grid,
        which covered every training image) as onto the global grid: centred, and an error
        when it does not fit."""
        fine = self.local.metadata
        grid = GridSpec(tuple(fine["grid_shape"]), tuple(fine["grid_spacing"]))
        array, placement = prepare_image(image, grid, fine["normalization"])
        points = placement.image_index_to_grid(points_index)[np.newaxis].astype(np.float32)
        for _ in range(self.iterations):
            points, confidence = self.local.refine(array[np.newaxis, ..., np.newaxis], points)
        return placement.grid_to_image_index(points[0]), confidence[0]


class EnsemblePredictor(GraphLocator):
    """An ensemble: several global stages whose estimates are averaged, and optionally several
    local stages, each refining that mean estimate, whose points are averaged too (confidence
    and spread likewise) - one graph, `keraslm.detector.image_to_landmarks` with lists. The
    members may use different grids (e.g. a 1.25 mm and a 1.0 mm global stage).

    Args:
        global_predictors: sequence of `KerasPredictor` of whole-image stages. The first one's
            metadata (and its calibration, if any) is the ensemble's.
        local_predictors: sequence of `KerasPredictor` of local stages, or empty.
        iterations: int >= 1. Local passes; each centres the crops on the previous estimate.

    Raises:
        KeraslmError: members that are not Keras models (SavedModels run as exported), a stage
            in the wrong place, or members that disagree in landmarks or dimension.
    """

    def __init__(self, global_predictors, local_predictors=(), iterations=1):
        from keraslm.detector import check_ensemble

        if not (isinstance(iterations, int) and iterations >= 1):
            raise KeraslmError(f"`iterations` must be an int >= 1. Received: iterations={iterations!r}")
        self.global_predictors = list(global_predictors)
        self.local_predictors = list(local_predictors)
        if not self.global_predictors:
            raise KeraslmError("an ensemble needs at least one global (whole-image) stage")
        for member in self.global_predictors + self.local_predictors:
            if not isinstance(member, KerasPredictor):
                raise KeraslmError(
                    "ensemble members must be Keras models (.keras files or run folders); a "
                    "SavedModel answers as it was exported - export the ensemble instead")
        check_ensemble([m.metadata for m in self.global_predictors],
                       [m.metadata for m in self.local_predictors])
        self.iterations = iterations
        first = self.global_predictors[0].metadata
        self.metadata = {**first, "ensemble": {
            "global": [m.metadata for m in self.global_predictors],
            "local": [m.metadata for m in self.local_predictors]}}
        if self.local_predictors:
            self.metadata["refine"] = self.local_predictors[0].metadata

    def _function(self):
        from keraslm.detector import image_to_landmarks

        local = self.local_predictors
        return image_to_landmarks(
            [m.network for m in self.global_predictors],
            [m.metadata for m in self.global_predictors],
            [m.network for m in local] if local else None,
            [m.metadata for m in local] if local else None, self.iterations)


def detector_predictor(detector, precision="float32"):
    """The predictor of a `keraslm.detector.LandmarkDetector`: a KerasPredictor, or a
    CascadePredictor when it holds a local stage."""
    global_predictor = KerasPredictor(detector.network, detector.metadata, precision)
    if detector.local_network is None:
        return global_predictor
    return CascadePredictor(global_predictor,
                            KerasPredictor(detector.local_network, detector.local_metadata, precision))


def load_predictor(model, metadata=None, refine=None, precision="float32", iterations=1):
    """A predictor from a Keras model, a `.keras` file or a SavedModel version folder.

    Args:
        model: a `keraslm.detector.LandmarkDetector`, a keras.Model (with `metadata`), a path
            to a `.keras` file (a LandmarkDetector, as train.py saves it, or an earlier
            keraslm's bare network with `model.json` beside it) or to a SavedModel version
            folder (`<base>/<version>/`, metadata in its assets).
        metadata: dict, optional. Required for a bare Keras network; overrides files.
        refine: str path or predictor, optional. The local stage of a coarse-to-fine model
            (trained with `train.py --crop-shape`); `model` is then its global stage.
        precision: str. Compute precision of Keras models (see `KerasPredictor`); a SavedModel
            computes as it was exported (float32), so only "float32" and "auto" apply to it.
        iterations: int >= 1. Local passes with `refine`; each centres the crops on the
            previous estimate.

    A list of models (and / or of local stages in `refine`) is an ensemble
    (`EnsemblePredictor`: the members' points averaged); its members are Keras models.
    """
    if iterations != 1 and refine is None:
        raise KeraslmError(f"`iterations` ({iterations!r}) counts the passes of a local stage: "
                           "it needs `refine`")
    if isinstance(model, (list, tuple)) or isinstance(refine, (list, tuple)):
        return _ensemble_predictor(model, metadata, refine, precision, iterations)
    if refine is not None:
        local = refine if isinstance(refine, Predictor) else load_predictor(refine, precision=precision)
        global_predictor = load_predictor(model, metadata, precision=precision)
        try:
            return CascadePredictor(global_predictor, local, iterations)
        except KeraslmError as error:  # Name the files: which one is the wrong kind.
            if isinstance(model, (str, os.PathLike)) and isinstance(refine, (str, os.PathLike)):
                raise type(error)(f"{os.fspath(model)} refined by {os.fspath(refine)}: {error}") from None
            raise
    import keras

    from keraslm.detector import LandmarkDetector, load_detector

    if isinstance(model, LandmarkDetector) and metadata is None:
        return detector_predictor(model, precision)
    if isinstance(model, keras.Model):
        if metadata is None:
            raise KeraslmError("a Keras model needs `metadata` (see keraslm.inference.model_metadata)")
        return KerasPredictor(model, metadata, precision)
    path = os.fspath(model)
    if path.endswith(".keras"):
        return detector_predictor(load_detector(path, metadata), precision)
    if os.path.isdir(path):
        if precision not in ("auto", "float32"):
            raise KeraslmError(
                f"{path}: a SavedModel computes in the precision it was exported in (float32); "
                f"precision={precision!r} applies to .keras models only")
        from keraslm.export import load_saved_model_predictor

        predictor = load_saved_model_predictor(path, metadata=metadata)
        local = predictor.local_stage()  # Exports without image signatures: stage by stage.
        return predictor if local is None else CascadePredictor(predictor, local)
    raise KeraslmError(f"{path}: not a .keras file or a SavedModel folder")


def _ensemble_predictor(model, metadata, refine, precision, iterations=1):
    """`load_predictor` of lists: an `EnsemblePredictor` (a single model or local stage is an
    ensemble of one). `metadata`, if given, replaces the first global member's."""
    models = list(model) if isinstance(model, (list, tuple)) else [model]
    refines = [] if refine is None else (list(refine) if isinstance(refine, (list, tuple))
                                         else [refine])
    if not models:
        raise KeraslmError("an ensemble needs at least one global model")

    def member(item, member_metadata=None):
        return item if isinstance(item, Predictor) else load_predictor(
            item, member_metadata, precision=precision)

    return EnsemblePredictor([member(models[0], metadata)] + [member(m) for m in models[1:]],
                             [member(m) for m in refines], iterations)


def _input_path(item):
    """The path of an input image (a path, or an `Image`'s `path`), or None."""
    path = getattr(item, "path", None) if isinstance(item, Image) else os.fspath(item)
    return None if path is None else os.fspath(path)


def _ids_from_common_folder(paths, taken=()):
    """Ids of images whose names collide: their paths relative to the paths' common folder
    (`/` between folders) without the image extension, and with it where that still
    collides (with another of these or with an id in `taken`)."""
    paths = [os.path.normpath(os.path.abspath(path)) for path in paths]
    try:
        root = os.path.commonpath([os.path.dirname(path) for path in paths])
    except ValueError:  # Paths on different drives: no common folder.
        root = None
    relative = [(path if root is None else os.path.relpath(path, root)).replace(os.sep, "/")
                for path in paths]
    stems = [strip_image_extension(path) for path in relative]
    return [path if stems.count(stem) > 1 or stem in taken else stem
            for path, stem in zip(relative, stems)]


def _groups(ids):
    """dict id -> positions of the ids that occur more than once."""
    positions = {}
    for position, image_id in enumerate(ids):
        positions.setdefault(image_id, []).append(position)
    return {image_id: found for image_id, found in positions.items() if len(found) > 1}


def input_image_ids(images):
    """Unique ids of input images of `predict` or the serving client, decided before any image
    is read.

    An image's id is its file (or DICOM series folder) name without the image extension, an
    `Image` without a path's `image<index>`. Where inputs share an id, theirs is the path
    relative to these inputs' common folder without the extension (`da/x.png`, `db/x.png` ->
    `da/x`, `db/x`), and where that is shared too, with the extension (`y.png`, `y.dcm` ->
    `y.png`, `y.dcm`). Ids use `/` between folders.

    Args:
        images: sequence of paths or `Image`s.

    Returns:
        list of str, one per image, in order.

    Raises:
        UsageError: the same file is given more than once (the message names it).
    """
    paths = [_input_path(item) for item in images]
    ids = [image_id_from_path(path) if path else f"image{index:04d}"
           for index, path in enumerate(paths)]
    for positions in _groups(ids).values():
        named = [n for n in positions if paths[n]]
        unnamed = [ids[n] for n in positions if not paths[n]]
        for n, image_id in zip(named, _ids_from_common_folder([paths[n] for n in named], unnamed)):
            ids[n] = image_id
    repeated = [", ".join(paths[n] or f"image {n}" for n in positions)
                for positions in _groups(ids).values()]
    if repeated:
        raise UsageError(f"the same image is given more than once: {'; '.join(repeated)}; give "
                         "each image once")
    return ids


def check_plain_image_spacing(images, spacing, metadata):
    """Raises a UsageError when `spacing` is None and an input image is a file whose format
    stores no pixel spacing (PNG, JPEG, BMP, TIFF): predicting it at an assumed 1 mm per pixel
    would put the landmarks at the wrong scale without a word. DICOM and NIfTI files carry their
    spacing; an `Image` is predicted at its own.

    Args:
        images: sequence of paths or `Image`s.
        spacing: float or sequence or None. The spacing given for plain images.
        metadata: dict. The model's metadata; its `plain_image_spacing` (the spacing of the
            plain images it was trained on), if recorded, is named as the likely value.

    Raises:
        UsageError: naming the first such file, how many there are, and what to pass.
    """
    if spacing is not None:
        return
    plain = [path for path in (os.fspath(item) for item in images if not isinstance(item, Image))
             if not os.path.isdir(path) and not holds_geometry(path)]
    if not plain:
        return
    kind = os.path.splitext(plain[0])[1].lstrip(".").upper() or "plain"
    others = f" (and {len(plain) - 1} more such images)" if len(plain) > 1 else ""
    message = (f"{plain[0]}{others}: a {kind} file stores no pixel spacing; give the mm per "
               "pixel with --spacing MM or X,Y (Python: spacing=)")
    trained = metadata.get("plain_image_spacing")
    if trained:
        value = (f"{trained[0]:g}" if len(set(trained)) == 1
                 else ",".join(f"{s:g}" for s in trained))
        message += (f"; the model was trained on plain images of {value} mm per pixel "
                    f"(--spacing {value}), likely the value for images like them")
    raise UsageError(message)


def check_storage_orientation(image, metadata, name):
    """Raises a UsageError when `image` stores its voxels in another axis order or direction
    than the model's training images (`metadata["storage_orientation"]`, recorded by training
    since it was added): the network sees arrays in storage order and would find the
    landmarks of a mirrored or turned image. Models without the record are not checked."""
    expected = metadata.get("storage_orientation")
    if expected is None:
        return
    found = storage_orientation(image.direction)
    if list(found) != list(expected):
        raise UsageError(
            f"{name} stores its voxels along ({' '.join(found)}) but the model was trained on "
            f"images stored along ({' '.join(expected)}): it would see this image mirrored or "
            "turned and find its landmarks there. Store it like the training images (e.g. the "
            "same converter, or flip / transpose the array and adjust its direction), then "
            "predict it")


def load_input_image(item, index, ndim, spacing=None, image_id=None):
    """Reads and checks one input image of `predict` or the serving client.

    Args:
        item: path (any format `keraslm.io.read_image` reads) or `Image`.
        index: int. Position of the image in the input; names images without a path.
        ndim: int. Image dimension the model expects.
        spacing: optional pixel spacing in mm for files that store none (PNG/JPEG, a DICOM
            without PixelSpacing); files that store one (DICOM, NIfTI) keep theirs.
        image_id: str, optional. The image's id (`input_image_ids` of all inputs); default:
            the file name without extension, else `image<index>`.

    Returns:
        (image_id, path, image): the id, the path or None, and the `Image`.

    Raises:
        KeraslmError: unreadable image, non-finite pixel values or wrong dimension; a file
            that stores no spacing without `spacing` (UsageError).
    """
    if isinstance(item, Image):
        image, path = item, getattr(item, "path", None)
    else:
        path = os.fspath(item)
        # `spacing` for plain images only: DICOM and NIfTI keep the spacing they store.
        image = read_image(path, spacing=None if holds_geometry(path) else spacing)
        if image.spacing_source == "default":  # Nothing in the file: a DICOM without spacing.
            if spacing is None:
                raise UsageError(
                    f"{path}: the file stores no pixel spacing; give the mm per pixel with "
                    "--spacing MM or X,Y (Python: spacing=)")
            image = read_image(path, spacing=spacing)
    name = path or f"image {index}"
    if image.array.dtype.kind == "f" and not np.all(np.isfinite(image.array)):
        raise KeraslmError(f"{name} contains non-finite pixel values")
    if image.ndim != ndim:
        hint = ""
        if ndim == 3 and image.ndim == 2 and path and path.lower().endswith(".dcm"):
            hint = ("; a DICOM series (a folder of 2D slices) is one 3D image: give its folder "
                    "(keraslm-predict FOLDER --series)")
        raise KeraslmError(f"{name} is {image.ndim}D but the model expects {ndim}D images{hint}")
    if image_id is None:
        image_id = image_id_from_path(path) if path else f"image{index:04d}"
    return image_id, path, image


def predict(model, images, spacing=None, batch_size=4, metadata=None, refine=None,
            precision="float32"):
    """Finds the landmarks in images.

    Args:
        model: keras.Model (with `metadata=`), a `.keras` file path or a SavedModel version
            folder; or a predictor from `load_predictor`.
        images: sequence of paths (any format `keraslm.io.read_image` reads) or `Image`s.
        spacing: float or sequence, optional. Spacing (mm per pixel along x, y) of plain
            image files (PNG/JPEG/BMP/TIFF), which hold none, e.g. 0.1 for ISBI 2015; required
            when `images` holds such files (`check_plain_image_spacing`). DICOM and NIfTI files
            carry their own, an `Image` its own.
        batch_size: int. Unused: every image runs through the prediction graph on its own
            (kept so that existing calls work).
        metadata: dict, optional. See `load_predictor`.
        refine: str path or predictor, optional. Local stage refining `model`'s estimates
            (see `load_predictor`); the confidence is then the local stage's. Lists in
            `model` / `refine` make an ensemble (`EnsemblePredictor`).
        precision: str. Compute precision of the network(s) when loaded here (see
            `KerasPredictor`): "float32" (default), "bfloat16", "float16" or "auto".

    Returns:
        list of Prediction, one per image, in order; their ids are unique
        (`input_image_ids`).

    Raises:
        KeraslmError: an image cannot be read, has the wrong dimension, or does not fit the
            model's grid, or is given twice; a plain image file comes without `spacing`
            (a UsageError); the message names it.
    """
    import tensorflow as tf  # TF-only edge: errors raised inside the prediction graph.

    if isinstance(images, (str, os.PathLike, Image)):
        images = [images]
    image_ids = input_image_ids(images)
    if isinstance(model, Predictor) and not isinstance(refine, (list, tuple)):
        predictor = model if refine is None else CascadePredictor(
            model, refine if isinstance(refine, Predictor) else load_predictor(refine, precision=precision))
    else:
        predictor = load_predictor(model, metadata, refine=refine, precision=precision)
    meta = predictor.metadata
    if meta.get("stage") == "local":
        raise KeraslmError(
            "this model is the local stage of a coarse-to-fine model: it refines estimates of a "
            "global model. Predict with the global model and pass this one as refine= "
            "(keraslm-predict GLOBAL_MODEL --refine LOCAL_MODEL)")
    check_plain_image_spacing(images, spacing, meta)  # Every image, before any is predicted.
    grid = GridSpec(tuple(meta["grid_shape"]), tuple(meta["grid_spacing"]))
    results = []
    for index, item in enumerate(images):
        image_id, path, image = load_input_image(item, index, grid.ndim, spacing, image_ids[index])
        check_storage_orientation(image, meta, path or image_id)
        place_on_grid(image, grid)  # A KeraslmError naming the image when it does not fit.
        try:
            found = predictor.locate(image)
        except tf.errors.InvalidArgumentError as error:
            raise KeraslmError(f"{path or image_id}: {error.message}") from None
        results.append(Prediction(image_id, path, tuple(meta["landmark_names"]),
                                  found["landmarks_mm"], found["landmarks_index"],
                                  found["confidence"], found.get("spread_mm"),
                                  found.get("expected_error_mm")))
    return results


def write_predictions(folder, predictions):
    """Writes `predictions.csv` (named layout, mm), `predictions_index.csv` (image index),
    `predictions.json`, one 3D Slicer markups file per image (`markups/<id>.mrk.json`, LPS
    mm: open it over the image in Slicer) and, for a calibrated model, `expected_error.csv`
    (one column per landmark, mm) into `folder`, atomically. Returns the written paths."""
    import csv

    from keraslm.io import LandmarkTable, write_landmarks, write_markups

    os.makedirs(folder, exist_ok=True)
    names = predictions[0].landmark_names
    ids = [p.image_id for p in predictions]
    write_landmarks(
        os.path.join(folder, "predictions.csv"),
        LandmarkTable(ids, names, np.stack([p.points_mm for p in predictions])),
    )
    write_landmarks(
        os.path.join(folder, "predictions_index.csv"),
        LandmarkTable(ids, names, np.stack([p.points_index for p in predictions])),
    )
    write_json(os.path.join(folder, "predictions.json"),
               {"units": {"mm": "physical LPS millimetres", "index": "image index (x, y[, z])",
                          "expected_error_mm": "calibrated expected point error, mm"},
                "predictions": [p.to_dict() for p in predictions]})
    written = [os.path.join(folder, name) for name in
               ("predictions.csv", "predictions_index.csv", "predictions.json")]
    # The markups folder holds this prediction's images only: replaced whole, not added to.
    with atomic_folder(os.path.join(folder, MARKUPS_FOLDER), overwrite=True) as markups:
        for p in predictions:
            path = os.path.join(markups, f"{p.image_id}.mrk.json")
            write_markups(path, names, p.points_mm, description=f"keraslm {p.image_id}")
    written.append(os.path.join(folder, MARKUPS_FOLDER) + os.sep)
    path = os.path.join(folder, EXPECTED_ERROR_FILE)
    if not all(p.expected_error_mm is not None for p in predictions):
        if os.path.isfile(path):
            os.remove(path)  # An earlier, calibrated model's; these predictions have none.
    else:
        with atomic_path(path, suffix=".csv") as temporary:
            with open(temporary, "w", encoding="utf-8", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(["id", *names])
                for p in predictions:
                    writer.writerow([p.image_id, *(f"{e:.3f}" for e in p.expected_error_mm)])
        written.append(path)
    return written


if __name__ == "__main__":  # The command moved to keraslm.commands; say so instead of doing nothing.
    raise SystemExit("keraslm.inference is a library module; run keraslm-predict (python -m keraslm predict)")
