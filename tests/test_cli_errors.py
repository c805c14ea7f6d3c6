"""Command-line errors as a user meets them: one line on stderr naming the file or value and
the problem, exit status 2 for a bad argument and 1 for bad data or files, no traceback, and
nothing half-written. (Run in-process: an exception escaping `main` fails the test.)

Cases here: unknown dataset; CSV without --units; landmark file without an image; unreadable
image in a CSV dataset (all named); --output-dir that is a file; --resume with nothing to resume;
an --output-dir another training is writing;
a bad --grid-shape; evaluate on a missing run folder, with a malformed predictions CSV, or
--predictions without --ground-truth; predict with a missing or truncated model; check of a
missing dataset; plain images without --spacing; a --spacing of the wrong length, NaN or inf;
flags that contradict dataset.json. Elsewhere: export with another model's calibration
(test_cascade), the dataset check's findings (test_own_data), truncated model loading
(test_inference).
"""
import json
import os

import numpy as np
import pytest

from keraslm.commands.evaluate import main as evaluate_main
from keraslm.commands.train import main as train_main
from keraslm.commands.dataset import main as dataset_main
from keraslm.commands.predict import main as predict_main
from keraslm.io import write_markups, write_png
from keraslm.run_folder import RunFolder


def _one_error_line(capsys, *fragments):
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert "Traceback" not in captured.err + captured.out
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def images(tmp_path):
    """Two small PNGs in a folder."""
    folder = tmp_path / "xrays"
    folder.mkdir()
    for name in ("a", "b"):
        write_png(str(folder / f"{name}.png"), np.zeros((16, 12), np.uint8))
    return folder


def test_train_errors(images, tmp_path, capsys):
    out = tmp_path / "run"
    assert train_main(["--dataset", "nowhere", "--output-dir", str(out)]) == 2
    _one_error_line(capsys, "unknown dataset 'nowhere'")
    (images / "landmarks.csv").write_text("image,p_x,p_y\na,1,2\nb,3,4\n")
    assert train_main(["--dataset", str(images), "--output-dir", str(out)]) == 2
    _one_error_line(capsys, "landmarks.csv", "--units index|mm")
    os.remove(images / "landmarks.csv")
    write_markups(str(images / "a.mrk.json"), ["p"], np.zeros((1, 3)))
    write_markups(str(images / "ghost.mrk.json"), ["p"], np.zeros((1, 3)))
    assert train_main(["--dataset", str(images), "--output-dir", str(out)]) == 1
    _one_error_line(capsys, "ghost.mrk.json", "without an image", "b.png", "without a landmark file")
    assert not out.exists()  # Nothing half-written.
    (tmp_path / "file").write_text("x")
    assert train_main(["--output-dir", str(tmp_path / "file")]) == 2
    _one_error_line(capsys, str(tmp_path / "file"))
    assert train_main(["--output-dir", str(tmp_path / "file" / "run")]) == 2
    _one_error_line(capsys, "cannot be made", "is a file, not a folder")
    assert train_main(["--output-dir", str(out), "--export-dir", str(tmp_path / "file")]) == 2
    _one_error_line(capsys, "--export-dir", "is a file, not a folder")  # Before any training.
    assert not out.exists()
    (tmp_path / "empty").mkdir()
    assert train_main(["--resume", "--output-dir", str(tmp_path / "empty")]) == 2
    _one_error_line(capsys, "nothing to resume")
    with RunFolder(out).training_lock():  # Another training writes the folder.
        assert train_main(["--dataset", "nowhere", "--output-dir", str(out)]) == 2
        _one_error_line(capsys, str(out), "being trained by another process",
                        f"pid {os.getpid()}")
    assert not out.exists()  # The lock's folder went with it: nothing was written there.
    with pytest.raises(SystemExit) as exit_info:
        train_main(["--grid-shape", "0,5"])
    assert exit_info.value.code == 2
    assert "expected 2 or 3 positive sizes" in capsys.readouterr().err
    for option in ("--steps", "--steps-per-epoch", "--batch-size", "--learning-rate", "--sigma",
                   "--landmarks-per-image"):
        with pytest.raises(SystemExit) as exit_info:
            train_main([option, "0"])
        assert exit_info.value.code == 2
        assert f"argument {option}: expected a" in capsys.readouterr().err


