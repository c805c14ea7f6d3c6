"""What is evaluated: a model on a dataset split, training runs pooled, or two landmark CSVs.

Each source becomes an `Evaluation`: image ids, predicted and ground-truth landmarks in
physical mm (LPS) `(num_images, num_landmarks, ndim)`, their point errors, and (when the images
are known) a way to read each image back for overlay plots.

- `evaluate_model(model, test_set)`: runs `keraslm.prediction.predict` on a dataset's images.
- `evaluate_runs(run_dirs)`: each training run folder (`train.py --output-dir`) is evaluated
  on its own held-out split, rebuilt from its `config.json` (and checked against the ids its
  `metrics.json` recorded); the runs are pooled into one evaluation (cross-validation).
- `evaluate_predictions(predictions_csv, ground_truth_csv)`: two landmark files, their rows
  matched by the image each id names.
"""
import dataclasses
import functools
import os

import numpy as np

from keraslm.data import LandmarkDataset, select_split
from keraslm.errors import KeraslmError, MissingSpacingError
from keraslm.evaluation.metrics import (mean_position_points, per_landmark, point_errors, pool,
                                        summarize)
from keraslm.io import LandmarkTable, read_landmarks, strip_image_extension
from keraslm.run_folder import CONFIG_FILE, METRICS_FILE, MODEL_FILE, RunFolder

# Re-exported names of the run folder's files (`keraslm.run_folder`).
RUN_CONFIG_FILE, RUN_METRICS_FILE, RUN_MODEL_FILE = CONFIG_FILE, METRICS_FILE, MODEL_FILE


@dataclasses.dataclass(frozen=True, eq=False)
class Evaluation:
    """Predictions, ground truth and point errors of a set of images.

    Args:
        method: str. Label of the row in reports (e.g. the architecture or run name).
        ids: tuple of str. One per image (unique).
        landmark_names: tuple of str.
        predicted_mm: np.ndarray `(num_images, num_landmarks, ndim)`. Physical mm, LPS.
        ground_truth_mm: np.ndarray, same shape. NaN = missing landmark.
        errors: PointErrors.
        image_readers: tuple or None. Per image a callable returning its `keraslm.io.Image`
            (for overlays), or None where the image is not known.
        sources: tuple of dict. What was evaluated (model, dataset, split, run folder, ids).
        confidence, spread_mm, expected_error_mm, second_peak: np.ndarray `(num_images,
            num_landmarks)` or None. The predictions' uncertainty outputs
            (`keraslm.prediction.Prediction`), where the model gave them.
        baseline_mm: np.ndarray like `predicted_mm`, or None. The mean-position baseline's
            points (each landmark at its mean training position,
            `keraslm.evaluation.metrics.mean_position_points`), where the model recorded them.
        mirror_axis: int or None. The axis (0 = x, ...) the model's mirror check
            (`keraslm.spec.MirrorCheck`) mirrors along: a calibration's shape vote applied to
            these points then accepts the mirrored shape too, as the model's own graph does.
    """

    method: str
    ids: tuple
    landmark_names: tuple
    predicted_mm: np.ndarray
    ground_truth_mm: np.ndarray
    errors: object
    image_readers: tuple = None
    sources: tuple = ()
    confidence: np.ndarray = None
    spread_mm: np.ndarray = None
    expected_error_mm: np.ndarray = None
    baseline_mm: np.ndarray = None
    second_peak: np.ndarray = None
    mirror_axis: int = None

    @property
    def ndim(self):
        """int. 2 or 3."""
        return self.ground_truth_mm.shape[-1]

    def summary(self):
        """dict. `keraslm.evaluation.metrics.summarize` of the errors."""
        return summarize(self.errors)

    def per_landmark(self):
        """list of dict. `keraslm.evaluation.metrics.per_landmark` of the errors."""
        return per_landmark(self.errors)

    def baseline_summary(self):
        """dict or None. `summarize` of the mean-position baseline's errors on the same images
        (with the same normalisation), or None when the model did not record its training
        positions."""
        if self.baseline_mm is None:
            return None
        normalization = self.errors.normalization or {}
        return summarize(point_errors(
            self.baseline_mm, self.ground_truth_mm, self.ids, self.landmark_names,
            normalization.get("distance_mm"), tuple(normalization.get("landmarks", (1, 5)))))


