"""What every dataset reader shares: the clip and missing-row records, the media-file index of
a dataset root, the annotation-file helpers and the reader signature (`Reader`)."""

from __future__ import annotations

import csv
import errno
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

MEDIA_EXTS = frozenset(
    ".mp4 .webm .mkv .avi .mov .flv .m4v .wav .mp3 .m4a .ogg .flac".split())
VIDEO_EXTS = frozenset(".mp4 .webm .mkv .avi .mov .flv .m4v".split())
SPLITS = {"train": "train", "val": "val", "validate": "val", "validation": "val", "test": "test"}
SPLIT_FOLDERS = {"train": ("train",), "val": ("val", "validate", "validation"), "test": ("test",)}
KINETICS = ("kinetics400", "kinetics600", "kinetics700", "kinetics-sounds")
SUBSET_DATASETS = ("kinetics-sounds",)  # a class subset of Kinetics: the reader needs the pinned class list
KNOWN_DATASETS = KINETICS + ("audioset", "epic-kitchens", "cremad", "ave", "ucf101", "vggsound", "csv", "folder")
NO_ANNOTATIONS = ("cremad", "folder")  # the file names carry everything
CREMAD_EMOTIONS = ["ANG", "DIS", "FEA", "HAP", "NEU", "SAD"]
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


class ManifestError(Exception):
    """Bad annotation input (unreadable CSV, missing required column, unknown dataset).

    The message is always one line naming the file and the field/column."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).splitlines()))


@dataclass(frozen=True)
class ClipSpec:
    clip_id: str              # unique in the manifest, only [A-Za-z0-9_.-]
    path: Path | str          # absolute path of the media file (a str in a ManifestStream, a Path from read_manifest)
    labels: tuple[int, ...]   # class indices
    split: str                # "train" | "val" | "test"
    start: float | None = None  # seconds into the file (None: whole file)
    end: float | None = None
    group: str = ""           # source group: clips of one source video share it and are held out together
                              # (data.split_holdout); "" = the clip alone (each reader sets it: see `_Media.group`)
    # the file is named by the video id alone (`<id>.<ext>`), not by the clip: it may be the full
    # video, whose [start, end) is the clip, or the clip already cut; media.decode_clip tells them
    # apart by the file's length (span_if_longer)
    span_if_longer: bool = False

    def job(self) -> dict:
        """The clip as a worker job (prepare-data, prepare-data --check)."""
        return {"clip_id": self.clip_id, "path": str(self.path), "labels": list(self.labels), "split": self.split,
                "start": self.start, "end": self.end, "span_if_longer": self.span_if_longer}


def video_span(path: str, video_id: str, start: float, end: float) -> dict:
    """ClipSpec fields for a clip of a dataset whose annotations give a time span in the source
    video: when the file found is named by the video id alone (maybe the untrimmed video), the
    span, decoded if the file is longer than it; when it is named by the clip (cut already), none."""
    if os.path.splitext(os.path.basename(path))[0] != video_id or not end > start:
        return {}
    return {"start": float(start), "end": float(end), "span_if_longer": True}


class Missing(NamedTuple):
    """An annotation row that yields no clip. `kind` "file": its media file is absent or unusable
    (not found, outside the root, a symlink loop); "annotation": the row itself cannot be used (no
    label, an unknown code, an empty time span, a video listed twice)."""

    clip: str
    reason: str
    kind: str = "file"
    split: str = ""


@dataclass
class Manifest:
    dataset: str
    classes: list[str]
    multilabel: bool
    clips: list[ClipSpec]
    missing: list[dict]       # [{"clip": str, "reason": str, "kind": "file" | "annotation"}]
    rows: dict[str, int] | None = None  # annotation rows per split (None: no annotation files)
    dropped: int = 0          # rows of classes outside a class subset (Kinetics-Sounds)


# ---------------------------------------------------------------- media files

def _norm(name: str) -> str:
    return name.lower().replace(" ", "_")


def _walk(root: str) -> Iterator[str]:
    """Relative paths ('/'-separated) of the media files under `root`, one directory entry at a
    time (a flat folder of 240k Kinetics files is never listed into memory at once). Hidden
    entries are skipped; symlinked directories are not followed (symlinked files are listed)."""
    stack = [""]
    while stack:
        rel = stack.pop()
        try:
            it = os.scandir(os.path.join(root, rel) if rel else root)
        except OSError:
            continue
        with it:
            for entry in it:
                if entry.name.startswith("."):
                    continue
                path = f"{rel}/{entry.name}" if rel else entry.name
                try:
                    is_dir = entry.is_dir()
                except OSError:
                    is_dir = False
                if is_dir:
                    if not entry.is_symlink():
                        stack.append(path)
                elif os.path.splitext(entry.name)[1].lower() in MEDIA_EXTS:
                    yield path


class _Media:
    """Media files under the dataset root (indexed once, in the scratch database) plus the
    path-safety check. Paths are plain strings: a pathlib.Path per clip would intern every file
    name (sys.intern), which makes the interpreter's table of interned strings churn and grow."""

    def __init__(self, root: Path, allow_outside_root: bool, db):
        self.root = os.path.abspath(root)
        self.real_root = os.path.realpath(self.root)
        self.allow_outside_root = allow_outside_root
        self.db = db
        self._indexed = False

    def _index(self):
        conn = self.db.conn
        if not self._indexed:
            conn.execute("DROP TABLE IF EXISTS media")
            conn.execute("CREATE TABLE media (path TEXT, stem TEXT, lstem TEXT)")
            batch = []
            for rel in _walk(self.root):
                stem = os.path.splitext(rel.rsplit("/", 1)[-1])[0]
                batch.append((rel, stem, stem.lower()))
                if len(batch) >= 2048:
                    conn.executemany("INSERT INTO media VALUES (?, ?, ?)", batch)
                    batch.clear()
            conn.executemany("INSERT INTO media VALUES (?, ?, ?)", batch)
            for column in ("path", "stem", "lstem"):
                conn.execute(f"CREATE INDEX media_{column} ON media ({column})")
            conn.commit()
            self._indexed = True
        return conn

    def files(self) -> Iterator[str]:
        """Relative paths ('/'-separated) of all media files, in sorted order."""
        for (rel,) in self._index().execute("SELECT path FROM media ORDER BY path"):
            yield rel

    def _inside(self, real: str) -> bool:
        return real == self.real_root or real.startswith(self.real_root.rstrip(os.sep) + os.sep)

    def check(self, path: str) -> tuple[str | None, str | None]:
        """(absolute path, None) if ``path`` (absolute or relative to the root) is a usable file,
        else (None, reason)."""
        full = path if os.path.isabs(path) else os.path.join(self.root, path)
        if not self.allow_outside_root:
            try:
                inside = self._inside(os.path.realpath(full, strict=True))
            except OSError as e:
                if e.errno == errno.ELOOP:
                    return None, f"symlink loop: {full}"
                inside = self._inside(os.path.realpath(full))
            if not inside:
                return None, f"path escapes dataset root: {full}"
        if not os.path.isfile(full):
            return None, f"file not found: {full}"
        return full, None

    def group(self, path: str) -> str:
        """The default source group of a clip: its media file ('/'-separated, relative to the root
        when under it), so clips cut from one file share a group. Readers whose annotations name
        the source video use that instead (Kinetics/AudioSet/VGGSound: the YouTube id; EPIC: the
        video_id; UCF-101: class + gXX)."""
        full = os.path.normpath(path if os.path.isabs(path) else os.path.join(self.root, path))
        rel = os.path.relpath(full, self.root)
        return full if rel == os.pardir or rel.startswith(os.pardir + os.sep) else rel.replace(os.sep, "/")

    def find(self, stems, hints=(), ignore_case: bool = False) -> tuple[str | None, str | None]:
        """Look up the first stem that exists; among files sharing a stem prefer the one whose
        folders match most ``hints`` (split/label), else the first in sorted order."""
        wanted = {_norm(h) for h in hints if h}
        column = "lstem" if ignore_case else "stem"
        conn = self._index()
        for stem in stems:
            candidates = [r for (r,) in conn.execute(
                f"SELECT path FROM media WHERE {column} = ? ORDER BY path", (stem.lower() if ignore_case else stem,))]
            if candidates:
                best = max(candidates, key=lambda r: len(wanted & {_norm(p) for p in r.split("/")[:-1]}))
                return self.check(best)
        return None, f"file not found: {stems[0]}.*"


