"""Phantom datasets on disk: the generator options and their version, the geometry of each
file kind, and the writing of a dataset folder.

`generator_config` validates the options of `make_phantom` and returns the `generator` section
of dataset.json, stamped with the phantom version (raised whenever the generated data change,
so cached folders are not reused); `existing_generator` reads that section back, so a folder
generated with the same options can be reused as it is. `write_dataset` renders every image
(`render_phantom`; image `i` from `np.random.default_rng([seed, i])`) and writes it (2D: PNG
at even indices, DICOM with a centred origin at odd ones; 3D: NIfTI and DICOM series with the
same oblique geometry), then landmarks.csv (physical mm) and dataset.json.
"""
import json
import math
import os

import numpy as np

from keraslm.datasets.phantom.anatomy import LANDMARKS, rotation_matrix
from keraslm.datasets.phantom.render import check_float, render_phantom
from keraslm.errors import DatasetError
from keraslm.io import (
    Image,
    LandmarkTable,
    write_dicom,
    write_dicom_series,
    write_landmarks,
    write_nifti,
    write_png,
)

#: Default size `(x, y[, z])` in pixels/voxels and the spacing (mm) at that size; other sizes
#: keep the field of view (spacing scales inversely with the size).
DEFAULT_IMAGE_SIZE = {2: (256, 256), 3: (64, 96, 32)}
DEFAULT_SPACING = {2: (0.9, 1.0), 3: (2.5, 2.2, 3.0)}
DEFAULT_NUM_IMAGES = {2: 100, 3: 40}

# Increase when the generated data changes, so cached folders are not reused.
_PHANTOM_VERSION = 1


def file_geometry(ndim, image_size, spacing, kind):
    """Geometry of one file kind: "png" (origin 0, identity: what a PNG reads back as),
    "dicom2d" (centred origin), "volume" (non-identity orientation, shared by NIfTI and the
    DICOM series)."""
    shape = tuple(reversed(image_size))
    placeholder = np.broadcast_to(np.zeros((), np.uint16), shape)
    extent = np.asarray(spacing) * (np.asarray(image_size) - 1)
    if kind == "png":
        return Image(placeholder, spacing=spacing)
    if kind == "dicom2d":
        return Image(placeholder, spacing=spacing, origin=-extent / 2.0)
    # A rotation by 20 degrees about a tilted axis; the third column is the cross product of the
    # first two, as DICOM readers compute it.
    direction = rotation_matrix([0.3, -0.2, 1.0], math.radians(20.0))
    direction[:, 2] = np.cross(direction[:, 0], direction[:, 1])
    centre_mm = np.array([12.5, -30.0, 45.0])
    origin = centre_mm - direction @ (extent / 2.0)
    return Image(placeholder, spacing=spacing, origin=origin, direction=direction)


def _check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise DatasetError(f"`{name}` must be an integer >= {minimum}. Received: {name}={value!r}")
    return int(value)


