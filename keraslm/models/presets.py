"""The two layer-setting presets every architecture provides (each architecture module holds
its own `PRESETS[preset][ndim]`; `keraslm.models.get_preset` returns a copy).

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
#: The preset names every registered architecture provides.
PRESET_NAMES = ("paper", "small")

#: The paper's initialisation: weights from a Gaussian with std 0.01 (biases are always zero).
PAPER_INITIALIZER = {"class_name": "RandomNormal", "config": {"mean": 0.0, "stddev": 0.01}}
