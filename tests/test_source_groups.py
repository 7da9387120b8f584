"""Source groups and the held-out split V (gblend_cli/data.py `split_holdout`, the readers'
`ClipSpec.group`, index.csv "group"): clips cut from one source video (a UCF-101 group gXX, an
EPIC-Kitchens video, a YouTube id with several clips) are held out together, so V holds no
near-duplicate of a training clip. When every group is one clip (the demo, folders prepared
before groups existed) the split is the per-clip split of earlier versions, draw for draw.

The manifests are written here in each dataset's real layout (annotation files and media file
names, as tests/test_manifests.py writes them)."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from gblend_cli.data import PreparedDataset, split_holdout
from gblend_cli.manifests import read_manifest


def old_split_holdout(ds, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """split_holdout before source groups (gblend_cli/data.py at ab45f67), verbatim."""
    train = ds.split_indices("train")
    if fraction <= 0:
        return train, []
    rng = np.random.default_rng([seed, 8])
    by_class: dict[int, list[int]] = {}
    for i in train:
        by_class.setdefault(ds.clips[i].labels[0] if ds.clips[i].labels else -1, []).append(i)
    t, v = [], []
    for _, idx in sorted(by_class.items()):
        idx = list(rng.permutation(idx))
        k = int(round(fraction * len(idx)))
        if k == 0 and len(idx) >= 2:
            k = 1
        v += idx[:k]
        t += idx[k:]
    return sorted(t), sorted(v)


def fake_ds(labels, splits=None, groups=None):
    """What split_holdout reads of a PreparedDataset: clips with labels, splits and groups."""
    splits = splits or ["train"] * len(labels)
    groups = groups or [f"clip{i}" for i in range(len(labels))]
    clips = [SimpleNamespace(labels=tuple(lb), split=s, group=g) for lb, s, g in zip(labels, splits, groups)]
    return SimpleNamespace(clips=clips,
                           split_indices=lambda split: [i for i, c in enumerate(clips) if c.split == split])


def manifest_ds(m):
    """A manifest's clips as split_holdout reads them (what prepare-data's index.csv carries)."""
    return fake_ds([c.labels for c in m.clips], [c.split for c in m.clips], [c.group for c in m.clips])


def assert_groups_whole(ds, T, V):
    train = ds.split_indices("train")
    assert sorted(T + V) == train and not set(T) & set(V)
    in_t, in_v = {ds.clips[i].group for i in T}, {ds.clips[i].group for i in V}
    assert not in_t & in_v, sorted(in_t & in_v)[:5]


# ============================================================================================ singletons

@pytest.mark.parametrize("n_train,n_classes", [(1, 1), (7, 3), (60, 5), (403, 8)])
def test_singleton_groups_give_the_split_of_earlier_versions(n_train, n_classes):
    """Every group one clip: T and V are exactly the per-clip split's (same draws, same result),
    for several sizes, fractions and seeds; labels include multi-label clips, a clip without
    labels, and evaluation clips interleaved with the training ones."""
    rng = np.random.default_rng(n_train)
    labels = [tuple(rng.choice(n_classes, size=rng.integers(1, 3), replace=False).tolist()) for _ in range(n_train)]
    labels += [()] if n_train > 1 else []
    labels += [(int(c),) for c in rng.integers(0, n_classes, 9)]
    splits = ["train"] * (len(labels) - 9) + ["val"] * 9
    order = rng.permutation(len(labels))
    labels, splits = [labels[i] for i in order], [splits[i] for i in order]
    held_out = 0
    for fraction in (0.0, 0.08, 0.2, 0.5, 0.9):
        for seed in (0, 1, 2, 17):
            ds = fake_ds(labels, splits)
            got = split_holdout(ds, fraction, seed)
            assert got == old_split_holdout(ds, fraction, seed), (fraction, seed)
            held_out += len(got[1])
    assert held_out > 0 or n_train == 1  # V is not always empty: the comparison means something


# ============================================================================================ groups

def random_groups(seed: int, n_groups: int = 120, n_classes: int = 5):
    """Groups of 1..8 clips; a group's clips mostly share a class, some are mixed."""
    rng = np.random.default_rng(seed)
    labels, groups = [], []
    for g in range(n_groups):
        c = int(rng.integers(n_classes))
        for _ in range(int(rng.integers(1, 9))):
            labels.append((c if rng.random() < 0.85 else int(rng.integers(n_classes)),))
            groups.append(f"video{g:03d}")
    order = rng.permutation(len(labels))  # a group's clips are scattered over the index
    splits = ["val" if rng.random() < 0.1 else "train" for _ in labels]
    return [labels[i] for i in order], [splits[i] for i in order], [groups[i] for i in order]


