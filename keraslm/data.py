"""Dataset descriptions: which images, which landmarks (in physical mm), and how to split them.

A `LandmarkDataset` is a list of `Record`s (id, image path, landmarks in physical millimetres of
the LPS frame, NaN where missing) plus the landmark names and the dimension. It does not hold
pixels; images are read when needed with `LandmarkDataset.read_image`. Splits, k-fold
cross-validation folds and reduced training sets are reproducible by seed.

A dataset folder written by keraslm (see `keraslm.datasets.make_phantom`) holds a
`dataset.json` that `load_folder` reads; any other folder with a landmark CSV is described with
`from_csv`.
"""
import dataclasses
import os

import numpy as np

from keraslm.errors import (DatasetArgumentError, DatasetError, KeraslmError, MissingSpacingError,
                             UsageError)
from keraslm.io import (
    holds_geometry,
    is_image_path,
    landmark_file_stem,
    natural_key,
    read_image,
    read_image_header,
    read_landmark_file,
    read_landmarks,
    strip_image_extension,
    with_in_plane_spacing,
)
from keraslm.files import read_json

DATASET_JSON = "dataset.json"
LANDMARK_UNITS = ("index", "mm")
#: Where a dataset's `image_spacing` came from: the caller (`spacing=`, --spacing) or the
#: folder's dataset.json (`plain_image_spacing`).
_DATASET_SPACING_SOURCES = ("caller", DATASET_JSON)


@dataclasses.dataclass(frozen=True, eq=False)
class Record:
    """One image and its landmarks.

    Args:
        id: str. Unique id within the dataset.
        image_path: str. Image file or DICOM series folder.
        points_mm: np.ndarray `(num_landmarks, ndim)`. Physical LPS millimetres; NaN = missing.
    """

    id: str
    image_path: str
    points_mm: np.ndarray


def image_id_from_path(path):
    """str. An image's id: its file or series folder name without the image extension."""
    return strip_image_extension(os.path.basename(os.path.normpath(path)))


