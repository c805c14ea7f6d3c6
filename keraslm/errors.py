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
