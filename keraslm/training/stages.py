"""Training stages: what differs between the stages of a coarse-to-fine model.

`keraslm.training.run.train` runs every stage the same way (data, split, network, compiled fit,
checkpoints, spec, run folder) and asks its `TrainingStage` for the parts that differ:

- `GlobalStage`: the network sees the whole image on a grid of `grid_shape`; the final
  validation predicts the validation images through the prediction graph, as `keraslm.predict`.
- `LocalStage` (`crop_shape` set): the images go onto a fine grid of `grid_spacing` mm that covers
  them whole, the network learns on crops around the landmarks
  (`keraslm.training.trainer.LocalHeatmapTrainer`), and validation refines crops centred on the
  truth moved by random offsets of the training translation's size (what a coarse stage of that
  accuracy gives).

A third stage is one new subclass and one line in `stage_for`.
"""
import os

import numpy as np
import tensorflow as tf

from keraslm.errors import KeraslmError, UsageError
from keraslm.prediction import DetectorPredictor, load_detector, refine_function
from keraslm.preprocessing import GridSpec
from keraslm.run_folder import RunFolder
from keraslm.spec import offset_prior_mm
from keraslm.training.callbacks import HeatmapImages
from keraslm.training.pipeline import canonical_headers, covering_grid, evaluation_dataset
from keraslm.training.plan import DEFAULT_VOXEL_BUDGET, largest_extent_mm, plan_grid
from keraslm.training.trainer import HeatmapTrainer, LocalHeatmapTrainer



class TrainingStage:
    """One stage of a model. Subclasses set `name` and implement the methods that raise.

    Args:
        config: TrainingConfig. The stage reads its model part (grid, crops) and what it
            cannot support.
    """

    name = None

    def __init__(self, config):
        self.config = config

    #: str. Why the grid has its shape and spacing (set by `network_input_shape`).
    grid_reason = ""

    def network_input_shape(self, dataset, size_divisor):
        """tuple of int. The spatial shape the network sees (array order; sizes multiples of
        the network's `size_divisor` where the stage chooses them), checked against the
        dataset's dimension; raises KeraslmError naming the flag."""
        raise NotImplementedError

    def grid(self, dataset, input_shape):
        """GridSpec. The grid the training images are put on."""
        raise NotImplementedError

    def describe(self, input_shape):
        """str. Appended to the log line that describes the run."""
        return ""

    def network_inputs_per_sample(self, num_landmarks):
        """int. Network inputs per training sample (one image; a local stage: its crops)."""
        return 1

    def trainer(self, network, grid, input_shape, **common):
        """The compiled-step trainer (`keraslm.training.trainer`)."""
        raise NotImplementedError

    def callbacks(self, log_dir, val_samples, network):
        """Extra Keras callbacks (beside checkpoints, history and TensorBoard)."""
        return []

    def spec_fields(self, trainer, input_shape):
        """dict. Keyword arguments of `keraslm.spec.stage_spec` particular to this stage."""
        return {}

    def global_detector(self, dataset, val_set):
        """The LandmarkDetector of the global stage this stage refines, or None."""
        return None

    def validation_points_mm(self, trainer, val_set, samples, batch_size, detector,
                             progress=None):
        """Predicted landmarks `(num_images, num_landmarks, ndim)` of the validation images in
        physical mm, by `detector` (the float32 detector that is saved); `progress(done,
        total)` is told the images done, where images are predicted one by one."""
        raise NotImplementedError

    def picture_label(self):
        """str. The curve label of the validation pictures."""
        return self.config.model.architecture


class GlobalStage(TrainingStage):
    """The whole image on the network grid, planned from the images' physical extent
    (`keraslm.training.plan.plan_grid`): `grid_shape` and / or `grid_spacing` where given."""

    name = "global"

    def network_input_shape(self, dataset, size_divisor):
        model = self.config.model
        if model.refine_of is not None:
            raise KeraslmError("--refine-of trains a local stage on a global one: it needs "
                               "--crop-shape (and --grid-spacing)")
        if model.landmarks_per_image is not None:
            raise UsageError("--landmarks-per-image is a local stage's (crops per image and "
                             "step): it needs --crop-shape")
        if model.grid_shape is not None and len(model.grid_shape) != dataset.ndim:
            raise KeraslmError(f"dataset {dataset.name!r} is {dataset.ndim}D but --grid-shape "
                               f"{tuple(model.grid_shape)} is {len(model.grid_shape)}D")
        headers = canonical_headers(dataset)
        self.extent_mm = largest_extent_mm([h.size for h in headers], [h.spacing for h in headers])
        shape, spacing = plan_grid(self.extent_mm, size_divisor, model.grid_shape,
                                   model.grid_spacing)
        self._grid = GridSpec(shape, spacing)
        if model.grid_shape is not None and model.grid_spacing is not None:
            self.grid_reason = "--grid-shape and --grid-spacing given"
        elif model.grid_shape is not None:
            self.grid_reason = "--grid-shape given; the smallest spacing at which every image fits"
        elif model.grid_spacing is not None:
            self.grid_reason = ("--grid-spacing given; the smallest shape (multiples of "
                                f"{size_divisor}) that covers every image")
        else:
            self.grid_reason = (f"fitted to the images within {DEFAULT_VOXEL_BUDGET[dataset.ndim]} "
                                f"voxels, sizes multiples of {size_divisor}; --grid-shape / "
                                "--grid-spacing override")
        return shape

    def grid(self, dataset, input_shape):
        return self._grid

    def trainer(self, network, grid, input_shape, **common):
        return HeatmapTrainer(network, grid.shape, grid.spacing, **common)

    def callbacks(self, log_dir, val_samples, network):
        if val_samples is None:
            return []
        return [HeatmapImages(log_dir, val_samples.images[:3], network)]

    def validation_points_mm(self, trainer, val_set, samples, batch_size, detector,
                             progress=None):
        return graph_validation_points_mm(val_set, detector, progress)