def _progress(progress):
    return progress or (lambda message: None)


def check_model_matches(spec, dataset, model_label):
    """Raises a KeraslmError unless a model (its `keraslm.spec.DetectorSpec`) fits a dataset
    (dimension and number of landmarks); both counts are named in the message."""
    names = list(spec.landmark_names)
    if spec.ndim != dataset.ndim:
        raise KeraslmError(
            f"model {model_label} expects {spec.ndim}D images but dataset "
            f"{dataset.name!r} is {dataset.ndim}D"
        )
    if len(names) != dataset.num_landmarks:
        raise KeraslmError(
            f"model {model_label} predicts {len(names)} landmarks but dataset {dataset.name!r} "
            f"has {dataset.num_landmarks} landmarks per image"
        )


def _positional(names):
    """Whether landmark names are a headerless file's placeholders (landmark0, landmark1, ...):
    such landmarks can only be matched by position."""
    return list(names) == [f"landmark{i}" for i in range(len(names))]


def landmark_order(names, reference_names, source, reference_source):
    """Column order that puts landmarks `names` into `reference_names`' order: matched by
    name (by position when either side is a headerless file's placeholders).

    Returns:
        list of int, or None when the order is already the reference's.

    Raises:
        KeraslmError: the names differ (both sides' own names listed) or the counts differ.
    """
    names, reference_names = [str(n) for n in names], [str(n) for n in reference_names]
    if len(names) != len(reference_names):
        raise KeraslmError(f"{source} has {len(names)} landmarks per row but {reference_source} "
                           f"has {len(reference_names)}")
    if names == reference_names or _positional(names) or _positional(reference_names):
        return None
    if sorted(names) != sorted(reference_names) or len(set(names)) != len(names):
        raise KeraslmError(
            f"{source} and {reference_source} name their landmarks differently (matched by "
            f"name): only in {source}: {', '.join(n for n in names if n not in reference_names)}"
            f"; only in {reference_source}: "
            f"{', '.join(n for n in reference_names if n not in names)}")
    return [names.index(n) for n in reference_names]


def in_model_order(dataset, model_names, model_label):
    """The dataset with its landmarks in the model's order, matched by name (a dataset whose
    CSV lists them in another order, e.g. a long CSV sorted by landmark)."""
    order = landmark_order(dataset.landmark_names, model_names, f"dataset {dataset.name!r}",
                           f"model {model_label}")
    if order is None:
        return dataset
    records = tuple(dataclasses.replace(record, points_mm=np.asarray(record.points_mm)[order])
                    for record in dataset.records)
    return dataclasses.replace(dataset, records=records,
                               landmark_names=tuple(dataset.landmark_names[i] for i in order))


def open_dataset(dataset, dataset_root=None, spacing=None, units=None, ndim=None):
    """`keraslm.datasets.load_dataset` (kept under this name for evaluate.py's callers)."""
    from keraslm.datasets import load_dataset

    return load_dataset(dataset, root=dataset_root, units=units, spacing=spacing, ndim=ndim)


