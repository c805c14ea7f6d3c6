"""The typed description of a trained detector: what prediction needs, read and written here only.

A `DetectorSpec` says which landmarks a detector finds and how each of its stages sees an
image; a `StageSpec` describes one network:

    DetectorSpec
        landmark_names, ndim
        global_stages   (StageSpec, ...)  whole image on a coarse grid; members are averaged
        local_stages    (StageSpec, ...)  crops of a fine grid around the global estimate
        calibration     expected error and the per-landmark blend of the stages, or None
        canonical_orientation   trained in the canonical frame: any storage orientation predicts
        mirror_check     low-confidence images are predicted mirrored too (MirrorCheck), or None
        storage_orientation, plain_image_spacing   what the training images looked like
    StageSpec
        architecture, grid_shape, grid_spacing (x, y[, z] mm), normalization, output_stride,
        size_divisor, sigma, decode_method, training_precision
        crop_shape, offset_prior_mm        local stages only

Both are frozen dataclasses. `to_json()` gives the recorded form (`SPEC_FORMAT`), kept in a
`LandmarkDetector`'s config (`model.keras`) and in a SavedModel's `assets/keraslm.json`;
`upgrade_spec` is the one reader of every recorded form keraslm has written: the current one,
and the per-network metadata dicts of keraslm 0.1 (`keraslm-landmarks/1`, with the local stage
under "refine" and ensemble members under "ensemble"). A recorded detector whose training
images were all stored canonically (storage orientation +x +y[ +z]) is read as one in the
canonical frame.
"""
import dataclasses

import numpy as np

from keraslm.calibration import check_calibration, name_difference
from keraslm.errors import KeraslmError
from keraslm.ops.heatmaps import METHODS, HeatmapCodec
from keraslm.preprocessing import NORMALIZATIONS, GridSpec

SPEC_FORMAT = "keraslm-detector/2"
_OLD_FORMAT = "keraslm-landmarks/1"
_OLD_STAGE_KEYS = ("landmark_names", "ndim", "grid_shape", "grid_spacing", "normalization",
                   "output_stride", "sigma")


def _ints(values):
    return tuple(int(v) for v in values)


def _floats(values):
    return tuple(float(v) for v in values)


