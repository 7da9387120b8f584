"""Where decode_clip and probe_media put a clip on a file's timeline: files whose timestamps start
late (media.start_time) and audio streams with holes. Real files written with PyAV
(tests/media_factory.py)."""

from __future__ import annotations

import numpy as np
import pytest

import media_factory as mf
from gblend_cli.media import DecodeError, decode_clip, probe_media, start_time
from test_media import expected_centre_x, square_centre_x, switch_time, tone_energy

SIZE, SECONDS, FPS = (64, 48), 3.0, 8
TONES = [500.0, 1500.0, 2500.0]  # one per second of content


# ------------------------------------------------------------------------------------------ late start

@pytest.mark.parametrize("name", ["late.mkv", "late.mp4", "late.webm"])
def test_a_clip_counts_from_the_files_start_time(tmp_path, name):
    """The file's first frame and sample are stamped 1.5 s: start/end (and the whole file) count
    from there, in decode_clip and probe_media alike (before, a whole-file decode began with 1.5 s
    of the first frame, and a span 1.0-2.5 s held the first frame only)."""
    path = mf.write_video(tmp_path / name, seconds=SECONDS, fps=FPS, size=SIZE, start_s=1.5, tone_hz=TONES)
    assert start_time(path) == pytest.approx(1.5)

    whole = decode_clip(path, fps=FPS, short_side=48)
    assert whole.frames.shape == (24, 48, 64, 3) and whole.seconds == pytest.approx(SECONDS)
    xs = np.array([square_centre_x(f) for f in whole.frames])
    want = np.array([expected_centre_x(k / FPS, FPS, SIZE, SECONDS) for k in range(24)])
    assert np.abs(xs - want).max() <= 1.0, (xs.round(1).tolist(), want.round(1).tolist())
    assert switch_time(whole.audio, 500.0, 1500.0) == pytest.approx(1.0, abs=0.02)

    span = decode_clip(path, fps=FPS, short_side=48, start=1.0, end=2.5)
    assert span.frames.shape[0] == 12
    xs = np.array([square_centre_x(f) for f in span.frames])
    want = np.array([expected_centre_x(1.0 + k / FPS, FPS, SIZE, SECONDS) for k in range(12)])
    assert np.abs(xs - want).max() <= 1.0, (xs.round(1).tolist(), want.round(1).tolist())
    a = span.audio
    assert tone_energy(a[1600:14400], 1500.0) > 10 * tone_energy(a[1600:14400], 500.0)
    assert switch_time(a, 1500.0, 2500.0) == pytest.approx(1.0, abs=0.02)

    assert probe_media(str(path))["seconds"] == pytest.approx(SECONDS, abs=0.01)
    assert probe_media(str(path), 1.0, 2.5)["seconds"] == pytest.approx(1.5, abs=0.15)


@pytest.mark.parametrize("name", ["late.mkv", "late.webm"])  # (an mp4 cut short has no index: does not open)
def test_probe_still_finds_a_late_starting_file_cut_short(tmp_path, name):
    full = mf.write_video(tmp_path / name, seconds=4.0, fps=FPS, size=SIZE, start_s=1.5, pattern="noise")
    cut = mf.truncate_copy(full, tmp_path / f"cut_{name}", 0.5)
    with pytest.raises(DecodeError, match="truncated"):
        probe_media(str(cut))


def test_start_time_of_an_ordinary_file_is_zero(tmp_path):
    assert start_time(mf.write_video(tmp_path / "v.mp4")) == 0.0


# ------------------------------------------------------------------------------------------ audio holes

def rms(wave: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(wave, dtype=np.float64))))


def onset_after(wave: np.ndarray, t: float, level: float = 0.05) -> float:
    """First time (s) from `t` on at which the wave reaches `level`."""
    loud = np.nonzero(np.abs(wave[int(t * 16000):]) >= level)[0]
    return t + loud[0] / 16000 if len(loud) else float("inf")


@pytest.mark.parametrize("name,kwargs", [("hole.mkv", {}), ("hole.mp4", {}), ("hole.webm", {}),
                                         ("flac_hole.mkv", {"audio_codec": "flac"})])
