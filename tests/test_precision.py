"""Tests of keraslm.precision and keraslm.training.jit: the precision and XLA choices, the
float32 <-> bfloat16 rebuild, and a bfloat16 training run that saves, reloads and exports."""
import json

import keras
import numpy as np
import pytest

from keraslm import KeraslmError
from keraslm.models import build_model
from keraslm.precision import (
    choose_precision,
    cpu_description,
    network_precision,
    with_precision,
)
from keraslm.training.jit import PROBE_FILE, JitChoice, _probe_key, choose_jit


@pytest.mark.parametrize("flags, expected", [
    ({"avx2", "amx_bf16", "avx512_bf16"}, "bfloat16"),
    ({"avx2", "avx512_bf16"}, "bfloat16"),
    ({"avx2", "fma"}, "float32"),
    (set(), "float32"),
])
def test_auto_precision_on_cpus(flags, expected):
    choice = choose_precision("auto", gpu_capabilities=[], cpu=("Test CPU", flags))
    assert choice.precision == expected and choice.requested == "auto"
    assert choice.reason.startswith("CPU Test CPU has")
    assert choice.policy == {"bfloat16": "mixed_bfloat16", "float32": "float32"}[expected]


@pytest.mark.parametrize("capabilities, expected", [
    ([(8, 6)], "bfloat16"), ([(9, 0), (8, 0)], "bfloat16"), ([(7, 5)], "float16"),
    ([(8, 0), (7, 0)], "float16"), ([(6, 1)], "float32"),
])
def test_auto_precision_on_gpus(capabilities, expected):
    choice = choose_precision("auto", gpu_capabilities=capabilities, cpu=("x", {"amx_bf16"}))
    assert choice.precision == expected and "GPU compute capability" in choice.reason


def test_explicit_and_bad_precision():
    assert choose_precision("float16").to_dict() == {
        "requested": "float16", "precision": "float16", "reason": "requested"}
    with pytest.raises(KeraslmError, match=r"`precision` must be one of \('auto', 'float32', "
                       r"'bfloat16', 'float16'\). Received: precision='half'"):
        choose_precision("half")