@dataclasses.dataclass(frozen=True)
class StageSpec:
    """One network of a detector and how it sees an image.

    Args:
        architecture: str or None. The registered architecture (`keraslm.models`).
        grid_shape: tuple of int. The network grid `[y, x]` / `[z, y, x]` (a local stage: the
            fine grid it was trained on; prediction covers each image with it).
        grid_spacing: tuple of float. mm per grid step along x, y[, z].
        normalization: str. One of `keraslm.preprocessing.NORMALIZATIONS`.
        output_stride: int. Input pixels per heatmap pixel.
        size_divisor: int. Input sizes are padded to a multiple of it.
        sigma: float or tuple of float. Target sigma in output pixels (one per landmark when
            learned).
        decode_method: str. One of `keraslm.ops.heatmaps.METHODS`.
        training_precision: str or None. The compute precision it was trained in.
        crop_shape: tuple of int or None. A local stage's network input; None: a global stage.
        offset_prior_mm: float or None. A local stage's offset prior (`HeatmapCodec.centre_prior`).
    """

    architecture: str
    grid_shape: tuple
    grid_spacing: tuple
    normalization: str
    output_stride: int
    size_divisor: int
    sigma: object
    decode_method: str = "quadratic"
    training_precision: str = None
    crop_shape: tuple = None
    offset_prior_mm: float = None

    def __post_init__(self):
        if len(self.grid_shape) not in (2, 3) or len(self.grid_spacing) != len(self.grid_shape):
            raise KeraslmError(f"a stage's grid_shape and grid_spacing must both have 2 or 3 "
                               f"values. Received: {self.grid_shape}, {self.grid_spacing}")
        if self.normalization not in NORMALIZATIONS:
            raise KeraslmError(f"normalization must be one of {NORMALIZATIONS}. Received: "
                               f"{self.normalization!r}")
        if self.decode_method not in METHODS:
            raise KeraslmError(f"decode_method must be one of {METHODS}. Received: "
                               f"{self.decode_method!r}")
        if self.crop_shape is not None and len(self.crop_shape) != len(self.grid_shape):
            raise KeraslmError(f"a local stage's crop_shape must be {len(self.grid_shape)}D. "
                               f"Received: {self.crop_shape}")

    @property
    def ndim(self):
        return len(self.grid_shape)

    @property
    def is_local(self):
        return self.crop_shape is not None

    @property
    def grid(self):
        """GridSpec. The stage's grid."""
        return GridSpec(self.grid_shape, self.grid_spacing)

    @property
    def second_peak_radius_mm(self):
        """float. The radius beyond which `HeatmapCodec.second_peak` looks for a runner-up:
        two target sigmas in mm (the largest sigma, along the coarsest axis), where one clean
        peak's flank has fallen to exp(-2) = 14 % of it."""
        return float(2.0 * np.max(self.sigma) * self.output_stride * max(self.grid_spacing))

    @property
    def codec(self):
        """HeatmapCodec of the network's input: the whole grid, or a local stage's crop."""
        return HeatmapCodec(self.crop_shape or self.grid_shape, stride=self.output_stride,
                            sigma=self.sigma)

    def to_json(self):
        return {"architecture": self.architecture, "grid_shape": list(self.grid_shape),
                "grid_spacing": list(self.grid_spacing), "normalization": self.normalization,
                "output_stride": self.output_stride, "size_divisor": self.size_divisor,
                "sigma": self.sigma if np.ndim(self.sigma) == 0 else list(self.sigma),
                "decode_method": self.decode_method,
                "training_precision": self.training_precision,
                "crop_shape": None if self.crop_shape is None else list(self.crop_shape),
                "offset_prior_mm": self.offset_prior_mm}

    @classmethod
    def from_json(cls, recorded):
        sigma = recorded["sigma"]
        return cls(
            architecture=recorded.get("architecture"),
            grid_shape=_ints(recorded["grid_shape"]), grid_spacing=_floats(recorded["grid_spacing"]),
            normalization=recorded["normalization"], output_stride=int(recorded["output_stride"]),
            size_divisor=int(recorded.get("size_divisor", 1)),
            sigma=float(sigma) if np.ndim(sigma) == 0 else _floats(sigma),
            decode_method=recorded.get("decode_method", "quadratic"),
            training_precision=recorded.get("training_precision"),
            crop_shape=None if recorded.get("crop_shape") is None else _ints(recorded["crop_shape"]),
            offset_prior_mm=(None if recorded.get("offset_prior_mm") is None
                             else float(recorded["offset_prior_mm"])))


@dataclasses.dataclass(frozen=True)
class MirrorCheck:
    """Images that may show their subject facing the other way (lateral views): an image whose
    mean landmark confidence in the global stages is below `confidence_below` goes through the
    global stages mirrored along `axis` too, the facing with the higher mean global confidence
    is kept, and the local stages (if any) run once, on that facing; the answer is mapped back
    to the image. The threshold is fitted on the global stages' confidences of held-out images
    and their mirrors (`keraslm.calibration.fit_mirror_threshold`).

    Args:
        axis: str. "x", "y" or "z": the axis (of the canonical frame) to mirror along.
        confidence_below: float. Mean global-stage confidence below which the mirror is tried.
    """

    axis: str
    confidence_below: float

    def __post_init__(self):
        if self.axis not in ("x", "y", "z"):
            raise KeraslmError(f"a mirror check's axis must be 'x', 'y' or 'z'. Received: "
                               f"{self.axis!r}")
        if (not isinstance(self.confidence_below, (int, float))
                or not np.isfinite(self.confidence_below)):
            # inf would mirror every image: not a check (and not JSON).
            raise KeraslmError("a mirror check's confidence_below must be a finite number. "
                               f"Received: {self.confidence_below!r}")
        object.__setattr__(self, "confidence_below", float(self.confidence_below))

    def to_json(self):
        return {"axis": self.axis, "confidence_below": self.confidence_below}


