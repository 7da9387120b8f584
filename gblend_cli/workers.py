"""Worker processes: how every command that fans work out starts them, and the per-clip pool that
`prepare-data` and `prepare-data --check` decode with.

- `worker_context()`: the multiprocessing context (a forkserver) for any worker process.
- `ClipPool`: N workers fed one clip job at a time; a job running longer than its timeout has its
  worker killed and replaced and is reported as failed, so a hung or crashing decoder never stops
  or hangs a 260k-clip run.
- Failures are permanent (the file: undecodable, a decoder crash on it) or `transient` (the
  machine, not the file: a timeout, a worker killed from outside, e.g. by the out-of-memory
  killer, Python out of memory): records of transient ones carry "transient": true, and a rerun of
  prepare-data tries those clips again (`is_transient`) while it keeps the permanent ones, unless
  their file has changed since (`source_stat`: a broken download replaced).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from multiprocessing.connection import wait


def worker_context():
    """Worker processes fork from a forkserver that has imported our modules, torch and OpenCV
    once (fast starts) and never used their thread pools (a fork of those can deadlock)."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["gblend_cli.cli", "gblend_cli.prepare", "gblend_cli.media", "gblend_cli.demo_data",
                                "gblend_cli.train", "gblend_cli.engine", "gblend_cli.blend", "gblend_cli.policies", "torch", "torchvision", "cv2", "av"])
    return ctx


def quiet_worker() -> None:
    """Worker processes leave Ctrl-C to the parent and die quietly when the pool ends."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def clip_record(spec: dict, **fields) -> dict:
    """A clip job's record (what prepare-data journals): its identity plus `fields` (status,
    reason, shapes...). "file" (the media file relative to the dataset root) and "span" (the
    [start, end, span_if_longer] read from it, null for the whole file) say what the clip was
    prepared from: a rerun prepares again a clip whose annotations now name another."""
    rec = {"clip": spec["clip_id"], "split": spec["split"], "labels": list(spec["labels"]), "source": spec["path"]}
    if "file" in spec:
        rec |= {"file": spec["file"], "span": clip_span_of(spec)}
    return rec | fields


def clip_span_of(spec: dict) -> list | None:
    """What part of its file a clip job reads: [start, end, span_if_longer], None for all of it."""
    if spec.get("start") is None and spec.get("end") is None:
        return None
    return [spec.get("start"), spec.get("end"), bool(spec.get("span_if_longer"))]


_KILLED = (signal.SIGKILL, signal.SIGTERM, signal.SIGINT)  # sent from outside (the OOM killer sends SIGKILL)
_LEGACY_TRANSIENT = ("decode timeout after ", "decoder process crashed")  # reasons of journals without the flag


def failed_record(spec: dict, reason: str, transient: bool = False) -> dict:
    """A failed clip job's record; `transient`: the failure says nothing about the file.
    "source_stat" (`source_stat`) is the file as it failed: a rerun tries again a clip whose file
    has been replaced since (a download fixed), and only that."""
    return clip_record(spec, status="failed", reason=reason, transient=transient, source_stat=source_stat(spec["path"]))


def source_stat(path: str) -> list[int] | None:
    """[size, mtime in ns] of a media file; None where it cannot be read (missing, a broken link)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def is_transient(rec: dict) -> bool:
    """A failed record whose failure was transient (a timeout, a killed worker, out of memory);
    records written before the flag existed say so by their reason (then a crash counts too)."""
    if rec.get("status") != "failed":
        return False
    if "transient" in rec:
        return bool(rec["transient"])
    return str(rec.get("reason", "")).startswith(_LEGACY_TRANSIENT)


def _death(proc) -> tuple[str, bool]:
    """Why a worker process ended without answering: (reason, transient). Killed by a signal from
    outside (SIGKILL: usually the out-of-memory killer): transient; a crash (SIGSEGV, SIGABRT, an
    exit) in the decoder on this file: permanent."""
    proc.join(2)
    code = proc.exitcode
    if code is not None and code < 0:
        try:
            sig = signal.Signals(-code)
        except ValueError:
            return f"decoder process crashed (signal {-code})", False
        if sig in _KILLED:
            return f"decoder process killed ({sig.name}{'; out of memory?' if sig == signal.SIGKILL else ''})", True
        return f"decoder process crashed ({sig.name})", False
    return "decoder process crashed" + (f" (exit code {code})" if code is not None else ""), False


