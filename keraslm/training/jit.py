"""Whether XLA compiles the training step's two parts: the device stage and the network.

`choose_jit(mode, trainer, grid_shape, batch_size)`:

- "on": XLA for the whole step (the device stage included); "off": XLA for nothing.
- "auto" on a GPU: XLA for the whole step.
- "auto" on a CPU: measured. Whether XLA pays differs by CPU and precision: XLA's CPU backend
  does not use oneDNN's kernels, so its convolutions can be several times slower (and it never
  reaches oneDNN's bfloat16 / AMX kernels), while its fused resampling in the device stage is
  faster. A short probe times each part both ways with the run's own shapes, network and
  precision - the device stage (`trainer.augment`) and the network's forward + backward pass -
  and keeps the faster; the answer is cached per CPU model, TensorFlow version, network and
  shapes in `<cache>/jit_probe.json`, so the probe runs once per machine and configuration.

The network can only be compiled with XLA together with the device stage (the whole step is
one `tf.function`), so the outcomes are: whole step, device stage only, or nothing.

TF-only edge: `tf.function(jit_compile=...)`.
"""
import dataclasses
import json
import os
import time

import keras
import numpy as np
import tensorflow as tf

from keraslm.errors import KeraslmError
from keraslm.files import read_cache, write_json
from keraslm.precision import cpu_description

JIT_MODES = ("auto", "on", "off")
PROBE_FILE = "jit_probe.json"


@dataclasses.dataclass(frozen=True)
class JitChoice:
    """Where XLA is used in the training step.

    Attributes:
        network: bool. XLA for the whole step (`compile(jit_compile=True)`).
        device_stage: bool. XLA for augmentation and heatmap rendering.
        reason: str. Why (requested, GPU, or the probe's timings).
    """

    network: bool
    device_stage: bool
    reason: str

    def to_dict(self):
        return dataclasses.asdict(self)


def _seconds_per_call(function, arguments, repeats=3, give_up_after=None):
    """Median wall time of `function(*arguments)` after one warm-up (compiling) call; stops early
    once a timed call takes longer than `give_up_after` seconds."""
    tf.nest.map_structure(lambda t: t.numpy(), function(*arguments))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        tf.nest.map_structure(lambda t: t.numpy(), function(*arguments))
        times.append(time.perf_counter() - start)
        if give_up_after is not None and times[-1] > give_up_after:
            break
    return float(np.median(times))


def probe_inputs(trainer, grid_shape, batch_size, seed=0):
    """A random batch shaped like the training batches: grid images `(batch, *grid_shape, 1)`
    and grid points `(batch, L, ndim)` inside the grid."""
    rng = np.random.default_rng(seed)
    shape = tuple(grid_shape)
    images = rng.normal(size=(batch_size, *shape, 1)).astype(np.float32)
    size = np.asarray(shape[::-1], np.float32)
    points = rng.uniform(0.25, 0.75, (batch_size, trainer.network.num_landmarks, len(shape))) * size
    return tf.constant(images), tf.constant(points.astype(np.float32))


def measure(trainer, grid_shape, batch_size):
    """Times the device stage and the network's forward + backward pass with and without XLA.

    Returns:
        dict of seconds per call: device_stage_xla, device_stage_plain, network_xla,
        network_plain.
    """
    images, points = probe_inputs(trainer, grid_shape, batch_size)
    generator = keras.random.SeedGenerator(1)  # Not the trainer's: its stream stays untouched.

    def augment(images, points):
        return trainer.augment(images, points, seed_generator=generator)

    timings = {}
    for name, jit in (("plain", False), ("xla", True)):
        timings[f"device_stage_{name}"] = _seconds_per_call(
            tf.function(augment, jit_compile=jit), (images, points))
    network_images, targets, weights = augment(images, points)
    network = trainer.network
    from keraslm.training.trainer import weighted_l2

    def forward_backward(images, targets, weights):
        with tf.GradientTape() as tape:
            loss = weighted_l2(network(images, training=False), targets, weights)
        return tape.gradient(loss, network.trainable_variables)

    arguments = (network_images, targets, weights)
    timings["network_plain"] = _seconds_per_call(tf.function(forward_backward), arguments)
    timings["network_xla"] = _seconds_per_call(
        tf.function(forward_backward, jit_compile=True), arguments,
        give_up_after=2.0 * timings["network_plain"])
    return timings


def _probe_key(trainer, grid_shape, batch_size):
    model, _ = cpu_description()
    network = trainer.network
    config = json.dumps(network.get_config(), sort_keys=True, default=str)
    return " | ".join([
        model, f"{os.cpu_count()} cores", f"TF {tf.__version__}", type(trainer).__name__,
        f"grid {tuple(grid_shape)}", f"network input {tuple(trainer.grid_shape)}",
        f"batch {batch_size}",
        f"policy {network.dtype_policy.name}", config,
    ])


def choose_jit(mode, trainer, grid_shape, batch_size, cache_folder=None, on_gpu=None):
    """Resolves the `jit` setting of a training run (see the module docstring).

    Args:
        mode: str. "auto", "on" or "off".
        trainer: HeatmapTrainer. Built, with its network in the run's precision.
        grid_shape: tuple of int. Spatial shape of the training batches' images (a local
            stage: the fine grid, which the trainer crops).
        batch_size: int. Training images per step.
        cache_folder: str, optional. Where `jit_probe.json` lives; None: no cache.
        on_gpu: bool, optional. Default: whether TensorFlow sees a GPU.

    Returns:
        JitChoice.
    """
    if mode not in JIT_MODES:
        raise KeraslmError(f"`jit` must be one of {JIT_MODES}. Received: jit={mode!r}")
    if mode == "on":
        return JitChoice(True, True, "requested: XLA for the whole step")
    if mode == "off":
        return JitChoice(False, False, "requested: no XLA")
    if on_gpu is None:
        on_gpu = bool(tf.config.list_physical_devices("GPU"))
    if on_gpu:
        return JitChoice(True, True, "GPU: XLA for the whole step")
    key = _probe_key(trainer, grid_shape, batch_size)
    path = os.path.join(cache_folder, PROBE_FILE) if cache_folder else None
    cache = read_cache(path) if path else {}
    timings, source = cache.get(key), "cached probe"
    if timings is None:
        timings, source = measure(trainer, grid_shape, batch_size), "probe"
        if path:
            os.makedirs(cache_folder, exist_ok=True)
            cache = {**read_cache(path), key: timings}
            write_json(path, cache, indent=1)
    device_xla = timings["device_stage_xla"] < timings["device_stage_plain"]
    # Whole-step XLA also compiles the device stage: compare the two parts together.
    whole = timings["network_xla"] + timings["device_stage_xla"]
    split = timings["network_plain"] + min(timings["device_stage_xla"], timings["device_stage_plain"])
    network_xla = whole < split

    def ms(name):
        return f"{1000 * timings[name]:.0f}"

    reason = (f"{source} on this CPU: device stage {ms('device_stage_xla')} ms with XLA vs "
              f"{ms('device_stage_plain')} ms without, network forward+backward "
              f"{ms('network_xla')} vs {ms('network_plain')} ms")
    return JitChoice(network_xla, device_xla or network_xla, reason)
