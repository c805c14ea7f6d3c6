"""`TrainingConfig`: everything that defines a training run, in four parts - data, model,
augmentation, run - each a dataclass of settings. The command-line flags of `keraslm-train` map
one to one onto the flat setting names (`TrainingConfig(steps=400)` sets `config.run.steps`).
"""
import dataclasses

DISTRIBUTE = ("none", "mirrored", "multiworker")


@dataclasses.dataclass(frozen=True)
class DataSettings:
    """Which images train and which validate.

    Args:
        dataset: str. Any name `keraslm.datasets.load_dataset` takes: "phantom2d",
            "phantom3d", "isbi2015", a landmark CSV, or a dataset folder.
        dataset_root: str or None. Folder of "isbi2015"; a CSV's image folder; where to
            generate a phantom.
        units: str or None. "index" or "mm": units of CSV / .txt landmark coordinates.
        image_spacing: float or None. mm per pixel of plain images (PNG/JPEG).
        ndim: int or None. Expected dimension of the dataset (checked), 2 or 3.
        fold, num_folds: int or None. Cross-validation fold (0-based) of `num_folds`.
        train_ids, test_ids: str or None. Files with one record id per line.
        test_fraction: float. Held-out share when no fold or id files are given.
        train_size: int or None. Reduced training set of this many images.
        cache_file: str or None. Stream training images through this tf.data cache file
            instead of holding them in memory.
        normalization: str or None. `keraslm.preprocessing.normalize` method; None: histogram
            equalisation + standardisation in 2D, standardisation in 3D.
    """

    dataset: str = "phantom2d"
    dataset_root: str = None
    units: str = None
    image_spacing: float = None
    ndim: int = None
    fold: int = None
    num_folds: int = 5
    train_ids: str = None
    test_ids: str = None
    test_fraction: float = 0.2
    train_size: int = None
    cache_file: str = None
    normalization: str = None


@dataclasses.dataclass(frozen=True)
class ModelSettings:
    """The network, its grid and its stage.

    Args:
        architecture: str. A registered architecture (`keraslm.models.ARCHITECTURES`).
        model_preset: str. "small" or "paper" (`keraslm.models.presets`).
        model_overrides: dict. Keyword overrides for `build_model`.
        grid_shape: tuple of int or None. Network grid, array order; default: planned from the
            images' physical extent (`keraslm.training.plan.plan_grid`).
        grid_spacing: float or None. mm per grid step; default: the smallest at which every
            image fits the grid shape (planned with it when neither is given).
        crop_shape: tuple of int or None. Train the LOCAL stage of a coarse-to-fine model
            (`keraslm.training.stages.LocalStage`): the network learns on crops of this shape
            on a fine grid of `grid_spacing` mm; `grid_shape` is then ignored.
        landmarks_per_image: int or None. Local stage: crops per image and step (None: one
            around every landmark).
        refine_of: str or None. Local stage: the run folder of the global stage it refines
            (trained on the same split). The run then saves both as one coarse-to-fine
            detector and validates it through the prediction graph.
        sigma: float or None. Standard deviation of the target Gaussians in output (heatmap)
            pixels (None: the training preset's, 2.0).
        learn_sigma: bool or None. Learn one target sigma per landmark, starting at `sigma`
            (`keraslm.training.trainer.HeatmapTrainer`; None: the preset's, off).
        sigma_penalty: float or None. Strength of the learned sigma's penalty (None: the
            preset's, `keraslm.training.trainer.DEFAULT_SIGMA_PENALTY`).
    """

    architecture: str = "scn"
    model_preset: str = "small"
    model_overrides: dict = dataclasses.field(default_factory=dict)
    grid_shape: tuple = None
    grid_spacing: float = None
    crop_shape: tuple = None
    landmarks_per_image: int = None
    refine_of: str = None
    sigma: float = None
    learn_sigma: bool = None
    sigma_penalty: float = None


