"""Dataset manifests: official annotation files + a folder of media files -> clips.

One reader per annotation format (Kinetics, AudioSet, EPIC-Kitchens, CREMA-D, a
generic CSV and a class-folder layout). Every reader returns a :class:`Manifest`.
Rows whose media file is absent, or that are rejected (no label, path outside the
dataset root, ...), are listed in ``Manifest.missing`` and never raise; malformed
annotation input raises :class:`ManifestError` with a one-line message naming the
file (and line/column where there is one).

Media files are found by one walk of the dataset root (symlinked directories are
not followed, hidden files and directories are skipped) and matched by file stem.
"""
from __future__ import annotations

import csv
import hashlib
import math
import os
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

MEDIA_EXTS = frozenset(
    ".mp4 .webm .mkv .avi .mov .flv .m4v .wav .mp3 .m4a .ogg .flac".split())
VIDEO_EXTS = frozenset(".mp4 .webm .mkv .avi .mov .flv .m4v".split())
SPLITS = {"train": "train", "val": "val", "validate": "val", "validation": "val", "test": "test"}
SPLIT_FOLDERS = {"train": ("train",), "val": ("val", "validate", "validation"), "test": ("test",)}
KINETICS = ("kinetics400", "kinetics600", "kinetics700", "kinetics-sounds")
KNOWN_DATASETS = KINETICS + ("audioset", "epic-kitchens", "cremad", "csv", "folder")
CREMAD_EMOTIONS = ["ANG", "DIS", "FEA", "HAP", "NEU", "SAD"]
_CREMAD_STEM = re.compile(r"^(\d{4})_([A-Z]{3})_([A-Z]{3})_([A-Z]{2}|X{2})$")
_EPIC_TIME = re.compile(r"(\d+):(\d{1,2}):(\d{1,2}(?:\.\d*)?)")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


class ManifestError(Exception):
    """Bad annotation input (unreadable CSV, missing required column, unknown dataset).

    The message is always one line naming the file and the field/column."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).splitlines()))


@dataclass(frozen=True)
class ClipSpec:
    clip_id: str              # unique in the manifest, only [A-Za-z0-9_.-]
    path: Path                # absolute path of the media file
    labels: tuple[int, ...]   # class indices
    split: str                # "train" | "val" | "test"
    start: float | None = None  # seconds into the file (None: whole file)
    end: float | None = None


@dataclass
class Manifest:
    dataset: str
    classes: list[str]
    multilabel: bool
    clips: list[ClipSpec]
    missing: list[dict]       # [{"clip": str, "reason": str}]


# ---------------------------------------------------------------- media files

def _norm(name: str) -> str:
    return name.lower().replace(" ", "_")


class _Media:
    """Media files under the dataset root plus the path-safety check."""

    def __init__(self, root: Path, allow_outside_root: bool):
        self.root = Path(os.path.abspath(root))
        self.real_root = self.root.resolve()
        self.allow_outside_root = allow_outside_root

    @cached_property
    def files(self) -> list[Path]:
        """Relative paths of all media files, in sorted order (one os.walk)."""
        found = []
        for dirpath, dirnames, filenames in os.walk(self.root, onerror=lambda e: None):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in filenames:
                if not name.startswith(".") and os.path.splitext(name)[1].lower() in MEDIA_EXTS:
                    found.append(Path(dirpath, name).relative_to(self.root))
        return sorted(found, key=lambda p: p.as_posix())

    @cached_property
    def by_stem(self) -> dict[str, list[Path]]:
        index: dict[str, list[Path]] = {}
        for rel in self.files:
            index.setdefault(rel.stem, []).append(rel)
        return index

    def check(self, path: Path) -> tuple[Path | None, str | None]:
        """(absolute path, None) if ``path`` is a usable file, else (None, reason)."""
        full = path if path.is_absolute() else self.root / path
        if not self.allow_outside_root:
            try:
                full.resolve().relative_to(self.real_root)
            except RuntimeError:  # Python 3.11's resolve() on a symlink loop
                return None, f"symlink loop: {full}"
            except (ValueError, OSError):
                return None, f"path escapes dataset root: {full}"
        if not full.is_file():
            return None, f"file not found: {full}"
        return full, None

    def find(self, stems, hints=()) -> tuple[Path | None, str | None]:
        """Look up the first stem that exists; among files sharing a stem prefer
        the one whose folders match most ``hints`` (split/label), else the first."""
        wanted = {_norm(h) for h in hints if h}
        for stem in stems:
            candidates = self.by_stem.get(stem)
            if candidates:
                best = max(candidates, key=lambda r: len(wanted & {_norm(p) for p in r.parts[:-1]}))
                return self.check(best)
        return None, f"file not found: {stems[0]}.*"


# ---------------------------------------------------------------- CSV helpers

def _read_rows(path: Path, skipinitialspace: bool = False) -> list[tuple[int, list[str]]]:
    """All non-blank rows of a UTF-8 (BOM tolerated) CSV as (line number, fields)."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f, skipinitialspace=skipinitialspace)
            return [(reader.line_num, [x.strip() for x in row]) for row in reader if any(row)]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ManifestError(f"{path}: cannot read CSV: {e}") from None


