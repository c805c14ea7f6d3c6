"""`Image`: a pixel/voxel array placed in physical space.

Conventions used everywhere in keraslm:

- Array axis order is the reverse of the point order: a 2D image is `array[y, x]` (row, column),
  a 3D image is `array[z, y, x]`. This is the order of NumPy/SimpleITK arrays and of the network
  input `(batch, *spatial, channels)`.
- A point is `(x, y[, z])` in continuous index units ("index space"): x is the column of a 2D
  image, the first NIfTI axis i and the DICOM column. Pixel centres lie at integer indices, so
  the top-left pixel covers `[-0.5, 0.5]` in x and y.
- Physical coordinates are millimetres in the LPS patient frame used by DICOM and ITK
  (x towards the patient's left, y towards posterior, z towards superior). NIfTI stores RAS, so
  its affine is converted by negating x and y.
- `physical = origin + direction @ (spacing * index)`; `direction` is a `(ndim, ndim)` matrix
  whose columns are the unit physical directions of the x, y[, z] index axes (ITK's convention).
  A 2D image has a 2D physical space: for a 2D DICOM file the in-plane components of
  ImagePositionPatient and ImageOrientationPatient are used, as ITK does.
"""
import dataclasses

import numpy as np

from keraslm.errors import KeraslmError

#: Where an image's spacing came from.
SPACING_SOURCES = (
    "PixelSpacing",  # DICOM PixelSpacing: spacing in the patient.
    "ImagerPixelSpacing",  # DICOM detector spacing, not corrected for magnification.
    "PixelMeasuresSequence",  # Enhanced (multi-frame) DICOM.
    "nifti",  # NIfTI affine.
    "file",  # The file's own header (a format registered with `register_image_format`).
    "caller",  # Passed by the caller (e.g. a dataset's documented spacing).
    "dataset.json",  # A dataset folder's dataset.json (`plain_image_spacing`).
    "default",  # Nothing known: 1.0 per index step.
)


def storage_orientation(direction):
    """How an image's index axes lie in physical (LPS) space, e.g. ("+x", "+y", "+z") for
    identity and ("-x", "-y", "+z") for a NIfTI stored RAS: per index axis, the physical axis
    it runs closest to, with its sign."""
    direction = np.asarray(direction, np.float64)
    labels = "xyz"
    return tuple(("+" if direction[np.argmax(np.abs(column)), axis] >= 0 else "-")
                 + labels[int(np.argmax(np.abs(column)))]
                 for axis, column in enumerate(direction.T))


def orientation_groups(directions):
    """The storage orientations (`storage_orientation`) of several images' directions, most
    common first: a list of (orientation, [positions of the images stored so])."""
    groups = {}
    for position, direction in enumerate(directions):
        groups.setdefault(storage_orientation(direction), []).append(position)
    return sorted(groups.items(), key=lambda item: -len(item[1]))


def canonical_axes(direction):
    """The axis permutation and flips that bring an image closest to the canonical frame, whose
    index axes x, y[, z] run along the physical (LPS) axes x, y[, z] in their positive
    directions (as ITK's DICOMOrient to LPS and nibabel's `as_closest_canonical` for RAS do).

    Canonical index axis i is the image's index axis `permutation[i]`, reversed where
    `flips[i]`. Each physical axis takes the index axis with the largest share of it, largest
    first, so an oblique direction gets a permutation too (its remaining rotation stays in the
    direction). `keraslm.prediction.graph` computes the same in TensorFlow.

    Returns:
        (permutation, flips): tuples of ndim ints and ndim bools.
    """
    direction = np.asarray(direction, np.float64)
    ndim = len(direction)
    magnitude = np.abs(direction)
    permutation = [0] * ndim
    for _ in range(ndim):
        row, column = np.unravel_index(int(np.argmax(magnitude)), magnitude.shape)
        permutation[row] = int(column)
        magnitude[row, :] = -1.0
        magnitude[:, column] = -1.0
    flips = tuple(bool(direction[axis, permutation[axis]] < 0) for axis in range(ndim))
    return tuple(permutation), flips


