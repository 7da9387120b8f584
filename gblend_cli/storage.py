"""Files on disk: atomic writes (temp file + fsync + rename), append-only JSONL journals that
survive a kill mid-line, and run-folder locks that detect stale owners."""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from .errors import UserError


_UMASK = os.umask(0)
os.umask(_UMASK)


def _atomic_write(path: Path, write: Callable[[io.BufferedWriter], None]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_bytes_atomic(path: Path, data: bytes) -> None:
    _atomic_write(path, lambda f: f.write(data))


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


def append_jsonl(path: Path, obj: dict) -> None:
    """Append one JSON line and fsync it. A line cut short by a kill is skipped by read_jsonl."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(obj, separators=(",", ":")) + "\n"
    if path.exists() and path.stat().st_size:
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":  # a torn last line from a killed writer: start a fresh line
                line = "\n" + line
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: Path) -> list[dict]:
    """Every complete JSON object line of a journal; a torn last line (killed writer) is ignored."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.endswith("\n"):
                break
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def rewrite_jsonl_atomic(path: Path, rows: list[dict]) -> None:
    write_text_atomic(path, "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in rows))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def folder_lock(folder: Path, what: str = "run") -> Iterator[None]:
    """Exclusive lock on an output folder: `<folder>/.lock` holds the owner's host and pid.

    A second command on the same folder refuses with a clear message; a lock left by a dead
    process on this host is stale and is taken over."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / ".lock"
    me = {"pid": os.getpid(), "host": socket.gethostname()}
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                owner = json.loads(lock.read_text() or "{}")
            except (OSError, json.JSONDecodeError):
                owner = {}
            pid, host = owner.get("pid"), owner.get("host")
            stale = (host == me["host"] and isinstance(pid, int) and not _pid_alive(pid)) or not owner
            if stale:
                with contextlib.suppress(FileNotFoundError):
                    lock.unlink()
                continue
            raise UserError(
                f"{folder}: another gblend {what} (pid {pid} on {host}) is writing this folder; "
                f"wait for it or remove {lock} if that process is gone"
            )
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        break
    else:  # pragma: no cover - two racing takeovers
        raise UserError(f"{folder}: could not take the lock {lock}")
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()