@dataclasses.dataclass(frozen=True)
class DetectorSpec:
    """A detector: its landmarks, its stages and what it knows of its training images.

    Args:
        landmark_names: tuple of str.
        ndim: int, 2 or 3.
        global_stages: tuple of StageSpec (whole image). Empty only for a local stage saved on
            its own (a training run of `--crop-shape`), which refines another detector's
            estimates and predicts nothing alone.
        local_stages: tuple of StageSpec (crops), possibly empty.
        calibration: dict or None. `keraslm.calibration` (expected error, stage blend).
        canonical_orientation: bool. The networks learned images in the canonical frame
            (`keraslm.io.image.canonical_axes`: index axes along the physical LPS axes), and
            prediction brings every image there first, so any storage orientation predicts.
            False: the networks see arrays in storage order (models of keraslm 0.2.1 and older
            whose training images were not stored canonically).
        storage_orientation: tuple of str or None. How the training images stored their
            voxels (`keraslm.io.storage_orientation`), checked at prediction; only for models
            that are not in the canonical frame. None: not checked.
        mirror_check: MirrorCheck or None. Try the mirrored image when the confidence is low
            (subjects facing either way); None: off.
        plain_image_spacing: tuple of float or None. mm per pixel of the plain (PNG/JPEG)
            training images, named when such an image comes without a spacing.
        mean_position_mm: tuple or None. Per landmark its mean position over the training
            images (physical LPS mm, no alignment; None for a landmark never annotated): the
            mean-position baseline that reports set beside the model's error
            (`mean_position_baseline`). None: not recorded (models of keraslm 0.2.0 and older).
    """

    landmark_names: tuple
    ndim: int
    global_stages: tuple
    local_stages: tuple = ()
    calibration: dict = None
    storage_orientation: tuple = None
    plain_image_spacing: tuple = None
    mean_position_mm: tuple = None
    canonical_orientation: bool = False
    mirror_check: MirrorCheck = None

    def __post_init__(self):
        if self.ndim not in (2, 3):
            raise KeraslmError(f"ndim must be 2 or 3. Received: {self.ndim!r}")
        if not self.global_stages and not self.local_stages:
            raise KeraslmError("a detector needs at least one stage")
        for stage in self.global_stages:
            if stage.is_local:
                raise KeraslmError("a local stage (crop_shape) is listed among the global stages")
        for stage in self.local_stages:
            if not stage.is_local:
                raise KeraslmError("a whole-image stage is listed among the local stages")
        for stage in self.global_stages + self.local_stages:
            if stage.ndim != self.ndim:
                raise KeraslmError(f"a {stage.ndim}D stage in a {self.ndim}D detector")
        if self.canonical_orientation and self.storage_orientation is not None:
            raise KeraslmError("a detector in the canonical frame predicts any storage "
                               "orientation: it records no storage_orientation")
        if self.mirror_check is not None and "xyz".index(self.mirror_check.axis) >= self.ndim:
            raise KeraslmError(f"a {self.ndim}D detector cannot mirror along "
                               f"{self.mirror_check.axis}")
        if self.mean_position_mm is not None and (
                len(self.mean_position_mm) != len(self.landmark_names)
                or any(p is not None and len(p) != self.ndim for p in self.mean_position_mm)):
            raise KeraslmError(f"mean_position_mm needs one {self.ndim}D point (or None) per "
                               f"landmark, {len(self.landmark_names)}")
        if self.calibration is not None:
            check_calibration(self.calibration, self.landmark_names,
                              {"global": len(self.global_stages), "local": len(self.local_stages)})
            vote = self.calibration.get("shape_vote")
            if vote is not None and np.shape(vote["y_mean"])[1] != self.ndim:
                raise KeraslmError(f"the calibration's shape vote is for "
                                   f"{np.shape(vote['y_mean'])[1]}D points, the detector is "
                                   f"{self.ndim}D")
            if self.calibration.get("local_weight") is not None and not self.local_stages:
                raise KeraslmError("the calibration blends a global and a local stage "
                                   "(local_weight); this model has no local stage")

    @property
    def num_landmarks(self):
        return len(self.landmark_names)

    @property
    def is_local_only(self):
        """True for a local stage saved on its own (no global stage)."""
        return not self.global_stages

    @property
    def is_ensemble(self):
        return len(self.global_stages) > 1 or len(self.local_stages) > 1

    @property
    def local_weight(self):
        """The calibration's per-landmark weight of the refined point, or None."""
        return None if self.calibration is None else self.calibration.get("local_weight")

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    def combined_with(self, other):
        """This detector's stages followed by `other`'s (an ensemble, or a global stage and the
        local stage that refines it). Landmarks and dimension must agree; the training records
        (storage orientation, plain image spacing, mean positions) and the calibration are this
        one's (the mean positions `other`'s where this one has none)."""
        if other.ndim != self.ndim:
            raise KeraslmError(f"the stages disagree in their dimension: {other.ndim}D, the "
                               f"first is {self.ndim}D")
        if tuple(other.landmark_names) != tuple(self.landmark_names):
            raise KeraslmError("the stages disagree in their landmarks: " + name_difference(
                other.landmark_names, self.landmark_names, "the first"))
        if other.canonical_orientation != self.canonical_orientation:
            raise KeraslmError(
                "the stages see images in different frames: one was trained in the canonical "
                "frame, the other in its training images' storage order "
                f"({' '.join(self.storage_orientation or other.storage_orientation or ('?',))}); "
                "train them with the same keraslm version")
        return self.replace(global_stages=self.global_stages + other.global_stages,
                            local_stages=self.local_stages + other.local_stages,
                            mean_position_mm=(other.mean_position_mm if self.mean_position_mm is None
                                              else self.mean_position_mm))

    def to_json(self):
        """dict. The recorded form (JSON-serialisable); `upgrade_spec` reads it back."""
        return {"format": SPEC_FORMAT, "landmark_names": list(self.landmark_names),
                "ndim": self.ndim,
                "global_stages": [s.to_json() for s in self.global_stages],
                "local_stages": [s.to_json() for s in self.local_stages],
                "calibration": self.calibration,
                "canonical_orientation": self.canonical_orientation,
                "mirror_check": None if self.mirror_check is None else self.mirror_check.to_json(),
                "storage_orientation": (None if self.storage_orientation is None
                                        else list(self.storage_orientation)),
                "plain_image_spacing": (None if self.plain_image_spacing is None
                                        else list(self.plain_image_spacing)),
                "mean_position_mm": (None if self.mean_position_mm is None else
                                     [None if p is None else list(p) for p in self.mean_position_mm])}


