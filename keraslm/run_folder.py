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
#: What train.py writes into a run folder: a new run overwrites or removes all of it.
RUN_CONTENTS = (CONFIG_FILE, MODEL_FILE, METRICS_FILE, HISTORY_FILE, TRAINED_WEIGHTS_FILE,
                TRAINED_SIGMA_FILE, EXPORT_FILE, CHECKPOINT_FOLDER, LOG_FOLDER)
#: Files of a checkpoint in CHECKPOINT_FOLDER (Keras's BackupAndRestore).
CHECKPOINT_FILES = ("latest.weights.h5", "latest.weights.h5.bkp", "training_metadata.json")
#: Entries of a config.json that train.py wrote (every version of keraslm).
_CONFIG_KEYS = ("dataset", "architecture", "output_dir", "steps")


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
        return (any(os.path.isfile(os.path.join(self.checkpoint_dir, name))
                    for name in CHECKPOINT_FILES)
                or os.path.isfile(self.trained_weights_path))

    def has_run_config(self):
        """bool. Whether config.json is there and is one that train.py wrote."""
        import json

        try:
            with open(self.config_path, encoding="utf-8") as handle:
                config = json.load(handle)
        except (OSError, ValueError):
            return False
        return isinstance(config, dict) and all(key in config for key in _CONFIG_KEYS)

    def foreign_contents(self):
        """Names of `RUN_CONTENTS` present in a folder whose config.json train.py did not
        write (another program's files a run would overwrite or remove); [] for a run folder."""
        if not os.path.isdir(self.path) or self.has_run_config():
            return []
        return [name for name in RUN_CONTENTS if os.path.exists(self.file(name))]

    def remove_leftovers(self):
        """Removes the temporary files of writes a kill interrupted (`keraslm.files.atomic_path`
        names them `.<name>.<random>.tmp<suffix>`); call with the training lock held. Returns
        their names."""
        removed = []
        for name in sorted(os.listdir(self.path)) if os.path.isdir(self.path) else []:
            base = name.split(".tmp")[0]
            if (name.startswith(".") and ".tmp" in name
                    and any(base.startswith(f".{known}.") for known in RUN_CONTENTS)):
                path = self.file(name)
                if os.path.isfile(path):
                    os.remove(path)
                    removed.append(name)
        return removed

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
