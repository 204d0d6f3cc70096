"""Atomic file writes: snapshots, reports and images are all-or-nothing.

Everything is written to a temp file beside the destination, fsynced, given the usual
permissions (mkstemp makes private files) and renamed over the destination, so a crash or a
failed run never leaves a half-written file or clobbers an earlier good one.
"""
import os
import tempfile


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path, write_fn, suffix='.tmp'):
    """Call write_fn(binary file) on a temp file, then atomically move it to `path`."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f'.{os.path.basename(path)}.', suffix=suffix, dir=directory)
    try:
        with os.fdopen(fd, 'wb') as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _fsync_dir(directory)


def atomic_write_text(path, text):
    atomic_write(path, lambda f: f.write(text.encode('utf-8')))


def _fsync_dir(directory):
    # Makes the rename itself durable; not every platform can open a directory.
    try:
        handle = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)
