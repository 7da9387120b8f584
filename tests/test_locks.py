"""The README's "One writer per folder" guarantee, checked on the real entry point (`python -m gblend_cli`
subprocesses) and on `storage.folder_lock`: locks, stale locks (a lock left by a dead process is taken
over), a second command on the same folder is refused.

The train scenario (`train_lock_scenario`) is built once per session in conftest.py: test_bad_input.py
and test_safety.py use its finished run too."""

from __future__ import annotations

import json
import os
import socket

import pytest

from conftest import seed_demo_media
from reliability import Proc, assert_one_line_error, folder_held, hold_while_stopped, write_stale_lock


def test_stale_train_lock_is_taken_over(train_lock_scenario):
    s = train_lock_scenario
    assert s["took"], "the run did not take over the stale lock"
    assert s["rc1"] == 0, s["first"].stderr[-3000:]
    assert (s["run"] / "final.json").exists() and not (s["run"] / ".lock").exists()


def test_second_train_command_on_the_same_folder_is_refused(train_lock_scenario):
    s = train_lock_scenario
    line = assert_one_line_error(s["rc2"], s["second"].stderr, s["second"].stdout, str(s["first"].pid), ".lock")
    assert "another gblend" in line
    assert s["rc1"] == 0  # the first one was not disturbed
    assert [json.loads(x)["epoch"] for x in (s["run"] / "metrics.jsonl").read_text().splitlines()] == [0, 1, 2, 3]


@pytest.fixture(scope="module")
def prepare_lock_scenario(tmp_path_factory, demo_media):
    tmp = tmp_path_factory.mktemp("prep_lock")
    out = tmp / "data"
    write_stale_lock(out)
    seed_demo_media(demo_media, out, 24, 8)
    args = ["prepare-data", "--dataset", "demo", "--set", "demo.train_videos=24", "--set", "demo.test_videos=8",
            "--workers", "1", "--flow", "none", "--out", out]
    first = Proc(args, tmp, "first")
    held = hold_while_stopped(first, out, args, tmp)
    rc1 = first.wait()
    return {"out": out, "first": first, "rc1": rc1, **held}


def test_stale_prepare_lock_is_taken_over(prepare_lock_scenario):
    s = prepare_lock_scenario
    assert s["took"] and s["rc1"] == 0, s["first"].stderr[-3000:]
    report = json.loads((s["out"] / "prepare_report.json").read_text())
    assert (report["ok"], report["failed"]) == (32, [])
    assert not (s["out"] / ".lock").exists()


def test_second_prepare_on_the_same_folder_is_refused(prepare_lock_scenario):
    s = prepare_lock_scenario
    assert_one_line_error(s["rc2"], s["second"].stderr, s["second"].stdout, str(s["first"].pid), ".lock")


def test_folder_lock_rules(tmp_path):
    from gblend_cli.errors import UserError
    from gblend_cli.storage import folder_lock

    # a live owner on another host is never taken over (its pid means nothing here)
    d = tmp_path / "other_host"
    d.mkdir()
    (d / ".lock").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname() + "-elsewhere"}))
    with pytest.raises(UserError, match="pid"):
        with folder_lock(d):
            pass
    # a live owner on this host: refused, the lock is left alone
    d2 = tmp_path / "live"
    with folder_lock(d2):
        before = (d2 / ".lock").read_bytes()
        with pytest.raises(UserError, match=str(os.getpid())):
            with folder_lock(d2):
                pass
        assert (d2 / ".lock").read_bytes() == before
    assert not (d2 / ".lock").exists()
    # an empty lock (its writer was killed between create and write) is stale
    d3 = tmp_path / "empty"
    d3.mkdir()
    (d3 / ".lock").write_text("")
    with folder_lock(d3):
        assert json.loads((d3 / ".lock").read_text())["pid"] == os.getpid()


