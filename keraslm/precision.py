"""Numeric precision of the network's compute: float32, bfloat16 or float16, chosen for the machine.

`choose_precision("auto")` picks what the hardware runs fast and says why:

- bfloat16 on CPUs with AMX-BF16 or AVX512-BF16 (oneDNN's bfloat16 convolution kernels) and on
  NVIDIA GPUs of compute capability 8.0 or newer;
- float16 on older NVIDIA GPUs with tensor cores (compute capability 7.0 to 7.x);
- float32 otherwise (TensorFlow emulates bfloat16 on other x86 CPUs, slowly).

Only the network's compute runs in reduced precision: a choice maps to a Keras mixed policy
(`mixed_bfloat16`, `mixed_float16`), whose variables - and so the optimizer state - stay
float32. Loss, heatmap targets, augmentation geometry and decoding are float32 in keraslm
regardless (the trainer and the heatmap codec cast the network output to float32).

`with_precision(network, precision)` rebuilds a network under another policy with the same
weights: training saves and exports a float32 copy (portable to any server), and prediction
can run a saved network in bfloat16.
"""
import dataclasses
import os
import platform

import keras

from keraslm.errors import KeraslmError

PRECISIONS = ("auto", "float32", "bfloat16", "float16")
POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}
_CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


@dataclasses.dataclass(frozen=True)
class PrecisionChoice:
    """A resolved precision.

    Attributes:
        requested: str. What was asked for ("auto" or a precision).
        precision: str. "float32", "bfloat16" or "float16".
        reason: str. Why, in words (the hardware seen, or "requested").
    """

    requested: str
    precision: str
    reason: str

    @property
    def policy(self):
        """str. The Keras dtype policy name."""
        return POLICIES[self.precision]

    def to_dict(self):
        return dataclasses.asdict(self)


def cpu_description(cpuinfo_path="/proc/cpuinfo"):
    """(model name, set of flags) of this machine's CPU; flags are empty where unknown
    (no /proc/cpuinfo, e.g. macOS or Windows)."""
    model, flags = None, None
    try:
        with open(cpuinfo_path, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model is None:
                    model = value.strip()
                elif key in ("flags", "Features") and flags is None:
                    flags = set(value.split())
                if model is not None and flags is not None:
                    break
    except OSError:
        pass
    return model or platform.processor() or platform.machine(), flags or set()


def gpu_compute_capabilities():
    """Compute capabilities `(major, minor)` of the visible GPUs (empty list on a CPU)."""
    import tensorflow as tf  # TF-only edge: device discovery.

    capabilities = []
    for device in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(device)
        capability = details.get("compute_capability")
        capabilities.append(tuple(capability) if capability else (0, 0))
    return capabilities


def choose_precision(requested="auto", gpu_capabilities=None, cpu=None):
    """Resolves a precision setting.

    Args:
        requested: str. "auto", "float32", "bfloat16" or "float16".
        gpu_capabilities: list of (major, minor), optional. Default: the visible GPUs'.
        cpu: (model, flags), optional. Default: `cpu_description()`.

    Returns:
        PrecisionChoice.

    Raises:
        KeraslmError: an unknown setting.
    """
    if requested not in PRECISIONS:
        raise KeraslmError(f"`precision` must be one of {PRECISIONS}. Received: precision={requested!r}")
    if requested != "auto":
        return PrecisionChoice(requested, requested, "requested")
    if gpu_capabilities is None:
        gpu_capabilities = gpu_compute_capabilities()
    if gpu_capabilities:
        lowest = min(gpu_capabilities)
        name = f"GPU compute capability {lowest[0]}.{lowest[1]}"
        if lowest >= (8, 0):
            return PrecisionChoice(requested, "bfloat16", f"{name} (>= 8.0: bfloat16 tensor cores)")
        if lowest >= (7, 0):
            return PrecisionChoice(requested, "float16", f"{name} (7.x: float16 tensor cores)")
        return PrecisionChoice(requested, "float32", f"{name} (< 7.0: no tensor cores)")
    model, flags = cpu if cpu is not None else cpu_description()
    found = [flag for flag in _CPU_BF16_FLAGS if flag in flags]
    if found:
        return PrecisionChoice(requested, "bfloat16", f"CPU {model} has {', '.join(found)}")
    return PrecisionChoice(requested, "float32",
                           f"CPU {model} has neither {' nor '.join(_CPU_BF16_FLAGS)}")


class dtype_policy:
    """Context manager: Keras' global dtype policy set to `policy` inside, restored after."""

    def __init__(self, policy):
        self.policy = policy

    def __enter__(self):
        self._previous = keras.mixed_precision.global_policy()
        keras.mixed_precision.set_global_policy(self.policy)
        return self

    def __exit__(self, *exc_info):
        keras.mixed_precision.set_global_policy(self._previous)


def network_precision(network):
    """str. The precision a network computes in ("float32", "bfloat16" or "float16")."""
    return keras.backend.standardize_dtype(network.dtype_policy.compute_dtype)


def with_precision(network, precision):
    """The network rebuilt to compute in `precision`, with the same (float32) weights; the
    network itself when it already does.

    Args:
        network: keras.Model built by `keraslm.models.build_model` (or any model whose class
            rebuilds it from `get_config()`).
        precision: str or PrecisionChoice. "float32", "bfloat16" or "float16".
    """
    if isinstance(precision, PrecisionChoice):
        precision = precision.precision
    if precision not in POLICIES:
        raise KeraslmError(f"`precision` must be one of {tuple(POLICIES)}. Received: precision={precision!r}")
    if network_precision(network) == precision:
        return network
    with dtype_policy(POLICIES[precision]):
        clone = network.__class__.from_config(network.get_config())
    clone.set_weights(network.get_weights())
    return clone


def describe_machine():
    """One line naming the CPU, its bfloat16 flags and the visible GPUs (for logs and benchmarks)."""
    model, flags = cpu_description()
    found = [flag for flag in _CPU_BF16_FLAGS if flag in flags] or ["no bfloat16 flags"]
    gpus = gpu_compute_capabilities()
    gpu_text = ", GPUs: " + ", ".join(f"cc {a}.{b}" for a, b in gpus) if gpus else ", no GPU"
    return f"CPU {model} ({os.cpu_count()} cores; {', '.join(found)}){gpu_text}"
