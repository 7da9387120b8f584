"""Tiny but real media files for tests, written with PyAV only (no ffmpeg binary needed).

Every writer produces a file of a few kB in well under 0.2 s. The default picture is a bright
square moving right at constant speed over a dark background, so tests can check frame content,
frame timing (where the square is at time t: :func:`square_x`) and flow direction; the default
sound is a sine at ``tone_hz``.

    write_video(path, seconds=1.0, fps=8, size=(32, 32), ...)   -> Path (mp4/webm/mkv/mov/avi; a late
                                                                   start_s, holes in the audio: audio_gaps)
    write_audio_only(path, seconds=1.0, rate=16000, ...)          -> Path (m4a/wav/ogg/opus/mp3/flac/mka)
    write_bytes(path, data)                                       -> Path (anything: empty, text, junk)
    truncate_copy(src, dst, fraction)                             -> Path (first `fraction` of the bytes)
    corrupt_copy(src, dst, start_fraction=0.3, length=256)        -> Path (random bytes mid-file)
    moving_square_frames(n, size, speed_px)                       -> (n, H, W, 3) uint8 in memory
    square_x(t, size, seconds), square_side(size), square_y(size) -> where the square is at time t
    sine(seconds, rate, tone_hz), probe(path)                     -> the sound written; stream summary

Encoder facts checked with PyAV 18 / FFmpeg 8: libopus takes 48/24/16/12/8 kHz and 960-sample
(20 ms at 48 kHz) frames, aac 1024-sample fltp frames, the native vorbis encoder needs
``strict=experimental`` and encodes stereo only, flac wants s16/s32, yuv420p needs even
width and height. Files are deterministic (libx264 threads=1).
"""

from __future__ import annotations

import math
import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

BACKGROUND = 24  # grey level of the background
SQUARE = 235  # grey level of the moving square

VIDEO_CODEC_FOR = {".mp4": "libx264", ".mov": "libx264", ".m4v": "libx264", ".mkv": "libx264",
                   ".webm": "libvpx-vp9", ".avi": "mpeg4", ".flv": "libx264"}
AUDIO_CODEC_FOR = {".mp4": "aac", ".mov": "aac", ".m4v": "aac", ".m4a": "aac", ".mkv": "vorbis",
                   ".mka": "vorbis", ".webm": "libopus", ".ogg": "vorbis", ".opus": "libopus",
                   ".avi": "libmp3lame", ".mp3": "libmp3lame", ".flac": "flac", ".wav": "pcm_s16le",
                   ".flv": "aac"}
FORMAT_FOR = {".m4a": "mp4", ".m4v": "mp4", ".mka": "matroska", ".mkv": "matroska", ".opus": "ogg"}
_RATES = {"libopus": (48000, 24000, 16000, 12000, 8000), "opus": (48000, 24000, 16000, 12000, 8000)}