@dataclasses.dataclass(frozen=True, eq=False)
class LandmarkDataset:
    """Records, landmark names and dimension of a landmark dataset.

    Args:
        name: str. Dataset name, e.g. "isbi2015".
        records: sequence of Record.
        landmark_names: sequence of str.
        ndim: int. 2 or 3.
        image_spacing: sequence of float or None. Spacing (mm along x, y[, z]) to read images
            whose files hold no geometry (PNG/JPEG); None to use what the files say.
        image_spacing_source: str. Where `image_spacing` came from, as the images read with it
            report it (`Image.spacing_source`): "caller" or "dataset.json".

    Examples:
        >>> dataset = keraslm.datasets.isbi2015("../shared/data/isbi2015-train")  # doctest: +SKIP
        >>> train, test = dataset.fold(0, num_folds=5, seed=0)  # doctest: +SKIP
        >>> image = train.read_image(train.records[0])  # doctest: +SKIP
    """

    name: str
    records: tuple
    landmark_names: tuple
    ndim: int
    image_spacing: tuple = None
    image_spacing_source: str = "caller"

    def __post_init__(self):
        if self.ndim not in (2, 3):
            raise DatasetError(f"`ndim` must be 2 or 3. Received: ndim={self.ndim!r}")
        if self.image_spacing_source not in _DATASET_SPACING_SOURCES:
            raise DatasetError(
                f"`image_spacing_source` must be one of {_DATASET_SPACING_SOURCES}. "
                f"Received: image_spacing_source={self.image_spacing_source!r}")
        records = tuple(self.records)
        names = tuple(self.landmark_names)
        ids = [record.id for record in records]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise DatasetError(f"dataset {self.name!r}: duplicate record ids: {', '.join(duplicates)}")
        for record in records:
            if record.points_mm.shape != (len(names), self.ndim):
                raise DatasetError(
                    f"dataset {self.name!r}: record {record.id!r} has landmarks of shape "
                    f"{record.points_mm.shape}; expected ({len(names)}, {self.ndim})"
                )
        object.__setattr__(self, "records", records)
        object.__setattr__(self, "landmark_names", names)
        if self.image_spacing is not None:
            object.__setattr__(self, "image_spacing", tuple(float(s) for s in self.image_spacing))

    # ------------------------------------------------------------------------------- access

    def __len__(self):
        return len(self.records)

    @property
    def ids(self):
        """tuple of str. Record ids in dataset order."""
        return tuple(record.id for record in self.records)

    @property
    def num_landmarks(self):
        """int. Landmarks per image."""
        return len(self.landmark_names)

    @property
    def points_mm(self):
        """np.ndarray `(num_images, num_landmarks, ndim)`: all landmarks, physical mm."""
        return np.stack([record.points_mm for record in self.records]) if self.records else (
            np.zeros((0, self.num_landmarks, self.ndim))
        )

    def record(self, record_id):
        """Record with id `record_id`."""
        for record in self.records:
            if record.id == record_id:
                return record
        raise DatasetError(f"dataset {self.name!r} has no record {record_id!r}")

    def read_image(self, record):
        """Reads a record's image (with the dataset's `image_spacing` for plain images)."""
        spacing = self._spacing_for(record.image_path)
        return self._with_source(read_image(record.image_path, spacing=spacing), spacing)

    def read_image_header(self, record):
        """Reads a record's image geometry only; see `keraslm.io.read_image_header`."""
        spacing = self._spacing_for(record.image_path)
        return self._with_source(read_image_header(record.image_path, spacing=spacing), spacing)

    def _spacing_for(self, path):
        if self.image_spacing is None:
            return None
        return None if holds_geometry(path) else self.image_spacing

    def _with_source(self, image, spacing):
        if spacing is None and image.spacing_source == "default":
            return self._with_dataset_spacing(image)
        if spacing is None or image.spacing_source == self.image_spacing_source:
            return image
        return dataclasses.replace(image, spacing_source=self.image_spacing_source)

    def _with_dataset_spacing(self, image):
        if self.image_spacing is None:
            return image
        return with_in_plane_spacing(image, self.image_spacing, self.image_spacing_source)

    # ------------------------------------------------------------------------------- splits

    def subset(self, ids, name=None):
        """Dataset of the records with the given ids, in the given order.

        Raises:
            DatasetError: listing every id the dataset does not hold.
        """
        ids = [str(i) for i in ids]
        by_id = {record.id: record for record in self.records}
        unknown = [i for i in ids if i not in by_id]
        if unknown:
            raise DatasetError(
                f"dataset {self.name!r} has no records with ids: {', '.join(unknown)}"
            )
        return dataclasses.replace(
            self, name=name or self.name, records=tuple(by_id[i] for i in ids)
        )

    def shuffled_ids(self, seed):
        """Record ids sorted, then permuted by `seed` (independent of the record order)."""
        ids = sorted(self.ids)
        order = np.random.default_rng(seed).permutation(len(ids))
        return [ids[i] for i in order]

    def split(self, test_fraction=0.2, seed=0):
        """(train, test) datasets; the test part holds `round(test_fraction * len)` records."""
        if not 0.0 < test_fraction < 1.0:
            raise DatasetError(
                f"`test_fraction` must lie in (0, 1). Received: test_fraction={test_fraction!r}"
            )
        ids = self.shuffled_ids(seed)
        num_test = int(round(test_fraction * len(ids)))
        if num_test < 1 or num_test >= len(ids):
            raise DatasetError(
                f"cannot split {len(ids)} records with test_fraction={test_fraction}: "
                "each part needs at least one record"
            )
        return self.subset(sorted(ids[num_test:])), self.subset(sorted(ids[:num_test]))

    def kfold(self, num_folds, seed=0):
        """List of `num_folds` (train, test) pairs; every record is tested exactly once."""
        if not isinstance(num_folds, int) or num_folds < 2:
            raise DatasetError(f"`num_folds` must be an integer >= 2. Received: num_folds={num_folds!r}")
        if num_folds > len(self):
            raise DatasetError(
                f"cannot make {num_folds} folds of {len(self)} records in dataset {self.name!r}"
            )
        parts = np.array_split(np.array(self.shuffled_ids(seed), dtype=object), num_folds)
        folds = []
        for part in parts:
            test_ids = set(part.tolist())
            folds.append(
                (
                    self.subset(sorted(i for i in self.ids if i not in test_ids)),
                    self.subset(sorted(test_ids)),
                )
            )
        return folds

    def fold(self, fold, num_folds, seed=0):
        """(train, test) of fold number `fold` (0-based) of `kfold(num_folds, seed)`."""
        if not isinstance(fold, int) or not 0 <= fold < num_folds:
            raise DatasetError(
                f"`fold` must be an integer in [0, {num_folds - 1}]. Received: fold={fold!r}"
            )
        return self.kfold(num_folds, seed)[fold]

    def reduced(self, num_images, seed=0):
        """A reproducible random subset of `num_images` records (e.g. a 10-image training set)."""
        if not isinstance(num_images, int) or not 1 <= num_images <= len(self):
            raise DatasetError(
                f"`num_images` must be an integer in [1, {len(self)}]. Received: num_images={num_images!r}"
            )
        return self.subset(sorted(self.shuffled_ids(seed)[:num_images]))


