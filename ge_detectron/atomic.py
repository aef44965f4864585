"""Publishing files and folders atomically: each is written under a temporary name next to its final
one (``<path>.tmp<pid>``) and renamed into place once complete, so that a reader (another process, a
later run) sees the whole file or folder or none of it, and a process killed while writing leaves only
the temporary name behind."""
import os
import re
import shutil
from contextlib import contextmanager


_TEMPORARY_NAME = re.compile(r"^(?P<name>.+)\.tmp(?P<pid>\d+)$")


def temporary_path(path):
    """The name ``path`` is written under until it is complete: ``<path>.tmp<this process's id>``."""
    return f"{path.rstrip(os.sep)}.tmp{os.getpid()}"


def abandoned_temporary_name(name):
    """For the base name of a ``temporary_path`` whose writer is no longer running (a process killed
    while writing), the final name it stood for; else None."""
    match = _TEMPORARY_NAME.match(name)
    if match is None:
        return None
    try:
        os.kill(int(match["pid"]), 0)
    except ProcessLookupError:
        return match["name"]
    except PermissionError:  # another user's process, running
        pass
    return None


class AtomicFile:
    """``open(path, mode)`` for writing (a context manager) that replaces ``path`` only once the block
    completed and the data is on disk; if the block or the write raises, ``path`` stays as it was (an
OSError, e.g. of a full disk, names ``path``)."""

    def __init__(self, path, mode="w"):
        self.path, self.tmp = path, temporary_path(path)
        self.file = open(self.tmp, mode)

    def __enter__(self):
        return self.file

    def __exit__(self, exc_type, exc, tb):
        try:
            try:
                if exc_type is None:
                    self.file.flush()
                    os.fsync(self.file.fileno())
            finally:
                self.file.close()
        except OSError as e:  # e.g. a full disk: the file is incomplete
            exc = e
        if exc is None:
            os.replace(self.tmp, self.path)
            return
        os.remove(self.tmp)
        if isinstance(exc, OSError):  # named after ``path``, the file that could not be written
            raise OSError(exc.errno, exc.strerror, self.path) from None


@contextmanager
def atomic_folder(path):
    """Yield an empty temporary folder to fill; when the block completes it is renamed to ``path``.
    Where ``path`` is there already (another process published the same folder first) the existing
    folder is kept and the temporary one removed; if the block raises, the temporary one is removed."""
    tmp = temporary_path(path)
    shutil.rmtree(tmp, ignore_errors=True)  # left by a killed process of the same id
    os.makedirs(tmp)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        os.rename(tmp, path)
    except OSError:  # a non-empty folder is at ``path``: another process's
        shutil.rmtree(tmp)
        if not os.path.isdir(path):
            raise
