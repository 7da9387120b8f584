"""Dataset manifests: official annotation files + a folder of media files -> clips.

One reader per annotation format: Kinetics-400/600/700 and Kinetics-Sounds (a pinned class subset
read from the Kinetics CSVs), AudioSet, EPIC-Kitchens, CREMA-D, AVE, UCF-101, VGGSound, a generic
CSV and a class-folder layout. Rows whose media file is absent or that are rejected (no label,
path outside the dataset root, ...) are reported as :class:`Missing` and never raise; malformed
annotation input raises :class:`ManifestError` with a one-line message naming the file (and
line/column where there is one).

Streaming: :func:`open_manifest` reads every annotation row once to validate it (a malformed file
raises before any clip is produced) and then yields clips one at a time in annotation order. The
media listing and the set of clip ids live in a :class:`~gblend_cli.storage.ScratchDB` (SQLite on
disk), so a 260,000-row Kinetics manifest costs the reading process the same memory as a
10,000-row one. :func:`read_manifest` collects the same stream into lists (tests, small data).

Media files are found by one walk of the dataset root (symlinked directories are not followed,
hidden files and directories are skipped) and matched by file stem.
"""
from __future__ import annotations

import csv
import errno
import hashlib
import math
import os
import re
from dataclasses import dataclass, field
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
_CREMAD_STEM = re.compile(r"^(\d{4})_([A-Z]{3})_([A-Z]{3})_([A-Z]{2}|X{2})$")
_EPIC_TIME = re.compile(r"(\d+):(\d{1,2}):(\d{1,2}(?:\.\d*)?)")
_UCF_LIST = re.compile(r"^(trainlist|testlist)0([1-3])\.txt$", re.IGNORECASE)
_AVE_HEADER = ["category", "videoid", "quality", "starttime", "endtime"]
_VGGSOUND_SECONDS = 10  # every VGGSound clip is the 10 s from start_seconds (Chen et al., ICASSP 2020)
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


# ---------------------------------------------------------------- readers

def _kinetics_rows(annotations: list[Path]):
    for ann in annotations:
        _, rows = _table(ann, "youtube_id", "time_start", "time_end")
        for line, row in rows:
            split = _split(ann, line, row["split"]) if row.get("split") else _split_from_name(ann)
            start = int(_float(ann, line, "time_start", row["time_start"]))
            end = int(_float(ann, line, "time_end", row["time_end"]))
            yield f"{row['youtube_id']}_{start:06d}_{end:06d}", row["youtube_id"], row.get("label", ""), split


def _read_kinetics(media: _Media, annotations: list[Path], name: str, keep: list[str] | None) -> Reader:
    """Kinetics-400/600/700 official CSVs (``label,youtube_id,time_start,time_end,split``,
    optional ``is_cc``; test CSVs have no labels). Files are the trimmed clips
    ``<youtube_id>_<start:06d>_<end:06d>.<ext>`` flat under ``<root>/<split>/`` or in
    class folders ``<root>/<split>/<label>/`` (a plain ``<youtube_id>.<ext>`` is accepted
    too). Without a ``split`` value the split comes from the CSV file name.

    ``keep`` (a class subset, e.g. Kinetics-Sounds): rows of other classes are dropped (counted,
    not reported as missing) and the class list is the sorted subset, whether or not every class
    occurs in the CSVs (so class indices do not depend on which CSVs were given)."""
    keepset = set(keep) if keep is not None else None
    labels: set[str] = set()
    rows: dict[str, int] = {}
    dropped = 0
    for _, _, label, split in _kinetics_rows(annotations):  # validates every row
        if keepset is not None and label not in keepset:
            dropped += 1
            continue
        if label:
            labels.add(label)
        _count(rows, split)
    if keepset is not None and not labels:
        raise ManifestError(f"{name}: none of the {len(keepset)} classes of dataset.classes occurs in "
                            f"{', '.join(str(a) for a in annotations)} (are these Kinetics-400 CSVs?)")
    classes = sorted(keepset) if keepset is not None else sorted(labels)
    index = {c: i for i, c in enumerate(classes)}

    def entries():
        for clip_id, ytid, label, split in _kinetics_rows(annotations):
            if keepset is not None and label not in keepset:
                continue
            if not label:
                yield Missing(clip_id, "no label", "annotation", split)
                continue
            path, reason = media.find([clip_id, ytid], (*SPLIT_FOLDERS[split], label))
            yield Missing(clip_id, reason, "file", split) if reason else ClipSpec(clip_id, path, (index[label],), split)

    return classes, False, rows, dropped, entries


