"""Checksums that let a reader tell a whole file from a damaged one (a bit flip, a copy cut short):

- `state_checksum`: a CRC-32 over every tensor's bytes, dtype and shape and every plain value of
  a checkpoint's state; stored in the checkpoint itself ("checksum") and checked on loading.
- `file_digest` / `bytes_digest`: size and CRC-32 of a prepared clip file, recorded by
  prepare-data in progress.jsonl and index.csv ("checksums"), checked by `prepare-data --check`
  and by the data loader.

CRC-32 (zlib) is a damage check, not a security one: it catches flipped bits and cut copies at
a few GB/s."""

from __future__ import annotations

import zlib
from pathlib import Path


def _feed(crc: int, obj) -> int:
    import torch

    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        crc = zlib.crc32(f"T{t.dtype}{tuple(t.shape)}".encode(), crc)
        if t.numel():
            crc = zlib.crc32(t.reshape(-1).view(torch.uint8).numpy(), crc)
        return crc
    if isinstance(obj, dict):
        crc = zlib.crc32(b"{", crc)
        for k in sorted(obj, key=repr):
            crc = _feed(zlib.crc32(repr(k).encode(), crc), obj[k])
        return zlib.crc32(b"}", crc)
    if isinstance(obj, (list, tuple)):
        crc = zlib.crc32(b"[", crc)
        for v in obj:
            crc = _feed(crc, v)
        return zlib.crc32(b"]", crc)
    return zlib.crc32(repr(obj).encode(), crc)


def state_checksum(state: dict) -> str:
    """CRC-32 (8 hex digits) of a checkpoint's state, its "checksum" entry left out."""
    return f"{_feed(0, {k: v for k, v in state.items() if k != 'checksum'}) & 0xFFFFFFFF:08x}"


def bytes_digest(data: bytes) -> str:
    """"SIZE:CRC32" of a file's bytes."""
    return f"{len(data)}:{zlib.crc32(data) & 0xFFFFFFFF:08x}"


def file_digest(path: Path, chunk: int = 1 << 22) -> str:
    crc, size = 0, 0
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            crc, size = zlib.crc32(b, crc), size + len(b)
    return f"{size}:{crc & 0xFFFFFFFF:08x}"


def parse_checksums(field: str) -> dict[str, str]:
    """index.csv's "checksums" field "rgb=SIZE:CRC;audio=SIZE:CRC" -> {"rgb": "SIZE:CRC", ...}
    (empty for folders prepared before checksums); raises ValueError when malformed."""
    out = {}
    for part in filter(None, (field or "").split(";")):
        name, _, digest = part.partition("=")
        size, _, crc = digest.partition(":")
        if not name or not size.isdigit() or len(crc) != 8:
            raise ValueError(f"bad checksum entry {part!r}")
        int(crc, 16)
        out[name] = digest
    return out


def format_checksums(files: dict[str, str]) -> str:
    return ";".join(f"{k}={v}" for k, v in sorted(files.items()))


def digest_problem(path: Path, want: str, full: bool = True) -> str | None:
    """None when `path` has the recorded size (and CRC-32 with `full`), else what differs."""
    size = int(want.split(":")[0])
    try:
        found = path.stat().st_size
    except FileNotFoundError:
        return "file missing"
    if found != size:
        return f"{found:,} bytes, prepare-data wrote {size:,}"
    if full and file_digest(path) != want:
        return "checksum differs from the one prepare-data recorded (file damaged)"
    return None
