"""`gblend prepare-data` end to end: the demo, a Kinetics-400 folder full of real-world quirks
(other containers, no audio, broken files, odd frame and sample rates, a missing file), resume
after SIGKILL, and the one-line errors of bad input. Runs the real entry point in subprocesses."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import signal
import subprocess
import time
import tomllib
from pathlib import Path

import av
import numpy as np
import pytest

import media_factory as mf
from conftest import gblend_cmd, gblend_env, seed_demo_media
from gblend_cli.config import load_config
from gblend_cli.media import mel_band_centres_hz

SILENCE = np.float16(math.log(1e-6))
COMMANDS = ["prepare-data", "train-unimodal", "train-naive", "train-gblend", "measure-ogr", "report"]


# ------------------------------------------------------------------------------------------ helpers

def read_index(out: Path) -> dict[str, dict]:
    with open(out / "index.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and list(rows[0]) == ["clip_id", "split", "labels", "seconds", "frames", "has_audio", "status",
                                      "reason", "source", "checksums", "group"]
    return {r["clip_id"]: r for r in rows}


def square_xs(rgb: np.ndarray) -> np.ndarray:
    xs = []
    for f in rgb:
        m = f[..., 1] > 128
        xs.append(np.nonzero(m)[1].mean() if m.any() else np.nan)
    return np.array(xs)


def assert_error_line(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit 2, exactly one non-empty stderr line starting with 'error:', no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stdout + proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error:"), lines[0]
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def assert_arrays(out: Path, clip: str, frames: int, side: int, fps: float) -> tuple[np.ndarray, ...]:
    """rgb (T, S, S, 3) uint8, audio (T / fps * 100, 40) float16, flow (T, S, S, 2) uint8 (square video)."""
    rgb = np.load(out / "rgb" / f"{clip}.npy")
    audio = np.load(out / "audio" / f"{clip}.npy")
    flow = np.load(out / "flow" / f"{clip}.npy")
    assert rgb.shape == (frames, side, side, 3) and rgb.dtype == np.uint8, (clip, rgb.shape, rgb.dtype)
    assert audio.shape == (round(frames / fps * 100), 40) and audio.dtype == np.float16, (clip, audio.shape)
    assert flow.shape == (frames, side, side, 2) and flow.dtype == np.uint8, (clip, flow.shape)
    assert np.isfinite(audio.astype(np.float32)).all()
    return rgb, audio, flow


# ------------------------------------------------------------------------------------------ demo

@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, demo_media):
    tmp = tmp_path_factory.mktemp("demo_cli")
    out = tmp / "demo"
    seed_demo_media(demo_media, out, 24, 8)
    proc = subprocess.run(gblend_cmd("prepare-data", "--dataset", "demo", "--out", out,
                                     "--set", "demo.train_videos=24", "--set", "demo.test_videos=8"),
                          cwd=tmp, env=gblend_env(), capture_output=True, text=True, timeout=180)
    return out, proc


def test_demo_prepare_exit_code_and_report(demo_run):
    out, proc = demo_run
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    report = json.loads((out / "prepare_report.json").read_text())
    assert (report["ok"], report["no_audio"], report["failed"]) == (32, 0, [])
    assert report["total"] == 32
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["clips"] == {"train": 24, "val": 8}
    assert len(meta["classes"]) == 8 and meta["multilabel"] is False
    cfg = load_config(None)  # the settings `--dataset demo` resolves to (recipes/demo.toml when present)
    assert meta["fps"] == cfg["prepare"]["fps"] and meta["short_side"] == cfg["prepare"]["short_side"]
    assert set(meta["modalities"]) == {"audio", "rgb", "flow"}
    index = read_index(out)
    assert len(index) == 32 and {r["status"] for r in index.values()} == {"ok"}
    assert {r["has_audio"] for r in index.values()} == {"true"}
    assert sum(r["split"] == "val" for r in index.values()) == 8


def test_demo_media_are_real_h264_aac_mp4(demo_run):
    out, _ = demo_run
    meta = json.loads((out / "dataset.json").read_text())
    videos = sorted((out / "media" / "videos").rglob("*.mp4"))
    assert len(videos) == 32
    for v in videos:
        split, label = v.parent.parent.name, v.parent.name
        assert split in ("train", "val") and label in meta["classes"]
        assert v.parent.parent.parent == out / "media" / "videos"
        assert re.fullmatch(r".{11}_\d{6}_\d{6}\.mp4", v.name)
    with av.open(str(videos[0])) as c:
        assert len(c.streams.video) == 1 and len(c.streams.audio) == 1
        assert c.streams.video[0].codec_context.name == "h264"
        assert c.streams.audio[0].codec_context.name == "aac"
        demo = load_config(None)["demo"]
        assert sum(1 for _ in c.decode(video=0)) == round(demo["seconds"] * demo["fps"])
        assert c.streams.video[0].codec_context.width == demo["size"]


def expected_demo_shape(meta: dict) -> tuple[int, int]:
    """(frames, side) of a prepared demo clip: demo.seconds at prepare.fps; square demo videos."""
    cfg = load_config(None)
    return round(cfg["demo"]["seconds"] * meta["fps"]), meta["short_side"]


def test_demo_arrays_have_the_documented_shapes(demo_run):
    out, _ = demo_run
    meta = json.loads((out / "dataset.json").read_text())
    frames, side = expected_demo_shape(meta)
    index = read_index(out)
    for clip in index:
        rgb, audio, flow = assert_arrays(out, clip, frames, side, meta["fps"])
        assert int(index[clip]["frames"]) == frames
    assert len(list((out / "rgb").glob("*.npy"))) == 32
    # content, not just shapes: the demo's audio is never silence and its pictures are not constant
    assert float(audio.astype(np.float32).max()) > math.log(1e-6) + 5
    assert rgb.std() > 5 and len(np.unique(flow)) > 3


def test_tiny_demo_fixture(tiny_demo):
    meta = json.loads((tiny_demo / "dataset.json").read_text())
    assert meta["clips"] == {"train": 32, "val": 16}
    index = read_index(tiny_demo)
    assert len(index) == 48 and all(r["status"] == "ok" for r in index.values())
    # the demo's group is the YouTube id (the Kinetics reader), one per clip: its held-out split is per clip
    assert all(r["group"] == r["clip_id"].rsplit("_", 2)[0] for r in index.values())
    assert len({r["group"] for r in index.values()}) == 48
    for m in ("rgb", "audio", "flow"):
        assert len(list((tiny_demo / m).glob("*.npy"))) == 48
    assert_arrays(tiny_demo, next(iter(index)), *expected_demo_shape(meta), meta["fps"])


# ------------------------------------------------------------------------------------------ Kinetics quirks

GOOD = {  # youtube id -> (label, file suffix, media_factory.write_video kwargs, tone or None)
    "goodMp4_001": ("abseiling", ".mp4", {"tone_hz": 500.0}, 500.0),
    "goodWebm002": ("abseiling", ".webm", {"tone_hz": 1000.0}, 1000.0),
    "goodMkv_003": ("playing guitar", ".mkv", {"audio_channels": 2, "audio_rate": 44100, "tone_hz": 2000.0}, 2000.0),
    "noAudio_004": ("playing guitar", ".mp4", {"audio_rate": None}, None),
    "fps10___005": ("zumba", ".mp4", {"fps": 10, "tone_hz": 700.0}, 700.0),
    "fps60___006": ("zumba", ".mp4", {"fps": 60, "tone_hz": 3000.0}, 3000.0),
    "st48k___007": ("abseiling", ".mp4", {"audio_rate": 48000, "audio_channels": 2, "tone_hz": 1000.0}, 1000.0),
}
BAD = {  # youtube id -> (label, what a reason must contain)
    "empty___008": ("zumba", "cannot open"),
    "truncMp4009": ("abseiling", "cannot open"),  # mp4 cut at 50%: its index (moov) is at the end
    "textMp4_010": ("playing guitar", "cannot open"),
    "audioOn_011": ("zumba", "no video stream"),
    "missing_012": ("abseiling", "not found"),
}
TRUNC_MKV = "truncMkv013"  # Matroska cut at 60%: decodes what is there (or fails with a reason)


def clip_id(ytid: str) -> str:
    return f"{ytid}_000010_000020"


@pytest.fixture(scope="module")
def kinetics_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("k400")
    root = tmp / "k400"
    rows = ["label,youtube_id,time_start,time_end,split"]

    def where(ytid, label, suffix):
        rows.append(f'"{label}",{ytid},10,20,train')
        return root / "train" / label / f"{clip_id(ytid)}{suffix}"

    for ytid, (label, suffix, kwargs, _) in GOOD.items():
        mf.write_video(where(ytid, label, suffix), **({"seconds": 2.0, "fps": 8} | kwargs))
    full = mf.write_video(tmp / "full.mp4", seconds=2.0)
    mf.write_bytes(where("empty___008", "zumba", ".mp4"), b"")
    mf.truncate_copy(full, where("truncMp4009", "abseiling", ".mp4"), 0.5)
    mf.write_bytes(where("textMp4_010", "playing guitar", ".mp4"), "not a video, just text\n" * 10)
    mf.write_audio_only(where("audioOn_011", "zumba", ".m4a"), seconds=2.0)
    where("missing_012", "abseiling", ".mp4")  # listed, never written
    mkv = mf.write_video(tmp / "full.mkv", seconds=2.0)
    mf.truncate_copy(mkv, where(TRUNC_MKV, "zumba", ".mkv"), 0.6)
    (tmp / "train.csv").write_text("\n".join(rows) + "\n")
    # pinned settings, independent of the bundled recipes/kinetics400.toml (128 px, 15 fps, TV-L1: slow)
    recipe = mf.write_bytes(tmp / "quirks.toml", '[prepare]\nfps = 8.0\nshort_side = 32\nflow = "dis"\n'
                                                 'decode_timeout_s = 60.0\n\n[clip]\ncrop = 32\n')
    out = tmp / "out"
    proc = subprocess.run(gblend_cmd("prepare-data", "--dataset", "kinetics400", "--root", root,
                                     "--annotations", tmp / "train.csv", "--out", out, "--workers", "2",
                                     "--recipe", recipe),
                          cwd=tmp, env=gblend_env(), capture_output=True, text=True, timeout=180)
    meta = json.loads((out / "dataset.json").read_text()) if (out / "dataset.json").exists() else {}
    return out, proc, meta


def test_kinetics_quirks_run_succeeds(kinetics_run):
    out, proc, meta = kinetics_run
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert meta["classes"] == ["abseiling", "playing guitar", "zumba"]
    assert (meta["dataset"], meta["fps"], meta["short_side"], meta["flow"]) == ("kinetics400", 8.0, 32, "dis")
    report = json.loads((out / "prepare_report.json").read_text())
    assert report["total"] == len(GOOD) + len(BAD) + 1
    assert report["missing_files"] == 1
    assert report["sources_in_two_splits"] == {"count": 0, "examples": []}
    assert "two splits" not in proc.stderr


def test_kinetics_quirks_good_clips_are_kept(kinetics_run):
    out, _, meta = kinetics_run
    fps, side = meta["fps"], meta["short_side"]
    index = read_index(out)
    for ytid, (label, _, _, tone) in GOOD.items():
        row = index[clip_id(ytid)]
        assert row["status"] == "ok", row
        assert int(row["frames"]) == round(2 * fps) and float(row["seconds"]) == pytest.approx(2.0)
        assert row["has_audio"] == ("false" if tone is None else "true")
        assert row["labels"] == str(meta["classes"].index(label))
        assert row["group"] == ytid  # the source group: the YouTube id
        rgb, audio, flow = assert_arrays(out, clip_id(ytid), round(2 * fps), side, fps)
        xs = square_xs(rgb)
        assert (np.diff(xs) >= -0.5).all() and xs[-1] - xs[0] > 0.5 * side, (ytid, xs)  # moves right
        if tone is not None:
            band = int(np.argmin(np.abs(mel_band_centres_hz() - tone)))
            assert int(audio.astype(np.float32)[10:-10].mean(axis=0).argmax()) == band, ytid
        # flow points right on the square
        fx = flow[:-1, ..., 0].astype(np.float32) * (40 / 255) - 20
        on = rgb[:-1, ..., 1] > 128
        assert fx[on].mean() > 0.3, (ytid, fx[on].mean())


def test_kinetics_quirks_bad_clips_are_reported(kinetics_run):
    out, proc, _ = kinetics_run
    report = json.loads((out / "prepare_report.json").read_text())
    failed = {f["clip"]: f["reason"] for f in report["failed"]}
    for ytid, (_, needle) in BAD.items():
        assert clip_id(ytid) in failed, (ytid, failed)
        assert needle in failed[clip_id(ytid)], (ytid, failed[clip_id(ytid)])
        assert "\n" not in failed[clip_id(ytid)]
        assert not (out / "rgb" / f"{clip_id(ytid)}.npy").exists()
    assert set(failed) <= {clip_id(y) for y in BAD} | {clip_id(TRUNC_MKV)}, failed
    index = read_index(out)
    for ytid in BAD:
        if ytid != "missing_012":  # a missing file is in the report, not in the index of decoded clips
            assert index[clip_id(ytid)]["status"] == "failed" and index[clip_id(ytid)]["reason"]
    assert report["ok"] == sum(r["status"] == "ok" for r in index.values())
    assert meta_clips(out) == {"train": report["ok"]}
    assert "skipped" in proc.stdout  # the run's summary (stdout) names what it skipped


def meta_clips(out: Path) -> dict:
    return json.loads((out / "dataset.json").read_text())["clips"]


def test_kinetics_quirks_truncated_mkv(kinetics_run):
    out, _, meta = kinetics_run
    row = read_index(out)[clip_id(TRUNC_MKV)]
    if row["status"] == "failed":
        assert row["reason"]
    else:  # the part that is there: fewer frames, consistent arrays
        t = int(row["frames"])
        assert 1 <= t < round(2 * meta["fps"])
        assert_arrays(out, clip_id(TRUNC_MKV), t, meta["short_side"], meta["fps"])


def test_kinetics_quirks_silent_clip(kinetics_run):
    out, _, _ = kinetics_run
    report = json.loads((out / "prepare_report.json").read_text())
    assert report["no_audio"] == 1
    audio = np.load(out / "audio" / f"{clip_id('noAudio_004')}.npy")
    assert audio.dtype == np.float16 and (audio == SILENCE).all()
    other = np.load(out / "audio" / f"{clip_id('goodMp4_001')}.npy")
    assert not (other == SILENCE).all()


# ------------------------------------------------------------------------------------------ resume

RESUME_ARGS = ["--dataset", "demo", "--set", "demo.train_videos=48", "--set", "demo.test_videos=12",
               "--workers", "1"]


def journal_clips(out: Path) -> list[str]:
    p = out / "progress.jsonl"
    if not p.exists():
        return []
    return [json.loads(ln)["clip"] for ln in p.read_text().splitlines(keepends=True) if ln.endswith("\n")]


def check_no_partial_arrays(out: Path) -> None:
    """Every visible .npy is a complete array; anything else is a hidden temp file."""
    saved = tomllib.loads((out / "prepare_config.toml").read_text())
    fps, side = saved["prepare"]["fps"], saved["prepare"]["short_side"]
    t = round(saved["demo"]["seconds"] * fps)
    for m, shape in (("rgb", (t, side, side, 3)), ("audio", (round(t / fps * 100), 40)), ("flow", (t, side, side, 2))):
        if not (out / m).exists():
            continue
        for p in (out / m).iterdir():
            if p.name.startswith("."):
                assert p.name.endswith(".tmp") and ".npy." in p.name, p.name  # never globbed as *.npy
                continue
            assert p.suffix == ".npy", p.name
            assert np.load(p).shape == shape, p.name


@pytest.fixture(scope="module")
def resumed(tmp_path_factory, demo_media):
    tmp = tmp_path_factory.mktemp("resume")
    out = tmp / "demo"
    seed_demo_media(demo_media, out, 48, 12)
    cmd = gblend_cmd("prepare-data", *RESUME_ARGS, "--out", out)
    with open(tmp / "first.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=tmp, env=gblend_env(), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            deadline = time.monotonic() + 120
            while len(journal_clips(out)) < 3 and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.005)
            os.killpg(proc.pid, signal.SIGKILL)  # the whole group: main process and its workers
        finally:
            proc.wait(10)
    time.sleep(0.2)  # let the killed workers' exits settle
    first = journal_clips(out)
    check_no_partial_arrays(out)
    mtimes = {c: {m: (out / m / f"{c}.npy").stat().st_mtime_ns for m in ("rgb", "audio", "flow")} for c in first}
    second = subprocess.run(cmd, cwd=tmp, env=gblend_env(), capture_output=True, text=True, timeout=180)
    return {"out": out, "tmp": tmp, "first": first, "mtimes": mtimes, "second": second}


def test_resume_after_sigkill(resumed):
    out, first, second = resumed["out"], resumed["first"], resumed["second"]
    assert 3 <= len(first) < 60, f"the kill came too late to test resuming ({len(first)} clips done)"
    assert second.returncode == 0, second.stderr
    assert "Traceback" not in second.stdout + second.stderr
    index = read_index(out)
    assert len(index) == 60 and all(r["status"] == "ok" for r in index.values())
    report = json.loads((out / "prepare_report.json").read_text())
    assert report["ok"] == 60 and report["failed"] == []
    check_no_partial_arrays(out)
    assert len(list((out / "rgb").glob("*.npy"))) == 60
    # the journal lists every clip once: the resumed run did only the rest
    final = journal_clips(out)
    assert sorted(set(final)) == sorted(index) and len(final) == len(set(final))


def test_resume_does_not_redecode_journaled_clips(resumed):
    out = resumed["out"]
    assert resumed["mtimes"]
    for clip, before in resumed["mtimes"].items():
        after = {m: (out / m / f"{clip}.npy").stat().st_mtime_ns for m in ("rgb", "audio", "flow")}
        assert after == before, clip


@pytest.mark.parametrize("change, key", [(["--fps", "10"], "prepare.fps"),
                                         (["--set", "prepare.flow_bound=2.5"], "prepare.flow_bound")])
def test_resume_with_other_settings_is_refused(resumed, run_gblend, change, key):
    out = resumed["out"]
    before = (out / "index.csv").read_bytes()
    saved = tomllib.loads((out / "prepare_config.toml").read_text())["prepare"]["flow_bound"]
    assert json.loads((out / "dataset.json").read_text())["flow_bound"] == saved != 2.5  # what the flow's uint8 means
    proc = run_gblend("prepare-data", *RESUME_ARGS, "--out", out, *change, cwd=resumed["tmp"])
    assert_error_line(proc, key, str(out))
    assert (out / "index.csv").read_bytes() == before  # nothing touched
    assert not (out / ".lock").exists()


def test_array_write_killed_midway_leaves_no_partial_npy(tmp_path, monkeypatch):
    """What SIGKILL timing cannot hit reliably, made deterministic: the write dies half way."""
    from gblend_cli.storage import save_npy_atomic

    target = tmp_path / "rgb" / "clip.npy"
    save_npy_atomic(target, np.zeros((4, 4), np.uint8))

    def dying_save(f, arr, **kwargs):
        f.write(b"\x93NUMPY partial")
        raise KeyboardInterrupt  # the kill arrives mid-write

    monkeypatch.setattr(np, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        save_npy_atomic(target, np.ones((4, 4), np.uint8))
    monkeypatch.undo()
    assert np.load(target).sum() == 0  # still the old, complete array
    assert [p.name for p in target.parent.iterdir()] == ["clip.npy"]  # the temp file is gone
    save_npy_atomic(target, np.ones((4, 4), np.uint8))
    assert np.load(target).sum() == 16


def test_journal_record_after_a_torn_line_survives(tmp_path):
    from gblend_cli.storage import append_jsonl, read_jsonl

    journal = tmp_path / "progress.jsonl"
    append_jsonl(journal, {"clip": "a", "status": "ok"})
    with open(journal, "a") as f:
        f.write('{"clip": "b", "sta')  # killed mid-write
    assert [r["clip"] for r in read_jsonl(journal)] == ["a"]
    append_jsonl(journal, {"clip": "c", "status": "ok"})  # the resumed run
    assert [r["clip"] for r in read_jsonl(journal)] == ["a", "c"]


def test_prepare_in_a_process_that_already_used_opencv(tmp_path):
    from gblend_cli.config import load_config
    from gblend_cli.media import optical_flow
    from gblend_cli.prepare import prepare_dataset

    optical_flow(mf.moving_square_frames(4, (32, 32)))  # OpenCV's thread pool is now running
    time.sleep(1.0)  # ... and idle (a fork while its threads still spin sometimes escapes the deadlock)
    cfg = load_config(None, {"demo.train_videos": 1, "demo.test_videos": 0, "prepare.workers": 1,
                             "prepare.decode_timeout_s": 5.0, "prepare.flow": "none"})
    report = prepare_dataset(cfg, tmp_path / "out")
    assert report["failed"] == [] and report["ok"] == 1


# ------------------------------------------------------------------------------------------ bad input

def test_unknown_recipe_key(run_gblend, tmp_path):
    assert_error_line(run_gblend("prepare-data", "--dataset", "demo", "--out", tmp_path / "o",
                                 "--set", "foo.bar=1"), "foo")
    assert_error_line(run_gblend("prepare-data", "--dataset", "demo", "--out", tmp_path / "o",
                                 "--set", "prepare.nope=1"), "prepare.nope")


def test_wrong_recipe_value_type(run_gblend, tmp_path):
    assert_error_line(run_gblend("prepare-data", "--dataset", "demo", "--out", tmp_path / "o",
                                 "--set", "train.epochs=abc"), "train.epochs", "abc")


def test_missing_root_folder(run_gblend, tmp_path):
    ann = mf.write_bytes(tmp_path / "train.csv", "label,youtube_id,time_start,time_end,split\n")
    line = assert_error_line(run_gblend("prepare-data", "--dataset", "kinetics400", "--root", tmp_path / "nope",
                                        "--annotations", ann, "--out", tmp_path / "o"), "--root")
    assert str(tmp_path / "nope") in line


def test_missing_annotations_file(run_gblend, tmp_path):
    (tmp_path / "root").mkdir()
    line = assert_error_line(run_gblend("prepare-data", "--dataset", "kinetics400", "--root", tmp_path / "root",
                                        "--annotations", tmp_path / "missing.csv", "--out", tmp_path / "o"),
                             "--annotations")
    assert str(tmp_path / "missing.csv") in line


def test_unknown_dataset_name(run_gblend, tmp_path):
    (tmp_path / "root").mkdir()
    ann = mf.write_bytes(tmp_path / "train.csv", "label,youtube_id,time_start,time_end,split\n")
    line = assert_error_line(run_gblend("prepare-data", "--dataset", "kinetics9000", "--root", tmp_path / "root",
                                        "--annotations", ann, "--out", tmp_path / "o"), "kinetics9000")
    assert "--dataset" in line and "not one of" in line and "kinetics400" in line  # names the option and the choices


def test_unknown_dataset_name_without_root(run_gblend, tmp_path):
    assert_error_line(run_gblend("prepare-data", "--dataset", "kinetics9000", "--out", tmp_path / "o"),
                      "--dataset", "kinetics9000")


def test_failed_command_does_not_claim_the_folder(run_gblend, tmp_path):
    out = tmp_path / "o"
    assert_error_line(run_gblend("prepare-data", "--dataset", "kinetics400", "--root", tmp_path / "nope",
                                 "--annotations", tmp_path / "x.csv", "--out", out, "--fps", "10"), "--root")
    proc = run_gblend("prepare-data", "--dataset", "demo", "--set", "demo.train_videos=1",
                      "--set", "demo.test_videos=1", "--out", out, "--flow", "none")
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("name,recipe_dir", [("kinetics600", None), ("kinetics400", None),
                                             ("kinetics600", "prepared/k600")])
def test_default_out_folder_follows_the_dataset(run_gblend, tmp_path, name, recipe_dir):
    """Without --out, prepare-data writes to the recipe's dataset.data_dir: data/<name> for a
    dataset without a recipe of its own (kinetics600: the built-in defaults), the dataset's recipe
    (kinetics400) or a --recipe that sets data_dir; never the demo's folder."""
    import tomllib

    from gblend_cli.config import RECIPES_DIR

    args = []
    if recipe_dir:
        recipe = mf.write_bytes(tmp_path / "mine.toml", f'[dataset]\ndata_dir = "{recipe_dir}"\n')
        args = ["--recipe", recipe]
        want = recipe_dir
    elif (RECIPES_DIR / f"{name}.toml").exists():
        want = tomllib.loads((RECIPES_DIR / f"{name}.toml").read_text())["dataset"]["data_dir"]
        assert want, name
    else:
        want = f"data/{name}"
    (tmp_path / "root").mkdir()
    ann = mf.write_bytes(tmp_path / "train.csv", "label,youtube_id,time_start,time_end,split\n"
                                                 "zumba,abcdefghijk,10,20,train\n")  # file missing: no decoding
    proc = run_gblend("prepare-data", "--dataset", name, "--root", "root", "--annotations", ann, *args)
    assert proc.returncode == 0, proc.stderr
    reports = sorted(str(p.parent.relative_to(tmp_path)) for p in tmp_path.rglob("prepare_report.json"))
    assert reports == [want], reports
    meta = json.loads((tmp_path / want / "dataset.json").read_text())
    assert meta["dataset"] == name


