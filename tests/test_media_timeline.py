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
