"""Weight counts and FLOPs of the keraslm networks; `python -m keraslm.models.summary` prints them.

FLOPs are 2 x the multiply-accumulates of all convolutions for one image (batch 1) in one
forward pass; pooling, upsampling, activations and products add well under 1 % and are not
counted. Input sizes follow the paper: 2D height 256 (ConvOnly-Net 128), as square images;
3D height 128 as 40 x 128 x 72 voxels in array order (z, y, x): the paper's 294 x 512 x 72
(x, y, z) hand MR volumes at 0.45 x 0.45 x 0.9 mm resampled to about 1.8 mm and rounded to
multiples of 8.
"""
import math

import keras

from keraslm.errors import UsageError
from keraslm.models.registry import ARCHITECTURES, build_model

#: The paper's Table 1: weights relative to SpatialConfiguration-Net, 2D, 37 landmarks.
PAPER_TABLE1 = {"downsampling": 1.8, "convonly": 8.7, "unet": 2.0, "scn": 1.0}

#: Spatial input size per (preset, ndim, architecture) for the FLOP counts.
INPUT_SIZES = {
    ("paper", 2): {"convonly": (128, 128), None: (256, 256)},
    ("paper", 3): {None: (40, 128, 72)},
    ("small", 2): {None: (128, 128)},
    ("small", 3): {None: (32, 64, 64)},
}

#: Landmark counts of the paper's datasets: 2D hand radiographs, 3D hand MR.
NUM_LANDMARKS = {2: 37, 3: 28}


def input_size(preset, ndim, architecture):
    """Spatial input size used for FLOP counts and benchmarks.

    Args:
        preset: str. `"paper"` or `"small"`.
        ndim: int. 2 or 3.
        architecture: str. architecture name.
    """
    sizes = INPUT_SIZES[(preset, ndim)]
    return sizes.get(architecture, sizes[None])


def conv_flops(model):
    """FLOPs (2 x multiply-accumulates) of all convolutions of a model with static shapes.

    Args:
        model: keras.Model. a model built with a fully static input shape (batch excluded).
    """
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D | keras.layers.Conv3D):
            spatial = layer.output.shape[1:-1]
            if any(d is None for d in spatial):
                raise UsageError(
                    "conv_flops needs a model built with a static input shape. "
                    f"Received: model.input_shape={model.input_shape}"
                )
            kernel = layer.kernel.shape  # (*kernel_size, in_channels, out_channels)
            total += 2 * math.prod(kernel) * math.prod(spatial)
    return total


def rows(preset, ndim, num_landmarks=None):
    """One dict per architecture: weights, ratio to SCN, FLOPs and the input size used.

    Args:
        preset: str. `"paper"` or `"small"`.
        ndim: int. 2 or 3.
        num_landmarks: int or None. heatmaps; default 37 in 2D, 28 in 3D (the paper's datasets).
    """
    num_landmarks = num_landmarks or NUM_LANDMARKS[ndim]
    result = []
    for architecture in ARCHITECTURES:
        size = input_size(preset, ndim, architecture)
        model = build_model(architecture, ndim, num_landmarks, preset=preset,
                            input_shape=(*size, 1))
        result.append({"architecture": architecture, "weights": model.count_params(),
                       "flops": conv_flops(model), "input": size})
    scn = next(row["weights"] for row in result if row["architecture"] == "scn")
    for row in result:
        row["ratio"] = row["weights"] / scn
    return result


def format_table(preset, ndim, num_landmarks=None):
    """The printed table for one preset and dimension, as a string."""
    num_landmarks = num_landmarks or NUM_LANDMARKS[ndim]
    lines = [
        f"{preset} preset, {ndim}D, {num_landmarks} landmarks",
        f"{'architecture':<14}{'weights':>12}{'#w':>7}{'paper #w':>10}"
        f"{'GFLOP/forward':>15}  input",
    ]
    for row in rows(preset, ndim, num_landmarks):
        paper = PAPER_TABLE1.get(row["architecture"]) if (preset, ndim) == ("paper", 2) else None
        lines.append(
            f"{row['architecture']:<14}{row['weights']:>12,}{row['ratio']:>7.2f}"
            f"{'-' if paper is None else f'{paper:.1f}':>10}{row['flops'] / 1e9:>15.2f}  "
            + "x".join(map(str, row["input"]))
        )
    return "\n".join(lines)


def main():
    """Print the paper (Table 1) and small-preset tables for 2D and 3D."""
    tables = [format_table(preset, ndim) for preset in ("paper", "small") for ndim in (2, 3)]
    print("\n\n".join(tables))  # noqa: T201 (command-line output)


if __name__ == "__main__":
    main()
