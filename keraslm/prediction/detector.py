"""A trained detector as one Keras object: its networks and its `DetectorSpec`, saved as one
`.keras` file (as a keras-hub task carries its preprocessor).

A training run saves one (`model.keras`); a coarse-to-fine model or an ensemble is one
detector with several stages (`combine_detectors`). It loads with
`keras.saving.load_model(path)` in safe mode, or `load_detector(path)`.
"""
import os
import zipfile

import keras

from keraslm.errors import KeraslmError, ModelFileError
from keraslm.prediction.graph import image_to_landmarks
from keraslm.spec import DetectorSpec, upgrade_spec


@keras.saving.register_keras_serializable(package="keraslm")
class LandmarkDetector(keras.Model):
    """Networks and the `keraslm.spec.DetectorSpec` that says how they predict.

    `call(images)` runs the first global network on grid images (heatmaps);
    `locate_function()` gives the whole prediction of one image
    (`keraslm.prediction.graph.image_to_landmarks`).

    Args:
        spec: keraslm.spec.DetectorSpec (or its recorded form, read by `upgrade_spec`).
        networks: sequence of keras.Model. One per global stage of `spec`, in order.
        local_networks: sequence of keras.Model. One per local stage of `spec`, in order.
    """

    def __init__(self, spec, networks=(), local_networks=(), **kwargs):
        super().__init__(**kwargs)
        if not isinstance(spec, DetectorSpec):
            spec = upgrade_spec(spec, "spec")
        networks, local_networks = list(networks), list(local_networks)
        if len(networks) != len(spec.global_stages) or len(local_networks) != len(spec.local_stages):
            raise KeraslmError(
                f"the spec describes {len(spec.global_stages)} global and "
                f"{len(spec.local_stages)} local stages; {len(networks)} and "
                f"{len(local_networks)} networks were given")
        self.spec = spec
        self.networks = networks
        self.local_networks = local_networks
        self.built = True

    def call(self, images, training=False):
        return (self.networks or self.local_networks)[0](images, training=training)

    def locate_function(self, iterations=1):
        """`image_to_landmarks` of this detector (its networks match its spec's stages)."""
        return image_to_landmarks(self.spec, self.networks, self.local_networks, iterations)

    def get_config(self):
        config = super().get_config()
        config.update({
            "spec": self.spec.to_json(),
            "networks": [keras.saving.serialize_keras_object(n) for n in self.networks],
            "local_networks": [keras.saving.serialize_keras_object(n)
                               for n in self.local_networks],
        })
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if "metadata" in config:  # keraslm 0.1: one network (+ a local stage) and metadata dicts.
            spec = upgrade_spec(config.pop("metadata"), "model.keras", config.pop("local_metadata", None))
            network = config.pop("network")
            local = config.pop("local_network", None)
            stages = [network] + ([local] if local is not None else [])
            config["networks"] = [] if spec.is_local_only else stages[:1]
            config["local_networks"] = stages if spec.is_local_only else stages[1:]
            config["spec"] = spec
        config["networks"] = [keras.saving.deserialize_keras_object(n) for n in config["networks"]]
        config["local_networks"] = [keras.saving.deserialize_keras_object(n)
                                    for n in config["local_networks"]]
        return cls(**config)


def combine_detectors(detectors, calibration=None):
    """One LandmarkDetector of several: the first one's stages, then the next one's, ... (an
    ensemble of global stages, a global stage and the local stage that refines it, or both).
    The first detector's training records are the result's, and its calibration unless
    `calibration` (a `keraslm.calibration` dict, e.g. one that blends the stages) is given.

    Raises:
        KeraslmError: the detectors disagree in landmarks or dimension; a calibration that does
            not fit the combined detector.
    """
    detectors = list(detectors)
    if len(detectors) == 1 and calibration is None:
        return detectors[0]
    spec = detectors[0].spec
    for other in detectors[1:]:
        spec = spec.combined_with(other.spec)
    if spec.is_local_only:
        raise KeraslmError("a coarse-to-fine model needs a global stage; all of these are "
                           "local stages")
    if calibration is not None:
        spec = spec.replace(calibration=calibration)
    return LandmarkDetector(spec, [n for d in detectors for n in d.networks],
                            [n for d in detectors for n in d.local_networks])


def load_detector(path):
    """A `LandmarkDetector` from a `.keras` file written by keraslm (0.1 or later).

    Raises:
        KeraslmError: the file is missing, not a readable `.keras` model (e.g. truncated), or
            a bare network (keraslm 0.1 before model.keras held a detector).
    """
    import keraslm.models  # noqa: F401  (registers the custom layers for loading)

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ModelFileError(f"{path}: no such model file")
    try:
        loaded = keras.saving.load_model(path)
    except KeraslmError as error:
        raise ModelFileError(f"{path}: {error}") from None
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as error:
        raise ModelFileError(f"{path}: not a readable .keras model file (truncated or corrupt?): "
                             f"{type(error).__name__}: {error}") from None
    if not isinstance(loaded, LandmarkDetector):
        raise ModelFileError(
            f"{path}: a bare Keras network, not a keraslm detector: an early keraslm 0.1 run "
            "saved its network with model.json beside it, which keraslm 0.2 no longer reads. "
            "Wrap it: LandmarkDetector(upgrade_spec(<model.json as dict>, 'model.json'), "
            "[network]) and save that, or train it again")
    return loaded
