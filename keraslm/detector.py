"""From an image's pixels to landmarks in millimetres as ONE TensorFlow function.

`image_to_landmarks(networks...)` builds `locate(array, spacing, origin, direction)`: the
preprocessing (`keraslm.preprocessing.prepare_on_grid`: normalisation, placement on the grid,
anti-aliased resampling), the global network and heatmap decoding, the optional local
refinement stage (the image on the local stage's fine grid, crops around the global estimates,
offset prior; `refine_function`) and the mapping back through
the grid placement and the image geometry:

    grid index --placement--> image index (x, y[, z]) --origin + direction @ (spacing * index)--> mm

`keraslm.predict` runs it eagerly-compiled for Keras models, and `keraslm.export` puts the very
same function into the SavedModel's `predict_array` and `predict_image` signatures, so a TF
Serving client sends an image and gets millimetres with nothing re-implemented.

`decode_image_bytes` is the graph's PNG / JPEG / BMP reader (8- or 16-bit, grey or colour ->
grey float32 as `keraslm.io` reads them).

TF-only edge: `tf.io` decoding, `tf.cond`, float64 geometry.
"""
import os

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from keraslm.calibration import blend_stages, check_calibration, expected_error_mm
from keraslm.errors import KeraslmError, ModelFileError

from keraslm.ops.augmentation import crop_to_grid, extract_crops
from keraslm.ops.heatmaps import HeatmapCodec
from keraslm.preprocessing import GridSpec, prepare_image, prepare_on_grid

_LUMA_WEIGHTS = (0.299, 0.587, 0.114)  # As keraslm.io.plain reads colour images.
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def decode_image_bytes(data):
    """A PNG / JPEG / BMP file's bytes (scalar tf.string) -> grey float32 `(H, W)`.

    16-bit PNGs keep their 16-bit values; colour images whose channels are all equal keep the
    channel, others become luma (0.299 R + 0.587 G + 0.114 B); alpha is dropped. Undecodable
    bytes fail with TensorFlow's InvalidArgument error.
    """
    check = tf.debugging.assert_greater(
        tf.strings.length(data), 0, message="image_bytes holds an empty string, not an image file")
    with tf.control_dependencies([check]):
        data = tf.identity(data)
    header = tf.strings.join([tf.strings.substr(data, 0, 32), b"\0" * 32])  # >= 32 bytes.
    is_png16 = tf.logical_and(
        tf.equal(tf.strings.substr(header, 0, 8), _PNG_SIGNATURE),
        tf.equal(tf.strings.substr(header, 24, 1), b"\x10"))  # IHDR bit depth.
    def other():
        # INTEGER_ACCURATE: the IDCT Pillow uses, so the pixels equal keraslm.io's exactly.
        return tf.cond(
            tf.io.is_jpeg(data),
            lambda: tf.cast(tf.io.decode_jpeg(data, channels=0, dct_method="INTEGER_ACCURATE"),
                            tf.float32),
            lambda: tf.cast(tf.io.decode_image(data, channels=0, expand_animations=False),
                            tf.float32))

    pixels = tf.cond(
        is_png16,
        lambda: tf.cast(tf.io.decode_png(data, channels=0, dtype=tf.uint16), tf.float32), other)
    channels = tf.shape(pixels)[-1]

    def colour():
        rgb = pixels[..., :3]
        same = tf.logical_and(tf.reduce_all(tf.equal(rgb[..., 0], rgb[..., 1])),
                              tf.reduce_all(tf.equal(rgb[..., 0], rgb[..., 2])))
        return tf.cond(same, lambda: rgb[..., 0],
                       lambda: tf.tensordot(rgb, tf.constant(_LUMA_WEIGHTS, tf.float32), 1))

    return tf.cond(channels >= 3, colour, lambda: pixels[..., 0])


