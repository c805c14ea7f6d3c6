"""The architectures keraslm builds, as one registry.

An architecture is one module under `keraslm.models` holding its `LandmarkModel` subclass, its
`PRESETS` ({"paper": {2: settings, 3: settings}, "small": {...}}) and one
`register_architecture(Architecture(...))` call; `keraslm.models` imports it. The command-line
choices (`--architecture`), presets, the paper's learning rates, the model summary and
`build_model` all derive from `ARCHITECTURES`.
"""
import copy
import dataclasses
from typing import Any, Dict

from keraslm.errors import UsageError
from keraslm.models import blocks
from keraslm.models.presets import PRESET_NAMES


@dataclasses.dataclass(frozen=True)
class Architecture:
    """One registered architecture.

    Args:
        name: str. The `--architecture` / `build_model` name.
        model_class: the `LandmarkModel` subclass; its constructor takes `(ndim, num_landmarks,
            input_shape=..., **settings)`.
        presets: dict. preset name -> {2: settings, 3: settings}, for every `PRESET_NAMES`.
        paper_caffe_learning_rate: float. The paper's (Caffe) learning rate for the "paper"
            training preset (`keraslm.training.presets`).
        description: str. One line for `--help`.
    """

    name: str
    model_class: Any
    presets: Dict[str, Dict[int, dict]]
    paper_caffe_learning_rate: float
    description: str = ""


#: name -> Architecture, in registration order.
ARCHITECTURES = {}


def register_architecture(architecture):
    """Adds `architecture` to the registry after checking its presets. Returns it."""
    if architecture.name in ARCHITECTURES:
        raise UsageError(f"an architecture named {architecture.name!r} is registered already")
    for preset in PRESET_NAMES:
        if set(architecture.presets.get(preset, {})) != {2, 3}:
            raise UsageError(f"architecture {architecture.name!r}: preset {preset!r} needs "
                             "settings for ndim 2 and 3")
    ARCHITECTURES[architecture.name] = architecture
    return architecture


def get_architecture(name):
    """The registered `Architecture` called `name`; a UsageError naming the choices if none."""
    if name not in ARCHITECTURES:
        raise UsageError(
            f"Unknown `architecture`. Expected one of {sorted(ARCHITECTURES)}. "
            f"Received: architecture={name!r}"
        )
    return ARCHITECTURES[name]


def get_preset(preset, architecture, ndim):
    """A fresh copy of the settings of one preset.

    Args:
        preset: str. `"paper"` or `"small"` (`keraslm.models.presets`).
        architecture: str. a registered architecture name.
        ndim: int. number of spatial dimensions, 2 or 3.

    Raises:
        UsageError: naming `preset` when it is unknown.
    """
    if preset not in PRESET_NAMES:
        raise UsageError(
            f"Unknown `preset`. Expected one of {sorted(PRESET_NAMES)}. Received: preset={preset!r}"
        )
    return copy.deepcopy(get_architecture(architecture).presets[preset][ndim])


def build_model(architecture, ndim, num_landmarks, preset="paper", input_shape=None,
                **overrides):
    """Build a heatmap regression network from a preset, with settings overridden by keyword.

    Args:
        architecture: str. a registered name (`ARCHITECTURES`): `"downsampling"`, `"convonly"`,
            `"unet"`, `"scn"`, `"scn2019"`.
        ndim: int. number of spatial dimensions, 2 or 3.
        num_landmarks: int. number of heatmaps (output channels), >= 1.
        preset: str. `"paper"` (Payer et al. 2016, Section 3) or `"small"` (CPU-sized); see
            `keraslm.models.presets`.
        input_shape: tuple or None. `(*spatial, channels)` without the batch axis; spatial sizes
            may be None and must otherwise be divisible by the model's `size_divisor`. Default
            `(None,) * ndim + (1,)`.
        **overrides: any setting of the preset (e.g. `filters=16`, `kernel_size=(3, 3, 1)`,
            `kernel_initializer="he_normal"`) and `name`.

    Returns:
        a `LandmarkModel` mapping `(batch, *spatial, channels)` images to
        `(batch, *spatial / output_stride, num_landmarks)` heatmaps, with attributes
        `architecture`, `ndim`, `num_landmarks`, `output_stride` and `size_divisor`.

    Raises:
        ValueError: naming the argument for an unknown architecture, preset or setting, an
            `ndim` other than 2 or 3, `num_landmarks < 1` or an input size violating the constraint.

    Examples:
    >>> model = build_model("unet", 2, 37, preset="small", input_shape=(128, 96, 1))
    >>> model.output_shape
    (None, 128, 96, 37)
    >>> build_model("downsampling", 3, 28).output_stride
    2
    """
    entry = get_architecture(architecture)
    blocks.check_ndim(ndim)
    settings = get_preset(preset, architecture, ndim)
    allowed = set(settings) | {"name"}
    unknown = sorted(set(overrides) - allowed)
    if unknown:
        raise UsageError(
            f"Unknown setting {unknown[0]!r} for architecture={architecture!r}. Expected one "
            f"of {sorted(allowed)}. Received: {unknown[0]}={overrides[unknown[0]]!r}"
        )
    settings.update(overrides)
    return entry.model_class(ndim, num_landmarks, input_shape=input_shape, **settings)
