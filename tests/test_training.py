"""Tests of keraslm.training: pipeline, a short training run, resume after SIGKILL, bad input."""
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from keraslm import DatasetError, KeraslmError
from keraslm.datasets import make_phantom
from keraslm.training import (
    TrainingConfig,
    choose_grid,
    evaluation_dataset,
    prepare_samples,
    streaming_training_dataset,
    train,
    training_dataset,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_MODEL = {"filters": 8}


@pytest.fixture(scope="module")
def phantom_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantom") / "phantom2d"
    make_phantom(root, ndim=2, num_images=16, seed=1, image_size=(96, 96))
    return str(root)


def test_pipeline_shapes_and_landmarks_on_grid(phantom_root):
    dataset = make_phantom(phantom_root, ndim=2, num_images=16, seed=1, image_size=(96, 96))
    grid = choose_grid(dataset, (64, 48))
    samples = prepare_samples(dataset, grid)
    assert samples.images.shape == (16, 64, 48, 1) and samples.images.dtype == np.float32
    assert samples.points_grid.shape == (16, 37, 2) and samples.points_grid.dtype == np.float32
    # Every landmark lies on the grid, and maps back to its physical position exactly.
    assert np.all(samples.points_grid >= -0.5) and np.all(samples.points_grid[..., 0] <= 47.5)
    np.testing.assert_allclose(
        samples.grid_to_physical(samples.points_grid), dataset.points_mm, atol=1e-3
    )
    images, points = next(iter(training_dataset(samples, batch_size=5)))
    assert images.shape == (5, 64, 48, 1) and points.shape == (5, 37, 2)
    batches = list(evaluation_dataset(samples, batch_size=5))
    assert len(batches) == 4 and all(b[0].shape[0] == 5 for b in batches)
    assert np.all(np.isnan(batches[-1][1].numpy()[1:]))  # Padding: no landmarks.


def test_streaming_pipeline_matches_in_memory_samples(phantom_root, tmp_path):
    dataset = make_phantom(phantom_root, ndim=2, num_images=16, seed=1, image_size=(96, 96))
    grid = choose_grid(dataset, (32, 32))
    data = streaming_training_dataset(dataset, grid, batch_size=16, cache_file=str(tmp_path / "cache"))
    images, points = next(iter(data))
    samples = prepare_samples(dataset, grid)
    # One batch holds the whole (shuffled) set: compare as sets of samples via their landmarks.
    order = np.argsort(points.numpy()[:, 0, 0])
    expected = np.argsort(samples.points_grid[:, 0, 0])
    np.testing.assert_allclose(points.numpy()[order], samples.points_grid[expected], atol=1e-5)
    np.testing.assert_allclose(images.numpy()[order], samples.images[expected], atol=1e-5)
    assert any(name.startswith("cache") for name in os.listdir(tmp_path))


def test_cache_prefix_is_keyed_by_what_the_cache_holds(tmp_path):
    """--cache-file: another fold, grid or normalisation gets its own cache (a cache found by
    its path alone trained a second fold on the first's images); what a training killed in its
    first pass left is removed, a finished cache kept."""
    from keraslm.training.pipeline import cache_prefix, clear_unfinished_cache

    dataset = make_phantom(str(tmp_path / "data"), ndim=2, num_images=8, seed=1,
                           image_size=(64, 64))
    grid = choose_grid(dataset, (32, 32))
    os.makedirs(tmp_path / "caches")
    base = str(tmp_path / "caches" / "cache")
    prefix = cache_prefix(base, dataset, grid)
    assert prefix.startswith(base + "-") and len(prefix) == len(base) + 13
    assert cache_prefix(base, dataset, grid) == prefix
    others = {cache_prefix(base, dataset.subset(dataset.ids[:4]), grid),
              cache_prefix(base, dataset.subset(dataset.ids[4:]), grid),
              cache_prefix(base, dataset, choose_grid(dataset, (16, 16))),
              cache_prefix(base, dataset, grid, "standardize")}
    assert len(others) == 4 and prefix not in others
    left = [prefix + "_0.lockfile", prefix + "_0.data-00000-of-00001.tempstate123"]
    for path in left + [base + "-other_0.lockfile"]:
        open(path, "w").close()
    assert clear_unfinished_cache(prefix) == sorted(left)
    assert sorted(os.listdir(tmp_path / "caches")) == ["cache-other_0.lockfile"]
    for path in (prefix + ".index", prefix + "_0.lockfile"):
        open(path, "w").close()
    assert clear_unfinished_cache(prefix) == [] and os.path.exists(prefix + "_0.lockfile")


def test_short_training_lowers_loss_and_point_error(phantom_root, tmp_path):
    config = TrainingConfig(
        dataset=phantom_root, architecture="unet", grid_shape=(64, 64), steps=60,
        steps_per_epoch=30, batch_size=4, test_fraction=0.25, output_dir=str(tmp_path / "run"),
        model_overrides=TINY_MODEL, jit="on",
    )
    result = train(config)
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert history["loss"][-1] < history["loss"][0]
    assert history["val_point_error_mm"][-1] < history["val_point_error_mm"][0]
    assert result.errors_mm.shape == (4, 37)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["summary"]["count"] == 4 * 37 and metrics["optimizer_iterations"] == 60
    # The mean-position baseline, recomputed here from the dataset: every validation landmark
    # at the mean of its training positions (physical mm).
    from keraslm.datasets import load_dataset

    dataset = load_dataset(phantom_root)
    held_out = np.isin(dataset.ids, metrics["validation_ids"])
    means = np.nanmean(dataset.points_mm[~held_out], axis=0)
    baseline = np.linalg.norm(dataset.points_mm[held_out] - means, axis=-1)
    assert metrics["mean_position_baseline"]["mean_mm"] == pytest.approx(np.nanmean(baseline))
    assert result.baseline_summary["median_mm"] == pytest.approx(np.nanmedian(baseline))
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())
    assert recorded["plan"]["grid_shape"] == [64, 64] and recorded["plan"]["reasons"]["grid"] == (
        "--grid-shape given; the smallest spacing at which every image fits")
    assert os.path.isfile(result.model_path)
    assert not os.path.exists(tmp_path / "run" / "checkpoints")  # Removed when finished.