def _read_audioset(media: _Media, annotations: list[Path]) -> Reader:
    """AudioSet segment CSVs (``# YTID, start_seconds, end_seconds, positive_labels``
    after ``#`` comment lines) plus ``class_labels_indices.csv`` (``index,mid,display_name``,
    recognised by its header). Multi-label; files named ``eval*`` are the val split.
    Media files are the trimmed segments ``<YTID>_<start:06d>_<end:06d>``,
    ``<YTID>_<start>_<end>`` or ``<YTID>``."""
    def header(ann):
        rows = _iter_rows(ann, skipinitialspace=True)
        first = next(rows, None)
        rows.close()
        return first is not None and [_norm(x) for x in first[1][:3]] == ["index", "mid", "display_name"]

    label_files = [a for a in annotations if header(a)]
    if len(label_files) != 1:
        raise ManifestError("audioset: expected exactly one class_labels_indices.csv "
                            f"(header index,mid,display_name) among the annotations, got {len(label_files)}")
    labels_file = label_files[0]
    entries_ = []
    for line, fields in list(_iter_rows(labels_file, skipinitialspace=True))[1:]:
        if len(fields) < 3:
            raise ManifestError(f"{labels_file}:{line}: expected index,mid,display_name")
        entries_.append((int(_float(labels_file, line, "index", fields[0])), fields[1], fields[2]))
    entries_.sort()
    classes = [name for _, _, name in entries_]
    mid_index = {mid: i for i, (_, mid, _) in enumerate(entries_)}
    segment_files = [a for a in annotations if a != labels_file]

    def segments():
        for ann in segment_files:
            split = "val" if "eval" in ann.name.lower() else "train"
            for line, fields in _iter_rows(ann, skipinitialspace=True):
                if fields[0].startswith("#"):
                    continue
                if len(fields) < 4:
                    raise ManifestError(f"{ann}:{line}: expected YTID, start_seconds, end_seconds, positive_labels")
                start = int(_float(ann, line, "start_seconds", fields[1]))
                end = int(_float(ann, line, "end_seconds", fields[2]))
                mids = [m.strip() for m in ",".join(fields[3:]).split(",") if m.strip()]
                for mid in mids:
                    if mid not in mid_index:
                        raise ManifestError(f"{ann}:{line}: unknown MID {mid!r} (not in {labels_file.name})")
                yield ann, split, fields[0], start, end, mids

    rows: dict[str, int] = {}
    for _, split, *_ in segments():
        _count(rows, split)

    def entries():
        for ann, split, ytid, start, end, mids in segments():
            clip_id = f"{ytid}_{start:06d}"
            if not mids:
                yield Missing(clip_id, "no label", "annotation", split)
                continue
            stems = [f"{ytid}_{start:06d}_{end:06d}", f"{ytid}_{start}_{end}", ytid]
            path, reason = media.find(stems, (*SPLIT_FOLDERS[split], ann.stem))
            yield Missing(clip_id, reason, "file", split) if reason else ClipSpec(
                clip_id, path, tuple(sorted({mid_index[m] for m in mids})), split)

    return classes, True, rows, 0, entries