def read_id_list(path):
    """Reads a text file with one record id per line (blank lines and `#` comments ignored)."""
    try:
        with open(path, encoding="utf-8") as handle:
            lines = [line.split("#", 1)[0].strip() for line in handle]
    except FileNotFoundError:
        raise DatasetError(f"{path}: no such id list file") from None
    ids = [line for line in lines if line]
    if not ids:
        raise DatasetError(f"{path}: id list is empty")
    return ids


def select_split(dataset, fold=None, num_folds=5, train_ids=None, test_ids=None,
                 test_fraction=0.2, seed=0):
    """(train, test) datasets chosen the way `train.py` and `evaluate.py` choose them: from id
    list files if given, else cross-validation fold `fold` of `num_folds`, else a random split
    holding out `test_fraction`; all by `seed`.

    Args:
        dataset: LandmarkDataset.
        fold: int or None. 0-based fold.
        num_folds: int.
        train_ids, test_ids: str or None. Files with one record id per line (both or neither).
        test_fraction: float. 0 trains on every record and holds none out.
        seed: int.
    """
    if train_ids or test_ids:
        if not (train_ids and test_ids):
            raise DatasetError("give both --train-ids and --test-ids, or neither")
        if fold is not None:
            raise UsageError(f"--fold {fold} and --train-ids/--test-ids both choose the split; "
                             "give one of them")
        parts = []
        for path in (train_ids, test_ids):
            try:
                parts.append(dataset.subset(read_id_list(path)))
            except DatasetError as error:
                if str(error).startswith(f"{path}:"):
                    raise
                raise DatasetError(f"{path}: {error}") from None
        shared = sorted(set(parts[0].ids) & set(parts[1].ids), key=natural_key)
        if shared:
            raise DatasetError(
                f"{train_ids} and {test_ids} share {len(shared)} id(s) "
                f"({', '.join(shared[:5])}{', ...' if len(shared) > 5 else ''}): a held-out "
                "image would also be trained on")
        return tuple(parts)
    if fold is not None:
        return dataset.fold(fold, num_folds, seed=seed)
    if test_fraction == 0:
        return dataset, dataset.subset([])
    return dataset.split(test_fraction, seed=seed)


