"""Landmark CSV files.

Three layouts are read (the first two also written):

- named (with a header): `id,<name>_x,<name>_y[,<name>_z],...`; the first column's header may be
  any word (ISBI 2015 uses `image`). The dimension follows from the header.
- headerless, as in the authors' setup files: `id,x0,y0[,z0],x1,y1[,z1],...`; the caller states
  `ndim`, since 6 numbers could be three 2D or two 3D points.
- long (with a header): `<id>,landmark,x,y[,z]`, one row per image and landmark (the second
  column may also be called `name` or `label`); landmarks in order of first appearance, or in
  numeric order when all names are numbers. Absent rows are missing landmarks.

An empty cell or `nan` is a missing landmark: NaN in arrays, never dropped. Coordinates are
stored as they are; whether they are pixel indices or millimetres is stated by the caller or
the dataset and converted through an `Image` (`keraslm.data`), never guessed here.
"""
import csv
import dataclasses
import math
import os

import numpy as np

from keraslm.errors import LandmarkFileError
from keraslm.files import atomic_path

_AXES = ("x", "y", "z")


@dataclasses.dataclass(frozen=True, eq=False)
class LandmarkTable:
    """Landmarks of several images.

    Args:
        ids: sequence of str. One id per image (unique).
        names: sequence of str. One name per landmark (unique).
        points: array `(num_images, num_landmarks, ndim)`. Coordinates `(x, y[, z])`, NaN where
            a landmark is missing. Units are the caller's (index or mm).
    """

    ids: tuple
    names: tuple
    points: np.ndarray

    def __post_init__(self):
        ids, names = tuple(str(i) for i in self.ids), tuple(str(n) for n in self.names)
        points = np.asarray(self.points, dtype=np.float64)
        if points.ndim != 3 or points.shape[2] not in (2, 3):
            raise LandmarkFileError(
                f"`points` must have shape (num_images, num_landmarks, 2 or 3). "
                f"Received shape {points.shape}"
            )
        if points.shape[:2] != (len(ids), len(names)):
            raise LandmarkFileError(
                f"`points` shape {points.shape} does not match {len(ids)} ids and {len(names)} names"
            )
        for label, values in (("ids", ids), ("names", names)):
            duplicates = sorted({v for v in values if values.count(v) > 1})
            if duplicates:
                raise LandmarkFileError(f"duplicate {label}: {', '.join(duplicates)}")
        if np.any(np.isinf(points)):
            raise LandmarkFileError("landmark coordinates must be finite or NaN (missing)")
        object.__setattr__(self, "ids", ids)
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "points", points)

    @property
    def ndim(self):
        """int. 2 or 3."""
        return self.points.shape[2]

    def __len__(self):
        return len(self.ids)

    def points_of(self, image_id):
        """np.ndarray `(num_landmarks, ndim)` of one image id."""
        try:
            return self.points[self.ids.index(str(image_id))]
        except ValueError:
            raise KeyError(f"no landmarks for id {image_id!r}") from None


def _is_number(cell):
    if cell.strip() == "":
        return True
    try:
        float(cell)
        return True
    except ValueError:
        return False


def _parse_value(cell, path, line, column):
    cell = cell.strip()
    if cell == "" or cell.lower() == "nan":
        return math.nan
    try:
        value = float(cell)
    except ValueError:
        raise LandmarkFileError(
            f"{path}, line {line}, column {column}: not a number: {cell!r}"
        ) from None
    if math.isinf(value):
        raise LandmarkFileError(f"{path}, line {line}, column {column}: infinite value {cell!r}")
    return value


