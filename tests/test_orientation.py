"""Images in any storage orientation: the canonical frame (keraslm.io.Image.canonical, its TF twin
keraslm.prediction.graph.canonical_frame) and predictions that do not depend on how a volume is
stored (keraslm.predict, the SavedModel's predict_array, DICOM series)."""
import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf

from keraslm.io import Image, read_image, write_nifti
from keraslm.io.image import canonical_axes, canonical_to_index_matrix


def _stored_otherwise(image, permutation, flips):
    """The same physical image stored with its index axes permuted and reversed: index axis i
    of the copy is the image's axis permutation[i], reversed where flips[i]."""
    ndim = image.ndim
    array = np.transpose(image.array, [ndim - 1 - permutation[ndim - 1 - j] for j in range(ndim)])
    array = np.flip(array, axis=[ndim - 1 - i for i in range(ndim) if flips[i]])
    # The copy is to the image what a canonical image is to the image it came from.
    copy_to_image = canonical_to_index_matrix(permutation, flips, image.size)
    spacing = image.spacing[list(permutation)]
    linear = image.index_to_physical_matrix @ copy_to_image[:ndim, :ndim]
    copy = Image(array, spacing=spacing, origin=image.index_to_physical(copy_to_image[:ndim, ndim]),
                 direction=linear / spacing[np.newaxis, :])
    return copy, copy_to_image


def _orientations(ndim):
    return [(p, f) for p in itertools.permutations(range(ndim))
            for f in itertools.product((False, True), repeat=ndim)]


def _rotation(degrees):
    angle = np.radians(degrees)
    return np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0],
                     [0, 0, 1.0]])


@pytest.mark.parametrize("ndim", [2, 3])
def test_every_storage_order_has_the_same_canonical_image(ndim):
    """All 8 (2D) / 48 (3D) axis orders and directions of one image - also an oblique one - come
    back as the same canonical array and geometry, in numpy and in the graph, with an exact map
    back to each copy's own index."""
    rng = np.random.default_rng(0)
    shape = (5, 6, 7)[-ndim:]
    direction = _rotation(20.0)[:ndim, :ndim] if ndim == 2 else _rotation(20.0)
    image = Image(rng.normal(size=shape), spacing=(0.5, 0.7, 1.1)[:ndim], origin=(3, -4, 5)[:ndim],
                  direction=direction)
    points = rng.uniform(0, 4, (6, ndim))
    from keraslm.prediction.graph import canonical_frame

    function = tf.function(canonical_frame, input_signature=[
        tf.TensorSpec([None] * ndim, tf.float64), tf.TensorSpec([ndim], tf.float64),
        tf.TensorSpec([ndim, ndim], tf.float64)])
    for permutation, flips in _orientations(ndim):
        copy, copy_to_image = _stored_otherwise(image, permutation, flips)
        np.testing.assert_allclose(  # The copy is the same physical image.
            copy.index_to_physical(points),
            image.index_to_physical(points @ copy_to_image[:ndim, :ndim].T + copy_to_image[:ndim, ndim]))
        canonical, canonical_to_copy = copy.canonical()
        np.testing.assert_array_equal(canonical.array, image.array)
        np.testing.assert_allclose(canonical.spacing, image.spacing)
        np.testing.assert_allclose(canonical.origin, image.origin, atol=1e-9)
        np.testing.assert_allclose(canonical.direction, image.direction, atol=1e-12)
        np.testing.assert_allclose(
            copy.index_to_physical(points @ canonical_to_copy[:ndim, :ndim].T + canonical_to_copy[:ndim, ndim]),
            canonical.index_to_physical(points), atol=1e-9)
        array, spacing, matrix = function(tf.constant(copy.array), tf.constant(copy.spacing),
                                          tf.constant(copy.direction))
        np.testing.assert_array_equal(array.numpy(), image.array)
        np.testing.assert_allclose(spacing.numpy(), image.spacing)
        np.testing.assert_allclose(matrix.numpy(), canonical_to_copy)
    assert canonical_axes(np.diag([-1.0, 1.0, -1.0])) == ((0, 1, 2), (True, False, True))
    assert canonical_axes(np.array([[0, 0, 1.0], [1.0, 0, 0], [0, -1.0, 0]])) == (
        (2, 0, 1), (False, False, True))


