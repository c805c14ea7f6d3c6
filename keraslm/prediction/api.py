"""Finding landmarks in new images: `predict(model, images)` (the `keraslm-predict` command is
`keraslm.commands.predict`), and writing what it finds.

One image's way: `keraslm.io` reads it (with its spacing, origin and direction), and the
model's predictor (`keraslm.prediction.predictors`) runs the prediction graph
(`keraslm.prediction.graph`) on it: normalisation and resampling onto the network grid as in
training, the network(s), heatmap decoding, the local stage(s), and the mapping back to the
original image's index `(x, y[, z])` and to physical millimetres (LPS).
"""
import dataclasses
import json
import os
import re
import shutil
import tempfile

import numpy as np
import tensorflow as tf

from keraslm.data import image_id_from_path
from keraslm.errors import ImageReadError, KeraslmError, UsageError
from keraslm.files import check_output_folder, write_json
from keraslm.io import (Image, holds_geometry, read_image, strip_image_extension,
                        with_in_plane_spacing)
from keraslm.prediction.detector import LandmarkDetector
from keraslm.prediction.predictors import load_predictor

EXPECTED_ERROR_FILE = "expected_error.csv"
MARKUPS_FOLDER = "markups"
#: The files `write_predictions` writes beside MARKUPS_FOLDER.
PREDICTION_FILES = ("predictions.csv", "predictions_index.csv", "predictions.json",
                    EXPECTED_ERROR_FILE)
