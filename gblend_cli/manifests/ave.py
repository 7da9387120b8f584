"""AVE (Audio-Visual Event): `Annotations.txt` and the train/val/test split files (`Category&VideoID&Quality&StartTime&EndTime`)."""

from __future__ import annotations

from pathlib import Path

from .common import ClipSpec, ManifestError, Missing, Reader, SPLIT_FOLDERS, _Media, _count, _float, _iter_lines

_AVE_HEADER = ["category", "videoid", "quality", "starttime", "endtime"]


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
    when given, supplies all 28 even if a split lacks one). Source group: the VideoID."""
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
                yield Missing(vid, reason, "file", split) if reason else ClipSpec(vid, path, (index[cat],), split,
                                                                                  group=vid)

    return classes, False, rows, 0, entries
