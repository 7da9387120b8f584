"""Kinetics-400/600/700 and Kinetics-Sounds: the official CSVs (`label,youtube_id,time_start,time_end,split[,is_cc]`), videos flat or in class folders."""

from __future__ import annotations

from pathlib import Path

from .common import (ClipSpec, ManifestError, Missing, Reader, SPLIT_FOLDERS, _Media, _count, _float, _split,
                     _split_from_name, _table, video_span)

def _kinetics_rows(annotations: list[Path]):
    for ann in annotations:
        _, rows = _table(ann, "youtube_id", "time_start", "time_end")
        for line, row in rows:
            split = _split(ann, line, row["split"]) if row.get("split") else _split_from_name(ann)
            start = _float(ann, line, "time_start", row["time_start"])
            end = _float(ann, line, "time_end", row["time_end"])
            yield (f"{row['youtube_id']}_{int(start):06d}_{int(end):06d}", row["youtube_id"], row.get("label", ""), split,
                   start, end)


def _read_kinetics(media: _Media, annotations: list[Path], name: str, keep: list[str] | None) -> Reader:
    """Kinetics-400/600/700 official CSVs (``label,youtube_id,time_start,time_end,split``,
    optional ``is_cc``; test CSVs have no labels). Files are the trimmed clips
    ``<youtube_id>_<start:06d>_<end:06d>.<ext>`` flat under ``<root>/<split>/`` or in
    class folders ``<root>/<split>/<label>/``. A plain ``<youtube_id>.<ext>`` is accepted too:
    the full video, whose ``time_start``..``time_end`` is decoded, or (no longer than that span)
    the clip itself. Without a ``split`` value the split comes from the CSV file name.

    ``keep`` (a class subset, e.g. Kinetics-Sounds): rows of other classes are dropped (counted,
    not reported as missing) and the class list is the sorted subset, whether or not every class
    occurs in the CSVs (so class indices do not depend on which CSVs were given).

    Source group: the YouTube id (clips of one video are held out together)."""
    keepset = set(keep) if keep is not None else None
    labels: set[str] = set()
    rows: dict[str, int] = {}
    dropped = 0
    for _, _, label, split, _, _ in _kinetics_rows(annotations):  # validates every row
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
        for clip_id, ytid, label, split, start, end in _kinetics_rows(annotations):
            if keepset is not None and label not in keepset:
                continue
            if not label:
                yield Missing(clip_id, "no label", "annotation", split)
                continue
            path, reason = media.find([clip_id, ytid], (*SPLIT_FOLDERS[split], label))
            yield Missing(clip_id, reason, "file", split) if reason else ClipSpec(
                clip_id, path, (index[label],), split, group=ytid, **video_span(path, ytid, start, end))

    return classes, False, rows, dropped, entries