def evaluate_model(model, test_set, method=None, normalize_distance=None,
                   normalize_landmarks=(1, 5), batch_size=4, progress=None, source=None,
                   refine=None, precision="float32"):
    """Predicts the landmarks of a dataset's images with a model and compares them with the
    dataset's ground truth.

    Args:
        model: str path (a `.keras` file, a run folder or a SavedModel version
            folder) or a predictor from `keraslm.prediction.load_predictor`; a list of `.keras`
            paths is an ensemble (`keraslm.prediction.load_predictor`).
        test_set: LandmarkDataset. The images to evaluate (e.g. a held-out split).
        method: str, optional. Report label; default: the model's architecture.
        normalize_distance: float or None. See `keraslm.evaluation.metrics.point_errors`.
        normalize_landmarks: pair of int.
        batch_size: int. Images read together (and counted in one progress line).
        progress: callable(str), optional. Receives progress lines.
        source: dict, optional. Extra description stored in `Evaluation.sources`.
        refine: str path or predictor, optional. Local stage of a coarse-to-fine model that
            refines `model`'s estimates (`keraslm.prediction.load_predictor`); a list of paths
            is an ensemble of local stages.
        precision: str. Compute precision of `.keras` models (`keraslm.prediction.DetectorPredictor`).

    Returns:
        Evaluation.

    Raises:
        KeraslmError: the model cannot be loaded or does not fit the dataset (dimension,
            number of landmarks), or an image cannot be read.
    """
    from keraslm.prediction import load_predictor, predict

    progress = _progress(progress)
    members = _members

    def named(item):
        return os.fspath(item) if isinstance(item, (str, os.PathLike)) else "(given model)"

    for item in members(model) + ([] if refine is None else members(refine)):
        if isinstance(item, (str, os.PathLike)) and not os.path.exists(item):
            raise KeraslmError(f"{os.fspath(item)}: no such model file or folder")
    label = " & ".join(named(item) for item in members(model))
    if refine is not None:
        label += " + " + " & ".join(
            named(item) if isinstance(item, (str, os.PathLike)) else "local stage"
            for item in members(refine))
    predictor = load_predictor(model, refine=refine, precision=precision)
    spec = predictor.spec
    check_model_matches(spec, test_set, label)
    test_set = in_model_order(test_set, spec.landmark_names, label)
    if len(test_set) == 0:
        raise KeraslmError(f"dataset {test_set.name!r}: no images to evaluate")
    records = test_set.records
    predictions = []
    for start in range(0, len(records), batch_size):
        chunk = records[start : start + batch_size]
        images = [test_set.read_image(record) for record in chunk]
        predictions += predict(predictor, images)
        progress(f"predicted {min(start + batch_size, len(records))}/{len(records)} images")
    predicted = np.stack([p.points_mm for p in predictions])

    def stacked(field):
        values = [getattr(p, field) for p in predictions]
        return None if any(v is None for v in values) else np.stack(values).astype(np.float64)

    errors = point_errors(predicted, test_set.points_mm, test_set.ids, test_set.landmark_names,
                          normalize_distance, normalize_landmarks)
    if method is None:
        method = (method_name([s.architecture for s in spec.global_stages],
                              [s.architecture for s in spec.local_stages])
                  if spec.is_ensemble or spec.local_stages
                  else spec.global_stages[0].architecture or os.path.basename(label))
    return Evaluation(
        method, test_set.ids, test_set.landmark_names, predicted, test_set.points_mm, errors,
        tuple(functools.partial(test_set.read_image, record) for record in records),
        ({"model": label, "dataset": test_set.name, "ids": list(test_set.ids),
          "stages": {"global": len(spec.global_stages), "local": len(spec.local_stages)},
          **(source or {})},),
        stacked("confidence"), stacked("spread_mm"), stacked("expected_error_mm"),
        None if spec.mean_position_mm is None else mean_position_points(
            spec.mean_position_mm, len(records), spec.ndim),
        second_peak=stacked("second_peak"),
        mirror_axis=None if spec.mirror_check is None else "xyz".index(spec.mirror_check.axis),
    )


def method_name(global_architectures, local_architectures=()):
    """str. The report's row label of a model: "scn", "scn + local unet", "scn x2 + local unet
    x2 (ensemble)" or "scn & unet (ensemble)" (the architectures of its stages' members)."""
    def stage(architectures):
        names = [str(name or "model") for name in architectures]
        if len(set(names)) == 1:
            return names[0] + (f" x{len(names)}" if len(names) > 1 else "")
        return " & ".join(names)

    text = stage(global_architectures)
    if local_architectures:
        text += " + local " + stage(local_architectures)
    if len(global_architectures) > 1 or len(local_architectures) > 1:
        text += " (ensemble)"
    return text