#: `keraslm-predict` marks a landmark whose expected error is above this (mm) for a check by hand.
FLAG_MM = 2.5
#: The last detector `predict` was given and its predictor per precision: calling `predict`
#: with the same `LandmarkDetector` again reuses the predictor and its traced graph (a new
#: predictor traces and compiles the prediction graph again, which takes longer than
#: predicting an image). One detector only, so at most one is kept alive by it.
_LAST_DETECTOR = {"detector": None, "predictors": {}}


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
            (`keraslm.ops.heatmaps.HeatmapCodec.spread`).
        expected_error_mm: np.ndarray `(num_landmarks,)` or None. The error to expect for each
            landmark, mm, from the model's calibration (`keraslm.calibration`); None when the
            model has none. Check the landmarks whose expected error is high.
        second_peak: np.ndarray `(num_landmarks,)` or None. How strongly another place of the
            global heatmap responds, as a fraction of its peak
            (`keraslm.ops.heatmaps.HeatmapCodec.second_peak`); None for models exported before
            keraslm gave it.
    """

    image_id: str
    image_path: str
    landmark_names: tuple
    points_mm: np.ndarray
    points_index: np.ndarray
    confidence: np.ndarray
    spread_mm: np.ndarray = None
    expected_error_mm: np.ndarray = None
    second_peak: np.ndarray = None

    def to_dict(self, flag_mm=FLAG_MM):
        """dict (JSON-ready): the image's id and path and each landmark's point (mm, index),
        confidence and, where the model gives them, spread, second peak, expected error and
        `check` (expected error above `flag_mm`)."""
        landmarks = {}
        for i, name in enumerate(self.landmark_names):
            entry = {"mm": self.points_mm[i].tolist(), "index": self.points_index[i].tolist(),
                     "confidence": float(self.confidence[i])}
            if self.spread_mm is not None:
                entry["spread_mm"] = float(self.spread_mm[i])
            if self.second_peak is not None:
                entry["second_peak"] = float(self.second_peak[i])
            if self.expected_error_mm is not None:
                entry["expected_error_mm"] = float(self.expected_error_mm[i])
                entry["check"] = bool(self.expected_error_mm[i] > flag_mm)
            landmarks[name] = entry
        return {"id": self.image_id, "image_path": self.image_path, "landmarks": landmarks}


def _input_path(item):
    """The path of an input image (a path, or an `Image`'s `path`), or None."""
    if not isinstance(item, (str, os.PathLike, Image)):
        raise UsageError(f"an image must be a path or a keraslm.io.Image. Received: "
                         f"{type(item).__name__} (an array: Image(array, spacing=...))")
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


def check_plain_image_spacing(images, spacing, spec):
    """Raises a UsageError when `spacing` is None and an input image is a file whose format
    stores no pixel spacing (PNG, JPEG, BMP, TIFF): predicting it at an assumed 1 mm per pixel
    would put the landmarks at the wrong scale without a word. DICOM and NIfTI files carry their
    spacing; an `Image` is predicted at its own.

    Args:
        images: sequence of paths or `Image`s.
        spacing: float or sequence or None. The spacing given for plain images.
        spec: keraslm.spec.DetectorSpec. The model's; its `plain_image_spacing` (the spacing
            of the plain images it was trained on), if recorded, is named as the likely value.

    Raises:
        UsageError: naming the first such file, how many there are, and what to pass; a
            `spacing` of more values than the model's dimension (a whole-run mistake, not one
            image's).
    """
    if spacing is not None:
        count = np.size(spacing)
        if count not in (1, 2, spec.ndim):
            raise UsageError(f"--spacing gives {count} values (spacing=); the model is "
                             f"{spec.ndim}D: give MM or X,Y (the in-plane spacing"
                             + (", or X,Y,Z)" if spec.ndim == 3 else ")"))
        return
    plain = [path for path in (os.fspath(item) for item in images if not isinstance(item, Image))
             if not os.path.isdir(path) and not holds_geometry(path)]
    if not plain:
        return
    kind = os.path.splitext(plain[0])[1].lstrip(".").upper() or "plain"
    others = f" (and {len(plain) - 1} more such images)" if len(plain) > 1 else ""
    message = (f"{plain[0]}{others}: a {kind} file stores no pixel spacing; give the mm per "
               "pixel with --spacing MM or X,Y (Python: spacing=)")
    trained = spec.plain_image_spacing
    if trained:
        value = (f"{trained[0]:g}" if len(set(trained)) == 1
                 else ",".join(f"{s:g}" for s in trained))
        message += (f"; the model was trained on plain images of {value} mm per pixel "
                    f"(--spacing {value}), likely the value for images like them")
    raise UsageError(message)


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
        if not os.path.exists(path):
            raise ImageReadError(f"{path}: no such image file or folder")
        # `spacing` for plain images only: DICOM and NIfTI keep the spacing they store.
        stores_geometry = holds_geometry(path)
        count = None if spacing is None else np.size(spacing)
        if not stores_geometry and count is not None and count > 2:
            raise UsageError(f"{path}: --spacing gives {count} values (spacing=); this image "
                             "is 2D: give MM or X,Y")
        image = read_image(path, spacing=None if stores_geometry else spacing)
        if image.spacing_source == "default":  # Nothing in the file: a DICOM without spacing.
            if spacing is None:
                raise UsageError(
                    f"{path}: the file stores no pixel spacing; give the mm per pixel with "
                    "--spacing MM or X,Y (Python: spacing=)")
            image = with_in_plane_spacing(image, spacing)
    name = path or f"image {index}"
    if image.array.dtype.kind == "f" and not np.all(np.isfinite(image.array)):
        raise ImageReadError(f"{name} contains non-finite pixel values")
    if image.ndim != ndim:
        hint = ""
        if ndim == 3 and image.ndim == 2 and path and path.lower().endswith(".dcm"):
            hint = ("; a DICOM series (a folder of 2D slices) is one 3D image: give its folder "
                    "(keraslm-predict FOLDER --series)")
        raise KeraslmError(f"{name} is {image.ndim}D but the model expects {ndim}D images{hint}")
    if image_id is None:
        image_id = image_id_from_path(path) if path else f"image{index:04d}"
    return image_id, path, image


def graph_error_text(error):
    """The reason of a check in the prediction graph (a `tf.errors.InvalidArgumentError`),
    without TensorFlow's trace: the message of `tf.debugging.Assert` / `assert_*`, else the
    error's last line."""
    found = re.search(r"assertion failed: \[(.*?)\](?: \[|\n|$)", error.message, re.DOTALL)
    if found:
        return found.group(1)
    lines = [line.strip() for line in error.message.splitlines()
             if line.strip() and not line.strip().startswith("[[")]
    return lines[-1] if lines else error.message


def predict(model, images, spacing=None, refine=None, precision="float32", on_error=None,
            progress=None):
    """Finds the landmarks in images.

    Args:
        model: a `.keras` file, a training run folder or a SavedModel version folder; a
            `keraslm.prediction.LandmarkDetector`; a predictor from `load_predictor`; or a list
            of `.keras` files / run folders / detectors (an ensemble). A path is loaded on
            every call and a new graph traced: to predict many times, call it with a
            predictor (`load_predictor(path)`) or a detector; the detector of the previous call
            reuses its predictor.
        images: sequence of paths (any format `keraslm.io.read_image` reads) or `Image`s.
        spacing: float or sequence, optional. Spacing (mm per pixel along x, y) of plain
            image files (PNG/JPEG/BMP/TIFF), which hold none, e.g. 0.1 for ISBI 2015; required
            when `images` holds such files (`check_plain_image_spacing`). DICOM and NIfTI files
            carry their own, an `Image` its own.
        refine: path(s) or detector(s), optional. Local stage(s) refining `model`'s estimates
            (`load_predictor`); the confidence is then the local stage's.
        precision: str. Compute precision of Keras models (`DetectorPredictor`): "float32"
            (default), "bfloat16", "float16" or "auto".
        on_error: callable `(image_id, error)`, optional. Given, an image that cannot be read
            or predicted (a KeraslmError: unreadable, wrong dimension, no spacing, outside the
            model's field of view) is passed to it with its error and left out, and the other
            images are predicted; by default the first such image raises.
        progress: callable `(message)`, optional. Told after each image is predicted
            (`"predicted 3/120: image_id"`).

    Returns:
        list of Prediction, one per image, in order (without the images `on_error` was given);
        their ids are unique (`input_image_ids`).

    Raises:
        KeraslmError: an image cannot be read, has the wrong dimension, does not fit the
            model's field of view, is stored otherwise than its training images, or is given
            twice; a plain image file comes without `spacing` (a UsageError); the message
            names it.
    """
    if isinstance(images, (str, os.PathLike, Image)):
        images = [images]
    images = list(images)  # A generator (Path.glob) is read once, here.
    image_ids = input_image_ids(images)
    predictor = _predictor(model, refine, precision)
    spec = predictor.spec
    check_plain_image_spacing(images, spacing, spec)  # Every image, before any is predicted.
    results = []
    for index, item in enumerate(images):
        try:
            image_id, path, image = load_input_image(item, index, spec.ndim, spacing,
                                                     image_ids[index])
            try:
                found = predictor.locate(image)
            except tf.errors.InvalidArgumentError as error:
                raise KeraslmError(f"{path or image_id}: {graph_error_text(error)}") from None
        except KeraslmError as error:
            if on_error is None:
                raise
            on_error(image_ids[index], error)
            continue
        if progress is not None:
            progress(f"predicted {index + 1}/{len(images)}: {image_id}")
        results.append(Prediction(image_id, path, tuple(spec.landmark_names),
                                  found["landmarks_mm"], found["landmarks_index"],
                                  found["confidence"], found.get("spread_mm"),
                                  found.get("expected_error_mm"), found.get("second_peak")))
    return results


def _predictor(model, refine, precision):
    """`load_predictor(model, refine, precision)`; for the `LandmarkDetector` of the previous call
    (without `refine`) the predictor made then."""
    if not isinstance(model, LandmarkDetector) or refine is not None:
        return load_predictor(model, refine=refine, precision=precision)
    if _LAST_DETECTOR["detector"] is not model:
        _LAST_DETECTOR.update(detector=model, predictors={})
    predictors = _LAST_DETECTOR["predictors"]
    if precision not in predictors:
        predictors[precision] = load_predictor(model, precision=precision)
    return predictors[precision]


def check_prediction_folder(folder, name="--output-dir"):
    """Raises KeraslmError when `write_predictions` could not write into `folder` - a file in
    its place, a folder that is not writable, or a `markups` folder holding files keraslm did
    not write (it is replaced whole with every prediction) - so that a command finds out before
    any image is predicted.

    Args:
        folder: str. The output folder (need not exist).
        name: str. What names it in the message.
    """
    check_output_folder(folder, name)
    folder = os.fspath(folder)
    for written in PREDICTION_FILES + (MARKUPS_FOLDER,):
        path = os.path.join(folder, written)
        if os.path.exists(path) and os.path.isdir(path) != (written == MARKUPS_FOLDER):
            raise KeraslmError(f"{path} is a {'folder' if os.path.isdir(path) else 'file'}; the "
                               f"predictions write a {'folder' if written == MARKUPS_FOLDER else 'file'} "
                               f"of that name: move it or choose another {name}")
    markups = os.path.join(folder, MARKUPS_FOLDER)
    if not os.path.isdir(markups):
        return
    # The markups of the previous prediction (its predictions.json's ids) are replaced;
    # anything else - a hand-corrected copy saved from Slicer - is the user's.
    previous = set()
    try:
        with open(os.path.join(folder, "predictions.json"), encoding="utf-8") as handle:
            previous = {f"{entry['id']}.mrk.json" for entry in json.load(handle)["predictions"]}
    except (OSError, ValueError, KeyError, TypeError):
        pass
    for root, _, names in os.walk(markups):
        foreign = sorted(n for n in names if not n.startswith(".") and os.path.relpath(
            os.path.join(root, n), markups).replace(os.sep, "/") not in previous)
        if foreign:
            raise KeraslmError(
                f"{os.path.join(root, foreign[0])}: not a markups file of the previous "
                f"prediction in {folder} (its predictions.json), in {markups}, which every "
                f"prediction replaces whole (one .mrk.json per image); move it or choose "
                f"another {name}")


def _markup_points(prediction):
    """A prediction's points for its Slicer markups (3D LPS): a 2D DICOM / NIfTI image that
    stores where its plane lies gets them on that plane (`keraslm.io.plane`), so they overlay
    the image in Slicer; other 2D images at z = 0."""
    from keraslm.io import image_plane_lps, read_image_header
    from keraslm.io.plane import image_2d_to_lps

    points = np.asarray(prediction.points_mm)
    if points.shape[1] != 2 or not prediction.image_path:
        return points
    try:
        plane = image_plane_lps(prediction.image_path)
        if plane is None:
            return points
        return image_2d_to_lps(points, plane, read_image_header(prediction.image_path))
    except KeraslmError:  # The image moved since: its plane is unknown now.
        return points


def write_predictions(folder, predictions, flag_mm=FLAG_MM):
    """Writes `predictions.csv` (named layout, mm), `predictions_index.csv` (image index),
    `predictions.json`, one 3D Slicer markups file per image (`markups/<id>.mrk.json`, LPS
    mm, on a 2D DICOM / NIfTI image's plane where it stores one: open it over the image in
    Slicer; the folder is replaced whole, and refused when it
    holds other files, `check_prediction_folder`) and, for a calibrated model, `expected_error.csv`
    (one column per landmark, mm, and a last column `check` naming the landmarks whose expected
    error is above `flag_mm` - by default `FLAG_MM` -, ";"-separated) into `folder`, as a
    set: all are written into a staging folder and moved into place together, so a failure
    leaves the previous set. Returns the written paths."""
    import csv

    from keraslm.io import LandmarkTable, write_landmarks, write_markups

    if not predictions:
        raise KeraslmError(f"no predictions to write into {folder}")
    check_prediction_folder(folder, "the output folder")  # Nothing written when it fails.
    os.makedirs(folder, exist_ok=True)
    names = predictions[0].landmark_names
    ids = [p.image_id for p in predictions]
    calibrated = all(p.expected_error_mm is not None for p in predictions)
    files = ["predictions.csv", "predictions_index.csv", "predictions.json"]
    files += [EXPECTED_ERROR_FILE] if calibrated else []
    # Everything is written into a staging folder first and moved into place only when all of
    # it is written: a failure (a full disk) leaves the previous prediction's set as it was,
    # not new CSVs beside an old JSON.
    staging = tempfile.mkdtemp(prefix=".keraslm-predict.", dir=folder)
    try:
        write_landmarks(os.path.join(staging, "predictions.csv"),
                        LandmarkTable(ids, names, np.stack([p.points_mm for p in predictions])))
        write_landmarks(os.path.join(staging, "predictions_index.csv"),
                        LandmarkTable(ids, names, np.stack([p.points_index for p in predictions])))
        units = {"mm": "physical LPS millimetres", "index": "image index (x, y[, z])"}
        if calibrated:
            units["expected_error_mm"] = "calibrated expected point error, mm"
        write_json(os.path.join(staging, "predictions.json"),
                   {"units": units,
                    "flag_mm": flag_mm,
                    "predictions": [p.to_dict(flag_mm) for p in predictions]})
        for p in predictions:  # The markups folder holds this prediction's images only.
            write_markups(os.path.join(staging, MARKUPS_FOLDER, f"{p.image_id}.mrk.json"), names,
                          _markup_points(p), description=f"keraslm {p.image_id}")
        if calibrated:
            with open(os.path.join(staging, EXPECTED_ERROR_FILE), "w", encoding="utf-8",
                      newline="") as handle:
                writer = csv.writer(handle)
                # The last column names the landmarks to check by hand (expected error above
                # flag_mm), ";"-separated; empty when there is none.
                writer.writerow(["id", *names, "check"])
                for p in predictions:
                    writer.writerow([p.image_id, *(f"{e:.3f}" for e in p.expected_error_mm),
                                     ";".join(name for name, e in zip(names, p.expected_error_mm)
                                              if e > flag_mm)])
        # All written: into place (renames within one folder).
        markups = os.path.join(folder, MARKUPS_FOLDER)
        if os.path.isdir(markups):
            os.replace(markups, os.path.join(staging, ".old_markups"))
        os.replace(os.path.join(staging, MARKUPS_FOLDER), markups)
        for name in files:
            os.replace(os.path.join(staging, name), os.path.join(folder, name))
        stale = os.path.join(folder, EXPECTED_ERROR_FILE)
        if not calibrated and os.path.isfile(stale):
            os.remove(stale)  # An earlier, calibrated model's; these predictions have none.
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    written = [os.path.join(folder, name) for name in files[:3]]
    written.append(os.path.join(folder, MARKUPS_FOLDER) + os.sep)
    return written + ([os.path.join(folder, EXPECTED_ERROR_FILE)] if calibrated else [])