# ---------------------------------------------------------------- annotation files

def _iter_rows(path: Path, skipinitialspace: bool = False) -> Iterator[tuple[int, list[str]]]:
    """Non-blank rows of a UTF-8 (BOM tolerated) CSV as (line number, stripped fields), streamed."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f, skipinitialspace=skipinitialspace)
            for row in reader:
                if any(row):
                    yield reader.line_num, [x.strip() for x in row]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ManifestError(f"{path}: cannot read CSV: {e}") from None


def _iter_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Non-blank lines of a UTF-8 text file (BOM and CRLF tolerated), stripped, streamed."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    yield n, line.strip()
    except (OSError, UnicodeDecodeError) as e:
        raise ManifestError(f"{path}: cannot read: {e}") from None


def _table(path: Path, *required: str) -> tuple[list[str], Iterator[tuple[int, dict[str, str]]]]:
    """Header + rows as dicts (missing cells are ""), streamed; checks the required columns."""
    rows = _iter_rows(path)
    first = next(rows, None)
    columns = first[1] if first else []
    for name in required:
        if name not in columns:
            rows.close()
            raise ManifestError(f"{path}: missing column {name!r}")

    def dicts():
        for line, fields in rows:
            yield line, {c: (fields[i] if i < len(fields) else "") for i, c in enumerate(columns)}

    return columns, dicts()


def _float(ann: Path, line: int, column: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ManifestError(f"{ann}:{line}: column {column!r}: not a number: {text!r}")
    return value


def _split(ann: Path, line: int, value: str) -> str:
    try:
        return SPLITS[value.strip().lower()]
    except KeyError:
        raise ManifestError(f"{ann}:{line}: column 'split': unknown split {value!r} "
                            f"(expected one of {', '.join(SPLITS)})") from None


def _split_from_name(ann: Path) -> str:
    name = ann.name.lower()
    return "val" if "val" in name else "test" if "test" in name else "train"


def _count(counts: dict[str, int], split: str) -> None:
    counts[split] = counts.get(split, 0) + 1


# A reader returns (classes, multilabel, rows per split or None, rows dropped, entries) where
# entries() yields ClipSpec | Missing in annotation order; it validates every row before returning.
Reader = tuple[list[str], bool, "dict[str, int] | None", int, Callable[[], Iterator]]