def _read_table(path: Path, *required: str) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """Header + rows as dicts (missing cells are ""); checks the required columns."""
    rows = _read_rows(path)
    columns = rows[0][1] if rows else []
    for name in required:
        if name not in columns:
            raise ManifestError(f"{path}: missing column {name!r}")
    table = [(line, {c: (fields[i] if i < len(fields) else "") for i, c in enumerate(columns)})
             for line, fields in rows[1:]]
    return columns, table


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


def _reject(missing: list[dict], clip: str, reason: str) -> None:
    missing.append({"clip": clip, "reason": reason})


# ---------------------------------------------------------------- readers

def _read_kinetics(media: _Media, annotations: list[Path]):
    """Kinetics-400/600/700 official CSVs (``label,youtube_id,time_start,time_end,split``,
    optional ``is_cc``; test CSVs have no labels). Files are the trimmed clips
    ``<youtube_id>_<start:06d>_<end:06d>.<ext>`` flat under ``<root>/<split>/`` or in
    class folders ``<root>/<split>/<label>/`` (a plain ``<youtube_id>.<ext>`` is accepted
    too). Without a ``split`` value the split comes from the CSV file name."""
    records = []
    for ann in annotations:
        _, rows = _read_table(ann, "youtube_id", "time_start", "time_end")
        for line, row in rows:
            split = _split(ann, line, row["split"]) if row.get("split") else _split_from_name(ann)
            start = int(_float(ann, line, "time_start", row["time_start"]))
            end = int(_float(ann, line, "time_end", row["time_end"]))
            records.append((f"{row['youtube_id']}_{start:06d}_{end:06d}", row["youtube_id"],
                            row.get("label", ""), split))
    classes = sorted({label for _, _, label, _ in records if label})
    index = {c: i for i, c in enumerate(classes)}
    clips, missing = [], []
    for clip_id, ytid, label, split in records:
        if not label:
            _reject(missing, clip_id, "no label")
            continue
        path, reason = media.find([clip_id, ytid], (*SPLIT_FOLDERS[split], label))
        if reason:
            _reject(missing, clip_id, reason)
        else:
            clips.append(ClipSpec(clip_id, path, (index[label],), split))
    return classes, False, clips, missing