def group_class(ds, members):
    firsts = Counter(ds.clips[i].labels[0] for i in members)
    return max(firsts, key=firsts.__getitem__)


@pytest.mark.parametrize("fraction", [0.08, 0.2, 0.5])
def test_groups_are_whole_stratified_and_seeded(fraction):
    """Every group is wholly in T or wholly in V; per class (a group's class: its clips' most
    common label) V holds round(fraction * n) clips give or take less than the class's largest
    group; the split is the same for a seed and differs across seeds."""
    labels, splits, groups = random_groups(3)
    ds = fake_ds(labels, splits, groups)
    members: dict[str, list[int]] = {}
    for i in ds.split_indices("train"):
        members.setdefault(groups[i], []).append(i)
    by_class: dict[int, list[list[int]]] = {}
    for m in members.values():
        by_class.setdefault(group_class(ds, m), []).append(m)
    splits_seen = []
    for seed in (0, 1, 2, 3):
        T, V = split_holdout(ds, fraction, seed)
        assert (T, V) == split_holdout(ds, fraction, seed)
        assert_groups_whole(ds, T, V)
        v = set(V)
        for c, gs in by_class.items():
            n = sum(len(g) for g in gs)
            target = max(1, round(fraction * n))
            count = sum(len(g) for g in gs if g[0] in v)
            assert abs(count - target) < max(len(g) for g in gs), (seed, c, count, target)
        splits_seen.append(V)
    assert len({tuple(v) for v in splits_seen}) == len(splits_seen)


def test_a_single_group_stays_in_t_and_oversized_groups_fall_back_to_the_smallest():
    """At 8%. Class 0: one group of 5 clips (target 1): passed over, and a class's only group is
    never the fallback: all in T. Class 1: groups of 10, 10 and 3 clips (target 2): the 10s are
    passed over, the 3 goes to V. Class 2: two groups of 6 (target 1): neither fits, one of them
    goes to V (a class with two groups is never left out of V)."""
    labels = [(0,)] * 5 + [(1,)] * 23 + [(2,)] * 12
    groups = ["a"] * 5 + ["b"] * 10 + ["c"] * 10 + ["d"] * 3 + ["e"] * 6 + ["f"] * 6
    ds = fake_ds(labels, groups=groups)
    seen_class2 = set()
    for seed in range(8):
        T, V = split_holdout(ds, 0.08, seed)
        assert_groups_whole(ds, T, V)
        by_group = Counter(groups[i] for i in V)
        assert set(by_group) - {"e", "f"} == {"d"} and len(set(by_group) & {"e", "f"}) == 1, by_group
        seen_class2 |= set(by_group) & {"e", "f"}
    assert seen_class2 == {"e", "f"}  # which of the two is drawn


def test_a_mixed_group_belongs_to_its_majority_label_and_a_tie_to_the_first_met():
    """At 30%: a group of labels 1, 0, 0 is class 0, alone there (target 1 clip, a group of 3 is
    passed over), and class 1's single clip has target 0: V is empty (were the group class 1,
    class 1 would have 4 clips, target 1, and its single clip would go to V). A group of labels
    1, 0 (a tie) is class 1, the label met first: beside the single clip of class 1 (3 clips,
    target 1) the single clip is held out (were it class 0, V would be empty)."""
    for seed in range(4):
        majority = fake_ds([(1,), (0,), (0,), (1,)], groups=["g", "g", "g", "s"])
        assert split_holdout(majority, 0.3, seed) == ([0, 1, 2, 3], [])
        tie = fake_ds([(1,), (0,), (1,)], groups=["g", "g", "s"])
        assert split_holdout(tie, 0.3, seed) == ([0, 1], [2])


# ============================================================================================ readers

def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x00media")
    return path


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


UCF_CLASSES = ["ApplyEyeMakeup", "HandstandPushups", "YoYo"]


