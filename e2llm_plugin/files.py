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