def _read_audioset(media: _Media, annotations: list[Path]):
    """AudioSet segment CSVs (``# YTID, start_seconds, end_seconds, positive_labels``
    after ``#`` comment lines) plus ``class_labels_indices.csv`` (``index,mid,display_name``,
    recognised by its header). Multi-label; files named ``eval*`` are the val split.
    Media files are the trimmed segments ``<YTID>_<start:06d>_<end:06d>``,
    ``<YTID>_<start>_<end>`` or ``<YTID>``."""
    tables = [(ann, _read_rows(ann, skipinitialspace=True)) for ann in annotations]
    label_tables = [(a, rows) for a, rows in tables
                    if rows and [_norm(x) for x in rows[0][1][:3]] == ["index", "mid", "display_name"]]
    if len(label_tables) != 1:
        raise ManifestError("audioset: expected exactly one class_labels_indices.csv "
                            f"(header index,mid,display_name) among the annotations, got {len(label_tables)}")
    labels_file, label_rows = label_tables[0]
    entries = []
    for line, fields in label_rows[1:]:
        if len(fields) < 3:
            raise ManifestError(f"{labels_file}:{line}: expected index,mid,display_name")
        entries.append((int(_float(labels_file, line, "index", fields[0])), fields[1], fields[2]))
    entries.sort()
    classes = [name for _, _, name in entries]
    mid_index = {mid: i for i, (_, mid, _) in enumerate(entries)}
    clips, missing = [], []
    for ann, rows in tables:
        if ann == labels_file:
            continue
        split = "val" if "eval" in ann.name.lower() else "train"
        for line, fields in rows:
            if fields[0].startswith("#"):
                continue
            if len(fields) < 4:
                raise ManifestError(f"{ann}:{line}: expected YTID, start_seconds, end_seconds, positive_labels")
            ytid = fields[0]
            start = int(_float(ann, line, "start_seconds", fields[1]))
            end = int(_float(ann, line, "end_seconds", fields[2]))
            mids = [m.strip() for m in ",".join(fields[3:]).split(",") if m.strip()]
            for mid in mids:
                if mid not in mid_index:
                    raise ManifestError(f"{ann}:{line}: unknown MID {mid!r} (not in {labels_file.name})")
            clip_id = f"{ytid}_{start:06d}"
            if not mids:
                _reject(missing, clip_id, "no label")
                continue
            stems = [f"{ytid}_{start:06d}_{end:06d}", f"{ytid}_{start}_{end}", ytid]
            path, reason = media.find(stems, (*SPLIT_FOLDERS[split], ann.stem))
            if reason:
                _reject(missing, clip_id, reason)
            else:
                labels = tuple(sorted({mid_index[m] for m in mids}))
                clips.append(ClipSpec(clip_id, path, labels, split))
    return classes, True, clips, missing


def _epic_seconds(ann: Path, line: int, column: str, text: str) -> float:
    m = _EPIC_TIME.fullmatch(text)
    if not m:
        raise ManifestError(f"{ann}:{line}: column {column!r}: expected HH:MM:SS.ff, got {text!r}")
    return int(m[1]) * 3600 + int(m[2]) * 60 + float(m[3])


def _read_epic(media: _Media, annotations: list[Path], label_field: str):
    """EPIC-Kitchens-100 (``narration_id``) or EPIC-Kitchens-55 (``uid``) action CSVs:
    segments ``start_timestamp``..``stop_timestamp`` (HH:MM:SS.ff) of the long videos
    ``<video_id>.MP4`` (e.g. ``<root>/<participant_id>/videos/``). ``label_field`` picks
    ``verb_class``, ``noun_class`` or the (verb_class, noun_class) pair ("action").
    Split from the file name: *val* -> val, *test* -> test, else train."""
    if label_field not in ("verb", "noun", "action"):
        raise ManifestError(f"epic-kitchens: label_field must be verb, noun or action, not {label_field!r}")
    need = ("verb_class", "noun_class") if label_field == "action" else (f"{label_field}_class",)
    records, names = [], {}
    for ann in annotations:
        columns, rows = _read_table(ann, "video_id", "start_timestamp", "stop_timestamp")
        id_column = "narration_id" if "narration_id" in columns else "uid" if "uid" in columns else None
        if id_column is None:
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
                if label_field != "action" and row.get(label_field):
                    names.setdefault(key, row[label_field])
            records.append((clip_id, video, row.get("participant_id", ""), split, start, end, key))
    keys = sorted({r[-1] for r in records if r[-1] is not None})
    classes = [names.get(k, ":".join(map(str, k))) for k in keys]
    index = {k: i for i, k in enumerate(keys)}
    clips, missing = [], []
    for clip_id, video, participant, split, start, end, key in records:
        if key is None:
            _reject(missing, clip_id, "no label")
            continue
        path, reason = media.find([video], (participant, *SPLIT_FOLDERS[split]))
        if reason:
            _reject(missing, clip_id, reason)
        else:
            clips.append(ClipSpec(clip_id, path, (index[key],), split, start, end))
    return classes, False, clips, missing


