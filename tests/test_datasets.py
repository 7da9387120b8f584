"""The imbalance literature's datasets end to end, on trees this file writes in each dataset's real
layout with real media (PyAV-written mp4/avi/mkv): Kinetics-Sounds, AVE, UCF-101 and VGGSound
through prepare-data, then `prepare-data --check` (the doctor) on the prepared folders and on the
media folders: one stdout line per damaged or missing clip, exit 0 only when every clip is whole."""

from __future__ import annotations

import csv
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import media_factory as mf
from conftest import gblend_cmd, gblend_env

SILENCE = np.float16(math.log(1e-6))
SMALL = {"prepare.fps": 8.0, "prepare.short_side": 32, "clip.crop": 32, "prepare.flow": "dis", "prepare.workers": 1,
         "prepare.decode_timeout_s": 60.0}
SETS = [a for k, v in SMALL.items() for a in ("--set", f"{k}={json.dumps(v)}")]


def video(path: Path, **kw) -> Path:
    return mf.write_video(path, **({"seconds": 2.0, "fps": 8, "size": (32, 32)} | kw))


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------ the trees

def kinetics_sounds_tree(base: Path) -> dict:
    root = base / "kinetics400"
    video(root / "train" / "playing bagpipes" / "bagpipes001_000010_000020.mp4", tone_hz=500.0)
    video(root / "train" / "tapping pen" / "tappingPen1_000000_000010.mp4", tone_hz=1000.0)
    video(root / "train" / "zumba" / "zumbaZumba1_000000_000010.mp4")  # not a Kinetics-Sounds class
    video(root / "val" / "playing bagpipes" / "bagpipesVAL_000003_000013.mp4", tone_hz=500.0)
    ann = [write(root / "train.csv", "label,youtube_id,time_start,time_end,split,is_cc\n"
                 "playing bagpipes,bagpipes001,10,20,train,0\n\"tapping pen\",tappingPen1,0,10,train,0\n"
                 "zumba,zumbaZumba1,0,10,train,0\n"),
           write(root / "validate.csv", "label,youtube_id,time_start,time_end,split\n"
                 "playing bagpipes,bagpipesVAL,3,13,validate\n")]
    return {"root": root, "annotations": ann, "recipe": "kinetics-sounds"}


def ave_tree(base: Path) -> dict:
    data = base / "AVE_Dataset"
    for vid, tone in (("RUhOCu3LNXM", 500.0), ("-4Aq_9qLPGw", 1000.0), ("fryFry00001", 2000.0), ("VALval00001", 700.0),
                      ("TESTtest001", 3000.0)):
        video(data / "AVE" / f"{vid}.mp4", tone_hz=tone)
    rows = ["Church bell&RUhOCu3LNXM&good&0&10", "Male speech, man speaking&-4Aq_9qLPGw&good&2&7",
            "Frying (food)&fryFry00001&bad&0&10", "Church bell&gone0000001&good&0&10"]
    write(data / "Annotations.txt", "\r\n".join(["Category&VideoID&Quality&StartTime&EndTime", *rows,
                                                  "Male speech, man speaking&VALval00001&good&0&10",
                                                  "Frying (food)&TESTtest001&good&0&10"]) + "\r\n")
    write(data / "trainSet.txt", "\n".join(rows) + "\n")
    write(data / "valSet.txt", "Male speech, man speaking&VALval00001&good&0&10\n")
    write(data / "testSet.txt", "Frying (food)&TESTtest001&good&0&10\n")
    write(data / "ReadMe.txt", "AVE\n")
    return {"root": data / "AVE", "annotations": [data], "recipe": "ave"}  # the folder stands for its files


def ucf_tree(base: Path) -> dict:
    root = base / "UCF-101"
    video(root / "ApplyEyeMakeup" / "v_ApplyEyeMakeup_g08_c01.avi", audio_rate=None)  # no audio track, like
    video(root / "ApplyEyeMakeup" / "v_ApplyEyeMakeup_g01_c01.avi", audio_rate=None)  # half of UCF-101
    video(root / "HandstandPushups" / "v_HandstandPushups_g08_c01.avi", tone_hz=1000.0)
    video(root / "HandstandPushups" / "v_HandstandPushups_g01_c02.avi", tone_hz=1000.0)
    lists = base / "ucfTrainTestlist"
    write(lists / "classInd.txt", "1 ApplyEyeMakeup\r\n2 HandstandPushups\r\n")
    write(lists / "trainlist01.txt", "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\r\n"
          "HandstandPushups/v_HandStandPushups_g08_c01.avi 2\r\nHandstandPushups/v_HandStandPushups_g09_c01.avi 2\r\n")
    write(lists / "testlist01.txt", "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi\r\n"
          "HandstandPushups/v_HandStandPushups_g01_c02.avi\r\n")
    write(lists / "trainlist02.txt", "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi 1\r\n")
    write(lists / "testlist02.txt", "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi\r\n")
    return {"root": root, "annotations": [lists], "recipe": "ucf101"}


