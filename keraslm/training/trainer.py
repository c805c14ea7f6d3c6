"""The compiled training step: augmentation and heatmap rendering on the device, weighted L2.

`HeatmapTrainer` wraps a network built by `keraslm.models.build_model`. Its `train_step` takes
a batch of grid images and grid landmarks from the tf.data pipeline and, inside the compiled
step (XLA with `jit_compile=True`), samples one random transform per sample, resamples the
images, moves the landmarks with the exact inverse map, renders Gaussian target heatmaps at
the network's output resolution and per-landmark weights (0 for missing landmarks and those
moved out of the field), then takes a gradient step on the weighted L2 loss. Its `test_step`
runs the network on un-augmented images, decodes the heatmaps and reports the point error in
millimetres of the grid (equal to physical millimetres: the grid is placed in the image's own
orthonormal frame with `grid.spacing` mm per step).

TF-only edge: `train_step` uses `tf.GradientTape` (Keras 3's TensorFlow trainer).
"""
import keras
import numpy as np
import tensorflow as tf
from keras import ops

from keraslm.ops.augmentation import (
    AugmentationConfig,
    choose_crop_landmarks,
    crop_stage,
    device_stage,
    sample_transforms,
)
from keraslm.errors import UsageError
from keraslm.ops.heatmaps import HeatmapCodec


def weighted_l2(heatmaps, targets, weights):
    """Weighted L2 heatmap loss: the mean over batch, landmarks and pixels of
    `weight * (heatmap - target)^2`.

    Args:
        heatmaps: tensor `(batch, *spatial, num_landmarks)`. Predictions.
        targets: tensor of the same shape.
        weights: tensor `(batch, num_landmarks)`. 0 removes a landmark from the loss.

    Returns:
        Scalar tensor.
    """
    heatmaps = ops.cast(heatmaps, "float32")
    squared = ops.square(heatmaps - targets)
    spatial_axes = tuple(range(1, len(squared.shape) - 1))
    per_landmark = ops.mean(squared, axis=spatial_axes)  # (batch, num_landmarks)
    return ops.mean(per_landmark * weights)


#: Default weight of the learned-sigma penalty (`HeatmapTrainer(learn_sigma=True)`): with it a
#: landmark keeps the starting sigma when its per-axis error SD equals that sigma (2D, for a
#: network that predicts the target blurred by its error; `sigma_penalty`); sharper for surer
#: landmarks.
DEFAULT_SIGMA_PENALTY = 2.36
#: Smallest target sigma a learned sigma can take, output pixels.
MIN_LEARNED_SIGMA = 0.5


def learned_sigma_targets(codec, points, sigma, reference_sigma):
    """Target heatmaps with per-landmark `sigma` (a tensor; gradients flow into it) whose
    peak is `codec.amplitude * (reference_sigma / sigma)^ndim`: the volume of every Gaussian
    stays that of the reference sigma's, as in Payer et al. 2019's normalised targets, so a
    wider target is also a lower one and sigma cannot grow without bound to ease the fit.

    Args:
        codec: HeatmapCodec. Output grid and the amplitude at the reference sigma.
        points: tensor `(batch, L, ndim)`, input grid index (NaN: missing).
        sigma: tensor `(L,)`, output pixels (clipped below at `MIN_LEARNED_SIGMA`).
        reference_sigma: float. The sigma at which the peak is `codec.amplitude`.

    Returns:
        float32 `(batch, *codec.output_shape, L)`.
    """
    sigma = ops.maximum(ops.cast(sigma, "float32"), MIN_LEARNED_SIGMA)
    return codec.encode(points, sigma=sigma) * ops.power(float(reference_sigma) / sigma, codec.ndim)