def canonical_to_index_matrix(permutation, flips, size):
    """The homogeneous map `(ndim+1, ndim+1)` from canonical index to the image's index
    (points `(x, y[, z])`), for an image of `size` pixels along x, y[, z]."""
    ndim = len(permutation)
    matrix = np.eye(ndim + 1)
    matrix[:ndim, :ndim] = 0.0
    for axis, (source, flip) in enumerate(zip(permutation, flips)):
        matrix[source, axis] = -1.0 if flip else 1.0
        matrix[source, ndim] = size[source] - 1.0 if flip else 0.0
    return matrix


def _as_vector(value, ndim, name, positive=False):
    vector = np.asarray(value, dtype=np.float64)
    if vector.ndim == 0:
        vector = np.full(ndim, float(vector))
    if vector.shape != (ndim,):
        raise KeraslmError(
            f"`{name}` must have {ndim} values for a {ndim}D image. Received: {name}={value!r}"
        )
    if not np.all(np.isfinite(vector)):
        raise KeraslmError(f"`{name}` must be finite. Received: {name}={value!r}")
    if positive and not np.all(vector > 0):
        raise KeraslmError(f"`{name}` must be positive. Received: {name}={value!r}")
    return vector


@dataclasses.dataclass(frozen=True, eq=False)
class Image:
    """A 2D or 3D image with its physical geometry.

    Args:
        array: np.ndarray. Pixel values, shape `(height, width)` for 2D or
            `(depth, height, width)` for 3D, i.e. `array[y, x]` / `array[z, y, x]`.
        spacing: sequence of float. Millimetres per index step along x, y[, z].
        origin: sequence of float. Physical position (mm, LPS) of index `(0, 0[, 0])`.
            Defaults to zeros.
        direction: array `(ndim, ndim)`. Columns are the physical unit directions of the index
            axes x, y[, z]. Defaults to the identity.
        spacing_source: str. Where `spacing` came from, one of `SPACING_SOURCES`.
        path: str or None. The file or folder the image was read from, for messages.

    Examples:
        >>> image = Image(np.zeros((4, 6)), spacing=(0.5, 0.25))
        >>> image.index_to_physical([[2.0, 1.0]])
        array([[1.  , 0.25]])
    """

    array: np.ndarray
    spacing: np.ndarray
    origin: np.ndarray = None
    direction: np.ndarray = None
    spacing_source: str = "default"
    path: str = None

    def __post_init__(self):
        array = np.asarray(self.array)
        if array.ndim not in (2, 3):
            raise KeraslmError(
                f"An Image must be 2D or 3D. Received an array of shape {array.shape}"
                + (f" from {self.path}" if self.path else "")
            )
        ndim = array.ndim
        origin = np.zeros(ndim) if self.origin is None else self.origin
        direction = np.eye(ndim) if self.direction is None else self.direction
        direction = np.asarray(direction, dtype=np.float64)
        if direction.shape != (ndim, ndim) or not np.all(np.isfinite(direction)):
            raise KeraslmError(
                f"`direction` must be a finite {ndim}x{ndim} matrix. Received: {direction!r}"
            )
        if abs(np.linalg.det(direction)) < 1e-6:
            raise KeraslmError(f"`direction` must be invertible. Received: {direction!r}")
        if self.spacing_source not in SPACING_SOURCES:
            raise KeraslmError(
                f"`spacing_source` must be one of {SPACING_SOURCES}. "
                f"Received: spacing_source={self.spacing_source!r}"
            )
        object.__setattr__(self, "array", array)
        object.__setattr__(self, "spacing", _as_vector(self.spacing, ndim, "spacing", True))
        object.__setattr__(self, "origin", _as_vector(origin, ndim, "origin"))
        object.__setattr__(self, "direction", direction)

    @property
    def ndim(self):
        """int. Number of spatial dimensions, 2 or 3."""
        return self.array.ndim

    @property
    def size(self):
        """tuple of int. Number of pixels along x, y[, z] (the reverse of `array.shape`)."""
        return tuple(reversed(self.array.shape))

    @property
    def index_to_physical_matrix(self):
        """np.ndarray `(ndim, ndim)`: `direction @ diag(spacing)`."""
        return self.direction * self.spacing[np.newaxis, :]

    def _points(self, points, name):
        points = np.asarray(points, dtype=np.float64)
        if points.shape[-1:] != (self.ndim,):
            raise KeraslmError(
                f"`{name}` must have shape (..., {self.ndim}) for a {self.ndim}D image. "
                f"Received shape {points.shape}"
            )
        return points

    def index_to_physical(self, points_index):
        """Maps points from continuous index `(x, y[, z])` to physical mm (LPS).

        Args:
            points_index: array `(..., ndim)`. NaN stays NaN.

        Returns:
            np.ndarray `(..., ndim)`, float64.
        """
        points_index = self._points(points_index, "points_index")
        return points_index @ self.index_to_physical_matrix.T + self.origin

    def physical_to_index(self, points_mm):
        """Maps points from physical mm (LPS) to continuous index `(x, y[, z])`; exact inverse
        of `index_to_physical`.

        Args:
            points_mm: array `(..., ndim)`. NaN stays NaN.

        Returns:
            np.ndarray `(..., ndim)`, float64.
        """
        points_mm = self._points(points_mm, "points_mm")
        inverse = np.linalg.inv(self.index_to_physical_matrix)
        return (points_mm - self.origin) @ inverse.T

    def canonical(self):
        """The same image in the canonical frame (`canonical_axes`): its array transposed and
        flipped, its spacing, origin and direction changed to match, so every pixel stays at
        the same place in mm. Returns `(canonical image, canonical_to_index matrix)`, the
        homogeneous map from the canonical image's index to this image's
        (`canonical_to_index_matrix`); an image already canonical is returned as it is."""
        permutation, flips = canonical_axes(self.direction)
        matrix = canonical_to_index_matrix(permutation, flips, self.size)
        if permutation == tuple(range(self.ndim)) and not any(flips):
            return self, matrix
        ndim = self.ndim
        # Array axis j holds point axis ndim - 1 - j.
        array = np.transpose(self.array, [ndim - 1 - permutation[ndim - 1 - j] for j in range(ndim)])
        array = np.flip(array, axis=[ndim - 1 - axis for axis in range(ndim) if flips[axis]])
        canonical = dataclasses.replace(
            self, array=array, spacing=self.spacing[list(permutation)],
            origin=self.index_to_physical(matrix[:ndim, ndim]),
            direction=self.direction[:, list(permutation)] * np.where(flips, -1.0, 1.0))
        return canonical, matrix

    def header(self):
        """A copy with the same geometry whose array is a read-only zero placeholder of the same
        shape (no pixel memory), as `keraslm.io.read_image_header` returns."""
        placeholder = np.broadcast_to(np.zeros((), np.float32), self.array.shape)
        return dataclasses.replace(self, array=placeholder)

    def with_array(self, array):
        """Returns a copy with the same geometry and a new array of the same shape."""
        array = np.asarray(array)
        if array.shape != self.array.shape:
            raise KeraslmError(
                f"`with_array` needs shape {self.array.shape}. Received shape {array.shape}"
            )
        return dataclasses.replace(self, array=array)

    def __repr__(self):
        return (
            f"Image(shape={self.array.shape}, dtype={self.array.dtype}, "
            f"spacing={self.spacing.tolist()}, origin={self.origin.tolist()}, "
            f"spacing_source={self.spacing_source!r}, path={self.path!r})"
        )
