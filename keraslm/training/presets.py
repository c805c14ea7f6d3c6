"""Training settings as data: `TRAINING_PRESETS[preset]`, resolved per ndim by `get_training_preset`.

- `"default"`: converges out of the box on the phantoms and ISBI 2015: Adam, learning rate
  1e-3 with cosine decay, fresh augmentation every step, target heatmaps with peak 100 (with
  peak 1 the all-zero output is so close in L2 that training collapses onto it;
  docs/guides/training.md, "Design notes"), 2000 steps in 2D.
- `"paper"`: Payer et al. 2016: SGD with momentum 0.99, weight decay 5e-4, batch 5 (2D) / 2
  (3D), the paper's learning rates. The paper trained with Caffe's Euclidean loss, a SUM over
  pixels and landmarks divided by 2 x batch; keraslm's loss is a MEAN over pixels and landmarks
  (`keraslm.training.trainer.weighted_l2`), whose gradient is smaller by
  `2 / (pixels x landmarks)`. The paper's learning rate is therefore multiplied by
  `pixels x landmarks / 2` of the heatmap (`caffe_learning_rate` below) to take the same steps.
  Augmentation as in the paper: rotation 30 deg, translation 10 mm, intensity 10 % (2D only).
"""
import copy

from keraslm.errors import UsageError
from keraslm.models import get_architecture
from keraslm.training.trainer import DEFAULT_SIGMA_PENALTY

TRAINING_PRESETS = {
    "default": {
        2: dict(optimizer="adam", learning_rate=1e-3, momentum=None, weight_decay=0.0,
                batch_size=8, steps=2000, sigma=2.0, heatmap_scale=100.0,
                rotation_degrees=15.0, translation_mm=10.0, scale=0.1, elastic_mm=0.0,
                intensity_scale=0.1, intensity_shift=0.1, blur_mm=0.0,
                noise_std=0.0, flip_axes="", decay="cosine", learn_sigma=False,
                sigma_penalty=DEFAULT_SIGMA_PENALTY),
        3: dict(optimizer="adam", learning_rate=1e-3, momentum=None, weight_decay=0.0,
                batch_size=2, steps=2000, sigma=2.0, heatmap_scale=100.0,
                rotation_degrees=15.0, translation_mm=10.0, scale=0.1, elastic_mm=0.0,
                intensity_scale=0.0, intensity_shift=0.0, blur_mm=0.0,
                noise_std=0.0, flip_axes="", decay="cosine", learn_sigma=False,
                sigma_penalty=DEFAULT_SIGMA_PENALTY),
    },
    "paper": {
        2: dict(optimizer="sgd", learning_rate=None, momentum=0.99,
                weight_decay=5e-4, batch_size=5, steps=40000, sigma=2.0, heatmap_scale=1.0,
                rotation_degrees=30.0, translation_mm=10.0, scale=0.0, elastic_mm=0.0,
                intensity_scale=0.1, intensity_shift=0.1, blur_mm=0.0,
                noise_std=0.0, flip_axes="", decay="none", learn_sigma=False,
                sigma_penalty=DEFAULT_SIGMA_PENALTY),
        3: dict(optimizer="sgd", learning_rate=None, momentum=0.99,
                weight_decay=5e-4, batch_size=2, steps=15000, sigma=2.0, heatmap_scale=1.0,
                rotation_degrees=30.0, translation_mm=10.0, scale=0.0, elastic_mm=0.0,
                intensity_scale=0.0, intensity_shift=0.0, blur_mm=0.0,
                noise_std=0.0, flip_axes="", decay="none", learn_sigma=False,
                sigma_penalty=DEFAULT_SIGMA_PENALTY),
    },
}



def get_training_preset(preset, ndim, architecture, heatmap_pixels, num_landmarks):
    """A fresh copy of a training preset for one dimension and architecture, with the learning
    rate resolved (see the module docstring for the paper's Caffe conversion).

    Args:
        preset: str. "default" or "paper".
        ndim: int. 2 or 3.
        architecture: str. Model architecture (the paper's learning rate depends on it).
        heatmap_pixels: int. Pixels (voxels) per heatmap.
        num_landmarks: int.
    """
    if preset not in TRAINING_PRESETS:
        raise UsageError(
            f"Unknown training preset. Expected one of {sorted(TRAINING_PRESETS)}. "
            f"Received: preset={preset!r}"
        )
    settings = copy.deepcopy(TRAINING_PRESETS[preset][ndim])
    if settings["learning_rate"] is None:
        # The paper's Caffe learning rates: 1e-5 for ConvOnly-/Downsampling-Net, 1e-6 for
        # U-Net/SCN; each architecture's registration holds its rate.
        caffe_rate = get_architecture(architecture).paper_caffe_learning_rate
        settings["learning_rate"] = caffe_learning_rate(caffe_rate, heatmap_pixels, num_landmarks)
    return settings


def caffe_learning_rate(rate, heatmap_pixels, num_landmarks):
    """The learning rate for keraslm's mean loss that takes the steps Caffe's summed Euclidean
    loss takes with `rate`: `rate * heatmap_pixels * num_landmarks / 2`."""
    return rate * heatmap_pixels * num_landmarks / 2.0
