"""The fenced examples of README.md, CONTRIBUTING.md and the documentation pages (docs/) run as
tests, so that they cannot drift from the code.

Each page is one test: its ```python blocks run in one namespace, in order, and its ```bash
blocks in `bash -e -o pipefail`, all in a fresh workspace folder (the current directory of
both) that holds what the examples name:

- `runs/default/`: a small U-Net trained on the tests' 12-image 2D phantom (`trained_2d`), and
  `a.dcm`, `b.dcm`, `new_images/` (DICOM images of that phantom, which the model knows);
- `my_xrays/`: 10 phantom hand radiographs written as plain PNGs at 0.1 mm per pixel (2304 x
  2560 pixels, like a real radiograph) with one landmark CSV in pixels; `hand.png` is the first
  of them and `new_xray.png` the last; `setup.csv` (headerless) and `long.csv` hold the same landmarks in the other CSV
  layouts, `001.mrk.json` the first image's as 3D Slicer markups;
- `scan/`: a small DICOM series;
- `saved_models/isbi2015_scn`: the shipped model (a link to the repository's);
- `001.jpg` and `cephalogram.jpg`: ISBI 2015 image 001 where `../shared/data` has it, else a
  JPEG of a phantom radiograph cut to the ISBI images' 1935 x 2400 pixels (the examples run
  the same; the landmarks are then meaningless);
- `../shared`: a link to the repository's `../shared` where it exists, so the examples' paths
  `../shared/data/isbi2015-train/...` resolve as in a checkout.

The Serving guide's examples talk to http://localhost:8501 as to TF Serving: the test starts a
stand-in REST server there that runs the shipped SavedModel's signatures in-process, the way TF
Serving's REST API answers (`helpers.saved_model_transport`); what the examples check is the
client side (request bodies, answers), TF Serving itself needs Docker.

A block that cannot run in a test has a skip directive above it, with the reason (`<!-- skip:
next "reason" -->`, or `<!-- skip: next if(isbi_missing, reason="...") -->` for the ISBI
data). `python tests/test_docs.py` prints, per page, the blocks that run and the ones skipped
with their reasons. Pages in `SLOW_PAGES` (they train, or start several
commands) run with `-m slow`.
"""
import glob
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
import unittest
from pathlib import Path

import pytest
from sybil import Sybil
from sybil.parsers.markdown import CodeBlockParser, SkipParser

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
ISBI_IMAGE = SHARED / "data" / "isbi2015-train" / "images" / "001.jpg"
#: The pages whose examples run, relative to the repository.
PAGES = ["README.md", "CONTRIBUTING.md"] + sorted(
    os.path.relpath(path, REPO) for path in glob.glob(str(REPO / "docs" / "**" / "*.md"),
                                                      recursive=True))
#: Pages whose examples train models or start several commands (each loads TensorFlow and
#: compiles a model: 10-20 s apiece): run with -m slow, to keep the default run within 5 min.
SLOW_PAGES = {"README.md", "docs/guides/own-data.md", "docs/guides/prediction.md",
              "docs/results/phantoms.md", "docs/results/pretrained.md"}
#: Pages whose examples talk to a TF Serving REST endpoint on localhost:8501.
SERVING_PAGES = {"docs/guides/serving.md"}
SERVING_PORT = 8501
BASH_TIMEOUT_S = 1800


def _run_python(example):
    code = compile(example.parsed, f"{example.path}:{example.line}", "exec")
    exec(code, example.namespace)  # noqa: S102 - the documentation's own examples
    example.namespace["__ran__"].append(example.line)


def _run_bash(example):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("PYTHONPATH", None)  # The commands run what is installed, as for a user.
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", example.parsed], env=env,
                          capture_output=True, text=True, timeout=BASH_TIMEOUT_S)
    if done.returncode:
        raise AssertionError(f"{example.path}:{example.line}: exit status {done.returncode}\n"
                             f"{example.parsed}\n--- stdout (end) ---\n{done.stdout[-3000:]}"
                             f"\n--- stderr (end) ---\n{done.stderr[-3000:]}")
    example.namespace["__ran__"].append(example.line)


SYBIL = Sybil(parsers=[CodeBlockParser("python", _run_python), CodeBlockParser("bash", _run_bash),
                       SkipParser()])