def _image_index(image_root):
    """Maps image ids (file names without extension, series folder names) to paths in
    `image_root` and `image_root/images`; `image_root` wins."""
    index = {}
    for folder in (image_root, os.path.join(image_root, "images")):
        if not os.path.isdir(folder):
            continue
        found = {}
        for name in sorted(os.listdir(folder)):
            path = os.path.join(folder, name)
            if not name.startswith(".") and name != "images" and is_image_path(path):
                found.setdefault(image_id_from_path(name), []).append(path)
        for image_id, paths in found.items():
            index.setdefault(image_id, paths[0] if len(paths) == 1 else tuple(paths))
    return index


def _unambiguous(image_id, found, source):
    """`found` (a path, or a tuple of the paths of images sharing one id in one folder, e.g.
    x.png and x.jpg): the path, else a DatasetError naming them all."""
    if isinstance(found, tuple):
        raise DatasetError(f"{source}: image id {image_id!r} names {len(found)} images "
                           f"({', '.join(found)}); give the file name with its extension, or "
                           "keep one")
    return found


def _resolve_images(image_root, keys, source=None):
    """Image path for each landmark-file id: a path relative to `image_root`, or an id found by
    `_image_index`. None where absent; an id naming two images of one folder is an error."""
    index = None
    paths = []
    for key in keys:
        candidate = os.path.join(image_root, key)
        if os.path.exists(candidate) and is_image_path(candidate):
            paths.append(candidate)
            continue
        if index is None:
            index = _image_index(image_root)
        paths.append(_unambiguous(key, index.get(key), source or image_root))
    return paths


def _check_units(units, source):
    if units is None:
        raise DatasetArgumentError(
            f"{source}: say whether its coordinates are pixel indices or millimetres: "
            "units='index' or 'mm' (--units index|mm)")
    if units not in LANDMARK_UNITS:
        raise DatasetError(f"`units` must be one of {LANDMARK_UNITS}. Received: units={units!r}")


def _image_spacing(spacing, ndim, source):
    """`spacing` (one value for all axes, or one per axis) as a tuple of `ndim` positive finite
    floats, or None. `source` names the dataset in messages."""
    if spacing is None:
        return None
    try:
        values = np.atleast_1d(np.asarray(spacing, dtype=np.float64))
    except (TypeError, ValueError):
        values = None
    if values is None or values.ndim != 1 or not np.all(np.isfinite(values)) or not np.all(values > 0):
        raise DatasetArgumentError(
            f"{source}: the pixel spacing must be positive finite mm. Received: spacing={spacing!r}")
    if len(values) not in (1, ndim):
        raise DatasetArgumentError(
            f"{source}: spacing {values.tolist()} has {len(values)} values for a {ndim}D "
            f"dataset; give one value for all axes or {ndim} (x, y{', z' if ndim == 3 else ''}): "
            "--spacing MM (spacing= in Python)")
    return tuple(float(v) for v in np.broadcast_to(values, (ndim,)))


def _require_spacing(image_paths, spacing, source):
    """Raises unless `spacing` is given or every image file holds its own pixel spacing: plain
    images (PNG/JPEG) would otherwise be read at an unknown 1 mm per pixel (DICOM files that
    store none: `_check_stored_spacing`, once their headers are read)."""
    plain = [path for path in image_paths if not holds_geometry(path)]
    if spacing is not None:
        return
    if plain:
        examples = ", ".join(plain[:3]) + (" ..." if len(plain) > 3 else "")
        raise MissingSpacingError(
            f"{source}: {len(plain)} of {len(image_paths)} images hold no pixel spacing (plain "
            f"images such as PNG/JPEG: {examples}); say how many mm a pixel is: --spacing MM or "
            "X,Y (spacing= in Python, plain_image_spacing in a dataset.json)")


#: A Slicer point further than this (mm) from its 2D image's plane is refused: it was placed
#: on another image, or the image is not the one the markups were made on.
PLANE_TOLERANCE_MM = 2.0