def sigma_penalty(sigma, weights, heatmap_scale, output_pixels, strength):
    """The learned sigma's penalty, in the units of `weighted_l2`: `strength * heatmap_scale^2 /
    output_pixels` times the mean over batch and landmarks of `weight * sigma^2` (sigma in output
    pixels; weighted like the heatmap loss, so that the balance is the same for a global stage and
    for a local stage, where each crop weights one landmark).

    The balance, in 2D, for a network that predicts the best heatmap for a landmark it finds
    with a Gaussian error of SD `e` per axis (the target averaged over that error): the expected
    loss falls with sigma as `pi s^2 sigma0^4 e^2 / (P sigma^2 (sigma^2 + e^2))` (amplitude `s` at
    `sigma0`, `P` pixels), so the learned sigma stays at `sigma0` when `strength = pi k^2 (2 + k^2)
    / (1 + k^2)^2` with `k = e / sigma0`: 2.36 for `e = sigma0` (`DEFAULT_SIGMA_PENALTY`); surer
    landmarks end below `sigma0`, less sure ones above."""
    sigma = ops.cast(sigma, "float32")
    scale = float(strength) * float(heatmap_scale) ** 2 / float(output_pixels)
    return scale * ops.mean(weights * ops.square(sigma)[None, :])


class HeatmapTrainer(keras.Model):
    """Trains a heatmap network with on-device augmentation; `call` is the network.

    Args:
        network: keras.Model. From `keraslm.models.build_model`, with `output_stride`.
        grid_shape: tuple of int. Spatial shape of the grid images, array order.
        grid_spacing: tuple of float. Millimetres per grid step along x, y[, z].
        sigma: float. Gaussian sigma of the targets, in heatmap (output) pixels.
        augmentation: AugmentationConfig. Random augmentation ranges.
        heatmap_scale: float. Peak value of the target heatmaps.
        seed: int. Seed of the augmentation's random stream (saved with the weights, so a
            resumed run continues the stream).
        decode_method: str. Heatmap decoding for the validation point error.
        jit_device_stage: bool. Compile augmentation and rendering with XLA even when the
            whole step is not (`compile(jit_compile=False)`): on a CPU, XLA speeds up the
            resampling but slows the convolutions down.
        learn_sigma: bool. Learn one target sigma per landmark (Payer et al. 2019), starting
            at `sigma`: targets keep the volume of a `sigma` Gaussian of peak `heatmap_scale`
            (`learned_sigma_targets`) and `sigma_penalty` pulls the sigmas down. The learned
            values are `learned_sigma()`; the trained model decodes with them.
        sigma_penalty: float > 0. Strength of that pull (`DEFAULT_SIGMA_PENALTY`).
    """

    def __init__(self, network, grid_shape, grid_spacing, sigma=2.0, augmentation=None,
                 heatmap_scale=1.0, seed=0, decode_method="quadratic", jit_device_stage=True,
                 learn_sigma=False, sigma_penalty=DEFAULT_SIGMA_PENALTY, **kwargs):
        super().__init__(**kwargs)
        self.network = network
        self.grid_shape = tuple(int(n) for n in grid_shape)
        self.grid_spacing = tuple(float(s) for s in grid_spacing)
        self.augmentation = augmentation if augmentation is not None else AugmentationConfig()
        self.heatmap_scale = float(heatmap_scale)
        self.decode_method = decode_method
        self.codec = HeatmapCodec(self.grid_shape, stride=network.output_stride, sigma=sigma,
                                  amplitude=self.heatmap_scale)
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.learn_sigma = bool(learn_sigma)
        self.sigma_penalty_strength = float(sigma_penalty)
        self.target_sigma = None
        if self.learn_sigma:
            if not isinstance(sigma, (int, float)):
                raise UsageError(f"a learned sigma starts from one sigma for all landmarks. "
                                 f"Received: sigma={sigma!r}")
            if not (self.sigma_penalty_strength > 0):
                raise UsageError(f"`sigma_penalty` must be > 0. Received: {sigma_penalty!r}")
            self.target_sigma = self.add_weight(
                shape=(int(network.num_landmarks),), name="target_sigma", dtype="float32",
                initializer=keras.initializers.Constant(float(sigma)), trainable=True)
        self.jit_device_stage = jit_device_stage
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.point_error_tracker = keras.metrics.Mean(name="point_error_mm")

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras 3.15 builds a distributed model by reducing one input batch across replicas,
        # which fails under MultiWorkerMirroredStrategy (PerReplica cannot become a Tensor).
        # The trainer is built before fit (`build`), so no batch is needed here.
        if self._distribute_strategy is None or not self.built:
            return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)
        with self.distribute_strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    @property
    def jit_device_stage(self):
        """bool. Whether augmentation and rendering are compiled with XLA (settable until the
        first training step)."""
        return self._jit_device_stage

    @jit_device_stage.setter
    def jit_device_stage(self, value):
        self._jit_device_stage = bool(value)
        stage = self.augment_with_points
        self._device_stage = tf.function(stage, jit_compile=True) if value else stage

    def learned_sigma(self):
        """The learned per-landmark target sigmas (output pixels, list of float), or None when
        the sigma is not learned."""
        if self.target_sigma is None:
            return None
        values = np.maximum(np.asarray(self.target_sigma.numpy(), np.float64), MIN_LEARNED_SIGMA)
        return [float(v) for v in values]

    def _targets(self, points):
        """Targets of moved points with the learned sigma (inside the gradient tape)."""
        return learned_sigma_targets(self.codec, points, self.target_sigma, self.codec.sigma)

    def _sigma_penalty(self, weights):
        return sigma_penalty(self.target_sigma, weights, self.heatmap_scale,
                             np.prod(self.codec.output_shape), self.sigma_penalty_strength)

    @property
    def metrics(self):
        return [self.loss_tracker, self.point_error_tracker]

    def call(self, images, training=False):
        return self.network(images, training=training)

    def augment(self, images, points, seed_generator=None):
        """Device stage: random transforms, resampled images, target heatmaps, weights.

        Args:
            images: `(batch, *grid_shape, 1)`.
            points: `(batch, L, ndim)` grid index.
            seed_generator: replaces the trainer's random stream (None: use it).

        Returns:
            the network's input images, float32 target heatmaps (peak `heatmap_scale`, the
            codec's amplitude, at the codec's sigma) and weights `(batch, L)`.
        """
        images, targets, weights, _ = self.augment_with_points(images, points, seed_generator)
        return images, targets, weights

    def augment_with_points(self, images, points, seed_generator=None):
        """`augment` plus the moved landmarks `(batch, L, ndim)` in the network input's grid
        index (the training step renders a learned sigma's targets from them)."""
        transforms = sample_transforms(
            seed_generator or self.seed_generator, images.shape[0], self.grid_shape, self.grid_spacing,
            self.augmentation,
        )
        return device_stage(images, points, transforms, self.codec, return_points=True)

    def train_step(self, data):
        images, points = data
        images, targets, weights, moved = self._device_stage(images, points)
        variables = list(self.network.trainable_variables)
        with tf.GradientTape() as tape:
            heatmaps = self.network(images, training=True)
            if self.learn_sigma:
                targets = self._targets(moved)
            loss = weighted_l2(heatmaps, targets, weights)
            total = loss + ops.sum(self.network.losses) if self.network.losses else loss
            if self.learn_sigma:
                total = total + self._sigma_penalty(weights)
            scaled = self.optimizer.scale_loss(total)
        if self.learn_sigma:
            variables.append(self.target_sigma)
        gradients = tape.gradient(scaled, variables)
        self.optimizer.apply(gradients, variables)
        self.loss_tracker.update_state(loss)
        logs = {"loss": self.loss_tracker.result()}
        if self.learn_sigma:  # Shown per epoch and kept in history.json.
            sigma = ops.maximum(self.target_sigma, MIN_LEARNED_SIGMA)
            logs.update(sigma_min=ops.min(sigma), sigma_mean=ops.mean(sigma),
                        sigma_max=ops.max(sigma))
        return self._logs(logs)

    def test_step(self, data):
        images, points = data
        heatmaps = self.network(images, training=False)
        targets = self._targets(points) if self.learn_sigma else self.codec.encode(points)
        weights = self.codec.weights(points)
        self.loss_tracker.update_state(weighted_l2(heatmaps, targets, weights))
        decoded, _ = self.codec.decode(ops.cast(heatmaps, "float32"), method=self.decode_method)
        errors = point_error_mm(decoded, points, self.grid_spacing)
        valid = ops.cast(ops.isfinite(errors), "float32")
        self.point_error_tracker.update_state(
            ops.where(valid > 0, errors, ops.zeros_like(errors)), sample_weight=valid
        )
        return self._logs({m.name: m.result() for m in self.metrics})

    def _logs(self, logs):
        # Keras 3.15 reduces step logs across workers with `strategy.reduce("MEAN", v, axis=0)`
        # under MultiWorkerMirroredStrategy, which needs an axis: give each value one.
        if isinstance(self.distribute_strategy, tf.distribute.MultiWorkerMirroredStrategy):
            return {name: ops.reshape(value, (1,)) for name, value in logs.items()}
        return logs