def test_a_hole_in_the_audio_stream_stays_silent(tmp_path, name, kwargs):
    """Audio 0-1 s at 500 Hz, no audio frames from 1 to 2 s, then 2000 Hz stamped from 2 s on: the
    hole is silence and the 2000 Hz stays at 2-3 s (before, it was laid right after the first
    second, at 1-2 s, and 2-3 s was silent)."""
    path = mf.write_video(tmp_path / name, seconds=SECONDS, fps=FPS, size=SIZE, tone_hz=[500.0, 1200.0, 2000.0],
                          audio_gaps=((1.0, 2.0),), **kwargs)
    a = decode_clip(path, fps=FPS, short_side=48).audio
    assert a is not None and len(a) == 48000
    loud = rms(a[1600:14400])
    assert loud > 0.2
    assert rms(a[18400:30400]) < 0.02 * loud, rms(a[18400:30400])  # 1.15-1.9 s: the hole
    assert rms(a[35200:46400]) > 0.5 * loud  # 2.2-2.9 s: the audio after the hole, in its place
    assert tone_energy(a[35200:46400], 2000.0) > 10 * tone_energy(a[35200:46400], 500.0)
    assert onset_after(a, 1.5) == pytest.approx(2.0, abs=0.07)  # its first frame starts in [2.0, 2.064)

    span = decode_clip(path, fps=FPS, short_side=48, start=0.5, end=2.5).audio  # the same, 0.5 s earlier
    assert rms(span[10400:22400]) < 0.02 * loud and rms(span[27200:38400]) > 0.5 * loud
    assert onset_after(span, 1.0) == pytest.approx(1.5, abs=0.07)


def test_audio_without_holes_is_laid_end_to_end(tmp_path, monkeypatch):
    """The same file without the hole: no new run starts (the timestamps of a whole stream, 1 ms
    Matroska rounding included, stay within GAP_SAMPLES of end to end) and the tone is continuous."""
    from gblend_cli import media

    runs = []
    make = media._AudioPlacer._resampler
    monkeypatch.setattr(media._AudioPlacer, "_resampler", staticmethod(lambda: runs.append(1) or make()))
    path = mf.write_video(tmp_path / "whole.webm", seconds=SECONDS, fps=FPS, size=SIZE, audio_rate=48000)
    a = decode_clip(path, fps=FPS, short_side=48).audio
    assert len(runs) == 1
    assert min(rms(a[k:k + 1600]) for k in range(800, 46000, 1600)) > 0.2


# ------------------------------------------------------------------------------ variable frame rate

def _held_last_frame(path, fps: int, n: int, hold_s: float):
    """A real H.264 mp4 of `n` frames at `fps`, grey levels 0, 20, 40, ..., whose last frame is shown
    for `hold_s` seconds (its packet's duration): a variable-frame-rate file, as a screen recorder
    or a phone writes one."""
    import fractions

    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width = s.height = 32
        s.pix_fmt = "yuv420p"
        s.codec_context.time_base = fractions.Fraction(1, fps)
        packets = []
        for i in range(n):
            f = av.VideoFrame.from_ndarray(np.full((32, 32, 3), i * 20, np.uint8), format="rgb24")
            f.pts, f.time_base = i, fractions.Fraction(1, fps)
            packets += list(s.encode(f))
        packets += list(s.encode(None))
        last = max(packets, key=lambda p: p.pts)
        last.duration = int(round(hold_s / last.time_base))
        for p in packets:
            c.mux(p)
    return path


def test_a_variable_frame_rate_files_last_frame_lasts_as_long_as_it_is_shown(tmp_path):
    """9 frames at 8 fps, the last held 1 s (2 s in all, an average rate of 4.5 fps): the clip is
    2 s, the held frame repeated to the end (before, it lasted one average period, 0.22 s, and the
    clip ended at 1.25 s), and probe_media agrees."""
    path = _held_last_frame(tmp_path / "vfr.mp4", fps=8, n=9, hold_s=1.0)
    assert probe_media(path)["seconds"] == pytest.approx(2.0)
    clip = decode_clip(path, fps=8, short_side=32)
    assert clip.frames.shape[0] == 16
    grey = clip.frames[:, 16, 16].mean(axis=1)
    assert np.abs(grey[:9] - np.arange(9) * 20).max() <= 3  # each frame once, in order
    assert np.abs(grey[9:] - 160).max() <= 3  # then the held one
    # an ordinary file's last frame lasts one frame period: nothing added
    plain = _held_last_frame(tmp_path / "cfr.mp4", fps=8, n=9, hold_s=1 / 8)
    assert decode_clip(plain, fps=8, short_side=32).frames.shape[0] == 9
