"""Gaussian landmark heatmaps as a codec: one object owns grid size, stride and sigma.

Conventions are those of `keraslm.ops.geometry`: points `(batch, num_landmarks, ndim)` as
`(x, y[, z])` in *input* grid index units (pixel centres at integers), NaN = missing; heatmaps
`(batch, *output_shape, num_landmarks)` channels-last with spatial axes `(y, x)` / `(z, y, x)`.

Stride. The heatmap grid has `output_shape = input_shape // stride` (input_shape must be
divisible by stride). Output pixel `j` is the average of input pixels `[s*j, s*j + s - 1]` (as
after `s`-fold average pooling), so its centre lies at input coordinate `s*j + (s - 1) / 2`:

    output coordinate = (input coordinate - (s - 1) / 2) / s
    input coordinate  = s * output coordinate + (s - 1) / 2

Encoding renders `amplitude * exp(-|p - mu|^2 / (2 sigma^2))` (the paper: amplitude 1; keraslm's
default training preset 100, see `keraslm.training.presets`) at every
output pixel centre `p`, with `mu` the landmark in output coordinates (sub-pixel) and sigma in
OUTPUT pixels; values are set to 0 where a landmark is more than `truncate * sigma` away along
an axis, and a missing (NaN) landmark renders all zeros. It is separable: one 1D Gaussian per
axis and landmark, then an outer product by broadcasting, so the cost is one write of the
heatmap tensor (there is nothing cheaper to do than writing the dense target once).

Decoding takes the argmax per landmark (confidence = the peak value) and refines it:
"argmax": none; "quadratic": the authors' per-axis parabola
`delta = 0.5 (p[-1] - p[+1]) / (p[-1] - 2 p[0] + p[+1])` (0 at the border or for a flat /
non-concave neighbourhood); "dark" (Zhang et al. 2020): smooth the heatmap near the peak with a
Gaussian of the codec's sigma, take the log and do one Newton step with the full ndim x ndim
Hessian from central finite differences, `offset = -H^-1 grad`, clipped to |offset| <= 1 per
axis (0 where H is not negative definite); where the smoothing window (3 sigma + 1 pixels around
the peak) would reach outside the grid, the quadratic fit is used instead, since any padding
would bias the smoothed peak.
`decode` takes the heatmap grid from the tensor: static sizes where known, run-time sizes where
they are None (a traced SavedModel signature, `keraslm.export`), so one entry point serves both.

Spacings are per axis in point order `(x, y[, z])`, like points (`centre_prior`, `spread`).
"""
import math

import numpy as np
from keras import ops

from keraslm.errors import UsageError
from keraslm.ops.geometry import check_points, static_shape

METHODS = ("quadratic", "dark", "argmax")
SPREAD_FLOOR = 0.1  # HeatmapCodec.spread ignores values below this fraction of the peak.


def _check_sigma(sigma, arg="sigma"):
    """A positive float or a 1D sequence of positive floats -> float or float32 array."""
    try:
        values = np.asarray(sigma, dtype=np.float64)
    except (TypeError, ValueError):
        values = None
    if (values is None or values.ndim > 1 or values.size == 0 or not np.all(np.isfinite(values))
            or not np.all(values > 0)):
        raise UsageError(
            f"`{arg}` must be a positive number or a 1D sequence of positive numbers (one per "
            f"landmark), in output pixels. Received: {arg}={sigma!r}")
    return float(values) if values.ndim == 0 else values.astype(np.float32)


