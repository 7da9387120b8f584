"""Datasets whose annotations give a clip's time span in its source video (Kinetics
time_start/time_end, VGGSound start_seconds + 10 s, AudioSet start/end) with files named by the
video id alone: the full untrimmed video gives the annotated span, the clip already cut under that
name gives all of itself. Real media (tests/media_factory.py) decoded with PyAV."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

import media_factory as mf
from conftest import gblend_cmd, gblend_env
from gblend_cli.manifests import read_manifest
from gblend_cli.media import decode_clip, log_mel, mel_band_centres_hz, probe_media
from test_media import expected_centre_x, square_centre_x

SIZE, FPS, LONG = (32, 32), 8, 14.0
TONES = [500.0 * (k + 1) for k in range(14)]  # second k of the long video: 500 (k + 1) Hz


def band(hz: float) -> int:
    return int(np.argmin(np.abs(mel_band_centres_hz() - hz)))


def check_span(frames: np.ndarray, mel: np.ndarray, start: float, seconds: float) -> None:
    """`frames` (at FPS) and `mel` (100 per second) are the long video's [start, start + seconds)."""
    n = int(round(seconds * FPS))
    assert frames.shape[0] == n, (frames.shape, n)
    xs = np.array([square_centre_x(f) for f in frames])
    want = np.array([expected_centre_x(start + k / FPS, FPS, SIZE, LONG) for k in range(n)])
    assert np.abs(xs - want).max() <= 1.0, (xs.round(1).tolist(), want.round(1).tolist())
    for s in range(int(seconds)):  # the loudest band of each second is that second's tone
        got = int(mel[100 * s + 10: 100 * s + 90].astype(np.float32).mean(axis=0).argmax())
        assert got == band(TONES[int(start) + s]), (s, got, band(TONES[int(start) + s]))


def media_root(tmp_path, long_name: str, cut_name: str, cut_seconds: float):
    root = tmp_path / "media"
    mf.write_video(root / long_name, seconds=LONG, fps=FPS, size=SIZE, tone_hz=TONES)
    mf.write_video(root / cut_name, seconds=cut_seconds, fps=FPS, size=SIZE, tone_hz=[3000.0] * 12)
    return root


DATASETS = {
    # dataset: (annotation files {name: text}, long clip id, its span, cut clip id, cut seconds)
    "kinetics400": ({"train.csv": "label,youtube_id,time_start,time_end,split\n"
                                  "yoga,LONGvideo01,4,7,train\nyoga,CUTclip0001,20,23,train\n"},
                    "LONGvideo01_000004_000007", (4.0, 7.0), "CUTclip0001_000020_000023", 3.0),
    "vggsound": ({"vggsound.csv": "LONGvideo01,3,dog barking,train\nCUTclip0001,30,dog barking,train\n"},
                 "LONGvideo01_000003", (3.0, 13.0), "CUTclip0001_000030", 10.0),
    "audioset": ({"balanced_train_segments.csv": "# YTID, start_seconds, end_seconds, positive_labels\n"
                                                 'LONGvideo01, 6.000, 9.000, "/m/09x0r"\n'
                                                 'CUTclip0001, 40.000, 50.000, "/m/09x0r"\n',
                  "class_labels_indices.csv": 'index,mid,display_name\n0,/m/09x0r,"Speech"\n'},
                 "LONGvideo01_000006", (6.0, 9.0), "CUTclip0001_000040", 10.0),
}


@pytest.mark.parametrize("dataset", list(DATASETS))
def test_a_file_named_by_the_video_id_gives_the_annotated_span(tmp_path, dataset):
    files, long_id, (t0, t1), cut_id, cut_seconds = DATASETS[dataset]
    root = media_root(tmp_path, "LONGvideo01.mp4", "CUTclip0001.mp4", cut_seconds)
    ann = [mf.write_bytes(tmp_path / "ann" / name, text) for name, text in files.items()]
    clips = {c.clip_id: c for c in read_manifest(dataset, root, ann).clips}
    assert set(clips) == {long_id, cut_id}
    long = clips[long_id]
    assert (long.start, long.end, long.span_if_longer) == (t0, t1, True)
    got = decode_clip(str(long.path), fps=FPS, short_side=32, start=long.start, end=long.end,
                      span_if_longer=long.span_if_longer)
    check_span(got.frames, log_mel(got.audio), t0, t1 - t0)
    # the clip already cut, under the same kind of name: its span (20-23 s, 30-40 s, ...) is not in
    # it; all of it is the clip
    cut = clips[cut_id]
    got = decode_clip(str(cut.path), fps=FPS, short_side=32, start=cut.start, end=cut.end,
                      span_if_longer=cut.span_if_longer)
    assert got.frames.shape[0] == int(cut_seconds * FPS) and got.seconds == pytest.approx(cut_seconds)
    # prepare-data --check reads the same spans
    assert probe_media(str(long.path), long.start, long.end, long.span_if_longer)["seconds"] == \
        pytest.approx(t1 - t0, abs=0.15)
    assert probe_media(str(cut.path), cut.start, cut.end, cut.span_if_longer)["seconds"] == \
        pytest.approx(cut_seconds, abs=0.15)


def test_a_file_named_by_the_clip_is_decoded_whole(tmp_path):
    """`<id>_<start>_<end>.mp4` is the cut clip: no span, whatever its length."""
    root = tmp_path / "media"
    mf.write_video(root / "LONGvideo01_000004_000007.mp4", seconds=5.0, fps=FPS, size=SIZE)
    ann = mf.write_bytes(tmp_path / "train.csv", "label,youtube_id,time_start,time_end,split\nyoga,LONGvideo01,4,7,train\n")
    (clip,) = read_manifest("kinetics400", root, [ann]).clips
    assert (clip.start, clip.end, clip.span_if_longer) == (None, None, False)


def test_prepare_data_keeps_the_span_of_an_untrimmed_kinetics_video(tmp_path):
    files, long_id, (t0, t1), cut_id, _ = DATASETS["kinetics400"]
    root = media_root(tmp_path, "train/yoga/LONGvideo01.mp4", "train/yoga/CUTclip0001.webm", 3.0)
    ann = mf.write_bytes(tmp_path / "train.csv", files["train.csv"])
    recipe = mf.write_bytes(tmp_path / "r.toml", '[prepare]\nfps = 8.0\nshort_side = 32\nflow = "none"\n')
    out = tmp_path / "out"
    proc = subprocess.run(gblend_cmd("prepare-data", "--dataset", "kinetics400", "--root", root, "--annotations", ann,
                                     "--out", out, "--workers", "1", "--recipe", recipe),
                          cwd=tmp_path, env=gblend_env(), capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "prepare_report.json").read_text())
    assert (report["ok"], report["failed"]) == (2, [])
    check_span(np.load(out / "rgb" / f"{long_id}.npy"), np.load(out / "audio" / f"{long_id}.npy"), t0, t1 - t0)
    assert np.load(out / "rgb" / f"{cut_id}.npy").shape[0] == 3 * FPS
