"""`prepare-data` run again into a folder it prepared: what the annotations say now (labels, split,
which media file and span a clip is) wins over what the journal recorded, and clips that failed
for a transient reason are tried again. Real media (tests/media_factory.py), the real entry point."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest

import media_factory as mf
from conftest import gblend_cmd, gblend_env
from gblend_cli.media import mel_band_centres_hz
from test_prepare import read_index

RECIPE = '[prepare]\nfps = 8.0\nshort_side = 32\nflow = "none"\n'
HEADER = "label,youtube_id,time_start,time_end,split\n"


def prepare(tmp_path, root, ann, out, *extra, recipe: str = RECIPE) -> subprocess.CompletedProcess:
    recipe = mf.write_bytes(tmp_path / "r.toml", recipe)
    proc = subprocess.run(gblend_cmd("prepare-data", "--dataset", "kinetics400", "--root", root, "--annotations", ann,
                                     "--out", out, "--workers", "1", "--recipe", recipe, *extra),
                          cwd=tmp_path, env=gblend_env(), capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    return proc


def loudest_band(out, clip: str) -> int:
    return int(np.load(out / "audio" / f"{clip}.npy").astype(np.float32)[10:-10].mean(axis=0).argmax())


def band(hz: float) -> int:
    return int(np.argmin(np.abs(mel_band_centres_hz() - hz)))


def cid(ytid: str) -> str:
    return f"{ytid}_000010_000020"


def test_a_rerun_takes_labels_split_and_files_from_the_annotations_now(tmp_path):
    root = tmp_path / "k400"
    for ytid, label, tone in [("clipAAAAAAA", "abseiling", 500.0), ("clipBBBBBBB", "zumba", 500.0),
                              ("clipCCCCCCC", "zumba", 500.0), ("clipDDDDDDD", "zumba", 500.0)]:
        mf.write_video(root / "train" / label / f"{cid(ytid)}.mp4", seconds=2.0, tone_hz=tone)
    ann = mf.write_bytes(tmp_path / "a1.csv", HEADER + "abseiling,clipAAAAAAA,10,20,train\nzumba,clipBBBBBBB,10,20,train\n"
                         "zumba,clipCCCCCCC,10,20,train\nzumba,clipDDDDDDD,10,20,train\n")
    out = tmp_path / "out"
    prepare(tmp_path, root, ann, out)
    first = read_index(out)
    assert {c: (r["labels"], r["split"]) for c, r in first.items()} == {
        cid("clipAAAAAAA"): ("0", "train"), cid("clipBBBBBBB"): ("1", "train"), cid("clipCCCCCCC"): ("1", "train"),
        cid("clipDDDDDDD"): ("1", "train")}
    assert loudest_band(out, cid("clipDDDDDDD")) == band(500.0)
    mtimes = {c: (out / "rgb" / f"{c}.npy").stat().st_mtime_ns for c in first}

    # the media root moves (same files under it); a class is added (zumba's index shifts from 1 to
    # 2), clip C moves to val, D's id now names another file (a new download, another sound) and
    # B's file is replaced by another at the same path (another sound, another size)
    moved = tmp_path / "k400_moved"
    shutil.move(root, moved)
    b_path = moved / "train" / "zumba" / f"{cid('clipBBBBBBB')}.mp4"
    size_b = b_path.stat().st_size
    mf.write_video(b_path, seconds=3.0, tone_hz=3000.0)
    assert b_path.stat().st_size != size_b
    (moved / "train" / "zumba" / f"{cid('clipDDDDDDD')}.mp4").unlink()
    new_d = mf.write_video(moved / "train" / "zumba" / f"{cid('clipDDDDDDD')}.mkv", seconds=2.0, tone_hz=2000.0)
    mf.write_video(moved / "train" / "archery" / f"{cid('clipEEEEEEE')}.mp4", seconds=2.0)
    ann2 = mf.write_bytes(tmp_path / "a2.csv", HEADER + "abseiling,clipAAAAAAA,10,20,train\nzumba,clipBBBBBBB,10,20,train\n"
                          "zumba,clipCCCCCCC,10,20,val\nzumba,clipDDDDDDD,10,20,train\narchery,clipEEEEEEE,10,20,train\n")
    proc = prepare(tmp_path, moved, ann2, out)
    said = " ".join(proc.stderr.split())
    assert "1 clips now name another media file" in said, proc.stderr
    assert "1 clips were prepared from a media file whose size has changed since" in said, proc.stderr
    index = read_index(out)
    assert {c: (r["labels"], r["split"]) for c, r in index.items()} == {
        cid("clipAAAAAAA"): ("0", "train"), cid("clipBBBBBBB"): ("2", "train"), cid("clipCCCCCCC"): ("2", "val"),
        cid("clipDDDDDDD"): ("2", "train"), cid("clipEEEEEEE"): ("1", "train")}
    assert {r["status"] for r in index.values()} == {"ok"}
    assert index[cid("clipDDDDDDD")]["source"] == str(new_d)
    assert all(r["source"].startswith(str(moved)) for r in index.values())
    assert loudest_band(out, cid("clipDDDDDDD")) == band(2000.0)  # prepared again from the new file
    assert loudest_band(out, cid("clipBBBBBBB")) == band(3000.0) and index[cid("clipBBBBBBB")]["seconds"] == "3.0"
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["classes"] == ["abseiling", "archery", "zumba"] and meta["clips"] == {"train": 4, "val": 1}
    report = json.loads((out / "prepare_report.json").read_text())
    assert (report["ok"], report["failed"]) == (5, [])
    # the clips whose file stayed were not prepared again, though their root moved
    for c in (cid("clipAAAAAAA"), cid("clipCCCCCCC")):
        assert (out / "rgb" / f"{c}.npy").stat().st_mtime_ns == mtimes[c], c
    for c in (cid("clipBBBBBBB"), cid("clipDDDDDDD")):
        assert (out / "rgb" / f"{c}.npy").stat().st_mtime_ns != mtimes[c], c


def journal_plan(tmp_path, lines: list[dict], span_if_longer: bool = False):
    """A plan of one clip "a" (media file <root>/x/a.mp4) after reading `lines` as the journal:
    (prepared clips left out as cut short, as naming another file or span; clips to prepare)."""
    from gblend_cli.manifests import ClipSpec
    from gblend_cli.prepare import _Plan
    from gblend_cli.storage import ScratchDB, append_jsonl

    root = tmp_path / "root"
    span = {"start": 4.0, "end": 7.0, "span_if_longer": True} if span_if_longer else {}
    journal = tmp_path / "progress.jsonl"
    journal.unlink(missing_ok=True)
    for line in lines:
        append_jsonl(journal, {"clip": "a", "split": "train", "labels": [0], "status": "ok"} | line)
    with ScratchDB(tmp_path) as db:
        plan = _Plan(db, str(root))
        plan.add([ClipSpec("a", str(root / "x" / "a.mp4"), (0,), "train", **span)])
        again = plan.load_journal(journal, tmp_path)
        return again["cut"], again["moved"], plan.count_todo()


def test_the_journals_last_line_for_a_clip_decides(tmp_path):
    now = {"file": "x/a.mp4", "span": None}
    before = {"file": "y/a.mp4", "span": None}
    assert journal_plan(tmp_path, [now]) == (0, 0, 0)
    assert journal_plan(tmp_path, [before]) == (0, 1, 1)
    assert journal_plan(tmp_path, [before, now]) == (0, 0, 0)  # prepared again from x/a.mp4 last time
    assert journal_plan(tmp_path, [now, before]) == (0, 1, 1)  # the arrays are y/a.mp4's
    assert journal_plan(tmp_path, [{"file": "x/a.mp4", "span": [4.0, 8.0, True]}], span_if_longer=True) == (0, 1, 1)
    assert journal_plan(tmp_path, [{"file": "x/a.mp4", "span": [4.0, 7.0, True]}], span_if_longer=True) == (0, 0, 0)


def test_a_prepared_clip_whose_media_file_changed_size_is_prepared_again(tmp_path):
    """By size only: a copy of the dataset with new mtimes prepares nothing again, and a media file
    deleted after preparing (to save space) leaves its clip prepared."""
    from gblend_cli.manifests import ClipSpec
    from gblend_cli.prepare import _Plan
    from gblend_cli.storage import ScratchDB, append_jsonl

    media = mf.write_bytes(tmp_path / "root" / "x" / "a.mp4", b"twelve bytes")

    def replaced(rec: dict) -> tuple[int, int]:
        journal = tmp_path / "progress.jsonl"
        journal.unlink(missing_ok=True)
        append_jsonl(journal, {"clip": "a", "split": "train", "labels": [0], "status": "ok", "file": "x/a.mp4",
                               "span": None} | rec)
        with ScratchDB(tmp_path) as db:
            plan = _Plan(db, str(tmp_path / "root"))
            plan.add([ClipSpec("a", str(media), (0,), "train")])
            return plan.load_journal(journal, tmp_path)["replaced"], plan.count_todo()

    assert replaced({"source_size": 12}) == (0, 0)
    assert replaced({"source_size": 13}) == (1, 1)
    assert replaced({}) == (0, 0)  # a record from before source_size
    os.utime(media, ns=(1, 1))  # copied without its times
    assert replaced({"source_size": 12}) == (0, 0)
    media.unlink()
    assert replaced({"source_size": 13}) == (0, 0)


def test_journal_lines_of_an_older_gblend(tmp_path):
    """Lines without "file"/"span" (gblend before them): the absolute path decides; a file named
    by the video id alone was decoded whole then, so its clip is prepared again for the span."""
    old = {"source": str(tmp_path / "root" / "x" / "a.mp4")}
    assert journal_plan(tmp_path, [old]) == (0, 0, 0)
    assert journal_plan(tmp_path, [{"source": "/elsewhere/x/a.mp4"}]) == (0, 1, 1)
    assert journal_plan(tmp_path, [old], span_if_longer=True) == (0, 1, 1)


# ------------------------------------------------------------------------------------------ transient failures

def _die(job, settings):
    """A clip job whose worker is killed from outside (SIGKILL, what the out-of-memory killer
    sends), crashes (SIGSEGV), runs out of memory, or fails on its file."""
    what = job["clip_id"]
    if what in ("killed", "crashed"):
        os.kill(os.getpid(), signal.SIGKILL if what == "killed" else signal.SIGSEGV)
        time.sleep(60)
    if what == "oom":
        raise MemoryError
    if what == "bad":
        raise ValueError("not a video")
    if what == "hung":
        time.sleep(60)
    return {"clip": what, "split": "train", "labels": [0], "source": job["path"], "status": "ok"}


def test_the_pool_tells_transient_failures_from_permanent_ones(time_limit):
    from gblend_cli.workers import ClipPool, is_transient

    names = ["killed", "crashed", "oom", "bad", "hung", "fine"]
    jobs = [{"clip_id": n, "path": f"/m/{n}.mp4", "labels": [0], "split": "train"} for n in names]
    with time_limit(90):
        pool = ClipPool(2, _die, {}, 1, 1.0)
        try:
            recs = {r["clip"]: r for r in pool.run(jobs)}
        finally:
            pool.close()
    got = {n: (recs[n]["status"], is_transient(recs[n])) for n in names}
    assert got == {"killed": ("failed", True), "crashed": ("failed", False), "oom": ("failed", True),
                   "bad": ("failed", False), "hung": ("failed", True), "fine": ("ok", False)}, recs
    assert "SIGKILL" in recs["killed"]["reason"] and "SIGSEGV" in recs["crashed"]["reason"]
    assert recs["oom"]["reason"] == "out of memory" and "decode timeout" in recs["hung"]["reason"]
    # journals written before the flag: a timeout or a crash was transient, a decode error is not
    assert is_transient({"status": "failed", "reason": "decode timeout after 120 s"})
    assert is_transient({"status": "failed", "reason": "decoder process crashed"})
    assert not is_transient({"status": "failed", "reason": "cannot open: Invalid data found when processing input"})


@pytest.mark.slow  # two prepare-data runs, one decoding 2 minutes of video: ~10 s on 2 cores
def test_a_rerun_tries_a_timed_out_clip_again_and_not_an_undecodable_one(tmp_path):
    """Run 1 with a decode timeout (0.1 s) that the long clip (TV-L1 flow over 120 s: ~2 s here)
    cannot meet: it fails as transient, the text file named .mp4 as permanent. Run 2 with the
    default timeout prepares the long clip and leaves the text file alone; once that file is
    replaced by a video, run 3 prepares it."""
    root = tmp_path / "k400"
    mf.write_video(root / "train" / "yoga" / f"{cid('longClip001')}.mp4", seconds=120.0, fps=8, size=(32, 32))
    mf.write_video(root / "train" / "yoga" / f"{cid('shortClip01')}.mp4", seconds=1.0, fps=8, size=(32, 32))
    mf.write_bytes(root / "train" / "yoga" / f"{cid('textFile001')}.mp4", "not a video\n" * 20)
    ann = mf.write_bytes(tmp_path / "a.csv", HEADER + "".join(f"yoga,{y},10,20,train\n"
                                                              for y in ("longClip001", "shortClip01", "textFile001")))
    out = tmp_path / "out"
    recipe = RECIPE.replace('flow = "none"', 'flow = "tvl1"')
    prepare(tmp_path, root, ann, out, "--set", "prepare.decode_timeout_s=0.1", recipe=recipe)
    first = {r["clip"]: r for r in map(json.loads, (out / "progress.jsonl").read_text().splitlines())}
    assert "decode timeout" in first[cid("longClip001")]["reason"] and first[cid("longClip001")]["transient"]
    assert first[cid("textFile001")]["status"] == "failed" and not first[cid("textFile001")]["transient"]
    assert first[cid("shortClip01")]["status"] == "ok"

    proc = prepare(tmp_path, root, ann, out, recipe=recipe)
    assert "1 clips failed for a transient reason last time" in " ".join(proc.stderr.split()), proc.stderr
    index = read_index(out)
    assert index[cid("longClip001")]["status"] == "ok" and index[cid("longClip001")]["frames"] == str(120 * 8)
    assert index[cid("textFile001")]["status"] == "failed"
    lines = [json.loads(x)["clip"] for x in (out / "progress.jsonl").read_text().splitlines()]
    assert lines.count(cid("textFile001")) == 1 and lines.count(cid("shortClip01")) == 1  # not tried again
    assert lines.count(cid("longClip001")) == 2
    report = json.loads((out / "prepare_report.json").read_text())
    assert [(f["clip"], f["transient"]) for f in report["failed"]] == [(cid("textFile001"), False)]

    # the undecodable file replaced by a good one (a broken download fixed): run 3 tries that clip,
    # and only it
    mf.write_video(root / "train" / "yoga" / f"{cid('textFile001')}.mp4", seconds=1.0, fps=8, size=(32, 32))
    proc = prepare(tmp_path, root, ann, out, recipe=recipe)
    assert "1 clips failed on a media file that has been replaced since" in " ".join(proc.stderr.split()), proc.stderr
    assert read_index(out)[cid("textFile001")]["status"] == "ok"
    lines = [json.loads(x)["clip"] for x in (out / "progress.jsonl").read_text().splitlines()]
    assert lines.count(cid("textFile001")) == 2 and lines.count(cid("longClip001")) == 2


def test_a_clip_failing_for_a_transient_reason_again_and_again_is_left_failed(tmp_path):
    """`prepare.transient_tries` (3): a clip whose last three records are transient failures on
    the same file is not tried again ("given_up"); a success, a permanent failure or another file
    in between restarts the count; a replaced file is tried again; 0 lifts the limit."""
    from gblend_cli.manifests import ClipSpec
    from gblend_cli.prepare import _Plan
    from gblend_cli.storage import ScratchDB, append_jsonl
    from gblend_cli.workers import source_stat

    media = tmp_path / "root" / "x" / "a.mp4"
    media.parent.mkdir(parents=True)
    media.write_bytes(b"a video that takes too long")
    now = source_stat(str(media))
    base = {"clip": "a", "split": "train", "labels": [0], "file": "x/a.mp4", "span": None}
    timeout = base | {"status": "failed", "reason": "decode timeout after 120 s", "transient": True, "source_stat": now}
    ok = base | {"status": "ok"}
    bad = base | {"status": "failed", "reason": "cannot open", "transient": False, "source_stat": now}

    def plan(lines, tries=3):
        journal = tmp_path / "progress.jsonl"
        journal.unlink(missing_ok=True)
        for line in lines:
            append_jsonl(journal, line)
        with ScratchDB(tmp_path) as db:
            p = _Plan(db, str(tmp_path / "root"))
            p.add([ClipSpec("a", str(media), (0,), "train")])
            again = p.load_journal(journal, tmp_path, tries)
            return again["transient"], again["given_up"], p.count_todo()

    assert plan([timeout]) == plan([timeout] * 2) == (1, 0, 1)  # tried again
    assert plan([timeout] * 3) == plan([timeout] * 5) == (0, 1, 0)  # left failed
    assert plan([timeout] * 3, tries=0) == (1, 0, 1)
    assert plan([timeout] * 3, tries=4) == (1, 0, 1)
    assert plan([timeout, timeout, ok, timeout]) == plan([timeout, bad, timeout, timeout]) == (1, 0, 1)
    elsewhere = timeout | {"source_stat": [1, 1]}  # failed twice on a file since replaced by this one
    assert plan([elsewhere, elsewhere, timeout]) == (1, 0, 1)
    assert plan([timeout] * 3 + [ok]) == (0, 0, 0)  # a later success is the clip's state
    media.write_bytes(b"a shorter video, downloaded again")  # replaced after the third failure: tried again
    assert plan([timeout] * 3) == (0, 0, 1)


@pytest.mark.slow  # two prepare-data runs that each wait out a 0.1 s decode timeout on 2 minutes of video
def test_a_rerun_says_which_clips_it_no_longer_tries(tmp_path):
    """With `prepare.transient_tries=1` the clip that timed out once is left failed by the rerun,
    which says so in one line and does not decode it again."""
    root = tmp_path / "k400"
    mf.write_video(root / "train" / "yoga" / f"{cid('longClip001')}.mp4", seconds=120.0, fps=8, size=(32, 32))
    ann = mf.write_bytes(tmp_path / "a.csv", HEADER + "yoga,longClip001,10,20,train\n")
    out = tmp_path / "out"
    recipe = RECIPE.replace('flow = "none"', 'flow = "tvl1"')
    settings = ("--set", "prepare.decode_timeout_s=0.1", "--set", "prepare.transient_tries=1")
    prepare(tmp_path, root, ann, out, *settings, recipe=recipe)
    proc = prepare(tmp_path, root, ann, out, *settings, recipe=recipe)
    said = " ".join(proc.stderr.split())
    assert "1 clips failed for a transient reason 1 times running on the same file: left failed" in said, proc.stderr
    assert "prepare.transient_tries=0" in said and "trying them again" not in said
    lines = (out / "progress.jsonl").read_text().splitlines()
    assert len(lines) == 1  # not decoded again
    report = json.loads((out / "prepare_report.json").read_text())
    assert [(f["clip"], f["transient"]) for f in report["failed"]] == [(cid("longClip001"), True)]
