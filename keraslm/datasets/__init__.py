"""Built-in datasets (synthetic hand phantoms, no download; the ISBI 2015 layout) and the one
way to name any dataset.

`load_dataset(name_or_path)` resolves every name the scripts accept (`--dataset`): "phantom2d"
and "phantom3d" (generated once into the cache folder), "isbi2015" (needs `root`), a landmark
CSV, or a folder holding a `dataset.json`, exactly one landmark CSV, or images with one
landmark file each (3D Slicer `.mrk.json` / `.fcsv`, point lists `.txt`).
"""
import os

import numpy as np

from keraslm.data import DATASET_JSON, _image_spacing, from_csv, from_landmark_files, load_folder
from keraslm.datasets.isbi2015 import ISBI2015_LANDMARKS, ISBI2015_SPACING_MM, isbi2015
from keraslm.datasets.phantom import make_phantom
from keraslm.errors import DatasetError, DatasetArgumentError

BUILTIN_DATASETS = ("phantom2d", "phantom3d", "isbi2015")


def cache_dir():
    """str. Folder for generated datasets: `$KERASLM_CACHE`, else `~/.cache/keraslm`."""
    return os.environ.get("KERASLM_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "keraslm"
    )


def load_dataset(name_or_path, root=None, units=None, spacing=None, ndim=None):
    """Loads a dataset by name or path: the one way train.py, evaluate.py and the API name one.

    Args:
        name_or_path: str.
            - "phantom2d" / "phantom3d": default phantoms, generated into `cache_dir()` (or
              `root`) on first use; "isbi2015": the ISBI 2015 folder given as `root`.
            - a landmark CSV file (`keraslm.io.read_landmarks`: named `id,<name>_x,<name>_y`,
              long `id,landmark,x,y`, or headerless with `ndim`); its first column holds image
              ids (file names without extension) or paths relative to `root` (default: the
              CSV's folder).
            - a folder with `dataset.json` (`keraslm.data.load_folder`): `root`, `units` and
              `spacing` may be left out; given, they must agree with it;
            - a folder with exactly one landmark CSV beside its images (or in `images/`);
            - a folder of images each with a landmark file of the same name
              (`keraslm.data.from_landmark_files`).
        root: str, optional. See above.
        units: "index" or "mm". Units of CSV and `.txt` coordinates (required for them; Slicer
            markups are mm).
        spacing: float or sequence, optional. mm per pixel of plain images (PNG/JPEG);
            required for a CSV or folder with such images unless a dataset.json gives it.
        ndim: int, optional. Expected dimension (checked; needed for headerless CSVs).

    Returns:
        LandmarkDataset.

    Raises:
        DatasetError: an unknown name, a folder that holds none of the above or several CSVs,
            missing or unreadable files (named), plain images without a spacing, arguments
            that contradict a dataset.json.
    """
    name = os.fspath(name_or_path)
    if name in ("phantom2d", "phantom3d"):
        dataset = make_phantom(root or os.path.join(cache_dir(), name), ndim=2 if name == "phantom2d" else 3)
    elif name == "isbi2015":
        if root is None:
            raise DatasetArgumentError("dataset 'isbi2015' needs its folder: pass root=<folder> "
                                       "(--dataset-root; keraslm-dataset: --root)")
        dataset = isbi2015(root)
    elif os.path.isfile(name):
        if not name.lower().endswith(".csv"):
            raise DatasetError(f"{name}: a dataset file must be a landmark CSV (.csv)")
        dataset = from_csv(name, image_root=root, units=units, spacing=spacing, ndim=ndim)
    elif os.path.isdir(name):
        dataset = _load_folder_any(name, root, units, spacing, ndim)
    else:
        raise DatasetArgumentError(
            f"unknown dataset {name!r}: use one of {', '.join(BUILTIN_DATASETS)}, a landmark "
            "CSV, or a folder (dataset.json, one landmark CSV, or images with landmark files)")
    if name in BUILTIN_DATASETS:
        _check_builtin_arguments(name, dataset, units, spacing)
    if ndim is not None and dataset.ndim != ndim:
        raise DatasetError(
            f"dataset {dataset.name!r} is {dataset.ndim}D but a {ndim}D model was requested (--ndim)")
    return dataset


def _check_builtin_arguments(name, dataset, units, spacing):
    """A built-in dataset knows its landmark units and pixel spacing: `units` given for it is
    refused, and `spacing` must be its own (both would otherwise be ignored without a word)."""
    if units is not None:
        raise DatasetArgumentError(
            f"dataset {name!r} knows the units of its landmarks; leave --units (units=) out")
    if spacing is None:
        return
    own = dataset.image_spacing
    if own is None:
        own = dataset.read_image_header(dataset.records[0]).spacing
    given = _image_spacing(spacing, dataset.ndim, f"dataset {name!r}")  # Checks the count.
    if not np.allclose(given, own, rtol=1e-9, atol=0):
        raise DatasetArgumentError(
            f"dataset {name!r} has {[float(s) for s in own]} mm pixels, but spacing "
            f"{np.atleast_1d(spacing).tolist()} mm (--spacing) was given; leave --spacing out")


def landmark_csvs(folder):
    """Sorted paths of the CSV files in `folder` and `folder/images` (hidden files left out)."""
    return sorted(
        os.path.join(sub, entry) for sub in (folder, os.path.join(folder, "images"))
        if os.path.isdir(sub) for entry in os.listdir(sub)
        if entry.lower().endswith(".csv") and not entry.startswith("."))


def _load_folder_any(folder, root, units, spacing, ndim):
    if os.path.isfile(os.path.join(folder, DATASET_JSON)):
        return load_folder(folder, units=units, spacing=spacing, image_root=root)
    csvs = landmark_csvs(folder)
    if len(csvs) > 1:
        raise DatasetArgumentError(
            f"{folder}: holds {len(csvs)} CSV files ({', '.join(csvs)}); name the landmark CSV "
            "itself as the dataset (--dataset FOLDER/FILE.csv)")
    if csvs:
        return from_csv(csvs[0], image_root=root or folder, units=units, spacing=spacing, ndim=ndim,
                        name=os.path.basename(os.path.normpath(folder)))
    if root is not None and os.path.abspath(root) != os.path.abspath(folder):
        raise DatasetArgumentError(
            f"{folder}: a folder of images each with a landmark file is read from itself, but "
            f"root {os.fspath(root)!r} (--dataset-root) was given; leave it out")
    return from_landmark_files(folder, units=units, spacing=spacing, ndim=ndim)


__all__ = [
    "BUILTIN_DATASETS",
    "ISBI2015_LANDMARKS",
    "ISBI2015_SPACING_MM",
    "cache_dir",
    "isbi2015",
    "load_dataset",
    "make_phantom",
]
