"""One training run from a `TrainingConfig`: data, grid, model, compiled fit, checkpoints, outputs.

`train(config)` is what `train.py` calls. It reports progress through Keras' progress bar and an
optional `log` callable (library code does not print) and returns a `TrainingResult`.

Output folder layout (`config.output_dir`):

    config.json        the resolved configuration
    model.keras        the trained detector (`keraslm.detector.LandmarkDetector`: the network and
                       what prediction needs), written atomically at the end
    model.json         the same metadata, readable (landmark names, grid, normalisation, ...)
    metrics.json       validation point errors in physical mm (written atomically)
    checkpoints/       BackupAndRestore state while training (removed when the run finishes)
    logs/              TensorBoard: loss, validation point error, heatmap images

With `config.export_dir` set, the trained network is also exported for TF Serving as the next
version folder `<export_dir>/<version>/` (`keraslm.export.export_saved_model`).
"""
import dataclasses
import math
import os
import sys
import time

import keras
import numpy as np
import tensorflow as tf

from keraslm.data import select_split
from keraslm.datasets import cache_dir, load_dataset
from keraslm.errors import DatasetError, KeraslmError
from keraslm.export import export_saved_model
from keraslm.evaluation.metrics import summarize
from keraslm.detector import LandmarkDetector, refine_function
from keraslm.metadata import model_metadata, offset_prior_mm
from keraslm.files import atomic_path
from keraslm.models import build_model
from keraslm.run_folder import RunFolder
from keraslm.precision import choose_precision, dtype_policy, with_precision
from keraslm.ops.augmentation import AugmentationConfig
from keraslm.training.callbacks import EpochHistory, HeatmapImages
from keraslm.training.jit import JitChoice, choose_jit
from keraslm.training.pipeline import (
    DEFAULT_NORMALIZATION,
    choose_grid,
    covering_grid,
    evaluation_dataset,
    prepare_samples,
    streaming_training_dataset,
    training_dataset,
)
from keraslm.training.presets import get_training_preset
from keraslm.training.trainer import HeatmapTrainer, LocalHeatmapTrainer

DEFAULT_GRID_SHAPE = {2: (64, 64), 3: (32, 64, 64)}
DISTRIBUTE = ("none", "mirrored", "multiworker")