def read_run_config(run_dir):
    """dict. A training run folder's `config.json`.

    Raises:
        KeraslmError: the folder, its config.json or its model.keras is missing or unreadable.
    """
    folder = RunFolder(run_dir)
    config = folder.read_config()
    if "dataset" not in config:
        raise KeraslmError(f"{folder.config_path}: has no 'dataset' entry")
    if not folder.is_finished():
        raise KeraslmError(
            f"{os.fspath(run_dir)}: no {MODEL_FILE}; the run has not finished (resume it with "
            "train.py --resume)"
        )
    return config


def run_test_set(run_dir, config=None):
    """The held-out split of a training run, rebuilt from its config.json exactly as train.py
    chose it, and checked against the validation ids its metrics.json recorded.

    Returns:
        LandmarkDataset.
    """
    from keraslm.datasets import load_dataset

    config = config or read_run_config(run_dir)
    def load(spacing):
        return load_dataset(config["dataset"], root=config.get("dataset_root"),
                            units=config.get("units"), spacing=spacing, ndim=config.get("ndim"))

    try:
        try:
            dataset = load(config.get("image_spacing"))
        except MissingSpacingError:
            if config.get("image_spacing") is not None:
                raise
            # Trained before a spacing was required: its plain images were read at 1 mm/pixel.
            dataset = load(1.0)
    except KeraslmError as error:
        recorded = config["dataset"]
        relative_path = (isinstance(recorded, str) and not os.path.isabs(recorded)
                         and (os.sep in recorded or os.path.splitext(recorded)[1] != ""))
        where = ("; it is a relative path (runs trained before paths were recorded absolute): "
                 "run from the folder the run was trained in" if relative_path else "")
        raise type(error)(f"{RunFolder(run_dir).config_path}: the run's dataset {recorded!r} "
                          f"cannot be loaded ({error}){where}") from None
    by_id_files = bool(config.get("train_ids") or config.get("test_ids"))
    _, test_set = select_split(  # Runs of before the check recorded a --fold beside id files.
        dataset, fold=None if by_id_files else config.get("fold"),
        num_folds=config.get("num_folds", 5),
        train_ids=config.get("train_ids"), test_ids=config.get("test_ids"),
        test_fraction=config.get("test_fraction", 0.2), seed=config.get("seed", 0),
    )
    folder = RunFolder(run_dir)
    if os.path.isfile(folder.metrics_path):
        recorded = folder.read_metrics().get("validation_ids")
        if recorded is not None and sorted(recorded) != sorted(test_set.ids):
            raise KeraslmError(
                f"{run_dir}: the split rebuilt from {RUN_CONFIG_FILE} holds ids "
                f"{', '.join(test_set.ids)}, but training validated on "
                f"{', '.join(recorded)} ({RUN_METRICS_FILE}); has dataset {config['dataset']!r} changed?"
            )
    return test_set


def held_out_groups(evaluation):
    """Cross-fitting rounds of a pooled evaluation: `(num_images,)` int, the number of the part
    (e.g. the cross-validation fold of `evaluate_runs`) each image came from - or None (groups
    by position) for an evaluation of one model on one split."""
    sizes = [len(source.get("ids") or ()) for source in evaluation.sources]
    if len(sizes) < 2 or 0 in sizes or sum(sizes) != len(evaluation.ids):
        return None
    return np.repeat(np.arange(len(sizes)), sizes)