def _read_cremad(media: _Media):
    """CREMA-D: every media file named ``<actor>_<sentence>_<emotion>_<level>``
    (e.g. ``1001_IEO_HAP_LO.flv``; no CSV needed). The video file is preferred over
    the audio file of the same stem. Speaker-disjoint split: the distinct actor ids
    are sorted and the last 10% of them (rounded up, at least one when there are two
    or more actors) form "val", all other actors "train"."""
    chosen: dict[str, Path] = {}
    for rel in media.files:
        if _CREMAD_STEM.match(rel.stem):
            prev = chosen.get(rel.stem)
            if prev is None or (prev.suffix.lower() not in VIDEO_EXTS and rel.suffix.lower() in VIDEO_EXTS):
                chosen[rel.stem] = rel
    actors = sorted({stem[:4] for stem in chosen})
    n_val = math.ceil(0.1 * len(actors)) if len(actors) >= 2 else 0
    val_actors = set(actors[len(actors) - n_val:])
    clips, missing = [], []
    for stem in sorted(chosen):
        emotion = _CREMAD_STEM.match(stem)[3]
        if emotion not in CREMAD_EMOTIONS:
            _reject(missing, stem, f"unknown emotion code {emotion!r}")
            continue
        path, reason = media.check(chosen[stem])
        if reason:
            _reject(missing, stem, reason)
        else:
            split = "val" if stem[:4] in val_actors else "train"
            clips.append(ClipSpec(stem, path, (CREMAD_EMOTIONS.index(emotion),), split))
    return list(CREMAD_EMOTIONS), False, clips, missing


def _read_generic_csv(media: _Media, annotations: list[Path]):
    """Generic CSV: ``path,label`` plus optional ``split,start,end``. ``path`` is
    relative to the root; ``label`` holds class names separated by ``;`` (multi-label
    when any row has several); start/end are seconds (empty: whole file)."""
    records = []
    for ann in annotations:
        _, rows = _read_table(ann, "path", "label")
        for line, row in rows:
            if not row["path"]:
                raise ManifestError(f"{ann}:{line}: column 'path' is empty")
            names = sorted({n.strip() for n in row["label"].split(";") if n.strip()})
            split = _split(ann, line, row.get("split") or "train")
            start, end = (_float(ann, line, c, row[c]) if row.get(c) else None for c in ("start", "end"))
            clip_id = os.path.splitext(row["path"])[0].replace("\\", "/").strip("/").replace("/", "__")
            clip_id += f"_{start:g}" if start is not None else ""
            records.append((clip_id, row["path"], names, split, start, end))
    classes = sorted({n for r in records for n in r[2]})
    index = {c: i for i, c in enumerate(classes)}
    clips, missing = [], []
    for clip_id, raw, names, split, start, end in records:
        if not names:
            _reject(missing, raw, "no label")
            continue
        if start is not None and end is not None and end <= start:
            _reject(missing, raw, f"end {end:g} is not after start {start:g}")
            continue
        path, reason = media.check(Path(raw))
        if reason:
            _reject(missing, raw, reason)
        else:
            clips.append(ClipSpec(clip_id, path, tuple(index[n] for n in names), split, start, end))
    return classes, any(len(c.labels) > 1 for c in clips), clips, missing


