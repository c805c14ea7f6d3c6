"""The keraslm exception hierarchy.

Every error keraslm raises for bad input derives from `KeraslmError`, so callers can catch one
class. Subclasses say which kind of input was wrong; messages name the file or argument and
what was received.
"""


class KeraslmError(Exception):
    """Base class of every keraslm error."""


class ImageReadError(KeraslmError, OSError):
    """An image file or folder could not be read (missing, unsupported, corrupt, bad geometry)."""


class ImageWriteError(KeraslmError, OSError):
    """An image could not be written."""


class LandmarkFileError(KeraslmError, ValueError):
    """A landmark file is missing or malformed."""


class DatasetError(KeraslmError, ValueError):
    """A dataset description is inconsistent (ids without images, missing files, bad splits)."""


class UsageError(KeraslmError, ValueError):
    """A bad argument value (an unknown name, a shape or number out of range, a choice the
    data cannot make itself). Models, ops and presets raise it too, so callers catch
    `KeraslmError` alone; it is a `ValueError` as well, for code written against the earlier
    `ValueError`s."""


class DatasetArgumentError(DatasetError, UsageError):
    """A bad dataset argument: a name or path that names nothing keraslm can load, or a choice
    the files cannot make (units)."""


class MissingSpacingError(DatasetArgumentError):
    """Plain images (PNG/JPEG) of a dataset without a pixel spacing from anywhere."""


class ModelFileError(KeraslmError, OSError):
    """A model file or folder is missing, truncated or not a keraslm model."""


class CalibrationError(KeraslmError, ValueError):
    """A calibration file (`keraslm-evaluate --calibrate`) is missing, malformed, or was fitted
    for other landmarks or another stage structure than the model it is given to."""


#: Errors about the data or files a command was given (exit status 1); any other error is a
#: bad argument (exit status 2).
DATA_ERRORS = (ImageReadError, LandmarkFileError, DatasetError, ModelFileError, CalibrationError)


class KeraslmWarning(UserWarning):
    """Something keraslm could do but that may not be what the user meant (e.g. a NIfTI whose
    two geometries disagree); the commands print it as one "warning:" line."""


def exit_status(error):
    """The command-line exit status for an error: 1 for bad data or files, 2 otherwise (a
    `UsageError` is always 2)."""
    if isinstance(error, UsageError):
        return 2
    return 1 if isinstance(error, DATA_ERRORS) else 2
