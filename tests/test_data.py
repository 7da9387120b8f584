"""What OGR and G-Blend stand on, on the data side (gblend_cli/data.py): the held-out split V and
T' (`split_holdout`, `subset`), the horizontal flip (RGB mirrored; flow mirrored with its x
component negated) and the audio window centred on the visual clip. Checked on small prepared
folders written here with known arrays, against the definitions."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

SILENCE = np.float16(np.log(1e-6))  # a silent log-mel frame: log of the floor added to the mel power


# ============================================================================================ V and T'

def fake_ds(labels: list[tuple[int, ...]], splits: list[str] | None = None):
    """What split_holdout reads of a PreparedDataset: clips with labels, splits and source groups
    (here each clip its own group; tests/test_source_groups.py has shared ones)."""
    splits = splits or ["train"] * len(labels)
    clips = [SimpleNamespace(labels=lb, split=s, group=f"clip{i}") for i, (lb, s) in enumerate(zip(labels, splits))]
    return SimpleNamespace(clips=clips, split_indices=lambda split: [i for i, c in enumerate(clips) if c.split == split])


# class sizes 1, 2, 5, 13, 40 (+ val clips that must never enter T or V)
SIZES = {0: 1, 1: 2, 2: 5, 3: 13, 4: 40}


def _labels_and_splits(seed=0):
    rng = np.random.default_rng(seed)
    labels = [(c,) for c, n in SIZES.items() for _ in range(n)] + [(c,) for c in SIZES for _ in range(3)]
    splits = ["train"] * sum(SIZES.values()) + ["val"] * (3 * len(SIZES))
    order = rng.permutation(len(labels))  # classes interleaved in the index
    return [labels[i] for i in order], [splits[i] for i in order]


@pytest.mark.parametrize("fraction", [0.08, 0.25, 0.5])
def test_holdout_is_stratified_disjoint_and_covers_the_train_split(fraction):
    """Per class, V takes round(fraction * n) clips (at least one when the class has two or more);
    T and V are disjoint, their union is the train split, and nothing else enters them."""
    from gblend_cli.data import split_holdout

    labels, splits = _labels_and_splits()
    ds = fake_ds(labels, splits)
    T, V = split_holdout(ds, fraction, seed=3)
    train = {i for i, s in enumerate(splits) if s == "train"}
    assert not set(T) & set(V)
    assert set(T) | set(V) == train and len(T) + len(V) == len(train)
    assert T == sorted(T) and V == sorted(V)
    per_class = Counter(labels[i][0] for i in V)
    for c, n in SIZES.items():
        want = round(fraction * n)
        if want == 0 and n >= 2:
            want = 1
        assert per_class.get(c, 0) == want, (c, n, per_class)


def test_holdout_is_stable_for_a_seed_and_differs_across_seeds():
    from gblend_cli.data import split_holdout

    labels, splits = _labels_and_splits()
    a = split_holdout(fake_ds(labels, splits), 0.25, seed=1)
    assert split_holdout(fake_ds(labels, splits), 0.25, seed=1) == a
    others = [split_holdout(fake_ds(labels, splits), 0.25, seed=s)[1] for s in (2, 3, 4)]
    assert all(v != a[1] for v in others)


def test_holdout_of_multilabel_data_stratifies_on_the_first_label_and_zero_means_none():
    from gblend_cli.data import split_holdout

    labels = [(0, 1)] * 10 + [(1, 0)] * 10 + [(1,)] * 4
    T, V = split_holdout(fake_ds(labels), 0.2, seed=0)
    assert Counter(labels[i][0] for i in V) == {0: 2, 1: 3}  # first labels: 10 x class 0, 14 x class 1
    assert split_holdout(fake_ds(labels), 0.0, seed=0) == (list(range(24)), [])


def test_subset_is_a_fixed_sample_of_its_indices():
    """T' = subset(T, size, seed): `size` distinct members of T, sorted, the same for a seed and
    different for another; all of T when size is 0 or at least len(T)."""
    from gblend_cli.data import subset

    T = list(range(3, 300, 3))
    a = subset(T, 20, seed=5)
    assert len(a) == len(set(a)) == 20 and set(a) <= set(T) and a == sorted(a)
    assert subset(T, 20, seed=5) == a
    assert subset(T, 20, seed=6) != a
    assert subset(T, 0, seed=5) == T and subset(T, len(T), seed=5) == T and subset(T, 10_000, seed=5) == T


# ============================================================================================ prepared folders

def write_prepared(root: Path, clips: dict[str, dict], fps: float = 8.0) -> Path:
    """A prepared folder as prepare-data writes it: dataset.json, index.csv, <modality>/<clip>.npy.
    clips: {clip_id: {"label": int, "rgb": array, "flow": array, "audio": array}}."""
    from gblend_cli import FORMAT_VERSION

    root.mkdir(parents=True)
    modalities = ["audio", "rgb", "flow"]
    for m in modalities:
        (root / m).mkdir()
    with open(root / "index.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["clip_id", "split", "labels", "seconds", "frames", "has_audio", "status", "reason", "source"])
        for cid, c in clips.items():
            for m in modalities:
                np.save(root / m / f"{cid}.npy", c[m])
            t = len(c["rgb"])
            w.writerow([cid, "train", str(c["label"]), t / fps, t, "true", "ok", "", ""])
    meta = {"format_version": FORMAT_VERSION, "dataset": "kinetics400", "classes": ["a", "b", "c"],
            "multilabel": False, "fps": fps, "modalities": modalities, "clips": {"train": len(clips)}}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def clip_cfg(**over) -> dict:
    return {"frames": 4, "crop": 8, "flip": True, "eval_clips": 1, "audio_frames": 100} | over


def _clip(rng, t=6, side=8, audio_rows=None):
    return {"label": 1, "rgb": rng.integers(0, 256, (t, side, side, 3), dtype=np.uint8),
            "flow": rng.integers(0, 256, (t, side, side, 2), dtype=np.uint8),
            "audio": (np.arange(audio_rows or round(t / 8 * 100), dtype=np.float16)[:, None]
                      * np.ones(40, dtype=np.float16))}


# ============================================================================================ flip

def _find_box(out: np.ndarray, src: np.ndarray, crop: int):
    """(y0, x0, mirrored) such that `out` is src[:, y0:y0+crop, x0:x0+crop] (mirrored or not)."""
    hits = []
    for y0 in range(src.shape[1] - crop + 1):
        for x0 in range(src.shape[2] - crop + 1):
            win = src[:, y0:y0 + crop, x0:x0 + crop]
            for mirrored in (False, True):
                if np.array_equal(out, win[:, :, ::-1] if mirrored else win):
                    hits.append((y0, x0, mirrored))
    assert len(hits) == 1, hits
    return hits[0]


@pytest.mark.parametrize("crop", [8, 5])
def test_flip_mirrors_rgb_and_flow_and_negates_flow_x(tmp_path, crop):
    """Training with clip.flip = true: each clip is mirrored or not (both happen); RGB and flow
    share the crop and the flip; mirrored flow has x = 255 - x (the quantised negation: x in
    [-20, 20] px maps linearly to 0..255) and y unchanged."""
    from gblend_cli.data import ClipDataset, PreparedDataset

    rng = np.random.default_rng(0)
    src = _clip(rng)
    ds = PreparedDataset(write_prepared(tmp_path / "d", {"c0": src}))
    data = ClipDataset(ds, [(0, 1)] * 48, ["rgb", "flow"], clip_cfg(crop=crop), train=True, seed=4)
    seen = Counter()
    for k in range(len(data)):
        b = data.__getitems__([k])
        rgb, flow = b["rgb"][0].numpy(), b["flow"][0].numpy()
        y0, x0, mirrored = _find_box(rgb, src["rgb"][1:5], crop)
        seen[mirrored] += 1
        win = src["flow"][1:5, y0:y0 + crop, x0:x0 + crop]
        if mirrored:
            win = win[:, :, ::-1]
            assert np.array_equal(flow[..., 0], 255 - win[..., 0])
            assert np.array_equal(flow[..., 1], win[..., 1])
            px = lambda q: q.astype(np.float64) * 40 / 255 - 20  # noqa: E731 - the quantisation's inverse
            np.testing.assert_allclose(px(flow[..., 0]), -px(win[..., 0]), atol=1e-9)
        else:
            assert np.array_equal(flow, win)
    assert seen[True] and seen[False], seen


def test_no_flip_in_evaluation_or_when_off(tmp_path):
    from gblend_cli.data import ClipDataset, PreparedDataset

    src = _clip(np.random.default_rng(1))
    ds = PreparedDataset(write_prepared(tmp_path / "d", {"c0": src}))
    for train, flip in ((False, True), (True, False)):
        data = ClipDataset(ds, [(0, 2)] * 16, ["rgb", "flow"], clip_cfg(flip=flip), train=train, seed=4)
        for k in range(len(data)):
            b = data.__getitems__([k])
            assert np.array_equal(b["rgb"][0].numpy(), src["rgb"][2:6])
            assert np.array_equal(b["flow"][0].numpy(), src["flow"][2:6])


def test_a_modality_draws_the_same_clips_whatever_else_is_loaded(tmp_path):
    """Training batches with random starts, flips and crops smaller than the frame: each
    modality's clips depend only on (seed, epoch, batch), not on the other modalities loaded. The
    audio of an audio-only run is the audio of an audio+RGB run, and RGB's crops are the same with
    or without flow and audio — what lets offline G-Blend read Algorithm 2's estimators from the
    uni-modal runs (blend.terms_from_runs). (Before, the crop offsets were drawn from the stream
    of starts and flips, so from a batch's second clip on the audio windows moved once frames
    were loaded.)"""
    from gblend_cli.data import ClipDataset, PreparedDataset

    rng = np.random.default_rng(5)
    ds = PreparedDataset(write_prepared(tmp_path / "d", {f"c{i}": _clip(rng, t=16, side=12) for i in range(4)}))
    items = [(i % 4, -1) for i in range(8)]
    cfg = clip_cfg(crop=8, flip=True)

    def batch(modalities):
        data = ClipDataset(ds, items, modalities, cfg, train=True, seed=7)
        data.set_epoch(3)
        return data.__getitems__(list(range(len(items))))

    audio, rgb = batch(["audio"])["audio"], batch(["rgb"])["rgb"]
    starts = {tuple(_audio_rows(a.numpy())) for a in audio}
    assert len(starts) > 2  # the windows do move with the drawn starts: the comparison means something
    for mods in (["audio", "rgb"], ["audio", "rgb", "flow"], ["audio", "flow"]):
        assert torch.equal(batch(mods)["audio"], audio), mods
    for mods in (["rgb", "flow"], ["audio", "rgb"], ["audio", "rgb", "flow"]):
        assert torch.equal(batch(mods)["rgb"], rgb), mods


# ============================================================================================ audio window

def _audio_rows(window: np.ndarray) -> list:
    """Row index of each frame of a window (the test audio's row r holds the value r), None for silence."""
    assert (window == window[:, :1]).all()
    return [None if v == SILENCE else int(v) for v in window[:, 0]]


def _centred(centre_s: float, a: int, n: int) -> list:
    """The definition: `a` frames (10 ms each) centred on `centre_s`, silence outside 0..n-1."""
    lo = int(round(centre_s * 100 - a / 2))
    return [r if 0 <= r < n else None for r in range(lo, lo + a)]


@pytest.mark.parametrize("frames,fps,audio_frames", [(4, 8.0, 100), (8, 8.0, 60), (4, 15.0, 100), (16, 15.0, 100)])
def test_audio_window_is_centred_on_the_visual_clip(tmp_path, frames, fps, audio_frames):
    """For every clip start of a 1 s video, the log-mel window is the `audio_frames` frames centred
    on the visual clip's centre ((start + frames / 2) / fps); where it reaches past the audio, the
    missing frames are silence (a clip shorter than the window, e.g. 4 frames at 15 fps = 0.27 s,
    has its window reach before 0 s at the start and past the end at the end)."""
    from gblend_cli.data import ClipDataset, PreparedDataset

    t = int(fps)  # 1 s of video, 100 log-mel frames
    src = _clip(np.random.default_rng(2), t=t, audio_rows=100)
    ds = PreparedDataset(write_prepared(tmp_path / "d", {"c0": src}, fps=fps))
    starts = list(range(0, max(1, t - frames + 1)))
    cfg = clip_cfg(frames=frames, audio_frames=audio_frames)
    for cache in (True, False):  # RAM-cached and read-from-disk datasets
        ds = PreparedDataset(ds.root, cache_bytes=(1 << 30) if cache else 0)
        data = ClipDataset(ds, [(0, s) for s in starts], ["audio", "rgb"], cfg, train=False)
        for k, s in enumerate(starts):
            window = data.__getitems__([k])["audio"][0].numpy()
            assert window.shape == (audio_frames, 40)
            assert _audio_rows(window) == _centred((s + frames / 2) / fps, audio_frames, 100), (cache, s)


def test_audio_shorter_than_the_window_is_padded_with_silence(tmp_path):
    """A 0.5 s video (4 frames at 8 fps, 50 log-mel frames) in an 8-frame clip centred at 0.5 s:
    its 50 frames, then silence."""
    from gblend_cli.data import ClipDataset, PreparedDataset

    src = _clip(np.random.default_rng(3), t=4, audio_rows=50)
    ds = PreparedDataset(write_prepared(tmp_path / "d", {"c0": src}))
    data = ClipDataset(ds, [(0, -1)], ["audio", "rgb"], clip_cfg(frames=8), train=True, seed=1)
    window = data.__getitems__([0])["audio"][0].numpy()
    assert _audio_rows(window) == list(range(50)) + [None] * 50


def test_audio_track_ending_before_the_window_gives_silence(tmp_path):
    """An audio track shorter than its video (20 log-mel frames, 1 s of video): a window centred
    at 0.75 s lies wholly past the audio's end, so it is all silence (and no read fails)."""
    from gblend_cli.data import ClipDataset, PreparedDataset

    src = _clip(np.random.default_rng(4), t=8, audio_rows=20)
    root = write_prepared(tmp_path / "d", {"c0": src})
    for cache in (1 << 30, 0):
        data = ClipDataset(PreparedDataset(root, cache_bytes=cache), [(0, 4)], ["audio", "rgb"], clip_cfg(), train=False)
        assert _audio_rows(data.__getitems__([0])["audio"][0].numpy()) == [None] * 100