def _epic_seconds(ann: Path, line: int, column: str, text: str) -> float:
    m = _EPIC_TIME.fullmatch(text)
    if not m:
        raise ManifestError(f"{ann}:{line}: column {column!r}: expected HH:MM:SS.ff, got {text!r}")
    return int(m[1]) * 3600 + int(m[2]) * 60 + float(m[3])


def _read_epic(media: _Media, annotations: list[Path], label_field: str) -> Reader:
    """EPIC-Kitchens-100 (``narration_id``) or EPIC-Kitchens-55 (``uid``) action CSVs:
    segments ``start_timestamp``..``stop_timestamp`` (HH:MM:SS.ff) of the long videos
    ``<video_id>.MP4`` (e.g. ``<root>/<participant_id>/videos/``). ``label_field`` picks
    ``verb_class``, ``noun_class`` or the (verb_class, noun_class) pair ("action").
    Split from the file name: *val* -> val, *test* -> test, else train."""
    if label_field not in ("verb", "noun", "action"):
        raise ManifestError(f"epic-kitchens: label_field must be verb, noun or action, not {label_field!r}")
    need = ("verb_class", "noun_class") if label_field == "action" else (f"{label_field}_class",)

    def records():
        for ann in annotations:
            columns, rows = _table(ann, "video_id", "start_timestamp", "stop_timestamp")
            id_column = "narration_id" if "narration_id" in columns else "uid" if "uid" in columns else None
            if id_column is None:
                rows.close()
                raise ManifestError(f"{ann}: missing column 'narration_id' (EPIC-100) or 'uid' (EPIC-55)")
            split = _split_from_name(ann)
            for line, row in rows:
                video = row["video_id"]
                clip_id = row[id_column] if id_column == "narration_id" else f"{video}_{row[id_column]}"
                start = _epic_seconds(ann, line, "start_timestamp", row["start_timestamp"])
                end = _epic_seconds(ann, line, "stop_timestamp", row["stop_timestamp"])
                key = None
                if all(row.get(c) for c in need):
                    key = tuple(int(_float(ann, line, c, row[c])) for c in need)
                name = row.get(label_field, "") if label_field != "action" else ""
                yield clip_id, video, row.get("participant_id", ""), split, start, end, key, name

    names: dict[tuple, str] = {}  # class key -> the name on its first row that has one
    keys: set[tuple] = set()
    rows: dict[str, int] = {}
    for *_, split, _, _, key, name in records():
        _count(rows, split)
        if key is not None:
            keys.add(key)
            if name:
                names.setdefault(key, name)
    keys = sorted(keys)
    classes = [names.get(k, ":".join(map(str, k))) for k in keys]
    index = {k: i for i, k in enumerate(keys)}

    def entries():
        for clip_id, video, participant, split, start, end, key, _ in records():
            if key is None:
                yield Missing(clip_id, "no label", "annotation", split)
                continue
            path, reason = media.find([video], (participant, *SPLIT_FOLDERS[split]))
            yield Missing(clip_id, reason, "file", split) if reason else ClipSpec(clip_id, path, (index[key],), split,
                                                                                  start, end)

    return classes, False, rows, 0, entries


