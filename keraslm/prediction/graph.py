"""From an image's pixels to landmarks in millimetres as ONE TensorFlow function.

`image_to_landmarks(spec, networks, local_networks)` builds `locate(array, spacing, origin,
direction)`: the preprocessing (`keraslm.preprocessing.prepare_on_grid`: normalisation,
placement on the grid, anti-aliased resampling), the global network(s) and heatmap decoding,
the optional local stage(s) (the image on the local stage's fine grid, crops around the global
estimate, offset prior; `refine_function`) and the mapping back through the grid placement and
the image geometry. A detector trained in the canonical frame first brings the image there
(`canonical_frame`: the axis permutation and flips that make its direction closest to the
identity), so the image index below is the canonical image's, mapped back to the image's own:

    grid index --placement--> image index (x, y[, z]) --origin + direction @ (spacing * index)--> mm

A detector with a mirror check (`keraslm.spec.MirrorCheck`) predicts an image whose mean
confidence is low once more, mirrored, and keeps the answer with the higher mean confidence
(mapped back to the image).

Every way to predict runs this function: `keraslm.predict` (compiled once per pixel dtype), the
SavedModel's `predict_array` and `predict_image` signatures (`keraslm.export`), TF Serving, and
the final validation of a training run.

`decode_image_bytes` is the graph's PNG / JPEG / BMP reader (8- or 16-bit, grey or colour ->
grey float32 as `keraslm.io` reads them).

TF-only edge: `tf.io` decoding, `tf.cond`, float64 geometry.
"""
import tensorflow as tf
from keras import ops

from keraslm.calibration import blend_stages, expected_error_mm
from keraslm.errors import KeraslmError
from keraslm.ops.augmentation import crop_to_grid, extract_crops
from keraslm.preprocessing import normalize, prepare_on_grid

_LUMA_WEIGHTS = (0.299, 0.587, 0.114)  # As keraslm.io.plain reads colour images.
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: The outputs of `locate`; "expected_error_mm" only for a calibrated detector.
OUTPUTS = ("landmarks_index", "landmarks_mm", "confidence", "spread_mm", "second_peak")
CALIBRATED_OUTPUTS = OUTPUTS + ("expected_error_mm",)


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

    is_bmp = tf.equal(tf.strings.substr(header, 0, 2), b"BM")
    bmp_bits = tf.io.decode_raw(tf.strings.substr(header, 28, 2), tf.uint16, little_endian=True)[0]
    bmp_check = tf.debugging.Assert(
        tf.logical_or(tf.logical_not(is_bmp), tf.reduce_any(tf.equal(bmp_bits, [8, 24, 32]))),
        [tf.strings.join(["a BMP of ", tf.strings.as_string(bmp_bits), " bit(s) per pixel: "
                          "the served graph reads BMPs of 8, 24 or 32 bits; send it as PNG"])])
    with tf.control_dependencies([bmp_check]):
        pixels = tf.cond(
            is_png16,
            lambda: tf.cast(tf.io.decode_png(data, channels=0, dtype=tf.uint16), tf.float32),
            other)
    pixels = tf.cond(tf.logical_and(is_bmp, tf.equal(bmp_bits, 8)),
                     lambda: _bmp_palette_grey(data, pixels), lambda: pixels)
    is_palette_png = tf.logical_and(tf.equal(tf.strings.substr(header, 0, 8), _PNG_SIGNATURE),
                                    tf.equal(tf.strings.substr(header, 25, 1), b"\x03"))
    pixels = tf.cond(is_palette_png, lambda: _pillow_grey(pixels[..., :3]), lambda: pixels)
    channels = tf.shape(pixels)[-1]

    def colour():
        rgb = pixels[..., :3]
        same = tf.logical_and(tf.reduce_all(tf.equal(rgb[..., 0], rgb[..., 1])),
                              tf.reduce_all(tf.equal(rgb[..., 0], rgb[..., 2])))
        return tf.cond(same, lambda: rgb[..., 0],
                       lambda: tf.tensordot(rgb, tf.constant(_LUMA_WEIGHTS, tf.float32), 1))

    return tf.cond(channels >= 3, colour, lambda: pixels[..., 0])


