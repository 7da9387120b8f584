"""A prepared clip's files as prepare-data writes and re-checks them: where they are, writing one
(its "SIZE:CRC32" digest recorded in progress.jsonl and index.csv), and whether the files a journal
record lists are still whole (a rerun prepares again a clip whose file is missing or cut).

Kept free of numpy: prepare-data's main process reads journals with it."""

from __future__ import annotations

from pathlib import Path

from .integrity import bytes_digest
from .storage import write_bytes_atomic

PACKED_SUFFIX = ".gbp"  # store.SUFFIX (store.py imports numpy)


class OutputError(Exception):
    """Writing a prepared clip failed (disk full, read-only folder): the whole command stops, the
    clip is not recorded as failed (a rerun once the disk has room prepares it)."""


def write_output(path: Path, data: bytes) -> str:
    """Write one prepared file atomically; returns its digest."""
    try:
        write_bytes_atomic(path, data, sync_dir=False)  # a rerun re-checks it against the journal
    except OSError as e:
        raise OutputError(f"{e.filename or path}: {e.strerror or e}") from None
    return bytes_digest(data)


def clip_files(out: Path, clip: str, names) -> dict[str, Path]:
    """Where a prepared clip's files are: {"clip": DIR/clips/<clip>.gbp} or {"rgb": DIR/rgb/<clip>.npy, ...}."""
    return {n: out / "clips" / f"{clip}{PACKED_SUFFIX}" if n == "clip" else out / n / f"{clip}.npy" for n in names}


def files_whole(out: Path, rec: dict) -> bool:
    """The clip's files have the sizes prepare-data recorded (records without sizes: True)."""
    files = rec.get("files")
    if not isinstance(files, dict):
        return True
    for name, path in clip_files(out, rec["clip"], files).items():
        try:
            if path.stat().st_size != int(str(files[name]).split(":")[0]):
                return False
        except (OSError, ValueError):
            return False
    return True
