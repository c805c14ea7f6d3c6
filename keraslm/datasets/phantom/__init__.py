"""Synthetic hand phantoms: keraslm's embedded default datasets, generated without a download.

`make_phantom(root, ndim=2)` writes hand-like 2D radiographs (37 landmarks; PNG and DICOM) or
`ndim=3` hand volumes (28 landmarks; NIfTI and DICOM series) with landmarks in physical mm, and
returns the folder as a `keraslm.data.LandmarkDataset`.

This package holds `make_phantom` (cache reuse, atomic writing, loading) and re-exports the
public names of its modules:

- `anatomy`: landmark names and the hand, sampled in a hand frame (mm), and the pose that places
  it in the physical space (mm, LPS) of an image.
- `render`: `render_phantom`, which draws a sampled hand on the pixel/voxel grid of an image.
- `files`: the generator options (defaults, validation, version) and the writing of a dataset
  folder (images, landmarks.csv, dataset.json).
"""
import logging
import os
import time

from keraslm.datasets.phantom.anatomy import PHANTOM2D_LANDMARKS, PHANTOM3D_LANDMARKS
from keraslm.datasets.phantom.files import (
    DEFAULT_IMAGE_SIZE,
    DEFAULT_NUM_IMAGES,
    DEFAULT_SPACING,
    existing_generator,
    generator_config,
    write_dataset,
)
from keraslm.datasets.phantom.render import render_phantom
from keraslm.errors import DatasetError
from keraslm.files import atomic_folder

_log = logging.getLogger(__name__)


def make_phantom(
    root,
    ndim=2,
    num_images=None,
    seed=0,
    overwrite=False,
    *,
    image_size=None,
    spacing=None,
    noise=0.02,
    max_rotation_deg=15.0,
):
    """Writes a synthetic hand dataset into `root` (or reuses it) and loads it.

    Layout: `root/images/` holds `phantom2d_000.png`, `phantom2d_001.dcm`, ... (2D: 16-bit PNG
    at even indices, DICOM with a non-zero origin at odd ones) or `phantom3d_000.nii.gz`,
    `phantom3d_001/` (3D: NIfTI and DICOM series folders, both with the same oblique
    geometry); `root/landmarks.csv` holds the landmarks in physical mm (named layout, id column
    `image` = path relative to root); `root/dataset.json` describes it (`plain_image_spacing`
    is the spacing PNGs must be read with) and records the generator options.

    Everything is written into a temporary folder beside `root` and renamed at the end. If
    `root` already holds a phantom generated with the same options, it is reused as it is.
    Image `i` is drawn from `np.random.default_rng([seed, i])`: the same seed gives identical
    pixels and landmarks.

    Args:
        root: str or os.PathLike. Dataset folder.
        ndim: int. 2 (hand radiographs, 37 landmarks) or 3 (hand volumes, 28 landmarks).
        num_images: int, optional. Number of images; default 100 (2D) or 40 (3D).
        seed: int. Random seed (>= 0).
        overwrite: bool. Replace an existing `root` that does not hold this very dataset.
        image_size: int or sequence of int, optional. Pixels along x, y[, z]; default
            (256, 256) or (64, 96, 32).
        spacing: float or sequence of float, optional. Millimetres per pixel along x, y[, z];
            default (0.9, 1.0) or (2.5, 2.2, 3.0) at the default size, scaled to keep the field
            of view at other sizes.
        noise: float. Noise standard deviation as a fraction of the intensity range.
        max_rotation_deg: float. Largest in-plane rotation of the hand, degrees, in [0, 30].

    Returns:
        keraslm.data.LandmarkDataset, from `keraslm.data.load_folder(root)`.

    Raises:
        DatasetError: invalid arguments (the message names the argument and value), `root`
            exists and holds something else while `overwrite` is False, or the hand does not
            fit into the field of view.

    Examples:
        >>> dataset = make_phantom("/tmp/phantom2d", num_images=10)  # doctest: +SKIP
        >>> dataset.ndim, dataset.num_landmarks  # doctest: +SKIP
        (2, 37)
    """
    from keraslm.data import load_folder  # Here: keraslm.data imports keraslm.datasets users.

    config = generator_config(ndim, num_images, seed, image_size, spacing, noise, max_rotation_deg)
    root = os.path.abspath(os.fspath(root))
    replace = overwrite
    if os.path.exists(root):
        if existing_generator(root) == config:
            return load_folder(root)
        empty = os.path.isdir(root) and not os.listdir(root)
        if not (overwrite or empty):
            raise DatasetError(
                f"{root} exists and does not hold this phantom (dataset.json missing or generated "
                "with other options); to use what it holds, name the folder as the dataset "
                f"(--dataset {root}); to replace it, regenerate it (keraslm-dataset "
                f"phantom{ndim}d --overwrite; Python: overwrite=True); or choose another root "
                "(--dataset-root)"
            )
        replace = True
    start = time.perf_counter()
    with atomic_folder(root, overwrite=replace) as temporary:
        write_dataset(temporary, config)
    _log.info(
        "wrote %d %dD phantom images to %s in %.1f s",
        config["num_images"],
        config["ndim"],
        root,
        time.perf_counter() - start,
    )
    return load_folder(root)


__all__ = [
    "DEFAULT_IMAGE_SIZE",
    "DEFAULT_NUM_IMAGES",
    "DEFAULT_SPACING",
    "PHANTOM2D_LANDMARKS",
    "PHANTOM3D_LANDMARKS",
    "make_phantom",
    "render_phantom",
]
