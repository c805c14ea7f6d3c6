"""Architecture settings as data: `PRESETS[preset][architecture][ndim]`.

- `"paper"`: Payer et al. 2016, Section 3, for 2D (hand radiographs, 37 landmarks) and 3D (hand
  MR, 28 landmarks). All convolutions ReLU with 128 filters in 2D and 64 in 3D (3D ConvOnly-Net
  32), initialised from a Gaussian with std 0.01 and zero bias. U-Net "4 down- and upsampling
  blocks" (3D: 3) is read as 4 (3D: 3) resolution levels, i.e. 3 (2) pooling steps; this reading
  reproduces Table 1's weight ratio 2.0. For `"scn2019"` (not in the 2016 paper) the entry holds
  the settings of the authors' 2019 follow-up (Payer et al., Medical Image Analysis 54): a
  4-level add-skip U-Net with leaky ReLU 0.1 and dropout 0.5 as local branch, a spatial branch
  at 1/16 (3D: 1/8) with 11x11 (3D: 7x7x7) kernels and tanh, He normal initialisation.
- `"small"`: the same shapes with 8-32 filters and He normal initialisation, sized to train in
  minutes on a 2-core CPU with 2D inputs of about 128x128 and 3D inputs of about 32x64x64
  (array order z, y, x).

Kernel sizes are given per spatial axis of the network input in keraslm's array axis order
(z, y, x) (`keraslm.io.image`); the paper's 3D spatial kernel 9x9x5 (x, y, slices: the slice
axis has 0.9 mm spacing and the fewest voxels) is therefore (5, 9, 9).
"""
import copy

from keraslm.errors import UsageError

#: The paper's initialisation: weights from a Gaussian with std 0.01 (biases are always zero).
PAPER_INITIALIZER = {"class_name": "RandomNormal", "config": {"mean": 0.0, "stddev": 0.01}}

PRESETS = {
    "paper": {
        "downsampling": {
            2: dict(filters=128, kernel_size=5, num_blocks=2, convs_per_block=2,
                    kernel_initializer=PAPER_INITIALIZER),
            3: dict(filters=64, kernel_size=3, num_blocks=1, convs_per_block=2,
                    kernel_initializer=PAPER_INITIALIZER),
        },
        "convonly": {
            2: dict(filters=128, kernel_size=11, num_convs=6,
                    kernel_initializer=PAPER_INITIALIZER),
            3: dict(filters=32, kernel_size=5, num_convs=6,
                    kernel_initializer=PAPER_INITIALIZER),
        },
        "unet": {
            2: dict(filters=128, kernel_size=3, num_levels=4, convs_per_level=2,
                    kernel_initializer=PAPER_INITIALIZER),
            3: dict(filters=64, kernel_size=3, num_levels=3, convs_per_level=2,
                    kernel_initializer=PAPER_INITIALIZER),
        },
        "scn": {
            2: dict(filters=128, kernel_size=5, num_local_convs=3, spatial_kernel_size=15,
                    spatial_downsampling=8, kernel_initializer=PAPER_INITIALIZER),
            3: dict(filters=64, kernel_size=3, num_local_convs=3, spatial_kernel_size=(5, 9, 9),
                    spatial_downsampling=4, kernel_initializer=PAPER_INITIALIZER),
        },
        "scn2019": {
            2: dict(filters=128, kernel_size=3, num_levels=4, convs_per_level=2,
                    negative_slope=0.1, dropout=0.5, spatial_kernel_size=11,
                    num_spatial_convs=3, spatial_downsampling=16,
                    kernel_initializer="he_normal"),
            3: dict(filters=64, kernel_size=3, num_levels=4, convs_per_level=2,
                    negative_slope=0.1, dropout=0.5, spatial_kernel_size=7,
                    num_spatial_convs=3, spatial_downsampling=8,
                    kernel_initializer="he_normal"),
        },
    },
    "small": {
        "downsampling": {
            2: dict(filters=32, kernel_size=5, num_blocks=2, convs_per_block=2,
                    kernel_initializer="he_normal"),
            3: dict(filters=16, kernel_size=3, num_blocks=1, convs_per_block=2,
                    kernel_initializer="he_normal"),
        },
        "convonly": {
            2: dict(filters=16, kernel_size=7, num_convs=6, kernel_initializer="he_normal"),
            3: dict(filters=8, kernel_size=3, num_convs=6, kernel_initializer="he_normal"),
        },
        "unet": {
            2: dict(filters=32, kernel_size=3, num_levels=4, convs_per_level=2,
                    kernel_initializer="he_normal"),
            3: dict(filters=16, kernel_size=3, num_levels=3, convs_per_level=2,
                    kernel_initializer="he_normal"),
        },
        "scn": {
            2: dict(filters=32, kernel_size=5, num_local_convs=3, spatial_kernel_size=15,
                    spatial_downsampling=8, kernel_initializer="he_normal"),
            3: dict(filters=16, kernel_size=3, num_local_convs=3, spatial_kernel_size=(5, 9, 9),
                    spatial_downsampling=4, kernel_initializer="he_normal"),
        },
        "scn2019": {
            2: dict(filters=32, kernel_size=3, num_levels=4, convs_per_level=2,
                    negative_slope=0.1, dropout=0.0, spatial_kernel_size=7,
                    num_spatial_convs=3, spatial_downsampling=16,
                    kernel_initializer="he_normal"),
            3: dict(filters=16, kernel_size=3, num_levels=3, convs_per_level=2,
                    negative_slope=0.1, dropout=0.0, spatial_kernel_size=5,
                    num_spatial_convs=3, spatial_downsampling=8,
                    kernel_initializer="he_normal"),
        },
    },
}


def get_preset(preset, architecture, ndim):
    """A fresh copy of the settings of one preset.

    preset: str. a key of `PRESETS` (`"paper"` or `"small"`).
    architecture: str. a known architecture name.
    ndim: int. number of spatial dimensions, 2 or 3.

    Raises ValueError naming `preset` when it is unknown.
    """
    if preset not in PRESETS:
        raise UsageError(
            f"Unknown `preset`. Expected one of {sorted(PRESETS)}. Received: preset={preset!r}"
        )
    return copy.deepcopy(PRESETS[preset][architecture][ndim])