class HeatmapCodec:
    """Render (encode) and locate (decode) Gaussian landmark heatmaps on one grid.

    Args:
        input_shape: tuple of 2 or 3 ints. spatial shape of the network input, array order (y, x)
            or (z, y, x).
        stride: int >= 1. input pixels per heatmap pixel along each axis; must divide input_shape.
        sigma: float > 0 or sequence of floats > 0 (one per landmark). Gaussian sigma in OUTPUT
            pixels (the paper: 1.5-3).
        truncate: float > 0. the Gaussian is 0 beyond `truncate * sigma` along any axis.
        amplitude: float > 0. peak value of the rendered targets (the paper: 1). Decoding does not
            depend on it; confidences are on the scale the network learnt.

    Examples:
    >>> codec = HeatmapCodec((256, 256), stride=1, sigma=2.0)
    >>> points = np.array([[[30.0, 40.5], [128.2, 200.0]]], "float32")  # (batch, L, (x, y))
    >>> heatmaps = codec.encode(points)          # (batch, 256, 256, num_landmarks)
    >>> weights = codec.weights(points)          # (batch, num_landmarks)
    >>> points, confidence = codec.decode(heatmaps, method="dark")
    """

    def __init__(self, input_shape, stride=1, sigma=2.0, truncate=4.0, amplitude=1.0):
        try:
            shape = tuple(input_shape)
        except TypeError:
            shape = None
        if (shape is None or len(shape) not in (2, 3) or not all(
                isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1
                for v in shape)):
            raise UsageError(
                "`input_shape` must be a tuple of 2 or 3 ints >= 1 (spatial shape in array "
                f"order). Received: input_shape={input_shape!r}")
        if not (isinstance(stride, (int, np.integer)) and not isinstance(stride, bool)
                and stride >= 1):
            raise UsageError(f"`stride` must be an int >= 1. Received: stride={stride!r}")
        if any(n % stride for n in shape):
            raise UsageError(
                "`input_shape` must be divisible by `stride`. Received: "
                f"input_shape={shape}, stride={stride}")
        if not (isinstance(truncate, (int, float)) and math.isfinite(truncate) and truncate > 0):
            raise UsageError(f"`truncate` must be a number > 0. Received: truncate={truncate!r}")
        if not (isinstance(amplitude, (int, float)) and math.isfinite(amplitude) and amplitude > 0):
            raise UsageError(f"`amplitude` must be a number > 0. Received: amplitude={amplitude!r}")
        self.input_shape = tuple(int(n) for n in shape)
        self.stride = int(stride)
        self.output_shape = tuple(n // self.stride for n in self.input_shape)
        self.ndim = len(shape)
        self.sigma = _check_sigma(sigma)
        self.truncate = float(truncate)
        self.amplitude = float(amplitude)

    def get_config(self):
        """Constructor arguments (JSON-serialisable)."""
        sigma = self.sigma if isinstance(self.sigma, float) else self.sigma.tolist()
        return {"input_shape": list(self.input_shape), "stride": self.stride, "sigma": sigma,
                "truncate": self.truncate, "amplitude": self.amplitude}

    @classmethod
    def from_config(cls, config):
        """Inverse of `get_config`."""
        return cls(**config)

    def __repr__(self):
        return (f"HeatmapCodec(input_shape={self.input_shape}, stride={self.stride}, "
                f"sigma={self.sigma!r}, truncate={self.truncate}, amplitude={self.amplitude})")

    # -- coordinates ------------------------------------------------------------------------

    def to_output(self, points):
        """Input grid index -> heatmap grid index (any shape with (x, y[, z]) last)."""
        return (points - (self.stride - 1) / 2.0) / float(self.stride)

    def to_input(self, points):
        """Heatmap grid index -> input grid index."""
        return points * float(self.stride) + (self.stride - 1) / 2.0

    def _points(self, points):
        points = ops.cast(ops.convert_to_tensor(points), "float32")
        check_points(points, self.ndim)
        return points

    # -- encode -----------------------------------------------------------------------------

    def encode(self, points, sigma=None):
        """Render target heatmaps.

        Args:
            points: tensor `(batch, num_landmarks, ndim)`. input grid index, (x, y[, z]); NaN =
                missing (rendered as zeros).
            sigma: optional scalar or `(num_landmarks,)` tensor/array overriding `self.sigma`
                (output pixels), e.g. a learnable variable; gradients flow into it.

        Returns:
            float32 `(batch, *output_shape, num_landmarks)`, peak `amplitude`.
        """
        points = self._points(points)
        _, num_landmarks, _ = static_shape(points)
        sigma = self._sigma(self.sigma if sigma is None else sigma, num_landmarks)
        centres = self.to_output(points)
        finite = ops.isfinite(centres)
        centres = ops.where(finite, centres, ops.zeros_like(centres))  # no NaN in gradients
        reach = self.truncate * sigma
        heatmaps = None
        for axis, n in enumerate(self.output_shape):  # static loop over the 2 or 3 axes
            k = self.ndim - 1 - axis
            grid = np.arange(n, dtype=np.float32)[None, :, None]  # (1, n, 1)
            d = grid - centres[:, None, :, k]  # (batch, n, L)
            profile = ops.exp(-(d * d) / (2.0 * sigma * sigma))
            keep = ops.logical_and(ops.abs(d) <= reach, finite[:, None, :, k])
            profile = ops.where(keep, profile, ops.zeros_like(profile))
            shape = [-1] + [1] * self.ndim + [num_landmarks]  # batch may be dynamic
            shape[1 + axis] = n
            profile = ops.reshape(profile, shape)
            heatmaps = profile if heatmaps is None else heatmaps * profile
        return heatmaps if self.amplitude == 1.0 else heatmaps * self.amplitude

    def _sigma(self, sigma, num_landmarks):
        """Sigma as a float32 tensor broadcastable to `(1, 1, num_landmarks)`."""
        if isinstance(sigma, (int, float, np.ndarray, list, tuple)):
            sigma = _check_sigma(sigma)
        sigma = ops.cast(ops.convert_to_tensor(sigma), "float32")
        shape = static_shape(sigma)
        if len(shape) == 0:
            return sigma
        if len(shape) != 1 or shape[0] not in (1, num_landmarks):
            raise UsageError(
                "`sigma` must be a scalar or have shape (num_landmarks,) = "
                f"({num_landmarks},). Received: sigma.shape={shape}")
        return ops.reshape(sigma, (1, 1, shape[0]))

    # -- weights ----------------------------------------------------------------------------

    def weights(self, points):
        """Per-landmark loss weights `(batch, num_landmarks)` float32: 1 for finite landmarks
        whose centre lies inside the heatmap field (`[-0.5, n_out - 0.5)` per axis in output
        coordinates), else 0."""
        points = self._points(points)
        centres = self.to_output(points)
        size = np.asarray(self.output_shape[::-1], dtype=np.float32)
        inside = ops.logical_and(centres >= -0.5, centres < size - 0.5)  # False for NaN
        return ops.cast(ops.all(inside, axis=-1), "float32")

    # -- decode -----------------------------------------------------------------------------

    def decode(self, heatmaps, method="quadratic", peak_weights=None):
        """Locate each landmark: argmax plus sub-pixel refinement.

        The grid is the tensor's: static spatial sizes where known, run-time sizes where they
        are None (a traced function with a signature `(batch, None, None, num_landmarks)`, as in
        `keraslm.export`). The codec's stride and sigma apply; its `input_shape` does not.

        Args:
            heatmaps: tensor `(batch, *spatial, num_landmarks)` with `ndim` spatial axes and a known
                number of landmarks.
            method: "quadratic" (the authors' per-axis parabola), "dark" (log-Newton step with the
                full Hessian on the Gaussian-smoothed heatmap) or "argmax".
            peak_weights: optional tensor broadcastable to `heatmaps` (e.g. `centre_prior`). The
                peak is the argmax of `heatmaps * peak_weights`; the sub-pixel refinement and the
                confidence use the unweighted heatmap around that peak.

        Returns:
            `(points, confidence)`: points `(batch, num_landmarks, ndim)` float32 in INPUT
            grid index units, (x, y[, z]) (input coordinate = stride * heatmap coordinate +
            (stride - 1) / 2); confidence `(batch, num_landmarks)` = the peak value.
        """
        if method not in METHODS:
            raise UsageError(f"`method` must be one of {METHODS}. Received: method={method!r}")
        heatmaps = ops.cast(ops.convert_to_tensor(heatmaps), "float32")
        shape = static_shape(heatmaps)
        if len(shape) != self.ndim + 2 or shape[-1] is None:
            raise UsageError(
                f"`heatmaps` must have shape (batch, {', '.join(['n'] * self.ndim)}, "
                f"num_landmarks) with a known num_landmarks. Received: heatmaps.shape={shape}")
        if any(n is None for n in shape[1:-1]):
            dynamic = ops.shape(heatmaps)
            grid = tuple(shape[1 + a] if shape[1 + a] is not None else dynamic[1 + a]
                         for a in range(self.ndim))
        else:
            grid = tuple(shape[1:-1])
        weighted = None
        if peak_weights is not None:
            peak_weights = ops.cast(ops.convert_to_tensor(peak_weights), "float32")
            weight_shape = static_shape(peak_weights)
            if len(weight_shape) != len(shape) or any(
                    w is not None and h is not None and w not in (1, h)
                    for w, h in zip(weight_shape[1:-1], shape[1:-1])):
                raise UsageError(
                    "`peak_weights` must broadcast to the heatmaps' grid "
                    f"(batch, {', '.join(str(n) for n in shape[1:-1])}, num_landmarks). "
                    f"Received: peak_weights.shape={weight_shape}")
            weighted = heatmaps * peak_weights
        return self._decode(heatmaps, grid, shape[-1], method, weighted)

    def centre_prior(self, spacing, sigma_mm):
        """Gaussian weights `(1, *output_shape, 1)` float32 (numpy) of each heatmap cell's
        distance from the centre of the input grid, for `decode(peak_weights=)`.

        The local stage's crops are centred on a coarse estimate, so the landmark's offset from
        the crop centre has the coarse stage's error distribution; weighting the heatmap by it
        before the argmax makes a far look-alike peak lose against a near one.

        Args:
            spacing: float or per-axis sequence (x, y[, z]). mm per input grid pixel.
            sigma_mm: float > 0. Standard deviation of the offset, mm.
        """
        prior = np.ones((1,) + self.output_shape + (1,), np.float64)
        for factor in self.centre_prior_factors(spacing, sigma_mm):
            prior = prior * factor
        return prior.astype(np.float32)

    def centre_prior_factors(self, spacing, sigma_mm):
        """`centre_prior` as one Gaussian factor per axis (it is separable): a list of ndim
        float32 arrays, the one of array axis a shaped `(1, ..., output_shape[a], ..., 1)`; their
        product broadcasts to the prior. A graph that multiplies them holds ndim short vectors
        instead of a per-pixel constant."""
        if not (isinstance(sigma_mm, (int, float)) and sigma_mm > 0):
            raise UsageError(f"`sigma_mm` must be a number > 0. Received: sigma_mm={sigma_mm!r}")
        spacing_xyz = np.broadcast_to(np.asarray(spacing, dtype=np.float64), (self.ndim,))
        factors = []
        for axis, n in enumerate(self.output_shape):  # array order; spacing in (x, y[, z])
            position = self.to_input(np.arange(n))  # input grid index
            offset_mm = ((position - (self.input_shape[axis] - 1) / 2.0)
                         * spacing_xyz[self.ndim - 1 - axis])
            shape = [1] * (self.ndim + 2)
            shape[1 + axis] = n
            factors.append(np.exp(-offset_mm ** 2 / (2.0 * float(sigma_mm) ** 2))
                           .reshape(shape).astype(np.float32))
        return factors

    def _checked_heatmaps(self, heatmaps):
        """float32 heatmaps on this codec's output grid, and their static shape."""
        heatmaps = ops.cast(ops.convert_to_tensor(heatmaps), "float32")
        shape = static_shape(heatmaps)
        if len(shape) != self.ndim + 2 or tuple(shape[1:-1]) != self.output_shape:
            raise UsageError(
                f"`heatmaps` must have shape (batch, {', '.join(map(str, self.output_shape))}, "
                f"num_landmarks) for this codec. Received: heatmaps.shape={shape}")
        return heatmaps, shape

    def spread(self, heatmaps, spacing, floor=SPREAD_FLOOR):
        """How far each heatmap's mass lies from its centre, in mm: an uncertainty feature.

        The root-mean-square distance from the centre of mass of `heatmap - floor * peak`
        (clipped at 0, so the flat background does not count): proportional to the width of a
        clean Gaussian peak (1.1 mm for a 2D Gaussian of sigma 1 mm), larger for an elongated,
        blurred or split (two look-alike places) response.

        Args:
            heatmaps: tensor `(batch, *output_shape, num_landmarks)`.
            spacing: float or per-axis sequence (x, y[, z]). mm per INPUT grid pixel.
            floor: float in [0, 1). Fraction of the peak below which values are ignored.

        Returns:
            `(batch, num_landmarks)` float32, mm.
        """
        heatmaps, shape = self._checked_heatmaps(heatmaps)
        spacing_xyz = np.broadcast_to(np.asarray(spacing, np.float64), (self.ndim,))
        spatial = tuple(range(1, self.ndim + 1))
        peak = ops.max(heatmaps, axis=spatial, keepdims=True)
        mass = ops.relu(heatmaps - floor * ops.relu(peak))
        mass = mass / ops.maximum(ops.sum(mass, axis=spatial, keepdims=True), 1e-12)
        variance = 0.0
        for axis, n in enumerate(self.output_shape):
            # mm along this axis of each heatmap pixel centre (input grid index * spacing).
            shape = [1] * (self.ndim + 2)
            shape[1 + axis] = n
            position = (self.to_input(np.arange(n, dtype=np.float64))
                        * spacing_xyz[self.ndim - 1 - axis]).astype(np.float32).reshape(shape)
            mean = ops.sum(mass * position, axis=spatial, keepdims=True)
            variance = variance + ops.sum(mass * ops.square(position - mean), axis=spatial)
        return ops.sqrt(ops.maximum(variance, 0.0))

    def second_peak(self, heatmaps, spacing, radius_mm):
        """How strongly another place responds: the highest value farther than `radius_mm`
        from each heatmap's peak, as a fraction of the peak - near 1 where two look-alike
        structures answer almost alike, and for one clean peak the value of its own flank at
        the radius (exp(-r^2 / 2 sigma^2): 0.14 at two sigmas), larger for a wide peak. So it
        grows both with a runner-up and with the peak's width (like `spread`, which it
        complements); an uncertainty feature.

        Args:
            heatmaps: tensor `(batch, *output_shape, num_landmarks)`.
            spacing: float or per-axis sequence (x, y[, z]). mm per INPUT grid pixel.
            radius_mm: float > 0.

        Returns:
            `(batch, num_landmarks)` float32 in [0, 1]; 0 where the peak is not positive.
        """
        heatmaps, shape = self._checked_heatmaps(heatmaps)
        if not radius_mm > 0:
            raise UsageError(f"`radius_mm` must be positive. Received: radius_mm={radius_mm}")
        spacing_xyz = np.broadcast_to(np.asarray(spacing, np.float64), (self.ndim,))
        num_landmarks = shape[-1]
        num = _product(self.output_shape)
        flat = ops.reshape(ops.moveaxis(heatmaps, -1, 1), (-1, num_landmarks, num))
        peak_index = ops.cast(ops.argmax(flat, axis=-1), "int32")  # (batch, L)
        peak = ops.max(flat, axis=-1)
        # Squared mm from each heatmap's peak, `(batch, *output_shape, L)`, built by broadcasting
        # one mm table per axis (no per-pixel constant: a SavedModel's graph stays small).
        distance2 = 0.0
        for axis, n in enumerate(self.output_shape):
            stride = _product(self.output_shape[axis + 1:])
            mm = (self.to_input(np.arange(n, dtype=np.float64))
                  * spacing_xyz[self.ndim - 1 - axis]).astype(np.float32)
            peak_position = ops.take(ops.convert_to_tensor(mm), (peak_index // stride) % n)
            along = [1] * (self.ndim + 2)
            along[1 + axis] = n
            distance2 = distance2 + ops.square(
                mm.reshape(along)
                - ops.reshape(peak_position, (-1,) + (1,) * self.ndim + (num_landmarks,)))
        outside = ops.where(distance2 > radius_mm ** 2, heatmaps, ops.full_like(heatmaps, -np.inf))
        second = ops.max(outside, axis=tuple(range(1, self.ndim + 1)))
        ratio = ops.where(peak > 0, ops.clip(second / ops.maximum(peak, 1e-12), 0.0, 1.0), 0.0)
        return ops.where(ops.isfinite(ratio), ratio, 0.0)

    def _decode(self, heatmaps, grid, num_landmarks, method, weighted=None):
        """Argmax (of `weighted` if given) + refinement; `grid` = heatmap spatial shape, ints or
        scalar int32 tensors."""
        num = _product(grid)

        def rows(tensor):  # (batch, L, num): one row per landmark, row-major over space.
            return ops.reshape(ops.moveaxis(tensor, -1, 1), (-1, num_landmarks, num))

        flat = rows(heatmaps)
        peak = ops.cast(ops.argmax(flat if weighted is None else rows(weighted), axis=-1), "int32")
        confidence = ops.take_along_axis(flat, peak[..., None], axis=-1)[..., 0]
        strides = [_product(grid[a + 1:]) for a in range(self.ndim)]
        index = [(peak // strides[a]) % grid[a] for a in range(self.ndim)]  # array order
        if method == "quadratic":
            offset = self._quadratic(flat, peak, index, strides, grid)
        elif method == "dark":
            offset = self._dark(flat, peak, index, strides, num_landmarks, grid)
        else:
            offset = [ops.zeros_like(confidence)] * self.ndim
        position = [ops.cast(index[a], "float32") + offset[a] for a in range(self.ndim)]
        points = ops.stack(position[::-1], axis=-1)  # array order -> (x, y[, z])
        return self.to_input(points), confidence

    def _quadratic(self, flat, peak, index, strides, grid):
        """Per-axis parabola through the peak and its two neighbours (array order offsets)."""
        num = _product(grid)
        neighbours = []
        for a in range(self.ndim):
            neighbours += [peak - strides[a], peak + strides[a]]
        gather = ops.clip(ops.stack(neighbours, axis=-1), 0, num - 1)
        values = ops.take_along_axis(flat, gather, axis=-1)  # (batch, L, 2 ndim)
        centre = ops.take_along_axis(flat, peak[..., None], axis=-1)[..., 0]
        offsets = []
        for a in range(self.ndim):
            minus, plus = values[..., 2 * a], values[..., 2 * a + 1]
            denom = minus - 2.0 * centre + plus
            interior = ops.logical_and(index[a] > 0, index[a] < grid[a] - 1)
            ok = ops.logical_and(interior, denom < -1e-12)
            safe = ops.where(ok, denom, -ops.ones_like(denom))
            delta = ops.clip(0.5 * (minus - plus) / safe, -0.5, 0.5)
            offsets.append(ops.where(ok, delta, ops.zeros_like(delta)))
        return offsets

    def _dark(self, flat, peak, index, strides, num_landmarks, grid):
        """DARK: one Newton step on the log of the locally smoothed heatmap; the quadratic fit
        where the smoothing window would reach outside the grid."""
        sigma = np.asarray(self.sigma, dtype=np.float64)
        if sigma.ndim == 1 and sigma.shape[0] != num_landmarks:
            raise UsageError(
                f"the codec has {sigma.shape[0]} per-landmark sigmas but the heatmaps have "
                f"{num_landmarks} channels. Received: sigma={self.sigma!r}")
        sigma = np.broadcast_to(sigma, (num_landmarks,))
        radius = int(math.ceil(3.0 * float(sigma.max())))
        half = radius + 1
        width = 2 * half + 1
        # Gather a (2*half + 1)^ndim patch around every peak (zero outside the grid).
        rel = np.stack(np.meshgrid(*[np.arange(-half, half + 1)] * self.ndim, indexing="ij"),
                       axis=-1).reshape(-1, self.ndim).astype(np.int32)  # (M, ndim) array order
        flat_index = None
        inside = None
        for a in range(self.ndim):
            pos = index[a][..., None] + rel[:, a]  # (batch, L, M)
            ok = ops.logical_and(pos >= 0, pos < grid[a])
            pos = ops.clip(pos, 0, grid[a] - 1)
            flat_index = (pos * strides[a] if flat_index is None
                          else flat_index + pos * strides[a])
            inside = ok if inside is None else ops.logical_and(inside, ok)
        patch = ops.take_along_axis(flat, flat_index, axis=-1)
        patch = ops.where(inside, patch, ops.zeros_like(patch))
        patch = ops.reshape(patch, (-1, num_landmarks, *([width] * self.ndim)))
        # Smooth: valid correlation with a normalised Gaussian along each axis, leaving the
        # 3^ndim stencil around the peak. band[l, i, j] = kernel_l[j - i].
        taps = np.arange(-radius, radius + 1, dtype=np.float64)
        kernel = np.exp(-taps[None, :] ** 2 / (2.0 * sigma[:, None] ** 2))
        kernel /= kernel.sum(axis=1, keepdims=True)
        band = np.zeros((num_landmarks, 3, width), dtype=np.float32)
        for i in range(3):
            band[:, i, i:i + 2 * radius + 1] = kernel
        letters = "ijk"[:self.ndim]
        for a in range(self.ndim):
            src = "bl" + letters
            dst = src.replace(letters[a], "q")
            patch = ops.einsum(f"{src},lq{letters[a]}->{dst}", patch, band)
        f = ops.log(ops.maximum(patch, 1e-10))  # (batch, L, 3, ..., 3)

        def at(*steps):  # value at the stencil offset (array order), steps in {-1, 0, 1}
            return f[(slice(None), slice(None)) + tuple(1 + s for s in steps)]

        def unit(a, s):
            return [s if b == a else 0 for b in range(self.ndim)]

        centre = at(*[0] * self.ndim)
        grad = [(at(*unit(a, 1)) - at(*unit(a, -1))) / 2.0 for a in range(self.ndim)]
        hess = [[None] * self.ndim for _ in range(self.ndim)]
        for a in range(self.ndim):
            hess[a][a] = at(*unit(a, 1)) - 2.0 * centre + at(*unit(a, -1))
            for b in range(a + 1, self.ndim):
                def two(sa, sb, a=a, b=b):
                    steps = [0] * self.ndim
                    steps[a], steps[b] = sa, sb
                    return at(*steps)
                hess[a][b] = hess[b][a] = (two(1, 1) - two(1, -1) - two(-1, 1)
                                           + two(-1, -1)) / 4.0
        newton = _newton_offset(hess, grad)
        # Zero padding would bias the smoothing near the border: use the parabola there.
        interior = ops.all(inside, axis=-1)
        quadratic = self._quadratic(flat, peak, index, strides, grid)
        return [ops.where(interior, n, q) for n, q in zip(newton, quadratic)]


def _product(sizes):
    """Product of sizes that are ints or scalar tensors (an int when all are ints)."""
    result = 1
    for size in sizes:
        result = result * size
    return result


def _newton_offset(hess, grad):
    """`-H^-1 g` for symmetric 2x2 / 3x3 H given as nested lists of `(batch, L)` tensors, via
    the adjugate; 0 where H is not negative definite; clipped to [-1, 1]."""
    ndim = len(grad)
    if ndim == 2:
        (a, b), (_, d) = hess
        det = a * d - b * b
        adj = [[d, -b], [-b, a]]
        negdef = ops.logical_and(a < 0, det > 0)
    else:
        (a, b, c), (_, d, e), (_, _, f) = hess
        adj = [[d * f - e * e, c * e - b * f, b * e - c * d],
               [c * e - b * f, a * f - c * c, b * c - a * e],
               [b * e - c * d, b * c - a * e, a * d - b * b]]
        det = a * adj[0][0] + b * adj[0][1] + c * adj[0][2]
        negdef = ops.logical_and(ops.logical_and(a < 0, a * d - b * b > 0), det < 0)
    safe = ops.where(negdef, det, ops.ones_like(det))
    offsets = []
    for i in range(ndim):
        step = -sum(adj[i][j] * grad[j] for j in range(ndim)) / safe
        step = ops.clip(step, -1.0, 1.0)
        offsets.append(ops.where(negdef, step, ops.zeros_like(step)))
    return offsets
