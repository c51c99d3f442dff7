"""Private state on disk: key stores and their directories are the owner's only, whatever the umask."""

from __future__ import annotations

import os
from pathlib import Path


def private_dir(path: Path) -> Path:
    """Create ``path`` (and missing parents) as 0700; an existing ``path`` is made 0700 too. Parents that
    already existed are left alone (they may be shared, e.g. /tmp)."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    for directory in {path, *missing}:
        os.chmod(directory, 0o700)
    return path


def private_file(path: Path) -> Path:
    """Make sure ``path`` exists with mode 0600 before a library (SQLite) opens it with its default mode."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    os.chmod(path, 0o600)
    return path