def _read_cremad(media: _Media) -> Reader:
    """CREMA-D: every media file named ``<actor>_<sentence>_<emotion>_<level>``
    (e.g. ``1001_IEO_HAP_LO.flv``; no CSV needed). The video file is preferred over
    the audio file of the same stem. Speaker-disjoint split: the distinct actor ids
    are sorted and the last 10% of them (rounded up, at least one when there are two
    or more actors) form "val", all other actors "train". (7,442 clips: held in memory.)"""
    chosen: dict[str, str] = {}
    for rel in media.files():
        stem, suffix = os.path.splitext(rel.rsplit("/", 1)[-1])
        if _CREMAD_STEM.match(stem):
            prev = chosen.get(stem)
            if prev is None or (os.path.splitext(prev)[1].lower() not in VIDEO_EXTS and suffix.lower() in VIDEO_EXTS):
                chosen[stem] = rel
    actors = sorted({stem[:4] for stem in chosen})
    n_val = math.ceil(0.1 * len(actors)) if len(actors) >= 2 else 0
    val_actors = set(actors[len(actors) - n_val:])

    def entries():
        for stem in sorted(chosen):
            emotion = _CREMAD_STEM.match(stem)[3]
            if emotion not in CREMAD_EMOTIONS:
                yield Missing(stem, f"unknown emotion code {emotion!r}", "annotation")
                continue
            path, reason = media.check(chosen[stem])
            split = "val" if stem[:4] in val_actors else "train"
            yield Missing(stem, reason, "file", split) if reason else ClipSpec(stem, path, (CREMAD_EMOTIONS.index(emotion),), split)

    return list(CREMAD_EMOTIONS), False, None, 0, entries


def _read_ave(media: _Media, annotations: list[Path]) -> Reader:
    """AVE, the Audio-Visual Event dataset (Tian et al., ECCV 2018: 4,143 10-s videos, 28 event
    categories; official split 3,339 / 402 / 402). ``Annotations.txt`` (header
    ``Category&VideoID&Quality&StartTime&EndTime``, every video) and the split files
    ``trainSet.txt``, ``valSet.txt``, ``testSet.txt`` (same '&'-separated lines, usually without
    the header; categories contain commas and parentheses, e.g. ``Frying (food)``); videos are
    ``<VideoID>.mp4`` (in ``AVE/``). Classification uses the whole video with its category (the
    event's StartTime..EndTime is validated but not used). A video listed again (a second event
    of the same category) is one clip; listed with another category, the first row wins and the
    later one is reported. Classes: the sorted categories of all files given (Annotations.txt,
    when given, supplies all 28 even if a split lacks one)."""
    label_files, split_files = [], []
    for ann in annotations:
        name = ann.name.lower()
        if name.startswith("annotations"):
            label_files.append(ann)
            continue
        split = "train" if name.startswith("train") else "val" if name.startswith("val") else \
            "test" if name.startswith("test") else None
        if split is None:
            raise ManifestError(f"{ann}: not an AVE annotation file (Annotations.txt, trainSet.txt, valSet.txt, "
                                f"testSet.txt)")
        split_files.append((ann, split))
    if not split_files:
        raise ManifestError("ave: give trainSet.txt, valSet.txt and/or testSet.txt (Annotations.txt lists every "
                            "video without its split)")

    def lines(ann):
        for line, text in _iter_lines(ann):
            fields = [f.strip() for f in text.split("&")]
            if [f.lower() for f in fields] == _AVE_HEADER:
                continue
            if len(fields) != 5 or not fields[0] or not fields[1]:
                raise ManifestError(f"{ann}:{line}: expected Category&VideoID&Quality&StartTime&EndTime, "
                                    f"got {text[:80]!r}")
            start = _float(ann, line, "StartTime", fields[3])
            end = _float(ann, line, "EndTime", fields[4])
            yield line, fields[0], fields[1], start, end

    categories: set[str] = set()
    for ann in label_files:
        categories.update(cat for _, cat, *_ in lines(ann))
    first: dict[str, tuple[str, str]] = {}  # video -> (split, category) of its first row
    rows: dict[str, int] = {}
    for ann, split in split_files:
        for _, cat, vid, _, _ in lines(ann):
            categories.add(cat)
            if vid not in first:
                first[vid] = (split, cat)
                _count(rows, split)
    classes = sorted(categories)
    index = {c: i for i, c in enumerate(classes)}

    def entries():
        seen: dict[str, tuple[str, str]] = {}
        for ann, split in split_files:
            for line, cat, vid, _, _ in lines(ann):
                if vid in seen:
                    if seen[vid] != (split, cat):
                        yield Missing(f"{vid}@{ann.name}:{line}", f"video {vid} listed again as {cat!r} in {split} "
                                      f"(first: {seen[vid][1]!r} in {seen[vid][0]}); the first row is kept", "annotation",
                                      split)
                    continue
                seen[vid] = (split, cat)
                path, reason = media.find([vid], SPLIT_FOLDERS[split])
                yield Missing(vid, reason, "file", split) if reason else ClipSpec(vid, path, (index[cat],), split)

    return classes, False, rows, 0, entries