def _markups_in_image_plane(points_lps, names, header, image_path, markups_path):
    """Slicer markups' 3D LPS points `(n, 3)` in a 2D image's physical space: its x, y where
    the image lies in an axial plane (or stores no placement), else projected onto its plane
    (a coronal radiograph's landmarks are LPS x, z); a point off the plane is an error."""
    from keraslm.io import image_plane_lps
    from keraslm.io.plane import is_axial, lps_to_image_2d

    points_lps = np.asarray(points_lps, np.float64)
    plane = image_plane_lps(image_path)
    if plane is None or is_axial(plane):
        return points_lps[:, :2]
    points, distance = lps_to_image_2d(points_lps, plane, header)
    far = np.flatnonzero(np.nan_to_num(distance) > PLANE_TOLERANCE_MM)
    if far.size:
        raise DatasetError(
            f"{markups_path}: {len(far)} point(s) lie off the plane of the 2D image "
            f"{image_path} (" + ", ".join(f"{names[i]} {distance[i]:.1f} mm" for i in far[:3])
            + f"; at most {PLANE_TOLERANCE_MM:g} mm): were they placed on this image?")
    return points


def _check_stored_spacing(headers, spacing, source):
    """After the headers of a dataset's images are read: DICOM files that store no pixel
    spacing (read at a default 1 mm) need `spacing`; a `spacing` given where every image stores
    its own (DICOM, NIfTI) would be ignored: both are errors naming the files.

    Args:
        headers: dict path -> Image header (as read, without the dataset's spacing).
        spacing: the given spacing or None.
        source: str. The dataset's file or folder, for messages.
    """
    unset = [path for path, header in headers.items() if header.spacing_source == "default"]
    plain = [path for path in headers if not holds_geometry(path)]
    if unset and spacing is None:
        examples = ", ".join(unset[:3]) + (" ..." if len(unset) > 3 else "")
        raise MissingSpacingError(
            f"{source}: {len(unset)} of {len(headers)} images store no pixel spacing (e.g. DICOM "
            f"without PixelSpacing / ImagerPixelSpacing: {examples}); say how many mm a pixel "
            "is: --spacing MM or X,Y (spacing= in Python, plain_image_spacing in a dataset.json)")
    if spacing is not None and headers and not unset and not plain:
        examples = ", ".join(list(headers)[:2]) + (" ..." if len(headers) > 2 else "")
        raise DatasetArgumentError(
            f"{source}: a pixel spacing was given (--spacing, spacing=) but every image stores "
            f"its own ({examples}; DICOM / NIfTI), which is used: leave it out")