def vggsound_tree(base: Path) -> dict:
    root = base / "vggsound" / "video"
    video(root / "---g-f_I2yQ_000001.mp4", tone_hz=700.0)
    video(root / "-0BIyqJj9ZU_000030.mp4", tone_hz=2000.0)
    video(root / "abcdefghijk_000000.mp4", tone_hz=500.0)
    full = video(base / "full.mkv")
    mf.truncate_copy(full, root / "cutShort001_000005.mkv", 0.6)  # a download cut short
    ann = write(base / "vggsound" / "vggsound.csv", "---g-f_I2yQ,1,people marching,test\r\n"
                "-0BIyqJj9ZU,30,\"cattle, bovinae cowbell\",train\r\nabcdefghijk,0,dog barking,train\r\n"
                "cutShort001,5,dog barking,train\r\nneverLoaded,10,dog barking,train\r\n")
    return {"root": root, "annotations": [ann], "recipe": "vggsound"}


TREES = {"kinetics-sounds": kinetics_sounds_tree, "ave": ave_tree, "ucf101": ucf_tree, "vggsound": vggsound_tree}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """Each tree, and its preparation with the dataset's own recipe shrunk to 32 px (all four in one
    process: one forkserver start)."""
    tmp = tmp_path_factory.mktemp("datasets")
    trees = {name: make(tmp / "media" / name) for name, make in TREES.items()}
    jobs = [{"name": name, "recipe": t["recipe"], "out": str(tmp / "prepared" / name),
             # raw arrays here (the tests below damage them); Kinetics-Sounds keeps its recipe's packed store
             "overrides": SMALL | ({} if name == "kinetics-sounds" else {"prepare.store": "npy"})
             | {"dataset.root": str(t["root"]), "dataset.annotations": list(map(str, t["annotations"]))}}
            for name, t in trees.items()]
    code = ("import json, sys\nfrom gblend_cli.config import load_config\nfrom gblend_cli.prepare import prepare_dataset\n"
            "for j in json.loads(sys.argv[1]):\n"
            "    r = prepare_dataset(load_config(j['recipe'], j['overrides']), j['out'])\n"
            "    print(json.dumps({'name': j['name'], 'ok': r['ok'], 'failed': r['failed_count']}), flush=True)\n")
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(jobs)], env=gblend_env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"tmp": tmp, "trees": trees, "out": {j["name"]: Path(j["out"]) for j in jobs},
            "summary": {d["name"]: d for d in map(json.loads, proc.stdout.strip().splitlines())}}


def index(out: Path) -> dict[str, dict]:
    with open(out / "index.csv", newline="") as f:
        return {r["clip_id"]: r for r in csv.DictReader(f)}


def report(out: Path) -> dict:
    return json.loads((out / "prepare_report.json").read_text())


def meta(out: Path) -> dict:
    return json.loads((out / "dataset.json").read_text())


# ------------------------------------------------------------------------------------------ preparation

def test_kinetics_sounds_prepares_only_its_classes(prepared):
    out = prepared["out"]["kinetics-sounds"]
    m = meta(out)
    assert len(m["classes"]) == 32 and "zumba" not in m["classes"] and m["clips"] == {"train": 2, "val": 1}
    rows = index(out)
    assert set(rows) == {"bagpipes001_000010_000020", "tappingPen1_000000_000010", "bagpipesVAL_000003_000013"}
    assert m["classes"][int(rows["tappingPen1_000000_000010"]["labels"])] == "tapping pen"
    assert {k: r["group"] for k, r in rows.items()} == {k: k.rsplit("_", 2)[0] for k in rows}  # the YouTube id
    r = report(out)
    assert (r["ok"], r["failed"], r["dropped_rows"], r["rows"]) == (3, [], 1, {"train": 2, "val": 1})
    assert m["store"] == "packed"  # the recipe's store
    from gblend_cli.store import load_clip

    arrays = load_clip(out, "tappingPen1_000000_000010")
    assert arrays["rgb"].shape == (16, 32, 32, 3) and arrays["audio"].shape == (200, 40)


