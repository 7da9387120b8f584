"""The demo generator: the same seed gives the same files, whichever process renders them."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import gblend_env

RENDER = """
import hashlib, sys
from pathlib import Path
from gblend_cli import demo_data
from gblend_cli.config import load_config
p = load_config(None)["demo"]
out = Path(sys.argv[1])
jobs = demo_data.video_jobs(out, p, seed=0)
for j in jobs[:int(sys.argv[2])]:  # what this process encodes before the video we compare
    demo_data.render_job(dict(j, path=str(out / f"warm{j['index']}.mp4")), p)
demo_data.render_job(jobs[23], p)
print(hashlib.md5(Path(jobs[23]["path"]).read_bytes()).hexdigest())
"""


def test_a_demo_video_does_not_depend_on_what_its_process_encoded_before(tmp_path):
    # x264's lookahead once made the 24th video differ between a fresh worker and one that had
    # encoded 5 videos before it (demo data then depended on worker scheduling)
    digests = set()
    for warm in (0, 5):
        p = subprocess.run([sys.executable, "-c", RENDER, str(tmp_path / f"w{warm}"), str(warm)], env=gblend_env(),
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr[-2000:]
        digests.add(p.stdout.split()[-1])
    assert len(digests) == 1, digests


def test_the_data_seed_chooses_the_videos_and_a_folder_keeps_its_seed(tmp_path, run_gblend):
    small = ["--set", "demo.train_videos=8", "--set", "demo.test_videos=8", "--set", "prepare.workers=1"]
    p = run_gblend("prepare-data", "--dataset", "demo", "--seed", "5", "--out", tmp_path / "d5", *small)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "seed = 5" in (tmp_path / "d5" / "prepare_config.toml").read_text()
    oracle = json.loads((tmp_path / "d5" / "oracle.json").read_text())  # what the report's Table 1 shows beside it
    assert {s: oracle[s]["videos"] for s in ("train", "val")} == {"train": 8, "val": 8}
    assert oracle["val"]["video_top1"]["rgb"] == oracle["val"]["video_top1"]["rgb+flow"]  # one cue, the motion
    first = sorted((tmp_path / "d5" / "media" / "videos" / "train").rglob("*.mp4"))[0]
    assert first.name.startswith("d05t")  # the seed is part of every video id
    # another data seed into the same folder would mix two datasets: refused, nothing changed
    before = sorted(x.name for x in (tmp_path / "d5" / "rgb").iterdir())
    p = run_gblend("prepare-data", "--dataset", "demo", "--seed", "6", "--out", tmp_path / "d5", *small)
    assert p.returncode == 2 and "demo.seed" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert sorted(x.name for x in (tmp_path / "d5" / "rgb").iterdir()) == before
    # and the seed, not the slot, decides what a video shows
    from gblend_cli import demo_data
    from gblend_cli.config import load_config

    p_demo = load_config(None)["demo"]
    paths = [demo_data.render_job(demo_data.video_jobs(tmp_path / f"s{seed}", p_demo, seed)[0], p_demo) for seed in (5, 6)]
    assert Path(paths[0]).read_bytes() != Path(paths[1]).read_bytes()


def test_blank_videos_drift_in_their_own_directions_and_blob_videos_do_not_change(monkeypatch):
    """`demo.drift_amp`: the blank videos' quadrants drift, each its own way, in a way 16-px DIS
    flow (what prepare-data computes for the demo) can follow; videos with a blob are the same
    files with or without it."""
    import math

    import cv2
    import numpy as np

    from gblend_cli import demo_data
    from gblend_cli.config import load_config
    from gblend_cli.media import dequantise_flow, optical_flow

    p = load_config(None)["demo"] | {"drift_amp": 0.8, "pixel_noise": 0.1, "texture_amp": 0.0,
                                     "still_object": 0.0}  # a blank video with a still object has no drift
    blob = p | {"blank_fraction": 0.0}
    for i in range(3):
        a, b = (demo_data.render_video(np.random.default_rng([0, 1, i]), i, q) for q in (blob, blob | {"drift_amp": 0.0}))
        np.testing.assert_array_equal(a, b)
    blank = p | {"blank_fraction": 1.0}
    drawn = []  # the velocities render_video draws, as it draws them
    draw = demo_data._drifting_quadrants
    monkeypatch.setattr(demo_data, "_drifting_quadrants", lambda *a: drawn.append(draw(*a)) or drawn[-1])
    true, seen = [], []
    for i in range(6):
        frames = demo_data.render_video(np.random.default_rng([0, 9, i]), 0, blank)
        quads = drawn[-1]
        small = np.stack([cv2.resize(f, (16, 16), interpolation=cv2.INTER_AREA) for f in frames])
        flow = dequantise_flow(optical_flow(small, "dis", 4.0), 4.0)
        for k, (vx, vy, _) in enumerate(quads):
            r, c = divmod(k, 2)
            true.append((vx / 2, vy / 2))  # px per frame at 16 px
            seen.append(flow[:-1, 8 * r + 2:8 * r + 6, 8 * c + 2:8 * c + 6].mean(axis=(0, 1, 2)))
    true, seen = np.array(true), np.array(seen)
    assert min(math.hypot(*v) for v in true) >= 0.7 * p["drift_speed"] / 2 - 1e-9
    assert np.corrcoef(true.ravel(), seen.ravel())[0, 1] > 0.7, (true, seen)


@pytest.mark.parametrize("where_silent", [False, True])
def test_the_oracle_counts_the_cues_the_videos_really_show(where_silent):
    """`demo_data.oracle`: a video's flags are what its frames and sound show (motion, a still
    object, the class tone), and the oracle's top-1 counts a stream set's visible cues. With
    `still_where_silent` a still object stands only in (and, at still_object 1, in every) blank
    video whose audio has no class tone."""
    import numpy as np

    from gblend_cli import demo_data
    from gblend_cli.config import load_config
    from gblend_cli.media import SAMPLE_RATE, mel_band_centres_hz

    p = load_config(None)["demo"] | {"pixel_noise": 0.0, "texture_amp": 0.0, "drift_amp": 0.0, "audio_noise": 0.0,
                                     "audio_memo_amp": 0.0, "blank_fraction": 0.5,
                                     "still_object": 1.0 if where_silent else 0.5, "still_where_silent": where_silent}
    jobs = demo_data.video_jobs(Path("unused"), p | {"train_videos": 0, "test_videos": 40}, seed=0)
    kinds = set()
    for j in jobs:
        t = demo_data.video_truth(j, p)
        rng = np.random.default_rng([0, demo_data.SPLIT_IDS["val"], j["index"]])
        tone = demo_data.class_tone(j, p)
        assert (tone is None) != where_silent
        frames = demo_data.render_video(rng, j["label"], p, tone=tone).astype(np.int16)
        wave = demo_data.render_audio(rng, j["label"], p, tone=tone)
        if where_silent:
            assert t["still"] == (not t["motion"] and not t["audio_class"]), (j["index"], t)
        moves = np.abs(np.diff(frames, axis=0)).max() > 10
        shows_object = frames.max() > 0.15 * 255 + 10  # brighter than the flat background
        assert moves == t["motion"] and shows_object == (t["motion"] or t["still"]), (j["index"], t)
        f = mel_band_centres_hz()[demo_data.class_band(j["label"], p["classes"])]
        tone = np.abs(np.fft.rfft(wave))[int(round(f * len(wave) / SAMPLE_RATE))] > 100
        assert tone == t["audio_class"], (j["index"], t)
        kinds.add((t["motion"], t["still"], t["audio_class"]))
    assert {(True, False), (False, True), (False, False)} <= {k[:2] for k in kinds}  # every case was seen
    truths = [{"motion": True, "still": False, "audio_class": False},
              {"motion": False, "still": True, "audio_class": False},
              {"motion": False, "still": False, "audio_class": True},
              {"motion": False, "still": False, "audio_class": False}]
    assert demo_data.oracle_top1(truths, ("flow",), 8) == 100 * (1 + 3 / 8) / 4
    assert demo_data.oracle_top1(truths, ("rgb",), 8) == 100 * (2 + 2 / 8) / 4
    assert demo_data.oracle_top1(truths, ("audio", "rgb", "flow"), 8) == 100 * (3 + 1 / 8) / 4
    # a still object of a random colour (object_hue 0) says nothing: RGB guesses there
    val = [j for j in jobs if j["split"] == "val"]
    blind, hued = (demo_data.oracle(val, p | {"object_hue": h})["val"] for h in (0.0, 1.0))
    assert blind["cues"] == hued["cues"] and blind["cues"]["still"] > 0
    n, moving, still = blind["videos"], blind["cues"]["motion"], blind["cues"]["still"]
    assert blind["video_top1"]["rgb"] == round(100 * (moving + (n - moving) / 8) / n, 2)
    assert hued["video_top1"]["rgb"] == round(100 * (moving + still + (n - moving - still) / 8) / n, 2)


def test_demo_videos_without_the_new_cues_are_the_files_they_were():
    """`still_object`, `object_hue` and `still_where_silent` at their defaults draw nothing and
    change no pixel: data seeds published before them render the same videos."""
    import hashlib

    import numpy as np

    from gblend_cli import demo_data
    from gblend_cli.config import load_config

    # the recipe as it was before them (it now sets them)
    p = load_config(None)["demo"] | {"still_object": 0.0, "object_hue": 0.0, "still_where_silent": False,
                                     "audio_memo_amp": 0.7}
    digest = hashlib.md5()
    for i in range(12):
        rng = np.random.default_rng([3, 2, i])
        digest.update(demo_data.render_video(rng, i % 8, p).tobytes())
        digest.update(demo_data.render_audio(rng, i % 8, p).tobytes())
    assert digest.hexdigest() == "9ab012df404a5ef01ad6cd9e72d1ad1a"  # rendered by the code before them