def generator_config(ndim, num_images, seed, image_size, spacing, noise, max_rotation_deg):
    """Validates the arguments; returns the JSON-ready `generator` section of dataset.json."""
    if isinstance(ndim, bool) or ndim not in (2, 3):
        raise DatasetError(f"`ndim` must be 2 or 3. Received: ndim={ndim!r}")
    if num_images is None:
        num_images = DEFAULT_NUM_IMAGES[ndim]
    num_images = _check_int("num_images", num_images, 1)
    seed = _check_int("seed", seed, 0)
    if image_size is None:
        image_size = DEFAULT_IMAGE_SIZE[ndim]
    sizes = [image_size] * ndim if isinstance(image_size, (int, np.integer)) else image_size
    try:
        sizes = [_check_int("image_size", size, 16) for size in sizes]
    except (DatasetError, TypeError):
        sizes = None
    if sizes is None or len(sizes) != ndim:
        raise DatasetError(
            f"`image_size` must be an integer >= 16 or {ndim} of them "
            f"(x, y{', z' if ndim == 3 else ''}). Received: image_size={image_size!r}"
        )
    if spacing is None:
        reference = np.asarray(DEFAULT_IMAGE_SIZE[ndim], dtype=np.float64)
        spacing = np.asarray(DEFAULT_SPACING[ndim]) * reference / np.asarray(sizes)
        spacing = [round(float(s), 6) for s in spacing]
    else:
        values = [spacing] * ndim if np.ndim(spacing) == 0 else spacing
        try:
            values = [check_float("spacing", value, 1e-6, 1e6) for value in values]
        except (DatasetError, TypeError):
            values = None
        if values is None or len(values) != ndim:
            raise DatasetError(
                f"`spacing` must be a positive number or {ndim} of them (mm along x, y"
                f"{', z' if ndim == 3 else ''}). Received: spacing={spacing!r}"
            )
        spacing = values
    return {
        "version": _PHANTOM_VERSION,
        "ndim": ndim,
        "num_images": num_images,
        "seed": seed,
        "image_size": sizes,
        "spacing": spacing,
        "noise": check_float("noise", noise, 0.0, 1.0),
        "max_rotation_deg": check_float("max_rotation_deg", max_rotation_deg, 0.0, 30.0),
    }


def write_dataset(folder, config):
    """Writes images, landmarks.csv and dataset.json of `config` into `folder`."""
    ndim, num_images = config["ndim"], config["num_images"]
    name = f"phantom{ndim}d"
    digits = max(3, len(str(num_images - 1)))
    kinds = ("png", "dicom2d") if ndim == 2 else ("volume", "volume")
    geometries = [
        file_geometry(ndim, config["image_size"], config["spacing"], kind) for kind in kinds
    ]
    os.makedirs(os.path.join(folder, "images"))
    ids, points = [], []
    for index in range(num_images):
        rng = np.random.default_rng([config["seed"], index])
        image, points_mm = render_phantom(
            rng, geometries[index % 2], config["noise"], config["max_rotation_deg"]
        )
        stem = f"images/{name}_{index:0{digits}d}"
        if ndim == 2 and index % 2 == 0:
            image_id = stem + ".png"
            write_png(os.path.join(folder, image_id), image)
        elif ndim == 2:
            image_id = stem + ".dcm"
            write_dicom(os.path.join(folder, image_id), image, modality="DX")
        elif index % 2 == 0:
            image_id = stem + ".nii.gz"
            write_nifti(os.path.join(folder, image_id), image)
        else:
            image_id = stem
            write_dicom_series(os.path.join(folder, image_id), image, modality="MR")
        ids.append(image_id)
        points.append(points_mm)
    write_landmarks(
        os.path.join(folder, "landmarks.csv"),
        LandmarkTable(ids, LANDMARKS[ndim], np.stack(points)),
        layout="named",
        id_header="image",
    )
    description = {
        "name": name,
        "ndim": ndim,
        "landmarks_csv": "landmarks.csv",
        "landmark_units": "mm",
        "plain_image_spacing": config["spacing"] if ndim == 2 else None,
        "landmark_names": list(LANDMARKS[ndim]),
        "generator": config,
    }
    with open(os.path.join(folder, "dataset.json"), "w", encoding="utf-8") as handle:
        json.dump(description, handle, indent=2)
        handle.write("\n")


def existing_generator(root):
    """The `generator` section of root/dataset.json, or None."""
    try:
        with open(os.path.join(root, "dataset.json"), encoding="utf-8") as handle:
            return json.load(handle).get("generator")
    except (OSError, ValueError, AttributeError):
        return None


__all__ = [
    "DEFAULT_IMAGE_SIZE",
    "DEFAULT_NUM_IMAGES",
    "DEFAULT_SPACING",
    "existing_generator",
    "file_geometry",
    "generator_config",
    "write_dataset",
]
