"""On-device tensor operations: augmentation geometry and the heatmap codec.

Pure functions of tensors (no file I/O; nothing from `keraslm.models`, `keraslm.io` or
`keraslm.data`), written with `keras.ops`, batched with static shapes and XLA-compilable; one
code path serves 2D and 3D.

Coordinate convention (details in `keraslm.ops.geometry`): images `(batch, *spatial,
channels)` with spatial axes `(y, x)` / `(z, y, x)`; points `(batch, num_landmarks, ndim)` as
`(x, y[, z])` in grid index units of the network input grid (pixel centres at integers), NaN =
missing; `grid_spacing` in mm per index step along x, y[, z].

- `keraslm.ops.augmentation`: `AugmentationConfig`, `sample_transforms` (sampling),
  `apply_to_images` / `apply_to_points` (applying; `gaussian_blur` for the blur), `device_stage`
  (augment + render);
  `crop_transforms`, `choose_crop_landmarks`, `crop_stage`, `extract_crops` and
  `crop_to_grid` for the local stage of a
  coarse-to-fine model (augmented crops of larger images around landmarks).
- `keraslm.ops.heatmaps`: `HeatmapCodec` (encode, weights, decode).
- `keraslm.ops.geometry`: convention, B-spline fields, batched multilinear resampling.
"""
from keraslm.ops.augmentation import (
    AugmentationConfig,
    apply_to_images,
    apply_to_points,
    choose_crop_landmarks,
    crop_stage,
    crop_to_grid,
    crop_transforms,
    device_stage,
    displacement_field,
    extract_crops,
    gaussian_blur,
    sample_transforms,
)
from keraslm.ops.geometry import resample
from keraslm.ops.heatmaps import HeatmapCodec

__all__ = [
    "AugmentationConfig",
    "HeatmapCodec",
    "apply_to_images",
    "apply_to_points",
    "choose_crop_landmarks",
    "crop_stage",
    "crop_to_grid",
    "crop_transforms",
    "device_stage",
    "displacement_field",
    "extract_crops",
    "gaussian_blur",
    "resample",
    "sample_transforms",
]
