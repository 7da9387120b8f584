"""prepare-data's plan: the clips to prepare, the rows without a clip and the journal's records,
kept in a scratch SQLite database (prepare.prepare_dataset's bookkeeping; see prepare.py's
module docstring), and the rules by which a rerun decides what to prepare again."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .clip_files import files_whole
from .storage import iter_jsonl
from .workers import clip_span_of, is_transient, source_stat


class _Plan:
    """prepare_dataset's bookkeeping — the clips to prepare, the rows without a clip, the journal's
    records — in the scratch database, so the main process's memory does not grow with the
    number of clips (Kinetics-400: 260k; as Python objects ~3 kB each, docs/PERFORMANCE.md)."""

    CHUNK = 512

    def __init__(self, db, root: str = ""):
        self.root = root  # the dataset root: a clip's "file" is its media file's path relative to it
        self.conn = db.conn
        self.conn.executescript(
            "CREATE TABLE clips (n INTEGER PRIMARY KEY, clip TEXT UNIQUE, split TEXT, spec TEXT, grp TEXT);"
            "CREATE TABLE missing (n INTEGER PRIMARY KEY, clip TEXT, reason TEXT, kind TEXT, split TEXT);"
            "CREATE TABLE done (clip TEXT PRIMARY KEY, status TEXT, has_audio INTEGER, rec TEXT);")
        self.n_clips = self.n_missing = 0
        self._pending = 0

    def add(self, stream) -> None:
        """Every entry of a manifest stream, in order."""
        from .manifests import Missing

        clips, missing = [], []
        for entry in stream:
            if isinstance(entry, Missing):
                missing.append((entry.clip, entry.reason, entry.kind, entry.split))
            else:
                spec = entry.job() | {"file": os.path.relpath(str(entry.path), self.root or os.sep)}
                clips.append((entry.clip_id, entry.split, json.dumps(spec, separators=(",", ":")), entry.group))
            if len(clips) + len(missing) >= 2048:
                self._flush(clips, missing)
        self._flush(clips, missing)
        self.conn.commit()

    def _flush(self, clips: list, missing: list) -> None:
        self.conn.executemany("INSERT INTO clips (clip, split, spec, grp) VALUES (?, ?, ?, ?)", clips)
        self.conn.executemany("INSERT INTO missing (clip, reason, kind, split) VALUES (?, ?, ?, ?)", missing)
        self.n_clips += len(clips)
        self.n_missing += len(missing)
        clips.clear()
        missing.clear()

    def record(self, rec: dict) -> None:
        """A journal record (read back on a resume, or just produced by a worker)."""
        self.conn.execute("INSERT OR REPLACE INTO done VALUES (?, ?, ?, ?)",
                          (rec["clip"], rec["status"], int(bool(rec.get("has_audio", True))),
                           json.dumps(rec, separators=(",", ":"))))
        self._pending += 1
        if self._pending >= 1024:
            self.conn.commit()
            self._pending = 0

    def load_journal(self, journal: Path, out: Path, transient_tries: int = 0) -> dict[str, int]:
        """Read the journal back. Left out (prepared again), each line taking the place of the
        clip's earlier lines: a clip recorded as prepared whose files are now missing or of another
        size than prepare-data wrote ("cut"), a clip whose annotations now name another media file
        or another span of it ("moved"), a clip that failed for a transient reason ("transient":
        workers.is_transient: a timeout, a killed worker, out of memory) and one that failed on a
        file replaced since ("fixed": its size or mtime differs from the failed record's; an
        untouched undecodable file stays failed) and a prepared clip whose media file has another
        size now than when it was prepared ("replaced": a download fixed or redone; by size alone,
        since a copy of the dataset that does not keep mtimes must not prepare every clip again,
        and a missing media file leaves its prepared clip alone). A clip that failed for a transient reason
        `transient_tries` times running on the same file (0: no limit) is left failed ("given_up",
        not prepared again) unless its file is replaced. Returns how many of each, by those names."""
        self.conn.execute("CREATE TABLE redo (clip TEXT PRIMARY KEY, why TEXT)")
        self.damaged_lines: list[int] = []  # a line cut by a kill that a later append went on from, or damage
        running: dict[str, tuple] = {}  # clip -> (the file it failed on, transient failures running): failing clips only
        given_up: set[str] = set()
        for rec in iter_jsonl(journal, self.damaged_lines):
            if "clip" in rec and "status" in rec:
                clip, spec, transient = rec["clip"], self.spec(rec["clip"]), is_transient(rec)
                given_up.discard(clip)
                if transient:
                    stat, n = running.get(clip, (None, 0))
                    running[clip] = (rec.get("source_stat"), n + 1 if stat == rec.get("source_stat") else 1)
                else:
                    running.pop(clip, None)
                retry = transient and not (transient_tries and running[clip][1] >= transient_tries)
                why = ("moved" if spec is not None and not _same_source(rec, spec) else
                       "cut" if rec["status"] == "ok" and not files_whole(out, rec) else
                       "replaced" if rec["status"] == "ok" and spec is not None and _resized(rec, spec) else
                       "transient" if retry else
                       "fixed" if rec["status"] != "ok" and spec is not None and _file_replaced(rec, spec) else None)
                if why is None and transient:
                    given_up.add(clip)
                if why is None:
                    self.record(rec)
                    self.conn.execute("DELETE FROM redo WHERE clip = ?", (rec["clip"],))
                else:
                    self.conn.execute("DELETE FROM done WHERE clip = ?", (rec["clip"],))
                    self.conn.execute("INSERT OR REPLACE INTO redo VALUES (?, ?)", (rec["clip"], why))
        self.conn.commit()
        counts = dict(self.conn.execute("SELECT why, COUNT(*) FROM redo GROUP BY why").fetchall())
        return {why: counts.get(why, 0) for why in ("cut", "moved", "replaced", "transient", "fixed")} | {"given_up": len(given_up)}

    def spec(self, clip: str) -> dict | None:
        """The clip's job as the annotations give it now (None: not in them)."""
        row = self.conn.execute("SELECT spec FROM clips WHERE clip = ?", (clip,)).fetchone()
        return json.loads(row[0]) if row else None

    def count_todo(self) -> int:
        return self.conn.execute("SELECT COUNT(*) FROM clips WHERE clip NOT IN (SELECT clip FROM done)").fetchone()[0]

    def todo(self):
        """Specs of the clips not in the journal, in manifest order, fetched a chunk at a time
        (records written meanwhile do not disturb the iteration: it resumes after the last n)."""
        last = 0
        while True:
            rows = self.conn.execute("SELECT n, spec FROM clips WHERE n > ? AND clip NOT IN (SELECT clip FROM done) "
                                     "ORDER BY n LIMIT ?", (last, self.CHUNK)).fetchall()
            if not rows:
                return
            for n, spec in rows:
                last = n
                yield json.loads(spec)

    def records(self, where: str = "1"):
        """Journal records of the manifest's clips, in manifest order, with the labels, split and
        media path the annotations give now (a rerun after a class was added or a clip changed
        split relabels; the arrays do not depend on them) and the source group from the manifest
        ("group": a journal written before groups existed has none)."""
        self.conn.commit()
        last = 0
        while True:
            rows = self.conn.execute(f"SELECT c.n, d.rec, c.spec, c.grp FROM clips c JOIN done d ON d.clip = c.clip "
                                     f"WHERE c.n > ? AND ({where}) ORDER BY c.n LIMIT ?", (last, self.CHUNK)).fetchall()
            if not rows:
                return
            for n, rec, spec, group in rows:
                last = n
                spec = json.loads(spec)
                yield json.loads(rec) | {"split": spec["split"], "labels": spec["labels"], "source": spec["path"],
                                         "group": group or ""}

    def missing(self):
        last = 0
        while True:
            rows = self.conn.execute("SELECT n, clip, reason, kind, split FROM missing WHERE n > ? ORDER BY n LIMIT ?",
                                     (last, self.CHUNK)).fetchall()
            if not rows:
                return
            for n, clip, reason, kind, split in rows:
                last = n
                yield {"clip": clip, "reason": reason, "stage": "annotation" if kind == "annotation" else "file",
                       "split": split}

    def ok_per_split(self) -> dict[str, tuple[int, int]]:
        """split -> (clips prepared, of which without audio)."""
        rows = self.conn.execute("SELECT c.split, COUNT(*), SUM(d.has_audio = 0) FROM clips c JOIN done d "
                                 "ON d.clip = c.clip WHERE d.status = 'ok' GROUP BY c.split ORDER BY c.split")
        return {split: (n, no_audio or 0) for split, n, no_audio in rows}

    def groups_in_two_splits(self, limit: int = 5) -> tuple[int, list[str]]:
        """(how many, the first `limit`) source groups with prepared clips in more than one split:
        a source video in train and val makes the evaluation split share content with training."""
        rows = self.conn.execute("SELECT c.grp FROM clips c JOIN done d ON d.clip = c.clip WHERE d.status = 'ok' "
                                 "AND c.grp IS NOT NULL AND c.grp != '' GROUP BY c.grp "
                                 "HAVING COUNT(DISTINCT c.split) > 1 ORDER BY MIN(c.n)").fetchall()
        return len(rows), [g for (g,) in rows[:limit]]

    def n_done(self) -> int:
        return self.conn.execute("SELECT COUNT(*) FROM clips c JOIN done d ON d.clip = c.clip").fetchone()[0]


def _file_replaced(rec: dict, spec: dict) -> bool:
    """The media file of a clip that failed is not the one it failed on (records from before
    "source_stat": never, as before)."""
    return "source_stat" in rec and source_stat(spec["path"]) != rec["source_stat"]


def _resized(rec: dict, spec: dict) -> bool:
    """A prepared clip's media file is there and has another size than the one it was prepared
    from (records from before "source_size": never)."""
    now = source_stat(spec["path"]) if "source_size" in rec else None
    return now is not None and now[0] != rec["source_size"]


def _same_source(rec: dict, spec: dict) -> bool:
    """The journal record `rec` was prepared from what the clip's job `spec` reads now: the same
    media file (its path relative to the dataset root, so a moved root is still the same file;
    records without it: the absolute path) and the same span of it. Records older than "span"
    read the annotated span of every clip but those whose file is named by the video id alone
    (media.clip_span), which they decoded whole."""
    if "file" in rec:
        same_file = rec["file"] == spec.get("file")
    else:
        same_file = rec.get("source") == spec["path"]
    if "span" in rec:
        return same_file and rec["span"] == clip_span_of(spec)
    return same_file and not spec.get("span_if_longer")
