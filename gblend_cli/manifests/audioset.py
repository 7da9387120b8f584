"""AudioSet: segment CSVs + `class_labels_indices.csv`; multi-label."""

from __future__ import annotations

from pathlib import Path

from .common import (ClipSpec, ManifestError, Missing, Reader, SPLIT_FOLDERS, _Media, _count, _float, _iter_rows, _norm,
                     video_span)

def _read_audioset(media: _Media, annotations: list[Path]) -> Reader:
    """AudioSet segment CSVs (``# YTID, start_seconds, end_seconds, positive_labels``
    after ``#`` comment lines) plus ``class_labels_indices.csv`` (``index,mid,display_name``,
    recognised by its header). Multi-label; files named ``eval*`` are the val split.
    Media files are the trimmed segments ``<YTID>_<start:06d>_<end:06d>``,
    ``<YTID>_<start>_<end>`` or ``<YTID>`` (the full video, whose start..end is decoded, or the
    segment itself). Source group: the YTID."""
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
                start = _float(ann, line, "start_seconds", fields[1])
                end = _float(ann, line, "end_seconds", fields[2])
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
            s, e = int(start), int(end)
            clip_id = f"{ytid}_{s:06d}"
            if not mids:
                yield Missing(clip_id, "no label", "annotation", split)
                continue
            stems = [f"{ytid}_{s:06d}_{e:06d}", f"{ytid}_{s}_{e}", ytid]
            path, reason = media.find(stems, (*SPLIT_FOLDERS[split], ann.stem))
            yield Missing(clip_id, reason, "file", split) if reason else ClipSpec(
                clip_id, path, tuple(sorted({mid_index[m] for m in mids})), split, group=ytid,
                **video_span(path, ytid, start, end))

    return classes, True, rows, 0, entries
