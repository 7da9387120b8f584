"""gblend_cli.media: log-mel against an independent NumPy reference, flow quantisation and
optical flow, and decode_clip on real files written with PyAV (tests/media_factory.py)."""

from __future__ import annotations

import math

import av
import numpy as np
import pytest

import media_factory as mf
from gblend_cli.media import (FLOW_BOUND, DecodeError, decode_clip, dequantise_flow, hz_to_mel_htk, log_mel,
                              mel_band_centres_hz, optical_flow, quantise_flow, silence_log_mel)

SR = 16000
STEP = 2 * 20.0 / 255  # one flow quantisation step (px)


# ------------------------------------------------------------------------------------------ helpers

def reference_log_mel(wave: np.ndarray) -> np.ndarray:
    """Independent float64 log-mel: explicit DFT matrix, periodic Hann(256), hop 160, frame i =
    samples [160 i, 160 i + 256) zero-padded at the end, |512-point DFT|^2, 40 HTK triangles
    (0..8000 Hz, peak 1) built from mel = 2595 log10(1 + f / 700), log(x + 1e-6)."""
    wave = np.asarray(wave, dtype=np.float64).reshape(-1)
    n_frames = len(wave) // 160
    frames = np.zeros((n_frames, 256))
    for i in range(n_frames):
        seg = wave[160 * i: 160 * i + 256]
        frames[i, :len(seg)] = seg
    n = np.arange(256)
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * n / 256)  # periodic
    k = np.arange(257)[:, None]
    # 512-point DFT of a frame zero-padded from 256 to 512 samples: inputs 256..511 are zero
    dft = np.exp(-2j * np.pi * k * n[None, :] / 512)
    power = np.abs((frames * hann) @ dft.T) ** 2  # (frames, 257)

    def mel(f):
        return 2595.0 * np.log10(1.0 + f / 700.0)

    def hz(m):
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)

    edges = hz(np.linspace(0.0, mel(8000.0), 42))
    bins = np.arange(257) * SR / 512
    fbank = np.zeros((257, 40))
    for b in range(40):
        lo, centre, hi = edges[b], edges[b + 1], edges[b + 2]
        for j, f in enumerate(bins):
            if lo <= f <= centre:
                fbank[j, b] = (f - lo) / (centre - lo)
            elif centre < f <= hi:
                fbank[j, b] = (hi - f) / (hi - centre)
    return np.log(power @ fbank + 1e-6)


def tone_energy(wave: np.ndarray, hz: float, sr: int = SR) -> float:
    t = np.arange(len(wave)) / sr
    return abs(np.dot(wave, np.exp(-2j * np.pi * hz * t))) / max(len(wave), 1)


def fft_peak_hz(wave: np.ndarray, sr: int = SR) -> float:
    spec = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.argmax(spec) * sr / len(wave))


def square_centre_x(frame: np.ndarray) -> float:
    """Column centroid of the bright square (green > 128), NaN if it is not in the frame."""
    mask = frame[..., 1] > 128
    return float(np.nonzero(mask)[1].mean()) if mask.any() else math.nan


def square_centre_y(frame: np.ndarray) -> float:
    mask = frame[..., 1] > 128
    return float(np.nonzero(mask)[0].mean()) if mask.any() else math.nan


def expected_centre_x(t_target: float, src_fps: float, size, seconds: float, scale: float = 1.0) -> float:
    """Where the square's centre is in the source frame shown at t_target (the last source frame
    at or before it), in output pixels."""
    j = math.floor(t_target * src_fps + 1e-6)
    x = mf.square_x(j / src_fps, size, seconds)
    return (x + mf.square_side(size) / 2 - 0.5) * scale


