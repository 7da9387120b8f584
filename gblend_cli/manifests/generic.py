"""The generic CSV (`path,label[,split,start,end]`) and the class-folder layout."""

from __future__ import annotations

import os
from pathlib import Path

from .common import ClipSpec, ManifestError, Missing, Reader, SPLITS, _Media, _count, _float, _split, _table

def _read_generic_csv(media: _Media, annotations: list[Path]) -> Reader:
    """Generic CSV: ``path,label`` plus optional ``split,start,end,group``. ``path`` is
    relative to the root; ``label`` holds class names separated by ``;`` (multi-label
    when any row has several, whether or not its file is found); start/end are seconds (empty:
    whole file). ``group`` names the clip's source (clips sharing it are held out together);
    empty or absent: the media file, so clips cut from one file share a group."""
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
                yield clip_id, row["path"], names, split, start, end, row.get("group", "")

    labels: set[str] = set()
    rows: dict[str, int] = {}
    multilabel = False
    for _, _, names, split, *_ in records():
        labels.update(names)
        multilabel |= len(names) > 1
        _count(rows, split)
    classes = sorted(labels)
    index = {c: i for i, c in enumerate(classes)}

    def entries():
        for clip_id, raw, names, split, start, end, group in records():
            if not names:
                yield Missing(raw, "no label", "annotation", split)
                continue
            if start is not None and end is not None and end <= start:
                yield Missing(raw, f"end {end:g} is not after start {start:g}", "annotation", split)
                continue
            path, reason = media.check(raw)
            yield Missing(raw, reason, "file", split) if reason else ClipSpec(
                clip_id, path, tuple(index[n] for n in names), split, start, end, group or media.group(path))

    return classes, multilabel, rows, 0, entries


def _read_folder(media: _Media) -> Reader:
    """Class-folder layout without CSV: ``<root>/<split>/<label>/<file>`` when every
    top-level directory is a split name (train/val/validate/validation/test), else
    ``<root>/<label>/<file>`` (all "train"). Files at other depths are ignored. Source group: the file."""
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
            yield Missing(clip_id, reason, "file", split) if reason else ClipSpec(clip_id, path, (index[label],), split,
                                                                                  group=media.group(path))

    return classes, False, None, 0, entries
