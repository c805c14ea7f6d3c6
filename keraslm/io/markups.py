"""Per-image landmark files: 3D Slicer markups (`.mrk.json`, older `.fcsv`) and plain point
lists (`x,y[,z]` per line, as in the ISBI 2015 challenge release).

Slicer stores physical millimetres in its file's coordinate system, RAS or LPS; keraslm works
in LPS, so RAS points are turned by negating x and y. Control points whose position is
undefined or missing become NaN. Their labels are the landmark names. Slicer's points always
have three coordinates; for 2D images the caller keeps x and y (`keraslm.data`).

Plain point lists hold no names: landmark k is named `str(k + 1)`; reading stops at the first
line that is not 2 or 3 numbers (the ISBI files append classification lines), so the units
(pixel index or mm) are the caller's to state.

`write_markups` writes a `.mrk.json` (LPS) that Slicer opens over the image.
"""
import csv
import json
import math
import os
import re

import numpy as np

from keraslm.errors import LandmarkFileError
from keraslm.files import write_json

MARKUPS_EXTENSIONS = (".mrk.json", ".fcsv")
POINT_LIST_EXTENSIONS = (".txt",)
LANDMARK_FILE_EXTENSIONS = MARKUPS_EXTENSIONS + POINT_LIST_EXTENSIONS
_SCHEMA = ("https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/"
           "Resources/Schema/markups-schema-v1.0.3.json#")
_UNDEFINED = ("undefined", "missing")


def landmark_file_stem(path):
    """The file name without its landmark-file extension (`001.mrk.json` -> `001`), or None
    when `path` is not a landmark file."""
    name = os.path.basename(os.fspath(path))
    for extension in LANDMARK_FILE_EXTENSIONS:
        if name.lower().endswith(extension):
            return name[: -len(extension)]
    return None


