"""Files only the user running the stack may read: the .local directory and the secrets in it.

A secret file is never world-readable, not even for an instant: it is written to a temporary file
created with mode 0600 next to it, then renamed over it (a reader sees the old file or the new one).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

PRIVATE_DIR_MODE = 0o700
SECRET_FILE_MODE = 0o600


def ensure_private_dir(path: Path, mode: int = PRIVATE_DIR_MODE) -> Path:
    """Create `path` (and missing parents) and give it `mode`, also when it already existed wider."""
    path.mkdir(parents=True, exist_ok=True, mode=mode)
    path.chmod(mode)
    return path


def write_secret_file(path: Path, text: str) -> None:
    """Replace `path` with `text`, atomically and with mode 0600 from the first byte."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()  # a leftover of a writer that died: O_EXCL below would refuse it
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, SECRET_FILE_MODE)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def restrict_secret_file(path: Path) -> None:
    """Make an existing secret file (e.g. one an older version wrote 0644) readable by its owner only."""
    path.chmod(SECRET_FILE_MODE)
