"""Built-in datasets: synthetic hand phantoms (no download) and the ISBI 2015 layout.

`load_dataset(name_or_folder)` resolves the names scripts accept: "phantom2d" and "phantom3d"
(generated once into the cache folder), "isbi2015" (needs `root`), or a folder with a
`dataset.json`.
"""
import os

from keraslm.data import DATASET_JSON, load_folder
from keraslm.datasets.isbi2015 import ISBI2015_LANDMARKS, ISBI2015_SPACING_MM, isbi2015
from keraslm.datasets.phantom import make_phantom
from keraslm.errors import DatasetError

BUILTIN_DATASETS = ("phantom2d", "phantom3d", "isbi2015")


def cache_dir():
    """str. Folder for generated datasets: `$KERASLM_CACHE`, else `~/.cache/keraslm`."""
    return os.environ.get("KERASLM_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "keraslm"
    )


def load_dataset(name_or_folder, root=None):
    """Loads a built-in dataset by name, or a dataset folder holding a `dataset.json`.

    Args:
        name_or_folder: str. "phantom2d" / "phantom3d" (default phantoms, generated into
            `cache_dir()` on first use), "isbi2015", or a folder path.
        root: str, optional. For "isbi2015", the folder holding its images and landmarks.csv;
            for the phantoms, where to generate them instead of the cache folder.

    Returns:
        LandmarkDataset.
    """
    if name_or_folder in ("phantom2d", "phantom3d"):
        ndim = 2 if name_or_folder == "phantom2d" else 3
        return make_phantom(root or os.path.join(cache_dir(), name_or_folder), ndim=ndim)
    if name_or_folder == "isbi2015":
        if root is None:
            raise DatasetError("dataset 'isbi2015' needs its folder: pass root=<folder>")
        return isbi2015(root)
    if os.path.isfile(os.path.join(name_or_folder, DATASET_JSON)):
        return load_folder(name_or_folder)
    raise DatasetError(
        f"unknown dataset {name_or_folder!r}: use one of {', '.join(BUILTIN_DATASETS)} or a "
        f"folder holding {DATASET_JSON}"
    )


__all__ = [
    "BUILTIN_DATASETS",
    "ISBI2015_LANDMARKS",
    "ISBI2015_SPACING_MM",
    "cache_dir",
    "isbi2015",
    "load_dataset",
    "make_phantom",
]