@pytest.mark.slow
def test_resume_after_sigkill(phantom_root, tmp_path):
    output = tmp_path / "run"
    command = [
        sys.executable, os.path.join(REPO, "train.py"), "--dataset", phantom_root,
        "--architecture", "downsampling", "--grid-shape", "32,32", "--steps", "40",
        "--steps-per-epoch", "5", "--batch-size", "2", "--output-dir", str(output), "--jit", "off", "--no-export", "--model-option", "filters=4",
    ]
    env = {**os.environ, "CI": "1"}
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    metadata = output / "checkpoints" / "training_metadata.json"
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
        if metadata.exists() and json.loads(metadata.read_text() or "{}").get("epoch", 0) >= 2:
            break
        time.sleep(0.2)
    assert process.poll() is None, "training finished before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (output / "model.keras").exists()
    again = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 2 and "pass --resume" in again.stderr
    changed = subprocess.run(command + ["--resume", "--steps", "80"], capture_output=True,
                             text=True, env=env, timeout=300)
    assert changed.returncode == 2 and "was started with other settings: steps 80" in changed.stderr
    assert "Traceback" not in changed.stderr
    # A typed option counts even when it is the default (scn): refused, not dropped.
    typed = subprocess.run(command + ["--resume", "--architecture", "scn"], capture_output=True,
                           text=True, env=env, timeout=300)
    assert typed.returncode == 2 and "architecture 'scn' (config.json: 'downsampling')" in typed.stderr
    # The README's form: the run's own settings from its config.json, not the defaults
    # (2000 steps, another dataset); --jit may change on resume.
    resumed = subprocess.run([sys.executable, os.path.join(REPO, "train.py"), "--resume",
                              "--output-dir", str(output), "--jit", "off"],
                             capture_output=True, text=True, env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert not os.path.exists(os.path.join(REPO, "saved_models", "run"))  # --no-export kept.
    config = json.loads((output / "config.json").read_text())
    assert config["dataset"] == os.path.abspath(phantom_root) and config["steps"] == 40
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["optimizer_iterations"] == 40  # Same total step count as an unbroken run.
    history = json.loads((output / "history.json").read_text())
    # The whole run's curve: the epochs before the kill kept, those after the checkpoint re-run.
    assert len(history["loss"]) == len(history["val_loss"]) == 8
    assert np.all(np.isfinite(history["loss"]))
    finished = subprocess.run(command + ["--resume"], capture_output=True, text=True, env=env,
                              timeout=300)
    assert finished.returncode == 2 and "holds a finished run" in finished.stderr


def test_training_lock_keeps_a_second_training_out(tmp_path):
    from keraslm.run_folder import LOCK_FILE, RunFolder
    run = RunFolder(tmp_path / "run")
    with run.training_lock():
        assert (tmp_path / "run" / LOCK_FILE).read_text() == f"{os.getpid()}\n"
        with pytest.raises(KeraslmError, match=f"being trained by another process .pid {os.getpid()}"):
            with RunFolder(tmp_path / "run").training_lock():
                pass  # pragma: no cover
        (tmp_path / "run" / "config.json").write_text("{}")
    with run.training_lock():  # Released on leaving; a folder with contents is kept.
        pass
    assert (tmp_path / "run" / LOCK_FILE).read_text() == ""  # No stale pid.
    assert sorted(os.listdir(tmp_path / "run")) == [LOCK_FILE, "config.json"]
    with pytest.raises(RuntimeError):
        with RunFolder(tmp_path / "fresh").training_lock():
            raise RuntimeError("the training failed before writing anything")
    assert not (tmp_path / "fresh").exists()
    # Another process holding it (what a queue's or a second train.py's lock is).
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'a+'); "
         "fcntl.flock(f, fcntl.LOCK_EX); f.truncate(0); f.write('4242'); f.flush(); print('held', flush=True); "
         "time.sleep(60)", run.lock_path], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(KeraslmError, match="pid 4242"):
            with run.training_lock():
                pass  # pragma: no cover
    finally:
        holder.kill()
        holder.wait()
    with run.training_lock():  # The system released the killed holder's lock.
        pass


