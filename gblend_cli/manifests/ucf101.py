"""UCF-101: `classInd.txt` and `trainlist0N.txt` / `testlist0N.txt` (split 1, 2 or 3)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from .common import ClipSpec, ManifestError, Missing, Reader, _Media, _count, _iter_lines

_UCF_LIST = re.compile(r"^(trainlist|testlist)0([1-3])\.txt$", re.IGNORECASE)
_UCF_GROUP = re.compile(r"^v_.+_g(\d+)_c\d+$", re.IGNORECASE)


def _read_ucf101(media: _Media, annotations: list[Path], split_no: int) -> Reader:
    """UCF-101 (Soomro et al., 2012, arXiv:1212.0402: 13,320 videos, 101 classes) with its official
    three train/test splits: ``classInd.txt`` (``1 ApplyEyeMakeup``, 1-based), ``trainlist0N.txt``
    (``ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1``) and ``testlist0N.txt`` (path only: the
    class is the folder). ``split_no`` (1, 2 or 3) picks N; other splits' list files are ignored,
    so the whole ``ucfTrainTestlist`` folder may be given. Videos are
    ``<root>/<Class>/v_<Class>_gXX_cYY.avi``; names are matched without regard to case when the
    exact path is absent (the lists spell ``HandStandPushups`` where the files say
    ``HandstandPushups``). About half of the classes have no audio track: those clips are kept
    with silence. Splits: "train" and "test" (the evaluation split). Source group: class + gXX
    (``ApplyEyeMakeup_g08``): the clips of a group share actor and scene, and the official splits
    keep each group on one side, so the held-out V does too (a name without ``_gXX_cYY``: its file)."""
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
            if not path:
                yield Missing(stem, reason, "file", split)
                continue
            g = _UCF_GROUP.match(stem)
            group = f"{classes[label]}_g{int(g[1]):02d}" if g else media.group(path)
            yield ClipSpec(stem, path, (label,), split, group=group)

    return classes, False, rows, 0, entries