@dataclasses.dataclass
class TrainingConfig:
    """Everything that defines a training run (defaults: small SCN on the 2D phantom).

    Args:
        dataset: str. Any name `keraslm.datasets.load_dataset` takes: "phantom2d",
            "phantom3d", "isbi2015", a landmark CSV, or a dataset folder.
        dataset_root: str or None. Folder of "isbi2015"; a CSV's image folder; where to
            generate a phantom.
        units: str or None. "index" or "mm": units of CSV / .txt landmark coordinates.
        image_spacing: float or None. mm per pixel of plain images (PNG/JPEG).
        plots: bool. End with pictures of the validation (cumulative error curve; truth vs
            prediction on the best, median and worst validation image) in the run folder.
        architecture: str. "scn", "unet", "downsampling", "convonly" or "scn2019".
        model_preset: str. "small" or "paper" (`keraslm.models.PRESETS`).
        training_preset: str. "default" or "paper" (`keraslm.training.presets`).
        grid_shape: tuple of int or None. Network grid, array order; default per ndim.
        grid_spacing: float or None. mm per grid step; default: the smallest that fits.
        steps: int or None. Total training steps (preset default if None).
        steps_per_epoch: int. Steps between validations and checkpoints.
        batch_size: int or None. Preset default if None.
        learning_rate: float or None. Preset default if None.
        fold, num_folds: int or None. Cross-validation fold (0-based) of `num_folds`.
        train_ids, test_ids: str or None. Files with one record id per line.
        test_fraction: float. Held-out share when no fold or id files are given.
        train_size: int or None. Reduced training set of this many images.
        output_dir: str. Run folder.
        seed: int. Seeds splits, initialisation, shuffling and augmentation.
        resume: bool. Continue from the run folder's last checkpoint.
        distribute: str. "none", "mirrored" or "multiworker" (TF_CONFIG).
        precision: str. The network's compute precision: "auto" (bfloat16 on CPUs with
            AMX-BF16 / AVX512-BF16 and GPUs of compute capability >= 8.0, float16 on older GPUs
            with tensor cores, float32 otherwise; `keraslm.precision.choose_precision`),
            "float32", "bfloat16" or "float16". Variables, optimizer state, loss, targets and
            decoding stay float32; the saved model and export compute in float32.
        mixed_precision: bool. Deprecated alias of `precision="float16"`.
        jit: str. XLA compilation: "on" (the whole training step), "off" (nothing), "auto"
            (the whole step on a GPU; on a CPU measured per part - device stage, network - by
            a short probe cached per CPU model, `keraslm.training.jit.choose_jit`).
        elastic_mm: float or None. Elastic deformation amplitude (preset default if None).
        translation_mm: float or None. Largest random translation per axis, mm (preset default
            if None); in a local stage the largest offset of a crop from its landmark.
        ndim: int or None. Expected dimension of the dataset (checked), 2 or 3.
        cache_file: str or None. Stream training images through this tf.data cache file
            instead of holding them in memory.
        normalization: str or None. `keraslm.preprocessing.normalize` method; None: histogram
            equalisation + standardisation in 2D, standardisation in 3D.
        model_overrides: dict. Keyword overrides for `build_model`.
        export_dir: str or None. TF Serving model base folder to export the trained network
            into (next version); None = no export.
        crop_shape: tuple of int or None. Train the LOCAL stage of a coarse-to-fine model: the
            images go onto a fine grid of `grid_spacing` mm that covers them whole, and the
            network learns on crops of this shape around the landmarks
            (`keraslm.training.trainer.LocalHeatmapTrainer`); `grid_shape` is then ignored.
        landmarks_per_image: int or None. Local stage: crops per image and step (None: one
            around every landmark).
    """

    dataset: str = "phantom2d"
    dataset_root: str = None
    units: str = None
    image_spacing: float = None
    plots: bool = True
    architecture: str = "scn"
    model_preset: str = "small"
    training_preset: str = "default"
    grid_shape: tuple = None
    grid_spacing: float = None
    steps: int = None
    steps_per_epoch: int = 100
    batch_size: int = None
    learning_rate: float = None
    fold: int = None
    num_folds: int = 5
    train_ids: str = None
    test_ids: str = None
    test_fraction: float = 0.2
    train_size: int = None
    output_dir: str = "runs/default"
    seed: int = 0
    resume: bool = False
    distribute: str = "none"
    precision: str = "auto"
    mixed_precision: bool = False
    jit: str = "auto"
    elastic_mm: float = None
    translation_mm: float = None
    ndim: int = None
    cache_file: str = None
    normalization: str = None
    model_overrides: dict = dataclasses.field(default_factory=dict)
    export_dir: str = None
    crop_shape: tuple = None
    landmarks_per_image: int = None


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


def _requested_precision(config):
    """`config.precision`, with the deprecated `mixed_precision=True` meaning float16."""
    if not config.mixed_precision:
        return config.precision
    if config.precision not in ("auto", "float16"):
        raise KeraslmError(
            "mixed_precision=True (--mixed-precision) means float16 and contradicts "
            f"precision={config.precision!r}; use precision alone (--precision)")
    return "float16"


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


def predict_grid_points(trainer, samples, batch_size, network=None):
    """Decoded landmarks `(num_images, num_landmarks, ndim)` in grid index units, by `network`
    (default: the trainer's)."""
    network = network or trainer.network
    predict = tf.function(lambda x: trainer.codec.decode(network(x, training=False))[0])
    points = [predict(images).numpy() for images, _ in evaluation_dataset(samples, batch_size)]
    return np.concatenate(points)[: len(samples)]


