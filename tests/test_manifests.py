"""Tests for gblend_cli.manifests: official annotation formats -> clip lists."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from gblend_cli.manifests import ClipSpec, Manifest, ManifestError, read_manifest


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x00media")
    return path


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding=encoding)
    return path


def by_id(manifest: Manifest) -> dict[str, ClipSpec]:
    return {c.clip_id: c for c in manifest.clips}


def reasons(manifest: Manifest) -> dict[str, str]:
    return {m["clip"]: m["reason"] for m in manifest.missing}


# ---------------------------------------------------------------- Kinetics

KINETICS_TRAIN = (
    "label,youtube_id,time_start,time_end,split,is_cc\n"
    "playing guitar,-abc123XYZ_,14,24,train,0\n"
    '"cooking egg, fried",xyz_987-AB,0,10,train,1\n'
    "massaging person's head,QQQQQQQQQQQ,100,110,train,0\n"
    "playing guitar,MISSINGmiss,5,15,train,0\n"
)
KINETICS_VAL = (
    "label,youtube_id,time_start,time_end,split,is_cc\n"
    '"passing American football (in game)",VALvalVAL01,30,40,validate,0\n'
    "playing guitar,VALvalVAL02,1,11,val,0\n"
)
KINETICS_TEST = "label,youtube_id,time_start,time_end,split\n,TESTtest001,0,10,test\n"


def kinetics_annotations(tmp_path: Path) -> list[Path]:
    ann = tmp_path / "ann"
    return [write(ann / "train.csv", KINETICS_TRAIN), write(ann / "validate.csv", KINETICS_VAL),
            write(ann / "test.csv", KINETICS_TEST)]


def check_kinetics(m: Manifest, root: Path) -> dict[str, ClipSpec]:
    assert m.dataset == "kinetics400" and m.multilabel is False
    assert m.classes == ["cooking egg, fried", "massaging person's head",
                         "passing American football (in game)", "playing guitar"]
    clips = by_id(m)
    assert set(clips) == {"-abc123XYZ__000014_000024", "xyz_987-AB_000000_000010",
                          "QQQQQQQQQQQ_000100_000110", "VALvalVAL01_000030_000040",
                          "VALvalVAL02_000001_000011"}
    assert clips["-abc123XYZ__000014_000024"].labels == (3,)
    assert clips["xyz_987-AB_000000_000010"].labels == (0,)
    assert clips["QQQQQQQQQQQ_000100_000110"].labels == (1,)
    assert clips["VALvalVAL01_000030_000040"].labels == (2,)
    assert clips["VALvalVAL01_000030_000040"].split == "val"
    assert clips["VALvalVAL02_000001_000011"].split == "val"
    assert clips["QQQQQQQQQQQ_000100_000110"].split == "train"
    for clip in clips.values():
        assert clip.path.is_absolute() and clip.path.is_file()
        assert clip.start is None and clip.end is None
        assert clip.path.resolve().is_relative_to(root.resolve())
    missing = reasons(m)
    assert missing["MISSINGmiss_000005_000015"] == "file not found: MISSINGmiss_000005_000015.*"
    assert missing["TESTtest001_000000_000010"] == "no label"
    assert len(m.missing) == 2
    return clips


def test_kinetics_flat_layout(tmp_path):
    root = tmp_path / "k400"
    touch(root / "train" / "-abc123XYZ__000014_000024.mp4")
    touch(root / "train" / "xyz_987-AB_000000_000010.webm")
    touch(root / "train" / "QQQQQQQQQQQ_000100_000110.MKV")
    touch(root / "val" / "VALvalVAL01_000030_000040.mkv")
    touch(root / "val" / "VALvalVAL02_000001_000011.mp4")
    touch(root / "train" / "notes.txt")
    clips = check_kinetics(read_manifest("kinetics400", root, kinetics_annotations(tmp_path)), root)
    assert clips["xyz_987-AB_000000_000010"].path == root / "train" / "xyz_987-AB_000000_000010.webm"
    assert clips["QQQQQQQQQQQ_000100_000110"].path.suffix == ".MKV"


def test_kinetics_class_folder_layout_prefers_matching_split_folder(tmp_path):
    root = tmp_path / "k400"
    touch(root / "train" / "playing guitar" / "-abc123XYZ__000014_000024.mp4")
    touch(root / "train" / "cooking egg, fried" / "xyz_987-AB_000000_000010.webm")
    touch(root / "train" / "massaging person's head" / "QQQQQQQQQQQ_000100_000110.mp4")
    touch(root / "validate" / "passing American football (in game)" / "VALvalVAL01_000030_000040.mkv")
    # same stem in two places: the copy under the expected split/label folder wins
    touch(root / "train" / "playing guitar" / "VALvalVAL02_000001_000011.mp4")
    good = touch(root / "validate" / "playing_guitar" / "VALvalVAL02_000001_000011.mp4")
    clips = check_kinetics(read_manifest("kinetics400", root, kinetics_annotations(tmp_path)), root)
    assert clips["VALvalVAL02_000001_000011"].path == good
    assert clips["QQQQQQQQQQQ_000100_000110"].path.parent.name == "massaging person's head"


def test_kinetics_split_from_file_name_and_bad_split(tmp_path):
    root = tmp_path / "k"
    touch(root / "abc_000000_000010.mp4")
    ann = write(tmp_path / "kinetics700_validate.csv",
                "label,youtube_id,time_start,time_end\nyoga,abc,0,10\n")
    m = read_manifest("kinetics700", root, [ann])
    assert [(c.clip_id, c.split) for c in m.clips] == [("abc_000000_000010", "val")]
    bad = write(tmp_path / "train.csv", "label,youtube_id,time_start,time_end,split\nyoga,abc,0,10,holdout\n")
    with pytest.raises(ManifestError, match=r"train\.csv:2: .*'holdout'"):
        read_manifest("kinetics700", root, [bad])


def test_kinetics_missing_column_names_file_and_column(tmp_path):
    ann = write(tmp_path / "kinetics.csv", "label,ytid,time_start,time_end,split\nyoga,abc,0,10,train\n")
    with pytest.raises(ManifestError) as exc:
        read_manifest("kinetics600", tmp_path, [ann])
    msg = str(exc.value)
    assert "kinetics.csv" in msg and "'youtube_id'" in msg and "\n" not in msg


# ---------------------------------------------------------------- AudioSet

CLASS_LABELS = ("index,mid,display_name\n"
                '0,/m/09x0r,"Speech"\n'
                '1,/m/04rlf,"Music"\n'
                '2,/t/dd00088,"Gush"\n'
                '3,/m/0jbk,"Animal, domestic"\n')
SEGMENTS_HEADER = ("# Segments csv created Sun Mar  5 10:54:31 2017\n"
                   "# num_ytids=3, num_segs=3, num_unique_labels=4, num_positive_labels=5\n"
                   "# YTID, start_seconds, end_seconds, positive_labels\n")


def audioset_files(tmp_path: Path) -> list[Path]:
    ann = tmp_path / "ann"
    return [
        write(ann / "balanced_train_segments.csv", SEGMENTS_HEADER +
              '--PJHxphWEs, 30.000, 40.000, "/m/09x0r,/t/dd00088"\n'
              '-0RWZT-miFs, 420.000, 430.000, "/m/04rlf"\n'
              'ABSENTabsen, 0.000, 10.000, "/m/0jbk"\n'),
        write(ann / "eval_segments.csv", SEGMENTS_HEADER +
              '_0-2Dgm4lIA, 5.500, 15.500, "/m/0jbk,/m/04rlf,/m/09x0r"\n'),
        write(ann / "class_labels_indices.csv", CLASS_LABELS),
    ]


def test_audioset_multilabel_and_eval_split(tmp_path):
    root = tmp_path / "audioset"
    touch(root / "balanced_train" / "--PJHxphWEs_000030_000040.wav")
    touch(root / "balanced_train" / "-0RWZT-miFs_420_430.flac")
    touch(root / "eval" / "_0-2Dgm4lIA.m4a")
    m = read_manifest("audioset", root, audioset_files(tmp_path))
    assert m.multilabel is True
    assert m.classes == ["Speech", "Music", "Gush", "Animal, domestic"]
    clips = by_id(m)
    assert clips["--PJHxphWEs_000030"].labels == (0, 2)
    assert clips["--PJHxphWEs_000030"].split == "train"
    assert clips["-0RWZT-miFs_000420"].labels == (1,)
    assert clips["-0RWZT-miFs_000420"].path.name == "-0RWZT-miFs_420_430.flac"
    assert clips["_0-2Dgm4lIA_000005"].labels == (0, 1, 3)
    assert clips["_0-2Dgm4lIA_000005"].split == "val"
    cut = [c for c in m.clips if c.clip_id != "_0-2Dgm4lIA_000005"]  # files named by the segment: all of each
    assert all(c.start is None and c.end is None and not c.span_if_longer for c in cut)
    plain = clips["_0-2Dgm4lIA_000005"]  # named by the video id: maybe the full video (tests/test_untrimmed.py)
    assert (plain.start, plain.end, plain.span_if_longer) == (5.5, 15.5, True)
    assert reasons(m) == {"ABSENTabsen_000000": "file not found: ABSENTabsen_000000_000010.*"}


def test_audioset_unknown_mid_names_file_line_and_mid(tmp_path):
    files = audioset_files(tmp_path)
    write(files[1], SEGMENTS_HEADER + 'abcdefghijk, 0.000, 10.000, "/m/09x0r,/m/nope"\n')
    with pytest.raises(ManifestError, match=r"eval_segments\.csv:4: unknown MID '/m/nope'"):
        read_manifest("audioset", tmp_path, files)


def test_audioset_requires_class_labels_file(tmp_path):
    files = audioset_files(tmp_path)[:2]
    with pytest.raises(ManifestError, match="class_labels_indices"):
        read_manifest("audioset", tmp_path, files)


# ---------------------------------------------------------------- EPIC-Kitchens

EPIC100_COLS = ("narration_id,participant_id,video_id,narration_timestamp,start_timestamp,"
                "stop_timestamp,start_frame,stop_frame,narration,verb,verb_class,noun,noun_class,"
                "all_nouns,all_noun_classes\n")


def epic100(tmp_path: Path) -> tuple[Path, list[Path]]:
    root = tmp_path / "EPIC-KITCHENS"
    touch(root / "P01" / "videos" / "P01_01.MP4")
    touch(root / "P02" / "videos" / "P02_03.MP4")
    ann = tmp_path / "epic-kitchens-100-annotations"
    train = write(ann / "EPIC_100_train.csv", EPIC100_COLS +
                  "P01_01_0,P01,P01_01,00:00:00.000,00:00:00.14,00:00:03.37,8,202,open door,open,3,door,8,['door'],[8]\n"
                  "P01_01_1,P01,P01_01,00:00:04.000,00:01:02.50,01:00:03.370,3750,3826,take cup,take,0,cup,13,\"['cup', 'mug']\",\"[13, 13]\"\n"
                  "P01_01_2,P01,P01_01,00:00:05.000,00:00:05.5,00:00:07.25,330,435,pick up cup,pick-up,0,cup,13,['cup'],[13]\n"
                  "P09_09_0,P09,P09_09,00:00:00.000,00:00:01.00,00:00:02.00,60,120,open tap,open,3,tap,21,['tap'],[21]\n")
    val = write(ann / "EPIC_100_validation.csv", EPIC100_COLS +
                "P02_03_7,P02,P02_03,00:00:00.000,00:10:00.00,00:10:01.50,0,90,open fridge,open,3,fridge,12,['fridge'],[12]\n")
    test = write(ann / "EPIC_100_test_timestamps.csv",
                 "narration_id,participant_id,video_id,narration_timestamp,start_timestamp,stop_timestamp,start_frame,stop_frame\n"
                 "P02_03_100,P02,P02_03,00:00:00.000,00:00:01.00,00:00:02.00,60,120\n")
    return root, [train, val, test]


def test_epic100_verb_labels_and_timestamps(tmp_path):
    root, anns = epic100(tmp_path)
    m = read_manifest("epic-kitchens", root, anns)
    assert m.classes == ["take", "open"]  # verb_class 0, 3 (name from the first row of each class)
    clips = by_id(m)
    assert set(clips) == {"P01_01_0", "P01_01_1", "P01_01_2", "P02_03_7"}
    c = clips["P01_01_1"]
    assert (c.start, c.end, c.labels, c.split) == (62.5, 3603.37, (0,), "train")
    assert c.path == root / "P01" / "videos" / "P01_01.MP4"
    assert clips["P01_01_0"].start == pytest.approx(0.14) and clips["P01_01_0"].labels == (1,)
    assert (clips["P02_03_7"].split, clips["P02_03_7"].start, clips["P02_03_7"].end) == ("val", 600.0, 601.5)
    assert reasons(m) == {"P09_09_0": "file not found: P09_09.*", "P02_03_100": "no label"}


def test_epic100_noun_and_action_labels(tmp_path):
    root, anns = epic100(tmp_path)
    nouns = read_manifest("epic-kitchens", root, anns, label_field="noun")
    assert nouns.classes == ["door", "fridge", "cup", "tap"]  # noun_class 8, 12, 13, 21
    assert by_id(nouns)["P01_01_2"].labels == (2,)
    actions = read_manifest("epic-kitchens", root, anns, label_field="action")
    assert actions.classes == ["0:13", "3:8", "3:12", "3:21"]
    got = {k: v.labels for k, v in by_id(actions).items()}
    assert got == {"P01_01_0": (1,), "P01_01_1": (0,), "P01_01_2": (0,), "P02_03_7": (2,)}
    with pytest.raises(ManifestError, match="label_field"):
        read_manifest("epic-kitchens", root, anns, label_field="adverb")


def test_epic55_uid_clip_ids_and_timestamps(tmp_path):
    root = tmp_path / "EPIC_KITCHENS_2018"
    touch(root / "videos" / "train" / "P01" / "P01_01.MP4")
    ann = write(tmp_path / "EPIC_train_action_labels.csv",
                "uid,participant_id,video_id,narration,start_timestamp,stop_timestamp,start_frame,"
                "stop_frame,verb,verb_class,noun,noun_class,all_nouns,all_noun_classes\n"
                "0,P01,P01_01,open door,00:00:00.14,00:00:03.37,8,202,open,3,door,3,['door'],[3]\n"
                "1,P01,P01_01,turn on light,00:00:03.51,00:00:05.02,211,301,turn-on,6,light,114,['light'],[114]\n")
    m = read_manifest("epic-kitchens", root, [ann])
    clips = by_id(m)
    assert set(clips) == {"P01_01_0", "P01_01_1"}
    assert (clips["P01_01_1"].start, clips["P01_01_1"].end) == (3.51, 5.02)
    assert m.classes == ["open", "turn-on"] and clips["P01_01_1"].labels == (1,)
    assert all(c.split == "train" for c in m.clips)
    bad = write(tmp_path / "EPIC_bad.csv", "uid,participant_id,video_id,start_timestamp,stop_timestamp,verb_class\n"
                "0,P01,P01_01,00:00:00.14,3.37 s,3\n")
    with pytest.raises(ManifestError, match=r"EPIC_bad\.csv:2: column 'stop_timestamp'"):
        read_manifest("epic-kitchens", root, [bad])
    no_id = write(tmp_path / "EPIC_noid.csv", "participant_id,video_id,start_timestamp,stop_timestamp\n")
    with pytest.raises(ManifestError, match=r"EPIC_noid\.csv: missing column 'narration_id'"):
        read_manifest("epic-kitchens", root, [no_id])


# ---------------------------------------------------------------- CREMA-D

def test_cremad_emotions_and_speaker_disjoint_split(tmp_path):
    root = tmp_path / "CREMA-D"
    actors = [str(1001 + i) for i in range(11)]
    for actor in actors:
        touch(root / "AudioWAV" / f"{actor}_IEO_HAP_LO.wav")
        touch(root / "VideoFlash" / f"{actor}_IEO_HAP_LO.flv")
        touch(root / "AudioWAV" / f"{actor}_DFA_ANG_XX.wav")
    touch(root / "AudioWAV" / "1001_DFA_XYZ_XX.wav")      # unknown emotion -> missing
    touch(root / "AudioWAV" / "readme_notes.wav")         # not a CREMA-D name -> ignored
    m = read_manifest("cremad", root, [])
    assert m.classes == ["ANG", "DIS", "FEA", "HAP", "NEU", "SAD"] and not m.multilabel
    clips = by_id(m)
    assert len(clips) == 22
    assert clips["1003_IEO_HAP_LO"].labels == (3,) and clips["1003_DFA_ANG_XX"].labels == (0,)
    assert clips["1003_IEO_HAP_LO"].path.suffix == ".flv"  # video preferred over audio
    assert clips["1003_DFA_ANG_XX"].path.suffix == ".wav"
    val_actors = {c.clip_id[:4] for c in m.clips if c.split == "val"}
    train_actors = {c.clip_id[:4] for c in m.clips if c.split == "train"}
    assert val_actors == {"1010", "1011"}  # ceil(10% of 11) = 2, the last in sorted order
    assert not (val_actors & train_actors) and len(train_actors) == 9
    assert list(reasons(m)) == ["1001_DFA_XYZ_XX"] and "XYZ" in m.missing[0]["reason"]


def test_cremad_single_actor_is_all_train(tmp_path):
    touch(tmp_path / "1001_IEO_SAD_MD.wav")
    m = read_manifest("cremad", tmp_path, [])
    assert [(c.clip_id, c.labels, c.split) for c in m.clips] == [("1001_IEO_SAD_MD", (5,), "train")]


# ---------------------------------------------------------------- generic CSV

def test_generic_csv_multilabel_times_and_escapes(tmp_path):
    root = tmp_path / "data"
    touch(root / "clips" / "a.mp4")
    touch(root / "clips" / "b.wav")
    touch(root / "clips" / "sub" / "c.mkv")
    outside = touch(tmp_path / "outside.mp4")
    ann = write(tmp_path / "list.csv",
                "path,label,split,start,end\n"
                "clips/a.mp4,dog;bark,train,,\n"
                "clips/b.wav,cat,validation,1.5,4\n"
                "clips/sub/c.mkv,dog,test,12.25,\n"
                f"{root / 'clips' / 'a.mp4'},bark,train,0,2\n"
                "../outside.mp4,cat,train,,\n"
                f"{outside},cat,train,,\n"
                "clips/nothere.mp4,cat,train,,\n"
                "clips/a.mp4,,train,,\n")
    m = read_manifest("csv", root, [ann])
    assert m.classes == ["bark", "cat", "dog"] and m.multilabel is True
    clips = by_id(m)
    assert len(clips) == 4 and {"clips__a", "clips__b_1.5", "clips__sub__c_12.25"} <= set(clips)
    a = clips["clips__a"]
    assert (a.labels, a.split, a.start, a.end, a.path) == ((0, 2), "train", None, None, root / "clips" / "a.mp4")
    b = clips["clips__b_1.5"]
    assert (b.labels, b.split, b.start, b.end) == ((1,), "val", 1.5, 4.0)
    c = clips["clips__sub__c_12.25"]
    assert (c.split, c.start, c.end) == ("test", 12.25, None)
    inside_abs = [x for x in m.clips if x.start == 0.0]
    assert len(inside_abs) == 1 and inside_abs[0].path == root / "clips" / "a.mp4"
    assert len(m.clips) == 4
    why = reasons(m)
    assert why["../outside.mp4"].startswith("path escapes dataset root: ")
    assert why[str(outside)].startswith("path escapes dataset root: ")
    assert why["clips/nothere.mp4"].startswith("file not found: ")
    assert why["clips/a.mp4"] == "no label"
    allowed = read_manifest("csv", root, [ann], allow_outside_root=True)
    assert sum(c.path.resolve() == outside.resolve() for c in allowed.clips) == 2


def test_generic_csv_single_label_bom_and_errors(tmp_path):
    root = tmp_path / "data"
    touch(root / "x.mp4")
    ann = write(tmp_path / "bom.csv", "path,label\nx.mp4,only\n", encoding="utf-8-sig")
    m = read_manifest("csv", root, [ann])
    assert m.multilabel is False and m.classes == ["only"] and m.clips[0].split == "train"
    bad_split = write(tmp_path / "bad_split.csv", "path,label,split\nx.mp4,a,train\nx.mp4,a,holdout\n")
    with pytest.raises(ManifestError, match=r"bad_split\.csv:3: .*'holdout'"):
        read_manifest("csv", root, [bad_split])
    bad_start = write(tmp_path / "bad_start.csv", "path,label,start\nx.mp4,a,soon\n")
    with pytest.raises(ManifestError, match=r"bad_start\.csv:2: column 'start': not a number: 'soon'"):
        read_manifest("csv", root, [bad_start])
    no_label = write(tmp_path / "no_label.csv", "path,class\nx.mp4,a\n")
    with pytest.raises(ManifestError, match=r"no_label\.csv: missing column 'label'"):
        read_manifest("csv", root, [no_label])
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"\xff\xfe\x00\x80garbage")
    with pytest.raises(ManifestError, match=r"binary\.csv: cannot read"):
        read_manifest("csv", root, [binary])


# ---------------------------------------------------------------- folder layout

def test_folder_layout_with_split_dirs(tmp_path):
    root = tmp_path / "ds"
    touch(root / "train" / "dog" / "d1.mp4")
    touch(root / "train" / "cat" / "c1.wav")
    touch(root / "validation" / "dog" / "d2.MOV")
    touch(root / "test" / "cat" / "c9.mp3")
    touch(root / "train" / "loose.mp4")  # not inside a class folder -> ignored
    m = read_manifest("folder", root, [])
    assert m.classes == ["cat", "dog"]
    got = {c.clip_id: (c.labels, c.split) for c in m.clips}
    assert got == {"dog__d1": ((1,), "train"), "cat__c1": ((0,), "train"),
                   "dog__d2": ((1,), "val"), "cat__c9": ((0,), "test")}


def test_folder_layout_without_split_dirs_and_unicode_names(tmp_path):
    root = tmp_path / "ds"
    f1 = touch(root / "café au lait" / "vidéo 1.mp4")
    touch(root / "zebra" / "z 1.ogg")
    touch(root / "zebra" / "z_1.ogg")  # sanitises to the same id as "z 1"
    touch(root / "zebra" / ".hidden.mp4")
    m = read_manifest("folder", root, [])
    assert m.classes == ["café au lait", "zebra"]
    assert all(c.split == "train" for c in m.clips)
    ids = [c.clip_id for c in m.clips]
    assert len(ids) == 3 and len(set(ids)) == 3
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+", i) for i in ids)
    first = next(c for c in m.clips if c.path == f1)
    assert first.clip_id == "caf__au_lait__vid_o_1" and first.labels == (0,)
    zebra = sorted(i for i in ids if i.startswith("zebra"))
    assert zebra[0] == "zebra__z_1" and re.fullmatch(r"zebra__z_1-[0-9a-f]{8}", zebra[1])


def test_symlink_escaping_root_is_reported(tmp_path):
    root = tmp_path / "ds"
    touch(root / "dog" / "real.mp4")
    outside = touch(tmp_path / "elsewhere" / "secret.mp4")
    try:
        os.symlink(outside, root / "dog" / "link.mp4")
        os.symlink(root / "dog" / "real.mp4", root / "dog" / "inner.mp4")
    except OSError:
        pytest.skip("symlinks not supported")
    m = read_manifest("folder", root, [])
    assert sorted(c.clip_id for c in m.clips) == ["dog__inner", "dog__real"]
    assert reasons(m)["dog__link"].startswith("path escapes dataset root: ")
    allowed = read_manifest("folder", root, [], allow_outside_root=True)
    assert len(allowed.clips) == 3 and not allowed.missing


def test_kinetics_unicode_and_space_file_names(tmp_path):
    root = tmp_path / "kinetics sounds ✓"
    touch(root / "train" / "chirping bird ü" / "ab-cd_efg12_000010_000020.mp4")
    ann = write(tmp_path / "train.csv", "label,youtube_id,time_start,time_end,split\n"
                "chirping bird ü,ab-cd_efg12,10,20,train\n")
    m = read_manifest("kinetics-sounds", root, [ann], classes=["chirping bird ü"])
    assert m.classes == ["chirping bird ü"]
    assert [c.clip_id for c in m.clips] == ["ab-cd_efg12_000010_000020"]
    assert m.clips[0].path.is_file()


# ---------------------------------------------------------------- general errors

def test_unknown_dataset_lists_known_ones(tmp_path):
    with pytest.raises(ManifestError) as exc:
        read_manifest("imagenet", tmp_path, [])
    msg = str(exc.value)
    assert "imagenet" in msg and "kinetics400" in msg and "epic-kitchens" in msg and "folder" in msg


def test_missing_annotation_file(tmp_path):
    with pytest.raises(ManifestError, match=r"nope\.csv: no such annotation file"):
        read_manifest("csv", tmp_path, [tmp_path / "nope.csv"])


def test_empty_manifest_is_not_an_error(tmp_path):
    m = read_manifest("folder", tmp_path / "empty", [])
    assert (m.clips, m.missing, m.classes) == ([], [], [])


# ---------------------------------------------------------------- Kinetics-Sounds (a pinned subset)

def test_kinetics_sounds_keeps_only_the_pinned_classes(tmp_path):
    import tomllib

    from gblend_cli.config import RECIPES_DIR

    pinned = tomllib.loads((RECIPES_DIR / "kinetics-sounds.toml").read_text())["dataset"]["classes"]
    assert len(pinned) == 32 and pinned == sorted(pinned) and "playing bagpipes" in pinned
    root = tmp_path / "k400"
    touch(root / "train" / "playing bagpipes" / "bagpipes001_000000_000010.mp4")
    touch(root / "train" / "zumba" / "zumbaZumba1_000000_000010.mp4")
    touch(root / "val" / "tapping pen" / "pen00000001_000005_000015.mp4")
    ann = write(tmp_path / "train.csv", "label,youtube_id,time_start,time_end,split\n"
                "playing bagpipes,bagpipes001,0,10,train\n"
                "zumba,zumbaZumba1,0,10,train\n"           # not a Kinetics-Sounds class: dropped
                "\"playing bagpipes\",bagpipesMIS,3,13,train\n"  # kept, but its file is missing
                "tapping pen,pen00000001,5,15,validate\n")
    m = read_manifest("kinetics-sounds", root, [ann], classes=pinned)
    assert m.classes == pinned  # every pinned class, also those without a row: stable indices
    assert {c.clip_id: (m.classes[c.labels[0]], c.split) for c in m.clips} == {
        "bagpipes001_000000_000010": ("playing bagpipes", "train"), "pen00000001_000005_000015": ("tapping pen", "val")}
    assert reasons(m) == {"bagpipesMIS_000003_000013": "file not found: bagpipesMIS_000003_000013.*"}
    assert m.dropped == 1 and m.rows == {"train": 2, "val": 1}
    # the same CSV read as plain Kinetics keeps zumba
    assert "zumba" in read_manifest("kinetics400", root, [ann]).classes


def test_kinetics_sounds_without_its_class_list_or_with_foreign_csvs(tmp_path):
    ann = write(tmp_path / "train.csv", "label,youtube_id,time_start,time_end,split\nzumba,abc,0,10,train\n")
    with pytest.raises(ManifestError, match=r"kinetics-sounds: no class list .*--recipe kinetics-sounds"):
        read_manifest("kinetics-sounds", tmp_path, [ann])
    with pytest.raises(ManifestError, match=r"none of the 1 classes .*train\.csv"):
        read_manifest("kinetics-sounds", tmp_path, [ann], classes=["playing bagpipes"])
    with pytest.raises(ManifestError, match=r"dataset\.classes .* not by vggsound"):
        read_manifest("vggsound", tmp_path, [ann], classes=["playing bagpipes"])


# ---------------------------------------------------------------- AVE

AVE_HEADER = "Category&VideoID&Quality&StartTime&EndTime"


def ave_tree(tmp_path: Path) -> tuple[Path, Path]:
    """AVE_Dataset/ as released: Annotations.txt (header, CRLF), the three split files (the test
    file with a header), ReadMe.txt, and AVE/<VideoID>.mp4."""
    base = tmp_path / "AVE_Dataset"
    videos = base / "AVE"
    for vid in ("RUhOCu3LNXM", "-4Aq_9qLPGw", "fryFry00001", "twice000001", "conflict001", "VALval00001",
                "TESTtest001"):
        touch(videos / f"{vid}.mp4")
    crlf = "\r\n".join
    write(base / "Annotations.txt", crlf([
        AVE_HEADER, "Church bell&RUhOCu3LNXM&good&0&10", "Male speech, man speaking&-4Aq_9qLPGw&good&2&7",
        "Frying (food)&fryFry00001&bad&0&10", "Church bell&twice000001&good&0&3", "Church bell&twice000001&good&6&9",
        "Violin, fiddle&conflict001&good&0&10", "Frying (food)&missing0001&good&1&10",
        "Male speech, man speaking&VALval00001&good&0&10", "Frying (food)&TESTtest001&good&0&10",
        "Acoustic guitar&notInASplit&good&0&10"]) + "\r\n")
    write(base / "trainSet.txt", "\n".join([
        "Church bell&RUhOCu3LNXM&good&0&10", "Male speech, man speaking&-4Aq_9qLPGw&good&2&7", "",
        "Frying (food)&fryFry00001&bad&0&10", "Church bell&twice000001&good&0&3",
        "Church bell&twice000001&good&6&9",       # a second event of the same video: one clip
        "Violin, fiddle&conflict001&good&0&10",
        "Church bell&conflict001&good&0&10",      # the same video, another category: reported
        "Frying (food)&missing0001&good&1&10"]) + "\n")
    write(base / "valSet.txt", "Male speech, man speaking&VALval00001&good&0&10\n")
    write(base / "testSet.txt", f"{AVE_HEADER}\nFrying (food)&TESTtest001&good&0&10\n")
    write(base / "ReadMe.txt", "AVE dataset\n")
    return videos, base


def test_ave_split_files_categories_and_quirks(tmp_path):
    videos, base = ave_tree(tmp_path)
    anns = [base / n for n in ("Annotations.txt", "trainSet.txt", "valSet.txt", "testSet.txt")]
    m = read_manifest("ave", videos, anns)
    assert m.classes == ["Acoustic guitar", "Church bell", "Frying (food)", "Male speech, man speaking",
                         "Violin, fiddle"]  # Annotations.txt adds the category no split file uses
    got = {c.clip_id: (m.classes[c.labels[0]], c.split) for c in m.clips}
    assert got == {"RUhOCu3LNXM": ("Church bell", "train"), "-4Aq_9qLPGw": ("Male speech, man speaking", "train"),
                   "fryFry00001": ("Frying (food)", "train"), "twice000001": ("Church bell", "train"),
                   "conflict001": ("Violin, fiddle", "train"), "VALval00001": ("Male speech, man speaking", "val"),
                   "TESTtest001": ("Frying (food)", "test")}
    assert all(c.start is None and c.path.parent == videos for c in m.clips)  # the whole video
    why = {x["clip"]: (x["reason"], x["kind"]) for x in m.missing}
    assert why["missing0001"] == ("file not found: missing0001.*", "file")
    (other,) = [k for k in why if k.startswith("conflict001@")]
    assert other == "conflict001@trainSet.txt:8" and why[other][1] == "annotation" and "'Church bell'" in why[other][0]
    assert m.rows == {"train": 6, "val": 1, "test": 1}  # unique videos per split (the published counts count videos)


def test_ave_errors_name_the_file_and_line(tmp_path):
    videos, base = ave_tree(tmp_path)
    with pytest.raises(ManifestError, match="give trainSet.txt"):
        read_manifest("ave", videos, [base / "Annotations.txt"])
    with pytest.raises(ManifestError, match=r"ReadMe\.txt: not an AVE annotation file"):
        read_manifest("ave", videos, [base / "trainSet.txt", base / "ReadMe.txt"])
    bad = write(tmp_path / "valSet.txt", "Church bell&abc&good&0&10\nChurch bell,abc,good,0,10\n")
    with pytest.raises(ManifestError, match=r"valSet\.txt:2: expected Category&VideoID&Quality&StartTime&EndTime"):
        read_manifest("ave", videos, [bad])
    bad = write(tmp_path / "testSet.txt", "Church bell&abc&good&zero&10\n")
    with pytest.raises(ManifestError, match=r"testSet\.txt:1: column 'StartTime': not a number"):
        read_manifest("ave", videos, [bad])


# ---------------------------------------------------------------- UCF-101

def ucf_tree(tmp_path: Path) -> tuple[Path, Path]:
    """UCF-101/<Class>/v_<Class>_gXX_cYY.avi and ucfTrainTestlist/ (CRLF lines, as released). The
    lists spell HandStandPushups where the files say HandstandPushups (a quirk of the release)."""
    root = tmp_path / "UCF-101"
    for rel in ("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi", "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi",
                "HandstandPushups/v_HandstandPushups_g08_c01.avi", "HandstandPushups/v_HandstandPushups_g01_c02.avi",
                "YoYo/v_YoYo_g25_c03.avi"):
        touch(root / rel)
    lists = tmp_path / "ucfTrainTestlist"
    write(lists / "classInd.txt", "1 ApplyEyeMakeup\r\n2 HandstandPushups\r\n3 YoYo\r\n")
    write(lists / "trainlist01.txt", "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\r\n"
          "HandstandPushups/v_HandStandPushups_g08_c01.avi 2\r\nYoYo/v_YoYo_g25_c03.avi 3\r\n"
          "YoYo/v_YoYo_g09_c01.avi 3\r\n")
    write(lists / "testlist01.txt", "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi\r\n"
          "HandstandPushups/v_HandStandPushups_g01_c02.avi\r\n")
    write(lists / "trainlist02.txt", "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi 1\r\n")
    write(lists / "testlist02.txt", "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi\r\nYoYo/v_YoYo_g25_c03.avi\r\n")
    return root, lists


def test_ucf101_split1_by_default_class_index_and_case_quirk(tmp_path):
    root, lists = ucf_tree(tmp_path)
    anns = sorted(lists.iterdir())  # the whole folder: other splits' lists are ignored
    m = read_manifest("ucf101", root, anns)
    assert m.classes == ["ApplyEyeMakeup", "HandstandPushups", "YoYo"]
    got = {c.clip_id: (c.labels, c.split) for c in m.clips}
    assert got == {"v_ApplyEyeMakeup_g08_c01": ((0,), "train"), "v_HandStandPushups_g08_c01": ((1,), "train"),
                   "v_YoYo_g25_c03": ((2,), "train"), "v_ApplyEyeMakeup_g01_c01": ((0,), "test"),
                   "v_HandStandPushups_g01_c02": ((1,), "test")}
    assert by_id(m)["v_HandStandPushups_g01_c02"].path == root / "HandstandPushups" / "v_HandstandPushups_g01_c02.avi"
    assert reasons(m) == {"v_YoYo_g09_c01": f"file not found: {root / 'YoYo' / 'v_YoYo_g09_c01.avi'}"}
    assert m.rows == {"train": 4, "test": 2}
    m2 = read_manifest("ucf101", root, anns, ucf_split=2)
    assert {c.clip_id: c.split for c in m2.clips} == {"v_ApplyEyeMakeup_g01_c01": "train",
                                                      "v_ApplyEyeMakeup_g08_c01": "test", "v_YoYo_g25_c03": "test"}


def test_ucf101_errors(tmp_path):
    root, lists = ucf_tree(tmp_path)
    with pytest.raises(ManifestError, match="exactly one classInd.txt"):
        read_manifest("ucf101", root, [lists / "trainlist01.txt"])
    with pytest.raises(ManifestError, match=r"split 3 needs trainlist03\.txt"):
        read_manifest("ucf101", root, [lists / "classInd.txt", lists / "trainlist01.txt"], ucf_split=3)
    bad = write(tmp_path / "x" / "trainlist01.txt", "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 7\n")
    with pytest.raises(ManifestError, match=r"trainlist01\.txt:1: class index '7' is not in classInd\.txt"):
        read_manifest("ucf101", root, [lists / "classInd.txt", bad])
    bad = write(tmp_path / "y" / "testlist01.txt", "Juggling/v_Juggling_g01_c01.avi\n")
    with pytest.raises(ManifestError, match=r"testlist01\.txt:1: class folder 'Juggling'"):
        read_manifest("ucf101", root, [lists / "classInd.txt", bad])
    with pytest.raises(ManifestError, match=r"notes\.txt: not a UCF-101 annotation file"):
        read_manifest("ucf101", root, [lists / "classInd.txt", write(tmp_path / "notes.txt", "x\n")])


# ---------------------------------------------------------------- VGGSound

def test_vggsound_csv_quirks_and_file_names(tmp_path):
    root = tmp_path / "vggsound"
    touch(root / "video" / "---g-f_I2yQ_000001.mp4")              # the released archive's naming
    touch(root / "video" / "-0BIyqJj9ZU_000030_000040.mp4")       # <id>_<start>_<end>
    touch(root / "train" / "dog barking" / "abcdefghijk_000000.webm")
    ann = write(tmp_path / "vggsound.csv",
                "---g-f_I2yQ,1,people marching,test\r\n"
                "-0BIyqJj9ZU,30,\"cattle, bovinae cowbell\",train\r\n"
                "abcdefghijk,0,dog barking,train\r\n"
                "missingXXXX,10,dog barking,train\r\n")
    m = read_manifest("vggsound", root, [ann])
    assert m.classes == ["cattle, bovinae cowbell", "dog barking", "people marching"]
    got = {c.clip_id: (m.classes[c.labels[0]], c.split, c.path.name) for c in m.clips}
    assert got == {"---g-f_I2yQ_000001": ("people marching", "test", "---g-f_I2yQ_000001.mp4"),
                   "-0BIyqJj9ZU_000030": ("cattle, bovinae cowbell", "train", "-0BIyqJj9ZU_000030_000040.mp4"),
                   "abcdefghijk_000000": ("dog barking", "train", "abcdefghijk_000000.webm")}
    assert reasons(m) == {"missingXXXX_000010": "file not found: missingXXXX_000010.*"}
    assert m.rows == {"test": 1, "train": 3}
    with_header = write(tmp_path / "h.csv", "youtube_id,start_seconds,label,split\nabcdefghijk,0,dog barking,train\n")
    assert [c.clip_id for c in read_manifest("vggsound", root, [with_header]).clips] == ["abcdefghijk_000000"]


def test_vggsound_unquoted_comma_and_bad_split(tmp_path):
    bad = write(tmp_path / "vggsound.csv", "abc,1,dog barking,train\nxyz,2,cattle, bovinae cowbell,train\n")
    with pytest.raises(ManifestError, match=r"vggsound\.csv:2: expected youtube_id,start_seconds,label,split .*got 5"):
        read_manifest("vggsound", tmp_path, [bad])
    bad = write(tmp_path / "v2.csv", "abc,1,dog barking,holdout\n")
    with pytest.raises(ManifestError, match=r"v2\.csv:1: .*'holdout'"):
        read_manifest("vggsound", tmp_path, [bad])
    bad = write(tmp_path / "v3.csv", "abc,soon,dog barking,train\n")
    with pytest.raises(ManifestError, match=r"v3\.csv:1: column 'start_seconds': not a number"):
        read_manifest("vggsound", tmp_path, [bad])
