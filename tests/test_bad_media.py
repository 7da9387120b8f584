"""A corpus of broken and exotic media laid out as a Kinetics-400 dataset, prepared by the real
`gblend prepare-data` (README "Guarantees": bad media never stops a preparation).

Every usable clip must be kept (status ok, consistent arrays), every unusable one must be listed
in prepare_report.json `failed` with a reason, and the whole run must finish (no hang, no
traceback). The per-file decode timeout is tested on the worker pool itself with a FIFO that
blocks the decoder's open() forever (the manifest readers only hand regular files to the pool)."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

import media_factory as mf
from conftest import gblend_cmd, gblend_env

FPS, SIDE = 8.0, 32
RECIPE = ('[prepare]\nfps = 8.0\nshort_side = 32\nflow = "dis"\ndecode_timeout_s = 60.0\n\n'
          '[clip]\ncrop = 32\n')
UNICODE_LABEL = "café crème brûlée"  # a class folder with non-ASCII letters and spaces
UNICODE_ID = "bäd 0000ü14"  # a youtube id (so a file name) with a space and non-ASCII letters


# ------------------------------------------------------------------------------------------ writers

def without_permission_override() -> None:
    """preexec_fn for a command started as root: drop CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from
    the capability bounding set before exec, so the command (still root, but without what lets root
    ignore file modes) cannot read a mode-000 file, as any other user could not."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP (needs CAP_SETPCAP)
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


PREEXEC = without_permission_override if os.geteuid() == 0 else None