def ucf_tree(tmp: Path):
    """UCF-101 as released: <Class>/v_<Class>_gXX_cYY.avi; groups g08..g25 train (1-5 clips each),
    g01..g02 test; the lists spell HandStandPushups where the files say HandstandPushups."""
    root, lists = tmp / "UCF-101", tmp / "ucfTrainTestlist"
    rng = np.random.default_rng(0)
    train, test = [], []
    for k, cls in enumerate(UCF_CLASSES):
        listed = "HandStandPushups" if cls == "HandstandPushups" else cls
        for g in range(1, 26):
            for c in range(1, int(rng.integers(1, 6)) + 1):
                touch(root / cls / f"v_{cls}_g{g:02d}_c{c:02d}.avi")
                rel = f"{cls}/v_{listed}_g{g:02d}_c{c:02d}.avi"
                (test.append(rel) if g <= 2 else train.append(f"{rel} {k + 1}"))
    write(lists / "classInd.txt", "".join(f"{k + 1} {c}\r\n" for k, c in enumerate(UCF_CLASSES)))
    write(lists / "trainlist01.txt", "\r\n".join(train) + "\r\n")
    write(lists / "testlist01.txt", "\r\n".join(test) + "\r\n")
    return read_manifest("ucf101", root, sorted(lists.iterdir()))


def test_ucf101_group_is_class_and_gxx_and_v_shares_no_group_with_t(tmp_path):
    """UCF-101's group is class + gXX (the class as classInd.txt spells it); at the paper's 8% and
    at 20%, no group has clips in both T and V, while the per-clip split of earlier versions
    does put clips of one group on both sides (what this change is for)."""
    m = ucf_tree(tmp_path)
    for c in m.clips:
        g = c.clip_id.split("_g")[1][:2]
        assert c.group == f"{UCF_CLASSES[c.labels[0]]}_g{g}", c
    assert len({c.group for c in m.clips if c.split == "train"}) == 3 * 23
    ds = manifest_ds(m)
    leaks = 0
    for fraction in (0.08, 0.2):
        for seed in range(4):
            T, V = split_holdout(ds, fraction, seed)
            assert_groups_whole(ds, T, V)
            assert {ds.clips[i].labels[0] for i in V} == {0, 1, 2}  # every class measured on V
            old_T, old_V = old_split_holdout(ds, fraction, seed)
            leaks += bool({ds.clips[i].group for i in old_T} & {ds.clips[i].group for i in old_V})
    assert leaks == 8


def epic_manifest(tmp: Path):
    root = tmp / "EPIC-KITCHENS"
    cols = ("narration_id,participant_id,video_id,narration_timestamp,start_timestamp,stop_timestamp,start_frame,"
            "stop_frame,narration,verb,verb_class,noun,noun_class,all_nouns,all_noun_classes\n")
    rows = []
    for video in ("P01_01", "P01_02", "P02_01", "P03_05", "P04_11", "P05_02"):
        touch(root / video[:3] / "videos" / f"{video}.MP4")
        for k in range(6):
            verb = k % 2
            rows.append(f"{video}_{k},{video[:3]},{video},00:00:00.000,00:00:{k * 5:02d}.00,00:00:{k * 5 + 3:02d}.00,"
                        f"0,90,x,{'take' if verb == 0 else 'open'},{verb},cup,1,['cup'],[1]\n")
    ann = write(tmp / "EPIC_100_train.csv", cols + "".join(rows))
    return read_manifest("epic-kitchens", root, [ann]), lambda c: c.clip_id.rsplit("_", 1)[0]  # narration_id


def kinetics_manifest(tmp: Path):
    root = tmp / "k400"
    rows = ["label,youtube_id,time_start,time_end,split"]
    for n in range(12):
        ytid = f"ytid{n:03d}abcd"
        for start in (0, 30)[: 1 + n % 2]:  # some videos yield two clips
            label = ("zumba", "yoga")[n % 3 == 0]
            touch(root / "train" / label / f"{ytid}_{start:06d}_{start + 10:06d}.mp4")
            rows.append(f"{label},{ytid},{start},{start + 10},train")
    ann = write(tmp / "train.csv", "\n".join(rows) + "\n")
    return read_manifest("kinetics400", root, [ann]), lambda c: c.clip_id.rsplit("_", 2)[0]


