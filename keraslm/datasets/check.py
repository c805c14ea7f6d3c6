"""`keraslm-dataset check`: what a dataset holds and what looks wrong in it, before training.

`check_dataset(dataset)` reads every image (decoding its pixels once, so that a truncated or
corrupt file is found before training meets it) and returns a
`DatasetCheck`: a summary (images, sizes, spacings and where each came from, dimension,
landmarks and how many are missing per landmark) and findings, each naming the file and the
landmark:

- error "unreadable": an image that cannot be read or decoded (every one of them, not just the
  first);
- error "outside": a landmark outside its image;
- error "same place": two landmarks of one image at the same place (closer than half a pixel);
- warning "far from the others": a landmark more than `far_sd` standard deviations from its
  mean position after aligning the image to the mean shape by its OTHER landmarks nearby
  (similarity transform on its nearest neighbours in the mean shape) - a likely mislabelled
  or swapped point (and more than a pixel off); when it sits where another landmark belongs,
  or two landmarks sit in each other's places, the finding says so;
- warning "mixed spacings": pixel spacings that differ by more than `spacing_ratio` between
  images, as when some files hold mm and others pixels or cm;
- warning "own landmark names": an image whose landmark file names many landmarks that no
  other image has (other labels, e.g. 3D Slicer's default F-1, F-2, ...);

The summary lists the storage orientations found (`keraslm.io.storage_orientation`, e.g. a
NIfTI stored RAS beside DICOMs stored LPS); they may differ: training and prediction bring every
image into one canonical frame (`keraslm.io.Image.canonical`).

`write_overview` draws every image's aligned landmarks around the mean shape (3D: x-y and x-z
projections), flagged points circled.
"""
import dataclasses
import warnings

import numpy as np

from keraslm.errors import KeraslmError
from keraslm.io.image import orientation_groups

#: Median of the distance from the mean of a standard normal point, by dimension (chi
#: distribution), to turn a median distance into a per-axis standard deviation.
_CHI_MEDIAN = {2: 1.1774100225154747, 3: 1.5381722544550522}


@dataclasses.dataclass
class Finding:
    """One problem found: severity "error" or "warning", kind, the image file, the landmark
    (or None) and a sentence."""

    severity: str
    kind: str
    path: str
    landmark: str
    message: str
    image_index: int = None
    landmark_index: int = None

    def line(self):
        where = self.path + (f", landmark {self.landmark!r}" if self.landmark is not None else "")
        return f"{self.severity}: {where}: {self.message}"


@dataclasses.dataclass
class DatasetCheck:
    """The result of `check_dataset`: `summary` (dict), `findings` (list of Finding), and for the
    overview picture `aligned_mm` `(num_images, L, ndim)` (each image on the mean shape) and
    `mean_shape_mm` `(L, ndim)`."""

    summary: dict
    findings: list
    aligned_mm: np.ndarray = None
    mean_shape_mm: np.ndarray = None

    @property
    def errors(self):
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self):
        return [f for f in self.findings if f.severity == "warning"]


def _similarity(source, target):
    """Least-squares similarity transform (scale, rotation, translation; no reflection)
    mapping `source` points `(n, d)` onto `target`. Returns a function of points."""
    source_mean, target_mean = source.mean(0), target.mean(0)
    a, b = source - source_mean, target - target_mean
    u, singular, vt = np.linalg.svd(a.T @ b)
    sign = np.ones(len(singular))
    sign[-1] = np.sign(np.linalg.det(u @ vt)) or 1.0
    rotation = (u * sign) @ vt
    norm = (a ** 2).sum()
    scale = (singular * sign).sum() / norm if norm > 0 else 1.0
    return lambda points: (points - source_mean) @ rotation * scale + target_mean


def _align_all(points, mean_shape):
    """Every image's present landmarks aligned onto `mean_shape` (NaN where absent or too few)."""
    aligned = np.full_like(points, np.nan)
    for i, shape in enumerate(points):
        present = np.all(np.isfinite(shape), axis=-1) & np.all(np.isfinite(mean_shape), axis=-1)
        if present.sum() >= points.shape[-1] + 1:
            transform = _similarity(shape[present], mean_shape[present])
            aligned[i, present] = transform(shape[present])
    return aligned


