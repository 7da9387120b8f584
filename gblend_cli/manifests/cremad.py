"""CREMA-D: the label is in the file name (`<actor>_<sentence>_<emotion>_<level>`); speaker-disjoint split."""

from __future__ import annotations

import math
import os
import re

from .common import CREMAD_EMOTIONS, ClipSpec, Missing, Reader, VIDEO_EXTS, _Media

_CREMAD_STEM = re.compile(r"^(\d{4})_([A-Z]{3})_([A-Z]{3})_([A-Z]{2}|X{2})$")


def _read_cremad(media: _Media) -> Reader:
    """CREMA-D: every media file named ``<actor>_<sentence>_<emotion>_<level>``
    (e.g. ``1001_IEO_HAP_LO.flv``; no CSV needed). The video file is preferred over
    the audio file of the same stem. Speaker-disjoint split: the distinct actor ids
    are sorted and the last 10% of them (rounded up, at least one when there are two
    or more actors) form "val", all other actors "train". (7,442 clips: held in memory.) Source
    group: the media file (one clip per file: the held-out V is per clip, not per speaker)."""
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
            yield Missing(stem, reason, "file", split) if reason else ClipSpec(
                stem, path, (CREMAD_EMOTIONS.index(emotion),), split, group=media.group(path))

    return list(CREMAD_EMOTIONS), False, None, 0, entries