def _bmp_palette_grey(data, indices):
    """An 8-bit BMP's pixels (TensorFlow decodes them as palette indices `(H, W, 1)`) through
    its colour table to grey `(H, W, 1)` float32 (`_pillow_grey`; a grey ramp stays itself)."""
    def int32_at(offset):
        return tf.io.decode_raw(tf.strings.substr(data, offset, 4), tf.int32, little_endian=True)[0]

    info_size, used = int32_at(14), int32_at(46)
    count = tf.where(used > 0, used, 256)
    table = tf.io.decode_raw(tf.strings.substr(data, 14 + info_size, 4 * count), tf.uint8)
    table = tf.reshape(table, (-1, 4))  # Blue, green, red, unused.
    grey = _pillow_grey(tf.reverse(table[:, :3], [1]))[:, 0]
    return tf.gather(grey, tf.cast(indices, tf.int32))


def _pillow_grey(rgb):
    """RGB `(..., 3)` -> grey `(..., 1)` float32 as Pillow converts a palette image to "L"
    (integer luma, rounded), so palette images read here equal `keraslm.io`'s exactly."""
    rgb = tf.cast(rgb, tf.int32)
    grey = tf.bitwise.right_shift(
        rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 32768, 16)
    return tf.cast(grey, tf.float32)[..., tf.newaxis]


def refine_function(network, stage, with_spread=False):
    """A local stage as one function: `(images, centres) -> (points, confidence)`.

    images: `(batch, *spatial, 1)` whole images on the local stage's fine grid.
    centres: `(batch, num_landmarks, ndim)` coarse estimates in fine grid index units.
    Crops of `stage.crop_shape` around every centre go through the network; landmark k is
    decoded from its own crop's channel k (its peak chosen after weighting by a Gaussian of
    `stage.offset_prior_mm` around the crop centre, if set) and mapped back to fine grid index
    units. Returns points `(batch, num_landmarks, ndim)` and confidence `(batch,
    num_landmarks)`, and with `with_spread` also each landmark's heatmap spread in mm
    (`HeatmapCodec.spread` of its own crop channel) `(batch, num_landmarks)`. Pure `keras.ops`
    (XLA-compilable with static shapes; used in training and prediction).
    """
    crop_shape = stage.crop_shape
    codec = stage.codec
    prior_factors = None
    if stage.offset_prior_mm is not None:
        prior_factors = codec.centre_prior_factors(stage.grid_spacing, stage.offset_prior_mm)

    def refine(images, centres):
        batch, num_landmarks, ndim = centres.shape
        crops = extract_crops(images, centres, crop_shape)
        heatmaps = ops.cast(network(crops, training=False), "float32")
        prior = None
        if prior_factors is not None:  # Multiplied in the graph: no per-pixel constant.
            prior = ops.convert_to_tensor(prior_factors[0])
            for factor in prior_factors[1:]:
                prior = prior * factor
        # (batch * L, L, ndim)
        points, confidence = codec.decode(heatmaps, method=stage.decode_method, peak_weights=prior)
        points = ops.reshape(points, (batch, num_landmarks, num_landmarks, ndim))
        confidence = ops.reshape(confidence, (batch, num_landmarks, num_landmarks))
        own = ops.arange(num_landmarks, dtype="int32")[None, :, None]  # crop k <-> landmark k
        points = ops.take_along_axis(points, own[..., None], axis=2)[:, :, 0]
        confidence = ops.take_along_axis(confidence, own, axis=2)[:, :, 0]
        points = crop_to_grid(points, centres, crop_shape)
        if not with_spread:
            return points, confidence
        spread = ops.reshape(codec.spread(heatmaps, stage.grid_spacing),
                             (batch, num_landmarks, num_landmarks))
        return points, confidence, ops.take_along_axis(spread, own, axis=2)[:, :, 0]

    return refine


def _apply(matrix, points):
    """Homogeneous affine `(ndim+1, ndim+1)` applied to points `(..., ndim)` (float64)."""
    return tf.linalg.matvec(matrix[:-1, :-1], points) + matrix[:-1, -1]


def _mean(tensors):
    return tf.add_n(tensors) / len(tensors)