def _read_ucf101(media: _Media, annotations: list[Path], split_no: int) -> Reader:
    """UCF-101 (Soomro et al., 2012, arXiv:1212.0402: 13,320 videos, 101 classes) with its official
    three train/test splits: ``classInd.txt`` (``1 ApplyEyeMakeup``, 1-based), ``trainlist0N.txt``
    (``ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1``) and ``testlist0N.txt`` (path only: the
    class is the folder). ``split_no`` (1, 2 or 3) picks N; other splits' list files are ignored,
    so the whole ``ucfTrainTestlist`` folder may be given. Videos are
    ``<root>/<Class>/v_<Class>_gXX_cYY.avi``; names are matched without regard to case when the
    exact path is absent (the lists spell ``HandStandPushups`` where the files say
    ``HandstandPushups``). About half of the classes have no audio track: those clips are kept
    with silence. Splits: "train" and "test" (the evaluation split)."""
    class_files = [a for a in annotations if a.name.lower() == "classind.txt"]
    if len(class_files) != 1:
        raise ManifestError(f"ucf101: expected exactly one classInd.txt among the annotations (lines like "
                            f"'1 ApplyEyeMakeup'), got {len(class_files)}")
    lists: dict[str, Path] = {}
    for ann in annotations:
        if ann in class_files:
            continue
        m = _UCF_LIST.match(ann.name)
        if not m:
            raise ManifestError(f"{ann}: not a UCF-101 annotation file (classInd.txt, trainlist0N.txt, testlist0N.txt)")
        if int(m[2]) == split_no:
            lists["train" if m[1].lower() == "trainlist" else "test"] = ann
    if not lists:
        raise ManifestError(f"ucf101: split {split_no} needs trainlist0{split_no}.txt and/or testlist0{split_no}.txt "
                            f"among the annotations (--ucf-split / dataset.ucf_split picks the split)")
    numbered = {}
    for line, text in _iter_lines(class_files[0]):
        parts = text.split(None, 1)
        if len(parts) != 2 or not parts[0].isdigit():
            raise ManifestError(f"{class_files[0]}:{line}: expected 'INDEX CLASS' like '1 ApplyEyeMakeup', got {text!r}")
        if int(parts[0]) in numbered:
            raise ManifestError(f"{class_files[0]}:{line}: class index {parts[0]} listed twice")
        numbered[int(parts[0])] = parts[1].strip()
    if sorted(numbered) != list(range(1, len(numbered) + 1)):
        raise ManifestError(f"{class_files[0]}: class indices must run 1..{len(numbered)} (got {sorted(numbered)[:5]}...)")
    classes = [numbered[i] for i in range(1, len(numbered) + 1)]
    by_lower = {c.lower(): i for i, c in enumerate(classes)}

    def items():
        for split in ("train", "test"):
            ann = lists.get(split)
            if ann is None:
                continue
            for line, text in _iter_lines(ann):
                parts = text.replace("\\", "/").split()
                rel = parts[0]
                folder = rel.rsplit("/", 1)[0] if "/" in rel else ""
                if len(parts) >= 2:
                    if not parts[1].isdigit() or not 1 <= int(parts[1]) <= len(classes):
                        raise ManifestError(f"{ann}:{line}: class index {parts[1]!r} is not in classInd.txt "
                                            f"(1..{len(classes)})")
                    label = int(parts[1]) - 1
                elif folder.lower() in by_lower:
                    label = by_lower[folder.lower()]
                else:
                    raise ManifestError(f"{ann}:{line}: class folder {folder!r} of {rel!r} is not in classInd.txt")
                yield split, rel, folder, label

    rows: dict[str, int] = {}
    for split, *_ in items():
        _count(rows, split)

    def entries():
        for split, rel, folder, label in items():
            stem = os.path.splitext(rel.rsplit("/", 1)[-1])[0]
            path, reason = media.check(rel)
            if path is None and reason.startswith("file not found"):
                path, _ = media.find([stem], (folder, classes[label]), ignore_case=True)
            yield ClipSpec(stem, path, (label,), split) if path else Missing(stem, reason, "file", split)

    return classes, False, rows, 0, entries