def refine_function(network, metadata, with_spread=False):
    """The local stage as one function: `(images, centres) -> (points, confidence)`.

    images: `(batch, *spatial, 1)` whole images on the local stage's fine grid.
    centres: `(batch, num_landmarks, ndim)` coarse estimates in fine grid index units.
    Crops of `metadata["crop_shape"]` around every centre go through the network; landmark k is
    decoded from its own crop's channel k (its peak chosen after weighting by a Gaussian of
    `metadata["offset_prior_mm"]` around the crop centre, if set) and mapped back to fine grid
    index units. Returns
    points `(batch, num_landmarks, ndim)` and confidence `(batch, num_landmarks)`, and with
    `with_spread` also each landmark's heatmap spread in mm (`HeatmapCodec.spread` of its own
    crop channel) `(batch, num_landmarks)`. Pure `keras.ops` (XLA-compilable with static
    shapes; used in training, prediction and export).
    """
    crop_shape = tuple(metadata["crop_shape"])
    codec = HeatmapCodec(crop_shape, stride=metadata["output_stride"], sigma=metadata["sigma"])
    method = metadata.get("decode_method", "quadratic")
    prior = None
    if metadata.get("offset_prior_mm") is not None:
        prior = codec.centre_prior(metadata["grid_spacing"], metadata["offset_prior_mm"])

    def refine(images, centres):
        batch, num_landmarks, ndim = centres.shape
        crops = extract_crops(images, centres, crop_shape)
        heatmaps = ops.cast(network(crops, training=False), "float32")
        # (batch * L, L, ndim)
        points, confidence = codec.decode(heatmaps, method=method, peak_weights=prior)
        points = ops.reshape(points, (batch, num_landmarks, num_landmarks, ndim))
        confidence = ops.reshape(confidence, (batch, num_landmarks, num_landmarks))
        own = ops.arange(num_landmarks, dtype="int32")[None, :, None]  # crop k <-> landmark k
        points = ops.take_along_axis(points, own[..., None], axis=2)[:, :, 0]
        confidence = ops.take_along_axis(confidence, own, axis=2)[:, :, 0]
        points = crop_to_grid(points, centres, crop_shape)
        if not with_spread:
            return points, confidence
        spread = ops.reshape(codec.spread(heatmaps, metadata["grid_spacing"]),
                             (batch, num_landmarks, num_landmarks))
        return points, confidence, ops.take_along_axis(spread, own, axis=2)[:, :, 0]

    return refine


class Predictor:
    """What `keraslm.predict` needs of a model: `metadata` (`keraslm.metadata`) and
    `locate(image) -> dict` for one `keraslm.io.Image`: NumPy arrays `landmarks_index`
    `(L, ndim)`, `landmarks_mm` `(L, ndim)`, `confidence` `(L,)` and, where the model gives them,
    `spread_mm` and `expected_error_mm` `(L,)` (see `image_to_landmarks`). Subclasses that only run on grid images implement
    `grid_points(images) -> (points (batch, L, ndim) grid index, confidence (batch, L))` and
    inherit a `locate` that prepares the image and maps the answer back (`locate_on_grid`); a
    local stage also implements `refine(images, centres)`.
    """

    metadata = None

    def grid_points(self, images):
        raise NotImplementedError(f"{type(self).__name__} runs on whole images only (locate)")

    def locate(self, image):
        return locate_on_grid(self, image)


def locate_on_grid(predictor, image):
    """Stage by stage, for predictors that only run on grid images (`grid_points`, e.g. a
    SavedModel exported before the image signatures): the image onto the grid
    (`keraslm.preprocessing.prepare_image`), the predictor, and the mapping back.

    Returns the `Predictor.locate` dict (without spread or expected error)."""
    meta = predictor.metadata
    grid = GridSpec(tuple(meta["grid_shape"]), tuple(meta["grid_spacing"]))
    array, placement = prepare_image(image, grid, meta["normalization"])
    points, confidence = predictor.grid_points(array[np.newaxis, ..., np.newaxis])
    points_index = placement.grid_to_image_index(points[0])
    return {"landmarks_index": points_index, "landmarks_mm": image.index_to_physical(points_index),
            "confidence": np.asarray(confidence[0])}


def _apply(matrix, points):
    """Homogeneous affine `(ndim+1, ndim+1)` applied to points `(..., ndim)` (float64)."""
    return tf.linalg.matvec(matrix[:-1, :-1], points) + matrix[:-1, -1]