def _orientation_check(orientation, direction):
    """The image must store its voxels as the training images did (the network sees the array
    in storage order): per index axis, the dominant physical axis and its sign."""
    direction = tf.cast(direction, tf.float64)
    axes = tf.constant(["xyz".index(o[1]) for o in orientation], tf.int64)
    signs = tf.constant([1.0 if o[0] == "+" else -1.0 for o in orientation], tf.float64)
    found = tf.argmax(tf.abs(direction), axis=0)  # Per column (index axis).
    found_sign = tf.sign(tf.gather(tf.transpose(direction), found, batch_dims=1))
    agree = tf.reduce_all(tf.equal(found, axes)) & tf.reduce_all(tf.equal(found_sign, signs))
    return tf.debugging.Assert(agree, [
        "the image stores its voxels along other axes or directions than the training images "
        f"of the model ({' '.join(orientation)}): it would be predicted mirrored or turned; "
        "store it like them (e.g. the same converter, or flip / transpose the array and adjust "
        "its direction and origin)"])


def canonical_frame(array, spacing, direction):
    """An image in the canonical frame, in TF ops: the twin of `keraslm.io.image.canonical_axes`
    and `Image.canonical` (the same permutation and flips; exact ties between the shares of
    an oblique direction may be broken otherwise).

    Args:
        array: tensor `[y, x]` / `[z, y, x]`, any size.
        spacing: float64 `(ndim,)`. mm per pixel along x, y[, z].
        direction: float64 `(ndim, ndim)`.

    Returns:
        (canonical array, its spacing `(ndim,)` float64, the homogeneous canonical index ->
        image index map `(ndim+1, ndim+1)` float64).
    """
    ndim = direction.shape[0]
    axes = tf.range(ndim, dtype=tf.int64)
    magnitude = tf.abs(direction)
    permutation = tf.zeros([ndim], tf.int64)
    for _ in range(ndim):  # Largest share first: physical axis `row` takes index axis `column`.
        flat = tf.argmax(tf.reshape(magnitude, [-1]), output_type=tf.int64)
        row, column = flat // ndim, flat % ndim
        permutation += tf.one_hot(row, ndim, dtype=tf.int64) * column
        free = tf.not_equal(axes, row)[:, tf.newaxis] & tf.not_equal(axes, column)[tf.newaxis, :]
        magnitude = tf.where(free, magnitude, -tf.ones_like(magnitude))
    flips = tf.linalg.diag_part(tf.gather(direction, permutation, axis=1)) < 0
    size = tf.cast(tf.reverse(tf.shape(array), [0]), tf.float64)  # x, y[, z]
    chosen = tf.transpose(tf.one_hot(permutation, ndim, dtype=tf.float64))  # [perm[i], i] = 1
    signs = tf.where(flips, tf.constant(-1.0, tf.float64), tf.constant(1.0, tf.float64))
    linear = chosen * signs[tf.newaxis, :]
    offset = tf.linalg.matvec(chosen, tf.where(flips, tf.gather(size, permutation) - 1.0,
                                               tf.zeros_like(size)))
    matrix = tf.concat([tf.concat([linear, offset[:, tf.newaxis]], axis=1),
                        tf.one_hot([ndim], ndim + 1, dtype=tf.float64)], axis=0)
    # Array axis j holds point axis ndim - 1 - j.
    array = tf.transpose(array, tf.stack([ndim - 1 - permutation[ndim - 1 - j]
                                          for j in range(ndim)]))
    for j in range(ndim):
        array = tf.cond(flips[ndim - 1 - j], lambda a=array, j=j: tf.reverse(a, [j]),
                        lambda a=array: a)
    return array, tf.gather(spacing, permutation), matrix