def _read_vggsound(media: _Media, annotations: list[Path]) -> Reader:
    """VGGSound (Chen et al., ICASSP 2020: 309 classes, ~200k 10-s clips): ``vggsound.csv`` rows
    ``youtube_id,start_seconds,label,split`` without a header (a header row is skipped if
    present); labels containing commas are quoted (``"cattle, bovinae cowbell"``); split is
    ``train`` or ``test``. Files ``<youtube_id>_<start:06d>.<ext>`` (the released archive's
    naming), ``<youtube_id>_<start:06d>_<end:06d>``, ``<youtube_id>_<start>`` or
    ``<youtube_id>``, flat or in split/label folders."""
    def records():
        for ann in annotations:
            for line, fields in _iter_rows(ann):
                if line == 1 and fields[0].lstrip("# ").lower() in ("youtube_id", "ytid", "youtube id"):
                    continue
                if len(fields) != 4:
                    raise ManifestError(f"{ann}:{line}: expected youtube_id,start_seconds,label,split (4 fields), got "
                                        f"{len(fields)}; a label with commas must be quoted")
                ytid, start, label, split = fields
                start = int(_float(ann, line, "start_seconds", start))
                if start < 0:
                    raise ManifestError(f"{ann}:{line}: column 'start_seconds': negative: {start}")
                yield ytid, start, label, _split(ann, line, split)

    labels: set[str] = set()
    rows: dict[str, int] = {}
    for _, _, label, split in records():
        if label:
            labels.add(label)
        _count(rows, split)
    classes = sorted(labels)
    index = {c: i for i, c in enumerate(classes)}

    def entries():
        for ytid, start, label, split in records():
            clip_id = f"{ytid}_{start:06d}"
            if not label:
                yield Missing(clip_id, "no label", "annotation", split)
                continue
            end = start + _VGGSOUND_SECONDS
            stems = [clip_id, f"{clip_id}_{end:06d}", f"{ytid}_{start}", f"{ytid}_{start}_{end}", ytid]
            path, reason = media.find(stems, (*SPLIT_FOLDERS[split], label))
            yield Missing(clip_id, reason, "file", split) if reason else ClipSpec(clip_id, path, (index[label],), split)

    return classes, False, rows, 0, entries


def _read_generic_csv(media: _Media, annotations: list[Path]) -> Reader:
    """Generic CSV: ``path,label`` plus optional ``split,start,end``. ``path`` is
    relative to the root; ``label`` holds class names separated by ``;`` (multi-label
    when any row has several, whether or not its file is found); start/end are seconds (empty:
    whole file)."""
    def records():
        for ann in annotations:
            _, rows = _table(ann, "path", "label")
            for line, row in rows:
                if not row["path"]:
                    raise ManifestError(f"{ann}:{line}: column 'path' is empty")
                names = sorted({n.strip() for n in row["label"].split(";") if n.strip()})
                split = _split(ann, line, row.get("split") or "train")
                start, end = (_float(ann, line, c, row[c]) if row.get(c) else None for c in ("start", "end"))
                clip_id = os.path.splitext(row["path"])[0].replace("\\", "/").strip("/").replace("/", "__")
                clip_id += f"_{start:g}" if start is not None else ""
                yield clip_id, row["path"], names, split, start, end

    labels: set[str] = set()
    rows: dict[str, int] = {}
    multilabel = False
    for _, _, names, split, _, _ in records():
        labels.update(names)
        multilabel |= len(names) > 1
        _count(rows, split)
    classes = sorted(labels)
    index = {c: i for i, c in enumerate(classes)}

    def entries():
        for clip_id, raw, names, split, start, end in records():
            if not names:
                yield Missing(raw, "no label", "annotation", split)
                continue
            if start is not None and end is not None and end <= start:
                yield Missing(raw, f"end {end:g} is not after start {start:g}", "annotation", split)
                continue
            path, reason = media.check(raw)
            yield Missing(raw, reason, "file", split) if reason else ClipSpec(clip_id, path, tuple(index[n] for n in names), split,
                                                               start, end)

    return classes, multilabel, rows, 0, entries