def test_cpu_description_reads_model_and_flags(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text("processor\t: 0\nmodel name\t: Fancy Xeon\nflags\t\t: fpu avx512_bf16 amx_bf16\n\n"
                    "processor\t: 1\nmodel name\t: Other\nflags\t\t: fpu\n")
    assert cpu_description(str(path)) == ("Fancy Xeon", {"fpu", "avx512_bf16", "amx_bf16"})
    model, flags = cpu_description(str(tmp_path / "missing"))
    assert flags == set() and isinstance(model, str)


@pytest.mark.parametrize("architecture, ndim, shape", [("scn", 2, (32, 24)), ("unet", 3, (8, 16, 16))])
def test_with_precision_keeps_weights_and_outputs(architecture, ndim, shape):
    network = build_model(architecture, ndim, 3, preset="small", filters=4)
    images = np.random.default_rng(0).normal(size=(2, *shape, 1)).astype(np.float32)
    reference = np.asarray(network(images))
    half = with_precision(network, "bfloat16")
    assert network_precision(half) == "bfloat16" and network_precision(network) == "float32"
    assert all(v.dtype == "float32" for v in half.weights)  # Variables stay float32.
    assert half.output_stride == network.output_stride and half.name == network.name
    assert keras.mixed_precision.global_policy().name == "float32"  # Restored.
    output = np.asarray(keras.ops.cast(half(images), "float32"))
    # bfloat16 keeps 8 significant bits: outputs agree to about 1 % of their range.
    assert np.max(np.abs(output - reference)) < 0.05 * np.max(np.abs(reference)) + 1e-3
    back = with_precision(half, "float32")
    np.testing.assert_array_equal(np.asarray(back(images)), reference)
    assert with_precision(network, "float32") is network


def _fake_trainer():
    class Trainer:
        network = build_model("unet", 2, 3, preset="small", filters=4)
        grid_shape = (32, 32)
    return Trainer()


def test_jit_modes_and_cached_probe_decide(tmp_path):
    trainer = _fake_trainer()
    assert choose_jit("on", trainer, (32, 32), 2) == JitChoice(True, True, "requested: XLA for the whole step")
    assert choose_jit("off", trainer, (32, 32), 2).network is False
    assert choose_jit("auto", trainer, (32, 32), 2, on_gpu=True).network is True
    with pytest.raises(KeraslmError, match=r"`jit` must be one of \('auto', 'on', 'off'\). Received: jit='yes'"):
        choose_jit("yes", trainer, (32, 32), 2)
    key = _probe_key(trainer, (32, 32), 2)
    cases = [  # (device xla, device plain, network xla, network plain) -> (network, device stage)
        ((0.01, 0.03, 0.50, 0.20), (False, True)),
        ((0.03, 0.01, 0.50, 0.20), (False, False)),
        ((0.01, 0.03, 0.10, 0.20), (True, True)),
    ]
    for (dx, dp, nx, npl), expected in cases:
        (tmp_path / PROBE_FILE).write_text(json.dumps({key: {
            "device_stage_xla": dx, "device_stage_plain": dp, "network_xla": nx, "network_plain": npl}}))
        choice = choose_jit("auto", trainer, (32, 32), 2, cache_folder=str(tmp_path), on_gpu=False)
        assert (choice.network, choice.device_stage) == expected
        assert choice.reason.startswith("cached probe on this CPU")


@pytest.mark.slow
def test_bfloat16_run_trains_saves_reloads_and_exports(phantom2d_root, phantom2d, tmp_path):
    """A bfloat16 training run: float32 variables, a finite falling loss, the choice recorded,
    model.keras and the SavedModel computing in float32 and agreeing, and bfloat16 prediction
    from the saved model within the decoding tolerance of float32."""
    from keraslm.prediction import load_predictor, predict
    from keraslm.training import TrainingConfig, train

    dataset = phantom2d  # conftest.py's shared 12-image phantom
    # An SCN: after 60 steps its heatmaps have clear peaks (a U-Net's are still flat there, so
    # its decoded points move with any rounding).
    result = train(TrainingConfig(
        dataset=str(phantom2d_root), architecture="scn", grid_shape=(48, 48), steps=60,
        steps_per_epoch=30, batch_size=4, test_fraction=0.25, output_dir=str(tmp_path / "run"),
        model_overrides={"filters": 8}, precision="bfloat16", jit="auto",
        export_dir=str(tmp_path / "export")))
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["resolved_precision"] == {"requested": "bfloat16", "precision": "bfloat16",
                                            "reason": "requested"}
    # On a CPU "auto" is measured (or read from the probe cache of an earlier identical run).
    assert config["resolved_jit"]["reason"].split(" on this CPU")[0] in ("probe", "cached probe")
    import keraslm.models  # noqa: F401  (custom layers)

    saved = keras.saving.load_model(result.model_path, safe_mode=True)  # A LandmarkDetector.
    assert saved.spec.global_stages[0].training_precision == "bfloat16"
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert np.all(np.isfinite(history["loss"])) and history["loss"][-1] < history["loss"][0]
    assert np.isfinite(result.summary["mean_mm"])
    assert network_precision(saved.networks[0]) == "float32"
    images = [dataset.read_image(record) for record in dataset.records[:3]]
    float32 = predict(result.model_path, images)
    exported = predict(result.export_path, images)
    for a, b in zip(float32, exported):
        np.testing.assert_allclose(a.points_mm, b.points_mm, atol=1e-3)
    half = predict(load_predictor(result.model_path, precision="bfloat16"), images)
    assert load_predictor(result.model_path, precision="bfloat16").detector.networks[0].dtype_policy.name == "mixed_bfloat16"
    difference = np.concatenate([np.linalg.norm(a.points_mm - b.points_mm, axis=-1)
                                 for a, b in zip(float32, half)])
    # bfloat16 heatmaps move a sub-pixel peak by a small fraction of a grid step.
    grid_step_mm = saved.spec.global_stages[0].grid_spacing[0]
    assert np.median(difference) < 0.1 * grid_step_mm, difference
    with pytest.raises(KeraslmError, match="a SavedModel computes in the precision it was exported in"):
        load_predictor(result.export_path, precision="bfloat16")