class LocalHeatmapTrainer(HeatmapTrainer):
    """Trains the local (refinement) stage of a coarse-to-fine model on crops.

    The batches hold whole images on a fine grid; inside the compiled step each image gives
    `landmarks_per_image` crops of `crop_shape` centred on its landmarks, augmented (the sampled
    translation plays the coarse stage's error), and each crop trains the heatmap channel of its
    own landmark: a peak there, zero elsewhere in the crop
    (`keraslm.ops.augmentation.crop_stage`). Validation centres each crop on the true landmark
    moved by a fixed pseudo-random offset within the augmentation's translation range and
    reports the error of that crop's own landmark, in mm.

    Args:
        network: keras.Model. The local network.
        crop_shape: tuple of int. Crop (network input) shape, array order.
        grid_spacing: tuple of float. mm per step of the fine grid (and of the crops).
        landmarks_per_image: int or None. Crops per image and step (None: one per landmark).
        **kwargs: as `HeatmapTrainer` (sigma, augmentation, heatmap_scale, seed, ...).
    """

    def __init__(self, network, crop_shape, grid_spacing, landmarks_per_image=None, **kwargs):
        super().__init__(network, crop_shape, grid_spacing, **kwargs)
        self.landmarks_per_image = landmarks_per_image
        self.validation_augmentation = AugmentationConfig(
            rotation_degrees=0.0, translation_mm=self.augmentation.translation_mm, scale=0.0,
            intensity_scale=0.0, intensity_shift=0.0)

    def _crops_per_image(self, points):
        return self.landmarks_per_image or points.shape[1]

    def augment_with_points(self, images, points, seed_generator=None):
        seed_generator = seed_generator or self.seed_generator
        index = choose_crop_landmarks(points, self._crops_per_image(points), seed=seed_generator)
        transforms = sample_transforms(
            seed_generator, images.shape[0] * index.shape[1], self.grid_shape,
            self.grid_spacing, self.augmentation,
        )
        crops, targets, weights, moved = crop_stage(images, points, index, transforms, self.codec)
        return crops, targets, weights, moved

    def test_step(self, data):
        images, points = data
        num_landmarks = points.shape[1]
        index = choose_crop_landmarks(points, num_landmarks)
        transforms = sample_transforms(
            12345, images.shape[0] * num_landmarks, self.grid_shape, self.grid_spacing,
            self.validation_augmentation,
        )
        crops, targets, weights, crop_points = crop_stage(images, points, index, transforms,
                                                          self.codec)
        heatmaps = self.network(crops, training=False)
        if self.learn_sigma:
            targets = self._targets(crop_points)
        self.loss_tracker.update_state(
            weighted_l2(heatmaps, targets, weights))
        decoded, _ = self.codec.decode(ops.cast(heatmaps, "float32"), method=self.decode_method)
        errors = point_error_mm(decoded, crop_points, self.grid_spacing)  # (n, L)
        own = ops.tile(ops.eye(num_landmarks), (images.shape[0], 1))  # crop j <-> landmark j
        valid = own * ops.cast(ops.isfinite(errors), "float32")
        self.point_error_tracker.update_state(
            ops.where(valid > 0, errors, ops.zeros_like(errors)), sample_weight=valid
        )
        return self._logs({m.name: m.result() for m in self.metrics})


def point_error_mm(points_a, points_b, spacing):
    """Euclidean distance in mm between grid points `(batch, num_landmarks, ndim)` given the grid
    spacing along x, y[, z]; NaN where either point is missing."""
    difference = (points_a - points_b) * ops.convert_to_tensor(spacing, "float32")
    return ops.sqrt(ops.sum(ops.square(difference), axis=-1))