def vggsound_manifest(tmp: Path):
    root = tmp / "vggsound"
    rows = []
    for n in range(12):
        ytid = f"vgg{n:03d}_-abcd"
        for start in (0, 30, 60)[: 1 + n % 3]:
            touch(root / "video" / f"{ytid}_{start:06d}.mp4")
            rows.append(f'{ytid},{start},"{("dog barking", "cattle, bovinae cowbell")[n % 2]}",train')
    ann = write(tmp / "vggsound.csv", "\r\n".join(rows) + "\r\n")
    return read_manifest("vggsound", root, [ann]), lambda c: c.clip_id.rsplit("_", 1)[0]


def audioset_manifest(tmp: Path):
    root = tmp / "audioset"
    labels = write(tmp / "class_labels_indices.csv", "index,mid,display_name\n0,/m/09x0r,Speech\n1,/m/04rlf,Music\n")
    rows = ["# Segments csv created Sun Mar  5 10:54:31 2017", "# num_ytids=8",
            "# YTID, start_seconds, end_seconds, positive_labels"]
    for n in range(10):
        ytid = f"as{n:03d}-_abcd"
        for start in (0, 30)[: 1 + n % 2]:
            touch(root / "balanced_train" / f"{ytid}_{start:06d}_{start + 10:06d}.wav")
            rows.append(f'{ytid}, {start}.000, {start + 10}.000, "{("/m/09x0r", "/m/04rlf,/m/09x0r")[n % 2]}"')
    seg = write(tmp / "balanced_train_segments.csv", "\n".join(rows) + "\n")
    return read_manifest("audioset", root, [seg, labels]), lambda c: c.clip_id.rsplit("_", 1)[0]


def csv_manifest(tmp: Path):
    """Clips cut from one file (start/end) share it as their group; a `group` column overrides."""
    root = tmp / "data"
    rows = ["path,label,split,start,end,group"]
    for n in range(10):
        touch(root / "long" / f"file{n}.mp4")
        for k in range(1 + n % 3):
            rows.append(f"long/file{n}.mp4,{'ab'[n % 2]},train,{k * 10},{k * 10 + 5},")
    for n in range(6):  # separate files of one recording session, tied by the group column
        touch(root / "session" / f"take{n}.mp4")
        rows.append(f"session/take{n}.mp4,{'ab'[n % 2]},train,,,session{n // 3}")
    ann = write(tmp / "list.csv", "\n".join(rows) + "\n")

    def source(c):
        if c.clip_id.startswith("long"):
            return c.path.relative_to(root).as_posix()
        return f"session{int(c.clip_id[-1]) // 3}"

    return read_manifest("csv", root, [ann]), source


def test_csv_group_default_is_the_media_file(tmp_path):
    m, _ = csv_manifest(tmp_path)
    groups = {c.clip_id: c.group for c in m.clips}
    assert groups["long__file2_0"] == groups["long__file2_10"] == groups["long__file2_20"] == "long/file2.mp4"
    assert groups["session__take0"] == groups["session__take2"] == "session0" and groups["session__take3"] == "session1"


@pytest.mark.parametrize("name,make", [("epic-kitchens", epic_manifest), ("kinetics400", kinetics_manifest),
                                       ("vggsound", vggsound_manifest), ("audioset", audioset_manifest),
                                       ("csv", csv_manifest)])
def test_readers_group_clips_of_one_source_and_v_keeps_them_whole(tmp_path, name, make):
    """Each reader's group is the clip's source (EPIC: the video_id; Kinetics, VGGSound, AudioSet:
    the YouTube id; csv: the media file or the `group` column), some sources give several clips,
    and the held-out split never puts one source's clips on both sides."""
    m, source = make(tmp_path)
    assert m.clips and all(c.group == source(c) for c in m.clips), [(c.clip_id, c.group) for c in m.clips][:4]
    assert max(Counter(c.group for c in m.clips).values()) > 1  # some source does give several clips
    ds = manifest_ds(m)
    for seed in range(3):
        T, V = split_holdout(ds, 0.3, seed)
        assert V and T
        assert_groups_whole(ds, T, V)