def _worker_main(conn, task, settings: dict, threads: int) -> None:
    from .clip_files import OutputError

    quiet_worker()
    try:
        import cv2

        cv2.setNumThreads(threads)
    except ImportError:  # pragma: no cover
        pass
    import torch

    torch.set_num_threads(threads)
    while True:
        job = conn.recv()
        if job is None:
            return
        try:
            rec = task(job, settings)
        except OutputError as e:  # the output side (disk full, read-only): stops the command
            rec = clip_record(job, status="output_error", reason=str(e))
        except MemoryError:  # Python's (an FFmpeg ENOMEM on a damaged file is a DecodeError in media.py)
            rec = failed_record(job, "out of memory", transient=True)
        except Exception as e:  # noqa: BLE001 - one bad file must never stop the run
            rec = failed_record(job, f"{type(e).__name__}: {' '.join(str(e).split())[:200]}")
        conn.send(rec)


class ClipPool:
    """N worker processes, each running `task(job, settings) -> record` on one job at a time.
    `task` is a module-level function (workers receive it by reference)."""

    def __init__(self, n: int, task, settings: dict, threads: int, timeout: float):
        # forkserver: workers fork from a clean server process, never from a caller that may have
        # used OpenCV's or torch's thread pools (a fork of those deadlocks in cv2.setNumThreads)
        self.ctx = worker_context()
        self.task, self.settings, self.threads, self.timeout = task, settings, threads, timeout
        self.workers = [self._spawn() for _ in range(max(1, n))]

    def _spawn(self) -> dict:
        parent, child = self.ctx.Pipe()
        proc = self.ctx.Process(target=_worker_main, args=(child, self.task, self.settings, self.threads), daemon=True)
        proc.start()
        child.close()
        return {"proc": proc, "conn": parent, "job": None, "since": 0.0}

    def run(self, jobs):
        """Records of `jobs` (any iterable, consumed lazily: a 260k-clip job list is never held) in
        completion order."""
        pending = iter(jobs)
        exhausted = False
        while not exhausted or any(w["job"] for w in self.workers):
            for w in self.workers:
                if w["job"] is None and not exhausted:
                    job = next(pending, None)
                    if job is None:
                        exhausted = True
                        continue
                    w["job"], w["since"] = job, time.monotonic()
                    w["conn"].send(w["job"])
            if not any(w["job"] for w in self.workers):
                continue
            busy = [w for w in self.workers if w["job"] is not None]
            ready = wait([w["conn"] for w in busy], timeout=0.5)
            for i, w in enumerate(self.workers):
                if w["job"] is None:
                    continue
                if w["conn"] in ready:
                    try:
                        rec = w["conn"].recv()
                    except (EOFError, OSError):  # the worker died (a decoder crash, a kill)
                        rec = failed_record(w["job"], *_death(w["proc"]))
                        self._replace(i)
                    w = self.workers[i]
                    w["job"] = None
                    yield rec
                elif time.monotonic() - w["since"] > self.timeout or not w["proc"].is_alive():
                    died = (f"decode timeout after {self.timeout:g} s", True) if w["proc"].is_alive() else \
                        _death(w["proc"])
                    job = w["job"]
                    self._replace(i)
                    yield failed_record(job, *died)

    def _replace(self, i: int) -> None:
        w = self.workers[i]
        w["proc"].kill()
        w["proc"].join(5)
        self.workers[i] = self._spawn()

    def close(self) -> None:
        for w in self.workers:
            if w["proc"].is_alive():
                if w["job"] is None:
                    try:
                        w["conn"].send(None)
                    except (BrokenPipeError, OSError):
                        pass
                    w["proc"].join(2)
                if w["proc"].is_alive():
                    w["proc"].kill()
                    w["proc"].join(2)
