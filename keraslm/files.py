"""Files written whole or not at all, and JSON read with keraslm errors: `atomic_path`,
`atomic_folder` (write to a temporary name beside the target, then rename), `write_json`,
`write_text`, `read_json`, and `check_output_folder` (an output folder that cannot be made,
named before the work). Used by every package that writes files."""
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


def check_output_folder(path, name):
    """Raises KeraslmError when a folder cannot be made or written at `path` because it, or a
    folder it would be made in, is a file or not writable - before any work is done for it.

    Args:
        path: str. The output folder (need not exist).
        name: str. What names it in the message, e.g. "--output-dir".
    """
    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path) and not os.path.isdir(path):
        raise KeraslmError(f"{name} {path} is a file, not a folder; choose another")
    parent = os.path.dirname(path)
    while parent and not os.path.exists(parent):
        parent, child = os.path.dirname(parent), parent
        if parent == child:
            break
    if os.path.exists(parent) and not os.path.isdir(parent):
        raise KeraslmError(f"{name} {path} cannot be made: {parent} is a file, not a folder")
    existing = path if os.path.isdir(path) else parent
    if os.path.isdir(existing):
        # A file made and removed: the permissions alone say nothing for root, a read-only
        # file system or a full disk.
        try:
            handle, probe = tempfile.mkstemp(prefix=".keraslm-write-test.", dir=existing)
            os.close(handle)
            os.remove(probe)
        except OSError as error:
            raise KeraslmError(f"{name} {path}: cannot write into {existing} "
                               f"({error.strerror or error}); choose another") from None


def _created_mode(mode):
    """`mode` less the process's umask: the permissions a plain `open` / `os.makedirs` gives, so
    that atomically written outputs (a model a TF Serving user reads, a shared folder's CSVs)
    are not left at the temporary file's owner-only 0600 / 0700."""
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


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
        os.chmod(temporary, _created_mode(0o666))  # mkstemp's 0600 -> what open() would give.
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
        os.chmod(temporary, _created_mode(0o777))  # mkdtemp's 0700 -> what makedirs would give.
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


def write_json(path, payload, indent=2, default=None):
    """Writes `payload` as JSON (plus a final newline) to `path`, atomically; `default` as in
    `json.dump` (for values JSON has no type for)."""
    with atomic_path(path, suffix=".json") as temporary:
        with open(temporary, "w", encoding="utf-8") as handle:
            json.dump(payload, handle, indent=indent, default=default)
            handle.write("\n")


def write_text(path, text):
    """Writes `text` to `path` (UTF-8), atomically."""
    with atomic_path(path, suffix=os.path.splitext(os.fspath(path))[1]) as temporary:
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(text)


def read_cache(path):
    """dict. A JSON cache file's mapping, or {} when it is missing, unreadable or not a
    mapping (a cache is rebuilt, never an error)."""
    try:
        with open(path, encoding="utf-8") as handle:
            cache = json.load(handle)
        return cache if isinstance(cache, dict) else {}
    except (OSError, ValueError):
        return {}