def _read_folder(media: _Media) -> Reader:
    """Class-folder layout without CSV: ``<root>/<split>/<label>/<file>`` when every
    top-level directory is a split name (train/val/validate/validation/test), else
    ``<root>/<label>/<file>`` (all "train"). Files at other depths are ignored."""
    try:
        with os.scandir(media.root) as it:
            top = [e.name for e in it if e.is_dir(follow_symlinks=False) and not e.name.startswith(".")]
    except OSError:
        top = []
    by_split = bool(top) and all(name.lower() in SPLITS for name in top)

    def files():
        for rel in media.files():
            parts = rel.split("/")
            if by_split and len(parts) >= 3:
                yield rel, parts[1], SPLITS[parts[0].lower()]
            elif not by_split and len(parts) >= 2:
                yield rel, parts[0], "train"

    classes = sorted({label for _, label, _ in files()})
    index = {c: i for i, c in enumerate(classes)}

    def entries():
        for rel, label, split in files():
            clip_id = f"{label}__{os.path.splitext(rel.rsplit('/', 1)[-1])[0]}"
            path, reason = media.check(rel)
            yield Missing(clip_id, reason, "file", split) if reason else ClipSpec(clip_id, path, (index[label],), split)

    return classes, False, None, 0, entries


# ---------------------------------------------------------------- entry points

def _unique_ids(entries: Iterator, db) -> Iterator:
    """Sanitise clip ids to [A-Za-z0-9_.-]; on a collision append 8 hex of sha1(path+start). The
    ids seen so far are kept in the scratch database, not in memory."""
    conn = db.conn
    conn.execute("DROP TABLE IF EXISTS clip_ids")
    conn.execute("CREATE TABLE clip_ids (id TEXT PRIMARY KEY)")
    for n_done, clip in enumerate(entries):
        if isinstance(clip, Missing):
            yield clip
            continue
        base = _UNSAFE.sub("_", clip.clip_id).strip(".") or "_"
        clip_id, n = base, 1
        while conn.execute("INSERT OR IGNORE INTO clip_ids VALUES (?)", (clip_id,)).rowcount == 0:
            digest = hashlib.sha1(f"{clip.path}{clip.start}".encode()).hexdigest()[:8]
            clip_id = f"{base}-{digest}" + (f"-{n}" if n > 1 else "")
            n += 1
        if n_done % 4096 == 4095:
            conn.commit()
        yield clip if clip_id == clip.clip_id else ClipSpec(clip_id, clip.path, clip.labels, clip.split, clip.start,
                                                            clip.end)
    conn.commit()


@dataclass
class ManifestStream:
    """A dataset's classes and its clips, produced one at a time (see the module docstring).
    Iterating yields :class:`ClipSpec` (unique, sanitised ids) and :class:`Missing` entries."""

    dataset: str
    classes: list[str]
    multilabel: bool
    rows: dict[str, int] | None  # annotation rows per split (the expected clips); None without annotations
    dropped: int                 # rows outside the class subset
    _entries: Callable[[], Iterator] = field(repr=False)
    _db: object = field(repr=False)

    def __iter__(self) -> Iterator:
        return _unique_ids(self._entries(), self._db)