def switch_time(wave: np.ndarray, f1: float, f2: float, win: int = 160) -> float:
    """First time (s) at which 10 ms windows hold more of tone f2 than of tone f1."""
    for i in range(len(wave) // win):
        seg = wave[i * win:(i + 1) * win]
        if tone_energy(seg, f2) > tone_energy(seg, f1):
            return i * win / SR
    return math.inf


# ------------------------------------------------------------------------------------------ log-mel

def _signals():
    rng = np.random.default_rng(1)
    t = np.arange(2 * SR) / SR
    return {
        "noise": rng.normal(0, 0.1, 2 * SR),
        "tones+noise": 0.3 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 3000 * t)
        + 0.01 * rng.normal(size=len(t)),
        "pure-1khz": 0.5 * np.sin(2 * np.pi * 1000 * t),
        "quiet-noise": 1e-3 * rng.normal(size=2 * SR),
        "silence-then-tone": np.concatenate([np.zeros(SR // 2), 0.5 * np.sin(2 * np.pi * 700 * t[:SR // 2])]),
        "ragged-tail-short": rng.normal(0, 0.3, SR + 77),  # last frame zero-padded
        "ragged-tail-long": rng.normal(0, 0.3, SR + 150),  # last frame fully inside the wave
    }


@pytest.mark.parametrize("name", list(_signals()))
def test_log_mel_matches_independent_reference(name):
    wave = _signals()[name].astype(np.float32)
    got = log_mel(wave)
    ref = reference_log_mel(wave)
    assert got.shape == ref.shape == (len(wave) // 160, 40)
    assert got.dtype == np.float32
    rel = np.abs(got - ref) / np.maximum(np.abs(ref), 1.0)  # |log| < 1: absolute error
    assert rel.max() < 1e-4, f"max relative error {rel.max():.2e} at {np.unravel_index(rel.argmax(), rel.shape)}"


@pytest.mark.parametrize("n", [0, 1, 159, 160, 161, 319, 320, 16000, 16159])
def test_log_mel_frame_count(n):
    out = log_mel(np.random.default_rng(n).normal(0, 0.1, n).astype(np.float32))
    assert out.shape == (n // 160, 40) and out.dtype == np.float32
    assert np.isfinite(out).all()


def test_log_mel_of_silence_is_the_silence_value():
    out = log_mel(np.zeros(50 * 160, dtype=np.float32))
    assert np.allclose(out, math.log(1e-6))
    sil = silence_log_mel(50)
    assert sil.shape == (50, 40) and sil.dtype == np.float32
    np.testing.assert_allclose(sil, out, atol=1e-6)


@pytest.mark.parametrize("hz", [250.0, 1000.0, 4000.0])
def test_tone_peaks_in_the_band_centred_nearest_it(hz):
    t = np.arange(SR) / SR
    mel = log_mel((0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32))
    centres = mel_band_centres_hz()
    assert int(np.argmax(mel.mean(axis=0))) == int(np.argmin(np.abs(centres - hz)))
    # every frame (not only on average) peaks there
    assert (mel.argmax(axis=1) == np.argmin(np.abs(centres - hz))).all()


def test_mel_band_centres_are_htk_equally_spaced():
    c = mel_band_centres_hz()
    assert c.shape == (40,)
    assert 0 < c[0] < c[-1] < 8000 and (np.diff(c) > 0).all()
    m = 2595 * np.log10(1 + c / 700)
    step = 2595 * np.log10(1 + 8000 / 700) / 41
    np.testing.assert_allclose(np.diff(m), step, rtol=1e-9)
    np.testing.assert_allclose(m[0], step, rtol=1e-9)
    np.testing.assert_allclose(hz_to_mel_htk(1000.0), 1000.0, atol=0.1)  # HTK: 1 kHz ~ 1000 mel


# ------------------------------------------------------------------------------------------ flow

def test_quantise_dequantise_round_trip_within_one_step():
    flow = np.random.default_rng(0).uniform(-FLOW_BOUND, FLOW_BOUND, size=(3, 16, 16, 2)).astype(np.float32)
    q = quantise_flow(flow)
    assert q.dtype == np.uint8 and q.shape == flow.shape
    err = np.abs(dequantise_flow(q) - flow)
    assert err.max() <= STEP / 2 + 1e-5  # rounding to the nearest level: half a step
    assert dequantise_flow(q).dtype == np.float32
    # order preserved, the two ends of the range reach the two ends of uint8
    assert quantise_flow(np.array([-20.0]))[0] == 0 and quantise_flow(np.array([20.0]))[0] == 255
    lin = np.linspace(-20, 20, 1001)
    assert (np.diff(quantise_flow(lin).astype(int)) >= 0).all()


def test_quantise_clips_at_plus_minus_20():
    q = quantise_flow(np.array([-1000.0, -25.0, -20.0, 20.0, 25.0, 1e6]))
    assert q.dtype == np.uint8
    assert q.tolist() == [0, 0, 0, 255, 255, 255]
    np.testing.assert_allclose(dequantise_flow(q), [-20, -20, -20, 20, 20, 20], atol=1e-5)
    assert abs(float(dequantise_flow(quantise_flow(np.zeros(1)))[0])) <= STEP / 2 + 1e-6


@pytest.mark.parametrize("method", ["dis", "tvl1"])
@pytest.mark.parametrize("speed", [2.0, -2.0])
def test_optical_flow_follows_a_moving_square(method, speed):
    size = (32, 32)
    x0 = 4 if speed > 0 else 20
    frames = mf.moving_square_frames(6, size, speed_px=speed, x0=x0)
    q = optical_flow(frames, method)
    assert q.shape == (6, 32, 32, 2) and q.dtype == np.uint8
    flow = dequantise_flow(q)
    s, y = mf.square_side(size), mf.square_y(size)
    for i in range(5):  # flow[i] is frame i -> i + 1: measured on the square in frame i
        x = int(round(x0 + speed * i))
        on = flow[i, y:y + s, x:x + s]
        assert np.sign(on[..., 0].mean()) == np.sign(speed) and abs(on[..., 0].mean()) > 1.0, (i, on[..., 0].mean())
        assert abs(on[..., 1].mean()) < 0.4, (i, on[..., 1].mean())
    np.testing.assert_array_equal(q[-1], q[-2])  # the last flow frame repeats


@pytest.mark.parametrize("bound", [4.0, 1.0])
def test_a_smaller_flow_bound_quantises_finer_and_clips_there(bound):
    flow = np.random.default_rng(1).uniform(-bound, bound, size=(2, 8, 8, 2)).astype(np.float32)
    err = np.abs(dequantise_flow(quantise_flow(flow, bound), bound) - flow)
    assert err.max() <= bound / 255 + 1e-5  # half a step of 2 * bound / 255
    assert err.max() < STEP / 2 * bound / 20 + 1e-5  # finer than the 20-px default by 20 / bound
    assert quantise_flow(np.array([-bound - 1, bound + 1]), bound).tolist() == [0, 255]
    # optical_flow quantises at the bound it is given: the same scene, read back in px, agrees
    frames = mf.moving_square_frames(4, (32, 32), speed_px=1.0, x0=8)
    fine = dequantise_flow(optical_flow(frames, "dis", bound), bound)
    coarse = dequantise_flow(optical_flow(frames, "dis"))
    inside = np.abs(coarse) < bound - STEP  # where the motion is within the smaller bound
    assert np.abs(fine - coarse)[inside].max() <= STEP / 2 + bound / 255 + 1e-5


def test_optical_flow_of_a_still_scene_is_about_zero():
    frames = np.repeat(mf.moving_square_frames(1, (32, 32))[:1], 4, axis=0)
    flow = dequantise_flow(optical_flow(frames))
    assert np.abs(flow).max() <= STEP / 2 + 0.25


def test_optical_flow_single_frame_and_two_frames():
    one = optical_flow(mf.moving_square_frames(1, (32, 24)))
    assert one.shape == (1, 24, 32, 2) and one.dtype == np.uint8
    assert (one == quantise_flow(np.zeros(1))[0]).all()
    two = optical_flow(mf.moving_square_frames(2, (32, 24)))
    assert two.shape == (2, 24, 32, 2)
    np.testing.assert_array_equal(two[0], two[1])


def test_optical_flow_unknown_method():
    with pytest.raises(ValueError, match="unknown flow method"):
        optical_flow(mf.moving_square_frames(3, (32, 32)), "farneback-typo")


# ------------------------------------------------------------------------------------------ decode

@pytest.mark.parametrize("src_fps", [10, 60, 25, 8, 5])
def test_decode_resamples_fps_with_correct_frame_times(tmp_path, src_fps):
    size, seconds = (64, 48), 2.0
    path = mf.write_video(tmp_path / f"v{src_fps}.mp4", seconds=seconds, fps=src_fps, size=size)
    clip = decode_clip(path, fps=8, short_side=48)
    assert clip.frames.shape == (16, 48, 64, 3) and clip.frames.dtype == np.uint8
    assert clip.seconds == pytest.approx(2.0)
    xs = np.array([square_centre_x(f) for f in clip.frames])
    want = np.array([expected_centre_x(k / 8, src_fps, size, seconds) for k in range(16)])
    assert np.abs(xs - want).max() <= 1.0, (xs.round(1).tolist(), want.round(1).tolist())
    assert (np.diff(xs) >= 0).all() and xs[-1] - xs[0] > 30  # moves right over the whole clip
    assert clip.audio is not None and clip.audio.shape == (32000,) and clip.audio.dtype == np.float32


@pytest.mark.parametrize("size,short_side,want_hw", [
    ((48, 36), 24, (24, 32)),   # landscape, downscale
    ((36, 48), 24, (32, 24)),   # portrait keeps its orientation
    ((48, 36), 72, (72, 96)),   # upscale
    ((32, 32), 32, (32, 32)),   # unchanged
])
def test_decode_resizes_short_side_keeping_aspect(tmp_path, size, short_side, want_hw):
    path = mf.write_video(tmp_path / "v.mp4", seconds=1.0, fps=8, size=size)
    clip = decode_clip(path, fps=8, short_side=short_side)
    assert clip.frames.shape == (8, *want_hw, 3)
    scale = want_hw[1] / size[0]
    xs = np.array([square_centre_x(f) for f in clip.frames])
    want = np.array([expected_centre_x(k / 8, 8, size, 1.0, scale) for k in range(8)]) + (scale - 1) / 2
    assert np.abs(xs - want).max() <= max(1.0, scale), (xs.round(1).tolist(), want.round(1).tolist())
    ys = np.array([square_centre_y(f) for f in clip.frames])
    want_y = (mf.square_y(size) + mf.square_side(size) / 2) * scale - 0.5
    assert np.abs(ys - want_y).max() <= max(1.0, scale)


@pytest.mark.parametrize("rate,channels,codec", [(48000, 2, "aac"), (44100, 2, "aac"), (8000, 1, "aac"),
                                                 (22050, 1, "pcm_s16le")])
def test_decode_audio_to_16k_mono_keeps_the_tone(tmp_path, rate, channels, codec):
    suffix = ".mov" if codec == "pcm_s16le" else ".mp4"
    path = mf.write_video(tmp_path / f"a{suffix}", seconds=2.0, fps=8, audio_rate=rate, audio_channels=channels,
                          audio_codec=codec, tone_hz=1000.0)
    assert mf.probe(path)["audio_rates"] == [rate] and mf.probe(path)["audio_channels"] == [channels]
    clip = decode_clip(path, fps=8, short_side=32)
    a = clip.audio
    assert a is not None and a.ndim == 1 and a.dtype == np.float32
    assert len(a) == round(clip.seconds * 16000) == 32000
    assert abs(fft_peak_hz(a[1600:-1600]) - 1000.0) <= 2.0
    rms = float(np.sqrt(np.mean(a[3200:-3200] ** 2)))
    assert 0.2 < rms < 0.6, rms  # a 0.5-amplitude sine (rms 0.35), or its -3 dB stereo downmix sum
    assert np.abs(a).max() <= 1.0


@pytest.mark.parametrize("name,kwargs", [
    ("aac.mp4", {}),
    ("opus.webm", {}),
    ("vorbis.mkv", {"audio_channels": 2, "audio_rate": 44100}),
    ("flac.mkv", {"audio_codec": "flac"}),
    ("stereo48k.mp4", {"audio_rate": 48000, "audio_channels": 2}),
])
def test_decode_audio_is_on_the_video_timeline(tmp_path, name, kwargs):
    """The tone changes from 500 to 1500 Hz at t = 1 s: encoder delay (AAC priming, Opus
    pre-skip) must not shift it."""
    path = mf.write_video(tmp_path / name, seconds=2.0, fps=8, tone_hz=[500.0, 1500.0], **kwargs)
    clip = decode_clip(path, fps=8, short_side=32)
    assert clip.audio is not None and len(clip.audio) == 32000
    assert switch_time(clip.audio, 500.0, 1500.0) == pytest.approx(1.0, abs=0.02)


def test_decode_file_without_audio(tmp_path):
    path = mf.write_video(tmp_path / "silent.mp4", seconds=1.0, audio_rate=None)
    assert mf.probe(path)["audio"] == []
    clip = decode_clip(path, fps=8, short_side=32)
    assert clip.audio is None
    assert clip.frames.shape == (8, 32, 32, 3)


def test_decode_want_audio_false(tmp_path):
    path = mf.write_video(tmp_path / "v.mp4", seconds=1.0)
    clip = decode_clip(path, fps=8, short_side=32, want_audio=False)
    assert clip.audio is None and clip.frames.shape == (8, 32, 32, 3)


@pytest.mark.parametrize("name", ["seg.mp4", "seg.webm", "seg.mkv"])
def test_decode_segment_start_end(tmp_path, name):
    size, seconds = (64, 48), 4.0
    tones = [300.0, 600.0, 900.0, 1200.0]
    path = mf.write_video(tmp_path / name, seconds=seconds, fps=8, size=size, tone_hz=tones)
    clip = decode_clip(path, fps=8, short_side=48, start=1.0, end=2.5)
    assert clip.frames.shape == (12, 48, 64, 3)
    assert clip.seconds == pytest.approx(1.5)
    xs = np.array([square_centre_x(f) for f in clip.frames])
    want = np.array([expected_centre_x(1.0 + k / 8, 8, size, seconds) for k in range(12)])
    assert np.abs(xs - want).max() <= 1.0, (xs.round(1).tolist(), want.round(1).tolist())
    a = clip.audio
    assert a is not None and len(a) == 24000
    # segment audio: 1.0-2.0 s of the file is 600 Hz, 2.0-2.5 s is 900 Hz
    assert tone_energy(a[1600:14400], 600) > 10 * tone_energy(a[1600:14400], 300)
    assert switch_time(a, 600.0, 900.0) == pytest.approx(1.0, abs=0.02)


def test_decode_max_seconds(tmp_path):
    path = mf.write_video(tmp_path / "v.mp4", seconds=2.0, fps=8)
    clip = decode_clip(path, fps=8, short_side=32, max_seconds=1.0)
    assert clip.frames.shape[0] == 8 and clip.seconds == pytest.approx(1.0) and len(clip.audio) == 16000


@pytest.mark.parametrize("name,codec", [("v.webm", "vp9"), ("v.mkv", "h264"), ("ffv1.mkv", "ffv1"),
                                        ("hevc.mp4", "hevc"), ("mjpeg.mkv", "mjpeg"), ("mpeg4.mp4", "mpeg4")])
def test_decode_other_containers_and_codecs(tmp_path, name, codec):
    kwargs = {"ffv1.mkv": {"codec": "ffv1"}, "hevc.mp4": {"codec": "libx265"},
              "mjpeg.mkv": {"codec": "mjpeg", "pix_fmt": "yuvj420p"}, "mpeg4.mp4": {"codec": "mpeg4"}}.get(name, {})
    path = mf.write_video(tmp_path / name, seconds=2.0, fps=8, tone_hz=700.0, **kwargs)
    assert mf.probe(path)["video"] == [codec]
    clip = decode_clip(path, fps=8, short_side=32)
    assert clip.frames.shape == (16, 32, 32, 3)
    xs = np.array([square_centre_x(f) for f in clip.frames])
    want = np.array([expected_centre_x(k / 8, 8, (32, 32), 2.0) for k in range(16)])
    assert np.abs(xs - want).max() <= 1.0
    assert clip.audio is not None and len(clip.audio) == 32000
    assert abs(fft_peak_hz(clip.audio[1600:-1600]) - 700.0) <= 2.0


@pytest.mark.parametrize("rotation,direction", [(90, "up"), (-90, "down"), (180, "left")])
def test_decode_applies_display_rotation(tmp_path, rotation, direction):
    path = mf.write_video(tmp_path / "rot.mp4", seconds=1.0, fps=8, size=(48, 32), rotation=rotation)
    clip = decode_clip(path, fps=8, short_side=32)
    if rotation % 180:
        assert clip.frames.shape == (8, 48, 32, 3)  # portrait after rotation
    else:
        assert clip.frames.shape == (8, 32, 48, 3)
    xs = np.array([square_centre_x(f) for f in clip.frames])
    ys = np.array([square_centre_y(f) for f in clip.frames])
    dx, dy = xs[-1] - xs[0], ys[-1] - ys[0]
    moved = {"up": -dy, "down": dy, "left": -dx}[direction]
    assert moved > 20 and min(abs(dx), abs(dy)) < 1, (dx, dy)


# ------------------------------------------------------------------------------------------ bad files

def _assert_one_line_reason(e: DecodeError) -> str:
    msg = str(e)
    assert msg and "\n" not in msg and len(msg) <= 300
    return msg


def test_decode_error_for_empty_file(tmp_path):
    with pytest.raises(DecodeError) as ei:
        decode_clip(mf.write_bytes(tmp_path / "empty.mp4", b""), fps=8, short_side=32)
    assert "cannot open" in _assert_one_line_reason(ei.value)


@pytest.mark.parametrize("data", [b"this is not a video\n" * 20, bytes(range(256)) * 40, b"\x00" * 4096])
def test_decode_error_for_non_media_named_mp4(tmp_path, data):
    with pytest.raises(DecodeError) as ei:
        decode_clip(mf.write_bytes(tmp_path / "fake.mp4", data), fps=8, short_side=32)
    assert "cannot open" in _assert_one_line_reason(ei.value)


def test_decode_error_for_missing_file(tmp_path):
    with pytest.raises(DecodeError) as ei:
        decode_clip(tmp_path / "nope.mp4", fps=8, short_side=32)
    _assert_one_line_reason(ei.value)


@pytest.mark.parametrize("name", ["a.m4a", "a.wav", "a.mp3", "a.flac"])
def test_decode_error_for_audio_only_file(tmp_path, name):
    path = mf.write_audio_only(tmp_path / name, seconds=1.0)
    assert mf.probe(path)["video"] == [] and len(mf.probe(path)["audio"]) == 1
    with pytest.raises(DecodeError, match="no video stream"):
        decode_clip(path, fps=8, short_side=32)


def ffmpeg_decodable_frames(path) -> int:
    """How many video frames FFmpeg itself (PyAV, no gblend code) decodes from a file, skipping
    packets it cannot decode and stopping where demuxing stops; 0 when it cannot open the file."""
    n = 0
    try:
        with av.open(str(path)) as c:
            if not c.streams.video:
                return 0
            try:
                for pkt in c.demux(c.streams.video[0]):
                    try:
                        n += len(pkt.decode())
                    except av.error.FFmpegError:
                        pass
            except (av.error.FFmpegError, OSError):
                pass  # the cut: what was decoded before it stays
    except (av.error.FFmpegError, OSError):
        return 0
    return n


@pytest.mark.parametrize("ext", ["mp4", "webm", "mkv"])
@pytest.mark.parametrize("fraction", [0.02, 0.3, 0.6, 0.95])
def test_decode_truncated_file_keeps_the_decodable_prefix_or_fails_cleanly(tmp_path, time_limit, ext, fraction):
    """A file cut at `fraction` of its bytes: where FFmpeg can decode a prefix of its frames, that
    prefix is the clip (every decodable frame, in order, at 8 fps like the source, with audio of the
    same length); only a file with no decodable frame (an mp4 whose index is at its end, a cut in
    the header) fails, with a one-line DecodeError."""
    src = mf.write_video(tmp_path / f"full.{ext}", seconds=2.0, fps=8)
    path = mf.truncate_copy(src, tmp_path / f"cut.{ext}", fraction)
    n_ref = ffmpeg_decodable_frames(path)
    with time_limit(20):
        if n_ref == 0:
            with pytest.raises(DecodeError) as ei:
                decode_clip(path, fps=8, short_side=32)
            _assert_one_line_reason(ei.value)
            return
        clip = decode_clip(path, fps=8, short_side=32)  # a DecodeError here fails the test
    t = clip.frames.shape[0]
    assert t == n_ref and clip.frames.shape[1:] == (32, 32, 3), (t, n_ref)
    assert clip.seconds == pytest.approx(t / 8)
    assert clip.audio is None or len(clip.audio) == round(t / 8 * 16000)
    xs = np.array([square_centre_x(f) for f in clip.frames])
    want = np.array([expected_centre_x(k / 8, 8, (32, 32), 2.0) for k in range(t)])
    assert np.abs(xs - want).max() <= 1.0  # what is kept is the clip's beginning, in order


def test_truncated_files_cover_both_outcomes(tmp_path):
    """The cuts above include files with a decodable prefix and files without one."""
    counts = {}
    for ext in ("mp4", "webm"):
        src = mf.write_video(tmp_path / f"full.{ext}", seconds=2.0, fps=8)
        counts[ext] = ffmpeg_decodable_frames(mf.truncate_copy(src, tmp_path / f"cut.{ext}", 0.6))
    assert counts["mp4"] == 0 and 0 < counts["webm"] < 16, counts


def test_decode_truncated_mkv_keeps_the_part_that_is_there(tmp_path):
    """Matroska has its index up front: 60% of the bytes must still give most of the frames."""
    src = mf.write_video(tmp_path / "full.mkv", seconds=2.0, fps=8)
    clip = decode_clip(mf.truncate_copy(src, tmp_path / "cut.mkv", 0.6), fps=8, short_side=32)
    assert 6 <= clip.frames.shape[0] < 16


def test_decode_skips_one_damaged_video_packet(tmp_path):
    src = mf.write_video(tmp_path / "full.mp4", seconds=2.0, fps=8)
    path = mf.corrupt_copy(src, tmp_path / "damaged.mp4", start_fraction=0.5, length=500, seed=0)
    # precondition: FFmpeg itself decodes nearly every frame when the bad packet is skipped
    decodable = 0
    with av.open(str(path)) as c:
        for pkt in c.demux(c.streams.video[0]):
            try:
                decodable += len(pkt.decode())
            except av.error.FFmpegError:
                pass
    assert decodable >= 14
    clip = decode_clip(path, fps=8, short_side=32)
    assert clip.frames.shape[0] >= 15, f"kept {clip.frames.shape[0]} of 16 frames ({decodable} decodable)"