def predict_local_validation_points(trainer, samples, batch_size, metadata, seed=12345,
                                    network=None):
    """Local stage: refined landmarks `(num_images, num_landmarks, ndim)` in fine grid index
    units from crops centred on the truth moved by a fixed random offset, uniform within the
    augmentation's translation range per axis (what a coarse stage of that accuracy gives);
    `network` defaults to the trainer's."""
    refine = tf.function(refine_function(network or trainer.network, metadata))
    rng = np.random.default_rng(seed)
    limit = trainer.augmentation.translation_mm / np.asarray(trainer.grid_spacing)
    results = []
    for images, points in evaluation_dataset(samples, batch_size):
        points = points.numpy()
        centres = points + rng.uniform(-1, 1, points.shape) * limit
        centres = np.where(np.isfinite(centres), centres, 0.0).astype(np.float32)
        results.append(refine(images, centres)[0].numpy())
    return np.concatenate(results)[: len(samples)]


def _check_config(config, dataset):
    ndim = dataset.ndim
    if config.ndim is not None and config.ndim != ndim:
        raise KeraslmError(
            f"dataset {dataset.name!r} is {ndim}D but a {config.ndim}D model was requested (--ndim)"
        )
    if config.crop_shape is not None:
        if len(config.crop_shape) != ndim:
            raise KeraslmError(
                f"dataset {dataset.name!r} is {ndim}D but --crop-shape {tuple(config.crop_shape)} "
                f"is {len(config.crop_shape)}D")
        if config.grid_spacing is None:
            raise KeraslmError("a local stage (--crop-shape) needs --grid-spacing: the mm per "
                               "pixel of its fine grid, e.g. 0.4 for ISBI 2015")
        if config.cache_file:
            raise KeraslmError("--cache-file is not supported for a local stage (--crop-shape)")
        return tuple(config.crop_shape)
    grid_shape = tuple(config.grid_shape or DEFAULT_GRID_SHAPE[ndim])
    if len(grid_shape) != ndim:
        raise KeraslmError(
            f"dataset {dataset.name!r} is {ndim}D but --grid-shape {grid_shape} is {len(grid_shape)}D"
        )
    return grid_shape


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
        return _train(config, log)
    finally:
        keras.mixed_precision.set_global_policy(policy)