class LocalStage(TrainingStage):
    """Crops of `crop_shape` on a fine grid of `grid_spacing` mm around the landmarks."""

    name = "local"

    def network_input_shape(self, dataset, size_divisor):
        model = self.config.model
        if len(model.crop_shape) != dataset.ndim:
            raise KeraslmError(
                f"dataset {dataset.name!r} is {dataset.ndim}D but --crop-shape "
                f"{tuple(model.crop_shape)} is {len(model.crop_shape)}D")
        if model.grid_spacing is None:
            raise KeraslmError("a local stage (--crop-shape) needs --grid-spacing: the mm per "
                               "pixel of its fine grid, e.g. 0.4 for ISBI 2015")
        if model.grid_shape is not None:
            raise UsageError("a local stage (--crop-shape) takes no --grid-shape: its fine grid "
                             "is --grid-spacing over every image, its network sees "
                             "--crop-shape crops of it")
        if self.config.data.cache_file:
            raise KeraslmError("--cache-file is not supported for a local stage (--crop-shape)")
        self.grid_reason = ("the fine grid of --grid-spacing that covers every image; the "
                            "network sees --crop-shape crops of it")
        return tuple(model.crop_shape)

    def grid(self, dataset, input_shape):
        return covering_grid(dataset, self.config.model.grid_spacing)

    def describe(self, input_shape):
        return f", local stage on {input_shape} crops"

    def network_inputs_per_sample(self, num_landmarks):
        return int(self.config.model.landmarks_per_image or num_landmarks)

    def trainer(self, network, grid, input_shape, **common):
        return LocalHeatmapTrainer(network, input_shape, grid.spacing,
                                   landmarks_per_image=self.config.model.landmarks_per_image,
                                   **common)

    def spec_fields(self, trainer, input_shape):
        return {"crop_shape": input_shape,
                "offset_prior_mm": offset_prior_mm(trainer.augmentation.translation_mm)}

    def global_detector(self, dataset, val_set):
        run_dir = self.config.model.refine_of
        if run_dir is None:
            return None
        folder = RunFolder(run_dir)
        if not folder.is_finished():
            raise KeraslmError(f"--refine-of {run_dir}: not a finished training run (no "
                               f"{os.path.basename(folder.model_path)})")
        detector = load_detector(folder.model_path)
        if detector.spec.is_local_only or detector.spec.local_stages:
            raise KeraslmError(f"--refine-of {run_dir}: a run of a local stage; give the run of "
                               "a whole-image (global) stage")
        if tuple(detector.spec.landmark_names) != tuple(dataset.landmark_names):
            raise KeraslmError(f"--refine-of {run_dir}: its landmarks differ from dataset "
                               f"{dataset.name!r}'s")
        validated = folder.read_metrics()["validation_ids"]
        if sorted(validated) != sorted(val_set.ids):
            raise KeraslmError(
                f"--refine-of {run_dir}: it held out other images ({len(validated)}) than this "
                f"run ({len(val_set)}); train both stages on the same split (--fold / "
                "--test-ids / --seed)")
        return detector

    def validation_points_mm(self, trainer, val_set, samples, batch_size, detector,
                             progress=None):
        """With the global stage (`refine_of`): the pair through the prediction graph; alone:
        crops around the truth moved by a fixed random offset."""
        if detector.spec.global_stages:
            return graph_validation_points_mm(val_set, detector, progress)
        points_grid = predict_local_validation_points(
            trainer, samples, batch_size, detector.spec.local_stages[0],
            network=detector.local_networks[0])
        return samples.grid_to_physical(points_grid)

    def picture_label(self):
        return f"{self.config.model.architecture} (local stage)"


def stage_for(config):
    """The TrainingStage a TrainingConfig asks for: local with `crop_shape`, else global."""
    return LocalStage(config) if config.model.crop_shape is not None else GlobalStage(config)


def graph_validation_points_mm(val_set, detector, progress=None):
    """Landmarks `(num_images, num_landmarks, ndim)` in mm of the validation images as read
    from their files, through the prediction graph (`keraslm.predict`, `keraslm-evaluate`);
    `progress(done, total)`, if given, is told after each image."""
    predictor = DetectorPredictor(detector)
    points = []
    for record in val_set.records:
        points.append(predictor.locate(val_set.read_image(record))["landmarks_mm"])
        if progress is not None:
            progress(len(points), len(val_set.records))
    return np.stack(points)


def predict_local_validation_points(trainer, samples, batch_size, stage, seed=12345,
                                    network=None):
    """Local stage: refined landmarks `(num_images, num_landmarks, ndim)` in fine grid index
    units from crops centred on the truth moved by a fixed random offset, uniform within the
    augmentation's translation range per axis (what a coarse stage of that accuracy gives);
    `network` defaults to the trainer's."""
    refine = tf.function(refine_function(network or trainer.network, stage))
    rng = np.random.default_rng(seed)
    limit = trainer.augmentation.translation_mm / np.asarray(trainer.grid_spacing)
    results = []
    for images, points in evaluation_dataset(samples, batch_size):
        points = points.numpy()
        centres = points + rng.uniform(-1, 1, points.shape) * limit
        centres = np.where(np.isfinite(centres), centres, 0.0).astype(np.float32)
        results.append(refine(images, centres)[0].numpy())
    return np.concatenate(results)[: len(samples)]