def _read_folder(media: _Media):
    """Class-folder layout without CSV: ``<root>/<split>/<label>/<file>`` when every
    top-level directory is a split name (train/val/validate/validation/test), else
    ``<root>/<label>/<file>`` (all "train"). Files at other depths are ignored."""
    try:
        with os.scandir(media.root) as it:
            top = [e.name for e in it if e.is_dir(follow_symlinks=False) and not e.name.startswith(".")]
    except OSError:
        top = []
    by_split = bool(top) and all(name.lower() in SPLITS for name in top)
    entries = []
    for rel in media.files:
        parts = rel.parts
        if by_split and len(parts) >= 3:
            entries.append((rel, parts[1], SPLITS[parts[0].lower()]))
        elif not by_split and len(parts) >= 2:
            entries.append((rel, parts[0], "train"))
    classes = sorted({label for _, label, _ in entries})
    index = {c: i for i, c in enumerate(classes)}
    clips, missing = [], []
    for rel, label, split in entries:
        clip_id = f"{label}__{rel.stem}"
        path, reason = media.check(rel)
        if reason:
            _reject(missing, clip_id, reason)
        else:
            clips.append(ClipSpec(clip_id, path, (index[label],), split))
    return classes, False, clips, missing


# ---------------------------------------------------------------- entry point

def _unique_ids(clips: list[ClipSpec]) -> list[ClipSpec]:
    """Sanitise ids to [A-Za-z0-9_.-]; on a collision append 8 hex of sha1(path+start)."""
    seen: set[str] = set()
    out = []
    for clip in clips:
        base = _UNSAFE.sub("_", clip.clip_id).strip(".") or "_"
        clip_id, n = base, 1
        while clip_id in seen:
            digest = hashlib.sha1(f"{clip.path}{clip.start}".encode()).hexdigest()[:8]
            clip_id = f"{base}-{digest}" + (f"-{n}" if n > 1 else "")
            n += 1
        seen.add(clip_id)
        out.append(clip if clip_id == clip.clip_id else
                   ClipSpec(clip_id, clip.path, clip.labels, clip.split, clip.start, clip.end))
    return out


def read_manifest(dataset: str, root: Path, annotations: list[Path], *,
                  allow_outside_root: bool = False, label_field: str = "verb") -> Manifest:
    """Read the annotations of ``dataset`` and match them to media files under ``root``.

    ``dataset``: kinetics400, kinetics600, kinetics700, kinetics-sounds, audioset,
    epic-kitchens, cremad, csv or folder (case-insensitive, '_' accepted for '-').
    ``label_field`` (EPIC-Kitchens only): verb, noun or action."""
    name = dataset.strip().lower().replace("_", "-")
    if name not in KNOWN_DATASETS:
        raise ManifestError(f"unknown dataset {dataset!r}; known: {', '.join(KNOWN_DATASETS)}")
    annotations = [Path(a) for a in annotations]
    for ann in annotations:
        if not ann.is_file():
            raise ManifestError(f"{ann}: no such annotation file")
    if not annotations and name not in ("cremad", "folder"):
        raise ManifestError(f"{name}: no annotation file given")
    media = _Media(Path(root), allow_outside_root)
    if name in KINETICS:
        result = _read_kinetics(media, annotations)
    elif name == "audioset":
        result = _read_audioset(media, annotations)
    elif name == "epic-kitchens":
        result = _read_epic(media, annotations, label_field)
    elif name == "cremad":
        result = _read_cremad(media)
    elif name == "csv":
        result = _read_generic_csv(media, annotations)
    else:
        result = _read_folder(media)
    classes, multilabel, clips, missing = result
    return Manifest(name, classes, multilabel, _unique_ids(clips), missing)