def _train(config, log=None):
    """The body of `train`."""
    log = log or (lambda message: None)
    start = time.perf_counter()
    run_folder = RunFolder(config.output_dir)
    output_dir = run_folder.path
    model_path, checkpoint_dir = run_folder.model_path, run_folder.checkpoint_dir
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise KeraslmError(f"--output-dir {output_dir} is a file, not a folder; choose another")
    if config.resume and not (run_folder.has_checkpoints() or os.path.exists(model_path)):
        raise KeraslmError(f"nothing to resume in {output_dir}: it holds no checkpoints of an "
                           "interrupted run; drop --resume to start a new run there")
    if os.path.exists(model_path) and not config.resume:
        raise KeraslmError(f"{output_dir} holds a finished run (model.keras); choose another --output-dir")
    if run_folder.has_checkpoints() and not config.resume:
        raise KeraslmError(
            f"{output_dir} holds checkpoints of an unfinished run; pass --resume to continue it "
            "or choose another --output-dir"
        )

    precision = choose_precision(_requested_precision(config))
    dataset = load_dataset(config.dataset, root=config.dataset_root, units=config.units,
                           spacing=config.image_spacing, ndim=config.ndim)
    grid_shape = _check_config(config, dataset)
    train_set, val_set = select_split(
        dataset, fold=config.fold, num_folds=config.num_folds, train_ids=config.train_ids,
        test_ids=config.test_ids, test_fraction=config.test_fraction, seed=config.seed,
    )
    if config.train_size is not None:
        train_set = train_set.reduced(config.train_size, seed=config.seed)
    local = config.crop_shape is not None
    if local:  # grid_shape is the crop shape; the fine grid covers every image whole.
        grid = covering_grid(dataset, config.grid_spacing)
    else:
        grid = choose_grid(dataset, grid_shape, config.grid_spacing)
    log(
        f"{dataset.name}: {len(train_set)} training / {len(val_set)} validation images, "
        f"{dataset.num_landmarks} landmarks; grid {grid.shape} at {grid.spacing[0]:.3f} mm"
        + (f", local stage on {grid_shape} crops" if local else "")
    )

    keras.utils.set_random_seed(config.seed)
    log(f"precision: {precision.precision} ({precision.reason})")
    strategy = _strategy(config.distribute)
    with strategy.scope():
        with dtype_policy(precision.policy):
            network = build_model(
                config.architecture, dataset.ndim, dataset.num_landmarks,
                preset=config.model_preset, **config.model_overrides,
            )
        # Checks the size constraint (the network sees crops of grid_shape in a local stage).
        output_shape = network.output_spatial_shape(grid_shape if local else grid.shape)
        settings = get_training_preset(
            config.training_preset, dataset.ndim, config.architecture,
            int(np.prod(output_shape)), dataset.num_landmarks,
        )
        for key in ("batch_size", "learning_rate", "steps", "elastic_mm", "translation_mm"):
            if getattr(config, key) is not None:
                settings[key] = getattr(config, key)
        if settings["batch_size"] > len(train_set):
            raise DatasetError(
                f"the training set has {len(train_set)} images, fewer than the batch size "
                f"{settings['batch_size']}; use a smaller --batch-size"
            )
        augmentation = AugmentationConfig(
            rotation_degrees=settings["rotation_degrees"],
            translation_mm=settings["translation_mm"],
            scale=settings["scale"],
            elastic_mm=settings["elastic_mm"],
            elastic_grid_points=5,
            intensity_scale=settings["intensity_scale"],
            intensity_shift=settings["intensity_shift"],
        )
        common = dict(sigma=settings["sigma"], augmentation=augmentation,
                      heatmap_scale=settings["heatmap_scale"], seed=config.seed)
        if local:
            trainer = LocalHeatmapTrainer(network, grid_shape, grid.spacing,
                                          landmarks_per_image=config.landmarks_per_image, **common)
        else:
            trainer = HeatmapTrainer(network, grid.shape, grid.spacing, **common)
        if config.distribute == "none" or config.jit != "auto":
            jit = choose_jit(config.jit, trainer, grid.shape, settings["batch_size"],
                             cache_folder=cache_dir())
        else:  # No probe across replicas: the rule the probes found on every CPU measured.
            on_gpu = bool(tf.config.list_physical_devices("GPU"))
            jit = JitChoice(on_gpu, True, "distributed: XLA for the whole step on GPUs, for the "
                            "device stage only on CPUs")
        log(f"XLA: whole step {'on' if jit.network else 'off'}, device stage "
            f"{'on' if jit.device_stage else 'off'} ({jit.reason})")
        trainer.jit_device_stage = jit.device_stage
        trainer.compile(optimizer=_optimizer(settings, settings["steps"]), jit_compile=jit.network)
        trainer.build((None, *grid_shape, 1))

    def prepare_log(name):
        def progress(done, total):
            if done == total or done % 25 == 0:
                log(f"preparing {name} images: {done}/{total}")
        return progress

    if config.cache_file:
        os.makedirs(os.path.dirname(os.path.abspath(config.cache_file)), exist_ok=True)
        train_data = streaming_training_dataset(
            train_set, grid, settings["batch_size"], config.cache_file,
            normalization=config.normalization, seed=config.seed,
        )
    else:
        train_samples = prepare_samples(
            train_set, grid, config.normalization, progress=prepare_log("training")
        )
        train_data = training_dataset(train_samples, settings["batch_size"], seed=config.seed)
    validate = len(val_set) > 0
    if validate:
        val_samples = prepare_samples(
            val_set, grid, config.normalization, progress=prepare_log("validation")
        )
    normalization = config.normalization or DEFAULT_NORMALIZATION[grid.ndim]
    steps = int(settings["steps"])
    steps_per_epoch = min(config.steps_per_epoch, steps)
    epochs = math.ceil(steps / steps_per_epoch)
    os.makedirs(output_dir, exist_ok=True)
    resolved = {**dataclasses.asdict(config), "grid_shape": list(grid.shape),
                "grid_spacing": list(grid.spacing), "settings": settings,
                "resolved_precision": precision.to_dict(), "resolved_jit": jit.to_dict()}
    run_folder.write_config(resolved)
    callbacks = [
        keras.callbacks.BackupAndRestore(checkpoint_dir, save_freq="epoch", double_checkpoint=True),
        EpochHistory(run_folder.history_path),  # After BackupAndRestore.
        keras.callbacks.TensorBoard(run_folder.log_dir, update_freq="epoch"),
    ]
    if validate and not local:
        callbacks.append(HeatmapImages(run_folder.log_dir, val_samples.images[:3], network))
    trained = config.resume and os.path.isfile(run_folder.trained_weights_path)
    if trained:  # Every step ran before; what failed came after training.
        network.load_weights(run_folder.trained_weights_path)
        log(f"all {steps} steps were trained before: resuming at the final validation")
    else:
        _fit(trainer, train_data, epochs, steps_per_epoch, val_samples if validate else None,
             settings["batch_size"], callbacks)
        # BackupAndRestore removes its checkpoints when fit ends: keep the trained weights until
        # model.keras is written, so a failure in between does not lose the training.
        with atomic_path(run_folder.trained_weights_path, suffix=".weights.h5") as temporary:
            network.save_weights(temporary)
    optimizer_steps = steps if trained else int(trainer.optimizer.iterations.numpy())

    metadata = model_metadata(network, grid, normalization, dataset.landmark_names,
                              settings["sigma"], trainer.decode_method,
                              crop_shape=grid_shape if local else None,
                              offset_prior_mm=(offset_prior_mm(trainer.augmentation.translation_mm)
                                               if local else None))
    metadata["training_precision"] = precision.precision
    # The saved and exported network computes in float32; the final validation measures it.
    network = with_precision(network, "float32")
    if not validate:  # Every image trained on (--test-fraction 0): no held-out error.
        errors_mm = np.zeros((0, dataset.num_landmarks))
    else:
        if local:  # Crops around the truth moved by random offsets (no coarse stage here).
            points_grid = predict_local_validation_points(trainer, val_samples,
                                                          settings["batch_size"], metadata,
                                                          network=network)
        else:
            points_grid = predict_grid_points(trainer, val_samples, settings["batch_size"],
                                              network=network)
        points_mm = val_samples.grid_to_physical(points_grid)
        errors_mm = np.linalg.norm(points_mm - val_set.points_mm, axis=-1)
    summary = summarize(errors_mm)
    run_folder.write_metadata(metadata)
    export_path = None
    if config.export_dir and _is_chief(strategy) and not local:  # One export, by the chief.
        export_path = export_saved_model(network, config.export_dir, metadata)
        log(f"exported for TF Serving: {export_path}")
    elif config.export_dir and local:
        log("a local stage is not exported alone: export it with its global model, "
            "keraslm-export GLOBAL_RUN BASE_DIR --refine LOCAL_RUN")
    run_folder.write_metrics(
        {"validation_ids": list(val_set.ids), "summary": summary,
         "optimizer_iterations": optimizer_steps,
         "per_landmark_mean_mm": dict(zip(dataset.landmark_names, np.nanmean(errors_mm, axis=0).tolist()))
         if validate else {}},
    )
    with atomic_path(model_path, suffix=".keras") as temporary:  # Last: its presence = finished.
        LandmarkDetector(network, metadata).save(temporary)  # Self-describing: no model.json needed.
    if os.path.isfile(run_folder.trained_weights_path):
        os.remove(run_folder.trained_weights_path)
    pictures = []
    if validate and config.plots and _is_chief(strategy):
        pictures = _write_pictures(output_dir, val_set, points_mm, errors_mm,
                                   f"{config.architecture}{' (local stage)' if local else ''}")
    return TrainingResult(model_path, output_dir, steps, time.perf_counter() - start, errors_mm, summary,
                          export_path, pictures)
