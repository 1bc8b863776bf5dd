"""Atomic file writes: a reader (a dashboard, a resumed run, `ctrain report`) never sees half a file.

Every file ctrain writes goes to a temporary file in the target's directory and is moved into
place with `os.replace`. Temporary files are created with mode 0600; the finished file gets the
mode an ordinary `open(path, "w")` would give (0666 less the umask), so results stay readable
by the people and tools the user shares them with. Temporaries are hidden and end in `.tmp`
(`.metrics.csv.k2j4.tmp`, `.model_final.x8d1.tmp/`): what a killed process left is found by
`remove_temporaries` when its run is resumed.
"""

from __future__ import annotations

import csv
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
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


def write_csv_atomic(path: str | Path, rows: Sequence[Mapping], fields: Sequence[str] | None = None) -> Path:
    """Write `rows` as a CSV file with a header, atomically. `fields` defaults to every key of the rows, in the order
    they first appear; a row without a field leaves its cell empty."""
    if fields is None:
        fields = list(dict.fromkeys(key for row in rows for key in row))
    with atomic_path(path) as temporary, temporary.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return Path(path)


@contextmanager
def atomic_directory(path: str | Path, keep_existing: bool = False) -> Iterator[Path]:
    """Yield an empty staging directory beside `path`; when the block ends cleanly it becomes `path`.

    A reader never sees a half-written directory: the previous copy is moved aside and removed only
    after the new one is in place. With `keep_existing`, a `path` that appeared meanwhile (another
    process finished the same cache first) is kept and the staged copy dropped. The staging
    directory's parent is scratch space of the writer's own (removed with it): intermediate files
    go there, beside the target, not to the system's temporary directory.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp") as scratch:
        staged = Path(scratch) / "staged"
        staged.mkdir()
        yield staged
        if target.exists():
            if keep_existing:
                return
            os.replace(target, Path(scratch) / "previous")  # removed with the scratch directory
        os.replace(staged, target)


def complete_lines(path: str | Path) -> str:
    """`path`'s text up to its last newline: the lines a reader can trust.

    ctrain's own files are replaced whole, but a copy cut short, a full disk or a writer killed mid-append
    (probes/*.jsonl) can leave a last line without its end, e.g. `-2` of `-24.03`; it is dropped with a warning
    rather than read as a value."""
    text = Path(path).read_text()
    if text and not text.endswith("\n"):
        kept, _, torn = text.rpartition("\n")
        warnings.warn(f"'{path}': its last line is cut short ({torn[-40:]!r}, no line end); skipped it", stacklevel=2)
        return kept + "\n" if kept else ""
    return text


def remove_temporaries(directory: str | Path) -> list[Path]:
    """Remove the temporary files and staging directories that unfinished atomic writes left under `directory`
    (a process killed mid-write); returns what was removed. Only for a directory no other process is writing."""
    removed: list[Path] = []
    for path in sorted(Path(directory).rglob(".*.tmp")):  # sorted: a staging directory before what it holds
        if any(parent in removed for parent in path.parents):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def check_writable_directory(path: str | Path, option: str) -> None:
    """Create the directory `path` for a command's output, or fail in one line that names it, before any work."""
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
        if not os.access(path, os.W_OK | os.X_OK):
            raise PermissionError(13, "Permission denied")
    except OSError as error:
        raise ValueError(f"{option} '{path}': cannot write there ({error.strerror}); give a directory you can write") from None
