"""Host side of training: images onto the network grid once, then a tf.data pipeline.

`prepare_samples` reads every image of a dataset once, brings it into the canonical frame
(`keraslm.io.Image.canonical`: its axes along the physical axes, so datasets that mix storage
orientations train as one), normalises it, resamples it onto the
network grid (`keraslm.preprocessing`) and converts its landmarks from physical mm into grid
index units, keeping the exact placement of each image for mapping predictions back. The
result is held in memory (it is the cache: 150 ISBI images on a 256x256 grid take 39 MB);
`training_dataset` serves it through tf.data (shuffle, repeat, batch, prefetch) with no Python
work per sample in the steady state. Augmentation and
heatmap rendering are not done here: they run batched inside the compiled training step
(`keraslm.training.trainer`).

TF-only edge: this module uses tf.data.
"""
import dataclasses

import numpy as np
import tensorflow as tf

from keraslm.errors import DatasetError, KeraslmError
from keraslm.preprocessing import GridSpec, prepare_image
from keraslm.training.plan import largest_extent_mm, plan_grid

# 2D as in the paper. 3D: the paper subtracts the mean only, which leaves the scanner's
# intensity scale (thousands for the 3D phantom's MR-like values) and made the default Adam
# training diverge (docs/guides/training.md, "Design notes"), so keraslm standardises by default.
# `normalize(..., "subtract_mean")` is the paper's choice.
DEFAULT_NORMALIZATION = {2: "equalize_standardize", 3: "standardize"}


@dataclasses.dataclass(frozen=True, eq=False)
class PreparedSamples:
    """A dataset's images on the network grid.

    Args:
        ids: tuple of str. Record ids.
        images: np.ndarray `(num_images, *grid.shape, 1)` float32. Normalised grid images.
        points_grid: np.ndarray `(num_images, num_landmarks, ndim)` float32. Landmarks in grid
            index units `(x, y[, z])`, NaN where missing.
        placements: tuple of GridPlacement. Grid index -> image index map per image.
        headers: tuple of Image. Geometry of each image in the canonical frame (placeholder
            arrays).
        grid: GridSpec.
        normalization: str. The `keraslm.preprocessing.normalize` method used.
    """

    ids: tuple
    images: np.ndarray
    points_grid: np.ndarray
    placements: tuple
    headers: tuple
    grid: GridSpec
    normalization: str

    def __len__(self):
        return len(self.ids)

    def grid_to_physical(self, points_grid):
        """Grid index points `(num_images, num_landmarks, ndim)` -> physical mm of each original
        image (LPS), through the exact placement and image geometry."""
        return np.stack(
            [
                header.index_to_physical(placement.grid_to_image_index(points))
                for header, placement, points in zip(self.headers, self.placements, points_grid)
            ]
        )


def choose_grid(dataset, grid_shape, grid_spacing=None):
    """The network grid for a dataset: `grid_shape` and, unless given, the smallest isotropic
    spacing at which every image of the dataset fits (read from image headers only).

    Args:
        dataset: LandmarkDataset.
        grid_shape: tuple of int. Array order `(height, width)` / `(depth, height, width)`.
        grid_spacing: float, optional. Millimetres per grid step.
    """
    if len(grid_shape) != dataset.ndim:
        raise KeraslmError(
            f"dataset {dataset.name!r} is {dataset.ndim}D but the grid shape {tuple(grid_shape)} "
            f"is {len(grid_shape)}D"
        )
    headers = canonical_headers(dataset)
    extent = largest_extent_mm([h.size for h in headers], [h.spacing for h in headers])
    return GridSpec(*plan_grid(extent, 1, tuple(grid_shape), grid_spacing))


def canonical_image(dataset, record):
    """A record's image in the canonical frame (`keraslm.io.Image.canonical`), as the networks
    learn and predict it: its axes along the physical axes, whatever its storage order."""
    return dataset.read_image(record).canonical()[0]


def canonical_headers(dataset):
    """The geometry of every image of `dataset` in the canonical frame (headers only)."""
    return [dataset.read_image_header(record).canonical()[0] for record in dataset.records]


def covering_grid(dataset, grid_spacing):
    """A grid of `grid_spacing` mm per step just large enough for every image of `dataset`
    (read from image headers only): the fine grid of a local (crop) stage."""
    headers = canonical_headers(dataset)
    extent = largest_extent_mm([h.size for h in headers], [h.spacing for h in headers])
    return GridSpec(*plan_grid(extent, 1, grid_spacing=grid_spacing))


def prepare_samples(dataset, grid, normalization=None, progress=None):
    """Reads, normalises and resamples every image of `dataset` onto `grid`.

    Args:
        dataset: LandmarkDataset.
        grid: GridSpec.
        normalization: str, optional. Defaults to the paper's choice for the dimension.
        progress: callable(done, total), optional. Called after each image.

    Returns:
        PreparedSamples.

    Raises:
        KeraslmError: an image cannot be read or does not fit the grid (message names it).
    """
    if dataset.ndim != grid.ndim:
        raise KeraslmError(f"dataset {dataset.name!r} is {dataset.ndim}D but the grid is {grid.ndim}D")
    if len(dataset) == 0:
        raise DatasetError(f"dataset {dataset.name!r} has no records")
    normalization = normalization or DEFAULT_NORMALIZATION[grid.ndim]
    images = np.zeros((len(dataset), *grid.shape, 1), np.float32)
    points_grid = np.zeros((len(dataset), dataset.num_landmarks, grid.ndim), np.float32)
    placements, headers = [], []
    for index, record in enumerate(dataset.records):
        image = canonical_image(dataset, record)
        images[index, ..., 0], placement = prepare_image(image, grid, normalization)
        points_grid[index] = placement.image_index_to_grid(image.physical_to_index(record.points_mm))
        placements.append(placement)
        headers.append(image.header())
        if progress is not None:
            progress(index + 1, len(dataset))
    return PreparedSamples(
        dataset.ids, images, points_grid, tuple(placements), tuple(headers), grid, normalization
    )