def _blocks(page):
    """[(line, language, skip reason or None)] of a page's python and bash blocks, read without
    running anything (a conditional skip reads as its condition)."""
    blocks, reason = [], None
    for example in SYBIL.parse(REPO / page):
        if example.region.evaluator not in (_run_python, _run_bash):  # A skip directive.
            reason = example.parsed[1]
            continue
        language = "python" if example.region.evaluator is _run_python else "bash"
        blocks.append((example.line, language, reason))
        reason = None
    return blocks


# -- the workspace ---------------------------------------------------------------------------

def _build_workspace(folder, phantom2d_root, trained_run):
    """The files the examples name (module docstring), written once per test run."""
    import numpy as np
    from PIL import Image as PILImage

    import keraslm.io as kio
    from keraslm.datasets import make_phantom

    folder.mkdir(parents=True)
    shutil.copytree(trained_run, folder / "runs" / "default")
    (folder / "saved_models").mkdir()
    os.symlink(REPO / "saved_models" / "isbi2015_scn", folder / "saved_models" / "isbi2015_scn")
    dicoms = sorted(glob.glob(os.path.join(phantom2d_root, "images", "*.dcm")))[:2]
    (folder / "new_images").mkdir()
    for name, path in zip(("a.dcm", "b.dcm"), dicoms):
        shutil.copy(path, folder / name)
        shutil.copy(path, folder / "new_images" / name)

    # Hand radiographs at 0.1 mm, written as plain PNGs with one pixel CSV (cached across runs).
    cache = Path(os.environ.get("KERASLM_CACHE", Path.home() / ".cache" / "keraslm"))
    phantom = make_phantom(cache / "docs_xrays_10_at_0.1mm", ndim=2, num_images=10, seed=7,
                           spacing=0.1, image_size=(2304, 2560))
    xrays = folder / "my_xrays"
    xrays.mkdir()
    ids, index_points = [], []
    for number, record in enumerate(phantom.records):
        image = phantom.read_image(record)
        name = f"hand_{number:03d}"
        target = xrays / f"{name}.png"
        if record.image_path.endswith(".png"):
            os.symlink(record.image_path, target)  # The examples never change images.
        else:
            array = image.array.astype(np.float64)
            array = (array - array.min()) / max(float(np.ptp(array)), 1e-9) * 65535
            kio.write_png(str(target), kio.Image(array.astype(np.uint16), spacing=(0.1, 0.1)))
        ids.append(name)
        index_points.append(image.physical_to_index(record.points_mm))
    table = kio.LandmarkTable(ids, list(phantom.landmark_names), np.stack(index_points))
    kio.write_landmarks(str(xrays / "landmarks.csv"), table, id_header="image")
    kio.write_landmarks(str(folder / "setup.csv"), table, layout="headerless")
    with open(folder / "long.csv", "w", encoding="utf-8") as handle:
        handle.write("image,landmark,x,y\n")
        for image_id, points in zip(table.ids, table.points):
            for name, (x, y) in zip(table.names, points):
                handle.write(f"{image_id},{name},{x:.3f},{y:.3f}\n")
    first = kio.read_image(str(xrays / "hand_000.png"), spacing=0.1)
    kio.write_markups(str(folder / "001.mrk.json"), table.names,
                      first.index_to_physical(table.points[0]))
    os.symlink(xrays / "hand_000.png", folder / "hand.png")
    os.symlink(xrays / f"hand_{len(ids) - 1:03d}.png", folder / "new_xray.png")

    kio.write_dicom_series(str(folder / "scan"), kio.Image(
        np.random.default_rng(0).normal(size=(6, 16, 12)).astype(np.float32),
        spacing=(1.0, 1.0, 2.5)))

    if ISBI_IMAGE.is_file():
        jpeg = ISBI_IMAGE
    else:  # The phantom radiograph cut to an ISBI image's 1935 x 2400 pixels (the model's field).
        pixels = first.array[:2400, :1935].astype(np.float64)
        pixels = (pixels - pixels.min()) / max(float(np.ptp(pixels)), 1e-9) * 255
        jpeg = folder / "phantom.jpg"
        PILImage.fromarray(pixels.astype(np.uint8)).save(jpeg, quality=90)
    for name in ("001.jpg", "cephalogram.jpg"):
        shutil.copy(jpeg, folder / name)
    for script in ("train.py", "evaluate.py"):
        os.symlink(REPO / script, folder / script)
    return folder