@pytest.mark.slow
def test_resume_with_nothing_to_resume_and_output_dir_a_file(phantom_root, tmp_path):
    command = [sys.executable, os.path.join(REPO, "train.py"), "--dataset", phantom_root,
               "--steps", "2", "--no-export"]
    nothing = subprocess.run(command + ["--output-dir", str(tmp_path / "empty"), "--resume"],
                             capture_output=True, text=True, timeout=300)
    assert nothing.returncode == 2 and "nothing to resume in" in nothing.stderr
    assert "Traceback" not in nothing.stderr
    (tmp_path / "file").write_text("not a folder")
    clash = subprocess.run(command + ["--output-dir", str(tmp_path / "file")],
                           capture_output=True, text=True, timeout=300)
    assert clash.returncode == 2 and "is a file, not a folder" in clash.stderr
    assert "Traceback" not in clash.stderr and (tmp_path / "file").read_text() == "not a folder"


@pytest.mark.parametrize(
    "overrides, error, message",
    [
        ({"batch_size": 20}, DatasetError, r"the training set has 12 images, fewer than the batch size 20"),
        ({"grid_shape": (16, 32, 32)}, KeraslmError, r"is 2D but --grid-shape \(16, 32, 32\) is 3D"),
        ({"training_preset": "fast"}, ValueError, r"Unknown training preset.*Received: preset='fast'"),
        ({"grid_spacing": 0.5}, KeraslmError, r"is larger than the grid's field of view"),
        ({"grid_shape": (60, 60)}, ValueError, r"divisible by 8"),
        ({"ndim": 3}, KeraslmError, r"is 2D but a 3D model was requested \(--ndim\)"),
        ({"grid_shape": None, "crop_shape": (16, 16)}, KeraslmError, r"local stage \(--crop-shape\) needs --grid-spacing"),
        ({"grid_shape": None, "crop_shape": (8, 16, 16), "grid_spacing": 2.0}, KeraslmError,
         r"is 2D but --crop-shape \(8, 16, 16\) is 3D"),
        ({"grid_shape": None, "crop_shape": (12, 12), "grid_spacing": 2.0}, ValueError, r"divisible by 8"),
    ],
)
def test_bad_configurations_fail_before_training(phantom_root, tmp_path, overrides, error, message):
    settings = {"grid_shape": (64, 64), "batch_size": 2, **overrides}
    config = TrainingConfig(
        dataset=phantom_root, steps=5, test_fraction=0.25, output_dir=str(tmp_path / "run"),
        model_overrides=TINY_MODEL, **settings,
    )
    with pytest.raises(error, match=message):
        train(config)
    assert not (tmp_path / "run" / "model.keras").exists()


def test_test_fraction_zero_trains_on_every_image(phantom_root, tmp_path):
    result = train(TrainingConfig(
        dataset=phantom_root, grid_shape=(32, 32), batch_size=4, steps=2, steps_per_epoch=2,
        test_fraction=0.0, output_dir=str(tmp_path / "run"), model_overrides=TINY_MODEL))
    metrics = json.load(open(tmp_path / "run" / "metrics.json"))
    assert metrics["validation_ids"] == [] and metrics["summary"]["count"] == 0
    assert result.errors_mm.shape == (0, 37) and os.path.isfile(result.model_path)
    assert "val_loss" not in json.load(open(tmp_path / "run" / "history.json"))


def test_augmentation_flags_and_sigma_reach_the_trainer_and_the_run_record(phantom_root, tmp_path,
                                                                   monkeypatch):
    from keraslm.training import trainer as trainer_module

    seen = []
    original = trainer_module.HeatmapTrainer.__init__

    def spy(self, *args, **kwargs):
        original(self, *args, **kwargs)
        seen.append((self.augmentation, self.codec.sigma))

    monkeypatch.setattr(trainer_module.HeatmapTrainer, "__init__", spy)
    train(TrainingConfig(
        dataset=phantom_root, grid_shape=(32, 32), batch_size=4, steps=2, steps_per_epoch=2,
        test_fraction=0.0, output_dir=str(tmp_path / "run"), model_overrides=TINY_MODEL,
        blur_mm=1.5, noise_std=0.2, sigma=3.0, rotation_degrees=4.0, scale=0.03, flip_axes="x",
        jit="on"))
    assert [(a.blur_mm, a.noise_std, float(sigma), a.rotation_degrees, a.scale, a.flip_axes)
            for a, sigma in seen] == [(1.5, 0.2, 3.0, 4.0, 0.03, "x")]
    recorded = json.load(open(tmp_path / "run" / "config.json"))
    assert recorded["blur_mm"] == 1.5 and recorded["noise_std"] == 0.2 and recorded["sigma"] == 3.0
    assert recorded["rotation_degrees"] == 4.0 and recorded["scale"] == 0.03
    assert recorded["flip_axes"] == "x" and recorded["settings"]["flip_axes"] == "x"
    assert recorded["settings"]["rotation_degrees"] == 4.0 and recorded["settings"]["scale"] == 0.03
    from keraslm.prediction import load_detector

    assert load_detector(tmp_path / "run" / "model.keras").spec.global_stages[0].sigma == 3.0


