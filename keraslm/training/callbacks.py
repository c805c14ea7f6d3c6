"""Keras callbacks of a training run. TF-only edge: tf.summary for TensorBoard images."""
import os

import keras
import numpy as np
import tensorflow as tf


class HeatmapImages(keras.callbacks.Callback):
    """Writes a few validation images and their predicted heatmaps to TensorBoard each epoch.

    Each image shows the grid image (left) and the maximum over landmarks of the predicted
    heatmaps (right), both scaled to [0, 1]; 3D volumes show their middle slice.

    Args:
        log_dir: str. TensorBoard folder (images go to `log_dir/heatmaps`).
        images: np.ndarray `(n, *grid_shape, 1)`. A few validation grid images.
        network: keras.Model. Maps images to heatmaps.
    """

    def __init__(self, log_dir, images, network):
        super().__init__()
        self.log_dir = log_dir
        self.images = np.asarray(images, np.float32)
        self.network = network
        self._writer = None

    @staticmethod
    def _unit(array):
        low = array.min(axis=(1, 2), keepdims=True)
        high = array.max(axis=(1, 2), keepdims=True)
        return (array - low) / np.maximum(high - low, 1e-6)

    def on_epoch_end(self, epoch, logs=None):
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(f"{self.log_dir}/heatmaps")
        heatmaps = np.asarray(self.network(self.images, training=False), np.float32)
        images = self.images
        if images.ndim == 5:  # 3D: middle slice along the first spatial axis.
            images, heatmaps = images[:, images.shape[1] // 2], heatmaps[:, heatmaps.shape[1] // 2]
        heatmaps = heatmaps.max(axis=-1, keepdims=True)
        if heatmaps.shape[1:3] != images.shape[1:3]:  # Strided output: upsample for display.
            heatmaps = tf.image.resize(heatmaps, images.shape[1:3], method="nearest").numpy()
        panels = np.concatenate([self._unit(images), self._unit(heatmaps)], axis=2)
        with self._writer.as_default():
            tf.summary.image("validation/image_and_heatmaps", panels, step=epoch, max_outputs=len(panels))
        self._writer.flush()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()


class BackupAndRestore(keras.callbacks.BackupAndRestore):
    """Keras's `BackupAndRestore`, resuming at the epoch that the restored optimizer's step
    count gives. Keras writes a checkpoint's weights (with the optimizer's state) before its
    epoch number: a training killed between the two resumed at the epoch before and trained
    that epoch twice (45 optimizer steps for 40).

    Args:
        backup_dir: str. As for Keras's.
        steps_per_epoch: int. Optimizer steps per epoch.
        **kwargs: as for Keras's (`save_freq` must be "epoch").
    """

    def __init__(self, backup_dir, steps_per_epoch, **kwargs):
        super().__init__(backup_dir, **kwargs)
        if self.save_freq != "epoch":
            raise ValueError("keraslm's BackupAndRestore resumes whole epochs: save_freq='epoch'")
        self._steps_per_epoch = int(steps_per_epoch)

    def on_train_begin(self, logs=None):
        try:
            super().on_train_begin(logs)
        except OSError as error:
            # A checkpoint that cannot be read and no earlier one (Keras's own fallback): a
            # kill while Keras wrote the first one, in place, before keraslm 0.4.4. Nothing
            # of the run was saved: it starts again, with a warning.
            import warnings

            warnings.warn(f"{self._weights_path} cannot be read ({error}); it was being written "
                          "when the training was stopped, before any epoch was saved: the run "
                          "starts from its first epoch")
            for path in (self._weights_path, self._training_metadata_path):
                if os.path.exists(path):
                    os.remove(path)
            self.model._initial_epoch = 0
            return
        optimizer = self.model.optimizer
        if optimizer is None or not tf.io.gfile.exists(self._weights_path):
            return
        trained_epochs = int(optimizer.iterations.numpy()) // self._steps_per_epoch
        if trained_epochs != int(getattr(self.model, "_initial_epoch", None) or 0):
            self.model._initial_epoch = trained_epochs


    def _save_model(self):
        """Keras's save, with each file written beside and renamed into place: a kill while
        writing leaves the previous checkpoint readable (Keras writes in place)."""
        os.makedirs(self.backup_dir, exist_ok=True)
        temporary = self._weights_path + ".writing.weights.h5"
        self.model.save_weights(filepath=temporary, overwrite=True)
        os.replace(temporary, self._weights_path)  # Weights first: BackupAndRestore.on_train_begin
        from keraslm.files import write_json

        write_json(self._training_metadata_path,  # counts the epochs by the optimizer's steps.
                   {"epoch": self._current_epoch, "batch": self._last_batch_seen})


class EpochHistory(keras.callbacks.Callback):
    """Keeps `history.json` (one list per metric, one entry per epoch) up to date after every
    epoch, written atomically, so a run killed at any moment and resumed ends with the curve of
    the whole run: on (re)start the file is cut to the epochs the run resumes after (the
    checkpoint's epoch, set by `BackupAndRestore`, which must come earlier in the callbacks).

    Args:
        path: str. The history file.
    """

    def __init__(self, path):
        super().__init__()
        self.path = path
        self.history = {}

    def on_train_begin(self, logs=None):
        import json
        import os

        done = int(getattr(self.model, "_initial_epoch", None) or 0)
        self.history = {}
        if done and os.path.isfile(self.path):
            with open(self.path, encoding="utf-8") as handle:
                self.history = {key: list(values)[:done] for key, values in json.load(handle).items()}

    def on_epoch_end(self, epoch, logs=None):
        from keraslm.files import write_json

        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(float(np.asarray(value).reshape(-1)[0]))
        write_json(self.path, self.history)