def test_steps_that_the_epochs_do_not_make_are_refused(images, tmp_path, capsys):
    """--steps 150 with 100 steps per epoch would train 200 steps (the last 50 past the
    learning rate's schedule): refused, naming both and what to give, before any image is
    prepared."""
    (images / "landmarks.csv").write_text("image,p_x,p_y\na,1,2\nb,3,4\n")
    out = tmp_path / "run"
    assert train_main(["--dataset", str(images), "--units", "index", "--spacing", "0.5",
                       "--grid-shape", "16,16", "--steps", "150", "--test-fraction", "0.5",
                       "--output-dir", str(out),
                       "--no-export"]) == 2
    _one_error_line(capsys, "--steps 150 is not a multiple of --steps-per-epoch 100",
                    "would train 200 steps", "--steps 100 or 200")
    assert not out.exists()


def test_unreadable_images_are_data_errors_named_all(images, tmp_path, capsys):
    for name in ("a", "b"):
        (images / f"{name}.png").write_bytes(b"not a png")
    (images / "landmarks.csv").write_text("image,p_x,p_y\na,1,2\nb,3,4\n")
    assert train_main(["--dataset", str(images), "--units", "index", "--spacing", "0.5",
                       "--output-dir", str(tmp_path / "run")]) == 1
    _one_error_line(capsys, "2 images cannot be read or do not fit", "a.png", "b.png")
    assert dataset_main(["check", str(images), "--units", "index", "--spacing", "0.5"]) == 1
    _one_error_line(capsys, "a.png", "b.png")


def test_plain_images_without_a_spacing_are_an_error(images, tmp_path, capsys):
    """PNGs hold no pixel size: train and check say to pass --spacing instead of using 1 mm."""
    (images / "landmarks.csv").write_text("image,p_x,p_y\na,1,2\nb,3,4\n")
    out = tmp_path / "run"
    assert train_main(["--dataset", str(images), "--units", "index", "--output-dir", str(out)]) == 2
    _one_error_line(capsys, "landmarks.csv: 2 of 2 images hold no pixel spacing", "a.png", "--spacing")
    assert not out.exists()
    assert dataset_main(["check", str(images), "--units", "index"]) == 2
    _one_error_line(capsys, "landmarks.csv: 2 of 2 images hold no pixel spacing", "--spacing")
    (tmp_path / "file").write_text("x")
    assert dataset_main(["check", str(images), "--units", "index", "--spacing", "0.5",
                         "--overview", str(tmp_path / "file" / "o.png")]) == 2
    _one_error_line(capsys, "--overview's folder", "is a file, not a folder")


def test_spacing_with_the_wrong_number_of_values_or_not_finite(images, tmp_path, capsys):
    (images / "landmarks.csv").write_text("image,p_x,p_y\na,1,2\nb,3,4\n")
    data = [str(images / "landmarks.csv"), "--units", "index", "--spacing", "0.1,0.2,0.3"]
    assert dataset_main(["check"] + data) == 2
    _one_error_line(capsys, "landmarks.csv: spacing [0.1, 0.2, 0.3] has 3 values for a 2D dataset")
    out = tmp_path / "run"
    assert train_main(["--dataset"] + data + ["--output-dir", str(out)]) == 2
    _one_error_line(capsys, "landmarks.csv: spacing [0.1, 0.2, 0.3] has 3 values for a 2D dataset")
    assert not out.exists()
    for text in ("nan", "inf", "0.1,-inf"):
        with pytest.raises(SystemExit) as exit_info:
            dataset_main(["check", str(images), "--units", "index", "--spacing", text])
        assert exit_info.value.code == 2
        assert f"expected 1 to 3 positive finite numbers, got {text!r}" in capsys.readouterr().err


