"""Files on disk: atomic writes (temp file + fsync + rename + fsync of the folder), append-only
JSONL journals that survive a kill mid-line, and run-folder locks that detect stale owners."""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from .errors import UserError


_UMASK = os.umask(0)
os.umask(_UMASK)


def require_known_format(meta: dict, where: Path | str, current: int | None = None) -> None:
    """Refuse files written by a newer gblend (their `format_version` is above ours, `current`,
    default FORMAT_VERSION) rather than guess at a layout this version does not know."""
    from . import FORMAT_VERSION

    current = FORMAT_VERSION if current is None else current
    version = meta.get("format_version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise UserError(f"{where}: damaged (format_version {version!r} is not a number)")
    if version > current:
        raise UserError(f"{where}: written by a newer gblend (format {version} > {current}); upgrade gblend")


def finite_or_null(o):
    """NaN/Inf -> null, so JSON we write is valid for any reader."""
    import math

    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: finite_or_null(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [finite_or_null(v) for v in o]
    return o


# Fault injection for the tests of the README's "Guarantees" (tests/test_faults_disk.py, the fault
# campaign): GBLEND_TEST_ENOSPC="<name part>[@<n>]" makes the n-th (default: every) atomic write or
# journal append to a file whose name contains <name part> fail with ENOSPC after writing half its
# bytes, as a full disk does. Read once at import; unset (always, outside tests) it costs nothing.
_FAULTS_ON = bool(os.environ.get("GBLEND_TEST_ENOSPC"))
_FAULT_COUNTS: dict[str, int] = {}


def _injected_fault(path: Path) -> OSError | None:
    """The ENOSPC error this write to `path` meets under GBLEND_TEST_ENOSPC, or None."""
    part, _, nth = os.environ.get("GBLEND_TEST_ENOSPC", "").partition("@")
    if not part or part not in Path(path).name:
        return None
    _FAULT_COUNTS[part] = _FAULT_COUNTS.get(part, 0) + 1
    if nth and _FAULT_COUNTS[part] != int(nth):
        return None
    import errno

    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def _fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable: without it a power cut after os.replace can bring back
    the old file (or none). Filesystems that cannot fsync a directory are left as they are."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _atomic_write(path: Path, write: Callable[[io.BufferedWriter], None], sync_dir: bool = True) -> None:
    """temp file + fsync + rename (+ fsync of the folder with `sync_dir`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            fault = _injected_fault(path) if _FAULTS_ON else None
            if fault:
                f.flush()
                f.truncate(f.tell() // 2)  # the disk filled up half way
                raise fault
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if sync_dir:
        _fsync_dir(path.parent)


def stale_temps(*folders: Path, of: Iterable[str] | None = None) -> list[Path]:
    """Temp files of atomic writes (`.<name>.<random>.tmp`) in `folders` — only those of the files
    `of` names (names or glob patterns), where given: with no writer running, what a killed
    process left."""
    patterns = [".*.tmp"] if of is None else [f".{name}.*.tmp" for name in of]
    return [p for folder in folders for pattern in patterns for p in Path(folder).glob(pattern)]


def remove_stale_temps(*folders: Path, of: Iterable[str] | None = None) -> int:
    """`stale_temps` removed; call only while holding the folder's lock (no writer is using them).
    Returns how many."""
    n = 0
    for p in stale_temps(*folders, of=of):
        with contextlib.suppress(OSError):
            p.unlink()
            n += 1
    return n


LOCK_FILE = ".lock"  # folder_lock's file in the folder it locks


def write_bytes_atomic(path: Path, data: bytes, sync_dir: bool = True) -> None:
    """`sync_dir=False` for prepared clips: a rerun re-checks every clip file against its journal
    record (clip_files.files_whole), so one more fsync per file (hundreds of thousands on
    Kinetics) buys nothing there."""
    _atomic_write(path, lambda f: f.write(data), sync_dir)


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def save_npy_atomic(path: Path, array) -> None:
    import numpy as np

    _atomic_write(path, lambda f: np.save(f, array, allow_pickle=False))


def torch_save_atomic(path: Path, obj: Any) -> None:
    import torch

    _atomic_write(path, lambda f: torch.save(obj, f))


def save_figure_atomic(path: Path, fig, dpi: int = 120) -> None:
    """A matplotlib figure as PNG, written like every other output (temp + fsync + rename)."""
    _atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi))


def append_jsonl(path: Path, obj: dict) -> None:
    """Append one JSON line and fsync it. A line cut short by a kill is skipped by read_jsonl."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(obj, separators=(",", ":")) + "\n"
    fault = _injected_fault(path) if _FAULTS_ON else None
    if fault:
        line = line[: len(line) // 2]  # the disk filled up half way through the line
    new = not path.exists()
    if not new and path.stat().st_size:
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":  # a torn last line from a killed writer: start a fresh line
                line = "\n" + line
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())
    if new:  # the journal's name itself must survive a power cut
        _fsync_dir(path.parent)
    if fault:
        raise fault


def read_jsonl(path: Path, damaged: list[int] | None = None) -> list[dict]:
    """Every complete JSON object line of a journal; a torn last line (killed writer) is ignored.
    A whole line in the middle that is not a JSON object (a torn line a later append went on
    from, or damage) is skipped too, and its 1-based number appended to `damaged` when given:
    callers for which a lost row matters (run folders) refuse or repair rather than go on."""
    return list(iter_jsonl(path, damaged))


def iter_jsonl(path: Path, damaged: list[int] | None = None) -> Iterator[dict]:
    """`read_jsonl` one object at a time (a journal of 260k clips is never held in memory)."""
    path = Path(path)
    if not path.exists():
        return
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            if not line.endswith("\n"):
                break
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                row = None
            if isinstance(row, dict):
                yield row
            elif damaged is not None and line.strip():
                damaged.append(n)


def write_lines_atomic(path: Path, lines: Iterable[str]) -> None:
    """Write text produced line by line (e.g. an index of 260k clips) atomically, never holding
    it whole in memory."""
    def write(f):
        buf = []
        for line in lines:
            buf.append(line)
            if len(buf) >= 1024:
                f.write("".join(buf).encode("utf-8"))
                buf.clear()
        f.write("".join(buf).encode("utf-8"))

    _atomic_write(path, write)


class ScratchDB:
    """A throwaway SQLite file for per-clip bookkeeping that must not live in the process's memory:
    as Python objects a Kinetics-400 manifest, its media listing and its journal cost ~3 kB per clip
    (~0.8 GB for 260k clips); here the memory is SQLite's page cache, bounded by `cache_kib`
    whatever the number of clips. The file is created in `folder` (default: a new temporary
    folder) and removed by `close()`; it is never a result (no fsync, no rollback journal)."""

    def __init__(self, folder: Path | None = None, cache_kib: int = 1024):
        import sqlite3

        self._tmpdir = None if folder is not None else tempfile.mkdtemp(prefix="gblend-scratch-")
        folder = Path(folder or self._tmpdir)
        folder.mkdir(parents=True, exist_ok=True)
        fd, self.path = tempfile.mkstemp(prefix=".gblend-scratch-", suffix=".sqlite", dir=folder)
        os.close(fd)
        self.conn = sqlite3.connect(self.path)
        for pragma in ("journal_mode=OFF", "synchronous=OFF", f"cache_size=-{int(cache_kib)}", "temp_store=FILE",
                       "mmap_size=0"):
            self.conn.execute(f"PRAGMA {pragma}")

    def close(self) -> None:
        if self.conn is None:
            return
        self.conn.close()
        self.conn = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        if self._tmpdir:
            with contextlib.suppress(OSError):
                os.rmdir(self._tmpdir)

    def __enter__(self) -> "ScratchDB":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def rewrite_jsonl_atomic(path: Path, rows: list[dict]) -> None:
    write_text_atomic(path, "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in rows))


@contextlib.contextmanager
def folder_lock(folder: Path, what: str = "run", wait_s: float = 0.0) -> Iterator[None]:
    """Exclusive lock on an output folder: an flock on `<folder>/.lock`, which also records the
    owner's host and pid for the message. A second command on the same folder refuses (after
    waiting up to `wait_s` seconds for the first to finish: for writers that hold a folder only
    for a moment, such as the report's); the kernel drops the lock of a process that dies, so a
    stale `.lock` file is simply taken over. A folder this call created and left empty (the
    command failed before writing) is removed again."""
    import fcntl

    deadline = time.monotonic() + wait_s
    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK_FILE
    if not _flock_works(folder):  # a file system without flock (Lustre without -o flock, some NFS setups)
        remade = False
        try:
            with _exclusive_file_lock(folder, lock, what, deadline) as remade:
                yield
        finally:
            if created or remade:
                with contextlib.suppress(OSError):
                    folder.rmdir()
        return
    while True:
        fd = _open_lock(folder, lock, os.O_CREAT | os.O_RDWR)
        if fd is None:
            created = True
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                owner = json.loads(os.read(fd, 4096) or b"{}")
            except (OSError, json.JSONDecodeError):
                owner = {}
            os.close(fd)
            if time.monotonic() < deadline:
                time.sleep(0.1)
                continue
            raise UserError(f"{folder}: another gblend {what} (pid {owner.get('pid', '?')} on {owner.get('host', '?')}) "
                            f"is writing this folder ({lock}); wait for it to finish") from None
        try:  # the file may have been unlinked by its previous owner between our open and flock
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        owner = json.loads(os.read(fd, 4096) or b"{}")
    except (OSError, json.JSONDecodeError):
        owner = {}
    me = socket.gethostname()
    if owner.get("host") not in (None, me):  # its flock may not reach us (network filesystem): never steal
        os.close(fd)
        raise UserError(f"{folder}: locked by gblend pid {owner.get('pid', '?')} on host {owner['host']} ({lock}); "
                        f"remove {lock} if that process is gone")
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, json.dumps({"pid": os.getpid(), "host": me}).encode())
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()
        os.close(fd)
        if created:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only succeeds if nothing was written


def _open_lock(folder: Path, lock: Path, flags: int) -> int | None:
    """os.open of a folder's lock file; None where the folder had gone — the writer we waited for
    created it and, leaving it empty, removed it — and has been made again: open again."""
    try:
        return os.open(lock, flags, 0o644)
    except FileNotFoundError:
        if folder.exists():
            raise
        folder.mkdir(parents=True, exist_ok=True)
        return None


def _errnos(*names: str) -> frozenset:
    import errno

    return frozenset(getattr(errno, n) for n in names if hasattr(errno, n))


NO_FLOCK = _errnos("ENOLCK", "ENOSYS", "EOPNOTSUPP", "ENOTSUP", "EINVAL")


def _flock_works(folder: Path) -> bool:
    """Whether flock works in `folder` (probed on a scratch file, never on `.lock` itself)."""
    import fcntl

    fd, probe = tempfile.mkstemp(prefix=".lock-probe.", dir=folder)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as e:
        if e.errno in NO_FLOCK:
            return False
        raise
    finally:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(probe)


def _pid_alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError, TypeError):
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def _exclusive_file_lock(folder: Path, lock: Path, what: str, deadline: float = 0.0) -> Iterator[bool]:
    """The fallback where flock is not available: `.lock` created with O_EXCL (atomic on NFSv3+
    and Lustre), holding host and pid. Its owner is known alive only on the same host: a lock
    from a dead pid on this host is taken over, one from another host is never stolen (remove
    it by hand when that process is gone). A live owner on this host is waited for until
    `deadline` (time.monotonic()); a folder it removed meanwhile is made again. Yields whether it
    was (the caller then removes it again if it stays empty)."""
    me = socket.gethostname()
    takeovers, remade = 0, False
    while takeovers < 3:
        try:
            fd = _open_lock(folder, lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                owner = json.loads(lock.read_text() or "{}")
            except (OSError, json.JSONDecodeError, UnicodeDecodeError):
                owner = {}
            if not isinstance(owner, dict):
                owner = {}
            if not owner and time.monotonic() < deadline:  # its owner has not written its name yet
                time.sleep(0.1)
                continue
            if owner.get("host") == me and not _pid_alive(owner.get("pid")):
                # a stale lock of a dead process here: move it aside atomically, then retry
                with contextlib.suppress(FileNotFoundError):
                    os.replace(lock, lock.with_name(f".lock.stale.{os.getpid()}"))
                    os.unlink(lock.with_name(f".lock.stale.{os.getpid()}"))
                takeovers += 1
                continue
            if owner.get("host") == me and time.monotonic() < deadline:
                time.sleep(0.1)
                continue
            if owner.get("host") == me:
                raise UserError(f"{folder}: another gblend {what} (pid {owner.get('pid', '?')} on {me}) is writing this "
                                f"folder ({lock}); wait for it to finish") from None
            raise UserError(f"{folder}: locked by gblend pid {owner.get('pid', '?')} on host {owner.get('host', '?')} "
                            f"({lock}); remove {lock} if that process is gone") from None
        if fd is None:
            remade = True
            continue
        try:
            os.write(fd, json.dumps({"pid": os.getpid(), "host": me, "kind": "exclusive-file"}).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        break
    else:
        raise UserError(f"{folder}: could not take the lock {lock}; remove it if no gblend is running on this folder")
    try:
        yield remade
    finally:
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()