def _grid(metadata):
    return GridSpec(tuple(metadata["grid_shape"]), tuple(metadata["grid_spacing"]))


def ensemble_members(networks, metadatas, what):
    """`(networks, metadatas)` as equal-length lists: one network or an ensemble's list."""
    if networks is None:
        return [], []
    if isinstance(networks, (list, tuple)) != isinstance(metadatas, (list, tuple)):
        raise KeraslmError(f"the {what} networks and their metadata go together: both one, or "
                           "both lists of an ensemble's members")
    if not isinstance(networks, (list, tuple)):
        return [networks], [metadatas]
    if len(networks) != len(metadatas) or not networks:
        raise KeraslmError(f"an ensemble's {what} stage needs one metadata per network. "
                           f"Received: {len(networks)} networks, {len(metadatas)} metadata")
    return list(networks), list(metadatas)


def check_ensemble(metadatas, local_metadatas=()):
    """Raises KeraslmError unless the stages' metadata agree on landmarks and dimension and the
    local ones describe local stages (the first global metadata is the reference)."""
    reference = metadatas[0]
    for number, meta in enumerate(list(metadatas) + list(local_metadatas)):
        stage = "local" if number >= len(metadatas) else "global"
        if meta.get("stage", "global") != stage:
            raise KeraslmError(
                f"ensemble member {number + 1} is a {meta.get('stage', 'global')} stage where a "
                f"{stage} stage belongs")
        if (list(meta["landmark_names"]) != list(reference["landmark_names"])
                or int(meta["ndim"]) != int(reference["ndim"])):
            raise KeraslmError(
                f"the stages disagree in their landmarks or dimension: {reference['ndim']}D "
                f"{list(reference['landmark_names'])} vs {meta['ndim']}D "
                f"{list(meta['landmark_names'])}")


