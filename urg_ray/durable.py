"""Files that survive a crash: atomic replacement, an append-only journal, and a run lock.

- `atomic_write(path)`: write beside `path` under a unique temp name, fsync, rename over `path`,
  fsync the directory. Readers see the old file or the new one, never a mix; a failure (a full
  disk included) leaves the old file as it was and no temp file behind.
- `replace_folder(source, target)`: the same for a whole folder (a model export): copied beside
  `target`, fsynced, renamed in.
- `Journal`: a write-ahead log of JSON lines (lines end at ``\\n`` only). Reading it back goes
  over bytes: a damaged line (bad UTF-8, bad JSON) is reported and skipped, and a torn last line
  (a write a crash cut short) is cut off before anything new is appended after it.
- `exclusive_lock(path)`: `fcntl.flock` on ``<path>.lock``; a second run on the same `path` is
  refused with `Locked` naming the holder's pid. The lock file stays (removing it would race).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import secrets
import shutil
from pathlib import Path
from typing import IO, Any, Iterator

log = logging.getLogger(__name__)


class Locked(RuntimeError):
    """Another process holds the lock of the file this run would write."""


def fsync_dir(directory: str | os.PathLike) -> None:
    """Make a rename, create or unlink inside `directory` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, binary: bool = False) -> Iterator[IO]:
    """A file object whose content replaces `path` when the block ends without an exception.

    The temp file is ``.<name>.<pid>.<random>.tmp`` beside `path` (same file system, so the rename
    is atomic; unique, so two writers never share it); it is created with the usual umask.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with open(fd, "wb") if binary else open(fd, "w", encoding="utf-8", newline="") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def replace_folder(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Copy `source` to `target`, replacing it: copied beside it and fsynced, then renamed in.
    A crash leaves the previous folder (at worst as ``.<name>.<pid>.old`` beside it), never a
    half-copied one under `target`."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    new, old = (target.with_name(f".{target.name}.{os.getpid()}.{suffix}") for suffix in ("new", "old"))
    for leftover in (new, old):
        shutil.rmtree(leftover, ignore_errors=True)
    try:
        shutil.copytree(source, new)
        for path in new.rglob("*"):
            if path.is_file():
                with path.open("rb") as f:
                    os.fsync(f.fileno())
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        raise
    if target.exists():
        os.replace(target, old)
    os.replace(new, target)
    fsync_dir(target.parent)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike) -> Iterator[Path]:
    """Hold ``<path>.lock`` for the block; `Locked` at once if another process holds it."""
    path = Path(path)
    lock = path.with_name(path.name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            raise Locked(f"{path} is being written by another run (pid {holder}, lock {lock}); "
                         "wait for it to finish, or write to another output") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield lock
    finally:
        os.close(fd)  # releases the lock


class Journal:
    """An append-only log of JSON values, one per ``\\n``-terminated UTF-8 line.

    `append` buffers, `sync` flushes and fsyncs (call it after each batch of entries); an entry
    counts once its line, newline included, is on disk.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._file: IO[bytes] | None = None

    def read(self, problems: list[str], repair: bool = False) -> Iterator[tuple[int, Any]]:
        """(line, value) of each intact entry; a ``file:line: problem`` in `problems` for each damaged one.

        A last line without its newline is torn: reported, and with `repair` truncated away, so
        that the next append starts on a line of its own.
        """
        if not self.path.is_file():
            return
        line_no, good_end = 0, 0
        with self.path.open("rb") as f:
            for line_no, raw in enumerate(f, start=1):
                if not raw.endswith(b"\n"):
                    problems.append(f"{self.path}:{line_no}: torn last line ({len(raw)} bytes, no newline): "
                                    "a write cut short; its entry is dropped")
                    break
                good_end += len(raw)
                if not raw.strip():
                    continue
                try:
                    value = json.loads(raw.decode("utf-8"))
                except UnicodeDecodeError as err:
                    problems.append(f"{self.path}:{line_no}: not UTF-8 ({err.reason} at byte {err.start + 1})")
                    continue
                except ValueError as err:
                    problems.append(f"{self.path}:{line_no}: invalid JSON: {err}")
                    continue
                yield line_no, value
        if repair and good_end < self.path.stat().st_size:
            with self.path.open("r+b") as f:
                f.truncate(good_end)
                os.fsync(f.fileno())
            log.warning("%s: torn last line truncated at byte %d", self.path, good_end)

    def append(self, value: Any) -> None:
        if self._file is None:
            created = not self.path.exists()
            self._file = open(os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666), "wb")
            if created:
                fsync_dir(self.path.parent)
        self._file.write(json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8") + b"\n")

    def sync(self) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def remove(self) -> None:
        """Delete the journal (call only once what it recorded is durable elsewhere)."""
        self.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
            fsync_dir(self.path.parent)

    def __enter__(self) -> "Journal":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