def _detector_3d(dataset):
    """A small 3D detector with random weights throughout (heads too), so that its points
    depend on every voxel it sees."""
    from keraslm.models import build_model
    from keraslm.prediction import LandmarkDetector
    from keraslm.spec import DetectorSpec, stage_spec
    from keraslm.training.pipeline import choose_grid

    keras.utils.set_random_seed(3)
    network = build_model("unet", 3, dataset.num_landmarks, preset="small", filters=4)
    rng = np.random.default_rng(3)
    network.set_weights([w if np.any(w) else rng.normal(0, 0.3, w.shape).astype(w.dtype)
                         for w in network.get_weights()])
    grid = choose_grid(dataset, (16, 16, 16))
    spec = DetectorSpec(tuple(dataset.landmark_names), 3,
                        (stage_spec(network, grid, "standardize", 2.0, "quadratic"),),
                        canonical_orientation=True)
    return LandmarkDetector(spec, [network])


def test_a_volume_predicts_the_same_millimetres_in_every_storage_order(tmp_path):
    """A NIfTI volume and copies of it stored with rows, columns and slices reversed and with
    axes permuted (the same physical image): the same landmarks in mm, within 0.5 voxel, through
    keraslm.predict, the SavedModel's predict_array and the serving client; landmarks_index is
    each file's own."""
    from helpers import saved_model_transport

    from keraslm.datasets.phantom import make_phantom
    from keraslm.export import export_saved_model
    from keraslm.prediction import predict
    from keraslm.serving import ServingClient

    dataset = make_phantom(tmp_path / "phantom3d", ndim=3, num_images=2, seed=2,
                           image_size=(24, 28, 20))
    detector = _detector_3d(dataset)
    image = next(read_image(r.image_path) for r in dataset.records
                 if r.image_path.endswith((".nii", ".nii.gz")))
    reference = predict(detector, [image])[0]
    version = export_saved_model(detector, tmp_path / "export")
    loaded = tf.saved_model.load(version)
    served = loaded.signatures["predict_array"]
    client = ServingClient("volume", version, transport=saved_model_transport(loaded, []))
    choices = [((0, 1, 2), (True, True, True)), ((2, 0, 1), (False, True, False)),
               ((1, 2, 0), (True, False, True)), ((0, 2, 1), (False, False, True))]
    for number, (permutation, flips) in enumerate(choices):
        copy, copy_to_image = _stored_otherwise(image, permutation, flips)
        path = str(tmp_path / f"copy{number}.nii.gz")
        write_nifti(path, copy)
        stored = read_image(path)
        for through in ("predict", "predict_array", "serving client"):
            if through != "predict_array":
                answer = (predict(detector, [path]) if through == "predict"
                          else client.predict([path]))[0]
                points_mm, points_index = answer.points_mm, answer.points_index
            else:
                outputs = served(image=tf.constant(stored.array, tf.float32),
                                 spacing=tf.constant(stored.spacing, tf.float32),
                                 origin=tf.constant(stored.origin, tf.float32),
                                 direction=tf.constant(stored.direction, tf.float32))
                points_mm, points_index = (outputs["landmarks_mm"].numpy(),
                                           outputs["landmarks_index"].numpy())
            voxel = float(np.min(image.spacing))
            np.testing.assert_allclose(points_mm, reference.points_mm, atol=0.5 * voxel,
                                       err_msg=f"{through}, stored {permutation} {flips}")
            # In the copy's own index: the same place as the original's index.
            back = points_index @ copy_to_image[:3, :3].T + copy_to_image[:3, 3]
            np.testing.assert_allclose(back, reference.points_index, atol=0.5)
    assert np.ptp(reference.points_index, axis=0).max() > 1.0  # The points are not all alike.


def test_a_dicom_series_stored_feet_first_predicts_like_head_first(tmp_path):
    """A DICOM series whose slices run from head to feet and rows bottom-up (direction
    diag(1, -1, -1)) predicts the same mm as the series stored head-first."""
    from keraslm.datasets.phantom import make_phantom
    from keraslm.io import write_dicom_series
    from keraslm.prediction import predict

    dataset = make_phantom(tmp_path / "phantom3d", ndim=3, num_images=2, seed=2,
                           image_size=(24, 28, 20))
    detector = _detector_3d(dataset)
    image = next(read_image(r.image_path) for r in dataset.records
                 if r.image_path.endswith((".nii", ".nii.gz")))
    head_first, _ = _stored_otherwise(image, (0, 1, 2), (False, False, False))
    feet_first, _ = _stored_otherwise(image, (0, 1, 2), (False, True, True))
    answers = []
    for name, stored in (("head_first", head_first), ("feet_first", feet_first)):
        write_dicom_series(str(tmp_path / name), stored, modality="MR")
        read = read_image(str(tmp_path / name))
        np.testing.assert_allclose(read.direction, stored.direction, atol=1e-6)
        answers.append(predict(detector, [str(tmp_path / name)])[0])
    voxel = float(np.min(image.spacing))
    np.testing.assert_allclose(answers[1].points_mm, answers[0].points_mm, atol=0.5 * voxel)


