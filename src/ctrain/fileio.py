"""Atomic file writes: a reader (a dashboard, a resumed run, `ctrain report`) never sees half a file.

Every file ctrain writes goes to a temporary file in the target's directory and is moved into
place with `os.replace`. Temporary files are created with mode 0600; the finished file gets the
mode an ordinary `open(path, "w")` would give (0666 less the umask), so results stay readable
by the people and tools the user shares them with.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; when the block ends cleanly it becomes `path`."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(handle)
    try:
        yield Path(temporary)
        os.chmod(temporary, _default_mode())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write `text` to `path` atomically, with normal permissions."""
    with atomic_path(path) as temporary:
        temporary.write_text(text)
    return Path(path)


@contextmanager
def atomic_directory(path: str | Path, keep_existing: bool = False) -> Iterator[Path]:
    """Yield an empty staging directory beside `path`; when the block ends cleanly it becomes `path`.

    A reader never sees a half-written directory: the previous copy is moved aside and removed only
    after the new one is in place. With `keep_existing`, a `path` that appeared meanwhile (another
    process finished the same cache first) is kept and the staged copy dropped.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}.") as scratch:
        staged = Path(scratch) / "staged"
        staged.mkdir()
        yield staged
        if target.exists():
            if keep_existing:
                return
            os.replace(target, Path(scratch) / "previous")  # removed with the scratch directory
        os.replace(staged, target)
