"""One training run from a `TrainingConfig`: data, grid, model, compiled fit, checkpoints, outputs.

`train(config)` is what `train.py` calls. It reports progress through Keras' progress bar and an
optional `log` callable (library code does not print) and returns a `TrainingResult`.

Output folder layout (`config.output_dir`):

    config.json        the resolved configuration
    model.keras        the trained detector (`keraslm.prediction.LandmarkDetector`: the network
                       and its `keraslm.spec.DetectorSpec`), written atomically at the end
    metrics.json       validation point errors in physical mm (written atomically): a whole-
                       image stage's measured by the prediction graph that `keraslm.predict`
                       runs, on the validation images as read from their files
    checkpoints/       BackupAndRestore state while training (removed when the run finishes)
    logs/              TensorBoard: loss, validation point error, heatmap images

With `config.export_dir` set, the trained network is also exported for TF Serving as the next
version folder `<export_dir>/<version>/` (`keraslm.export.export_saved_model`).
"""
import dataclasses
import math
import os
import shutil
import sys
import time

import keras
import numpy as np
import tensorflow as tf

from keraslm.data import select_split
from keraslm.io import holds_geometry, natural_key
from keraslm.datasets import cache_dir, load_dataset
from keraslm.errors import DatasetError, KeraslmError, UsageError
from keraslm.export import check_export_base, export_saved_model
from keraslm.evaluation.metrics import mean_position_points, summarize
from keraslm.prediction import LandmarkDetector, combine_detectors
from keraslm.spec import DetectorSpec, mean_position_mm, stage_spec
from keraslm.files import atomic_path, check_output_folder, read_json, write_json
from keraslm.models import build_model
from keraslm.run_folder import RunFolder
from keraslm.precision import choose_precision, dtype_policy, with_precision
from keraslm.ops.augmentation import AugmentationConfig
from keraslm.training.callbacks import BackupAndRestore, EpochHistory
from keraslm.training.config import DISTRIBUTE, TrainingConfig  # noqa: F401  (re-exported)
from keraslm.training.jit import JitChoice, choose_jit
from keraslm.training.pipeline import (
    DEFAULT_NORMALIZATION,
    cache_prefix,
    clear_unfinished_cache,
    evaluation_dataset,
    prepare_samples,
    streaming_training_dataset,
    training_dataset,
)
from keraslm.training.plan import (
    TrainingPlan,
    activation_bytes_per_sample,
    available_memory_bytes,
    memory_batch_limit,
)
from keraslm.training.presets import get_training_preset
from keraslm.training.stages import stage_for

@dataclasses.dataclass
class TrainingResult:
    """What a run produced: paths, timing and validation errors in physical mm."""

    model_path: str
    output_dir: str
    steps: int
    seconds: float
    errors_mm: np.ndarray  # (num_val_images, num_landmarks), NaN where ground truth is missing
    summary: dict
    export_path: str = None  # SavedModel version folder, when config.export_dir was set
    pictures: list = dataclasses.field(default_factory=list)  # validation plots written
    # The mean-position baseline's summary on the same validation images (each landmark at its
    # mean training position), None without validation images.
    baseline_summary: dict = None
    plan: object = None  # The TrainingPlan (keraslm.training.plan) the run followed.


VALIDATION_CUMULATIVE_PLOT = "validation_cumulative_error.png"


def _fit(trainer, train_data, epochs, steps_per_epoch, val_samples, batch_size, callbacks):
    trainer.fit(
        train_data,
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        validation_data=evaluation_dataset(val_samples, batch_size) if val_samples is not None else None,
        callbacks=callbacks,
        shuffle=False,  # tf.data shuffles already.
        # A progress bar on a terminal; one line per epoch into files, pipes and CI logs.
        verbose=1 if sys.stdout.isatty() else 2,
    )