# ------------------------------------------------------------------------------------------ help

@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_help_has_an_example(command):
    from typer.testing import CliRunner

    from gblend_cli.cli import app

    result = CliRunner().invoke(app, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.output
    assert "gblend " + command in result.output  # the example runs this very command


def test_top_level_help_lists_every_command():
    from typer.testing import CliRunner

    from gblend_cli.cli import app

    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in COMMANDS:
        assert command in result.output


def test_a_source_video_in_train_and_val_is_reported(tmp_path):
    """Clips of one media file in two splits (a csv cutting train and val spans from one video):
    prepare-data succeeds and warns, naming it; the report counts it."""
    root = tmp_path / "media"
    for name in ("shared", "own_a", "own_b"):
        mf.write_video(root / f"{name}.mp4", seconds=3.0)
    rows = ["path,label,split,start,end", "shared.mp4,a,train,0,1.5", "shared.mp4,a,val,1.5,3",
            "own_a.mp4,a,train,,", "own_b.mp4,b,val,,"]
    (tmp_path / "list.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    proc = subprocess.run(gblend_cmd("prepare-data", "--dataset", "csv", "--root", root, "--annotations",
                                     tmp_path / "list.csv", "--out", out, "--workers", "1"),
                          cwd=tmp_path, env=gblend_env(), capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "prepare_report.json").read_text())
    assert report["ok"] == 4
    assert report["sources_in_two_splits"] == {"count": 1, "examples": ["shared.mp4"]}
    assert "warning: 1 source videos have clips in two splits (e.g. shared.mp4)" in proc.stderr