def from_csv(csv_path, image_root=None, units="index", spacing=None, ndim=None, name=None):
    """Describes a dataset by a landmark CSV and the folder holding its images.

    Args:
        csv_path: str. Landmark CSV (`keraslm.io.read_landmarks` layouts). Its first column is
            an image path relative to `image_root` or an image id (file name without extension).
        image_root: str, optional. Folder the ids refer to; defaults to the CSV's folder.
        units: str. "index" (pixel coordinates, converted through each image's geometry) or
            "mm" (physical LPS millimetres).
        spacing: float or sequence, optional. Spacing for images whose files hold none
            (PNG/JPEG), e.g. 0.1 for ISBI 2015; required when there are such images.
        ndim: int, optional. Required for headerless CSVs.
        name: str, optional. Dataset name; defaults to the image folder's name.

    Raises:
        DatasetError: units unknown, images missing on disk (all of them listed), plain images
            without `spacing`, or a `spacing` with another number of values than the landmarks'
            dimension.
    """
    csv_path = os.fspath(csv_path)
    _check_units(units, csv_path)
    image_root = os.fspath(image_root) if image_root is not None else os.path.dirname(os.path.abspath(csv_path))
    table = read_landmarks(csv_path, ndim=ndim)
    resolved = list(zip(table.ids, _resolve_images(image_root, table.ids, csv_path)))
    missing = [key for key, path in resolved if path is None]
    if missing:
        raise DatasetError(
            f"{csv_path}: {len(missing)} of {len(resolved)} landmark rows have no image under "
            f"{image_root}: {', '.join(missing)}"
        )
    spacing = _image_spacing(spacing, table.ndim, csv_path)
    _require_spacing([path for _, path in resolved], spacing, csv_path)
    dataset = LandmarkDataset(
        name=name or os.path.basename(os.path.normpath(image_root)),
        records=(),
        landmark_names=table.names,
        ndim=table.ndim,
        image_spacing=spacing,
    )
    same_image = {}
    for key, path in resolved:  # Rows `x` and `x.png`: two rows of one image.
        same_image.setdefault(image_id_from_path(key), []).append(key)
    twice = [keys for keys in same_image.values() if len(keys) > 1]
    if twice:
        raise DatasetError(f"{csv_path}: rows name the same image more than once: "
                           + "; ".join(", ".join(keys) for keys in twice[:5]))
    records, unreadable, headers = [], [], {}
    for (key, path), points in zip(resolved, table.points):
        # The file's geometry (its dimension, and its spacing for index units and the spacing
        # checks); a plain image's spacing is the dataset's, set below.
        try:
            header = read_image_header(path)
        except KeraslmError as error:
            unreadable.append(f"row {key!r}: {error}")
            continue
        headers[path] = header
        if header.ndim != table.ndim:
            unreadable.append(f"row {key!r} has {table.ndim}D landmarks but its image {path} "
                              f"is {header.ndim}D")
            continue
        if units == "index":
            spacing_for = dataset._spacing_for(path)
            header = dataset._with_source(
                header if spacing_for is None else dataclasses.replace(header, spacing=spacing_for),
                spacing_for)
            points = header.index_to_physical(points)
        records.append(Record(image_id_from_path(key), path, points))
    if unreadable:
        raise DatasetError(f"{csv_path}: {len(unreadable)} images cannot be read or do not fit: "
                           + "; ".join(unreadable))
    _check_stored_spacing(headers, spacing, csv_path)
    return dataclasses.replace(dataset, records=tuple(records))