def _train_failing_in_the_final_validation(config, monkeypatch):
    """Trains `config` to the end of its steps and fails in the final validation (the trained
    weights kept for --resume), as a crash there would."""
    import keraslm.training.run as run_module

    def fail(errors):
        raise RuntimeError("simulated failure in the final validation")

    original = run_module.summarize
    monkeypatch.setattr(run_module, "summarize", fail)
    with pytest.raises(RuntimeError, match="simulated failure"):
        train(config)
    monkeypatch.setattr(run_module, "summarize", original)


def _train_killed_after_epoch(config, epochs, monkeypatch):
    """Trains `config` and stops it, as a kill would, once epoch `epochs` (1-based) and its
    checkpoint are written."""
    import keraslm.training.run as run_module
    from keraslm.training.callbacks import EpochHistory

    class Interrupted(EpochHistory):
        def on_epoch_end(self, epoch, logs=None):
            super().on_epoch_end(epoch, logs)
            if epoch + 1 == epochs:
                raise RuntimeError("simulated kill")

    monkeypatch.setattr(run_module, "EpochHistory", Interrupted)
    with pytest.raises(RuntimeError, match="simulated kill"):
        train(config)
    monkeypatch.setattr(run_module, "EpochHistory", EpochHistory)


def test_failure_after_training_resumes_without_retraining(phantom_root, tmp_path, monkeypatch):
    """fit() ends by deleting its checkpoints; a failure in the final validation must not lose
    the trained weights: --resume goes straight to the final validation with them."""
    import keraslm.training.run as run_module

    config = TrainingConfig(
        dataset=phantom_root, grid_shape=(32, 32), batch_size=2, steps=4, steps_per_epoch=2,
        test_fraction=0.25, output_dir=str(tmp_path / "run"), model_overrides=TINY_MODEL,
        jit="off", plots=False)
    original = run_module.summarize

    def fail(errors):
        raise RuntimeError("simulated failure in the final validation")

    monkeypatch.setattr(run_module, "summarize", fail)
    with pytest.raises(RuntimeError, match="simulated failure"):
        train(config)
    weights = tmp_path / "run" / "trained.weights.h5"
    assert weights.is_file() and not (tmp_path / "run" / "checkpoints").exists()
    assert not (tmp_path / "run" / "model.keras").exists()
    with pytest.raises(KeraslmError, match="pass --resume"):
        train(config)  # Not silently retrained from scratch.
    monkeypatch.setattr(run_module, "summarize", original)
    with pytest.raises(KeraslmError, match=r"other settings: steps 8 \(config.json: 4\)"):
        train(config.replace(resume=True, steps=8))  # The weights belong to 4 steps.
    messages = []
    result = train(config.replace(resume=True), log=messages.append)
    assert any("resuming at the final validation" in m for m in messages)
    assert os.path.isfile(result.model_path) and not weights.exists()
    assert json.load(open(tmp_path / "run" / "metrics.json"))["optimizer_iterations"] == 4
    assert len(json.load(open(tmp_path / "run" / "history.json"))["loss"]) == 2  # Kept, not rerun.


def test_resume_keeps_the_batch_size_and_checks_the_split(phantom_root, tmp_path, monkeypatch):
    """A resumed run trains on with the batch size it started with (not one chosen again from
    the memory free now) and refuses a dataset whose split changed (images added or removed)."""
    config = TrainingConfig(
        dataset=phantom_root, grid_shape=(32, 32), steps=4, steps_per_epoch=2,
        test_fraction=0.25, output_dir=str(tmp_path / "run"), model_overrides=TINY_MODEL,
        jit="off", plots=False)

    _train_failing_in_the_final_validation(config, monkeypatch)
    config_path = tmp_path / "run" / "config.json"
    recorded = json.loads(config_path.read_text())
    assert recorded["validation_ids"] and recorded["settings"]["batch_size"] != 3
    started = dict(recorded)
    recorded["validation_ids"] = recorded["validation_ids"][1:] + ["someone_else"]
    config_path.write_text(json.dumps(recorded))
    with pytest.raises(DatasetError, match=r"--resume: .* another split of the dataset .*: "
                       r"validation images now also .*; no longer someone_else"):
        train(config.replace(resume=True))
    started["settings"]["batch_size"] = 3  # As if less memory had been free now.
    config_path.write_text(json.dumps(started))
    messages = []
    train(config.replace(resume=True), log=messages.append)
    [line] = [m for m in messages if m.startswith("plan: batch_size")]
    assert line.startswith("plan: batch_size 3 (the resumed run's own (")
    assert json.loads(config_path.read_text())["settings"]["batch_size"] == 3