def image_to_landmarks(network, metadata, local_network=None, local_metadata=None, iterations=1):
    """The whole prediction of one image as a function of TF tensors.

    Args:
        network: keras.Model, or a list of them: the global (whole-image) network, or the
            members of an ensemble of global stages (each with its own grid).
        metadata: dict (`keraslm.inference.model_metadata`), or a list, one per network. The
            first one's `calibration` applies to the whole model.
        local_network, local_metadata: optional. A local refinement stage and its metadata, or
            lists of an ensemble's local stages.
        iterations: int >= 1. Local passes; each centres the crops on the previous estimate.

    An ensemble averages its members' points in image index units (= in mm) and their
    confidence and spread: the global members' estimates, then each local member's refinement
    of that mean estimate. One network per stage is the ensemble of one.

    Returns:
        `locate(array, spacing, origin, direction)`: array `[y, x]` / `[z, y, x]` of any size
        and real dtype; spacing `(ndim,)` mm per pixel along x, y[, z]; origin `(ndim,)` mm
        (LPS) of index 0; direction `(ndim, ndim)` whose columns are the index axes' unit
        directions. Returns a dict of `landmarks_index` `(L, ndim)` float64 (original image
        index, pixel centres at integers), `landmarks_mm` `(L, ndim)` float64, `confidence`
        `(L,)` float32 (the heatmap peak; the local stage's with a local stage), `spread_mm`
        `(L,)` float32 (the last stage's `HeatmapCodec.spread`) and, when `metadata` holds a
        `calibration` (`keraslm.calibration`), `expected_error_mm` `(L,)` float32. A
        calibration with `local_weight` blends the global and the refined point per landmark
        (`keraslm.calibration.blend_stages`).

    Raises:
        KeraslmError: a calibration with `local_weight` for a model without a local stage;
            ensemble members that disagree in landmarks or dimension.
    """
    networks, metadatas = ensemble_members(network, metadata, "global")
    local_networks, local_metadatas = ensemble_members(local_network, local_metadata, "local")
    check_ensemble(metadatas, local_metadatas)
    metadata = metadatas[0]
    codecs = [HeatmapCodec(_grid(meta).shape, stride=meta["output_stride"], sigma=meta["sigma"])
              for meta in metadatas]
    refines = [refine_function(net, meta, with_spread=True)
               for net, meta in zip(local_networks, local_metadatas)]
    calibration = metadata.get("calibration")
    local_weight = None
    if calibration is not None:
        check_calibration(calibration, metadata["landmark_names"])
        local_weight = calibration.get("local_weight")
        if local_weight is not None and not refines:
            raise KeraslmError("the calibration blends a global and a local stage "
                               "(local_weight); this model has no local stage")

    def on_grid(array, spacing, meta, prepared):
        """The image on a member's grid, prepared once per distinct grid and normalisation."""
        key = (tuple(meta["grid_shape"]), tuple(meta["grid_spacing"]),
               repr(meta["normalization"]))
        if key not in prepared:
            prepared[key] = prepare_on_grid(array, spacing, _grid(meta), meta["normalization"])
        return prepared[key]

    orientation = metadata.get("storage_orientation")

    def orientation_check(direction):
        """The image must store its voxels as the training images did (the network sees the
        array in storage order): per index axis, the dominant physical axis and its sign."""
        direction = tf.cast(direction, tf.float64)
        axes = tf.constant(["xyz".index(o[1]) for o in orientation], tf.int64)
        signs = tf.constant([1.0 if o[0] == "+" else -1.0 for o in orientation], tf.float64)
        found = tf.argmax(tf.abs(direction), axis=0)  # Per column (index axis).
        found_sign = tf.sign(tf.gather(tf.transpose(direction), found, batch_dims=1))
        agree = tf.reduce_all(tf.equal(found, axes)) & tf.reduce_all(tf.equal(found_sign, signs))
        return tf.debugging.Assert(agree, [
            "the image stores its voxels along other axes or directions than the training "
            f"images of the model ({' '.join(orientation)}): it would be predicted mirrored or "
            "turned; store it like them (flip or transpose the array and adjust direction and "
            "origin)"])

    def locate(array, spacing, origin, direction):
        if orientation is not None:
            with tf.control_dependencies([orientation_check(direction)]):
                array = tf.identity(array)
        spacing = tf.cast(spacing, tf.float64)
        prepared = {}
        member_points, member_confidence, member_spread = [], [], []
        for net, meta, codec in zip(networks, metadatas, codecs):
            grid_image, grid_to_image = on_grid(array, spacing, meta, prepared)
            heatmaps = tf.cast(net(grid_image[tf.newaxis, ..., tf.newaxis], training=False),
                               tf.float32)
            points_grid, confidence = codec.decode(
                heatmaps, method=meta.get("decode_method", "quadratic"))
            member_points.append(_apply(grid_to_image, tf.cast(points_grid[0], tf.float64)))
            member_confidence.append(confidence[0])
            member_spread.append(codec.spread(heatmaps, meta["grid_spacing"])[0])
        points_index = tf.add_n(member_points) / len(member_points)
        confidence = tf.add_n(member_confidence) / len(member_confidence)
        spread = tf.add_n(member_spread) / len(member_spread)
        if refines:
            member_points, member_confidence, member_spread = [], [], []
            for refine, meta in zip(refines, local_metadatas):
                fine_image, fine_to_image = on_grid(array, spacing, meta, prepared)
                image_to_fine = tf.linalg.inv(fine_to_image)
                points_fine = tf.cast(_apply(image_to_fine, points_index), tf.float32)[tf.newaxis]
                for _ in range(iterations):
                    points_fine, local_confidence, local_spread = refine(
                        fine_image[tf.newaxis, ..., tf.newaxis], points_fine)
                member_points.append(_apply(fine_to_image, tf.cast(points_fine[0], tf.float64)))
                member_confidence.append(local_confidence[0])
                member_spread.append(local_spread[0])
            refined_index = tf.add_n(member_points) / len(member_points)
            points_index = (refined_index if local_weight is None
                            else blend_stages(points_index, refined_index, local_weight))
            confidence = tf.add_n(member_confidence) / len(member_confidence)
            spread = tf.add_n(member_spread) / len(member_spread)
        index_to_mm = tf.cast(direction, tf.float64) * spacing[tf.newaxis, :]
        points_mm = tf.linalg.matvec(index_to_mm, points_index) + tf.cast(origin, tf.float64)
        outputs = {"landmarks_index": points_index, "landmarks_mm": points_mm,
                   "confidence": confidence, "spread_mm": spread}
        if calibration is not None:
            outputs["expected_error_mm"] = expected_error_mm(calibration, confidence, spread)
        return outputs

    return locate


