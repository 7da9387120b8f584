"""The packed prepared store (gblend_cli/store.py): one file per clip, JPEG frames + frame-offset
index + raw log-mel. What it must keep: the frames (within JPEG's error), the flow (within one
quantisation step), the log-mel exactly; training batches like the raw store's; whole-file
writes; damage found by `prepare-data --check` and named in one line when training reads it; and
old folders (raw .npy) still load and resume."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

import media_factory as mf
from conftest import gblend_cmd, gblend_env
from gblend_cli import store
from gblend_cli.errors import UserError
from gblend_cli.media import optical_flow

# smooth frames (no per-pixel noise, no texture): the JPEG tolerance below is for video-like content,
# not for the demo's deliberately noisy frames (which the demo keeps in the exact npy store)
DEMO = {"demo.train_videos": 24, "demo.test_videos": 8, "prepare.workers": 1, "prepare.flow": "dis",
        "demo.pixel_noise": 0.0, "demo.texture_amp": 0.0}


def textured_clip(t: int = 24, size=(48, 36)):
    rgb = mf.moving_square_frames(t, size, speed_px=1.5)
    rng = np.random.default_rng(0)
    rgb = np.clip(rgb.astype(np.int16) + rng.integers(-6, 7, rgb.shape), 0, 255).astype(np.uint8)
    mel = rng.standard_normal((t * 10, 40)).astype(np.float16)
    return rgb, optical_flow(rgb, "dis"), mel


def test_round_trip_windows(tmp_path):
    rgb, flow, mel = textured_clip()
    path = tmp_path / "clips" / f"a{store.SUFFIX}"
    size = store.write_clip(path, rgb, flow, mel)
    assert path.stat().st_size == size and [p.name for p in path.parent.iterdir()] == [path.name]  # no temp left
    r = store.Reader(tmp_path)
    assert (r.length("a", "rgb"), r.length("a", "flow"), r.length("a", "audio")) == (24, 24, 240)
    window = r.rows("a", "rgb", 5, 21)
    assert window.shape == (16, 36, 48, 3) and window.dtype == np.uint8
    err = np.abs(window.astype(np.int16) - rgb[5:21]).astype(np.float64)
    assert err.mean() < 4 and np.corrcoef(window.ravel(), rgb[5:21].ravel())[0, 1] > 0.99  # JPEG q90, right colours
    f = r.rows("a", "flow", 0, 24)
    assert f.shape == flow.shape and (np.abs(f.astype(np.int16) - flow) <= 1).mean() > 0.99
    assert (r.rows("a", "audio", 7, 107) == mel[7:107]).all()
    assert r.rows("a", "rgb", 20, 30).shape[0] == 4  # clipped at the end, like array[lo:hi]
    assert r.rows("a", "audio", 230, 260).shape == (10, 40)


def test_clip_without_flow_and_a_long_head(tmp_path):
    rgb, _, mel = textured_clip(t=600, size=(16, 16))  # 600 frames: the head is longer than one read
    store.write_clip(tmp_path / "clips" / f"b{store.SUFFIX}", rgb, None, mel)
    r = store.Reader(tmp_path)
    assert r.head("b").flow is None and r.length("b", "rgb") == 600
    assert r.rows("b", "rgb", 590, 600).shape == (10, 16, 16, 3)
    with pytest.raises(store.StoreError, match="no flow"):
        r.rows("b", "flow", 0, 1)


def test_damage_is_named(tmp_path):
    rgb, flow, mel = textured_clip()
    good = tmp_path / "clips" / f"a{store.SUFFIX}"
    store.write_clip(good, rgb, flow, mel)
    data = good.read_bytes()
    assert store.check_file(good, 24) is None
    cut = tmp_path / f"cut{store.SUFFIX}"
    cut.write_bytes(data[: len(data) // 2])
    assert "cut short" in store.check_file(cut, 24)
    junk = tmp_path / f"junk{store.SUFFIX}"
    junk.write_bytes(b"\x00" * 5000)
    assert "not a packed gblend clip" in store.check_file(junk)
    assert "24 frames, index.csv says 30" in store.check_file(good, 30)
    assert store.check_file(tmp_path / "none.gbp") == "file missing"
    flipped = bytearray(data)
    first_rgb = store.Reader(tmp_path).head("a").rgb[0]
    flipped[int(first_rgb) + 2: int(first_rgb) + 400] = b"\xff" * 398  # the first frame's JPEG destroyed
    bad = tmp_path / f"bad{store.SUFFIX}"
    bad.write_bytes(bytes(flipped))
    assert store.check_file(bad, 24) is not None


@pytest.fixture(scope="module")
def both_stores(tmp_path_factory):
    """The same small demo prepared twice (one process): raw .npy and packed."""
    tmp = tmp_path_factory.mktemp("stores")
    code = ("import json, sys\nfrom gblend_cli.config import load_config\nfrom gblend_cli.prepare import prepare_dataset\n"
            "o = json.loads(sys.argv[1])\n"
            "for store in ('npy', 'packed'):\n"
            "    r = prepare_dataset(load_config(None, o | {'prepare.store': store}), sys.argv[2] + '/' + store)\n"
            "    assert r['ok'] == 32 and r['failed'] == [], r\n")
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(DEMO), str(tmp)], env=gblend_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp


def test_packed_folder_layout_and_report(both_stores):
    packed = both_stores / "packed"
    meta = json.loads((packed / "dataset.json").read_text())
    assert meta["store"] == "packed" and meta["format_version"] == 2
    assert json.loads((both_stores / "npy" / "dataset.json").read_text())["format_version"] == 1  # old readers: npy
    assert not (packed / "rgb").exists() and len(list((packed / "clips").glob(f"*{store.SUFFIX}"))) == 32
    report = json.loads((packed / "prepare_report.json").read_text())
    b = report["bytes_per_clip"]
    assert set(b) == {"rgb", "flow", "audio", "file"} and b["file"] > b["rgb"] + b["flow"] + b["audio"]


def test_training_batches_match_the_raw_store(both_stores):
    from gblend_cli.data import ClipDataset, PreparedDataset

    cfg = {"frames": 8, "crop": 16, "flip": False, "audio_frames": 100}
    batches = {}
    for name in ("npy", "packed"):
        for cache in (0, 4 << 30):  # from the files, and held in RAM (what the demo does)
            ds = PreparedDataset(both_stores / name, cache_bytes=cache)
            assert ds._cache_ok == bool(cache)
            items = [(i, -1) for i in range(len(ds.clips))]
            batches[name, cache] = ClipDataset(ds, items, ["audio", "rgb", "flow"], cfg, train=True, seed=3).__getitems__(
                list(range(16)))
    ref = batches["npy", 0]
    for key, b in batches.items():
        assert (b["label"] == ref["label"]).all() and (b["audio"] == ref["audio"]).all(), key
        assert b["rgb"].shape == ref["rgb"].shape and b["flow"].shape == ref["flow"].shape, key
        assert (b["rgb"].float() - ref["rgb"].float()).abs().mean() < 6, key  # JPEG of 16-px frames
        assert ((b["flow"].int() - ref["flow"].int()).abs() <= 1).float().mean() > 0.98, key
    assert (batches["packed", 0]["rgb"] == batches["packed", 4 << 30]["rgb"]).all()  # RAM copy = file reads


def test_check_and_training_name_a_damaged_packed_clip(both_stores, tmp_path):
    from gblend_cli.data import PreparedDataset

    folder = tmp_path / "packed"
    shutil.copytree(both_stores / "packed", folder, ignore=shutil.ignore_patterns("media"))
    victim = sorted((folder / "clips").iterdir())[3]
    victim.write_bytes(victim.read_bytes()[:-500])
    proc = subprocess.run(gblend_cmd("prepare-data", "--check", folder), env=gblend_env(), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1
    (line,) = proc.stdout.splitlines()
    problem, clip, reason = line.split("\t")
    assert (problem, clip) == ("damaged", victim.stem) and "cut short" in reason
    ds = PreparedDataset(folder, cache_bytes=0)
    i = next(k for k, c in enumerate(ds.clips) if c.clip_id == victim.stem)
    with pytest.raises(UserError, match=rf"{victim.name}: .*prepare-data --check"):
        ds.rows("audio", i, 0, ds.length("audio", i))


def test_resume_with_another_store_is_refused_and_old_folders_resume(both_stores, tmp_path, run_gblend):
    args = ["prepare-data", "--dataset", "demo", *[x for k, v in DEMO.items() for x in ("--set", f"{k}={json.dumps(v)}")]]
    folder = tmp_path / "npy"
    shutil.copytree(both_stores / "npy", folder)
    proc = run_gblend(*args, "--set", 'prepare.store="packed"', "--out", folder)
    assert proc.returncode == 2 and "prepare.store='npy'" in proc.stderr and len(proc.stderr.splitlines()) == 1
    # a folder prepared before prepare.store existed: its prepare_config.toml has no store key
    saved = (folder / "prepare_config.toml").read_text()
    (folder / "prepare_config.toml").write_text("\n".join(l for l in saved.splitlines() if not l.startswith("store")))
    proc = run_gblend(*args, "--out", folder)
    assert proc.returncode == 0, proc.stderr
    assert "prepared 32 clips" in proc.stdout


def test_an_older_gblend_refuses_a_packed_folder_in_one_line(both_stores):
    from gblend_cli.storage import require_known_format

    meta = json.loads((both_stores / "packed" / "dataset.json").read_text())
    with pytest.raises(UserError, match="newer gblend .*upgrade gblend"):
        require_known_format(meta, "dataset.json", current=1)  # what gblend before the packed store checks
