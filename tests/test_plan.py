"""The training plan's batch size from memory (`keraslm.training.plan`): the traced activation
bytes of a network, their cache, and the cap the plan puts on the batch. (Its own file, so that
pytest-xdist's per-file distribution can run it beside test_training.py.)"""
import pytest

from keraslm.datasets import make_phantom
from keraslm.training import TrainingConfig, train


def test_activation_memory_is_traced_from_the_network_and_scales_with_the_input():
    import keras

    from keraslm.models import build_model
    from keraslm.training.plan import activation_bytes_per_sample, memory_batch_limit

    # A fully convolutional network: every activation scales with the input's voxels.
    network = build_model("unet", 2, 5, preset="small", filters=4)
    small = activation_bytes_per_sample(network, (32, 32))
    assert small > 32 * 32 * 4 * 4  # More than the first layer's output alone.
    assert activation_bytes_per_sample(network, (64, 32)) == pytest.approx(2 * small, rel=0.01)
    # One 3x3 convolution of 8 filters on 16 x 16: its output and its bias addition (float32),
    # and a few bytes of the bias's own ops.
    inputs = keras.Input((None, None, 1))
    single = keras.Model(inputs, keras.layers.Conv2D(8, 3, padding="same")(inputs))
    output = 16 * 16 * 8 * 4
    assert 2 * output <= activation_bytes_per_sample(single, (16, 16)) <= 2 * output + 256
    # Half the memory for twice the forward bytes per sample; at least 1; None when unknown.
    assert memory_batch_limit(100, 1000) == 2 and memory_batch_limit(10 ** 6, 1000) == 1
    assert memory_batch_limit(100, None) is None


def test_activation_memory_is_cached_per_configuration(tmp_path, monkeypatch):
    from keraslm.models import build_model
    from keraslm.training import plan

    network = build_model("unet", 2, 5, preset="small", filters=4)
    traced = []
    trace = plan._traced_activation_bytes
    monkeypatch.setattr(plan, "_traced_activation_bytes",
                        lambda *args: traced.append(args[1]) or trace(*args))
    first = plan.activation_bytes_per_sample(network, (32, 32), cache_folder=str(tmp_path))
    assert plan.activation_bytes_per_sample(network, (32, 32), cache_folder=str(tmp_path)) == first
    assert traced == [(32, 32)] and (tmp_path / plan.MEMORY_CACHE_FILE).is_file()
    plan.activation_bytes_per_sample(network, (64, 32), cache_folder=str(tmp_path))
    other = build_model("unet", 2, 5, preset="small", filters=8)
    plan.activation_bytes_per_sample(other, (32, 32), cache_folder=str(tmp_path))
    assert traced == [(32, 32), (64, 32), (32, 32)]


def test_the_plan_caps_the_batch_by_memory(tmp_path, monkeypatch):
    from keraslm.training import run as run_module

    root = tmp_path / "phantom2d"
    make_phantom(root, ndim=2, num_images=6, seed=3, image_size=(48, 40))
    settings = dict(dataset=str(root), architecture="unet", grid_shape=(32, 32),
                    model_overrides={"filters": 4}, plan_only=True, output_dir=str(tmp_path / "run"))
    config = TrainingConfig(**settings)
    plenty = train(config).plan
    assert plenty.values["batch_size"] == 8
    assert "fits:" in plenty.reasons["batch_size"] and "MB of activations per sample" in plenty.reasons["batch_size"]
    per_sample = float(plenty.reasons["batch_size"].split("fits: ")[1].split(" MB")[0]) * 2 ** 20
    # Memory for 3 samples (half of it for twice the forward bytes of each): the plan takes 3.
    monkeypatch.setattr(run_module, "available_memory_bytes", lambda: (12.2 * per_sample, "RAM available"))
    tight = train(config).plan
    assert tight.values["batch_size"] == 3
    assert tight.reasons["batch_size"].startswith("memory: ") and "fits 3" in tight.reasons["batch_size"]
    # A --batch-size given is kept, with the estimate's warning.
    given = train(TrainingConfig(batch_size=6, **settings)).plan
    assert given.values["batch_size"] == 6 and "more than the 3 that fit" in given.reasons["batch_size"]
    monkeypatch.setattr(run_module, "available_memory_bytes", lambda: (None, "the RAM size is not known"))
    unknown = train(config).plan
    assert unknown.values["batch_size"] == 8 and "no memory limit applied" in unknown.reasons["batch_size"]
