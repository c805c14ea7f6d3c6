"""Training: tf.data pipeline on the host, augmentation and heatmap rendering in the compiled
step, checkpoints, distribution. `train(TrainingConfig(...))` runs one training."""
from keraslm.training.pipeline import (
    PreparedSamples,
    choose_grid,
    evaluation_dataset,
    prepare_image,
    prepare_samples,
    streaming_training_dataset,
    training_dataset,
)
from keraslm.training.presets import TRAINING_PRESETS, get_training_preset
from keraslm.training.config import (
    AugmentationSettings,
    DataSettings,
    ModelSettings,
    RunSettings,
    TrainingConfig,
)
from keraslm.training.run import TrainingResult, train
from keraslm.training.stages import GlobalStage, LocalStage, TrainingStage, stage_for
from keraslm.training.trainer import HeatmapTrainer, weighted_l2

__all__ = [
    "AugmentationSettings",
    "DataSettings",
    "GlobalStage",
    "LocalStage",
    "ModelSettings",
    "RunSettings",
    "TrainingStage",
    "HeatmapTrainer",
    "PreparedSamples",
    "TRAINING_PRESETS",
    "TrainingConfig",
    "TrainingResult",
    "choose_grid",
    "evaluation_dataset",
    "get_training_preset",
    "prepare_image",
    "prepare_samples",
    "stage_for",
    "streaming_training_dataset",
    "train",
    "training_dataset",
    "weighted_l2",
]