def normalise_name(dataset: str) -> str:
    return dataset.strip().lower().replace("_", "-")


def open_manifest(dataset: str, root: Path, annotations: list[Path], *, db, allow_outside_root: bool = False,
                  label_field: str = "verb", classes: list[str] | None = None, ucf_split: int = 1) -> ManifestStream:
    """Read the annotations of ``dataset`` (validating every row) and return the stream of its
    clips, matched to media files under ``root``; per-clip bookkeeping lives in ``db`` (a
    :class:`~gblend_cli.storage.ScratchDB`).

    ``dataset``: one of KNOWN_DATASETS (case-insensitive, '_' accepted for '-').
    ``label_field`` (EPIC-Kitchens): verb, noun or action. ``classes`` (Kinetics readers): keep
    only these classes; ``kinetics-sounds`` requires it. ``ucf_split`` (UCF-101): 1, 2 or 3."""
    name = normalise_name(dataset)
    if name not in KNOWN_DATASETS:
        raise ManifestError(f"unknown dataset {dataset!r}; known: {', '.join(KNOWN_DATASETS)}")
    annotations = [Path(a) for a in annotations]
    for ann in annotations:
        if not ann.is_file():
            raise ManifestError(f"{ann}: no such annotation file")
    if not annotations and name not in NO_ANNOTATIONS:
        raise ManifestError(f"{name}: no annotation file given")
    keep = list(classes) if classes else None
    if name in SUBSET_DATASETS and keep is None:
        raise ManifestError(f"{name}: no class list (dataset.classes is empty); use --recipe {name}, which pins the "
                            f"published subset, or set dataset.classes")
    if keep is not None and name not in KINETICS:
        raise ManifestError(f"dataset.classes (a class subset) is read by the Kinetics readers only, not by {name}")
    if ucf_split not in (1, 2, 3):
        raise ManifestError(f"ucf101: split must be 1, 2 or 3, not {ucf_split!r}")
    media = _Media(Path(root), allow_outside_root, db)
    if name in KINETICS:
        result = _read_kinetics(media, annotations, name, keep)
    elif name == "audioset":
        result = _read_audioset(media, annotations)
    elif name == "epic-kitchens":
        result = _read_epic(media, annotations, label_field)
    elif name == "cremad":
        result = _read_cremad(media)
    elif name == "ave":
        result = _read_ave(media, annotations)
    elif name == "ucf101":
        result = _read_ucf101(media, annotations, ucf_split)
    elif name == "vggsound":
        result = _read_vggsound(media, annotations)
    elif name == "csv":
        result = _read_generic_csv(media, annotations)
    else:
        result = _read_folder(media)
    classes_, multilabel, rows, dropped, entries = result
    return ManifestStream(name, classes_, multilabel, rows, dropped, entries, db)


def read_manifest(dataset: str, root: Path, annotations: list[Path], *, allow_outside_root: bool = False,
                  label_field: str = "verb", classes: list[str] | None = None, ucf_split: int = 1) -> Manifest:
    """:func:`open_manifest` collected into lists (a temporary scratch database, removed again)."""
    from .storage import ScratchDB

    with ScratchDB() as db:
        stream = open_manifest(dataset, root, annotations, db=db, allow_outside_root=allow_outside_root,
                               label_field=label_field, classes=classes, ucf_split=ucf_split)
        clips, missing = [], []
        for entry in stream:
            if isinstance(entry, Missing):
                missing.append(entry._asdict())
            else:
                clips.append(ClipSpec(entry.clip_id, Path(entry.path), entry.labels, entry.split, entry.start,
                                      entry.end))
    return Manifest(stream.dataset, stream.classes, stream.multilabel, clips, missing, stream.rows, stream.dropped)