@dataclasses.dataclass(frozen=True)
class AugmentationSettings:
    """Augmentation beyond the training preset's (None: the preset's value).

    Args:
        elastic_mm: float or None. Elastic deformation amplitude, mm.
        translation_mm: float or None. Largest random translation per axis, mm; in a local
            stage the largest offset of a crop from its landmark.
        blur_mm: float or None. Largest standard deviation of the random Gaussian blur, mm
            (robustness to other machines' sharpness; 0 = off).
        noise_std: float or None. Largest standard deviation of the random pixel noise, in
            normalised intensity units (0 = off).
        rotation_degrees: float or None. Largest random rotation, degrees.
        scale: float or None. Largest random isotropic scaling: factors in [1 - scale,
            1 + scale].
        flip_axes: str or None. Axes ("x", "y", "z") along which each training sample is
            mirrored with probability 1/2, landmark identities kept (e.g. "x" for lateral
            cephalograms facing either way); "" = off.
    """

    elastic_mm: float = None
    translation_mm: float = None
    blur_mm: float = None
    noise_std: float = None
    rotation_degrees: float = None
    scale: float = None
    flip_axes: str = None


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """How the run goes and where it writes.

    Args:
        training_preset: str. "default" or "paper" (`keraslm.training.presets`).
        steps: int or None. Total training steps (preset default if None).
        steps_per_epoch: int. Steps between validations and checkpoints.
        batch_size: int or None. Preset default if None.
        learning_rate: float or None. Preset default if None.
        output_dir: str. Run folder.
        seed: int. Seeds splits, initialisation, shuffling and augmentation.
        resume: bool. Continue from the run folder's last checkpoint.
        distribute: str. "none", "mirrored" or "multiworker" (TF_CONFIG).
        precision: str. The network's compute precision: "auto" (bfloat16 on CPUs with
            AMX-BF16 / AVX512-BF16 and GPUs of compute capability >= 8.0, float16 on older GPUs
            with tensor cores, float32 otherwise; `keraslm.precision.choose_precision`),
            "float32", "bfloat16" or "float16". Variables, optimizer state, loss, targets and
            decoding stay float32; the saved model and export compute in float32.
        jit: str. XLA compilation: "on" (the whole training step), "off" (nothing), "auto"
            (the whole step on a GPU; on a CPU measured per part - device stage, network - by
            a short probe cached per CPU model, `keraslm.training.jit.choose_jit`).
        export_dir: str or None. TF Serving model base folder to export the trained network
            into (next version); None = no export.
        plots: bool. End with pictures of the validation (cumulative error curve; truth vs
            prediction on the best, median and worst validation image) in the run folder.
        plan_only: bool. Work out and report the plan (`keraslm.training.plan`: grid,
            targets, learning rate, batch, steps) from the image headers, then stop: no image
            is prepared and nothing is written.
    """

    training_preset: str = "default"
    steps: int = None
    steps_per_epoch: int = 100
    batch_size: int = None
    learning_rate: float = None
    output_dir: str = "runs/default"
    seed: int = 0
    resume: bool = False
    distribute: str = "none"
    precision: str = "auto"
    jit: str = "auto"
    export_dir: str = None
    plots: bool = True
    plan_only: bool = False


#: TrainingConfig's parts: attribute name -> settings class.
CONFIG_GROUPS = {"data": DataSettings, "model": ModelSettings,
                 "augmentation": AugmentationSettings, "run": RunSettings}
_GROUP_OF = {field.name: group for group, cls in CONFIG_GROUPS.items()
             for field in dataclasses.fields(cls)}


class TrainingConfig:
    """Everything that defines a training run (defaults: small SCN on the 2D phantom), in four
    parts: `data` (DataSettings), `model` (ModelSettings), `augmentation`
    (AugmentationSettings) and `run` (RunSettings).

    Build it from the parts, from flat settings (each goes to its part), or both:

        TrainingConfig(model=ModelSettings(architecture="unet"), run=RunSettings(steps=400))
        TrainingConfig(architecture="unet", steps=400, dataset="isbi2015")

    A flat name also reads its part's value (`config.steps` is `config.run.steps`). Parts and
    config are read-only (settings are keywords only): `replace(**settings)` returns a changed
    copy; `to_dict()` the flat settings (config.json).
    """

    def __init__(self, data=None, model=None, augmentation=None, run=None, **settings):
        parts = {"data": data, "model": model, "augmentation": augmentation, "run": run}
        for name, cls in CONFIG_GROUPS.items():
            part = parts[name] if parts[name] is not None else cls()
            if not isinstance(part, cls):
                raise TypeError(f"TrainingConfig {name}= takes a {cls.__name__}. "
                                f"Received: {type(part).__name__}")
            parts[name] = part
        unknown = sorted(set(settings) - set(_GROUP_OF))
        if unknown:
            raise TypeError(f"TrainingConfig got an unexpected setting {unknown[0]!r}")
        for name in CONFIG_GROUPS:
            mine = {key: value for key, value in settings.items() if _GROUP_OF[key] == name}
            if mine:
                parts[name] = dataclasses.replace(parts[name], **mine)
        # Own copy of the one mutable setting, so copies never share it.
        parts["model"] = dataclasses.replace(parts["model"],
                                             model_overrides=dict(parts["model"].model_overrides))
        self.__dict__.update(parts)

    def __getattr__(self, name):  # Only for names that are not attributes: the flat settings.
        group = _GROUP_OF.get(name)
        if group is None:
            raise AttributeError(f"TrainingConfig has no setting {name!r}")
        return getattr(self.__dict__[group], name)

    def __setattr__(self, name, value):
        raise AttributeError("TrainingConfig is read-only; use config.replace(...)")

    def replace(self, **settings):
        """A copy with the given flat settings changed."""
        return TrainingConfig(**{name: getattr(self, name) for name in CONFIG_GROUPS}, **settings)

    def to_dict(self):
        """dict. The flat settings (the layout of a run folder's config.json)."""
        flat = {}
        for name in CONFIG_GROUPS:
            flat.update(dataclasses.asdict(getattr(self, name)))
        return flat

    def __eq__(self, other):
        return isinstance(other, TrainingConfig) and self.to_dict() == other.to_dict()

    def __repr__(self):
        parts = ", ".join(f"{name}={getattr(self, name)!r}" for name in CONFIG_GROUPS)
        return f"TrainingConfig({parts})"