def stage_spec(network, grid, normalization, sigma, decode_method="quadratic",
               training_precision=None, crop_shape=None, offset_prior_mm=None):
    """The StageSpec of a trained network on `grid` (a GridSpec)."""
    return StageSpec(
        architecture=getattr(network, "architecture", None), grid_shape=_ints(grid.shape),
        grid_spacing=_floats(grid.spacing), normalization=normalization,
        output_stride=int(network.output_stride),
        size_divisor=int(getattr(network, "size_divisor", 1)),
        sigma=float(sigma) if np.ndim(sigma) == 0 else _floats(sigma),
        decode_method=decode_method, training_precision=training_precision,
        crop_shape=None if crop_shape is None else _ints(crop_shape),
        offset_prior_mm=None if offset_prior_mm is None else float(offset_prior_mm))


def offset_prior_mm(translation_mm):
    """A local stage's `offset_prior_mm`: the standard deviation of the crop-centre offsets it
    was trained on, uniform within +-translation_mm per axis, i.e. translation_mm / sqrt(3);
    None without translation."""
    return float(translation_mm) / np.sqrt(3.0) if translation_mm else None


def mean_position_mm(points_mm):
    """A DetectorSpec's `mean_position_mm` from the training landmarks `(images, landmarks,
    ndim)` (physical mm, NaN = missing)."""
    points_mm = np.asarray(points_mm, dtype=np.float64)
    present = ~np.isnan(points_mm).any(axis=-1)  # (images, landmarks)
    means = []
    for landmark in range(points_mm.shape[1]):
        rows = points_mm[present[:, landmark], landmark]
        means.append(_floats(rows.mean(axis=0)) if len(rows) else None)
    return tuple(means)


def _mean_positions(recorded):
    return None if recorded is None else tuple(None if p is None else _floats(p) for p in recorded)


def _check_old_stage(recorded, source):
    missing = [key for key in _OLD_STAGE_KEYS if key not in recorded]
    if missing:
        raise KeraslmError(f"{source}: the model description lacks {', '.join(missing)}")
    if recorded["ndim"] not in (2, 3) or len(recorded["grid_shape"]) != recorded["ndim"]:
        raise KeraslmError(f"{source}: inconsistent ndim / grid_shape in the model description")


def _old_stage(recorded, source):
    _check_old_stage(recorded, source)
    stage = StageSpec.from_json(recorded)
    if (recorded.get("stage") == "local") != stage.is_local:
        raise KeraslmError(f"{source}: a local stage without crop_shape, or a global one with it")
    return stage