def _mean_shape(points, iterations=5):
    """Generalised Procrustes mean shape `(L, ndim)` of images' landmarks (NaN-aware)."""
    counts = np.all(np.isfinite(points), axis=-1).sum(1)
    mean = points[int(np.argmax(counts))].copy()
    for _ in range(iterations):
        aligned = _align_all(points, mean)
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # All-NaN landmarks keep `mean`.
            new = np.nanmedian(aligned, axis=0) if np.isfinite(aligned).any() else mean
        new = np.where(np.isfinite(new), new, mean)
        mean = new
    return mean, _align_all(points, mean)


def _residuals(shape, mean_shape, inliers):
    """Residual `(L, ndim)` of each landmark from its mean-shape position after aligning the
    image by its nearest other inlier landmarks (the `2 ndim + 2` closest in the mean shape:
    local, so an articulated anatomy - a spread finger, an open jaw - does not tilt the fit
    for landmarks far away). NaN where too few points remain."""
    ndim = shape.shape[-1]
    count = 2 * ndim + 2
    residuals = np.full(shape.shape, np.nan)
    for k in np.flatnonzero(np.all(np.isfinite(shape), axis=-1)):
        order = np.argsort(np.linalg.norm(mean_shape - mean_shape[k], axis=-1))
        neighbours = [j for j in order if j != k and inliers[j]][:count]
        if len(neighbours) >= ndim + 1:
            transform = _similarity(shape[neighbours], mean_shape[neighbours])
            residuals[k] = transform(shape[k][np.newaxis])[0] - mean_shape[k]
    return residuals


