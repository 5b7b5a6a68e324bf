"""Where the package keeps files, and the one way it writes a directory of files safely.

`write_directory` stages every file in a hidden folder inside the target, marks the staging complete, then moves the
files into place one by one (each `os.replace` is atomic), the marker file last. It never deletes a file it did not
write. A save killed before the staging was complete leaves a stale staging folder that the next `write_directory` or
`recover` of that target removes; one killed while moving files is rolled forward from its complete staging, so the
target always ends with the whole new set of files, never a mix of old and new.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

STAGING_PREFIX = ".e2llm-staging-"
_COMPLETE = ".complete"  # inside a staging folder: every file was written, the move may proceed


def cache_dir() -> Path:
    """The per-user cache: `$E2LLM_CACHE`, else `~/.cache/e2llm_plugin` (converted models, corpora, compressed text)."""
    return Path(os.environ.get("E2LLM_CACHE") or Path.home() / ".cache" / "e2llm_plugin").expanduser()


def private_directory(path: str | os.PathLike) -> Path:
    """Create `path` and any missing parents as 0700 folders (whatever the umask); folders that exist keep their modes,
    for they are the user's to set."""
    path = Path(path)
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for folder in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another process made it meanwhile: it keeps the mode it was given
            folder.mkdir(mode=0o700)
            os.chmod(folder, 0o700)  # mkdir's mode passes through the umask, which could remove the owner's own bits
    return path


def private_file(path: str | os.PathLike) -> bool:
    """Create `path` as an empty 0600 file (whatever the umask) if nothing is there; True if this call created it.
    A file that exists keeps its mode."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    try:
        os.fchmod(fd, 0o600)  # the umask may have taken the owner's bits: restore exactly 0600
    finally:
        os.close(fd)
    return True


@contextlib.contextmanager
def write_directory(target: str | os.PathLike, marker: str, mode: int = 0o644) -> Iterator[Path]:
    """Yield a staging folder to write files into; on success move them into `target`, `marker` last.

    Readers treat `target/marker` as "this directory is complete" (config.json for a checkpoint), so the old marker is
    removed before the other files are replaced and the new one is put in place after them: at no moment does a
    complete-looking directory hold a mix of old and new files. An exception inside the block leaves `target` as it was.
    """
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise FileExistsError(f"{target} exists and is not a directory; choose another path or move that file away")
    target.mkdir(parents=True, exist_ok=True)
    recover(target, marker)
    staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=target))
    try:
        yield staging
        for file in staging.iterdir():
            os.chmod(file, mode)  # mkstemp-style private files: a saved model is meant to be shared and packaged
        _fsync_dir(staging)
        (staging / _COMPLETE).touch()
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _roll_forward(staging, target, marker)


def recover(target: Path, marker: str) -> None:
    """Finish or discard what an interrupted `write_directory` left in `target`."""
    if not target.is_dir():
        return
    for staging in sorted(target.glob(STAGING_PREFIX + "*")):
        if (staging / _COMPLETE).exists():
            _roll_forward(staging, target, marker)
        elif not _writer_alive(staging):  # another live process may still be writing its own
            shutil.rmtree(staging, ignore_errors=True)


def _roll_forward(staging: Path, target: Path, marker: str) -> None:
    names = sorted(p.name for p in staging.iterdir() if p.name != _COMPLETE)
    if marker in names:
        with contextlib.suppress(FileNotFoundError):
            os.remove(target / marker)  # the old marker goes first: old and new files never look complete together
    for name in sorted(names, key=lambda n: n == marker):  # the marker last
        with contextlib.suppress(FileNotFoundError):  # another process recovering the same staging moved it first
            os.replace(staging / name, target / name)
    _fsync_dir(target)
    shutil.rmtree(staging, ignore_errors=True)


def _writer_alive(staging: Path) -> bool:
    try:
        pid = int(staging.name.removeprefix(STAGING_PREFIX).split("-", 1)[0])
    except ValueError:
        return False
    if pid == os.getpid():
        return False  # ours, from an interrupted call in this process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be opened
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