def test_older_models_keep_their_storage_order_and_canonically_stored_ones_upgrade():
    """A recorded model whose training images were stored +x +y is in the canonical frame
    already; one trained on images stored otherwise keeps its storage-orientation check; the
    two kinds do not combine. A 2D model that recorded no storage orientation (keraslm 0.1's,
    the shipped ISBI versions) is taken as canonical - 2D training images are stored +x +y -,
    a 3D one is left as it was."""
    from keraslm.errors import KeraslmError
    from keraslm.spec import DetectorSpec, StageSpec, upgrade_spec

    stage = StageSpec(architecture="unet", grid_shape=(16, 16), grid_spacing=(1.0, 1.0),
                      normalization="standardize", output_stride=1, size_divisor=8, sigma=2.0,
                      decode_method="quadratic")
    plain = DetectorSpec(("a", "b"), 2, (stage,))
    for stored, canonical in ((["+x", "+y"], True), (["+x", "-y"], False), (None, True)):
        recorded = {**plain.to_json(), "storage_orientation": stored}
        recorded.pop("canonical_orientation")  # As keraslm 0.2.1 wrote it.
        spec = upgrade_spec(recorded, "model.keras")
        assert spec.canonical_orientation is canonical
        assert spec.storage_orientation == (None if canonical or stored is None else tuple(stored))
    stage_3d = StageSpec(architecture="unet", grid_shape=(8, 16, 16), grid_spacing=(1.0,) * 3,
                         normalization="standardize", output_stride=1, size_divisor=8, sigma=2.0,
                         decode_method="quadratic")
    recorded = {**DetectorSpec(("a", "b"), 3, (stage_3d,)).to_json(), "storage_orientation": None}
    recorded.pop("canonical_orientation")
    assert not upgrade_spec(recorded, "model.keras").canonical_orientation
    new = plain.replace(canonical_orientation=True)
    assert upgrade_spec(new.to_json(), "model.keras") == new
    with pytest.raises(KeraslmError, match="the stages see images in different frames"):
        new.combined_with(plain.replace(storage_orientation=("+x", "-y")))
    with pytest.raises(KeraslmError, match="records no storage_orientation"):
        new.replace(storage_orientation=("+x", "+y"))


def test_training_prepares_a_mixed_dataset_like_one_stored_one_way(tmp_path):
    """The training pipeline sees every image in the canonical frame: a dataset whose volumes are
    stored in other orders gives the same grid images, landmarks and grid as the original."""
    from keraslm.data import LandmarkDataset, Record
    from keraslm.datasets.phantom import make_phantom
    from keraslm.training.pipeline import choose_grid, prepare_samples

    dataset = make_phantom(tmp_path / "phantom3d", ndim=3, num_images=3, seed=4,
                           image_size=(20, 24, 16))
    orders = [((2, 0, 1), (False, True, False)), ((0, 1, 2), (True, True, False)),
              ((1, 2, 0), (False, False, True))]
    records = []
    for record, (permutation, flips) in zip(dataset.records, orders):
        copy, _ = _stored_otherwise(dataset.read_image(record), permutation, flips)
        path = str(tmp_path / f"{record.id}.nii.gz")
        write_nifti(path, copy)
        records.append(Record(record.id, path, record.points_mm))
    mixed = LandmarkDataset("mixed", tuple(records), dataset.landmark_names, 3)
    grid = choose_grid(dataset, (16, 16, 16))
    assert choose_grid(mixed, (16, 16, 16)) == grid
    original, reordered = prepare_samples(dataset, grid), prepare_samples(mixed, grid)
    np.testing.assert_allclose(reordered.images, original.images, atol=1e-5)
    np.testing.assert_allclose(reordered.points_grid, original.points_grid, atol=1e-4)
    np.testing.assert_allclose(reordered.grid_to_physical(reordered.points_grid),
                               np.stack([r.points_mm for r in dataset.records]), atol=1e-3)
