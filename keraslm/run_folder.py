"""A training run folder and the names of what it holds, in one place.

    <run>/config.json     the run's settings as resolved (dataset, split, grid, precision, XLA)
    <run>/model.keras     the trained LandmarkDetector: networks and spec (written last: its presence = finished)
    <run>/metrics.json    validation point errors in mm and the validation ids
    <run>/history.json    per-epoch losses and errors
    <run>/checkpoints/    BackupAndRestore state of an unfinished run (--resume)
    <run>/trained.weights.h5  the weights after the last step, until model.keras is written
                          (a run that fails in its final validation resumes from them)
    <run>/trained_sigma.json  with them, the learned target sigmas (--learn-sigma)
    <run>/export.json     the SavedModel version folder the run exported (a resumed run that
                          was stopped after its export does not export a second version)
    <run>/logs/           TensorBoard logs
    <run>/.training.lock  locked while a training writes the folder (`RunFolder.training_lock`)

`train.py` writes it (`keraslm.training.run`); `evaluate.py --runs`, `keraslm.export` and the
experiment drivers read it.
"""
import contextlib
import os

try:
    import fcntl
except ImportError:  # Windows: no advisory file locks; training_lock then only creates the folder.
    fcntl = None

from keraslm.errors import KeraslmError
from keraslm.files import read_json, write_json

CONFIG_FILE = "config.json"
MODEL_FILE = "model.keras"
METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.json"
TRAINED_WEIGHTS_FILE = "trained.weights.h5"
TRAINED_SIGMA_FILE = "trained_sigma.json"
EXPORT_FILE = "export.json"
CHECKPOINT_FOLDER = "checkpoints"
LOG_FOLDER = "logs"
LOCK_FILE = ".training.lock"


class RunFolder:
    """Paths and reads / atomic writes of one run folder.

    Args:
        path: str. The run folder (need not exist yet).
    """

    def __init__(self, path):
        self.path = os.path.abspath(os.fspath(path))

    def __repr__(self):
        return f"RunFolder({self.path!r})"

    def file(self, name):
        return os.path.join(self.path, name)

    @property
    def config_path(self):
        return self.file(CONFIG_FILE)

    @property
    def model_path(self):
        return self.file(MODEL_FILE)

    @property
    def metrics_path(self):
        return self.file(METRICS_FILE)

    @property
    def history_path(self):
        return self.file(HISTORY_FILE)

    @property
    def trained_weights_path(self):
        return self.file(TRAINED_WEIGHTS_FILE)

    @property
    def trained_sigma_path(self):
        return self.file(TRAINED_SIGMA_FILE)

    @property
    def export_record_path(self):
        return self.file(EXPORT_FILE)

    @property
    def checkpoint_dir(self):
        return self.file(CHECKPOINT_FOLDER)

    @property
    def log_dir(self):
        return self.file(LOG_FOLDER)

    @property
    def lock_path(self):
        return self.file(LOCK_FILE)

    @contextlib.contextmanager
    def training_lock(self):
        """Holds an exclusive lock on the run folder (created if missing) while a training writes
        it, so that a second training into the same folder - a `--resume` started twice, a
        cross-validation driver beside a queue - stops with a KeraslmError naming the process
        that holds it instead of writing the same checkpoints. The operating system releases the
        lock however the holder ends. A folder this call created and nothing but the lock was
        written into is removed again on release.

        Raises:
            KeraslmError: another process holds the lock.
        """
        created = not os.path.isdir(self.path)
        os.makedirs(self.path, exist_ok=True)
        with open(self.lock_path, "a+") as handle:
            if fcntl is not None:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    handle.seek(0)
                    holder = handle.read().strip() or "unknown"
                    raise KeraslmError(
                        f"{self.path} is being trained by another process (pid {holder}): wait "
                        "for it to end, or train into another --output-dir") from None
            handle.seek(0)
            handle.truncate()
            handle.write(f"{os.getpid()}\n")
            handle.flush()
            try:
                yield self
            finally:
                if created and os.listdir(self.path) == [LOCK_FILE]:
                    os.remove(self.lock_path)
                    os.rmdir(self.path)
                else:  # No stale pid for the next holder's error message.
                    handle.seek(0)
                    handle.truncate()

    def is_finished(self):
        """bool. Whether the run wrote its model (the last thing a run writes)."""
        return os.path.isfile(self.model_path)

    def has_checkpoints(self):
        """bool. Whether an interrupted run left checkpoints (or its trained weights) to resume
        from."""
        return os.path.isdir(self.checkpoint_dir) or os.path.isfile(self.trained_weights_path)

    def read_config(self):
        """dict. `config.json`; KeraslmError when the folder or file is missing or unreadable."""
        if not os.path.isdir(self.path):
            raise KeraslmError(f"{self.path}: no such training run folder")
        return read_json(self.config_path, f"{self.path}: no {CONFIG_FILE}; not a train.py run folder")

    def read_metrics(self):
        """dict. `metrics.json`; KeraslmError when missing or unreadable."""
        return read_json(self.metrics_path, f"{self.path}: no {METRICS_FILE}; the run has not finished")

    def write_config(self, payload):
        write_json(self.config_path, payload)

    def write_metrics(self, payload):
        write_json(self.metrics_path, payload)
