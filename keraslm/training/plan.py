"""The training plan: the whole-image grid and the training settings derived from the dataset
and the compute budget, each value with the reason it has (nnU-Net's lesson: plan from the
data's own statistics).

`plan_grid` fits the grid to the images' physical extent: an isotropic spacing and a shape per
axis (a multiple of the network's size divisor) whose field covers the largest image along every
axis, the finest within a voxel budget (`DEFAULT_VOXEL_BUDGET`: as many voxels as 64 x 64 in 2D
and 32 x 64 x 64 in 3D). Given `--grid-shape`, the spacing is the smallest at which every image
fits; given `--grid-spacing`, the shape is the smallest that covers every image.

The batch size comes from memory as well (`activation_bytes_per_sample`,
`available_memory_bytes`, `memory_batch_limit`): the network is traced once at the run's input
shape, the tensors its forward pass computes for one sample are summed (what a training step
keeps for the backward pass), and the batch is capped so that twice that per sample fits in
half the memory the device has. On the CPUs keraslm is measured on this never binds; on a GPU
with a fine 3D grid it does.

`TrainingPlan` holds the grid and the training values with their reasons; `keraslm-train`
prints it at start-up (`--plan-only`: and stops) and keeps it in `config.json` (`plan`).
"""
import dataclasses
import json
import math
import os

import numpy as np

from keraslm.errors import KeraslmError
from keraslm.files import read_cache, write_json

#: Voxels of the grid a plan fits when neither a grid shape nor a spacing is given, per ndim.
DEFAULT_VOXEL_BUDGET = {2: 64 * 64, 3: 32 * 64 * 64}


def largest_extent_mm(sizes, spacings):
    """np.ndarray `(ndim,)`: the largest physical extent (mm) per axis x, y[, z] of images of
    `sizes` pixels and `spacings` mm per pixel (arrays `(num_images, ndim)`)."""
    sizes = np.asarray(sizes, float)
    return (sizes * np.asarray(spacings, float).reshape(sizes.shape)).max(axis=0)


def plan_grid(extent_mm, divisor, grid_shape=None, grid_spacing=None, voxel_budget=None):
    """The grid (shape in array order, isotropic spacing in mm) for images whose largest extent
    per axis (x, y[, z]) is `extent_mm`.

    Args:
        extent_mm: sequence of float. Largest physical extent per axis, x first
            (`largest_extent_mm`).
        divisor: int. Every grid size must be a multiple of it (the network's size divisor).
        grid_shape: tuple of int, optional. Given: the spacing is the smallest at which the
            extent fits.
        grid_spacing: float, optional. Given: the shape is the smallest multiple of `divisor`
            per axis that covers the extent.
        voxel_budget: int, optional. With neither given: the largest number of grid voxels;
            default `DEFAULT_VOXEL_BUDGET`.

    Returns:
        (tuple of int shape in array order, float spacing in mm).

    Examples:
        >>> plan_grid([182.0, 218.0, 182.0], 8)
        ((48, 56, 48), 3.89...)
    """
    extent = np.asarray(extent_mm, float)
    ndim = len(extent)
    if np.any(~np.isfinite(extent)) or np.any(extent <= 0):
        raise KeraslmError(f"the images' physical extent must be positive: {extent.tolist()} mm")
    if grid_shape is not None and grid_spacing is not None:
        return tuple(int(n) for n in grid_shape), float(grid_spacing)
    if grid_shape is not None:
        sizes_xyz = np.array(list(reversed(grid_shape)), float)
        return tuple(int(n) for n in grid_shape), float(np.max(extent / sizes_xyz))

    def covering(spacing):
        steps = np.ceil(extent / spacing / divisor - 1e-6).astype(int) * divisor
        return tuple(int(n) for n in steps[::-1])  # Array order.

    if grid_spacing is not None:
        return covering(float(grid_spacing)), float(grid_spacing)
    budget = int(voxel_budget or DEFAULT_VOXEL_BUDGET[ndim])
    if budget < divisor ** ndim:
        raise KeraslmError(f"a voxel budget of {budget} is below one block of the network's "
                           f"size divisor ({divisor}^{ndim})")
    # The finest spacing within the budget: covering() only changes where an axis's extent is
    # a whole number of divisor blocks, so the answer is one of those spacings (or the
    # isotropic spacing exactly on budget, which is a lower bound).
    lower = float(np.prod(extent) / budget) ** (1.0 / ndim)
    candidates = [lower] + [float(e) / (k * divisor) for e in extent
                            for k in range(1, int(np.ceil(e / (lower * divisor))) + 1)]
    spacing = min(c for c in candidates
                  if c >= lower and math.prod(covering(c)) <= budget)
    return covering(spacing), spacing


#: Op types whose outputs hold no new activation memory (constants, variables, aliases).
_NO_ACTIVATION_OPS = frozenset({"Const", "Placeholder", "ReadVariableOp", "VarHandleOp",
                                "Identity", "IdentityN", "NoOp", "Shape", "Reshape",
                                "StridedSlice", "Pack", "Cast"})
#: Share of the device memory a batch's activations may take, and bytes kept per forward byte
#: (the forward tensors, kept for the backward pass, and their gradients).
MEMORY_SHARE, BACKWARD_FACTOR = 0.5, 2.0


