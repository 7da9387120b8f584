"""The compact prepared store ("packed"): one file per clip holding its RGB frames as JPEG, its
quantised flow frames as JPEG and its log-mel rows raw, with a frame-offset index, so a training
window is two `pread`s (the head, then the window's bytes) and 32 small JPEG decodes.

Chosen by measurement over raw arrays and re-encoded H.264 (benchmarks/store.py,
docs/PERFORMANCE.md "Prepared store"): ~1/10 of the bytes of the raw uint8 arrays, and one loader
core decodes more than 100 training clips/s (16x112x112 RGB + flow + log-mel) from the page cache.

File layout (little-endian):
    8 bytes   MAGIC
    u32       length of the JSON header
    JSON      {"version", "frames" T, "height" H, "width" W, "rgb": "jpeg", "flow": "jpeg" | null,
               "mel_rows" A, "mels" 40, "rgb_quality", "flow_quality"}
    u64[T+1]  absolute offsets of the RGB frames (frame t is bytes [o[t], o[t+1]))
    u64[T+1]  same for the flow frames (absent when "flow" is null)
    u64       offset of the log-mel rows
    payload   RGB JPEGs, flow JPEGs, A x 40 float16 log-mel rows

RGB frames are JPEG (4:2:0, quality 90 by default). Flow follows the mmaction2 convention: each
displacement component clipped to +-`prepare.flow_bound` px (20 by default) and quantised to uint8 (media.quantise_flow), the two
components side by side in one greyscale JPEG (H x 2W, quality 95): JPEG error on smooth flow
fields is a fraction of a quantisation step (the benchmark reports it in px).
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MAGIC = b"GBLPACK1"
SUFFIX = ".gbp"
VERSION = 1
HEAD_READ = 8192  # one read covers the head of a clip of up to ~480 frames with flow
RGB_QUALITY = 90
FLOW_QUALITY = 95
MELS = 40


class StoreError(Exception):
    """A packed clip file that is not whole (cut short, not ours); the message names the problem."""


def _jpeg(img: np.ndarray, quality: int) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:  # pragma: no cover - OpenCV encodes any uint8 image
        raise StoreError("JPEG encoding failed")
    return buf.tobytes()


def encode_clip(rgb: np.ndarray, flow: np.ndarray | None, mel: np.ndarray, *, rgb_quality: int = RGB_QUALITY,
                flow_quality: int = FLOW_QUALITY) -> bytes:
    """(T, H, W, 3) uint8 RGB, (T, H, W, 2) uint8 quantised flow or None, (A, 40) log-mel -> the file."""
    t, h, w = rgb.shape[:3]
    rgb_parts = [_jpeg(np.ascontiguousarray(f[..., ::-1]), rgb_quality) for f in rgb]  # OpenCV encodes BGR
    flow_parts = ([_jpeg(np.concatenate([f[..., 0], f[..., 1]], axis=1), flow_quality) for f in flow]
                  if flow is not None else [])
    mel_bytes = np.ascontiguousarray(mel, dtype="<f2").tobytes()
    header = json.dumps({"version": VERSION, "frames": int(t), "height": int(h), "width": int(w), "rgb": "jpeg",
                         "flow": "jpeg" if flow is not None else None, "mel_rows": int(len(mel)), "mels": MELS,
                         "rgb_quality": int(rgb_quality), "flow_quality": int(flow_quality) if flow is not None else None},
                        separators=(",", ":")).encode()
    n_offsets = (t + 1) * (2 if flow is not None else 1) + 1
    pos = len(MAGIC) + 4 + len(header) + 8 * n_offsets
    offsets = []
    for parts in ([rgb_parts, flow_parts] if flow is not None else [rgb_parts]):
        offsets.append(pos)
        for p in parts:
            pos += len(p)
            offsets.append(pos)
    offsets.append(pos)  # log-mel
    return b"".join([MAGIC, struct.pack("<I", len(header)), header, struct.pack(f"<{len(offsets)}Q", *offsets),
                     *rgb_parts, *flow_parts, mel_bytes])


def write_clip(path: Path, rgb: np.ndarray, flow: np.ndarray | None, mel: np.ndarray, **quality) -> int:
    """Encode and write one clip atomically (temp file + fsync + rename); returns its size."""
    from .storage import write_bytes_atomic

    data = encode_clip(rgb, flow, mel, **quality)
    write_bytes_atomic(path, data, sync_dir=False)  # as prepare-data writes a clip (clip_files.write_output)
    return len(data)


@dataclass(frozen=True)
class Head:
    frames: int
    height: int
    width: int
    rgb: np.ndarray           # (T+1,) uint64 offsets
    flow: np.ndarray | None   # (T+1,) uint64 offsets, None without flow
    mel_offset: int
    mel_rows: int
    meta: dict

    @property
    def end(self) -> int:
        """Where the file must end."""
        return self.mel_offset + self.mel_rows * MELS * 2

    def bytes_of(self) -> dict[str, int]:
        sizes = {"rgb": int(self.rgb[-1] - self.rgb[0]), "audio": self.mel_rows * MELS * 2}
        if self.flow is not None:
            sizes["flow"] = int(self.flow[-1] - self.flow[0])
        return sizes


def parse_head(buf: bytes, read_more=None) -> Head:
    """The head of a packed clip from its first bytes (`read_more(n)` returns the first n bytes
    when the head is longer than `buf`)."""
    if len(buf) < 12 or buf[:8] != MAGIC:
        raise StoreError("not a packed gblend clip (bad magic)" if len(buf) >= 8 else "file cut short (no head)")
    (n,) = struct.unpack_from("<I", buf, 8)
    if len(buf) < 12 + n and read_more is not None:
        buf = read_more(12 + n)
    try:
        meta = json.loads(buf[12:12 + n])
    except (ValueError, UnicodeDecodeError):
        raise StoreError("file cut short or damaged (head)") from None
    if meta.get("version", 0) > VERSION:
        raise StoreError(f"packed clip version {meta['version']} is newer than this gblend's ({VERSION}); upgrade gblend")
    t = int(meta["frames"])
    n_off = (t + 1) * (2 if meta.get("flow") else 1) + 1
    need = 12 + n + 8 * n_off
    if len(buf) < need:
        if read_more is None:
            raise StoreError("file cut short (offsets)")
        buf = read_more(need)
        if len(buf) < need:
            raise StoreError("file cut short (offsets)")
    off = np.frombuffer(buf, dtype="<u8", count=n_off, offset=12 + n)
    rgb = off[:t + 1]
    flow = off[t + 1:2 * (t + 1)] if meta.get("flow") else None
    return Head(t, int(meta["height"]), int(meta["width"]), rgb, flow, int(off[-1]), int(meta["mel_rows"]), meta)


def read_head(fd: int) -> Head:
    return parse_head(os.pread(fd, HEAD_READ, 0), lambda n: os.pread(fd, n, 0))


def _decode(data: bytes, grey: bool) -> np.ndarray:
    import cv2

    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE if grey else cv2.IMREAD_COLOR)
    if img is None:
        raise StoreError("a JPEG frame does not decode (file damaged)")
    return img


def _frames(fd: int, offsets: np.ndarray, lo: int, hi: int) -> list[bytes]:
    """The encoded frames lo..hi-1 with one pread."""
    start, end = int(offsets[lo]), int(offsets[hi])
    buf = os.pread(fd, end - start, start)
    if len(buf) != end - start:
        raise StoreError("file cut short (frames)")
    rel = offsets[lo:hi + 1] - start
    return [buf[int(a):int(b)] for a, b in zip(rel[:-1], rel[1:])]


def read_rows(fd: int, head: Head, modality: str, lo: int, hi: int) -> np.ndarray:
    """Rows [lo, hi) of a modality, like array[lo:hi] of the raw store: (n, H, W, 3) uint8 RGB,
    (n, H, W, 2) uint8 quantised flow, (n, 40) float16 log-mel."""
    if modality == "audio":
        lo, hi = max(0, lo), min(head.mel_rows, hi)
        n = max(0, hi - lo)
        buf = os.pread(fd, n * MELS * 2, head.mel_offset + lo * MELS * 2)
        if len(buf) != n * MELS * 2:
            raise StoreError("file cut short (log-mel)")
        return np.frombuffer(buf, dtype="<f2").reshape(n, MELS)
    lo, hi = max(0, lo), min(head.frames, hi)
    if modality == "rgb":
        frames = [_decode(b, grey=False) for b in _frames(fd, head.rgb, lo, hi)]
        return np.stack(frames)[..., ::-1] if frames else np.zeros((0, head.height, head.width, 3), np.uint8)
    if modality == "flow" and head.flow is not None:
        w = head.width
        out = np.empty((hi - lo, head.height, w, 2), np.uint8)
        for k, b in enumerate(_frames(fd, head.flow, lo, hi)):
            g = _decode(b, grey=True)
            out[k, ..., 0], out[k, ..., 1] = g[:, :w], g[:, w:]
        return out
    raise StoreError(f"no {modality} in this clip")


def length(head: Head, modality: str) -> int:
    return head.mel_rows if modality == "audio" else head.frames


class Reader:
    """Window reads of one packed folder's clips; remembers the heads of the last few clips (a
    training item reads RGB, flow and audio of one clip in a row)."""

    def __init__(self, folder: Path, keep: int = 64):
        self.folder = Path(folder)
        self.keep = keep
        self._heads: dict[str, Head] = {}

    def path(self, clip: str) -> Path:
        return self.folder / "clips" / f"{clip}{SUFFIX}"

    def head(self, clip: str) -> Head:
        h = self._heads.get(clip)
        if h is None:
            fd = os.open(self.path(clip), os.O_RDONLY)
            try:
                h = read_head(fd)
            finally:
                os.close(fd)
            if len(self._heads) >= self.keep:
                self._heads.pop(next(iter(self._heads)))
            self._heads[clip] = h
        return h

    def rows(self, clip: str, modality: str, lo: int, hi: int) -> np.ndarray:
        head = self.head(clip)
        fd = os.open(self.path(clip), os.O_RDONLY)
        try:
            return read_rows(fd, head, modality, lo, hi)
        finally:
            os.close(fd)

    def length(self, clip: str, modality: str) -> int:
        return length(self.head(clip), modality)


def check_file(path: Path, frames: int | None = None, modalities=("audio", "rgb", "flow")) -> str | None:
    """None if `path` is a whole packed clip (head, offsets, size; its first and last frames
    decode), else what is wrong (`prepare-data --check`)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return "file missing"
    except OSError as e:
        return f"cannot open ({e.strerror})"
    try:
        head = read_head(fd)
        size = os.fstat(fd).st_size
        if size < head.end:
            return f"{size:,} bytes, the clip's index needs {head.end:,} (cut short)"
        if frames is not None and head.frames != frames:
            return f"{head.frames} frames, index.csv says {frames}"
        for m in modalities:
            if m == "audio":
                continue
            if m == "flow" and head.flow is None:
                return "no flow frames"
            offsets = head.rgb if m == "rgb" else head.flow
            if np.any(np.diff(offsets.astype(np.int64)) <= 0):
                return f"{m} frame offsets are not increasing (damaged)"
            if head.frames:
                read_rows(fd, head, m, 0, 1)
                read_rows(fd, head, m, head.frames - 1, head.frames)
        return None
    except StoreError as e:
        return str(e)
    finally:
        os.close(fd)


def load_clip(folder: Path, clip: str) -> dict[str, np.ndarray]:
    """Every modality of a prepared clip as whole arrays, whichever the store (tests, tools)."""
    folder = Path(folder)
    meta = json.loads((folder / "dataset.json").read_text())
    if meta.get("store", "npy") == "npy":
        return {m: np.load(folder / m / f"{clip}.npy") for m in meta["modalities"]}
    reader = Reader(folder)
    return {m: np.ascontiguousarray(reader.rows(clip, m, 0, reader.length(clip, m))) for m in meta["modalities"]}