def test_flags_that_contradict_dataset_json(images, tmp_path, capsys):
    """--units, --spacing and --root are errors when they contradict dataset.json, and fine when
    they agree; the summary says the spacing came from dataset.json."""
    (images / "landmarks.csv").write_text("image,p_x,p_y\na,1,2\nb,3,4\n")
    (images / "dataset.json").write_text(json.dumps({
        "name": "xrays", "ndim": 2, "landmarks_csv": "landmarks.csv", "landmark_units": "index",
        "plain_image_spacing": [0.9, 1.0]}))
    json_path = str(images / "dataset.json")
    overview = ["--overview", str(tmp_path / "overview.png")]
    assert dataset_main(["check", str(images), "--spacing", "0.5"] + overview) == 2
    _one_error_line(capsys, json_path, "plain_image_spacing [0.9, 1.0] mm", "spacing [0.5] mm (--spacing)")
    assert dataset_main(["check", str(images), "--units", "mm"] + overview) == 2
    _one_error_line(capsys, json_path, "landmark_units 'index'", "units 'mm' (--units)")
    assert dataset_main(["check", str(images), "--root", str(tmp_path)] + overview) == 2
    _one_error_line(capsys, json_path, str(tmp_path), "(--root)")
    out = tmp_path / "run"
    assert train_main(["--dataset", str(images), "--spacing", "0.5", "--output-dir", str(out)]) == 2
    _one_error_line(capsys, json_path, "[0.9, 1.0]", "[0.5]")
    assert not out.exists()
    assert dataset_main(["check", str(images), "--spacing", "0.9,1", "--units", "index", "--root",
                         str(images)] + overview) == 0
    printed = capsys.readouterr().out
    assert "spacing [0.9, 1.0] mm (dataset.json): 2 images" in printed and "(caller)" not in printed


def test_evaluate_errors(tmp_path, capsys):
    assert evaluate_main(["--runs", str(tmp_path / "missing"), "--output-dir", str(tmp_path / "e")]) == 2
    _one_error_line(capsys, "no such training run folder")
    (tmp_path / "p.csv").write_text("id,a_x,a_y\nx,1\n")
    (tmp_path / "g.csv").write_text("id,a_x,a_y\nx,1,2\n")
    assert evaluate_main(["--predictions", str(tmp_path / "p.csv"), "--ground-truth",
                          str(tmp_path / "g.csv"), "--output-dir", str(tmp_path / "e")]) == 1
    _one_error_line(capsys, "p.csv, line 2")
    assert not (tmp_path / "e").exists()
    (tmp_path / "junk.json").write_text('{"format": "something else"}')
    assert evaluate_main(["--runs", str(tmp_path / "missing"), "--calibration",
                          str(tmp_path / "junk.json"), "--output-dir", str(tmp_path / "e")]) == 1
    _one_error_line(capsys, "junk.json: not a keraslm calibration")  # Before the run is read.
    (tmp_path / "file").write_text("x")
    for output_dir in (tmp_path / "file", tmp_path / "file" / "sub"):
        assert evaluate_main(["--runs", str(tmp_path / "missing"), "--output-dir",
                              str(output_dir)]) == 2
        _one_error_line(capsys, "--output-dir", "is a file, not a folder")
    with pytest.raises(SystemExit) as exit_info:
        evaluate_main(["--predictions", str(tmp_path / "p.csv")])
    assert exit_info.value.code == 2
    # Split options name --model's test data: refused, not ignored, with --runs / --predictions.
    csvs = ["--predictions", str(tmp_path / "p.csv"), "--ground-truth", str(tmp_path / "g.csv")]
    for source in (["--runs", str(tmp_path / "missing")], csvs):
        for split in (["--fold", "3"], ["--test-ids", "x.txt"], ["--seed", "7"],
                      ["--test-fraction", "0.5"]):
            with pytest.raises(SystemExit) as exit_info:
                evaluate_main(source + split)
            assert exit_info.value.code == 2
            assert f"{split[0]} goes with --model" in capsys.readouterr().err
    for bad in (["--calibrate", "c.json", "--calibration", "d.json"], ["--batch-size", "0"]):
        with pytest.raises(SystemExit) as exit_info:
            evaluate_main(["--runs", str(tmp_path / "missing")] + bad)
        assert exit_info.value.code == 2
    assert "expected a whole number >= 1" in capsys.readouterr().err
    # --calibrate's path is checked before anything is evaluated.
    assert evaluate_main(["--runs", str(tmp_path / "missing"), "--calibrate", str(tmp_path),
                          "--output-dir", str(tmp_path / "e")]) == 2
    _one_error_line(capsys, f"--calibrate {tmp_path} is a folder")
    assert evaluate_main(["--runs", str(tmp_path / "missing"), "--calibrate",
                          str(tmp_path / "file" / "c.json"), "--output-dir",
                          str(tmp_path / "e")]) == 2
    _one_error_line(capsys, "--calibrate's folder", "is a file, not a folder")