@pytest.fixture(scope="session")
def docs_workspace(tmp_path_factory, phantom2d_root, trained_2d):
    from helpers import built_once

    result, _ = trained_2d
    return built_once(tmp_path_factory, "docs_workspace",
                      lambda folder: _build_workspace(folder, phantom2d_root, result.output_dir))


@pytest.fixture
def serving_stand_in():
    """A REST server on localhost:8501 answering `/v1/models/isbi2015_scn[/versions/N]:predict`
    with the shipped SavedModel run in-process, as TF Serving's REST API answers."""
    import tensorflow as tf

    from helpers import saved_model_transport

    loaded = tf.saved_model.load(str(REPO / "saved_models" / "isbi2015_scn" / "6"))
    transport = saved_model_transport(loaded, [])

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if self.path.startswith("/v1/models/isbi2015_scn") and self.path.endswith(":predict"):
                try:
                    status, answer = 200, transport(self.path, body)
                except tf.errors.InvalidArgumentError as error:  # As TF Serving answers it.
                    status, answer = 400, {"error": error.message}
            else:
                status, answer = 404, {"error": f"Servable not found for request: {self.path}"}
            data = json.dumps(answer).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    try:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", SERVING_PORT), Handler)
    except OSError as error:
        pytest.fail(f"the Serving guide's examples need port {SERVING_PORT} free: {error}")
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _page_params():
    for page in PAGES:
        if not _blocks(page):
            continue  # Pages without python / bash examples (API reference, result tables).
        marks = [pytest.mark.slow] if page in SLOW_PAGES else []
        yield pytest.param(page, marks=marks, id=page)


@pytest.mark.parametrize("page", list(_page_params()))
def test_page_examples_run(page, docs_workspace, tmp_path, monkeypatch, request):
    blocks = _blocks(page)
    if page in SERVING_PAGES:
        request.getfixturevalue("serving_stand_in")
    workspace = tmp_path / "work"
    shutil.copytree(docs_workspace, workspace, symlinks=True)
    if SHARED.is_dir():
        os.symlink(SHARED, tmp_path / "shared")
    monkeypatch.chdir(workspace)
    document = SYBIL.parse(REPO / page)
    document.namespace.update(__name__="__docs__", __ran__=[], isbi_missing=not ISBI_IMAGE.is_file())
    skipped = []
    for example in document:
        try:
            example.evaluate()
        except unittest.SkipTest as reason:
            skipped.append((example.line, str(reason)))
    ran = document.namespace["__ran__"]
    code_blocks = [line for line, _, _ in blocks]
    # Every python / bash block either ran or was skipped with a reason: none was missed.
    assert sorted(ran + [line for line, _ in skipped if line in code_blocks]) == code_blocks
    if not ran:
        pytest.skip(f"{page}: every example is skipped ({skipped[0][1]})")


def test_skip_directives_give_a_reason():
    for page in PAGES:
        for line, _, reason in _blocks(page):
            assert reason is None or reason.strip(), f"{page}:{line}: a skip needs a reason"


def main():
    """Prints, per page, how many blocks run and which are skipped with what reason."""
    total_run = total_skipped = 0
    for page in PAGES:
        blocks = _blocks(page)
        if not blocks:
            continue
        run = [b for b in blocks if b[2] is None or b[2].strip().startswith("if")]
        skipped = [b for b in blocks if b not in run]
        conditional = [b for b in run if b[2] is not None]
        total_run += len(run)
        total_skipped += len(skipped)
        where = " (-m slow)" if page in SLOW_PAGES else ""
        print(f"{page}{where}: {len(run)} run"
              + (f" ({len(conditional)} only with the ISBI data)" if conditional else "")
              + f", {len(skipped)} skipped")
        for line, language, reason in skipped:
            print(f"    line {line} ({language}): {reason.strip()}")
    print(f"all pages: {total_run} blocks run, {total_skipped} skipped")


if __name__ == "__main__":
    main()