def test_ave_prepares_whole_videos_with_their_category(prepared):
    out = prepared["out"]["ave"]
    m = meta(out)
    assert m["classes"] == ["Church bell", "Frying (food)", "Male speech, man speaking"]
    assert m["clips"] == {"test": 1, "train": 3, "val": 1}
    rows = index(out)
    assert m["classes"][int(rows["-4Aq_9qLPGw"]["labels"])] == "Male speech, man speaking"
    assert all(r["group"] == k for k, r in rows.items())  # the VideoID
    assert all(float(r["seconds"]) == pytest.approx(2.0) for r in rows.values())  # whole video, not 2..7 s
    assert report(out)["failed"] == [{"clip": "gone0000001", "reason": "file not found: gone0000001.*",
                                      "stage": "file", "split": "train"}]


def test_ucf101_keeps_silent_videos_and_reads_split_1(prepared):
    out = prepared["out"]["ucf101"]
    m = meta(out)
    assert m["classes"] == ["ApplyEyeMakeup", "HandstandPushups"] and m["ucf_split"] == 1
    rows = index(out)
    assert {k: (r["split"], r["has_audio"]) for k, r in rows.items()} == {
        "v_ApplyEyeMakeup_g08_c01": ("train", "false"), "v_HandStandPushups_g08_c01": ("train", "true"),
        "v_ApplyEyeMakeup_g01_c01": ("test", "false"), "v_HandStandPushups_g01_c02": ("test", "true")}
    assert {k: r["group"] for k, r in rows.items()} == {  # class (as classInd.txt spells it) + gXX
        "v_ApplyEyeMakeup_g08_c01": "ApplyEyeMakeup_g08", "v_HandStandPushups_g08_c01": "HandstandPushups_g08",
        "v_ApplyEyeMakeup_g01_c01": "ApplyEyeMakeup_g01", "v_HandStandPushups_g01_c02": "HandstandPushups_g01"}
    assert (np.load(out / "audio" / "v_ApplyEyeMakeup_g08_c01.npy") == SILENCE).all()
    assert not (np.load(out / "audio" / "v_HandStandPushups_g08_c01.npy") == SILENCE).all()
    assert report(out)["no_audio"] == 2
    rgb = np.load(out / "rgb" / "v_HandStandPushups_g08_c01.npy")
    assert rgb.shape == (int(rows["v_HandStandPushups_g08_c01"]["frames"]), 32, 32, 3) and rgb.std() > 5
    assert 16 <= rgb.shape[0] <= 17  # 2 s at 8 fps (AVI's mpeg4 + mp3 may show one frame more)


def test_vggsound_quoted_label_and_the_cut_download(prepared):
    out = prepared["out"]["vggsound"]
    m = meta(out)
    assert m["classes"] == ["cattle, bovinae cowbell", "dog barking", "people marching"]
    rows = index(out)
    assert rows["-0BIyqJj9ZU_000030"]["labels"] == "0" and rows["---g-f_I2yQ_000001"]["split"] == "test"
    assert {k: r["group"] for k, r in rows.items()} == {k: k.rsplit("_", 1)[0] for k in rows}  # the YouTube id
    failed = {f["clip"]: f for f in report(out)["failed"]}
    assert failed["neverLoaded_000010"]["stage"] == "file"
    # the truncated mkv decodes in part (prepare-data keeps what is there) or fails with a reason
    cut = rows.get("cutShort001_000005")
    assert cut is not None and (cut["status"] == "failed" or int(cut["frames"]) < 16)


# ------------------------------------------------------------------------------------------ the doctor