def test_resume_after_a_kill_between_a_checkpoints_weights_and_its_epoch(phantom_root, tmp_path,
                                                                         monkeypatch):
    """Keras writes a checkpoint's weights before its epoch number: killed in between, the
    checkpoint holds two epochs' weights and says one. The resumed run goes by the optimizer's
    step count in the weights: 6 steps in all, not 8 (one epoch trained twice)."""
    config = TrainingConfig(
        dataset=phantom_root, grid_shape=(32, 32), batch_size=2, steps=6, steps_per_epoch=2,
        test_fraction=0.25, output_dir=str(tmp_path / "run"), model_overrides=TINY_MODEL,
        jit="off", plots=False)
    _train_killed_after_epoch(config, 2, monkeypatch)  # After the second epoch's checkpoint.
    metadata = tmp_path / "run" / "checkpoints" / "training_metadata.json"
    assert json.loads(metadata.read_text())["epoch"] == 2
    metadata.write_text(json.dumps({"epoch": 1, "batch": 0}))  # The kill's state.
    train(config.replace(resume=True))
    assert json.load(open(tmp_path / "run" / "metrics.json"))["optimizer_iterations"] == 6
    assert len(json.load(open(tmp_path / "run" / "history.json"))["loss"]) == 3


def test_failure_saving_the_trained_weights_keeps_the_checkpoints(phantom_root, tmp_path,
                                                                  monkeypatch):
    """The checkpoints are removed only after the trained weights are saved: a failure saving
    them (a full disk) leaves the checkpoints, and --resume finishes without training again."""
    import contextlib

    import keraslm.training.run as run_module

    config = TrainingConfig(
        dataset=phantom_root, grid_shape=(32, 32), batch_size=2, steps=4, steps_per_epoch=2,
        test_fraction=0.25, output_dir=str(tmp_path / "run"), model_overrides=TINY_MODEL,
        jit="off", plots=False)
    original = run_module.atomic_path

    @contextlib.contextmanager
    def full_disk(path, suffix=""):
        if path.endswith("trained.weights.h5"):
            raise OSError(28, "No space left on device")
        with original(path, suffix=suffix) as temporary:
            yield temporary

    monkeypatch.setattr(run_module, "atomic_path", full_disk)
    with pytest.raises(OSError, match="No space left"):
        train(config)
    assert (tmp_path / "run" / "checkpoints").is_dir()
    assert not (tmp_path / "run" / "trained.weights.h5").exists()
    monkeypatch.setattr(run_module, "atomic_path", original)
    result = train(config.replace(resume=True))
    assert os.path.isfile(result.model_path) and not (tmp_path / "run" / "checkpoints").exists()
    assert json.load(open(tmp_path / "run" / "metrics.json"))["optimizer_iterations"] == 4
    assert len(json.load(open(tmp_path / "run" / "history.json"))["loss"]) == 2  # Not rerun.
    # Through a --cache-file: its keyed cache is written on the first pass, with progress.
    messages = []
    cached = train(config.replace(output_dir=str(tmp_path / "cached"),
                                  cache_file=str(tmp_path / "c" / "cache")), log=messages.append)
    assert os.path.isfile(cached.model_path)
    [line] = [m for m in messages if m.startswith("cache: ")]
    prefix = line.split()[1]
    assert prefix.startswith(str(tmp_path / "c" / "cache-")) and os.path.isfile(prefix + ".index")
    assert any(m.startswith("preparing training (into the cache) images: ") for m in messages)


def _free_ports(count):
    import socket

    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.mark.slow
def test_two_workers_finish_with_identical_weights(phantom_root, tmp_path):
    """MultiWorkerMirroredStrategy with two local worker processes on 127.0.0.1."""
    import keras

    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    processes = []
    for index in range(2):
        tf_config = json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})
        command = [
            sys.executable, os.path.join(REPO, "train.py"), "--dataset", phantom_root,
            "--architecture", "downsampling", "--grid-shape", "32,32", "--steps", "6",
            "--steps-per-epoch", "3", "--batch-size", "4", "--model-option", "filters=4",
            "--distribute", "multiworker", "--jit", "off", "--no-export", "--output-dir", str(tmp_path / f"worker{index}"),
        ]
        env = {**os.environ, "CI": "1", "TF_CONFIG": tf_config}
        processes.append(subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True))
    try:
        outputs = [process.communicate(timeout=300)[0] for process in processes]
    finally:
        for process in processes:
            process.kill()
    for process, output in zip(processes, outputs):
        assert process.returncode == 0, output[-3000:]
    models = [keras.saving.load_model(tmp_path / f"worker{i}" / "model.keras") for i in range(2)]
    for a, b in zip(models[0].get_weights(), models[1].get_weights()):
        np.testing.assert_array_equal(a, b)
    metrics = [json.loads((tmp_path / f"worker{i}" / "metrics.json").read_text()) for i in range(2)]
    assert metrics[0]["optimizer_iterations"] == metrics[1]["optimizer_iterations"] == 6