def natural_key(name):
    """Sort key in which digit runs compare as numbers: "2" < "10", "L2" < "L10"."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part)
            for part in re.split(r"(\d+)", str(name)) if part]


def _ras_to_lps(points, system, path):
    system = str(system).upper()
    if system in ("RAS", "0"):
        return points * np.array([-1.0, -1.0, 1.0])
    if system in ("LPS", "1"):
        return points
    raise LandmarkFileError(f"{path}: coordinate system {system!r} is neither RAS nor LPS")


#: Slicer markup types whose control points are landmarks (the point list, "Fiducial" before
#: Slicer 5); lines, angles, curves, planes and ROIs in the same file are not read.
_POINT_LIST_TYPES = ("Fiducial", "PointList")


def _read_mrk_json(path):
    try:
        with open(path, encoding="utf-8") as handle:
            document = json.load(handle)
    except json.JSONDecodeError as error:
        raise LandmarkFileError(f"{path}: not valid JSON ({error})") from None
    markups = document.get("markups") if isinstance(document, dict) else None
    if not isinstance(markups, list) or not markups:
        raise LandmarkFileError(f"{path}: no 'markups' list (not a 3D Slicer markups file)")
    names, points = [], []
    point_lists = [m for m in markups if isinstance(m, dict)
                   and str(m.get("type", "Fiducial")) in _POINT_LIST_TYPES]
    if not point_lists:
        kinds = sorted({str(m.get("type")) for m in markups if isinstance(m, dict)})
        raise LandmarkFileError(f"{path}: no point list among its markups ({', '.join(kinds)}); "
                                "landmarks are a Slicer point list (Fiducial)")
    for markup in point_lists:  # Lines, angles, curves, ROIs: measurements, not landmarks.
        units = markup.get("coordinateUnits", "mm")
        if units != "mm":
            raise LandmarkFileError(f"{path}: coordinate units {units!r}; keraslm reads mm")
        system = markup.get("coordinateSystem", "LPS")
        for number, point in enumerate(markup.get("controlPoints") or [], 1):
            label = str(point.get("label") or point.get("id") or number)
            position = point.get("position")
            status = str(point.get("positionStatus", "defined")).lower()
            if status in _UNDEFINED or position is None:
                value = np.full(3, np.nan)
            else:
                try:
                    value = np.asarray(position, np.float64).reshape(3)
                except (TypeError, ValueError):
                    raise LandmarkFileError(
                        f"{path}: control point {label!r} has position {position!r}; expected "
                        "three numbers") from None
                if not np.all(np.isfinite(value)):
                    raise LandmarkFileError(f"{path}: control point {label!r} is not finite")
            names.append(label)
            points.append(_ras_to_lps(value[np.newaxis], system, path)[0])
    return names, points


def _read_fcsv(path):
    system = "LPS"
    names, points = [], []
    columns = None
    with open(path, encoding="utf-8-sig") as handle:  # A BOM is not part of the first line.
        for number, line in enumerate(handle, 1):
            line = line.strip()
            if not line:
                continue
            if line.startswith("#"):
                key, _, value = line[1:].partition("=")
                key = key.strip().lower()
                if key == "coordinatesystem":
                    system = value.strip()
                elif key == "columns":
                    columns = [c.strip() for c in value.split(",")]
                continue
            cells = [c.strip() for c in next(csv.reader([line]))]  # Quoted labels may hold ",".
            names_at = columns or ["id", "x", "y", "z", "ow", "ox", "oy", "oz", "vis", "sel",
                                   "lock", "label"]
            row = dict(zip(names_at, cells))
            try:
                value = np.array([float(row["x"]), float(row["y"]), float(row["z"])])
            except (KeyError, ValueError):
                raise LandmarkFileError(f"{path}, line {number}: expected id,x,y,z,... numbers; "
                                        f"got {line!r}") from None
            if not np.all(np.isfinite(value)):
                value = np.full(3, np.nan)
            names.append(row.get("label") or row.get("id") or str(len(names) + 1))
            points.append(value)
    return names, [_ras_to_lps(p[np.newaxis], system, path)[0] for p in points]


def _read_point_list(path):
    """Points of a `.txt` point list: `x,y[,z]` per line (commas, semicolons or blanks between
    the values); blank lines and `#` comments are skipped. Lines after the points that are no
    points (the ISBI 2015 files' trailing classification numbers) end the list; a point after
    such a line is an error naming both lines (a list cut short would drop landmarks)."""
    points, end = [], None
    with open(path, encoding="utf-8-sig") as handle:
        for number, line in enumerate(handle, 1):
            text = line.split("#", 1)[0].strip()
            cells = [c for c in re.split(r"[,;\s]+", text) if c]
            if not cells:
                continue
            try:
                values = [float(c) for c in cells]
            except ValueError:
                values = []
            is_point = len(values) in (2, 3) and all(math.isfinite(v) for v in values)
            if not is_point:
                if not points:
                    raise LandmarkFileError(f"{path}: line {number} {line.strip()!r} is not "
                                            "'x,y' or 'x,y,z'")
                end = end or (number, line.strip())
                continue
            if end is not None:
                raise LandmarkFileError(
                    f"{path}: line {number} is a point after line {end[0]} {end[1]!r}, which "
                    "is not 'x,y' or 'x,y,z'; a point list holds one point per line (lines "
                    "after the last point are ignored)")
            points.append(values)
    if not points:
        raise LandmarkFileError(f"{path}: holds no points")
    if len({len(p) for p in points}) != 1:
        raise LandmarkFileError(f"{path}: mixes 2D and 3D points")
    return [str(k + 1) for k in range(len(points))], [np.asarray(p, np.float64) for p in points]


def read_landmark_file(path):
    """Reads one image's landmark file.

    Returns:
        (names, points, units): list of str; np.ndarray `(num_landmarks, 3)` (Slicer, LPS mm)
        or `(num_landmarks, 2 or 3)` (point lists); "mm" for Slicer files, None for point
        lists (the caller states the units).

    Raises:
        LandmarkFileError: missing, unreadable or malformed file, or a label used twice; the
            message names the file.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise LandmarkFileError(f"{path}: no such landmark file")
    lower = path.lower()
    try:
        if lower.endswith(".mrk.json"):
            (names, points), units = _read_mrk_json(path), "mm"
        elif lower.endswith(".fcsv"):
            (names, points), units = _read_fcsv(path), "mm"
        elif lower.endswith(POINT_LIST_EXTENSIONS):
            (names, points), units = _read_point_list(path), None
        else:
            raise LandmarkFileError(
                f"{path}: not a landmark file ({', '.join(LANDMARK_FILE_EXTENSIONS)})")
    except UnicodeDecodeError:
        raise LandmarkFileError(f"{path}: not a text file") from None
    repeated = sorted({n for n in names if names.count(n) > 1}, key=natural_key)
    if repeated:
        raise LandmarkFileError(f"{path}: landmark label(s) used twice: {', '.join(repeated)}")
    if not names:
        raise LandmarkFileError(f"{path}: holds no control points")
    return names, np.stack(points), units


def write_markups(path, names, points_mm, description=None):
    """Writes landmarks in physical LPS mm as a 3D Slicer markups file (`.mrk.json`, one
    fiducial list, coordinate system LPS). 2D points get z = 0; NaN points are written as
    undefined. Atomic.

    Args:
        path: str. Ends with `.mrk.json`.
        names: sequence of str. Control point labels.
        points_mm: array `(num_landmarks, 2 or 3)`.
        description: str, optional. Stored as the list's name.
    """
    points = np.asarray(points_mm, np.float64)
    if points.ndim != 2 or points.shape[1] not in (2, 3) or len(points) != len(names):
        raise LandmarkFileError(
            f"{path}: points must be (num_landmarks={len(names)}, 2 or 3); got {points.shape}")
    if points.shape[1] == 2:
        points = np.concatenate([points, np.zeros((len(points), 1))], axis=1)
    control_points = []
    for number, (name, point) in enumerate(zip(names, points), 1):
        defined = bool(np.all(np.isfinite(point)))
        control_points.append({
            "id": str(number), "label": str(name),
            "position": [float(v) for v in point] if defined else [0.0, 0.0, 0.0],
            "positionStatus": "defined" if defined else "undefined",
        })
    document = {"@schema": _SCHEMA, "markups": [{
        "type": "Fiducial", "coordinateSystem": "LPS", "coordinateUnits": "mm",
        "name": description or "keraslm", "controlPoints": control_points}]}
    write_json(path, document)