def _names_from_header(header, path):
    """Landmark names and ndim from `<name>_x,<name>_y[,<name>_z]` columns."""
    columns = [cell.strip() for cell in header[1:]]
    if not columns:
        raise LandmarkFileError(f"{path}: header has no landmark columns")
    ndim = 3 if any(c.endswith("_z") for c in columns) else 2
    if len(columns) % ndim:
        raise LandmarkFileError(
            f"{path}: header has {len(columns)} coordinate columns, not a multiple of {ndim} "
            f"for {ndim}D landmarks"
        )
    names = []
    for start in range(0, len(columns), ndim):
        group = columns[start : start + ndim]
        name = group[0][:-2]
        expected = [f"{name}_{axis}" for axis in _AXES[:ndim]]
        if group != expected:
            raise LandmarkFileError(
                f"{path}: header columns {start + 2}-{start + ndim + 1} are {group}; expected "
                f"{expected} (layout id,<name>_x,<name>_y[,<name>_z],...)"
            )
        if name in names:
            raise LandmarkFileError(f"{path}: header names landmark {name!r} twice (columns "
                                    f"{start + 2}-{start + ndim + 1} again); each landmark once")
        names.append(name)
    return names, ndim


_LONG_NAME_COLUMNS = ("landmark", "name", "label")


def _is_long_header(header):
    cells = [cell.strip().lower() for cell in header]
    return (len(cells) in (4, 5) and cells[1] in _LONG_NAME_COLUMNS
            and cells[2:] == list(_AXES[: len(cells) - 2]))


def _read_long(path, header, rows, ndim):
    """The long layout `<id>,landmark,x,y[,z]`."""
    from keraslm.io.markups import natural_key

    header_ndim = len(header) - 2
    if ndim is not None and ndim != header_ndim:
        raise LandmarkFileError(
            f"{path}: header describes {header_ndim}D landmarks, but ndim={ndim} was requested")
    ids, names, values = [], [], {}
    for number, row in rows:
        if len(row) != len(header):
            raise LandmarkFileError(
                f"{path}, line {number}: {len(row)} columns; expected {len(header)} "
                f"({','.join(header)})")
        image_id, name = row[0].strip(), row[1].strip()
        if not image_id or not name:
            raise LandmarkFileError(f"{path}, line {number}: empty image id or landmark name")
        if (image_id, name) in values:
            raise LandmarkFileError(
                f"{path}, line {number}: landmark {name!r} of {image_id!r} given twice")
        values[image_id, name] = [_parse_value(cell, path, number, column)
                                  for column, cell in enumerate(row[2:], 3)]
        if image_id not in ids:
            ids.append(image_id)
        if name not in names:
            names.append(name)
    if not ids:
        raise LandmarkFileError(f"{path}: header only, no landmark rows")
    if all(name.isdigit() for name in names):
        names.sort(key=natural_key)
    points = np.full((len(ids), len(names), header_ndim), np.nan)
    for (image_id, name), point in values.items():
        points[ids.index(image_id), names.index(name)] = point
    return LandmarkTable(ids, names, points)