def test_cremad_and_folder_clips_are_their_own_groups(tmp_path):
    """CREMA-D and the class-folder layout: one clip per file, the file is the group (CREMA-D's
    held-out split stays per clip, not per speaker)."""
    root = tmp_path / "CREMA-D"
    for actor in ("1001", "1002"):
        touch(root / "AudioWAV" / f"{actor}_IEO_HAP_LO.wav")
        touch(root / "AudioWAV" / f"{actor}_DFA_ANG_XX.wav")
    m = read_manifest("cremad", root, [])
    assert {c.clip_id: c.group for c in m.clips} == {c.clip_id: f"AudioWAV/{c.clip_id}.wav" for c in m.clips}
    root = tmp_path / "folders"
    touch(root / "train" / "dog" / "a.mp4")
    touch(root / "val" / "dog" / "a.mp4")
    m = read_manifest("folder", root, [])
    assert sorted(c.group for c in m.clips) == ["train/dog/a.mp4", "val/dog/a.mp4"]


# ============================================================================================ prepared folders

def write_index(root: Path, rows: list[dict], group_column: bool) -> Path:
    """dataset.json + index.csv as prepare-data writes them (without arrays: only the index is read
    here); group_column=False is a folder prepared before groups existed."""
    root.mkdir(parents=True)
    columns = ["clip_id", "split", "labels", "seconds", "frames", "has_audio", "status", "reason", "source",
               "checksums"] + (["group"] if group_column else [])
    with open(root / "index.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(columns)
        for r in rows:
            w.writerow([r["clip_id"], r["split"], r["labels"], 1.0, 8, "true", "ok", "", "", ""]
                       + ([r["group"]] if group_column else []))
    (root / "dataset.json").write_text(json.dumps({"format_version": 1, "dataset": "ucf101", "classes": ["a", "b"],
                                                   "multilabel": False, "fps": 8.0, "modalities": ["audio", "rgb"],
                                                   "clips": {"train": len(rows)}}))
    return root


def test_a_folder_prepared_before_groups_loads_with_each_clip_its_own_group(tmp_path):
    """index.csv without the "group" column (gblend before this change): it loads, every clip is
    its own group, and the split is the one that folder always had; the same clips with a group
    column hold groups out whole."""
    rows = [{"clip_id": f"v_C{c}_g{g:02d}_c{k:02d}", "split": "train", "labels": str(c), "group": f"C{c}_g{g:02d}"}
            for c in range(2) for g in range(8, 20) for k in range(1, 4)]
    old = PreparedDataset(write_index(tmp_path / "old", rows, group_column=False))
    assert [c.group for c in old.clips] == [r["clip_id"] for r in rows]
    new = PreparedDataset(write_index(tmp_path / "new", rows, group_column=True))
    assert [c.group for c in new.clips] == [r["group"] for r in rows]
    for seed in range(3):
        assert split_holdout(old, 0.2, seed) == old_split_holdout(old, 0.2, seed)
        T, V = split_holdout(new, 0.2, seed)
        assert_groups_whole(new, T, V)
        assert len(V) % 3 == 0 and V  # whole groups of three clips


def test_the_demo_splits_as_before_with_or_without_the_group_column(tiny_demo, tmp_path, run_gblend):
    """The prepared demo (through the Kinetics reader: one clip per YouTube id) splits exactly as
    before groups; its index.csv cut back to the columns of earlier versions loads with each clip
    its own group and the same split; running the same prepare-data again (nothing to decode)
    writes the group column back."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny_demo, data)
    new = PreparedDataset(data)
    assert [c.group for c in new.clips] == [c.clip_id.rsplit("_", 2)[0] for c in new.clips]
    with open(data / "index.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows[0][-1] == "group"
    with open(data / "index.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(row[:-1] for row in rows)
    old = PreparedDataset(data)
    assert [c.group for c in old.clips] == [c.clip_id for c in old.clips]
    for fraction, seed in ((0.2, 0), (0.2, 3), (0.08, 1), (0.5, 7)):
        want = old_split_holdout(old, fraction, seed)
        assert want[1] and split_holdout(old, fraction, seed) == split_holdout(new, fraction, seed) == want
    p = run_gblend("prepare-data", "--dataset", "demo", "--set", "demo.train_videos=32", "--set", "demo.test_videos=16",
                   "--workers", "1", "--out", data)
    assert p.returncode == 0, p.stderr[-2000:]
    assert [c.group for c in PreparedDataset(data).clips] == [c.group for c in new.clips]