def _in_canonical_frame(spec):
    """A recorded spec whose training images were stored canonically (index axes along +x,
    +y[, +z]) learned canonical arrays: it is in the canonical frame. So, taken as such, did a
    2D spec that recorded no storage orientation (keraslm 0.1's descriptions, and the ISBI 2015
    versions 6 and 8 made from them): 2D training images - PNG/JPEG, radiographs in DICOM - are
    stored +x +y, and its graph answered an image stored otherwise (a 2D NIfTI in RAS) upside
    down; a 3D one is left as it was recorded."""
    canonical = tuple(f"+{axis}" for axis in "xyz"[:spec.ndim])
    recorded = spec.storage_orientation
    if recorded is None and not spec.canonical_orientation and spec.ndim == 2:
        recorded = canonical
    if recorded == canonical:
        return spec.replace(storage_orientation=None, canonical_orientation=True)
    return spec


def upgrade_spec(recorded, source, local_recorded=None):
    """The DetectorSpec of any recorded form keraslm has written.

    Args:
        recorded: dict. The current form (`DetectorSpec.to_json`), or keraslm 0.1's metadata of
            one network (`keraslm-landmarks/1`: a run folder's model.json, a LandmarkDetector's
            "metadata", a SavedModel's `assets/keraslm.json` with "refine" / "ensemble").
        source: str. Where it was read (named in errors).
        local_recorded: dict, optional. keraslm 0.1's separate metadata of a local stage (a
            LandmarkDetector's "local_metadata").

    Raises:
        KeraslmError: an unknown format, or a description that lacks what prediction needs.
    """
    if not isinstance(recorded, dict):
        raise KeraslmError(f"{source}: the model description is not a JSON object")
    form = recorded.get("format", _OLD_FORMAT)
    try:
        if form == SPEC_FORMAT:
            return _in_canonical_frame(DetectorSpec(
                landmark_names=tuple(str(n) for n in recorded["landmark_names"]),
                ndim=int(recorded["ndim"]),
                global_stages=tuple(StageSpec.from_json(s) for s in recorded["global_stages"]),
                local_stages=tuple(StageSpec.from_json(s) for s in recorded["local_stages"]),
                calibration=recorded.get("calibration"),
                storage_orientation=(None if recorded.get("storage_orientation") is None
                                     else tuple(recorded["storage_orientation"])),
                plain_image_spacing=(None if recorded.get("plain_image_spacing") is None
                                     else _floats(recorded["plain_image_spacing"])),
                mean_position_mm=_mean_positions(recorded.get("mean_position_mm")),
                canonical_orientation=bool(recorded.get("canonical_orientation", False)),
                mirror_check=(None if recorded.get("mirror_check") is None
                              else MirrorCheck(**recorded["mirror_check"]))))
        if form != _OLD_FORMAT:
            raise KeraslmError(
                f"{source}: unknown model description format {form!r} (this keraslm reads "
                f"{SPEC_FORMAT!r} and {_OLD_FORMAT!r}); a newer keraslm wrote it")
        _check_old_stage(recorded, source)
        if "ensemble" in recorded:
            global_stages = [_old_stage(s, source) for s in recorded["ensemble"]["global"]]
            local_stages = [_old_stage(s, source) for s in recorded["ensemble"]["local"]]
        else:
            first = _old_stage(recorded, source)
            global_stages, local_stages = ([], [first]) if first.is_local else ([first], [])
            local = recorded.get("refine", local_recorded)
            if local is not None:
                local_stages.append(_old_stage(local, source))
        # Per network in 0.1: the precision each was trained in (members of an exported
        # ensemble lack it: the first network's applies to its stage).
        precision = recorded.get("training_precision")
        if global_stages and global_stages[0].training_precision is None and precision:
            global_stages[0] = dataclasses.replace(global_stages[0], training_precision=precision)
        orientation = recorded.get("storage_orientation")
        plain = recorded.get("plain_image_spacing")
        return _in_canonical_frame(DetectorSpec(
            landmark_names=tuple(str(n) for n in recorded["landmark_names"]),
            ndim=int(recorded["ndim"]), global_stages=tuple(global_stages),
            local_stages=tuple(local_stages), calibration=recorded.get("calibration"),
            storage_orientation=None if orientation is None else tuple(orientation),
            plain_image_spacing=None if plain is None else _floats(plain)))
    except KeraslmError as error:
        message = str(error)
        raise KeraslmError(message if message.startswith(f"{source}:")
                           else f"{source}: {message}") from None
    except (KeyError, TypeError, ValueError) as error:
        raise KeraslmError(f"{source}: the model description is incomplete or malformed "
                           f"({type(error).__name__}: {error})") from None