def blend_evaluation(cascade, global_only, num_folds=5):
    """A coarse-to-fine evaluation with each point replaced by the per-landmark blend of its
    refined and its global estimate (`keraslm.calibration.blend_stages`).

    The blended points of each image come from weights fitted without it
    (`keraslm.calibration.cross_fitted_blend`; with several runs pooled, as `evaluate_runs`
    does for a cross-validation, each run's images from the weights of the other runs, else
    `num_folds` groups by position): what weights fitted on all these images give on new ones.
    Those weights, fitted on all images, are returned for the calibration.

    Args:
        cascade: Evaluation of a coarse-to-fine model (the refined points).
        global_only: Evaluation of its global stage alone, on the same images.

    Returns:
        (Evaluation, np.ndarray `(num_landmarks,)` local weights fitted on all images).

    Raises:
        KeraslmError: the two evaluations differ in images or landmarks.
    """
    from keraslm.calibration import cross_fitted_blend, fit_local_weight

    if (tuple(global_only.ids) != tuple(cascade.ids)
            or list(global_only.landmark_names) != list(cascade.landmark_names)):
        raise KeraslmError("the global stage's evaluation must cover the same images and "
                           "landmarks as the coarse-to-fine one")
    blended = cross_fitted_blend(global_only.predicted_mm, cascade.predicted_mm,
                                 cascade.ground_truth_mm, num_folds, held_out_groups(cascade))
    weight = fit_local_weight(global_only.predicted_mm, cascade.predicted_mm, cascade.ground_truth_mm)
    return with_points(cascade, blended, f"{cascade.method} (stages blended)"), weight


def with_points(evaluation, predicted_mm, method):
    """The evaluation of other predicted points `(num_images, num_landmarks, ndim)` mm of the
    same images: errors recomputed with the evaluation's normalisation, row label `method`."""
    normalization = evaluation.errors.normalization or {}
    errors = point_errors(predicted_mm, evaluation.ground_truth_mm, evaluation.ids,
                          evaluation.landmark_names, normalization.get("distance_mm"),
                          tuple(normalization.get("landmarks", (1, 5))))
    return dataclasses.replace(evaluation, method=method, predicted_mm=predicted_mm, errors=errors)