def read_landmarks(path, ndim=None):
    """Reads a landmark CSV (named, headerless or long layout, see the module docstring).

    Args:
        path: str. The CSV file.
        ndim: int, optional. 2 or 3. Required for headerless files; checked against the header
            of named files.

    Returns:
        LandmarkTable, with NaN for missing landmarks.

    Raises:
        LandmarkFileError: missing file, wrong column count, non-numeric value, duplicate ids,
            inconsistent landmark count; the message names the file and line.
    """
    path = os.fspath(path)
    if ndim is not None and ndim not in (2, 3):
        raise LandmarkFileError(f"`ndim` must be 2 or 3. Received: ndim={ndim!r}")
    if os.path.isdir(path):
        raise LandmarkFileError(f"{path}: a folder, not a landmark CSV file")
    if path.lower().endswith((".json", ".fcsv", ".txt")):
        raise LandmarkFileError(
            f"{path}: a {os.path.splitext(path)[1]} file, not a landmark CSV; this reads CSV "
            "tables of many images (e.g. predictions.csv); Slicer markups and point lists are "
            "one image's landmarks (a dataset folder of images with such files reads them)")
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = [(number, row) for number, row in enumerate(csv.reader(handle), start=1)]
    except FileNotFoundError:
        raise LandmarkFileError(f"{path}: no such file") from None
    except (UnicodeDecodeError, csv.Error) as error:
        raise LandmarkFileError(f"{path}: not a readable CSV file ({error})") from None
    rows = [(number, row) for number, row in rows if any(cell.strip() for cell in row)]
    if not rows:
        raise LandmarkFileError(f"{path}: file holds no landmarks")
    first = rows[0][1]
    if first[0].strip().lower().startswith("sep=") and not any(c.strip() for c in first[1:]):
        raise LandmarkFileError(f"{path}: line {rows[0][0]} {first[0]!r} is Excel's separator "
                                "hint; remove it (keraslm reads comma-separated CSV)")
    if len(first) == 1:
        for separator, name in ((";", "semicolons"), ("\t", "tabs")):
            if separator in first[0]:
                raise LandmarkFileError(
                    f"{path}: its values are separated by {name}; keraslm reads comma-separated "
                    "CSV (save it as CSV with commas, e.g. Excel's 'CSV UTF-8')")
    if _is_long_header(first):
        return _read_long(path, first, rows[1:], ndim)
    if not all(_is_number(cell) for cell in first[1:]):
        names, header_ndim = _names_from_header(first, path)
        if ndim is not None and ndim != header_ndim:
            raise LandmarkFileError(
                f"{path}: header describes {header_ndim}D landmarks, but ndim={ndim} was requested"
            )
        ndim, rows = header_ndim, rows[1:]
    else:
        if ndim is None:
            raise LandmarkFileError(
                f"{path}: headerless landmark file (id,x0,y0,...); say how many coordinates "
                "each landmark has: --ndim 2 or 3 (in Python, pass ndim=2 or ndim=3)"
            )
        values = len(first) - 1
        if values == 0 or values % ndim:
            raise LandmarkFileError(
                f"{path}, line {rows[0][0]}: {values} coordinate columns is not a multiple of "
                f"ndim={ndim}"
            )
        names = [f"landmark{i}" for i in range(values // ndim)]
    width = 1 + len(names) * ndim
    ids, points = [], []
    for number, row in rows:
        if len(row) != width:
            raise LandmarkFileError(
                f"{path}, line {number}: {len(row)} columns; expected {width} (id and "
                f"{len(names)} landmarks x {ndim} coordinates)"
            )
        ids.append(row[0].strip())
        values = [_parse_value(cell, path, number, column)
                  for column, cell in enumerate(row[1:], 2)]
        for k, name in enumerate(names):  # Missing is all of a landmark's cells, not some.
            given = [np.isfinite(v) for v in values[k * ndim:(k + 1) * ndim]]
            if any(given) and not all(given):
                raise LandmarkFileError(
                    f"{path}, line {number}: landmark {name!r} has only some of its "
                    f"{ndim} coordinates; give all, or leave all empty for a missing landmark")
        points.append(values)
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise LandmarkFileError(f"{path}: duplicate ids: {', '.join(duplicates)}")
    if not ids:
        raise LandmarkFileError(f"{path}: header only, no landmark rows")
    points = np.array(points, dtype=np.float64).reshape(len(ids), len(names), ndim)
    return LandmarkTable(ids, names, points)


def _format(value):
    return "" if math.isnan(value) else repr(float(value))


def write_landmarks(path, table, layout="named", id_header="id"):
    """Writes a `LandmarkTable` as CSV, atomically; NaN becomes an empty cell.

    Args:
        path: str. Target file.
        table: LandmarkTable.
        layout: str. "named" (header `id,<name>_x,...`) or "headerless" (`id,x0,y0,...`).
        id_header: str. Header of the id column in the named layout.
    """
    if layout not in ("named", "headerless"):
        raise LandmarkFileError(
            f"`layout` must be 'named' or 'headerless'. Received: layout={layout!r}"
        )
    with atomic_path(path, suffix=".csv") as temporary:
        with open(temporary, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            if layout == "named":
                writer.writerow(
                    [id_header]
                    + [f"{name}_{axis}" for name in table.names for axis in _AXES[: table.ndim]]
                )
            for image_id, points in zip(table.ids, table.points):
                writer.writerow([image_id] + [_format(v) for v in points.reshape(-1)])