#: The cache of traced activation sizes (`activation_bytes_per_sample` with a cache folder).
MEMORY_CACHE_FILE = "activation_memory.json"


def activation_bytes_per_sample(network, input_shape, channels=1, cache_folder=None):
    """Bytes of the tensors the network's forward pass computes for one input of `input_shape`
    (array order, without channels): every floating-point op output of the traced graph
    except constants, variables and aliases - what a training step keeps for its backward
    pass, an upper bound (TensorFlow frees or fuses some). In the network's compute dtype.

    With `cache_folder`, the answer is kept in `<cache_folder>/activation_memory.json` per
    TensorFlow version, network configuration, dtype policy and input shape: tracing takes 1-2 s,
    and most runs repeat a configuration. TensorFlow-only (the traced graph; `keras.ops` has no
    graph to read).
    """
    import tensorflow as tf

    key = " | ".join([f"TF {tf.__version__}", f"input {tuple(int(n) for n in input_shape)}",
                      f"channels {int(channels)}", f"policy {network.dtype_policy.name}",
                      json.dumps(network.get_config(), sort_keys=True, default=str)])
    path = os.path.join(cache_folder, MEMORY_CACHE_FILE) if cache_folder else None
    cache = read_cache(path) if path else {}
    if key in cache:
        return int(cache[key])
    total = _traced_activation_bytes(network, input_shape, channels)
    if path:
        os.makedirs(cache_folder, exist_ok=True)
        write_json(path, {**read_cache(path), key: total}, indent=1)
    return total


def _traced_activation_bytes(network, input_shape, channels):
    import tensorflow as tf

    spec = tf.TensorSpec([1, *[int(n) for n in input_shape], int(channels)],
                         getattr(network, "compute_dtype", None) or "float32")
    graph = tf.function(lambda x: network(x, training=True)).get_concrete_function(spec).graph
    total = 0
    for op in graph.get_operations():
        if op.type in _NO_ACTIVATION_OPS:
            continue
        for tensor in op.outputs:
            if tensor.dtype.is_floating and tensor.shape.is_fully_defined():
                total += tensor.shape.num_elements() * tensor.dtype.size
    return int(total)


def available_memory_bytes():
    """(bytes, where) of the memory a training step may use: the first GPU's memory limit
    where TensorFlow sees a GPU, else the RAM the system reports available (Linux
    /proc/meminfo MemAvailable, else physical pages); (None, reason) when unknown."""
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        try:  # TF-internal: the public API gives no GPU's total memory.
            from tensorflow.python.client import device_lib

            limits = [d.memory_limit for d in device_lib.list_local_devices()
                      if d.device_type == "GPU"]
            if limits:
                return int(limits[0]), "GPU memory limit"
        except Exception:  # noqa: BLE001 - the estimate is optional
            pass
        return None, "the GPU's memory is not known"
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, "RAM available"
    except OSError:
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "physical RAM"
    except (ValueError, OSError, AttributeError):
        return None, "the RAM size is not known"


def memory_batch_limit(bytes_per_sample, available_bytes):
    """int or None. The largest batch whose activations (`bytes_per_sample` of forward tensors
    per sample, `BACKWARD_FACTOR` times that kept in a step) fit in `MEMORY_SHARE` of
    `available_bytes`; at least 1; None when the memory is not known."""
    if available_bytes is None or bytes_per_sample <= 0:
        return None
    return max(1, int(MEMORY_SHARE * available_bytes // (BACKWARD_FACTOR * bytes_per_sample)))


@dataclasses.dataclass(frozen=True)
class TrainingPlan:
    """A run's plan: its grid and training values, each with the reason it has.

    Args:
        grid_shape: tuple of int, array order.
        grid_spacing: float. mm per grid step.
        extent_mm: tuple of float. The images' largest physical extent per axis (x, y[, z]).
        values: dict. Training values (sigma, heatmap_scale, learning_rate, batch_size,
            steps, ...).
        reasons: dict. Per key of `values` and for "grid", why it has its value.
    """

    grid_shape: tuple
    grid_spacing: float
    extent_mm: tuple
    values: dict
    reasons: dict

    @property
    def field_mm(self):
        """tuple of float. The grid's physical field per axis (x, y[, z])."""
        return tuple(float(n) * self.grid_spacing for n in reversed(self.grid_shape))

    def lines(self):
        """list of str. The plan as the lines `keraslm-train` prints."""
        def mm(values):
            return " x ".join(f"{v:.0f}" for v in values) + " mm"

        lines = [f"grid {' x '.join(str(n) for n in self.grid_shape)} at "
                 f"{self.grid_spacing:.3g} mm: field {mm(self.field_mm)} (x, y{', z' if len(self.grid_shape) == 3 else ''}) "
                 f"around images of up to {mm(self.extent_mm)} ({self.reasons['grid']})"]
        for key, value in self.values.items():
            lines.append(f"{key} {value:g}" if isinstance(value, float) else f"{key} {value}")
            if key in self.reasons:
                lines[-1] += f" ({self.reasons[key]})"
        return lines

    def to_dict(self):
        return {"grid_shape": list(self.grid_shape), "grid_spacing": self.grid_spacing,
                "extent_mm": list(self.extent_mm), "field_mm": list(self.field_mm),
                "values": dict(self.values), "reasons": dict(self.reasons)}
