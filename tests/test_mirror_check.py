"""The mirror check (keraslm.spec.MirrorCheck): an image whose mean confidence is low is predicted
mirrored too and the surer answer kept, in the prediction graph, so keraslm.predict, the
SavedModel and TF Serving behave alike."""
import numpy as np
import pytest

from keraslm.errors import KeraslmError
from keraslm.io import Image
from keraslm.prediction import LandmarkDetector, load_detector, predict
from keraslm.spec import MirrorCheck, upgrade_spec


def _mirrored(image):
    return Image(np.ascontiguousarray(image.array[:, ::-1]), spacing=image.spacing,
                 origin=image.origin, direction=image.direction)


# Slow (22 s: 4 images and their mirrors through three detectors, an export); the check's
# recording, fitting and validation are in the default run.
@pytest.mark.slow
def test_an_image_and_its_mirror_get_mirrored_answers_when_both_are_tried(trained_2d, tmp_path):
    """With a threshold above every confidence both facings are tried for every image, so an
    image and its mirror have the same candidates: their answers are mirrors of each other,
    and the answer is the surer facing's. With a threshold below every confidence nothing
    changes. The check survives export."""
    from keraslm.commands.export import main as export_main

    result, dataset = trained_2d
    detector = load_detector(result.model_path)
    plain = detector.spec
    always = LandmarkDetector(plain.replace(mirror_check=MirrorCheck("x", 1e30)), detector.networks)
    never = LandmarkDetector(plain.replace(mirror_check=MirrorCheck("x", -1e30)), detector.networks)
    images = [dataset.read_image(record) for record in dataset.records[:4]]
    mirrors = [_mirrored(image) for image in images]
    as_is, mirrored_as_is = predict(detector, images), predict(detector, mirrors)
    both, mirrored_both = predict(always, images), predict(always, mirrors)
    for image, a, b, plain_a, plain_b in zip(images, both, mirrored_both, as_is, mirrored_as_is):
        width = image.size[0]
        np.testing.assert_allclose(b.points_index[:, 0], width - 1 - a.points_index[:, 0], atol=1e-3)
        np.testing.assert_allclose(b.points_index[:, 1], a.points_index[:, 1], atol=1e-3)
        surer = plain_a if plain_a.confidence.mean() >= plain_b.confidence.mean() else plain_b
        np.testing.assert_allclose(a.confidence.mean(), surer.confidence.mean(), rtol=1e-5)
        # The second peak is the kept facing's too.
        np.testing.assert_allclose(a.second_peak, b.second_peak, atol=1e-5)
        np.testing.assert_allclose(a.second_peak, surer.second_peak, atol=1e-5)
    for a, b in zip(predict(never, images), as_is):
        np.testing.assert_array_equal(a.points_mm, b.points_mm)
    assert export_main([result.output_dir, str(tmp_path / "served"), "--mirror-check", "x:1e30"]) == 0
    served = predict(str(tmp_path / "served" / "1"), mirrors[:1])[0]
    np.testing.assert_allclose(served.points_mm, mirrored_both[0].points_mm, atol=1e-3)


def test_mirror_check_is_recorded_fitted_and_checked(trained_2d, capsys):
    from keraslm.calibration import fit_mirror_threshold
    from keraslm.commands.export import main as export_main

    result, _ = trained_2d
    spec = load_detector(result.model_path).spec.replace(mirror_check=MirrorCheck("x", 30))
    assert upgrade_spec(spec.to_json(), "model.keras") == spec
    assert spec.to_json()["mirror_check"] == {"axis": "x", "confidence_below": 30.0}
    assert fit_mirror_threshold([55.0, 60.0], [10.0, 15.0]) == 35.0
    assert 15.0 < fit_mirror_threshold([12.0, 60.0], [10.0, 15.0]) < 15.001
    with pytest.raises(KeraslmError, match="cannot mirror along z"):
        spec.replace(mirror_check=MirrorCheck("z", 30))
    with pytest.raises(KeraslmError, match="axis must be 'x', 'y' or 'z'"):
        MirrorCheck("left", 30)
    with pytest.raises(KeraslmError, match="confidence_below must be a finite number"):
        MirrorCheck("x", float("inf"))  # Every image mirrored: not a check.
    assert export_main([result.output_dir, "/nonexistent/never", "--mirror-check", "x"]) != 0
    assert "--mirror-check takes AXIS:CONFIDENCE, e.g. x:30" in capsys.readouterr().err


def test_the_facing_is_decided_by_the_global_stage_and_refined_once(cascade_2d):
    """Coarse-to-fine: the global stage decides the facing (its surer mean confidence), the
    local stage then refines on that facing only, so an image and its mirror get mirrored
    answers when both facings are tried, equal to the plain pair's answer on the chosen facing
    (mapped back); below-threshold-never leaves the pair's answers unchanged."""
    from keraslm.prediction import combine_detectors

    _, dataset, coarse, local, _ = cascade_2d
    pair = combine_detectors([load_detector(coarse.model_path), load_detector(local.model_path)])
    global_only = load_detector(coarse.model_path)

    def checked(threshold):
        return LandmarkDetector(pair.spec.replace(mirror_check=MirrorCheck("x", threshold)),
                                pair.networks, pair.local_networks)

    images = [dataset.read_image(record) for record in dataset.records[:3]]
    mirrors = [_mirrored(image) for image in images]
    plain, plain_mirrored = predict(pair, images), predict(pair, mirrors)
    both, both_mirrored = predict(checked(1e30), images), predict(checked(1e30), mirrors)
    global_upright, global_mirrored = predict(global_only, images), predict(global_only, mirrors)
    for image, a, b, pa, pb, ga, gb in zip(images, both, both_mirrored, plain, plain_mirrored,
                                           global_upright, global_mirrored):
        width = image.size[0]
        np.testing.assert_allclose(b.points_index[:, 0], width - 1 - a.points_index[:, 0], atol=1e-3)
        np.testing.assert_allclose(b.points_index[:, 1], a.points_index[:, 1], atol=1e-3)
        if ga.confidence.mean() >= gb.confidence.mean():  # the image's own facing is surer
            np.testing.assert_allclose(a.points_mm, pa.points_mm, atol=1e-3)
            np.testing.assert_allclose(a.confidence, pa.confidence, rtol=1e-4)
        else:  # its mirror's: the pair's answer on the mirror, mapped back
            np.testing.assert_allclose(a.points_index[:, 0], width - 1 - pb.points_index[:, 0],
                                       atol=1e-3)
            np.testing.assert_allclose(a.confidence, pb.confidence, rtol=1e-4)
    for a, b in zip(predict(checked(-1e30), images), plain):
        np.testing.assert_array_equal(a.points_mm, b.points_mm)