def test_training_config_parts_flat_settings_and_copies():
    from keraslm.training import ModelSettings, RunSettings, TrainingConfig, stage_for
    from keraslm.training import GlobalStage, LocalStage

    config = TrainingConfig(model=ModelSettings(architecture="unet"), steps=40, dataset="isbi2015")
    assert config.model.architecture == "unet" and config.run.steps == 40 == config.steps
    assert config.data.dataset == "isbi2015" and config.run.output_dir == RunSettings().output_dir
    local = config.replace(crop_shape=(32, 32), grid_spacing=0.4, resume=True)
    assert local.model.crop_shape == (32, 32) and local.run.resume and local.steps == 40
    assert config.model.crop_shape is None and not config.resume  # The original is unchanged.
    assert isinstance(stage_for(config), GlobalStage) and isinstance(stage_for(local), LocalStage)
    flat = local.to_dict()
    assert flat["architecture"] == "unet" and flat["grid_spacing"] == 0.4 and "model" not in flat
    assert TrainingConfig(**flat) == local
    with pytest.raises(TypeError, match="unexpected setting 'stepz'"):
        TrainingConfig(stepz=3)
    with pytest.raises(AttributeError, match="read-only"):
        config.steps = 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.run.steps = 3
    overrides = TrainingConfig(model_overrides={"filters": 4})
    copy = overrides.replace(seed=2)
    copy.model.model_overrides["filters"] = 8  # A copy's dict is its own.
    assert overrides.model.model_overrides == {"filters": 4}


def test_augmentation_flags_of_the_command_line_reach_the_training_config(monkeypatch):
    import keraslm.training
    from keraslm.commands.train import main as train_main
    from keraslm.errors import KeraslmError

    seen = []

    def fake_train(config, log=None):
        seen.append(config)
        raise KeraslmError("stopped by the test")

    monkeypatch.setattr(keraslm.training, "train", fake_train)
    status = train_main(["--rotation-degrees", "5", "--scale-range", "0.03", "--blur-mm", "1",
                         "--noise-std", "0.2", "--translation-mm", "6", "--sigma", "4",
                         "--learn-sigma", "--sigma-penalty", "3", "--flip", "x"])
    augmentation = seen[0].augmentation
    assert status != 0 and (augmentation.rotation_degrees, augmentation.scale) == (5.0, 0.03)
    assert (augmentation.blur_mm, augmentation.noise_std, augmentation.translation_mm) == (1.0, 0.2, 6.0)
    assert augmentation.flip_axes == "x"
    assert seen[0].model.sigma == 4.0 and seen[0].model.learn_sigma is True
    assert seen[0].model.sigma_penalty == 3.0


# ------------------------------------------------------------------------------- the plan


def test_plan_grid_fits_the_images_extent_within_the_budget():
    from keraslm.training.plan import plan_grid

    # The brain volumes (x, y, z mm): the fixed 32 x 64 x 64 default gave a 182 x 364 x
    # 364 mm field at 5.7 mm; the plan covers the head at 3.9 mm with as many voxels.
    shape, spacing = plan_grid([182.0, 218.0, 182.0], 8)
    assert shape == (48, 56, 48) and np.prod(shape) <= 32 * 64 * 64
    field = np.array(shape[::-1]) * spacing
    assert np.all(field >= [182.0, 218.0, 182.0]) and np.all(field <= np.array([182, 218, 182]) + 8 * spacing)
    # The finest spacing within the budget: a finer one does not fit, this one does.
    assert spacing == pytest.approx(218.0 / 56)
    # Given a shape: the smallest spacing that fits; given a spacing: the smallest covering
    # shape in multiples of the divisor; given both: as given.
    assert plan_grid([230.0, 256.0], 8, grid_shape=(64, 32)) == ((64, 32), 230.0 / 32)
    assert plan_grid([230.0, 256.0], 8, grid_spacing=2.0) == ((128, 120), 2.0)
    assert plan_grid([230.0, 256.0], 8, grid_shape=(16, 16), grid_spacing=1.0) == ((16, 16), 1.0)
    with pytest.raises(KeraslmError, match="extent must be positive"):
        plan_grid([0.0, 10.0], 8)