def training_dataset(samples, batch_size, seed=0):
    """Endless tf.data pipeline of `(images, points_grid)` batches for training.

    Args:
        samples: PreparedSamples.
        batch_size: int. Static batch size (the last partial batch is dropped).
        seed: int. Shuffle seed.

    Raises:
        DatasetError: fewer images than the batch size.
    """
    if batch_size > len(samples):
        raise DatasetError(
            f"the training set has {len(samples)} images, fewer than the batch size "
            f"{batch_size}; use a smaller --batch-size"
        )
    data = tf.data.Dataset.from_tensor_slices((samples.images, samples.points_grid))
    return (
        data.shuffle(len(samples), seed=seed, reshuffle_each_iteration=True)
        .repeat()
        .batch(batch_size, drop_remainder=True)
        .prefetch(tf.data.AUTOTUNE)
    )


def cache_prefix(cache_file, dataset, grid, normalization=None):
    """The tf.data cache file prefix for `dataset` on `grid`: `cache_file` with a key of what
    the cache holds appended (`<cache_file>-<12 hex>`) - the records' ids, image paths, sizes
    and modification times, their landmarks, the grid and the normalisation - so that another
    fold, grid or normalisation given the same --cache-file gets its own cache instead of
    silently training on the images of the first."""
    import hashlib
    import json
    import os

    normalization = normalization or DEFAULT_NORMALIZATION[grid.ndim]
    digest = hashlib.sha256()
    digest.update(json.dumps({"grid_shape": list(grid.shape),
                              "grid_spacing": [float(s) for s in grid.spacing],
                              "normalization": normalization, "format": 1}).encode())
    for record in dataset.records:
        stat = os.stat(record.image_path)
        digest.update(json.dumps([record.id, os.path.abspath(record.image_path), stat.st_size,
                                  stat.st_mtime_ns]).encode())
        digest.update(np.ascontiguousarray(record.points_mm, np.float64).tobytes())
    return f"{cache_file}-{digest.hexdigest()[:12]}"


def clear_unfinished_cache(prefix):
    """Removes what a training stopped during its first pass left of the cache at `prefix` (TF's
    lockfile and temporary shard, which would stop the next run with "concurrent caching
    iterator"); a finished cache (`<prefix>.index`) is kept. Returns the removed paths. One
    training per cache at a time: another one writing it would lose its lock."""
    import glob
    import os

    if os.path.exists(prefix + ".index"):
        return []
    leftovers = sorted(glob.glob(glob.escape(prefix) + "_*.lockfile")
                       + glob.glob(glob.escape(prefix) + "_*.data-*"))
    for path in leftovers:
        os.remove(path)
    return leftovers


def streaming_training_dataset(dataset, grid, batch_size, cache_file, normalization=None, seed=0,
                               shuffle_buffer=256, progress=None):
    """Endless `(images, points_grid)` batches for datasets too large for memory: images are
    prepared on the first pass and written to a tf.data cache file, later epochs read it.

    Args:
        dataset: LandmarkDataset.
        grid: GridSpec.
        batch_size: int. Static batch size.
        cache_file: str. tf.data cache file prefix (its folder must exist), used as it is:
            `cache_prefix` keys it by the dataset and grid.
        normalization: str, optional. As for `prepare_samples`.
        seed: int. Shuffle seed.
        shuffle_buffer: int. Shuffle buffer size (samples).
        progress: optional callable `(done, total)`, called per image on the first pass.
    """
    if batch_size > len(dataset):
        raise DatasetError(
            f"the training set has {len(dataset)} images, fewer than the batch size "
            f"{batch_size}; use a smaller --batch-size"
        )
    normalization = normalization or DEFAULT_NORMALIZATION[grid.ndim]

    def samples():
        for done, record in enumerate(dataset.records, 1):  # First pass only; then the cache.
            if progress is not None:
                progress(done, len(dataset))
            image = canonical_image(dataset, record)
            array, placement = prepare_image(image, grid, normalization)
            points = placement.image_index_to_grid(image.physical_to_index(record.points_mm))
            yield array[..., np.newaxis], points.astype(np.float32)

    signature = (
        tf.TensorSpec((*grid.shape, 1), tf.float32),
        tf.TensorSpec((dataset.num_landmarks, grid.ndim), tf.float32),
    )
    data = tf.data.Dataset.from_generator(samples, output_signature=signature).cache(cache_file)
    return (
        data.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        .repeat()
        .batch(batch_size, drop_remainder=True)
        .prefetch(tf.data.AUTOTUNE)
    )


def evaluation_dataset(samples, batch_size):
    """One pass over `(images, points_grid)` in order, for validation and prediction.

    Batches have the static size `batch_size`: the last one is padded with zero images whose
    landmarks are all missing (NaN), which weigh nothing in the loss and the point error.
    Predictions for the padding come last; drop them by taking the first `len(samples)`.
    """
    padding = -len(samples) % batch_size
    images = np.concatenate([samples.images, np.zeros((padding, *samples.images.shape[1:]), np.float32)])
    points = np.concatenate(
        [samples.points_grid, np.full((padding, *samples.points_grid.shape[1:]), np.nan, np.float32)]
    )
    data = tf.data.Dataset.from_tensor_slices((images, points))
    return data.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