def from_landmark_files(folder, units=None, spacing=None, ndim=None, name=None):
    """Describes a folder of images, each with its landmark file beside it (same name, other
    extension): 3D Slicer markups `.mrk.json` / `.fcsv` (physical mm; RAS turned to LPS;
    labels are the landmark names; undefined points are missing) or point lists `.txt`
    (`x,y[,z]` per line, landmarks named 1, 2, ...; `units` says index or mm).

    Landmark names are the union over all files, in order of first appearance (numeric order
    when all are numbers); a landmark absent from a file is missing (NaN) for that image.
    Images are looked for in `folder` and `folder/images`, landmark files in both too.

    Raises:
        DatasetError: naming every image without a landmark file, every landmark file without
            an image, images with two landmark files, unreadable files, mixed dimensions;
            plain images (PNG/JPEG) without `spacing`.
    """
    folder = os.fspath(folder)
    images, landmark_files = {}, {}
    for sub in (folder, os.path.join(folder, "images")):
        if not os.path.isdir(sub):
            continue
        for entry in sorted(os.listdir(sub)):
            path = os.path.join(sub, entry)
            stem = landmark_file_stem(entry)
            if entry.startswith("."):
                continue
            if stem is not None and os.path.isfile(path):
                landmark_files.setdefault(stem, []).append(path)
            elif entry != "images" and is_image_path(path):
                image_id = image_id_from_path(entry)
                if image_id in images and os.path.dirname(images[image_id]) == sub:
                    raise DatasetError(
                        f"{folder}: two images share the name {image_id!r} ({images[image_id]}, "
                        f"{path}), so its landmark file fits either; keep one")
                images.setdefault(image_id, path)
    problems = []
    twice = sorted((k for k, v in landmark_files.items() if len(v) > 1), key=natural_key)
    if twice:
        problems.append("images with more than one landmark file: " + "; ".join(
            ", ".join(landmark_files[k]) for k in twice))
    orphans = sorted(set(landmark_files) - set(images), key=natural_key)
    if orphans:
        problems.append(f"{len(orphans)} landmark files without an image: "
                        + ", ".join(landmark_files[k][0] for k in orphans))
    unlabelled = sorted(set(images) - set(landmark_files), key=natural_key)
    if unlabelled:
        problems.append(f"{len(unlabelled)} images without a landmark file: "
                        + ", ".join(images[k] for k in unlabelled))
    if problems:
        raise DatasetError(f"{folder}: " + "; ".join(problems))
    if not images:
        raise DatasetError(f"{folder}: no images with landmark files found")
    ids = sorted(images, key=natural_key)
    contents, units_used = {}, False
    for image_id in ids:
        path = landmark_files[image_id][0]
        file_names, file_points, file_units = read_landmark_file(path)
        if file_units is None:
            _check_units(units, path)
            units_used = True
        contents[image_id] = (path, file_names, file_points, file_units or units,
                              file_units is None)
    if units == "index" and not units_used:  # "mm" agrees with the markups (dataset.json says so).
        raise DatasetArgumentError(
            f"{folder}: units 'index' were given (--units, units=) but every landmark file "
            "is a 3D Slicer markups file, in mm, which is used: leave --units out")
    names = []
    for _, file_names, _, _, _ in contents.values():
        names += [n for n in file_names if n not in names]
    if all(n.isdigit() for n in names):
        names.sort(key=natural_key)
    _require_spacing([images[i] for i in ids], spacing, folder)
    plain = any(not holds_geometry(images[i]) for i in ids)
    plain_spacing = _image_spacing(spacing, 2, folder) if plain else None  # Plain images are 2D.
    records, dims, unreadable, headers = [], {}, [], {}
    for image_id in ids:
        path, file_names, file_points, file_units, point_list = contents[image_id]
        plain = not holds_geometry(images[image_id])
        try:
            header = read_image_header(images[image_id], spacing=plain_spacing if plain else None)
        except KeraslmError as error:  # Every unreadable image named, not only the first.
            unreadable.append(str(error))
            continue
        headers[images[image_id]] = header
        if header.spacing_source == "default" and spacing is not None:
            header = with_in_plane_spacing(header, spacing)  # A DICOM without spacing.
        dims.setdefault(header.ndim, []).append(images[image_id])
        if file_points.shape[1] < header.ndim:
            raise DatasetError(f"{path}: {file_points.shape[1]}D points for the {header.ndim}D "
                               f"image {images[image_id]}")
        if point_list and file_points.shape[1] > header.ndim:
            raise DatasetError(f"{path}: {file_points.shape[1]} values per point for the "
                               f"{header.ndim}D image {images[image_id]}; a point list holds "
                               f"x,y{',z' if header.ndim == 3 else ''} per line (no point "
                               "numbers or labels)")
        if header.ndim == 2 and not point_list:  # Slicer's 3D LPS points on a 2D image.
            file_points = _markups_in_image_plane(file_points, file_names, header,
                                                  images[image_id], path)
        points = np.full((len(names), header.ndim), np.nan)
        for label, point in zip(file_names, file_points):
            points[names.index(label)] = point[: header.ndim]
        if file_units == "index":
            points = header.index_to_physical(points)
        records.append(Record(image_id, images[image_id], points))
    if unreadable:
        raise DatasetError(f"{folder}: {len(unreadable)} images cannot be read: "
                           + "; ".join(unreadable))
    _check_stored_spacing(headers, spacing, folder)
    if len(dims) > 1:
        raise DatasetError(f"{folder}: mixes " + " and ".join(
            f"{d}D images ({', '.join(paths[:3])}{' ...' if len(paths) > 3 else ''})"
            for d, paths in sorted(dims.items())))
    data_ndim = next(iter(dims))
    if ndim is not None and ndim != data_ndim:
        raise DatasetError(f"{folder}: its images are {data_ndim}D, not {ndim}D")
    spacing = _image_spacing(spacing, data_ndim, folder)
    return LandmarkDataset(name or os.path.basename(os.path.normpath(folder)), tuple(records),
                           tuple(names), data_ndim, image_spacing=spacing)