def doctor(*args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(gblend_cmd("prepare-data", "--check", *args), cwd=cwd, env=gblend_env(),
                          capture_output=True, text=True, timeout=180)


def problem_lines(proc) -> dict[str, tuple[str, str]]:
    """stdout: one TAB-separated line per damaged or missing clip -> {clip: (problem, reason)}."""
    lines = proc.stdout.splitlines()
    parsed = [line.split("\t") for line in lines]
    assert all(len(p) == 3 for p in parsed), lines
    got = {clip: (problem, reason) for problem, clip, reason in parsed}
    assert len(got) == len(lines), lines  # one line per clip
    return got


def test_check_a_complete_prepared_folder_exits_0(prepared):
    proc = doctor(prepared["out"]["kinetics-sounds"], cwd=prepared["tmp"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout == ""  # nothing to list
    assert "all 3 clips complete" in proc.stderr and "Traceback" not in proc.stderr
    assert "32 classes" in proc.stderr and "30 without clips" in proc.stderr


def test_check_lists_missing_clips_and_compares_with_the_published_sizes(prepared):
    proc = doctor(prepared["out"]["ave"], cwd=prepared["tmp"])
    assert proc.returncode == 1
    assert problem_lines(proc) == {"gone0000001": ("missing", "file not found: gone0000001.*")}
    assert "3,339" in proc.stderr and "warning" in proc.stderr  # 4 train rows of the 3,339 published
    assert "Traceback" not in proc.stderr


def test_check_finds_damaged_arrays(prepared):
    out = prepared["tmp"] / "damaged-ucf"
    shutil.copytree(prepared["out"]["ucf101"], out)
    rgb = out / "rgb" / "v_HandStandPushups_g08_c01.npy"
    rgb.write_bytes(rgb.read_bytes()[:-100])  # an array cut short (a copy interrupted)
    (out / "flow" / "v_ApplyEyeMakeup_g01_c01.npy").unlink()
    np.save(out / "audio" / "v_HandStandPushups_g01_c02.npy", np.zeros((7, 40), np.float16))  # wrong length
    proc = doctor(out, cwd=prepared["tmp"])
    assert proc.returncode == 1
    got = problem_lines(proc)
    assert set(got) == {"v_HandStandPushups_g08_c01", "v_ApplyEyeMakeup_g01_c01", "v_HandStandPushups_g01_c02",
                        "v_HandStandPushups_g09_c01"}
    assert got["v_HandStandPushups_g08_c01"][0] == "damaged" and "rgb/" in got["v_HandStandPushups_g08_c01"][1]
    assert got["v_ApplyEyeMakeup_g01_c01"] [0] == "damaged" and "missing" in got["v_ApplyEyeMakeup_g01_c01"][1]
    # the size recorded in index.csv (issue 13's checksums) catches the wrong-length array first
    assert "audio/" in got["v_HandStandPushups_g01_c02"][1] and "prepare-data wrote" in got["v_HandStandPushups_g01_c02"][1]
    assert got["v_HandStandPushups_g09_c01"][0] == "missing"
    (out / "index.csv").unlink()  # an interrupted preparation has no index yet
    proc = doctor(out, cwd=prepared["tmp"])
    assert proc.returncode == 1 and problem_lines(proc)["-"][0] == "incomplete"


def test_check_a_media_folder_before_preparing(prepared):
    t = prepared["trees"]["vggsound"]
    proc = doctor(t["root"], "--dataset", "vggsound", "--annotations", t["annotations"][0], "--workers", "1",
                  *SETS, cwd=prepared["tmp"])
    assert proc.returncode == 1, proc.stderr[-2000:]
    got = problem_lines(proc)
    assert set(got) == {"cutShort001_000005", "neverLoaded_000010"}
    assert got["cutShort001_000005"][0] == "unreadable" and "truncated" in got["cutShort001_000005"][1]
    assert got["neverLoaded_000010"][0] == "missing"
    assert "183,730" in proc.stderr  # the published train size, beside the 4 rows found
    t = prepared["trees"]["ucf101"]
    proc = doctor(t["root"], "--dataset", "ucf101", "--annotations", t["annotations"][0], "--workers", "1",
                  *SETS, cwd=prepared["tmp"])
    assert proc.returncode == 1
    assert problem_lines(proc) == {"v_HandStandPushups_g09_c01": ("missing", "file not found: " + str(
        t["root"] / "HandstandPushups" / "v_HandStandPushups_g09_c01.avi"))}
    assert "9,537" in proc.stderr
    train = next(line for line in proc.stderr.splitlines() if line.strip().startswith("train "))
    assert train.split()[1:4] == ["2", "1", "1"], train  # 2 clips, 1 missing, 1 without audio


def test_check_bad_input_is_one_line(prepared, run_gblend):
    proc = run_gblend("prepare-data", "--check", prepared["tmp"] / "media" / "ave")  # no dataset given
    assert proc.returncode == 2 and proc.stderr.startswith("error:") and len(proc.stderr.splitlines()) == 1
    assert "--dataset" in proc.stderr
    proc = run_gblend("prepare-data", "--dataset", "ucf101", "--ucf-split", "4", "--root", ".", "--annotations", ".")
    assert proc.returncode == 2 and "--ucf-split" in proc.stderr and len(proc.stderr.splitlines()) == 1
