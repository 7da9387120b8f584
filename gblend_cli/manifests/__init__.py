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

Every clip carries its source group (`ClipSpec.group`): clips cut from one source video share
it, and the held-out split V keeps each group whole (`data.split_holdout`). Each reader's
docstring says what its group is; by default the media file.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator

from .common import (KINETICS, KNOWN_DATASETS, NO_ANNOTATIONS, SUBSET_DATASETS, ClipSpec, Manifest, ManifestError,
                     Missing, _Media)
from .audioset import _read_audioset
from .ave import _read_ave
from .cremad import _read_cremad
from .epic import _read_epic
from .generic import _read_folder, _read_generic_csv
from .kinetics import _read_kinetics
from .ucf101 import _read_ucf101
from .vggsound import _read_vggsound

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


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
        yield clip if clip_id == clip.clip_id else replace(clip, clip_id=clip_id)
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
    root: str = ""               # the dataset root, absolute (clip paths are under it, unless allowed outside)

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
    return ManifestStream(name, classes_, multilabel, rows, dropped, entries, db, media.root)


def read_manifest(dataset: str, root: Path, annotations: list[Path], *, allow_outside_root: bool = False,
                  label_field: str = "verb", classes: list[str] | None = None, ucf_split: int = 1) -> Manifest:
    """:func:`open_manifest` collected into lists (a temporary scratch database, removed again)."""
    from ..storage import ScratchDB

    with ScratchDB() as db:
        stream = open_manifest(dataset, root, annotations, db=db, allow_outside_root=allow_outside_root,
                               label_field=label_field, classes=classes, ucf_split=ucf_split)
        clips, missing = [], []
        for entry in stream:
            if isinstance(entry, Missing):
                missing.append(entry._asdict())
            else:
                clips.append(replace(entry, path=Path(entry.path)))
    return Manifest(stream.dataset, stream.classes, stream.multilabel, clips, missing, stream.rows, stream.dropped)