def _write_pictures(output_dir, val_set, points_mm, errors_mm, label, num_overlays=3):
    """The cumulative error curve of the validation points and overlays of truth vs prediction
    on the best, the median and the worst validation image (3D: maximum-intensity
    projections). Returns the written paths."""
    from keraslm.evaluation import plots

    written = [os.path.join(output_dir, VALIDATION_CUMULATIVE_PLOT)]
    plots.plot_cumulative_error(written[0], {label: errors_mm},
                                title="Validation point error (cumulative)")
    means = np.nanmean(np.where(np.isfinite(errors_mm), errors_mm, np.nan), axis=1)
    order = [int(i) for i in np.argsort(np.where(np.isfinite(means), means, np.inf))
             if np.isfinite(means[i])]
    if not order:
        return written
    picks = sorted({order[0], order[len(order) // 2], order[-1]}, key=lambda i: means[i])
    for rank, index in enumerate(picks[:num_overlays], 1):
        record = val_set.records[index]
        safe_id = "".join(c if c.isalnum() or c in "-_." else "_" for c in record.id)
        path = os.path.join(output_dir, f"validation_overlay_{rank}_{safe_id}.png")
        plots.plot_overlay(path, val_set.read_image(record), val_set.points_mm[index],
                           points_mm[index],
                           title=f"{record.id}: mean error {means[index]:.2f} mm "
                                 "(green: truth, red: prediction)")
        written.append(path)
    return written


def _strategy(name):
    if name not in DISTRIBUTE:
        raise KeraslmError(f"`distribute` must be one of {DISTRIBUTE}. Received: {name!r}")
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multiworker":
        if "TF_CONFIG" not in os.environ:
            raise KeraslmError("--distribute multiworker needs the TF_CONFIG environment variable")
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def _is_chief(strategy):
    """Whether this process is the chief: always, except a multi-worker worker other than 0."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return True
    return resolver.task_type == "chief" or (resolver.task_type == "worker" and resolver.task_id == 0
                                              and "chief" not in resolver.cluster_spec().as_dict())


def _optimizer(settings, steps):
    rate = settings["learning_rate"]
    if settings["decay"] == "cosine":
        rate = keras.optimizers.schedules.CosineDecay(rate, decay_steps=steps, alpha=0.01)
    if settings["optimizer"] == "adam":
        return keras.optimizers.Adam(rate)
    return keras.optimizers.SGD(
        rate, momentum=settings["momentum"], weight_decay=settings["weight_decay"] or None
    )


def train(config, log=None):
    """Runs one training; see the module docstring for what it writes. Keras' global dtype
    policy (set to the chosen precision's while the network is built) is restored afterwards.

    Args:
        config: TrainingConfig.
        log: callable(str), optional. Receives progress lines.

    Returns:
        TrainingResult.
    """
    policy = keras.mixed_precision.global_policy()
    try:
        if config.run.plan_only:
            return _train(config, log)
        check_output_folder(config.run.output_dir, "--output-dir")  # Before making it.
        _check_not_foreign(RunFolder(config.run.output_dir))  # Before its lock file.
        with RunFolder(config.run.output_dir).training_lock():
            return _train(config, log)
    finally:
        keras.mixed_precision.set_global_policy(policy)


def _exported(run_folder, export_dir):
    """The version folder this run exported into `export_dir` before (recorded in
    export.json, and still there), or None."""
    if not os.path.isfile(run_folder.export_record_path):
        return None
    recorded = read_json(run_folder.export_record_path, f"{run_folder.export_record_path}: missing")
    path = recorded.get("export_path")
    if (path and os.path.dirname(path) == os.path.abspath(export_dir)
            and os.path.isfile(os.path.join(path, "saved_model.pb"))):
        return path
    return None


def _export_once(run_folder, detector, export_dir, log):
    """Exports `detector` as the next version of `export_dir` and records it in the run
    folder's export.json; a run resumed after its export (stopped before model.keras was
    written) finds the record and keeps that version instead of exporting a second one."""
    export_path = _exported(run_folder, export_dir)
    if export_path:
        log(f"exported for TF Serving before this run was resumed: {export_path}")
        return export_path
    export_path = export_saved_model(detector, export_dir)
    write_json(run_folder.export_record_path, {"export_path": export_path})
    log(f"exported for TF Serving: {export_path}")
    return export_path


def _check_export_dir(export_dir, output_dir):
    """The export's base folder must not be the run folder, inside it or hold it (the default
    saved_models/<name of --output-dir> is the run folder for --output-dir saved_models/x)."""
    export_dir, output_dir = os.path.abspath(export_dir), os.path.abspath(output_dir)
    if os.path.commonpath([export_dir, output_dir]) in (export_dir, output_dir):
        raise KeraslmError(
            f"the SavedModel base folder {export_dir} (--export-dir; by default saved_models/"
            f"<name of --output-dir>) and the run folder {output_dir} (--output-dir) overlap; "
            "give another --export-dir, or an --output-dir outside saved_models/")


def _check_not_foreign(run_folder):
    """Raises KeraslmError when the folder holds files of the names a run writes that train.py
    did not write (a run would overwrite them, and remove a checkpoints/ folder)."""
    foreign = run_folder.foreign_contents()
    if foreign:
        raise KeraslmError(
            f"{run_folder.path} holds {', '.join(foreign)} but no config.json of train.py: not a "
            "training run folder, and a run would overwrite or remove them; choose another "
            "--output-dir (a new or empty folder)")


def _check_run_folder(run_folder, resume):
    """Raises KeraslmError when the run folder cannot take this run (or has nothing to resume)."""
    output_dir, model_path = run_folder.path, run_folder.model_path
    check_output_folder(output_dir, "--output-dir")
    _check_not_foreign(run_folder)
    if resume and run_folder.is_finished():
        raise KeraslmError(f"nothing to resume in {output_dir}: it holds a finished run "
                           "(model.keras); start a new run in another --output-dir")
    if resume and not run_folder.has_checkpoints():
        raise KeraslmError(f"nothing to resume in {output_dir}: it holds no checkpoints of an "
                           "interrupted run; drop --resume to start a new run there")
    if os.path.exists(model_path) and not resume:
        raise KeraslmError(f"{output_dir} holds a finished run (model.keras); choose another --output-dir")
    if run_folder.has_checkpoints() and not resume:
        raise KeraslmError(
            f"{output_dir} holds checkpoints of an unfinished run; pass --resume to continue it "
            "or choose another --output-dir"
        )


#: Settings a resumed run may change: where and how it runs, not what it trains.
RESUME_MAY_CHANGE = ("resume", "output_dir", "export_dir", "plots", "distribute", "jit")
#: Settings that are paths: compared as absolute paths (relative to the working folder).
PATH_SETTINGS = ("dataset", "dataset_root", "cache_file", "train_ids", "test_ids", "refine_of")


def _same_setting(key, saved, requested):
    """Whether a setting of a resumed run equals the one config.json recorded."""
    import json

    if key in PATH_SETTINGS and isinstance(saved, str) and isinstance(requested, str):
        if saved == requested:
            return True
        if os.path.isabs(saved) and not os.path.exists(saved) and os.path.exists(requested):
            return True  # Moved: the new place (the validation images are compared later).
        # A built-in name (phantom2d) is not a path; a path is the same from any working folder.
        return (os.path.exists(saved) or os.path.exists(requested)) and \
            os.path.abspath(saved) == os.path.abspath(requested)
    if key in ("grid_shape", "grid_spacing") and requested is None:
        return True  # config.json holds the grid as resolved; None asks for the default one.
    saved, requested = json.loads(json.dumps(saved)), json.loads(json.dumps(requested))
    if key == "grid_spacing" and isinstance(requested, (int, float)) and isinstance(saved, list):
        requested = [requested] * len(saved)
    if isinstance(saved, (int, float)) and isinstance(requested, (int, float)):
        return math.isclose(saved, requested, rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(saved, list) and isinstance(requested, list):
        return len(saved) == len(requested) and all(
            _same_setting(None, a, b) for a, b in zip(saved, requested))
    return saved == requested


def _resolved_value(saved, key):
    """What a setting recorded as asked (None: the preset's; "auto") resolved to, from the
    config.json `saved`: `--batch-size 8` resumes a run that chose 8 itself."""
    if key == "precision":
        return (saved.get("resolved_precision") or {}).get("precision")
    if key == "ndim" and saved.get("grid_shape"):
        return len(saved["grid_shape"])
    if saved.get(key) is None:
        return (saved.get("settings") or {}).get(key)
    return None


def _check_resumed_settings(run_folder, config):
    """Raises KeraslmError when a resumed run is asked to train with other settings than those
    its config.json recorded (the weights and the optimizer state belong to those). Returns the
    recorded config.json ({} when the run stopped before writing it)."""
    if not os.path.isfile(run_folder.config_path):
        return {}  # Stopped before its config was written: nothing to compare.
    saved = run_folder.read_config()
    differences = [
        f"{key} {value!r} (config.json: {saved[key]!r})"
        for key, value in config.to_dict().items()
        if key not in RESUME_MAY_CHANGE and key in saved and not _same_setting(key, saved[key], value)
        and not _same_setting(key, _resolved_value(saved, key), value)]
    if differences:
        raise KeraslmError(
            f"--resume: {run_folder.path} was started with other settings: "
            + "; ".join(differences) + ". A resumed run trains on with its own settings: "
            "resume it with the same ones (train.py --resume --output-dir RUN alone takes them "
            "from its config.json), or start a new run in another --output-dir")
    return saved


def _resolved_settings(config, dataset, network, input_shape):
    """The training preset with the config's explicit values, checked against the data."""
    settings = get_training_preset(
        config.run.training_preset, dataset.ndim, config.model.architecture,
        int(np.prod(network.output_spatial_shape(input_shape))), dataset.num_landmarks,
    )
    for part, key in (("run", "batch_size"), ("run", "learning_rate"), ("run", "steps"),
                      ("augmentation", "elastic_mm"), ("augmentation", "translation_mm"),
                      ("augmentation", "blur_mm"), ("augmentation", "noise_std"),
                      ("augmentation", "rotation_degrees"), ("augmentation", "scale"),
                      ("augmentation", "flip_axes"),
                      ("model", "sigma"), ("model", "learn_sigma"), ("model", "sigma_penalty")):
        value = getattr(getattr(config, part), key)
        if value is not None:
            settings[key] = value
    return settings


def _keep_recorded_reasons(plan, recorded_plan):
    """A resumed run's plan keeps the reasons its config.json recorded for the values that did
    not change: `train.py --resume` passes the recorded grid and steps on as if typed, and the
    plan said "--steps given" of a run that took its preset's."""
    if not recorded_plan:
        return
    recorded_values = recorded_plan.get("values") or {}
    for key, reason in (recorded_plan.get("reasons") or {}).items():
        if key == "grid":
            unchanged = list(recorded_plan.get("grid_shape") or []) == list(plan.grid_shape)
        else:
            unchanged = (key != "batch_size" and key in plan.values
                         and recorded_values.get(key) == plan.values[key])
        if unchanged:
            plan.reasons[key] = reason


def _memory_batch(config, stage, network, input_shape, settings, num_landmarks):
    """(batch size, reason, MB of activations per sample): the preset's batch, capped so that
    a step's activations fit in memory (`keraslm.training.plan`); a --batch-size given is kept,
    with a warning in its reason when it exceeds the estimate."""
    inputs = stage.network_inputs_per_sample(num_landmarks)
    per_sample = inputs * activation_bytes_per_sample(network, input_shape,
                                                      cache_folder=cache_dir())
    available, where = available_memory_bytes()
    limit = memory_batch_limit(per_sample, available)
    megabytes = per_sample / 2 ** 20
    batch = int(settings["batch_size"])
    what = (f"{megabytes:.3g} MB of activations per sample"
            + (f" ({inputs} crops)" if inputs > 1 else ""))
    if limit is None:
        return batch, f"{what}; {where}, no memory limit applied", megabytes
    memory = f"{available / 2 ** 30:.3g} GB {where}"
    if config.run.batch_size is not None:
        reason = "--batch-size given" + ("" if batch <= limit else
                                         f"; more than the {limit} that fit {memory} ({what})")
        return batch, reason, megabytes
    preset = f"training preset {config.run.training_preset!r}"
    if batch <= limit:
        return batch, f"{preset}; fits: {what}, {memory}", megabytes
    return limit, f"memory: {what}, {memory} fits {limit} (the {preset} has {batch})", megabytes


def _check_steps(steps, steps_per_epoch):
    """Raises UsageError unless the training's epochs make exactly `steps` steps: a multiple of
    `steps_per_epoch`, or fewer (one epoch of `steps`); a rounded-up last epoch would train
    past the learning rate's schedule."""
    if steps > steps_per_epoch and steps % steps_per_epoch:
        below = steps - steps % steps_per_epoch
        raise UsageError(
            f"--steps {steps} is not a multiple of --steps-per-epoch {steps_per_epoch}: the "
            f"epochs would train {below + steps_per_epoch} steps; give --steps {below} or "
            f"{below + steps_per_epoch}, or a --steps-per-epoch that divides {steps}")


def _plan(config, stage, grid, settings, memory=None, output_stride=1):
    """The run's TrainingPlan: the grid and the training values, each with its reason.
    `memory`: `_memory_batch`'s (batch size, reason, MB per sample), or None; `output_stride`:
    the network's grid pixels per heatmap pixel (sigma is in heatmap pixels)."""
    preset = f"training preset {config.run.training_preset!r}"

    def why(flag, value, default_reason):
        return f"{flag} given" if value is not None else default_reason

    spacing = float(grid.spacing[0])
    sigma = settings["sigma"]
    values = {"sigma (output pixels)": sigma, "heatmap_scale": float(settings["heatmap_scale"]),
              "learning_rate": float(settings["learning_rate"]),
              "batch_size": int(settings["batch_size"]), "steps": int(settings["steps"])}
    reasons = {
        "grid": stage.grid_reason,
        "sigma (output pixels)": why("--sigma", config.model.sigma, preset)
        + (f"; {sigma * spacing * output_stride:.3g} mm" if np.ndim(sigma) == 0 else ""),
        "heatmap_scale": (f"{preset}: with peak 1 the all-zero output is so close in L2 that "
                          "training collapsed onto it"),
        "learning_rate": why("--learning-rate", config.run.learning_rate,
                             f"{preset}, {settings['optimizer']} with {settings['decay']} decay; "
                             "the networks start at the all-zero heatmap, so the loss falls from "
                             "the first steps at any grid"),
        "batch_size": why("--batch-size", config.run.batch_size, preset),
        "steps": why("--steps", config.run.steps, preset),
    }
    if memory is not None:
        values["batch_size"], reasons["batch_size"], _ = memory
    extent = getattr(stage, "extent_mm", None)
    if extent is None:  # A local stage: its fine grid covers the images.
        extent = [n * spacing for n in reversed(grid.shape)]
    return TrainingPlan(tuple(grid.shape), spacing, tuple(float(v) for v in extent), values,
                        reasons)


def _augmentation(settings):
    return AugmentationConfig(
        rotation_degrees=settings["rotation_degrees"], translation_mm=settings["translation_mm"],
        scale=settings["scale"], elastic_mm=settings["elastic_mm"], elastic_grid_points=5,
        intensity_scale=settings["intensity_scale"], intensity_shift=settings["intensity_shift"],
        blur_mm=settings["blur_mm"], noise_std=settings["noise_std"],
        flip_axes=settings["flip_axes"],
    )


def _train(config, log=None):
    """The body of `train`: the same for every stage; `stage` (`keraslm.training.stages`)
    supplies what differs."""
    log = log or (lambda message: None)
    start = time.perf_counter()
    data, run = config.data, config.run
    stage = stage_for(config)
    run_folder = RunFolder(run.output_dir)
    output_dir = run_folder.path
    recorded = {}  # A resumed run's config.json.
    if not run.plan_only:
        _check_run_folder(run_folder, run.resume)
        for name in run_folder.remove_leftovers():
            log(f"removed {name}: a temporary file of a write that a kill interrupted")
        if not run.resume and os.path.isfile(run_folder.export_record_path):
            os.remove(run_folder.export_record_path)  # A new run: an old record is not its export.
        if run.export_dir:  # Checked now, not after the training.
            _check_export_dir(run.export_dir, output_dir)
            check_output_folder(run.export_dir, "--export-dir")
        if data.cache_file:
            check_output_folder(os.path.dirname(os.path.abspath(data.cache_file)),
                                "--cache-file's folder")
        if run.resume:
            recorded = _check_resumed_settings(run_folder, config)

    precision = choose_precision(run.precision)
    dataset = load_dataset(data.dataset, root=data.dataset_root, units=data.units,
                           spacing=data.image_spacing, ndim=data.ndim)
    if data.ndim is not None and data.ndim != dataset.ndim:
        raise KeraslmError(f"dataset {dataset.name!r} is {dataset.ndim}D but a {data.ndim}D "
                           "model was requested (--ndim)")
    exports = stage.name == "global" or config.model.refine_of is not None
    if run.export_dir and exports and not run.plan_only and not _exported(run_folder, run.export_dir):
        check_export_base(run.export_dir, dataset.landmark_names, dataset.ndim, "--export-dir")
    keras.utils.set_random_seed(run.seed)
    strategy = _strategy(run.distribute)
    with strategy.scope():
        with dtype_policy(precision.policy):
            network = build_model(
                config.model.architecture, dataset.ndim, dataset.num_landmarks,
                preset=config.model.model_preset, **config.model.model_overrides,
            )
    input_shape = stage.network_input_shape(dataset, int(getattr(network, "size_divisor", 1)))
    train_set, val_set = select_split(
        dataset, fold=data.fold, num_folds=data.num_folds, train_ids=data.train_ids,
        test_ids=data.test_ids, test_fraction=data.test_fraction, seed=run.seed,
    )
    if data.train_size is not None:
        train_set = train_set.reduced(data.train_size, seed=run.seed)
    grid = stage.grid(dataset, input_shape)
    log(
        f"{dataset.name}: {len(train_set)} training / {len(val_set)} validation images, "
        f"{dataset.num_landmarks} landmarks; grid {grid.shape} at {grid.spacing[0]:.3f} mm"
        + stage.describe(input_shape)
    )
    settings = _resolved_settings(config, dataset, network, input_shape)  # Checks sizes.
    _check_steps(int(settings["steps"]), run.steps_per_epoch)
    memory = _memory_batch(config, stage, network, input_shape, settings, dataset.num_landmarks)
    recorded_batch = recorded.get("settings", {}).get("batch_size")
    if recorded_batch is not None and int(recorded_batch) != memory[0]:
        # The batch size chosen from the memory free then, not now: a resumed run keeps it.
        memory = (int(recorded_batch), f"the resumed run's own ({memory[0]} would be chosen "
                  "now)", memory[2])
    recorded_ids = recorded.get("validation_ids")
    if recorded_ids is not None and list(recorded_ids) != list(val_set.ids):
        added = sorted(set(val_set.ids) - set(recorded_ids), key=natural_key)
        gone = sorted(set(recorded_ids) - set(val_set.ids), key=natural_key)
        raise DatasetError(
            f"--resume: {output_dir} was started on another split of the dataset (its images "
            "changed since?): validation images "
            + "; ".join(part for part in (
                f"now also {', '.join(added[:5])}" if added else "",
                f"no longer {', '.join(gone[:5])}" if gone else "") if part)
            + ". Restore the dataset or train again in a new --output-dir")
    settings["batch_size"] = memory[0]
    plan = _plan(config, stage, grid, settings, memory,
                 output_stride=int(getattr(network, "output_stride", 1)))
    _keep_recorded_reasons(plan, recorded.get("plan"))
    for line in plan.lines():
        log(f"plan: {line}")
    if run.plan_only:
        return TrainingResult(None, output_dir, 0, time.perf_counter() - start,
                              np.zeros((0, dataset.num_landmarks)), summarize(np.zeros((0, 1))),
                              plan=plan)
    global_detector = stage.global_detector(dataset, val_set)  # Checked before training.
    log(f"precision: {precision.precision} ({precision.reason})")
    with strategy.scope():
        if settings["batch_size"] > len(train_set):
            raise DatasetError(
                f"the training set has {len(train_set)} images, fewer than the batch size "
                f"{settings['batch_size']}; use a smaller --batch-size"
            )
        trainer = stage.trainer(network, grid, input_shape, sigma=settings["sigma"],
                                augmentation=_augmentation(settings),
                                heatmap_scale=settings["heatmap_scale"], seed=run.seed,
                                learn_sigma=settings["learn_sigma"],
                                sigma_penalty=settings["sigma_penalty"])
        if run.distribute == "none" or run.jit != "auto":
            jit = choose_jit(run.jit, trainer, grid.shape, settings["batch_size"],
                             cache_folder=cache_dir())
        else:  # No probe across replicas: the rule the probes found on every CPU measured.
            on_gpu = bool(tf.config.list_physical_devices("GPU"))
            jit = JitChoice(on_gpu, True, "distributed: XLA for the whole step on GPUs, for the "
                            "device stage only on CPUs")
        log(f"XLA: whole step {'on' if jit.network else 'off'}, device stage "
            f"{'on' if jit.device_stage else 'off'} ({jit.reason})")
        trainer.jit_device_stage = jit.device_stage
        trainer.compile(optimizer=_optimizer(settings, settings["steps"]), jit_compile=jit.network)
        trainer.build((None, *input_shape, 1))

    def prepare_log(name):
        def progress(done, total):
            if done == total or done % 25 == 0:
                log(f"preparing {name} images: {done}/{total}")
        return progress

    if data.cache_file:
        os.makedirs(os.path.dirname(os.path.abspath(data.cache_file)), exist_ok=True)
        prefix = cache_prefix(data.cache_file, train_set, grid, data.normalization)
        for leftover in clear_unfinished_cache(prefix):
            log(f"removed {leftover}: left by a training stopped while writing the cache")
        log(f"cache: {prefix}" + (" (written before; read)" if os.path.exists(prefix + ".index")
                                  else " (written while the first epoch reads the images)"))
        train_data = streaming_training_dataset(
            train_set, grid, settings["batch_size"], prefix,
            normalization=data.normalization, seed=run.seed,
            progress=prepare_log("training (into the cache)"),
        )
    else:
        train_samples = prepare_samples(
            train_set, grid, data.normalization, progress=prepare_log("training")
        )
        train_data = training_dataset(train_samples, settings["batch_size"], seed=run.seed)
    val_samples = None
    if len(val_set):
        val_samples = prepare_samples(
            val_set, grid, data.normalization, progress=prepare_log("validation")
        )
    normalization = data.normalization or DEFAULT_NORMALIZATION[grid.ndim]
    steps = int(settings["steps"])
    steps_per_epoch = min(run.steps_per_epoch, steps)
    epochs = math.ceil(steps / steps_per_epoch)
    os.makedirs(output_dir, exist_ok=True)
    resolved = {**config.to_dict(), "validation_ids": list(val_set.ids),
                "grid_shape": list(grid.shape),
                "grid_spacing": list(grid.spacing), "settings": settings,
                "plan": plan.to_dict(),
                "resolved_precision": precision.to_dict(), "resolved_jit": jit.to_dict()}
    run_folder.write_config(resolved)
    callbacks = [
        # The checkpoints are removed only once the trained weights are saved (below).
        BackupAndRestore(run_folder.checkpoint_dir, steps_per_epoch, save_freq="epoch",
                         double_checkpoint=True, delete_checkpoint=False),
        EpochHistory(run_folder.history_path),  # After BackupAndRestore.
        keras.callbacks.TensorBoard(run_folder.log_dir, update_freq="epoch"),
        *stage.callbacks(run_folder.log_dir, val_samples, network),
    ]
    trained = run.resume and os.path.isfile(run_folder.trained_weights_path)
    if trained:  # Every step ran before; what failed came after training.
        network.load_weights(run_folder.trained_weights_path)
        if trainer.learn_sigma:
            trainer.target_sigma.assign(read_json(
                run_folder.trained_sigma_path,
                f"{run_folder.trained_sigma_path} is missing: the learned sigma of the trained "
                "weights is lost; train again without --resume in a new --output-dir")["sigma"])
        log(f"all {steps} steps were trained before: resuming at the final validation")
    else:
        _fit(trainer, train_data, epochs, steps_per_epoch, val_samples, settings["batch_size"],
             callbacks)
        # The trained weights are kept until model.keras is written, so a failure in between
        # does not lose the training; the checkpoints only once they are saved.
        if trainer.learn_sigma:  # Before the weights: their presence means "trained".
            write_json(run_folder.trained_sigma_path, {"sigma": trainer.learned_sigma()})
        with atomic_path(run_folder.trained_weights_path, suffix=".weights.h5") as temporary:
            network.save_weights(temporary)
        shutil.rmtree(run_folder.checkpoint_dir, ignore_errors=True)
    optimizer_steps = steps if trained else int(trainer.optimizer.iterations.numpy())
    sigma = trainer.learned_sigma() if trainer.learn_sigma else settings["sigma"]
    if trainer.learn_sigma:
        log("learned target sigma per landmark (output pixels): "
            + ", ".join(f"{name} {value:.2f}" for name, value in zip(dataset.landmark_names, sigma)))

    # The mm per pixel the plain (PNG/JPEG) training images were read with: prediction names it
    # when an image of such a format comes without a spacing.
    plain = any(not holds_geometry(record.image_path) for record in train_set.records)
    training_means = mean_position_mm(train_set.points_mm)  # The mean-position baseline.
    stage_description = stage_spec(network, grid, normalization, sigma, trainer.decode_method,
                                    precision.precision, **stage.spec_fields(trainer, input_shape))
    # The saved and exported network computes in float32; the final validation measures it.
    network = with_precision(network, "float32")
    local = stage_description.is_local
    detector = LandmarkDetector(DetectorSpec(
        landmark_names=tuple(dataset.landmark_names), ndim=dataset.ndim,
        global_stages=() if local else (stage_description,),
        local_stages=(stage_description,) if local else (),
        canonical_orientation=True,  # The pipeline prepares every image in the canonical frame.
        plain_image_spacing=(tuple(float(s) for s in dataset.image_spacing)
                             if plain and dataset.image_spacing is not None else None),
        mean_position_mm=training_means),
        [] if local else [network], [network] if local else [])
    if global_detector is not None:  # A local stage trained on a global one: one detector.
        detector = combine_detectors([global_detector, detector])
    baseline_summary = None
    if val_samples is None:  # Every image trained on (--test-fraction 0): no held-out error.
        errors_mm = np.zeros((0, dataset.num_landmarks))
    else:
        log(f"final validation of the trained model on {len(val_set)} images")

        def validation_progress(done, total):
            if done == total or done % 10 == 0:
                log(f"final validation: {done}/{total} images")

        points_mm = stage.validation_points_mm(trainer, val_set, val_samples,
                                               settings["batch_size"], detector,
                                               validation_progress)
        errors_mm = np.linalg.norm(points_mm - val_set.points_mm, axis=-1)
        baseline_points_mm = mean_position_points(training_means, len(val_set),
                                                  dataset.ndim)
        baseline_summary = summarize(
            np.linalg.norm(baseline_points_mm - val_set.points_mm, axis=-1))
    summary = summarize(errors_mm)
    export_path = None
    if run.export_dir and detector.spec.is_local_only:
        log(f"a {stage.name} stage is not exported alone: export it with its global model, "
            "keraslm-export GLOBAL_RUN BASE_DIR --refine LOCAL_RUN")
    elif run.export_dir and _is_chief(strategy):  # One export, by the chief.
        export_path = _export_once(run_folder, detector, run.export_dir, log)
    run_folder.write_metrics(
        {"validation_ids": list(val_set.ids), "summary": summary,
         "mean_position_baseline": baseline_summary,
         "optimizer_iterations": optimizer_steps,
         "per_landmark_mean_mm": dict(zip(dataset.landmark_names, np.nanmean(errors_mm, axis=0).tolist()))
         if val_samples is not None else {}},
    )
    with atomic_path(run_folder.model_path, suffix=".keras") as temporary:  # Last: presence = finished.
        detector.save(temporary)
    for leftover in (run_folder.trained_weights_path, run_folder.trained_sigma_path):
        if os.path.isfile(leftover):
            os.remove(leftover)
    shutil.rmtree(run_folder.checkpoint_dir, ignore_errors=True)  # Left when resumed trained.
    pictures = []
    if val_samples is not None and run.plots and _is_chief(strategy):
        pictures = _write_pictures(output_dir, val_set, points_mm, errors_mm, stage.picture_label())
    return TrainingResult(run_folder.model_path, output_dir, steps, time.perf_counter() - start,
                          errors_mm, summary, export_path, pictures, baseline_summary)
