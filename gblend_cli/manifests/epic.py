"""EPIC-Kitchens 55/100 action CSVs; the label field is verb, noun or action."""

from __future__ import annotations

import re
from pathlib import Path

from .common import ClipSpec, ManifestError, Missing, Reader, SPLIT_FOLDERS, _Media, _count, _float, _split_from_name, _table

_EPIC_TIME = re.compile(r"(\d+):(\d{1,2}):(\d{1,2}(?:\.\d*)?)")


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
    Split from the file name: *val* -> val, *test* -> test, else train. Source group: the
    video_id (``P01_01``: every segment of one long video is held out together)."""
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
                                                                                  start, end, group=video)

    return classes, False, rows, 0, entries
