"""Fixtures shared by the test modules, built once per test run.

- `phantom2d`: a 12-image 2D phantom (PNG and DICOM files, 80x72 pixels, 37 landmarks).
- `trained_2d`: a small U-Net briefly trained on it (fold 0 of a 2-fold split: 6 training, 6
  validation images; 60 steps, clear heatmap peaks), its run folder and its SavedModel export.
- `cascade_2d`: a coarse-to-fine pair (global U-Net + local stage) on an 8-image phantom, and
  its export with `keraslm-export --refine`.

The suite runs in pytest-xdist workers, a test file per worker at a time (`--dist loadfile`,
setup.cfg). `phantom2d` and `trained_2d` are built once per run for all workers (the first
builds under a file lock, the others load its result), and so is `cascade_2d`. Tests must
not change what these fixtures wrote (copy a run folder first, as test_evaluation
does). Markers: `slow` marks tests that start subprocesses, several workers, whole experiment
drivers, a fine 3D training or a chain of trainings, calibration and export (the longest
end-to-end paths, each also covered in parts by faster tests); the default run leaves them out (setup.cfg), `pytest -m slow`
runs them, `pytest -m ""` runs everything.
"""
import pytest

from helpers import built_once as _built_once


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: starts subprocesses, several workers, experiment drivers, a fine 3D "
                   "training or a long end-to-end chain (left out by default; run with -m slow)")


@pytest.fixture(scope="session")
def phantom2d_root(tmp_path_factory):
    """The folder of the 12-image 2D phantom (dataset.json, images/, landmarks.csv)."""
    def build(folder):
        from keraslm.datasets import make_phantom

        make_phantom(folder, ndim=2, num_images=12, seed=4, image_size=(80, 72))
        return folder

    return _built_once(tmp_path_factory, "phantom2d", build)


@pytest.fixture(scope="session")
def phantom2d(phantom2d_root):
    """The 12-image 2D phantom dataset (`keraslm.data.LandmarkDataset`)."""
    from keraslm.data import load_folder

    return load_folder(str(phantom2d_root))


@pytest.fixture(scope="session")
def trained_2d(phantom2d_root, phantom2d, tmp_path_factory):
    """(TrainingResult, dataset): a small U-Net on `phantom2d`, fold 0 of 2, exported (version
    folder `result.export_path`)."""
    def build(folder):
        from keraslm.training import TrainingConfig, train

        return train(TrainingConfig(
            dataset=str(phantom2d_root), architecture="unet",
            grid_shape=(48, 48), steps=60, steps_per_epoch=30, batch_size=3, fold=0, num_folds=2,
            output_dir=str(folder / "run"), model_overrides={"filters": 8}, jit="off",
            export_dir=str(folder / "saved_models" / "run")))

    return _built_once(tmp_path_factory, "trained_2d", build), phantom2d


@pytest.fixture(scope="session")
def cascade_2d(tmp_path_factory):
    """(root, dataset, global TrainingResult, local TrainingResult, export version folder)."""
    def build(root):
        from keraslm.commands.export import main as export_main
        from keraslm.datasets import make_phantom
        from keraslm.training import TrainingConfig, train

        root.mkdir(parents=True, exist_ok=True)
        dataset = make_phantom(root / "phantom", ndim=2, num_images=8, seed=5, image_size=(64, 64))
        common = dict(dataset=str(root / "phantom"), architecture="unet", steps=4,
                      steps_per_epoch=2, test_fraction=0.25,
                      model_overrides={"filters": 4, "num_levels": 2}, jit="off")
        coarse = train(TrainingConfig(grid_shape=(32, 32), batch_size=2,
                                      output_dir=str(root / "global"), **common))
        local = train(TrainingConfig(crop_shape=(16, 16), grid_spacing=2.0, batch_size=1,
                                     landmarks_per_image=8, translation_mm=4.0,
                                     output_dir=str(root / "local"), **common))
        base = root / "served" / "cascade"
        assert export_main([coarse.output_dir, str(base), "--refine", local.output_dir]) == 0
        return root, dataset, coarse, local, str(base / "1")

    return _built_once(tmp_path_factory, "cascade_2d", build)
