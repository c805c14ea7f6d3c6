"""keraslm.files: atomic writes leave the permissions a plain write would (the process's umask),
not the temporary file's owner-only 0600 / 0700 - a model folder TF Serving reads as another
user, or CSVs in a group's shared folder, must stay readable."""
import os
import stat

import pytest

from keraslm.files import atomic_folder, atomic_path, write_json


@pytest.fixture
def umask():
    """Sets a umask for the test and restores the process's afterwards."""
    previous = os.umask(0o022)
    yield lambda value: os.umask(value)
    os.umask(previous)


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_outputs_get_the_umask_permissions(tmp_path, umask):
    write_json(tmp_path / "a.json", {"x": 1})
    with atomic_path(tmp_path / "b.npy") as temporary:
        open(temporary, "wb").close()
    with atomic_folder(tmp_path / "version") as temporary:
        open(os.path.join(temporary, "saved_model.pb"), "wb").close()
    assert _mode(tmp_path / "a.json") == _mode(tmp_path / "b.npy") == 0o644
    assert _mode(tmp_path / "version") == 0o755
    umask(0o077)  # A private umask is kept too.
    write_json(tmp_path / "c.json", {"x": 1})
    with atomic_folder(tmp_path / "private") as temporary:
        pass
    assert _mode(tmp_path / "c.json") == 0o600 and _mode(tmp_path / "private") == 0o700


def test_an_output_folder_that_cannot_be_written_is_named_before_any_work(tmp_path, monkeypatch):
    """check_output_folder writes a probe file: os.access says "writable" to root and on a
    read-only file system, where the first real write failed after the work."""
    import tempfile

    from keraslm.errors import KeraslmError
    from keraslm.files import check_output_folder

    check_output_folder(str(tmp_path / "new" / "deeper"), "--output-dir")
    assert os.listdir(tmp_path) == []  # The probe is gone; nothing made.

    def read_only(*args, **kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(KeraslmError, match=r"--output-dir .*new: cannot write into .* "
                       r"\(Read-only file system\); choose another"):
        check_output_folder(str(tmp_path / "new"), "--output-dir")