def load_folder(root, units=None, spacing=None, image_root=None):
    """Loads a dataset folder described by its `dataset.json` (as written by
    `keraslm.datasets.make_phantom`).

    `dataset.json` keys: `name`, `ndim`, `landmarks_csv` (relative to root) or `landmark_files`
    (the extension of the landmark file beside each image, `from_landmark_files`),
    `landmark_units` ("index" or "mm"), `plain_image_spacing` (list or null), optional
    `landmark_names`. `keraslm-dataset init FOLDER` writes one.

    Args:
        root: str. The folder.
        units, spacing, image_root: optional. What the caller says (--units, --spacing,
            --root): each must agree with dataset.json (the image root with the folder itself);
            `spacing` is used when dataset.json's `plain_image_spacing` is null.

    Raises:
        DatasetError: dataset.json missing or incomplete, or contradicted by an argument (the
            message names dataset.json and both values).
    """
    root = os.fspath(root)
    description_path = os.path.join(root, DATASET_JSON)
    description = read_json(
        description_path,
        f"{root}: no {DATASET_JSON}; describe the folder with keraslm.data.from_csv "
        "(landmark CSV, units, spacing) instead",
        DatasetError,
    )
    required = ("name", "ndim", "landmark_units")
    absent = [key for key in required if key not in description]
    if "landmarks_csv" not in description and "landmark_files" not in description:
        absent.append("landmarks_csv (or landmark_files)")
    if absent:
        raise DatasetError(f"{description_path}: missing keys: {', '.join(absent)}")
    units_json = description["landmark_units"]
    if units is not None and units != units_json:
        raise DatasetArgumentError(
            f"{description_path} says landmark_units {units_json!r}, but units {units!r} "
            "(--units) was given; leave --units out or edit dataset.json")
    if image_root is not None and os.path.abspath(image_root) != os.path.abspath(root):
        raise DatasetArgumentError(
            f"{description_path}: its images are found in its folder {root}, but root "
            f"{os.fspath(image_root)!r} (--root) was given; leave --root out")
    spacing_json = description.get("plain_image_spacing")
    source = "caller"
    if spacing_json is not None:
        ndim = description["ndim"]
        spacing_json = _image_spacing(spacing_json, ndim, description_path)
        given = _image_spacing(spacing, ndim, description_path)
        if given is not None and not np.allclose(given, spacing_json, rtol=1e-9, atol=0):
            raise DatasetArgumentError(
                f"{description_path} says plain_image_spacing {list(spacing_json)} mm, but "
                f"spacing {np.atleast_1d(spacing).tolist()} mm (--spacing) was given; leave "
                "--spacing out or edit dataset.json")
        spacing, source = spacing_json, DATASET_JSON
    if "landmarks_csv" in description:
        dataset = from_csv(
            os.path.join(root, description["landmarks_csv"]),
            image_root=root,
            units=units_json,
            spacing=spacing,
            ndim=description["ndim"],
            name=description["name"],
        )
    else:
        dataset = from_landmark_files(
            root, units=units_json, spacing=spacing, ndim=description["ndim"],
            name=description["name"])
    dataset = dataclasses.replace(dataset, image_spacing_source=source)
    names = description.get("landmark_names")
    if names is not None and tuple(names) != dataset.landmark_names:
        raise DatasetError(
            f"{description_path}: landmark_names differ from those of "
            f"{description.get('landmarks_csv') or 'the landmark files'}: "
            f"{list(dataset.landmark_names)}"
        )
    return dataset