def test_plan_only_prints_the_plan_and_writes_nothing(tmp_path, capsys):
    from keraslm.commands.train import main as train_main

    root = tmp_path / "phantom3d"
    make_phantom(root, ndim=3, num_images=4, seed=3, image_size=(40, 48, 48))
    status = train_main(["--dataset", str(root), "--plan-only", "--output-dir", str(tmp_path / "run")])
    text = capsys.readouterr().out
    assert status == 0, text
    assert "plan: grid " in text and "fitted to the images within 131072 voxels" in text
    assert "plan: learning_rate 0.001" in text and "--plan-only: nothing was trained" in text
    assert not (tmp_path / "run").exists()


def test_resumed_run_stopped_after_its_export_does_not_export_again(phantom_root, tmp_path,
                                                                     monkeypatch):
    """A run stopped after its SavedModel export but before model.keras resumes at the final
    validation and keeps the version it exported (export.json), not a second version; a base
    folder of another model is refused before the training."""
    from keraslm.prediction import LandmarkDetector

    base = tmp_path / "served"
    config = TrainingConfig(
        dataset=phantom_root, grid_shape=(32, 32), batch_size=2, steps=2, steps_per_epoch=2,
        test_fraction=0.25, output_dir=str(tmp_path / "run"), model_overrides=TINY_MODEL,
        jit="off", plots=False, export_dir=str(base))
    original = LandmarkDetector.save

    def stopped(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(LandmarkDetector, "save", stopped)
    with pytest.raises(OSError, match="No space left"):
        train(config)
    assert sorted(os.listdir(base)) == ["1"]
    monkeypatch.setattr(LandmarkDetector, "save", original)
    messages = []
    result = train(config.replace(resume=True), log=messages.append)
    assert result.export_path == str(base / "1") and sorted(os.listdir(base)) == ["1"]
    assert any("exported for TF Serving before this run was resumed" in m for m in messages)
    assert "final validation: 4/4 images" in messages  # Progress of the final validation.
    # A new run exports the next version.
    assert train(config.replace(output_dir=str(tmp_path / "run2"))).export_path == str(base / "2")
    # Another model's base folder: refused before training (here: other landmark names).
    spec_path = base / "2" / "assets" / "keraslm.json"
    spec = json.loads(spec_path.read_text())
    spec["landmark_names"] = ["x"] * len(spec["landmark_names"])
    spec_path.write_text(json.dumps(spec))
    with pytest.raises(KeraslmError, match=r"--export-dir .*served: its newest version 2 is "
                       r"another model"):
        train(config.replace(output_dir=str(tmp_path / "run3")), log=messages.append)
    assert not (tmp_path / "run3" / "history.json").exists()


def test_a_folder_of_other_files_is_not_taken_for_a_run(phantom_root, tmp_path):
    """A folder holding a checkpoints/ folder or a config.json that train.py did not write: the
    "pass --resume" advice led a run to train from scratch and then remove the user's
    checkpoints/ folder; its config.json and history.json were overwritten. Refused now, new
    run or resumed, before anything is written; the files stay."""
    config = TrainingConfig(dataset=phantom_root, grid_shape=(32, 32), batch_size=2, steps=2,
                            steps_per_epoch=2, model_overrides=TINY_MODEL, jit="off", plots=False)
    own = tmp_path / "project"
    (own / "checkpoints").mkdir(parents=True)
    (own / "checkpoints" / "important.ckpt").write_text("keep")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text('{"mine": 1}')
    (tmp_path / "other" / "history.json").write_text("[]")
    for folder, names in ((own, "checkpoints"), (tmp_path / "other", "config.json, history.json")):
        for resume in (False, True):
            with pytest.raises(KeraslmError, match=(
                    f"{folder} holds {names} but no config.json of train.py: not a training run "
                    "folder")):
                train(config.replace(output_dir=str(folder), resume=resume))
    assert (own / "checkpoints" / "important.ckpt").read_text() == "keep"
    assert (tmp_path / "other" / "config.json").read_text() == '{"mine": 1}'
    assert sorted(os.listdir(own)) == ["checkpoints"]


def test_early_refusals_of_the_export_and_cache_folders(phantom_root, tmp_path):
    """`--output-dir saved_models/x` made the default export folder the run folder: refused
    after the training; now before it. An unwritable --cache-file was a traceback after the
    model was built."""
    config = TrainingConfig(dataset=phantom_root, grid_shape=(32, 32), batch_size=2, steps=2,
                            steps_per_epoch=2, model_overrides=TINY_MODEL, jit="off", plots=False)
    run = tmp_path / "saved_models" / "x"
    for export_dir in (run, run / "inner", tmp_path / "saved_models"):
        with pytest.raises(KeraslmError, match=r"and the run folder .* \(--output-dir\) overlap"):
            train(config.replace(output_dir=str(run), export_dir=str(export_dir)))
    assert not run.exists()
    (tmp_path / "a_file").write_text("")
    with pytest.raises(KeraslmError, match="--cache-file's folder .*a_file.* is a file"):
        train(config.replace(output_dir=str(tmp_path / "run"),
                             cache_file=str(tmp_path / "a_file" / "cache")))
    from keraslm.commands.train import _export_dir, parse_args

    # Recorded absolute: a run resumed from another working folder exports where it began.
    assert _export_dir(parse_args(["--output-dir", "runs/x"])) == os.path.abspath("saved_models/x")


def test_resume_after_a_kill_in_the_first_checkpoint(phantom_root, tmp_path, monkeypatch):
    """Keras wrote a checkpoint in place: killed while writing the first one (no earlier one
    to fall back to), the run could never be resumed (an h5py traceback). Checkpoints are now
    written beside and renamed; a broken first one from an older keraslm restarts the run
    with a warning. Leftover temporary files of interrupted writes are removed on resume."""
    config = TrainingConfig(
        dataset=phantom_root, grid_shape=(32, 32), batch_size=2, steps=4, steps_per_epoch=2,
        test_fraction=0.25, output_dir=str(tmp_path / "run"), model_overrides=TINY_MODEL,
        jit="off", plots=False)
    _train_killed_after_epoch(config, 1, monkeypatch)
    checkpoints = tmp_path / "run" / "checkpoints"
    assert sorted(os.listdir(checkpoints)) == ["latest.weights.h5", "training_metadata.json"]
    (checkpoints / "latest.weights.h5").write_bytes(b"")  # As a kill mid-write left it.
    leftover = tmp_path / "run" / ".model.keras.x1y2.tmp.keras"
    leftover.write_bytes(b"partial")
    (tmp_path / "run" / ".mine").write_text("kept")
    messages = []
    with pytest.warns(UserWarning, match="cannot be read .* the run starts from its first epoch"):
        result = train(config.replace(resume=True), log=messages.append)
    assert os.path.isfile(result.model_path) and not leftover.exists()
    assert (tmp_path / "run" / ".mine").read_text() == "kept"
    assert any("removed .model.keras.x1y2.tmp.keras" in m for m in messages)
    assert json.load(open(tmp_path / "run" / "metrics.json"))["optimizer_iterations"] == 4
    assert len(json.load(open(tmp_path / "run" / "history.json"))["loss"]) == 2


def test_resume_takes_resolved_values_and_a_moved_dataset(phantom_root, tmp_path, monkeypatch,
                                                          capsys):
    """--resume with the values the run resolved itself (--batch-size 8 where it chose 8,
    --precision bfloat16 where "auto" chose it) was refused as "other settings"; a dataset
    moved since could not be named (its recorded path was "unknown dataset"); Ctrl-C printed a
    traceback and no word of --resume."""
    import shutil

    import keraslm.training
    from keraslm.commands.train import main as train_main

    moved = tmp_path / "data"
    shutil.copytree(phantom_root, moved)
    config = TrainingConfig(
        dataset=str(moved), grid_shape=(32, 32), steps=4, steps_per_epoch=2, precision="auto",
        test_fraction=0.25, output_dir=str(tmp_path / "run"), model_overrides=TINY_MODEL,
        jit="off", plots=False)

    _train_failing_in_the_final_validation(config, monkeypatch)
    recorded = json.load(open(tmp_path / "run" / "config.json"))
    batch, precision = recorded["settings"]["batch_size"], recorded["resolved_precision"]["precision"]
    # The plan's reasons of unchanged values are the recorded ones (train.py --resume passes
    # the recorded grid and steps on as if typed: "--steps given").
    recorded["plan"]["reasons"]["steps"] = "the preset's, as recorded"
    (tmp_path / "run" / "config.json").write_text(json.dumps(recorded))
    assert recorded["batch_size"] is None and recorded["precision"] == "auto"
    with pytest.raises(KeraslmError, match=r"other settings: batch_size 99 \(config.json: None\)"):
        train(config.replace(resume=True, batch_size=99))
    shutil.move(str(moved), str(tmp_path / "moved"))
    command = ["--resume", "--output-dir", str(tmp_path / "run"), "--no-export", "--no-plots"]
    assert train_main(command) == 2
    assert (f"--resume: the run's --dataset {moved} (its config.json) no longer exists; moved? "
            f"give its new place") in capsys.readouterr().err

    def interrupted(config, log=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(keraslm.training, "train", interrupted)
    assert train_main(command + ["--dataset", str(tmp_path / "moved")]) == 130
    assert (f"interrupted: {tmp_path / 'run'} keeps the last finished epoch; continue with: "
            f"python train.py --resume --output-dir {tmp_path / 'run'}") in capsys.readouterr().err
    monkeypatch.undo()
    result = train(config.replace(dataset=str(tmp_path / "moved"), resume=True, batch_size=batch,
                                  precision=precision))
    assert os.path.isfile(result.model_path)
    resumed = json.load(open(tmp_path / "run" / "config.json"))
    assert resumed["dataset"] == str(tmp_path / "moved")
    assert resumed["plan"]["reasons"]["steps"] == "the preset's, as recorded"
