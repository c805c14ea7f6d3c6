"""Atomic file writing (write to a temporary name beside the target, then rename) and JSON
reading with keraslm errors."""
import contextlib
import json
import os
import shutil
import tempfile

from keraslm.errors import KeraslmError


def read_json(path, missing, error=KeraslmError):
    """Reads a JSON file.

    Args:
        path: str. The file.
        missing: str. Message of the error raised when the file does not exist.
        error: type. KeraslmError subclass to raise.

    Raises:
        error: the file is missing (`missing`) or not valid JSON (naming the file).
    """
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise error(missing) from None
    except json.JSONDecodeError as exc:
        raise error(f"{path}: not valid JSON ({exc})") from None


@contextlib.contextmanager
def atomic_path(path, suffix=""):
    """Yields a temporary path in the target's folder; renames it to `path` on success and
    removes it on failure, so a reader never sees a half-written file.

    Args:
        path: str. The final file path.
        suffix: str. Suffix of the temporary name (some writers choose the format from it).
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, temporary = tempfile.mkstemp(
        prefix=f".{os.path.basename(path)}.", suffix=".tmp" + suffix, dir=folder
    )
    os.close(handle)
    try:
        yield temporary
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)
        raise


@contextlib.contextmanager
def atomic_folder(path, overwrite=False):
    """Yields a temporary folder beside `path`; renames it to `path` on success (replacing an
    existing folder only if `overwrite`) and removes it on failure.

    Args:
        path: str. The final folder path.
        overwrite: bool. Replace an existing folder at `path`.
    """
    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    temporary = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=parent)
    try:
        yield temporary
        if os.path.exists(path):
            trash = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.", suffix=".old", dir=parent)
            os.replace(path, os.path.join(trash, "old"))
            os.replace(temporary, path)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(temporary, path)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
