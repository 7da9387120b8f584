"""VGGSound: the headerless `vggsound.csv` (`youtube_id,start_seconds,label,split`), 10-s clips."""

from __future__ import annotations

from pathlib import Path

from .common import (ClipSpec, ManifestError, Missing, Reader, SPLIT_FOLDERS, _Media, _count, _float, _iter_rows, _split,
                     video_span)

_VGGSOUND_SECONDS = 10  # every VGGSound clip is the 10 s from start_seconds (Chen et al., ICASSP 2020)


def _read_vggsound(media: _Media, annotations: list[Path]) -> Reader:
    """VGGSound (Chen et al., ICASSP 2020: 309 classes, ~200k 10-s clips): ``vggsound.csv`` rows
    ``youtube_id,start_seconds,label,split`` without a header (a header row is skipped if
    present); labels containing commas are quoted (``"cattle, bovinae cowbell"``); split is
    ``train`` or ``test``. Files ``<youtube_id>_<start:06d>.<ext>`` (the released archive's
    naming), ``<youtube_id>_<start:06d>_<end:06d>``, ``<youtube_id>_<start>`` or
    ``<youtube_id>`` (the full video, whose 10 s from start_seconds are decoded, or the 10-s clip
    itself), flat or in split/label folders. Source group: the youtube_id."""
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
            yield Missing(clip_id, reason, "file", split) if reason else ClipSpec(
                clip_id, path, (index[label],), split, group=ytid, **video_span(path, ytid, start, end))

    return classes, False, rows, 0, entries