def _far_landmarks(points, mean_shape, far_sd, excluded):
    """Leave-one-out residuals `(n, L, ndim)`, per-landmark SD `(L,)` (robust: from the median
    distance) and the mask of landmarks farther than `far_sd` SD. Per image, the worst
    landmark beyond the limit is dropped from the alignment and the rest re-aligned, until
    none is (so one wrong point does not drag its image's others along)."""
    num_images, num_landmarks, ndim = points.shape
    valid = np.all(np.isfinite(points), axis=-1) & np.all(np.isfinite(mean_shape), axis=-1)
    first = np.stack([_residuals(points[i], mean_shape, valid[i] & ~excluded[i])
                      for i in range(num_images)])
    distance = np.linalg.norm(first, axis=-1)
    sd = np.array([np.nanmedian(distance[:, k]) / _CHI_MEDIAN[ndim]
                   if np.isfinite(distance[:, k]).sum() >= 3 else np.nan
                   for k in range(num_landmarks)])
    sd = np.where(np.isfinite(sd), np.maximum(sd, 1e-9), np.nan)
    residuals = np.full(points.shape, np.nan)
    for i in range(num_images):
        inliers = valid[i] & ~excluded[i]
        for _ in range(max(1, num_landmarks // 3)):
            current = _residuals(points[i], mean_shape, inliers)
            z = np.linalg.norm(current, axis=-1) / sd
            z = np.where(inliers & np.isfinite(z), z, -np.inf)
            worst = int(np.argmax(z))
            if z[worst] <= far_sd:
                break
            inliers[worst] = False
        residuals[i] = _residuals(points[i], mean_shape, inliers)
    far = np.linalg.norm(residuals, axis=-1) / sd > far_sd
    return residuals, sd, far & valid & ~excluded


def check_dataset(dataset, far_sd=4.0, spacing_ratio=5.0, progress=None):
    """Checks a `keraslm.data.LandmarkDataset` (see the module docstring).

    Args:
        dataset: LandmarkDataset.
        far_sd: float. Standard deviations from the mean position that make a landmark "far
            from the others".
        spacing_ratio: float. Largest / smallest pixel spacing above which spacings are mixed.
        progress: callable(str), optional.

    Returns:
        DatasetCheck.
    """
    progress = progress or (lambda message: None)
    names = dataset.landmark_names
    findings = []
    headers = []
    for number, record in enumerate(dataset.records, 1):
        try:  # Pixels too: a truncated file has a readable header.
            headers.append(dataset.read_image(record).header())
        except KeraslmError as error:
            headers.append(None)
            message = str(error)  # Named by the finding already.
            message = message[len(record.image_path) + 2:] if message.startswith(
                f"{record.image_path}: ") else message
            findings.append(Finding("error", "unreadable", record.image_path, None, message))
        if number % 50 == 0 or number == len(dataset.records):
            progress(f"read {number}/{len(dataset.records)} images")
    points = dataset.points_mm
    for record, header, image_points in zip(dataset.records, headers, points):
        if header is None:
            continue
        if header.ndim != dataset.ndim:
            findings.append(Finding("error", "mixed dimensions", record.image_path, None,
                                    f"is {header.ndim}D in a {dataset.ndim}D dataset"))
            continue
        index = header.physical_to_index(image_points)
        size = np.asarray(header.size, np.float64)
        for k, (name, point) in enumerate(zip(names, index)):
            if np.all(np.isfinite(point)) and (np.any(point < -0.5) or np.any(point > size - 0.5)):
                findings.append(Finding(
                    "error", "outside", record.image_path, name,
                    f"at index {np.round(point, 1).tolist()} is outside the image of size "
                    f"{[int(s) for s in size]} (x, y[, z]); wrong units (index vs mm) or spacing?"))
        half_pixel = 0.5 * float(np.min(header.spacing))
        finite = np.all(np.isfinite(image_points), axis=-1)
        for a in range(len(names)):
            for b in range(a + 1, len(names)):
                if finite[a] and finite[b] and np.linalg.norm(image_points[a] - image_points[b]) < half_pixel:
                    findings.append(Finding(
                        "error", "same place", record.image_path, names[a],
                        f"is at the same place as landmark {names[b]!r} "
                        f"({np.round(image_points[a], 2).tolist()} mm)"))
    spacings = np.array([h.spacing for h in headers if h is not None and h.ndim == dataset.ndim])
    if len(spacings):
        smallest, largest = spacings.min(axis=1), spacings.max(axis=1)
        if largest.max() / smallest.min() > spacing_ratio:
            low = [r.image_path for r, h in zip(dataset.records, headers)
                   if h is not None and h.ndim == dataset.ndim and min(h.spacing) == smallest.min()]
            high = [r.image_path for r, h in zip(dataset.records, headers)
                    if h is not None and h.ndim == dataset.ndim and max(h.spacing) == largest.max()]
            findings.append(Finding(
                "warning", "mixed spacings", high[0], None,
                f"pixel spacing {largest.max():g} mm is {largest.max() / smallest.min():.0f}x "
                f"that of {low[0]} ({smallest.min():g} mm); mixed units? ({len(high)} and "
                f"{len(low)} images at the two extremes)"))
    present = np.all(np.isfinite(points), axis=-1)  # (images, landmarks)
    only_one = present.sum(axis=0) == 1  # Landmarks that a single image names.
    if len(dataset.records) >= 3:
        for i in range(len(dataset.records)):
            own = np.flatnonzero(present[i] & only_one)
            if own.size and own.size > len(names) // 4:
                findings.append(Finding(
                    "warning", "own landmark names", dataset.records[i].image_path, None,
                    f"names {len(own)} landmarks that no other image has ("
                    + ", ".join(names[k] for k in own[:5]) + (" ..." if len(own) > 5 else "")
                    + "): other labels than the rest of the dataset (e.g. Slicer's default "
                    "F-1, F-2, ...)? Each name becomes its own heatmap channel"))
    aligned = mean_shape = None
    usable = np.all(np.isfinite(points), axis=-1).sum(1) >= dataset.ndim + 2
    if usable.sum() >= 3 and len(names) >= dataset.ndim + 2:
        progress("aligning the images' landmarks to their mean shape")
        index_of = {record.image_path: i for i, record in enumerate(dataset.records)}
        excluded = np.zeros(points.shape[:2], bool)  # Points with an error already.
        for finding in findings:
            if finding.landmark is not None:
                excluded[index_of[finding.path], names.index(finding.landmark)] = True
            elif finding.kind in ("unreadable", "mixed dimensions"):
                excluded[index_of[finding.path]] = True  # Its points cannot be checked either.
        mean_shape, aligned = _mean_shape(np.where(excluded[..., None], np.nan, points))
        residuals, sd, far = _far_landmarks(points, mean_shape, far_sd, excluded)
        located = mean_shape[np.newaxis] + residuals
        pixel = np.array([np.max(h.spacing) if h is not None else 0.0 for h in headers])
        far &= np.linalg.norm(residuals, axis=-1) > pixel[:, np.newaxis]  # Not within a pixel.
        inliers = ~far & np.all(np.isfinite(points), axis=-1) & ~excluded
        swapped_with = np.full(far.shape, -1)
        for i in np.flatnonzero(far.sum(1) >= 2):  # Would swapping two far points fix both?
            flagged = np.flatnonzero(far[i])
            for a, k in enumerate(flagged):
                for j in flagged[a + 1:]:
                    trial = points[i].copy()
                    trial[[k, j]] = trial[[j, k]]
                    z = np.linalg.norm(_residuals(trial, mean_shape, inliers[i])[[k, j]], axis=-1) / sd[[k, j]]
                    if np.all(z <= far_sd) and swapped_with[i, k] < 0 and swapped_with[i, j] < 0:
                        swapped_with[i, k], swapped_with[i, j] = j, k
        for i, k in zip(*np.nonzero(far)):
            distance = float(np.linalg.norm(residuals[i, k]))
            others = np.linalg.norm(mean_shape - located[i, k], axis=-1)
            others[k] = np.inf
            if swapped_with[i, k] >= 0:
                hint = (f"; swapped with {names[swapped_with[i, k]]!r}? (exchanging the two puts "
                        "both where they belong)")
            elif others.min() < 0.25 * distance:  # Clearly another landmark's place.
                hint = f"; it sits where {names[int(np.argmin(others))]!r} belongs (mislabelled?)"
            else:
                hint = ""
            findings.append(Finding(
                "warning", "far from the others", dataset.records[i].image_path, names[k],
                f"lies {distance:.1f} mm from its mean position after aligning the image by its "
                f"other landmarks ({distance / sd[k]:.1f} SD; SD {sd[k]:.2f} mm){hint}",
                int(i), int(k)))
    summary = _summary(dataset, headers, points)
    if aligned is None:  # Said, not skipped silently: a clean result would read as checked.
        summary["shape_check_skipped"] = (
            f"too few landmarks ({len(names)}; the alignment needs {dataset.ndim + 2})"
            if len(names) < dataset.ndim + 2 else
            f"{int(usable.sum())} image(s) with at least {dataset.ndim + 2} landmarks, the "
            "alignment needs 3")
    summary["errors"] = sum(f.severity == "error" for f in findings)
    summary["warnings"] = sum(f.severity == "warning" for f in findings)
    return DatasetCheck(summary, findings, aligned, mean_shape)


def _summary(dataset, headers, points):
    valid = [h for h in headers if h is not None and h.ndim == dataset.ndim]
    sizes = np.array([h.size for h in valid]) if valid else np.zeros((0, dataset.ndim))
    spacing_counts = {}
    for record, header in zip(dataset.records, headers):
        if header is None or header.ndim != dataset.ndim:
            continue
        key = (tuple(round(float(s), 6) for s in header.spacing), str(header.spacing_source))
        spacing_counts[key] = spacing_counts.get(key, 0) + 1
    missing = np.any(~np.isfinite(points), axis=-1).sum(0)
    orientations = orientation_groups([h.direction for h in valid])
    return {
        "name": dataset.name,
        "images": len(dataset),
        "readable": len(valid),
        "ndim": dataset.ndim,
        "size_min": sizes.min(0).astype(int).tolist() if len(sizes) else None,
        "size_max": sizes.max(0).astype(int).tolist() if len(sizes) else None,
        "spacings": [{"spacing_mm": list(k[0]), "source": k[1], "images": n}
                     for k, n in sorted(spacing_counts.items(), key=lambda item: -item[1])],
        "landmarks": [{"name": name, "missing": int(m)} for name, m in zip(dataset.landmark_names, missing)],
        "orientations": [{"orientation": list(o), "images": len(p)} for o, p in orientations],
    }


def format_check(check):
    """Lines to print: the summary table and the findings."""
    s = check.summary
    lines = [f"dataset {s['name']!r}: {s['images']} {s['ndim']}D images ({s['readable']} readable), "
             f"{len(s['landmarks'])} landmarks"]
    if s["size_min"] is not None:
        lines.append(f"  image size (x, y[, z]) from {s['size_min']} to {s['size_max']} pixels")
    for entry in s["spacings"]:
        lines.append(f"  spacing {entry['spacing_mm']} mm ({entry['source']}): {entry['images']} images")
    for entry in s["orientations"]:
        lines.append(f"  stored {' '.join(entry['orientation'])} (index axes along LPS): "
                     f"{entry['images']} images")
    if len(s["orientations"]) > 1:
        lines.append("  (mixed orientations are fine: training and prediction bring every image "
                     "into one canonical frame)")
    lines.append("  landmark                        missing")
    for entry in s["landmarks"]:
        lines.append(f"  {entry['name']:<30} {entry['missing']:>7}")
    for finding in check.findings:
        lines.append(finding.line())
    if s.get("shape_check_skipped"):
        lines.append(f"not checked: landmarks far from the others (mislabelled or swapped "
                     f"points) and the overview picture: {s['shape_check_skipped']}")
    lines.append(f"{s['errors']} errors, {s['warnings']} warnings")
    return lines


def write_overview(path, check, landmark_names):
    """PNG: every image's landmarks aligned to the mean shape (one colour per landmark), the
    mean shape labelled, landmarks "far from the others" circled red; 3D: x-y and x-z
    projections. Nothing is written when the images could not be aligned."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from keraslm.files import atomic_path

    if check.aligned_mm is None:
        return None
    aligned, mean = check.aligned_mm, check.mean_shape_mm
    ndim = mean.shape[-1]
    views = [(0, 1, "x-y")] if ndim == 2 else [(0, 1, "x-y"), (0, 2, "x-z")]
    figure, panels = plt.subplots(1, len(views), figsize=(7 * len(views), 7), squeeze=False)
    colours = plt.get_cmap("tab20")
    for axes, (u, v, label) in zip(panels[0], views):
        for k, name in enumerate(landmark_names):
            axes.scatter(aligned[:, k, u], aligned[:, k, v], s=4, alpha=0.5, color=colours(k % 20))
            axes.annotate(str(name), (mean[k, u], mean[k, v]), fontsize=7, ha="center",
                          va="bottom")
        axes.scatter(mean[:, u], mean[:, v], s=18, marker="+", color="black", label="mean shape")
        flagged = [(f.image_index, f.landmark_index) for f in check.findings
                   if f.image_index is not None]
        if flagged:
            points = np.array([aligned[i, k] for i, k in flagged])
            axes.scatter(points[:, u], points[:, v], s=80, facecolors="none", edgecolors="red",
                         linewidths=1.2, label="far from the others")
        axes.set_aspect("equal")
        axes.invert_yaxis()  # Image convention: y grows downwards.
        axes.set_xlabel(f"{label[0]} (mm, mean-shape frame)")
        axes.set_ylabel(f"{label[-1]} (mm, mean-shape frame)")
        axes.set_title(f"{len(aligned)} images' landmarks on the mean shape ({label})")
        axes.legend(loc="lower right", fontsize=8)
    with atomic_path(path, suffix=".png") as temporary:
        figure.savefig(temporary, dpi=100, bbox_inches="tight")
    plt.close(figure)
    return path


def describe_folder(folder, units=None, spacing=None, ndim=None):
    """The `dataset.json` contents that describe `folder` as `keraslm.datasets.load_dataset`
    reads it now (one landmark CSV, or landmark files beside the images); what
    `keraslm-dataset init` writes. Returns (description dict, LandmarkDataset).

    Raises:
        DatasetError: the folder already has a dataset.json, or does not load.
    """
    import os

    from keraslm.data import DATASET_JSON
    from keraslm.datasets import landmark_csvs, load_dataset
    from keraslm.errors import DatasetError
    from keraslm.io import landmark_file_stem

    folder = os.fspath(folder)
    if os.path.isfile(os.path.join(folder, DATASET_JSON)):
        raise DatasetError(f"{os.path.join(folder, DATASET_JSON)} exists already; edit it, or "
                           "remove it to infer a new one")
    dataset = load_dataset(folder, units=units, spacing=spacing, ndim=ndim)
    description = {"name": dataset.name, "ndim": dataset.ndim}
    csvs = [os.path.relpath(path, folder) for path in landmark_csvs(folder)]
    if csvs:
        description["landmarks_csv"] = csvs[0]
        description["landmark_units"] = units
    else:
        extensions = {}
        for sub in (folder, os.path.join(folder, "images")):
            for entry in sorted(os.listdir(sub)) if os.path.isdir(sub) else []:
                stem = landmark_file_stem(entry)
                if stem is not None:
                    extension = entry[len(stem):].lower()
                    extensions[extension] = extensions.get(extension, 0) + 1
        extension = max(extensions, key=extensions.get)
        description["landmark_files"] = extension
        # The units of the .txt point lists wherever there are any (Slicer markups say mm
        # themselves): a folder mixing both keeps reading its point lists as given.
        description["landmark_units"] = units if ".txt" in extensions else "mm"
    description["plain_image_spacing"] = (None if dataset.image_spacing is None
                                          else list(dataset.image_spacing))
    description["landmark_names"] = list(dataset.landmark_names)
    return description, dataset