def square_side(size: tuple[int, int]) -> int:
    """Side (px) of the moving square in a frame of `size` = (width, height)."""
    w, h = size
    return max(2, min(w, h) // 4)


def square_speed(size: tuple[int, int], seconds: float) -> float:
    """Default speed (px/s): the square crosses the frame once over the clip."""
    return (size[0] - square_side(size)) / max(seconds, 1e-9)


def square_x(t: float, size: tuple[int, int], seconds: float, speed: float | None = None) -> int:
    """Left edge (px) of the square at time `t` s (the centre is square_x + side / 2)."""
    v = square_speed(size, seconds) if speed is None else speed
    return int(math.floor(v * t + 1e-9))


def square_y(size: tuple[int, int]) -> int:
    """Top edge (px) of the square (vertically centred, constant)."""
    return (size[1] - square_side(size)) // 2


def draw_square_frame(size: tuple[int, int], x: int, y: int | None = None) -> np.ndarray:
    """(H, W, 3) uint8: background with the bright square's top-left corner at (x, y)."""
    w, h = size
    s = square_side(size)
    y = square_y(size) if y is None else y
    img = np.full((h, w, 3), BACKGROUND, dtype=np.uint8)
    img[max(0, y):max(0, y + s), max(0, x):max(0, x + s)] = SQUARE
    img[..., 0] = np.where(img[..., 0] == SQUARE, 250, img[..., 0])  # a little colour: red-ish square
    return img


def textured_square_frame(size: tuple[int, int], x: int, rng_seed: int = 0) -> np.ndarray:
    """Like draw_square_frame but the square carries a fixed random texture (better for flow)."""
    w, h = size
    s = square_side(size)
    y = square_y(size)
    img = np.full((h, w, 3), BACKGROUND, dtype=np.uint8)
    tex = np.random.default_rng(rng_seed).integers(120, 256, size=(s, s, 1), dtype=np.uint8)
    x0, x1 = max(0, x), min(w, x + s)
    if x1 > x0:
        img[y:y + s, x0:x1] = tex[:, x0 - x:x1 - x]
    return img


def moving_square_frames(n: int, size: tuple[int, int] = (32, 32), speed_px: float = 2.0,
                         x0: int = 2, textured: bool = True) -> np.ndarray:
    """(n, H, W, 3) uint8 frames, the square moving right by `speed_px` per frame."""
    make = textured_square_frame if textured else draw_square_frame
    return np.stack([make(size, int(round(x0 + speed_px * i))) for i in range(n)])


def tone_at(t, tone_hz) -> np.ndarray:
    """Frequency (Hz) at times `t` of a tone given as one float or one frequency per second."""
    t = np.asarray(t, dtype=np.float64)
    if np.ndim(tone_hz) == 0:
        return np.full_like(t, float(tone_hz))
    steps = np.asarray(tone_hz, dtype=np.float64)
    return steps[np.clip(np.floor(t + 1e-9).astype(int), 0, len(steps) - 1)]


def sine(seconds: float, rate: int, tone_hz=440.0, channels: int = 1, amplitude: float = 0.5) -> np.ndarray:
    """(channels, samples) float32 sine; every channel carries the same tone. `tone_hz` is one
    frequency, or a sequence of frequencies, one per second (phase-continuous steps)."""
    n = int(round(seconds * rate))
    t = np.arange(n, dtype=np.float64) / rate
    phase = 2 * np.pi * np.cumsum(tone_at(t, tone_hz)) / rate
    phase = np.concatenate([[0.0], phase[:-1]])  # phase(0) = 0: a plain sine for a constant tone
    wave = (amplitude * np.sin(phase)).astype(np.float32)
    return np.repeat(wave[None, :], channels, axis=0)


def default_audio_codec(suffix: str, channels: int) -> str:
    """The audio codec a file of this suffix gets by default. FFmpeg's own vorbis encoder only
    encodes stereo, so mono mkv gets aac and mono ogg gets opus."""
    codec = AUDIO_CODEC_FOR.get(suffix.lower(), "aac")
    if codec == "vorbis" and channels != 2:
        codec = "libopus" if suffix.lower() == ".ogg" else "aac"
    return codec


def _layout(channels: int) -> str:
    return {1: "mono", 2: "stereo"}.get(channels, f"{channels}c")


def _pick_format(codec_name: str, planar_ok: bool = True) -> str:
    formats = [f.name for f in (av.codec.Codec(codec_name, "w").audio_formats or [])]
    for f in ("fltp", "flt", "s16", "s16p", "s32", "s32p"):
        if f in formats and (planar_ok or not f.endswith("p")):
            return f
    return formats[0] if formats else "flt"


def _to_format(pcm: np.ndarray, fmt: str) -> np.ndarray:
    """(channels, n) float32 -> the ndarray layout AudioFrame.from_ndarray wants for `fmt`."""
    planar = fmt.endswith("p")
    base = fmt.rstrip("p")
    if base == "s16":
        data = np.clip(np.round(pcm * 32767), -32768, 32767).astype(np.int16)
    elif base == "s32":
        data = np.clip(np.round(pcm.astype(np.float64) * 2147483647), -2**31, 2**31 - 1).astype(np.int32)
    elif base == "dbl":
        data = pcm.astype(np.float64)
    else:
        data = pcm.astype(np.float32)
    if planar:
        return np.ascontiguousarray(data)
    return np.ascontiguousarray(data.T.reshape(1, -1))  # packed: (1, n * channels), interleaved


def _add_audio_stream(out, codec: str, rate: int, channels: int):
    if codec in _RATES and rate not in _RATES[codec]:
        raise ValueError(f"{codec} cannot encode {rate} Hz (use one of {_RATES[codec]})")
    if codec == "vorbis" and channels != 2:
        raise ValueError("FFmpeg's vorbis encoder only encodes stereo (audio_channels=2)")
    stream = out.add_stream(codec, rate=rate, layout=_layout(channels))
    fmt = _pick_format(codec)
    stream.format = fmt
    if codec in ("vorbis", "opus"):
        stream.codec_context.options = {"strict": "experimental"}
    if codec in ("aac", "libopus", "libmp3lame", "vorbis"):
        stream.bit_rate = 48000 if channels == 1 else 96000
    return stream, fmt


def _encode_audio(out, stream, fmt: str, pcm: np.ndarray, rate: int, start_s: float = 0.0,
                  gaps: tuple = ()) -> None:
    """`pcm` from time `start_s` on, frame by frame at its own pts; frames that begin inside one of
    the `gaps` ((from_s, to_s) on the file's timeline) are left out (no packets: a hole)."""
    channels = pcm.shape[0]
    frame_size = stream.codec_context.frame_size or 1024
    offset = int(round(start_s * rate))
    for i in range(0, pcm.shape[1], frame_size):
        if any(a <= start_s + i / rate < b for a, b in gaps):
            continue
        chunk = pcm[:, i:i + frame_size]
        if chunk.shape[1] < frame_size and stream.codec_context.frame_size and \
                stream.codec.name in ("libopus", "opus"):
            chunk = np.pad(chunk, ((0, 0), (0, frame_size - chunk.shape[1])))  # opus wants full frames
        frame = av.AudioFrame.from_ndarray(_to_format(chunk, fmt), format=fmt, layout=_layout(channels))
        frame.sample_rate = rate
        frame.pts = offset + i
        frame.time_base = Fraction(1, rate)
        for pkt in stream.encode(frame):
            out.mux(pkt)
    for pkt in stream.encode(None):
        out.mux(pkt)


def _container_format(path: Path, container: str | None) -> str | None:
    if container:
        return container
    return FORMAT_FOR.get(path.suffix.lower())


def _frame_image(pattern: str, size: tuple[int, int], t: float, seconds: float,
                 rng: np.random.Generator) -> np.ndarray:
    w, h = size
    if pattern == "moving_square":
        return draw_square_frame(size, square_x(t, size, seconds))
    if pattern == "noise":
        return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    if pattern == "still":
        return draw_square_frame(size, 0)
    raise ValueError(f"unknown pattern {pattern!r}")


def write_video(path, *, seconds: float = 1.0, fps: float = 8, size: tuple[int, int] = (32, 32),
                codec: str | None = None, container: str | None = None, pix_fmt: str = "yuv420p",
                audio_rate: int | None = 16000, audio_channels: int = 1, audio_codec: str | None = None,
                pattern: str = "moving_square", tone_hz=440.0, rotation: int = 0,
                amplitude: float = 0.5, seed: int = 0, start_s: float = 0.0, audio_gaps: tuple = ()) -> Path:
    """Write a real video file and return its path.

    codec None -> by suffix (libx264 for mp4/mkv/mov, libvpx-vp9 for webm, mpeg4 for avi);
    container None -> by suffix; audio_rate None -> no audio stream; audio_codec None -> by
    suffix (aac for mp4, libopus for webm, vorbis (stereo) or aac (mono) for mkv, libmp3lame
    for avi). The picture:
    `pattern` "moving_square" (square_x(t) gives its left edge at time t), "noise" or "still";
    the sound: a sine at `tone_hz` in every channel (a sequence: one frequency per second).
    `rotation` (degrees, counter-clockwise as PyAV's VideoFrame.rotation reads it back) is stored
    as the stream's display matrix (what phones write).
    `start_s`: the first video frame and audio sample are stamped at this time, not 0 (a file
    whose timeline starts late; content time t is at file time start_s + t). `audio_gaps`:
    ((from_s, to_s), ...) on the file's timeline where no audio frames are written (holes in the
    audio stream; the audio after a hole keeps its own timestamps)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    codec = codec or VIDEO_CODEC_FOR.get(suffix, "libx264")
    w, h = size
    n_frames = max(1, int(round(seconds * fps)))
    rng = np.random.default_rng(seed)
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), "w", format=_container_format(path, container)) as out:
        vs = out.add_stream(codec, rate=rate)
        vs.width, vs.height, vs.pix_fmt = w, h, pix_fmt
        opts = {"threads": "1"}
        if codec == "libx264":
            opts |= {"crf": "14", "preset": "ultrafast"}
        elif codec == "libx265":
            opts |= {"crf": "20", "preset": "ultrafast", "x265-params": "log-level=none"}
        elif codec == "libvpx-vp9":
            opts |= {"crf": "20", "b": "0", "deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
        elif codec in ("mpeg4", "mjpeg"):
            opts |= {"q": "2"}
            vs.codec_context.qmin = 1
        vs.options = opts
        if rotation:
            vs.set_display_rotation(rotation)
        astream = fmt = None
        if audio_rate:
            acodec = audio_codec or default_audio_codec(suffix, audio_channels)
            astream, fmt = _add_audio_stream(out, acodec, audio_rate, audio_channels)
        for i in range(n_frames):
            img = _frame_image(pattern, size, i / fps, seconds, rng)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            if start_s:
                frame.pts, frame.time_base = int(round(start_s * rate)) + i, 1 / rate
            for pkt in vs.encode(frame):
                out.mux(pkt)
        for pkt in vs.encode(None):
            out.mux(pkt)
        if astream is not None:
            _encode_audio(out, astream, fmt, sine(seconds, audio_rate, tone_hz, audio_channels, amplitude),
                          audio_rate, start_s, tuple(audio_gaps))
    return path


def write_audio_only(path, *, seconds: float = 1.0, rate: int = 16000, channels: int = 1,
                     codec: str | None = None, container: str | None = None, tone_hz=440.0,
                     amplitude: float = 0.5) -> Path:
    """A file with one audio stream and no video (m4a/aac, wav/pcm, ogg/vorbis, opus, mp3, flac)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    codec = codec or default_audio_codec(path.suffix, channels)
    with av.open(str(path), "w", format=_container_format(path, container)) as out:
        stream, fmt = _add_audio_stream(out, codec, rate, channels)
        _encode_audio(out, stream, fmt, sine(seconds, rate, tone_hz, channels, amplitude), rate)
    return path


def write_bytes(path, data: bytes | str = b"") -> Path:
    """Any bytes under any name (an empty file, a text file named .mp4, ...)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return path


def truncate_copy(src, dst, fraction: float) -> Path:
    """Copy of the first `fraction` (0..1) of `src`'s bytes (a download cut short)."""
    data = Path(src).read_bytes()
    return write_bytes(dst, data[: int(len(data) * fraction)])


def corrupt_copy(src, dst, *, start_fraction: float = 0.3, length: int = 256, seed: int = 0) -> Path:
    """Copy of `src` with `length` random bytes overwritten from `start_fraction` on."""
    data = bytearray(Path(src).read_bytes())
    at = int(len(data) * start_fraction)
    junk = np.random.default_rng(seed).integers(0, 256, size=min(length, len(data) - at), dtype=np.uint8)
    data[at:at + len(junk)] = junk.tobytes()
    return write_bytes(dst, bytes(data))


def probe(path) -> dict:
    """Stream summary of a media file: {"video": [codec names], "audio": [...], "duration": s}."""
    with av.open(str(path)) as c:
        return {"video": [s.codec_context.name for s in c.streams.video],
                "audio": [s.codec_context.name for s in c.streams.audio],
                "audio_rates": [s.codec_context.sample_rate for s in c.streams.audio],
                "audio_channels": [s.codec_context.channels for s in c.streams.audio],
                "duration": (c.duration or 0) / av.time_base,
                "size": os.path.getsize(path)}