def image_to_landmarks(spec, networks, local_networks=(), iterations=1):
    """The whole prediction of one image as a function of TF tensors.

    Args:
        spec: keraslm.spec.DetectorSpec. Its global stages describe `networks`, its local
            stages `local_networks`, in order.
        networks: sequence of keras.Model. The global (whole-image) networks; several are an
            ensemble whose points are averaged.
        local_networks: sequence of keras.Model. Local stages, each refining the global
            estimate; their points are averaged.
        iterations: int >= 1. Local passes; each centres the crops on the previous estimate.

    Points are averaged in image index units (= in mm), as are confidence and spread.

    Returns:
        `locate(array, spacing, origin, direction)`: array `[y, x]` / `[z, y, x]` of any size
        and real dtype; spacing `(ndim,)` mm per pixel along x, y[, z]; origin `(ndim,)` mm
        (LPS) of index 0; direction `(ndim, ndim)` whose columns are the index axes' unit
        directions (all float64). Returns a dict of `landmarks_index` `(L, ndim)` float64
        (original image index, pixel centres at integers), `landmarks_mm` `(L, ndim)` float64,
        `confidence` `(L,)` float32 (the heatmap peak; the local stages' with local stages),
        `spread_mm` `(L,)` float32 (the last stage's `HeatmapCodec.spread`), `second_peak`
        `(L,)` float32 (the global stages' `HeatmapCodec.second_peak` at their
        `second_peak_radius_mm`: an uncertainty feature a calibration may read) and, for a
        calibrated spec, `expected_error_mm` `(L,)` float32. A calibration with
        `local_weight` blends the global and the refined point per landmark
        (`keraslm.calibration.blend_stages`). A spec trained in the canonical frame
        (`canonical_orientation`) predicts an image in any storage orientation; an image larger
        than a stage's field of view, or (for older specs that recorded a
        `storage_orientation`) stored otherwise than the training images, fails with an
        InvalidArgument error.

    Raises:
        KeraslmError: a spec without a global stage, or `iterations` below 1. (That the
            networks match the spec's stages is `LandmarkDetector`'s invariant.)
    """
    if spec.is_local_only:
        raise KeraslmError(
            "this model is the local stage of a coarse-to-fine model: it refines estimates of a "
            "global model. Predict with the global model and pass this one as refine= "
            "(keraslm-predict GLOBAL_MODEL --refine LOCAL_MODEL)")
    if not (isinstance(iterations, int) and iterations >= 1):
        raise KeraslmError(f"`iterations` must be an int >= 1. Received: iterations={iterations!r}")
    global_stages = [(net, stage, stage.codec) for net, stage in zip(networks, spec.global_stages)]
    refines = [(refine_function(net, stage, with_spread=True), stage)
               for net, stage in zip(local_networks, spec.local_stages)]
    local_weight = spec.local_weight

    def on_grid(array, spacing, stage, prepared):
        """The image on a stage's grid, prepared once per distinct grid and normalisation; the
        normalisation (a pass over every pixel: histogram equalisation of a radiograph) once
        per method, whatever the number of grids."""
        key = (stage.grid, stage.normalization)
        if key not in prepared:
            if stage.normalization not in prepared:
                prepared[stage.normalization] = normalize(array, stage.normalization)
            prepared[key] = prepare_on_grid(prepared[stage.normalization], spacing, stage.grid,
                                            "none")
        return prepared[key]

    def global_answer(array, spacing, prepared):
        """The global stages on one image: points (its index), confidence, spread, second
        peak."""
        points, confidences, spreads, second_peaks = [], [], [], []
        for net, stage, codec in global_stages:
            grid_image, grid_to_image = on_grid(array, spacing, stage, prepared)
            heatmaps = tf.cast(net(grid_image[tf.newaxis, ..., tf.newaxis], training=False),
                               tf.float32)
            points_grid, confidence = codec.decode(heatmaps, method=stage.decode_method)
            points.append(_apply(grid_to_image, tf.cast(points_grid[0], tf.float64)))
            confidences.append(confidence[0])
            spreads.append(codec.spread(heatmaps, stage.grid_spacing)[0])
            second_peaks.append(codec.second_peak(heatmaps, stage.grid_spacing,
                                                  stage.second_peak_radius_mm)[0])
        return _mean(points), _mean(confidences), _mean(spreads), _mean(second_peaks)

    def refined_answer(array, spacing, prepared, answer):
        """The local stages on one image, refining the global `answer` (whose second peak
        the answer keeps)."""
        points_index = answer[0]
        points, confidences, spreads = [], [], []
        for refine, stage in refines:
            fine_image, fine_to_image = on_grid(array, spacing, stage, prepared)
            image_to_fine = tf.linalg.inv(fine_to_image)
            points_fine = tf.cast(_apply(image_to_fine, points_index), tf.float32)[tf.newaxis]
            for _ in range(iterations):
                points_fine, local_confidence, local_spread = refine(
                    fine_image[tf.newaxis, ..., tf.newaxis], points_fine)
            points.append(_apply(fine_to_image, tf.cast(points_fine[0], tf.float64)))
            confidences.append(local_confidence[0])
            spreads.append(local_spread[0])
        refined_index = _mean(points)
        points_index = (refined_index if local_weight is None
                        else blend_stages(points_index, refined_index, local_weight))
        return points_index, _mean(confidences), _mean(spreads), answer[3]

    def mirror_points(points_index, array, axis):
        """Index points of an image <-> of the image reversed along point axis `axis`."""
        size = tf.cast(tf.shape(array)[spec.ndim - 1 - axis], tf.float64)
        flip = tf.one_hot(axis, spec.ndim, dtype=tf.float64)
        return points_index * (1.0 - 2.0 * flip) + flip * (size - 1.0)  # x -> size - 1 - x

    def stages(array, spacing):
        """Every stage on one image: points (its index), confidence, spread, second peak.

        With a mirror check, the facing is decided on the global stages' mean confidence: below
        the threshold, the global stages run on the mirrored image too and the surer facing is
        kept; the local stages then run once, on that facing."""
        prepared = {}
        answer = global_answer(array, spacing, prepared)
        check = spec.mirror_check
        if check is None:
            return refined_answer(array, spacing, prepared, answer) if refines else answer
        axis = "xyz".index(check.axis)
        array_axis = spec.ndim - 1 - axis
        confidence = tf.reduce_mean(answer[1])

        def mirror(upright):
            # Normalisation maps each pixel by a table of the whole image: a mirror's is the
            # mirrored normalisation, so only the grids are prepared again.
            return {key: tf.reverse(value, [array_axis]) for key, value in upright.items()
                    if not isinstance(key, tuple)}

        def try_mirrored():
            other = global_answer(tf.reverse(array, [array_axis]), spacing, mirror(prepared))
            return tf.reduce_mean(other[1]) > confidence, other

        def keep_upright():
            return tf.constant(False), tuple(tf.zeros_like(part) for part in answer)

        use_mirror, mirrored_answer = tf.cond(confidence < check.confidence_below,
                                              try_mirrored, keep_upright)
        if not refines:
            mapped = (mirror_points(mirrored_answer[0], array, axis),) + tuple(mirrored_answer[1:])
            return tuple(tf.where(use_mirror, mine, theirs)
                         for mine, theirs in zip(mapped, answer))

        def refine_mirrored():
            reversed_array = tf.reverse(array, [array_axis])
            points, *features = refined_answer(reversed_array, spacing, mirror(prepared),
                                               mirrored_answer)
            return (mirror_points(points, array, axis), *features)

        # Each branch prepares into its own copy: tensors made inside a branch stay there.
        return tf.cond(use_mirror, refine_mirrored,
                       lambda: refined_answer(array, spacing, dict(prepared), answer))

    def locate(array, spacing, origin, direction):
        if spec.storage_orientation is not None:
            with tf.control_dependencies([_orientation_check(spec.storage_orientation, direction)]):
                array = tf.identity(array)
        spacing = image_spacing = tf.cast(spacing, tf.float64)
        if spec.canonical_orientation:
            array, spacing, canonical_to_image = canonical_frame(
                array, spacing, tf.cast(direction, tf.float64))
        points_index, confidence, spread, second_peak = stages(array, spacing)
        if spec.canonical_orientation:
            points_index = _apply(canonical_to_image, points_index)
        index_to_mm = tf.cast(direction, tf.float64) * image_spacing[tf.newaxis, :]
        points_mm = tf.linalg.matvec(index_to_mm, points_index) + tf.cast(origin, tf.float64)
        outputs = {"landmarks_index": points_index, "landmarks_mm": points_mm,
                   "confidence": confidence, "spread_mm": spread, "second_peak": second_peak}
        if spec.calibration is not None:
            outputs["expected_error_mm"] = expected_error_mm(
                spec.calibration, confidence, spread, points_mm,
                None if spec.mirror_check is None else "xyz".index(spec.mirror_check.axis),
                second_peak=second_peak)
        return outputs

    return locate


def output_names(spec):
    """The keys of `locate`'s answer for `spec`."""
    return CALIBRATED_OUTPUTS if spec.calibration is not None else OUTPUTS
