"""Media decoding and the three input modalities.

- RGB: PyAV decode, resampled to a fixed fps (nearest earlier frame), short side resized, display
  rotation applied.
- Audio: any rate/channels -> 16 kHz mono, placed on the video's timeline; log-mel as in the
  paper's official code: 16 ms Hann window, 10 ms hop (100 frames/s), 40 HTK mel bands.
- Optical flow: OpenCV DIS (fast) or TV-L1 (paper-faithful) between consecutive frames, clipped
  to [-B, B] px and quantised to uint8 (the action-recognition convention, B = 20 at full
  resolution; `prepare.flow_bound` sets B).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import av
import numpy as np

SAMPLE_RATE = 16000
MEL_BANDS = 40
WIN_LENGTH = 256  # 16 ms at 16 kHz
HOP_LENGTH = 160  # 10 ms -> 100 frames per second
N_FFT = 512
LOG_EPS = 1e-6
FLOW_BOUND = 20.0  # px: the TSN/I3D/mmaction2 bound for flow at full resolution
SPAN_SLACK = 1.0  # s: a file named by the video id and longer than its clip's span by more is the full video


class DecodeError(Exception):
    """A media file that cannot be used; the message is the reason recorded in the report."""


@dataclass
class DecodedClip:
    frames: np.ndarray  # (T, H, W, 3) uint8
    audio: np.ndarray | None  # (samples,) float32 at 16 kHz, None when the file has no audio
    seconds: float  # duration of the decoded segment


def _output_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    if width <= 0 or height <= 0:
        raise DecodeError(f"invalid frame size {width}x{height}")
    scale = short_side / min(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def open_video(path: str):
    """A media file's container, which has a video stream; DecodeError with the reason otherwise
    (missing, unreadable, not a container, no video)."""
    if not os.access(path, os.R_OK):
        raise DecodeError("file not readable (permissions)" if os.path.exists(path) else "file not found")
    try:
        container = av.open(str(path), metadata_errors="ignore")
    except (av.error.FFmpegError, OSError, ValueError, UnicodeDecodeError) as e:
        raise DecodeError(f"cannot open: {_reason(e)}") from None
    if not container.streams.video:
        container.close()
        raise DecodeError("no video stream")
    return container


def start_time(container) -> float:
    """Seconds at which a media file's timeline starts: its first video stream's start_time (the
    container's when the stream declares none), never below 0. Usually 0; not in files whose
    timestamps start later (a webm cut from a live stream, an mp4 whose edit list delays the
    video, an flv shifted for the audio's priming). decode_clip and probe_media count a clip's
    start and end from here. `container`: an open PyAV container, or a path."""
    if not hasattr(container, "streams"):
        with open_video(container) as opened:
            return start_time(opened)
    t = None
    if container.streams.video:
        vs = container.streams.video[0]
        if vs.start_time is not None and vs.time_base:
            t = float(vs.start_time * vs.time_base)
    if t is None and container.start_time is not None:
        t = container.start_time / av.time_base
    return max(0.0, t or 0.0)


def declared_seconds(container, origin: float | None = None) -> float | None:
    """How long the file says its video lasts, counted from `origin` (start_time()); None when it
    does not say. The video stream's duration, else the container's: FFmpeg's container duration
    counts from the container's start_time, except where the header holds the last timestamp
    (Matroska/WebM), so the earlier of the two ends it can mean is taken."""
    origin = start_time(container) if origin is None else origin
    vs = container.streams.video[0] if container.streams.video else None
    if vs is not None and vs.duration and vs.time_base:
        return float(vs.duration * vs.time_base)
    if container.duration:
        duration = container.duration / av.time_base
        begin = (container.start_time or 0) / av.time_base
        return min(begin + duration, duration) - origin
    return None


def clip_span(container, origin: float, start: float | None, end: float | None,
              span_if_longer: bool = False) -> tuple[float | None, float | None]:
    """The [start, end) to read. With `span_if_longer` (a file named by the video id alone, which
    may be the full video or the clip already cut from it) the span holds only when the file is
    longer than end - start + SPAN_SLACK, or does not say how long it is; otherwise the file is
    the clip: all of it (None, None)."""
    if span_if_longer and start is not None and end is not None:
        length = declared_seconds(container, origin)
        if length is not None and length <= (end - start) + SPAN_SLACK:
            return None, None
    return start, end


def decode_clip(path: str, *, fps: float, short_side: int, start: float | None = None,
                end: float | None = None, max_seconds: float = 0.0, want_audio: bool = True,
                span_if_longer: bool = False) -> DecodedClip:
    """Decode [start, end) of a media file to frames at `fps` and 16 kHz mono audio, in one pass
    over the container's packets (both streams demuxed together). `start` and `end` are seconds
    from the file's `start_time` (its first video frame), as in probe_media; `span_if_longer`:
    see clip_span."""
    with open_video(path) as container:
        origin = start_time(container)  # start/end count from here, as in probe_media
        start, end = clip_span(container, origin, start, end, span_if_longer)
        t0 = float(start or 0.0)
        t1 = float(end) if end is not None else math.inf
        if max_seconds > 0:
            t1 = min(t1, t0 + max_seconds)
        vstream = container.streams.video[0]
        astream = container.streams.audio[0] if (want_audio and container.streams.audio) else None
        video = _FrameSampler(fps, short_side, t0, t1, float(vstream.average_rate or vstream.guessed_rate or 25), origin)
        audio = _AudioPlacer(t0, t1, origin) if astream is not None else None
        if t0 > 0:
            container.seek(int((origin + t0) * av.time_base), backward=True, any_frame=False)
        streams = [vstream] + ([astream] if astream is not None else [])
        try:
            for packet in container.demux(streams):
                if packet.stream is vstream:
                    if video.done:
                        continue
                    try:
                        for frame in packet.decode():
                            video.push(frame)
                    except av.error.FFmpegError:
                        video.errors += 1  # one damaged packet costs its frames, not the clip
                elif audio is not None and not audio.done:
                    try:
                        for frame in packet.decode():
                            audio.push(frame)
                    except av.error.FFmpegError:
                        audio.errors += 1  # a damaged audio packet is silence, not a lost clip
                if video.done and (audio is None or audio.done):
                    break
            if not video.done:
                for frame in vstream.codec_context.decode(None):  # flush delayed frames
                    video.push(frame)
        except (av.error.FFmpegError, ValueError) as e:  # (Python's MemoryError: the worker's, transient)
            if not video.frames_out and video.prev is None:
                raise DecodeError(f"video decode failed: {_reason(e)}") from None
            # a file truncated mid-stream: keep what decoded
        frames = video.finish()
        seconds = len(frames) / fps
        wave = audio.finish(seconds) if audio is not None else None
    return DecodedClip(frames=frames, audio=wave, seconds=seconds)


def probe_media(path: str, start: float | None = None, end: float | None = None,
                span_if_longer: bool = False) -> dict:
    """A cheap integrity check of one media file (what `prepare-data --check` runs on a media
    folder): it opens, has a video stream, its first video frame decodes, and its video packets
    (demuxed, not decoded) reach the end the container declares, or `end` — a download cut short
    stops early. Returns {"has_audio", "seconds"}; raises DecodeError with the reason."""
    with open_video(path) as container:
        vstream = container.streams.video[0]
        origin = start_time(container)  # start/end count from here, as in decode_clip
        start, end = clip_span(container, origin, start, end, span_if_longer)
        declared = declared_seconds(container, origin)
        t0 = float(start or 0.0)
        target = min(declared, float(end)) if (declared and end is not None) else (float(end) if end is not None
                                                                                 else declared)
        if t0 > 0:
            container.seek(int((origin + t0) * av.time_base), backward=True, any_frame=False)
        first_frame, last = False, None
        try:
            for packet in container.demux(vstream):
                if packet.pts is None or packet.time_base is None:
                    continue
                t = float((packet.pts + (packet.duration or 0)) * packet.time_base) - origin
                last = t if last is None else max(last, t)
                if not first_frame and packet.size:
                    try:
                        first_frame = bool(packet.decode())
                    except av.error.FFmpegError:
                        pass
                if end is not None and t >= float(end) and first_frame:
                    break
            if not first_frame:
                first_frame = bool(vstream.codec_context.decode(None))
        except (av.error.FFmpegError, ValueError) as e:
            raise DecodeError(f"truncated or damaged: {_reason(e)}") from None
        if not first_frame:
            raise DecodeError("no decodable video frames")
        if target and last is not None and last < target - max(0.25, 0.1 * (target - t0)):
            raise DecodeError(f"truncated: video data ends at {last:.2f} s of {target:.2f} s")
        has_audio = bool(container.streams.audio)
    return {"has_audio": has_audio, "seconds": round((last or 0.0) - t0, 3)}


def _reason(e: Exception) -> str:
    return " ".join(str(e).split())[:200] or type(e).__name__


class _FrameSampler:
    """Picks, for each target time t0 + k/fps, the last source frame shown at that time, and
    converts only those frames (one reused reformatter, ~1.7x faster than to_ndarray(format=))."""

    def __init__(self, fps: float, short_side: int, t0: float, t1: float, src_rate: float, origin: float = 0.0):
        self.fps, self.short_side, self.t0, self.t1, self.src_rate = fps, short_side, t0, t1, src_rate
        self.origin = origin  # start_time(): frame times count from here
        self.reformatter = av.video.reformatter.VideoReformatter()
        self.frames_out: list[np.ndarray] = []
        self.prev = None
        self.prev_time = 0.0
        self.prev_duration = 1.0 / src_rate
        self.k = 0
        self.n_decoded = 0
        self.errors = 0
        self.done = False

    def _target(self) -> float:
        return self.t0 + self.k / self.fps

    def _convert(self, frame) -> np.ndarray:
        w, h = _output_size(frame.width, frame.height, self.short_side)
        img = self.reformatter.reformat(frame, width=w, height=h, format="rgb24",
                                        interpolation=av.video.reformatter.Interpolation.AREA).to_ndarray()
        rotation = getattr(frame, "rotation", 0) or 0
        if rotation % 360:
            img = np.ascontiguousarray(np.rot90(img, k=round(rotation / 90) % 4))
        return img

    def push(self, frame) -> None:
        if self.done:
            return
        self.n_decoded += 1
        t = frame.time - self.origin if frame.time is not None else (self.n_decoded - 1) / self.src_rate
        if t >= self.t1:
            self.done = True
            return
        # every target time before this frame shows the previous frame (frames before t0 are
        # never emitted: no target precedes them)
        while self.prev is not None and self._target() < t - 1e-6 and self._target() < self.t1:
            self.frames_out.append(self._convert(self.prev))
            self.k += 1
        self.prev, self.prev_time = frame, t
        # how long it is shown: its own duration where the container says (a variable-frame-rate
        # file's last frame may be held for seconds), never less than one average frame period
        own = float(frame.duration * frame.time_base) if frame.duration and frame.time_base else 0.0
        self.prev_duration = max(own, 1.0 / self.src_rate)

    def finish(self) -> np.ndarray:
        if self.prev is None:
            raise DecodeError("no decodable video frames")
        last_end = min(self.t1, self.prev_time + self.prev_duration)
        while self._target() < last_end - 1e-6:
            self.frames_out.append(self._convert(self.prev))
            self.k += 1
        out = self.frames_out or [self._convert(self.prev)]  # shorter than one output frame: keep it
        if len({a.shape for a in out}) > 1:  # mid-stream resolution change: resize to the first size
            import cv2

            h, w = out[0].shape[:2]
            out = [a if a.shape == out[0].shape else cv2.resize(a, (w, h), interpolation=cv2.INTER_AREA)
                   for a in out]
        return np.stack(out)


class _AudioPlacer:
    """Mono 16 kHz samples placed on the video's timeline by their timestamps, so encoder padding
    (AAC adds ~0.05 s), a late audio start and gaps (silence) are handled.

    Frames that follow one another (each starting where the last ended, to within GAP_SAMPLES)
    go through one resampler and are laid end to end from the first one's timestamp; a frame
    whose own timestamp is GAP_SAMPLES or more away from there (a hole in the stream, a damaged
    packet dropped, an overlap) ends that run (the resampler is flushed) and starts a new one at
    its timestamp, so a hole stays silence instead of pulling the later audio early."""

    GAP_SAMPLES = 160  # 10 ms (one log-mel hop): timestamps rounded to 1 ms (Matroska) stay far below

    def __init__(self, t0: float, t1: float, origin: float = 0.0):
        self.t0, self.t1, self.origin = t0, t1, origin  # origin: start_time(), where frame times count from
        self.resampler = self._resampler()
        self.chunks: list[tuple[int, np.ndarray]] = []
        self.cursor: int | None = None
        self.expected: float | None = None  # where the next frame starts (16 kHz samples) if it follows on
        self.done = False
        self.errors = 0

    @staticmethod
    def _resampler():
        return av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)

    def _add(self, resampled) -> None:
        for r in resampled:
            chunk = r.to_ndarray().reshape(-1).astype(np.float32, copy=False)
            self.chunks.append((self.cursor, chunk))
            self.cursor += len(chunk)

    def push(self, frame) -> None:
        at = ((frame.time or 0.0) - self.origin - self.t0) * SAMPLE_RATE  # its own place, in samples
        if self.cursor is None:  # the first run
            self.cursor, self.expected = int(round(at)), at if frame.time is not None else None
        elif frame.time is not None and self.expected is not None and abs(at - self.expected) >= self.GAP_SAMPLES:
            self._add(self.resampler.resample(None))  # the run so far ends where its audio ends
            self.resampler = self._resampler()
            self.cursor, self.expected = int(round(at)), at  # a new run starts at the frame's own time
        if self.expected is not None and frame.sample_rate:
            self.expected += frame.samples * SAMPLE_RATE / frame.sample_rate
        self._add(self.resampler.resample(frame))
        if self.t0 + self.cursor / SAMPLE_RATE >= self.t1:
            self.done = True

    def finish(self, seconds: float) -> np.ndarray:
        if self.cursor is not None:
            self._add(self.resampler.resample(None))  # flush the resampler
        n = int(round(seconds * SAMPLE_RATE))
        out = np.zeros(n, dtype=np.float32)
        for at, chunk in self.chunks:
            lo, hi = max(at, 0), min(at + len(chunk), n)
            if hi > lo:
                out[lo:hi] = chunk[lo - at: hi - at]
        return np.clip(np.nan_to_num(out), -1.0, 1.0)


def hz_to_mel_htk(f):
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def mel_to_hz_htk(m):
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


def mel_band_centres_hz(n_mels: int = MEL_BANDS, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Centre frequency of each HTK mel band (band i peaks here)."""
    pts = mel_to_hz_htk(np.linspace(0.0, hz_to_mel_htk(sr / 2), n_mels + 2))
    return pts[1:-1]


def mel_filterbank(n_mels: int = MEL_BANDS, n_fft: int = N_FFT, sr: int = SAMPLE_RATE) -> np.ndarray:
    """(n_fft//2+1, n_mels) triangular HTK mel filters on 0..sr/2, peak 1 (no area norm)."""
    freqs = np.linspace(0.0, sr / 2, n_fft // 2 + 1)
    pts = mel_to_hz_htk(np.linspace(0.0, hz_to_mel_htk(sr / 2), n_mels + 2))
    lower, centre, upper = pts[:-2, None], pts[1:-1, None], pts[2:, None]
    up = (freqs[None, :] - lower) / (centre - lower)
    down = (upper - freqs[None, :]) / (upper - centre)
    return np.maximum(0.0, np.minimum(up, down)).T.astype(np.float32)


_FBANK_CACHE: dict = {}


def log_mel(wave: np.ndarray) -> np.ndarray:
    """Log-mel spectrogram, (frames, 40) float32, frame i = samples [160 i, 160 i + 256) (zero
    padded at the end), Hann window, |rfft_512|^2, HTK mel, log(x + 1e-6). len(wave)//160 frames."""
    import torch

    wave = np.asarray(wave, dtype=np.float32).reshape(-1)
    n_frames = len(wave) // HOP_LENGTH
    if n_frames == 0:
        return np.zeros((0, MEL_BANDS), dtype=np.float32)
    padded = np.zeros((n_frames - 1) * HOP_LENGTH + WIN_LENGTH, dtype=np.float32)
    padded[: len(wave)] = wave[: len(padded)]
    if "fb" not in _FBANK_CACHE:
        _FBANK_CACHE["fb"] = torch.from_numpy(mel_filterbank())
        _FBANK_CACHE["win"] = torch.hann_window(WIN_LENGTH, periodic=True, dtype=torch.float64).float()
    x = torch.from_numpy(padded).unfold(0, WIN_LENGTH, HOP_LENGTH) * _FBANK_CACHE["win"]
    power = torch.fft.rfft(x, n=N_FFT).abs().pow(2)
    return torch.log(power @ _FBANK_CACHE["fb"] + LOG_EPS).numpy()


def silence_log_mel(n_frames: int) -> np.ndarray:
    """What a video without an audio track gets (the paper's setting: silence)."""
    return np.full((n_frames, MEL_BANDS), math.log(LOG_EPS), dtype=np.float32)


def quantise_flow(flow: np.ndarray, bound: float = FLOW_BOUND) -> np.ndarray:
    """Flow in px -> uint8: clip to [-bound, bound], map linearly to 0..255 (a step of
    2 * bound / 255 px: 0.16 px at 20, fine at full resolution, ~10 levels for the 1-2 px motions
    of a 16-px frame, hence `prepare.flow_bound` for small frames)."""
    q = (np.clip(flow, -bound, bound) + bound) * (255.0 / (2 * bound))
    return np.rint(q).astype(np.uint8)


def dequantise_flow(q: np.ndarray, bound: float = FLOW_BOUND) -> np.ndarray:
    return q.astype(np.float32) * (2 * bound / 255.0) - bound


def optical_flow(frames: np.ndarray, method: str = "dis", bound: float = FLOW_BOUND) -> np.ndarray:
    """(T, H, W, 3) uint8 -> (T, H, W, 2) uint8 flow quantised at +-`bound` px; flow[t] is frame
    t -> t+1 and the last one repeats (so every RGB frame has a flow frame)."""
    import cv2

    t, h, w = frames.shape[:3]
    if t < 2:
        return np.full((t, h, w, 2), quantise_flow(np.zeros(1), bound)[0], dtype=np.uint8)
    if method == "dis":
        algo = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
        if min(h, w) < 48:  # tiny frames: smaller patches than the preset's 8 px
            algo.setPatchSize(4)
            algo.setPatchStride(2)
    elif method == "tvl1":
        algo = cv2.optflow.DualTVL1OpticalFlow_create()
    else:
        raise ValueError(f"unknown flow method {method!r}")
    gray = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
    out = np.empty((t, h, w, 2), dtype=np.uint8)
    for i in range(t - 1):
        out[i] = quantise_flow(algo.calc(gray[i], gray[i + 1], None), bound)
    out[-1] = out[-2]
    return out