def test_stale_lock_takeover_cannot_steal_a_fresh_lock(tmp_path, monkeypatch):
    """Two commands start on a folder with a stale lock (a dead owner). A takes it over; B read the
    lock while it still named the dead owner. Simulated where folder_lock reads the owner (os.read
    of the lock's descriptor): every read B makes returns the stale content. B must be refused,
    whatever it read (only the kernel's flock decides), and A's lock is left as it is."""
    from gblend_cli.errors import UserError
    from gblend_cli.storage import folder_lock

    d = tmp_path / "run"
    dead = write_stale_lock(d)
    lock = d / ".lock"
    seen_by_b = lock.read_bytes()
    assert json.loads(seen_by_b)["pid"] == dead
    with folder_lock(d):  # A
        a_lock = lock.read_bytes()
        a_inode = lock.stat().st_ino
        real_read = os.read
        stale_reads = []

        def read_as_b_saw_it(fd, n):
            try:
                is_lock = os.fstat(fd).st_ino == a_inode
            except OSError:
                is_lock = False
            if is_lock:
                stale_reads.append(fd)
                return seen_by_b[:n]
            return real_read(fd, n)

        monkeypatch.setattr(os, "read", read_as_b_saw_it)
        try:
            with pytest.raises(UserError, match="another gblend"):
                with folder_lock(d):  # B must not get in while A holds the folder
                    pass
        finally:
            monkeypatch.undo()
        assert stale_reads, "B never read the lock: the race was not simulated"
        assert lock.read_bytes() == a_lock and lock.stat().st_ino == a_inode
        with pytest.raises(UserError):  # A still holds it
            with folder_lock(d):
                pass


def test_lock_file_replaced_between_open_and_flock_is_not_trusted(tmp_path, monkeypatch):
    """A opens .lock while C owns the folder; before A's flock, C finishes (unlinking .lock) and B
    locks a new .lock. A's flock then succeeds on the unlinked file: A must see that the file it
    locked is no longer the folder's lock, retry, and be refused while B holds the folder."""
    import fcntl

    from gblend_cli.errors import UserError
    from gblend_cli.storage import folder_lock

    d = tmp_path / "run"
    d.mkdir()
    c, b = folder_lock(d), folder_lock(d)
    c.__enter__()
    real_flock = fcntl.flock
    raced = []

    def flock(fd, op):
        if not raced:  # A's first flock: the race happens right before it
            raced.append(os.fstat(fd).st_ino)
            c.__exit__(None, None, None)
            b.__enter__()  # (its own flock goes straight through: `raced` is set)
        return real_flock(fd, op)

    monkeypatch.setattr(fcntl, "flock", flock)
    try:
        with pytest.raises(UserError, match="another gblend"):
            with folder_lock(d):  # A
                pass
        assert raced and (d / ".lock").stat().st_ino != raced[0], "the race was not simulated"
        monkeypatch.undo()
        with pytest.raises(UserError):  # B still holds the folder
            with folder_lock(d):
                pass
    finally:
        monkeypatch.undo()
        if raced:
            b.__exit__(None, None, None)
    assert not (d / ".lock").exists()


@pytest.mark.parametrize("flock", [True, False], ids=["flock", "lock-file fallback"])
def test_a_waiting_lock_gets_the_folder_once_its_writer_lets_go(tmp_path, monkeypatch, flock):
    """folder_lock(wait_s=...) — for writers that hold a folder for seconds, such as the report's —
    waits for a live writer on this host instead of refusing, takes the folder once that writer
    lets go, and refuses as before when the writer keeps it past the wait. With and without flock."""
    import errno
    import fcntl
    import threading
    import time

    from gblend_cli.errors import UserError
    from gblend_cli.storage import folder_lock

    if not flock:
        def no_flock(fd, op):
            raise OSError(errno.ENOLCK, "No locks available")

        monkeypatch.setattr(fcntl, "flock", no_flock)
    d, release = tmp_path / "report", threading.Event()
    with folder_held(d, "report", release) as released_at:
        with pytest.raises(UserError, match="another gblend report"):  # kept past the wait: refused
            with folder_lock(d, "report", wait_s=0.3):
                pass
        threading.Timer(0.5, release.set).start()
        with folder_lock(d, "report", wait_s=30):
            got_at = time.time()
            assert json.loads((d / ".lock").read_text())["pid"] == os.getpid()
    assert released_at and got_at >= released_at[0]  # only after the writer let go
    assert not (d / ".lock").exists()