def write_vfr(path: Path, times: list[float], size=(32, 32), speed_px_s: float = 10.0) -> Path:
    """Variable frame rate: frames at the irregular times `times` (s); the square's left edge at
    time t is int(speed * t)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=25)
        vs.width, vs.height, vs.pix_fmt = size[0], size[1], "yuv420p"
        vs.codec_context.time_base = Fraction(1, 1000)
        vs.time_base = Fraction(1, 1000)
        vs.options = {"threads": "1", "preset": "ultrafast", "crf": "14"}
        for t in times:
            frame = av.VideoFrame.from_ndarray(mf.draw_square_frame(size, int(speed_px_s * t)), format="rgb24")
            frame.pts, frame.time_base = int(round(t * 1000)), Fraction(1, 1000)
            for pkt in vs.encode(frame):
                out.mux(pkt)
        for pkt in vs.encode(None):
            out.mux(pkt)
    return path


VFR_TIMES = [0.0, 0.04, 0.3, 0.33, 0.9, 1.0, 1.05, 1.5, 1.9]


def _random_bytes(path: Path) -> Path:
    return mf.write_bytes(path, np.random.default_rng(1).integers(0, 256, 20000, dtype=np.uint8).tobytes())


# kind -> (youtube id, label, suffix, expectation, writer(path, tmp) or None)
# expectation: "ok" (kept, has audio), "ok-silent" (kept, has_audio=false), "failed" (listed with a
# reason), "either" (kept with consistent arrays, or listed with a reason)
KINDS: dict[str, tuple] = {
    "good_mp4": ("bad00000001", "abseiling", ".mp4", "ok", lambda p, t: mf.write_video(p, seconds=2.0, tone_hz=500.0)),
    "good_webm": ("bad00000002", "zumba", ".webm", "ok", lambda p, t: mf.write_video(p, seconds=2.0, tone_hz=1000.0)),
    "empty_file": ("bad00000003", "abseiling", ".mp4", "failed", lambda p, t: mf.write_bytes(p, b"")),
    "truncated_mp4": ("bad00000004", "zumba", ".mp4", "failed",
                      lambda p, t: mf.truncate_copy(mf.write_video(t / "full.mp4", seconds=2.0), p, 0.5)),
    "truncated_mkv_midstream": ("bad00000005", "zumba", ".mkv", "either",
                                lambda p, t: mf.truncate_copy(mf.write_video(t / "full.mkv", seconds=2.0), p, 0.6)),
    "corrupt_midfile": ("bad00000006", "abseiling", ".mp4", "either",
                        lambda p, t: mf.corrupt_copy(mf.write_video(t / "full2.mp4", seconds=2.0), p,
                                                     start_fraction=0.4)),
    "random_bytes": ("bad00000007", "abseiling", ".mp4", "failed", lambda p, t: _random_bytes(p)),
    "text_as_mkv": ("bad00000008", "zumba", ".mkv", "failed", lambda p, t: mf.write_bytes(p, "hello\n" * 100)),
    "audio_only": ("bad00000009", "zumba", ".m4a", "failed", lambda p, t: mf.write_audio_only(p, seconds=2.0)),
    "video_only": ("bad00000010", "abseiling", ".mp4", "ok-silent",
                   lambda p, t: mf.write_video(p, seconds=2.0, audio_rate=None)),
    "one_frame": ("bad00000011", "zumba", ".mp4", "ok", lambda p, t: mf.write_video(p, seconds=1 / 8, fps=8)),
    "short_0.2s": ("bad00000012", "abseiling", ".mp4", "ok", lambda p, t: mf.write_video(p, seconds=0.2, fps=25)),
    "4k_two_frames": ("bad00000013", "zumba", ".mp4", "ok",
                      lambda p, t: mf.write_video(p, seconds=2 / 25, fps=25, size=(3840, 2160), pattern="still")),
    "non_ascii_space_name": (UNICODE_ID, UNICODE_LABEL, ".mp4", "ok", lambda p, t: mf.write_video(p, seconds=2.0)),
    "yuv444p": ("bad00000015", "abseiling", ".mp4", "ok",
                lambda p, t: mf.write_video(p, seconds=2.0, pix_fmt="yuv444p")),
    "hevc_10bit": ("bad00000016", "zumba", ".mp4", "ok",
                   lambda p, t: mf.write_video(p, seconds=2.0, codec="libx265", pix_fmt="yuv420p10le")),
    "variable_frame_rate": ("bad00000017", "abseiling", ".mp4", "ok-silent", lambda p, t: write_vfr(p, VFR_TIMES)),
    "audio_192khz": ("bad00000018", "zumba", ".mkv", "ok",
                     lambda p, t: mf.write_video(p, seconds=2.0, audio_rate=192000, audio_codec="pcm_s16le",
                                                 tone_hz=1000.0)),
    "audio_384khz": ("bad00000019", "abseiling", ".mkv", "ok",
                     lambda p, t: mf.write_video(p, seconds=2.0, audio_rate=384000, audio_codec="pcm_s16le",
                                                 tone_hz=2000.0)),
    "audio_8_channels": ("bad00000020", "zumba", ".mkv", "ok",
                         lambda p, t: mf.write_video(p, seconds=2.0, audio_rate=48000, audio_channels=8,
                                                     audio_codec="pcm_s16le", tone_hz=1000.0)),
    "unreadable_permissions": ("bad00000021", "abseiling", ".mp4", "failed", None),  # built in the fixture
    "symlink_loop_a": ("bad00000022", "zumba", ".mp4", "failed", None),
    "symlink_loop_b": ("bad00000023", "zumba", ".mp4", "failed", None),
    "dangling_symlink": ("bad00000024", "abseiling", ".mp4", "failed", None),
    "directory_named_mp4": ("bad00000025", "abseiling", ".mp4", "failed", None),
}
TONES = {"good_mp4": 500.0, "good_webm": 1000.0, "audio_192khz": 1000.0, "audio_384khz": 2000.0,
         "audio_8_channels": 1000.0}
EXPECTED_FRAMES = {"one_frame": 1, "short_0.2s": 2, "4k_two_frames": 1, "variable_frame_rate": 17}


def clip_file(root: Path, kind: str) -> Path:
    ytid, label, suffix, _, _ = KINDS[kind]
    return root / "train" / label / f"{ytid}_000000_000010{suffix}"


def clip_id(kind: str) -> str:
    """The id prepare-data reports (ids are sanitised to [A-Za-z0-9_.-])."""
    import re

    return re.sub(r"[^A-Za-z0-9_.-]", "_", f"{KINDS[kind][0]}_000000_000010")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("badmedia")
    root = tmp / "k400"
    scratch = tmp / "scratch"
    scratch.mkdir()
    for kind, (_, _, _, _, writer) in KINDS.items():
        if writer is not None:
            writer(clip_file(root, kind), scratch)
    # unreadable file: a good video with mode 000 (as root, prepare-data runs without the
    # capabilities that bypass file permissions: see without_permission_override)
    unreadable = mf.write_video(clip_file(root, "unreadable_permissions"), seconds=1.0)
    os.chmod(unreadable, 0)
    try:
        probe = subprocess.run([sys.executable, "-c", "import os, sys; sys.exit(1 if os.access(sys.argv[1], os.R_OK) else 0)",
                                str(unreadable)], preexec_fn=PREEXEC, timeout=60)
        perms_effective = probe.returncode == 0
    except (OSError, subprocess.SubprocessError):
        perms_effective = False
    # a.mp4 -> b.mp4 -> a.mp4
    a, b = clip_file(root, "symlink_loop_a"), clip_file(root, "symlink_loop_b")
    a.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(b.name, a)
    os.symlink(a.name, b)
    os.symlink("does_not_exist.mp4", clip_file(root, "dangling_symlink"))
    clip_file(root, "directory_named_mp4").mkdir(parents=True)
    rows = ["label,youtube_id,time_start,time_end,split"]
    rows += [f'"{label}","{ytid}",0,10,train' for ytid, label, _, _, _ in KINDS.values()]
    ann = tmp / "train.csv"
    ann.write_text("\n".join(rows) + "\n", encoding="utf-8")
    recipe = mf.write_bytes(tmp / "bad_media.toml", RECIPE)
    out = tmp / "out"
    t0 = time.monotonic()
    proc = subprocess.run(gblend_cmd("prepare-data", "--dataset", "kinetics400", "--root", root, "--annotations", ann,
                                     "--out", out, "--workers", "2", "--recipe", recipe,
                                     "--set", "prepare.decode_timeout_s=60"),
                          cwd=tmp, env=gblend_env(), capture_output=True, text=True, timeout=240,
                          preexec_fn=PREEXEC if perms_effective else None)
    seconds = time.monotonic() - t0
    os.chmod(unreadable, 0o644)
    report = json.loads((out / "prepare_report.json").read_text()) if (out / "prepare_report.json").exists() else {}
    index = {}
    if (out / "index.csv").exists():
        with open(out / "index.csv", newline="", encoding="utf-8") as f:
            index = {r["clip_id"]: r for r in csv.DictReader(f)}
    return {"out": out, "proc": proc, "seconds": seconds, "report": report, "index": index,
            "perms_effective": perms_effective, "root": root}


def test_corpus_has_at_least_15_kinds():
    assert len(KINDS) >= 15
    assert {"ok", "ok-silent", "failed", "either"} == {v[3] for v in KINDS.values()}


def test_bad_media_run_finishes_cleanly(corpus):
    proc = corpus["proc"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    assert corpus["seconds"] < 150, f"prepare-data took {corpus['seconds']:.0f} s on {len(KINDS)} small files"
    report = corpus["report"]
    assert report["total"] == len(KINDS)
    ok = [r for r in corpus["index"].values() if r["status"] == "ok"]
    assert report["ok"] == len(ok)
    meta = json.loads((corpus["out"] / "dataset.json").read_text())
    assert meta["clips"] == {"train": len(ok)}
    assert UNICODE_LABEL in meta["classes"]
    # every clip is accounted for exactly once: kept, or failed with a reason
    failed = {f["clip"] for f in report["failed"]}
    assert len(failed) == len(report["failed"])
    assert {r["clip_id"] for r in ok} | failed == {clip_id(k) for k in KINDS}
    assert not {r["clip_id"] for r in ok} & failed


@pytest.mark.parametrize("kind", list(KINDS))
def test_each_kind_is_kept_or_reported(corpus, kind):
    expect = KINDS[kind][3]
    if kind == "unreadable_permissions" and not corpus["perms_effective"]:
        pytest.skip("root without CAP_SETPCAP: cannot drop the capabilities that let root read a mode-000 "
                    "file, so there is no unreadable file to test")
    cid = clip_id(kind)
    out = corpus["out"]
    failed = {f["clip"]: f["reason"] for f in corpus["report"].get("failed", [])}
    row = corpus["index"].get(cid)
    if expect == "failed" or (expect == "either" and cid in failed):
        assert cid in failed, (kind, row)
        assert failed[cid].strip() and "\n" not in failed[cid], (kind, failed[cid])
        for m in ("rgb", "audio", "flow"):
            assert not (out / m / f"{cid}.npy").exists(), (kind, m)
        if kind == "unreadable_permissions":
            assert "permission" in failed[cid] or "readable" in failed[cid], failed[cid]
        if kind == "audio_only":
            assert "no video stream" in failed[cid]
        return
    assert cid not in failed, (kind, failed.get(cid))
    assert row is not None and row["status"] == "ok", (kind, row)
    assert row["has_audio"] == ("false" if expect == "ok-silent" else "true"), (kind, row)
    rgb = np.load(out / "rgb" / f"{cid}.npy")
    audio = np.load(out / "audio" / f"{cid}.npy")
    flow = np.load(out / "flow" / f"{cid}.npy")
    t = int(row["frames"])
    assert rgb.dtype == np.uint8 and rgb.ndim == 4 and rgb.shape[0] == t >= 1 and rgb.shape[3] == 3, (kind, rgb.shape)
    assert min(rgb.shape[1:3]) == SIDE, (kind, rgb.shape)
    assert flow.dtype == np.uint8 and flow.shape == rgb.shape[:3] + (2,), (kind, flow.shape)
    assert audio.dtype == np.float16 and audio.shape == (round(t / FPS * 100), 40), (kind, audio.shape)
    assert np.isfinite(audio.astype(np.float32)).all(), kind
    if kind in EXPECTED_FRAMES:
        assert t == EXPECTED_FRAMES[kind], (kind, t)
    elif expect != "either":
        assert t == round(2.0 * FPS), (kind, t)
    if kind == "4k_two_frames":
        assert rgb.shape[1:3] == (SIDE, round(SIDE * 3840 / 2160)), rgb.shape
    if expect == "ok-silent":
        assert (audio == np.float16(math.log(1e-6))).all(), kind
    if kind in TONES:  # the tone survives resampling / down-mixing: the right mel band is loudest
        from gblend_cli.media import mel_band_centres_hz

        band = int(np.argmin(np.abs(mel_band_centres_hz() - TONES[kind])))
        assert int(audio.astype(np.float32)[10:-10].mean(axis=0).argmax()) == band, kind


def test_variable_frame_rate_frames_follow_timestamps(corpus):
    """Each output frame k shows the last source frame at or before k / fps."""
    cid = clip_id("variable_frame_rate")
    rgb = np.load(corpus["out"] / "rgb" / f"{cid}.npy")
    side = mf.square_side((32, 32))
    for k, frame in enumerate(rgb):
        src = max(t for t in VFR_TIMES if t <= k / FPS + 1e-6)
        cols = np.nonzero(frame[..., 1] > 128)[1]
        assert cols.size, k
        assert abs(cols.mean() - (int(10.0 * src) + (side - 1) / 2)) <= 1.0, (k, src, cols.mean())


def test_symlink_loop_reason_is_not_called_an_escape(corpus):
    failed = {f["clip"]: f["reason"] for f in corpus["report"]["failed"]}
    reason = failed[clip_id("symlink_loop_a")]
    assert "escapes" not in reason and ("loop" in reason or "symlink" in reason), reason


# ------------------------------------------------------------------------------------------ decode timeout

def test_hung_decoder_is_reported_as_a_timeout_and_the_run_goes_on(tmp_path, time_limit):
    """A FIFO named .mp4 blocks PyAV's open() forever: the pool kills that worker after
    `decode_timeout_s`, reports "decode timeout", and the next file is still prepared."""
    from gblend_cli.prepare import prepare_one
    from gblend_cli.workers import ClipPool

    fifo = tmp_path / "media" / "hung.mp4"
    fifo.parent.mkdir()
    os.mkfifo(fifo)
    good = mf.write_video(tmp_path / "media" / "good.mp4", seconds=1.0)
    settings = {"fps": FPS, "short_side": SIDE, "max_seconds": 0.0, "flow": "none", "out": str(tmp_path / "out")}
    jobs = [{"clip_id": "hung", "path": str(fifo), "labels": [0], "split": "train", "start": None, "end": None},
            {"clip_id": "good", "path": str(good), "labels": [0], "split": "train", "start": None, "end": None}]
    timeout = 2.0
    with time_limit(90):
        pool = ClipPool(1, prepare_one, settings, 1, timeout)
        try:
            t0 = time.monotonic()
            recs = {r["clip"]: r for r in pool.run(jobs)}
            elapsed = time.monotonic() - t0
        finally:
            pool.close()
    assert recs["hung"]["status"] == "failed"
    assert "decode timeout" in recs["hung"]["reason"], recs["hung"]
    assert recs["good"]["status"] == "ok", recs["good"]
    assert np.load(tmp_path / "out" / "rgb" / "good.npy").shape == (8, SIDE, SIDE, 3)
    assert timeout <= elapsed < timeout + 45, elapsed
    assert all(not w["proc"].is_alive() for w in pool.workers)  # close() leaves no worker behind