def _unique_labels(paths):
    """Short distinct labels of run folders: their names, with as many parent folders as it
    takes to tell them apart (seed1/run, seed2/run); a path given twice is numbered."""
    parts = [os.path.normpath(path).split(os.sep) for path in paths]
    for depth in range(1, max(len(p) for p in parts) + 1):
        labels = ["/".join(p[-depth:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    return [f"{'/'.join(p[-1:])}#{number}" for number, p in enumerate(parts, 1)]


def combine(evaluations, method=None):
    """Pools several evaluations (e.g. cross-validation folds) into one. Ids that occur in more
    than one part (repeated random splits) are prefixed by the part's run or method label.

    Raises:
        KeraslmError: the parts disagree in landmarks, dimension or normalisation.
    """
    evaluations = list(evaluations)
    if not evaluations:
        raise KeraslmError("nothing to combine: no evaluations were given")
    first = evaluations[0]
    for number, part in enumerate(evaluations[1:], 1):
        if part.ndim != first.ndim:
            raise KeraslmError(
                f"cannot pool evaluation {number} ({part.ndim}D) with evaluation 0 ({first.ndim}D)"
            )
    all_ids = [i for part in evaluations for i in part.ids]
    repeated = len(set(all_ids)) != len(all_ids)
    ids = []
    labels = _unique_labels([
        str(part.sources[0].get("run", part.method)) if part.sources else f"part{number}"
        for number, part in enumerate(evaluations)])
    for label, part in zip(labels, evaluations):
        ids += [f"{label}/{i}" if repeated else i for i in part.ids]
    errors = pool([part.errors for part in evaluations])
    readers = None
    if all(part.image_readers is not None for part in evaluations):
        readers = tuple(r for part in evaluations for r in part.image_readers)

    def pooled(field):
        values = [getattr(part, field) for part in evaluations]
        return None if any(v is None for v in values) else np.concatenate(values)

    return Evaluation(
        method or first.method, tuple(ids), first.landmark_names,
        np.concatenate([part.predicted_mm for part in evaluations]),
        np.concatenate([part.ground_truth_mm for part in evaluations]),
        dataclasses.replace(errors, ids=tuple(ids)), readers,
        tuple(source for part in evaluations for source in part.sources),
        pooled("confidence"), pooled("spread_mm"), pooled("expected_error_mm"),
        pooled("baseline_mm"), second_peak=pooled("second_peak"),
        mirror_axis=(first.mirror_axis
                     if len({part.mirror_axis for part in evaluations}) == 1 else None),
    )


def _members(entry):
    """A run entry's members (`keraslm.prediction.predictors.ensemble_members`, imported when
    used: this module loads without TensorFlow); an empty ensemble is an error."""
    from keraslm.prediction.predictors import ensemble_members

    members = ensemble_members(entry)
    if not members:
        raise KeraslmError("an ensemble entry is empty")
    return members


def _model_paths(entry):
    """The `.keras` path(s) of a run entry: one path, or a list for an ensemble."""
    paths = [RunFolder(run_dir).model_path for run_dir in _members(entry)]
    return paths if isinstance(entry, (list, tuple)) else paths[0]


def evaluate_runs(run_dirs, method=None, normalize_distance=None, normalize_landmarks=(1, 5),
                  batch_size=4, progress=None, refine_runs=None, precision="float32"):
    """Evaluates each training run on its own held-out split and pools them into one table.

    Args:
        run_dirs: sequence of str. Run folders written by `train.py --output-dir`. An entry
            may be a list of run folders on the same held-out split: an ensemble
            (`keraslm.prediction.load_predictor`, the members' points averaged).
        method: str, optional. Report label; default: the first run's architecture.
        normalize_distance, normalize_landmarks: see `keraslm.evaluation.metrics.point_errors`.
        batch_size: int.
        progress: callable(str), optional.
        refine_runs: sequence of str, optional. Local-stage runs (train.py --crop-shape), one
            per run of `run_dirs` in the same order and on the same held-out split; each
            refines its partner's estimates. An entry may be a list (an ensemble of local
            stages).
        precision: str. Compute precision of the runs' networks (see `evaluate_model`).

    Returns:
        Evaluation (pooled over all runs' test images).

    Raises:
        KeraslmError: a run is missing or unfinished, or the runs that work together (a global
            and its local stage, an ensemble's members) held out different images.
    """
    progress = _progress(progress)
    if not run_dirs:
        raise KeraslmError("no training run folders were given")
    configs = [[read_run_config(run_dir) for run_dir in _members(entry)]  # Fail early.
               for entry in run_dirs]
    refine_runs = list(refine_runs or [])
    if refine_runs:
        if len(refine_runs) != len(run_dirs):
            raise KeraslmError(
                f"{len(refine_runs)} refining runs for {len(run_dirs)} runs: give one local-stage "
                "run per run, in the same order")
        for entry in refine_runs:
            for local_dir in _members(entry):
                read_run_config(local_dir)
    for number, entry in enumerate(run_dirs):
        first, *others = _members(entry)
        locals_ = _members(refine_runs[number]) if refine_runs else []
        ids = sorted(run_test_set(first).ids)
        for other in others + locals_:
            if sorted(run_test_set(other).ids) != ids:
                what = "a local stage" if other in locals_ else "an ensemble's members"
                raise KeraslmError(
                    f"{other} was validated on other images than {first}; {what} must hold out "
                    "the same split as the run it works with")
    if method is None and (refine_runs or len(configs[0]) > 1):
        method = method_name(
            [config.get("architecture") for config in configs[0]],
            [read_run_config(local_dir).get("architecture")
             for local_dir in (_members(refine_runs[0]) if refine_runs else [])])
    parts = []
    for number, (entry, config) in enumerate(zip(run_dirs, configs), 1):
        run_dir, config = _members(entry)[0], config[0]
        label = " & ".join(os.fspath(member) for member in _members(entry))
        test_set = run_test_set(run_dir, config)
        progress(f"run {number}/{len(run_dirs)} {label}: {len(test_set)} held-out images")
        parts.append(evaluate_model(
            _model_paths(entry), test_set, method=method or config.get("architecture"),
            normalize_distance=normalize_distance, normalize_landmarks=normalize_landmarks,
            batch_size=batch_size, progress=progress,
            source={"run": label, "fold": config.get("fold"),
                    "num_folds": config.get("num_folds"), "seed": config.get("seed")},
            refine=_model_paths(refine_runs[number - 1]) if refine_runs else None,
            precision=precision,
        ))
    return combine(parts, method)


def _image_name_parts(image_id):
    """(path components without `.` parts and without the image extension, the extension in
    lower case or ""): `images/x.png` -> (("images", "x"), ".png"), `x` -> (("x",), "")."""
    parts = [p for p in str(image_id).replace("\\", "/").split("/") if p not in ("", ".")]
    extension = ""
    if parts:
        stem = strip_image_extension(parts[-1])
        extension, parts[-1] = parts[-1][len(stem):].lower(), stem
    return tuple(parts), extension


def _names_same_image(first_id, second_id):
    """bool. Whether two ids name the same image, with or without the image extension and a
    relative folder path: the shorter id's path components (extension removed) end the
    longer id's, and where both have an extension it is the same. `x` == `x.png` ==
    `images/x.png` and `a/x` == `data/a/x.dcm`, but `a/x` != `b/x` and `x.png` != `x.dcm`."""
    (first, first_extension), (second, second_extension) = (
        _image_name_parts(first_id), _image_name_parts(second_id))
    if first_extension and second_extension and first_extension != second_extension:
        return False
    shorter, longer = sorted((first, second), key=len)
    return bool(shorter) and longer[len(longer) - len(shorter):] == shorter


def _match_image_ids(predicted_ids, truth_ids, predictions_csv, ground_truth_csv):
    """dict predicted id -> ground-truth id of the rows that name the same image. An id found
    in both files matches itself; any other id matches the one ground-truth id that names the
    same image (`_names_same_image`). Unmatched ids are left out of the dict.

    Raises:
        KeraslmError: a predicted id names several ground-truth images, or several predicted
            ids name the same ground-truth image (all such ids named).
    """
    truth_set = set(truth_ids)
    candidates = {}
    for predicted_id in predicted_ids:
        if predicted_id in truth_set:
            candidates[predicted_id] = [predicted_id]
        else:
            candidates[predicted_id] = [t for t in truth_ids if _names_same_image(predicted_id, t)]
    problems = [f"{predicted_id} (in {predictions_csv}) could be any of {', '.join(found)} "
                f"(in {ground_truth_csv})"
                for predicted_id, found in candidates.items() if len(found) > 1]
    claimed = {}
    for predicted_id, found in candidates.items():
        if len(found) == 1:
            claimed.setdefault(found[0], []).append(predicted_id)
    problems += [f"{', '.join(ids)} (in {predictions_csv}) all name {truth_id} (in "
                 f"{ground_truth_csv})" for truth_id, ids in claimed.items() if len(ids) > 1]
    if problems:
        raise KeraslmError("cannot match the predictions' ids with the ground truth's "
                           "unambiguously: " + "; ".join(problems)
                           + "; give each image the same id in both files")
    return {ids[0]: truth_id for truth_id, ids in claimed.items()}


def shape_size(points):
    """The median over images of the RMS distance of an image's landmarks from their centroid
    (in the points' units; NaN landmarks left out): the size of the shapes a landmark file
    holds, to tell whether two files are in the same units."""
    points = np.asarray(points, np.float64)
    centred = points - np.nanmean(points, axis=1, keepdims=True)
    sizes = np.sqrt(np.nanmean(np.sum(centred ** 2, axis=-1), axis=1))
    return float(np.nanmedian(sizes)) if np.any(np.isfinite(sizes)) else float("nan")


def _ratio(numerator, denominator):
    """numerator / denominator, or None where that is no finite number."""
    if not (np.isfinite(numerator) and np.isfinite(denominator)) or denominator <= 0:
        return None
    return numerator / denominator


def evaluate_predictions(predictions_csv, ground_truth_csv, ndim=None, method="predictions",
                         normalize_distance=None, normalize_landmarks=(1, 5),
                         ground_truth_subset=False):
    """Compares a predictions CSV with a ground-truth CSV (both physical mm; named or
    headerless layout, see `keraslm.io.read_landmarks`) or with a dataset's landmarks (mm, as
    the dataset reads them: a dataset whose file is in pixels is converted with its spacing).
    Rows are matched by id: the same id, or ids that name the same image with or without the
    image extension and a relative folder path (`x` == `x.png` == `images/x.png`, as
    `keraslm-predict` and a dataset's CSV name one image), when the match is unambiguous.

    The source entry records `shape_size_ratio`: the ground truth's shape size over the
    predictions' (`shape_size`), about 1 when both are in mm; far from 1 (10 for ISBI 2015's
    pixel file against mm predictions) when one file is in another unit - the errors are then
    meaningless (`keraslm-evaluate` warns).

    Args:
        predictions_csv: str.
        ground_truth_csv: str, or a `keraslm.data.LandmarkDataset` (its points in mm).
        ndim: int or None. Required if either file is headerless; checked otherwise.
        method: str. Report label.
        normalize_distance, normalize_landmarks: see `keraslm.evaluation.metrics.point_errors`.
        ground_truth_subset: bool. If True, the predictions may cover a subset of the ground
            truth's ids (e.g. one test split of a whole dataset's CSV): ground-truth rows
            without a prediction are left out and counted in the source entry
            (`ground_truth_rows_left_out`). Every predicted id must still have ground truth.

    Returns:
        Evaluation (in the ground truth's id order; no image readers).

    Raises:
        KeraslmError: a file is missing or malformed, the ids differ (all differences listed;
            with `ground_truth_subset` only predicted ids lacking ground truth), an id matches
            ambiguously (all such ids named), or the landmark counts or dimensions differ.
    """
    predicted = read_landmarks(predictions_csv, ndim=ndim)
    if isinstance(ground_truth_csv, LandmarkDataset):
        dataset = ground_truth_csv
        truth = LandmarkTable(dataset.ids, dataset.landmark_names, dataset.points_mm)
        ground_truth_csv = f"dataset {dataset.name!r}"
    else:
        truth = read_landmarks(ground_truth_csv, ndim=ndim)
    if predicted.ndim != truth.ndim:
        raise KeraslmError(
            f"{predictions_csv} holds {predicted.ndim}D landmarks but {ground_truth_csv} holds "
            f"{truth.ndim}D landmarks"
        )
    order = landmark_order(predicted.names, truth.names, predictions_csv, ground_truth_csv)
    if order is not None:  # Matched by name: the predictions' columns in the truth's order.
        predicted = LandmarkTable(predicted.ids, truth.names, predicted.points[:, order])
    truth_of = _match_image_ids(predicted.ids, truth.ids, predictions_csv, ground_truth_csv)
    matched_truth = set(truth_of.values())
    only_predicted = [i for i in predicted.ids if i not in truth_of]
    only_truth = [i for i in truth.ids if i not in matched_truth]
    left_out = 0
    if ground_truth_subset and only_truth and not only_predicted:
        keep = [n for n, i in enumerate(truth.ids) if i in matched_truth]
        truth = LandmarkTable([truth.ids[n] for n in keep], truth.names, truth.points[keep])
        left_out, only_truth = len(only_truth), []
    if only_predicted or only_truth:
        parts = []
        if only_predicted:
            parts.append(f"ids only in {predictions_csv}: {', '.join(only_predicted)}")
        if only_truth:
            parts.append(f"ids only in {ground_truth_csv}: {', '.join(only_truth)}")
        raise KeraslmError("predictions and ground truth have different ids; " + "; ".join(parts))
    prediction_of = {truth_id: predicted_id for predicted_id, truth_id in truth_of.items()}
    predicted_mm = np.stack([predicted.points_of(prediction_of[i]) for i in truth.ids])
    errors = point_errors(predicted_mm, truth.points, truth.ids, truth.names,
                          normalize_distance, normalize_landmarks)
    return Evaluation(
        method, truth.ids, truth.names, predicted_mm, truth.points, errors, None,
        ({"predictions": os.fspath(predictions_csv), "ground_truth": os.fspath(ground_truth_csv),
          "shape_size_ratio": _ratio(shape_size(truth.points), shape_size(predicted_mm)),
          **({"ground_truth_rows_left_out": left_out} if ground_truth_subset else {})},),
    )