@keras.saving.register_keras_serializable(package="keraslm")
class LandmarkDetector(keras.Model):
    """A trained landmark detector as one Keras object, saved as one `.keras` file: the
    network(s) and everything prediction needs (grid, normalisation, heatmap codec, landmark
    names, the local stage) in its config, as a keras-hub task carries its preprocessor.

    `call(images)` runs the global network on grid images (heatmaps); `locate_function()` gives
    the whole prediction of one image (`image_to_landmarks`). `keraslm.predict` and
    `keraslm.inference.load_predictor` take a `.keras` file holding a LandmarkDetector without
    any `model.json`; it loads with `keras.saving.load_model(path)` in safe mode.

    Args:
        network: keras.Model. The global network (or a local stage's network, with
            `metadata["stage"] == "local"`, for a local stage saved alone).
        metadata: dict. `keraslm.metadata.model_metadata` of `network`.
        local_network: keras.Model, optional. A local refinement stage.
        local_metadata: dict, optional. Its metadata.
    """

    def __init__(self, network, metadata, local_network=None, local_metadata=None, **kwargs):
        from keraslm.metadata import check_metadata

        super().__init__(**kwargs)
        if (local_network is None) != (local_metadata is None):
            raise KeraslmError("`local_network` and `local_metadata` go together")
        self.network = network
        self.metadata = check_metadata(dict(metadata), "metadata")
        self.local_network = local_network
        self.local_metadata = None if local_metadata is None else check_metadata(
            dict(local_metadata), "local_metadata")
        self.built = True

    def call(self, images, training=False):
        return self.network(images, training=training)

    def locate_function(self, iterations=1):
        """`image_to_landmarks` of this detector's network(s)."""
        return image_to_landmarks(self.network, self.metadata, self.local_network,
                                  self.local_metadata, iterations)

    def get_config(self):
        config = super().get_config()
        config.update({
            "network": keras.saving.serialize_keras_object(self.network),
            "metadata": self.metadata,
            "local_network": (None if self.local_network is None
                              else keras.saving.serialize_keras_object(self.local_network)),
            "local_metadata": self.local_metadata,
        })
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["network"] = keras.saving.deserialize_keras_object(config["network"])
        if config.get("local_network") is not None:
            config["local_network"] = keras.saving.deserialize_keras_object(config["local_network"])
        return cls(**config)


def load_detector(path, metadata=None):
    """A `LandmarkDetector` from a `.keras` file: one saved by keraslm today, or a run folder's
    bare network of an earlier keraslm with its `model.json` beside it. `metadata`, if given,
    replaces the (global) metadata the file or model.json holds.

    Raises:
        KeraslmError: the file is missing, not a readable `.keras` model (e.g. truncated), or an
            older bare network without `model.json`.
    """
    import zipfile

    import keraslm.models  # noqa: F401  (registers the custom layers for loading)
    from keraslm.files import read_json
    from keraslm.metadata import MODEL_METADATA_FILE

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ModelFileError(f"{path}: no such model file")
    try:
        loaded = keras.saving.load_model(path)
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as error:
        raise ModelFileError(f"{path}: not a readable .keras model file (truncated or corrupt?): "
                           f"{type(error).__name__}: {error}") from None
    if isinstance(loaded, LandmarkDetector):
        if metadata is None:
            return loaded
        return LandmarkDetector(loaded.network, metadata, loaded.local_network, loaded.local_metadata)
    if metadata is not None:
        return LandmarkDetector(loaded, metadata)
    metadata = read_json(
        os.path.join(os.path.dirname(os.path.abspath(path)), MODEL_METADATA_FILE),
        f"{path}: no {MODEL_METADATA_FILE} beside the model (a bare network saved by an earlier "
        "keraslm needs the model.json train.py wrote beside it); pass metadata=")
    return LandmarkDetector(loaded, metadata)