def test_predict_errors(images, tmp_path, capsys):
    out = tmp_path / "pred"
    assert predict_main([str(tmp_path / "none.keras"), str(images / "a.png"), "--output-dir", str(out)]) == 1
    _one_error_line(capsys, "none.keras", "no such model file")
    (tmp_path / "cut.keras").write_bytes(b"PK\x03\x04 truncated")
    assert predict_main([str(tmp_path / "cut.keras"), str(images / "a.png"), "--output-dir", str(out)]) == 1
    _one_error_line(capsys, "cut.keras", "truncated or corrupt")
    assert not out.exists()
    assert dataset_main(["check", str(tmp_path / "nowhere")]) == 2
    _one_error_line(capsys, "unknown dataset")


def test_help_answers_without_loading_tensorflow():
    """`--help` of every command is instant: nothing imports TensorFlow before the arguments are
    parsed (it takes seconds to load)."""
    import subprocess
    import sys

    from keraslm.commands import COMMANDS

    for name, module in COMMANDS.items():
        code = (f"import sys; from {module} import main\n"
                "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
                "print('tensorflow' in sys.modules, 'keras' in sys.modules)")
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                check=True)
        assert "usage:" in result.stdout, name
        assert result.stdout.splitlines()[-1] == "False False", f"keraslm-{name} --help loads TF"


def test_help_names_every_registered_architecture_and_preset():
    from keraslm.cli import ARCHITECTURE_HELP, MODEL_PRESETS
    from keraslm.models import ARCHITECTURES, PRESET_NAMES

    assert list(ARCHITECTURE_HELP) == list(ARCHITECTURES)
    assert tuple(MODEL_PRESETS) == tuple(PRESET_NAMES)


def test_options_of_the_other_stage_are_refused(images, tmp_path, capsys):
    """Options that the chosen stage would ignore are refused, naming them: --grid-shape for a
    local stage (its grid is --grid-spacing over every image), --landmarks-per-image for a
    global one."""
    (images / "landmarks.csv").write_text("image,p_x,p_y\na,1,2\nb,3,4\n")
    data = ["--dataset", str(images), "--units", "index", "--spacing", "0.5",
            "--test-fraction", "0.5", "--no-export", "--output-dir", str(tmp_path / "run")]
    assert train_main(data + ["--crop-shape", "8,8", "--grid-spacing", "1",
                              "--grid-shape", "16,16"]) == 2
    _one_error_line(capsys, "a local stage (--crop-shape) takes no --grid-shape")
    assert train_main(data + ["--grid-shape", "16,16", "--landmarks-per-image", "2"]) == 2
    _one_error_line(capsys, "--landmarks-per-image is a local stage's", "needs --crop-shape")
    assert not (tmp_path / "run").exists()
