"""`gblend prepare-data --check DIR`: is a dataset complete, before hours of training find out?

DIR is either
- a **prepared** folder (it has dataset.json): every clip of index.csv marked ok has its arrays,
  each a whole .npy of the shape index.csv promises (a copy cut short, a deleted or truncated
  array is "damaged"); clips prepare-data could not decode are "unreadable"; annotation rows
  whose media file was absent are "missing" (from prepare_report.json); or
- a **media** folder (the dataset root, read with --dataset/--annotations or the recipe's): every
  clip the annotations list has its file ("missing" otherwise), and the file opens, has a video
  stream whose first frame decodes and whose packets reach the declared end ("unreadable"
  otherwise: a download cut short stops early). Files are probed in worker processes with the
  decode timeout, like prepare-data's.

Interface (scripts rely on it): **one line per damaged or missing clip on stdout**, TAB-separated
`PROBLEM<TAB>CLIP<TAB>REASON` with PROBLEM one of missing, unreadable, damaged, incomplete; a
summary on stderr (clips per split and class, clips without audio, the annotation rows and the
published size of each split where the dataset has one); exit 0 when every clip is complete, 1
otherwise (2: bad input). Rows without a usable annotation (a Kinetics test row has no label) are
counted in the summary, not listed: they are not clips.
"""

from __future__ import annotations

import csv
import json
import os
import statistics
import sys
from pathlib import Path

from . import DATASET_FORMAT_VERSION
from .errors import UserError
from .storage import require_known_format
from .ui import console

# Published split sizes, to catch annotation files that are themselves cut short. Each is the
# number the dataset's authors state; the annotation files may list a little less today (videos
# removed from YouTube) -- only a shortfall of more than 10% is flagged, and only in the summary.
PUBLISHED: dict[str, dict[str, int]] = {
    # Kay et al., "The Kinetics Human Action Video Dataset", arXiv:1705.06950, Sec. 3: 306,245 clips,
    # 50 validation and 100 test clips for each of the 400 classes, the rest (246,245) training.
    "kinetics400": {"train": 246_245, "val": 20_000, "test": 40_000},
    # Tian et al., "Audio-Visual Event Localization in Unconstrained Videos", ECCV 2018: 4,143 videos,
    # split 3,339 / 402 / 402 (trainSet.txt / valSet.txt / testSet.txt).
    "ave": {"train": 3_339, "val": 402, "test": 402},
    # Chen et al., "VGGSound", ICASSP 2020: the released vggsound.csv has 199,176 rows,
    # 183,730 train and 15,446 test.
    "vggsound": {"train": 183_730, "test": 15_446},
    # Soomro et al., "UCF101", arXiv:1212.0402: 13,320 clips; the official split files trainlist0N /
    # testlist0N hold 9,537 / 3,783 (split 1), 9,586 / 3,734 (split 2), 9,624 / 3,696 (split 3).
    "ucf101/1": {"train": 9_537, "test": 3_783},
    "ucf101/2": {"train": 9_586, "test": 3_734},
    "ucf101/3": {"train": 9_624, "test": 3_696},
}
SHORTFALL = 0.9  # annotation rows below 90% of the published size: a partial annotation file?


def published(dataset: str, ucf_split: int = 1) -> dict[str, int]:
    return PUBLISHED.get(f"ucf101/{ucf_split}" if dataset == "ucf101" else dataset, {})


class _Tally:
    """Clips per split and class, problems, clips without audio; prints the problem lines."""

    def __init__(self, classes: list[str]):
        self.classes = classes
        self.ok: dict[str, dict[int, int]] = {}
        self.no_audio: dict[str, int] = {}
        self.problems: dict[str, int] = {}
        self.unannotated = 0

    def clip(self, split: str, labels, has_audio: bool) -> None:
        per_class = self.ok.setdefault(split, {})
        for label in labels:
            per_class[label] = per_class.get(label, 0) + 1
        per_class[-1] = per_class.get(-1, 0) + 1  # the split's clip count
        if not has_audio:
            self.no_audio[split] = self.no_audio.get(split, 0) + 1

    def problem(self, kind: str, clip: str, reason: str, split: str = "") -> None:
        # plain writes: a rich Console would expand the TABs scripts split on
        sys.stdout.write(f"{kind}\t{' '.join(str(clip).split())}\t{' '.join(str(reason).split())}\n")
        sys.stdout.flush()
        self.problems[split] = self.problems.get(split, 0) + 1

    @property
    def n_problems(self) -> int:
        return sum(self.problems.values())

    def summary(self, title: str, rows: dict[str, int] | None, expected: dict[str, int]) -> None:
        say = lambda text: console.print(text, soft_wrap=True, markup=False, highlight=False)  # noqa: E731
        say(title)
        splits = sorted(set(self.ok) | set(self.problems) - {""} | set(rows or {}) | set(expected),
                        key=lambda s: ("train", "val", "test").index(s) if s in ("train", "val", "test") else 9)
        say(f"  {'split':<7} {'clips':>9} {'problems':>9} {'no audio':>9} {'ann. rows':>10} {'published':>10}")
        for s in splits:
            n = self.ok.get(s, {}).get(-1, 0)
            r = (rows or {}).get(s)
            say(f"  {s:<7} {n:>9,} {self.problems.get(s, 0):>9,} {self.no_audio.get(s, 0):>9,} "
                f"{'' if r is None else f'{r:,}':>10} {f'{expected[s]:,}' if s in expected else '':>10}")
        for s in splits:
            r = (rows or {}).get(s)
            if s in expected and r is not None and r < SHORTFALL * expected[s]:
                say(f"  warning: the annotations list {r:,} {s} clips, {r / expected[s]:.0%} of the {expected[s]:,} "
                    f"published: is an annotation file cut short?")
        if self.problems.get(""):
            say(f"  ({self.problems['']} problems without a split)")
        if self.unannotated:
            say(f"  {self.unannotated:,} annotation rows without a usable label (not clips; not listed)")
        if self.classes:
            for s in splits:
                per = self.ok.get(s, {})
                counts = [per.get(i, 0) for i in range(len(self.classes))]
                empty = [self.classes[i] for i, c in enumerate(counts) if c == 0]
                say(f"  {s}: {len(self.classes)} classes, clips per class min {min(counts)} / median "
                    f"{statistics.median(counts):g} / max {max(counts)}"
                    + (f"; {len(empty)} without clips: {', '.join(empty[:8])}{' ...' if len(empty) > 8 else ''}"
                       if empty else ""))
                if len(self.classes) <= 40:
                    say("    " + "; ".join(f"{self.classes[i]}: {c}" for i, c in enumerate(counts)))
        total = sum(v.get(-1, 0) for v in self.ok.values())
        if self.n_problems:
            say(f"result: {self.n_problems:,} damaged or missing clips (one line each on stdout); {total:,} complete")
        else:
            say(f"result: all {total:,} clips complete")


# ------------------------------------------------------------------------------------ prepared folder

def _npy_problem(path: Path, rows: int | None, dtype: str, trailing: int | None) -> str | None:
    """None if `path` is a whole .npy of `rows` rows (when given), else what is wrong with it."""
    import numpy as np

    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dt = read(f)
            offset = f.tell()
        size = os.path.getsize(path)
    except FileNotFoundError:
        return f"{path.parent.name}/{path.name}: file missing"
    except (OSError, ValueError) as e:
        return f"{path.parent.name}/{path.name}: not a readable .npy ({' '.join(str(e).split())[:120]})"
    want = offset + int(np.prod(shape, dtype=np.int64)) * dt.itemsize
    if size != want:
        return f"{path.parent.name}/{path.name}: {size:,} bytes, a whole array of shape {shape} is {want:,}"
    if dt != np.dtype(dtype):
        return f"{path.parent.name}/{path.name}: dtype {dt}, expected {dtype}"
    if rows is not None and (not shape or shape[0] != rows):
        return f"{path.parent.name}/{path.name}: {shape[0] if shape else 0} rows, index.csv says {rows}"
    if trailing is not None and shape[-1] != trailing:
        return f"{path.parent.name}/{path.name}: shape {shape}, last axis should be {trailing}"
    return None


def _checksum_problem(folder: Path, row: dict) -> str | None:
    """A file whose size or CRC-32 differs from what prepare-data recorded (index.csv "checksums")."""
    from .integrity import digest_problem, parse_checksums
    from .clip_files import clip_files

    try:
        sums = parse_checksums(row.get("checksums") or "")
    except ValueError as e:
        return f"index.csv checksums damaged ({e})"
    for name, path in clip_files(folder, row["clip_id"], sums).items():
        found = digest_problem(path, sums[name])
        if found:
            return f"{path.parent.name}/{path.name}: {found}"
    return None


ARRAYS = {"rgb": ("uint8", 3), "flow": ("uint8", 2), "audio": ("float16", 40)}


def _packed_check(folder: Path, meta: dict):
    """row of index.csv -> None or what is wrong with the clip's packed file (head, offsets and size
    consistent, first and last frames decode, frames and log-mel rows as index.csv says)."""
    from .store import SUFFIX, Reader, check_file

    modalities = meta.get("modalities", ["audio", "rgb"])
    reader = Reader(folder, keep=1)

    def problem(row: dict) -> str | None:
        path = folder / "clips" / f"{row['clip_id']}{SUFFIX}"
        found = check_file(path, int(row["frames"]), modalities) or _checksum_problem(folder, row)
        if found:
            return f"clips/{path.name}: {found}"
        n, want = reader.length(row["clip_id"], "audio"), round(float(row["seconds"]) * 100)
        if abs(n - want) > 1:
            return f"clips/{path.name}: {n} log-mel frames, {row['seconds']} s needs {want}"
        return None

    return problem


def _array_check(folder: Path, meta: dict):
    """row of index.csv -> None or what is wrong with the clip's stored arrays (one .npy per
    modality: frames rows of RGB/flow, 100 log-mel rows per second)."""
    modalities = meta.get("modalities", ["audio", "rgb"])

    def problem(row: dict) -> str | None:
        frames = int(row["frames"])
        for m in modalities:
            dtype, trailing = ARRAYS[m]
            rows = frames if m != "audio" else None
            found = _npy_problem(folder / m / f"{row['clip_id']}.npy", rows, dtype, trailing)
            if found:
                return found
        found = _checksum_problem(folder, row)
        if found:
            return found
        if "audio" in modalities:  # 100 log-mel frames per second (+-1 for rounding)
            import numpy as np

            with open(folder / "audio" / f"{row['clip_id']}.npy", "rb") as f:
                np.lib.format.read_magic(f)
                n = np.lib.format.read_array_header_1_0(f)[0][0]
            want = round(float(row["seconds"]) * 100)
            if abs(n - want) > 1:
                return f"audio/{row['clip_id']}.npy: {n} log-mel frames, {row['seconds']} s needs {want}"
        return None

    return problem


def check_prepared(folder: Path) -> int:
    """Check a prepared folder; returns the number of damaged or missing clips."""
    meta_path = folder / "dataset.json"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{meta_path}: not a readable dataset.json ({e})") from None
    require_known_format(meta, meta_path, DATASET_FORMAT_VERSION)
    tally = _Tally(meta.get("classes", []))
    report_path = folder / "prepare_report.json"
    report = {}
    if report_path.exists():
        try:
            report = json.loads(report_path.read_text())
        except json.JSONDecodeError:
            tally.problem("incomplete", "-", f"{report_path}: not valid JSON; run the same prepare-data command again")
    index_path = folder / "index.csv"
    if not index_path.exists():
        tally.problem("incomplete", "-", "no index.csv: prepare-data has not finished; run the same prepare-data "
                                         "command again to complete it")
        tally.summary(f"check {folder}: {meta.get('dataset', '?')} (prepared)", None, {})
        return tally.n_problems
    per_clip = _packed_check(folder, meta) if meta.get("store", "npy") == "packed" else _array_check(folder, meta)
    in_index = set()
    with open(index_path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            clip, split = row["clip_id"], row["split"]
            in_index.add(clip)
            if row["status"] != "ok":
                tally.problem("unreadable", clip, row.get("reason") or "failed in prepare-data", split)
                continue
            problem = per_clip(row)
            if problem:
                tally.problem("damaged", clip, problem + "; delete that file and run the same prepare-data command "
                                                         "again to redo it", split)
                continue
            tally.clip(split, [int(x) for x in row["labels"].split(";") if x], row["has_audio"] == "true")
    for entry in report.get("failed", []):
        if entry["clip"] in in_index:
            continue
        if entry.get("stage") == "annotation":
            tally.unannotated += 1
        else:
            tally.problem("missing", entry["clip"], entry["reason"], entry.get("split", ""))
    expected = published(meta.get("dataset", ""), meta.get("ucf_split", 1))
    tally.summary(f"check {folder}: {meta.get('dataset', '?')} prepared at {meta.get('fps')} fps, short side "
                  f"{meta.get('short_side')}", report.get("rows"), expected)
    return tally.n_problems


# ------------------------------------------------------------------------------------ media folder

def check_media(root: Path, cfg: dict) -> int:
    """Check a dataset's media files against its annotations; returns the number of damaged or
    missing clips."""
    from .manifests import Missing, ManifestError, normalise_name, open_manifest
    from .prepare import annotation_files, probe_one
    from .workers import ClipPool
    from .storage import ScratchDB
    from .ui import progress

    ds = cfg["dataset"]
    name = normalise_name(ds["name"])
    if name == "demo":
        raise UserError(f"--check {root}: not a prepared folder (no dataset.json); to check a media folder give "
                        f"--dataset and --annotations (or --recipe)")
    if not root.is_dir():
        raise UserError(f"--check {root}: no such folder")
    annotations = annotation_files(name, ds["annotations"])
    with ScratchDB() as db:
        try:
            stream = open_manifest(name, root, annotations, db=db, allow_outside_root=ds["allow_outside_root"],
                                   label_field=ds["label_field"], classes=ds["classes"] or None,
                                   ucf_split=ds["ucf_split"])
        except ManifestError as e:
            raise UserError(str(e)) from None
        tally = _Tally(stream.classes)
        total = sum((stream.rows or {}).values()) or None

        def jobs():
            for entry in stream:
                if isinstance(entry, Missing):
                    if entry.kind == "annotation":
                        tally.unannotated += 1
                    else:
                        tally.problem("missing", entry.clip, entry.reason, entry.split)
                    bar.advance(task)
                    continue
                yield entry.job()

        pool = ClipPool(cfg["prepare"]["workers"], probe_one, {}, 1, cfg["prepare"]["decode_timeout_s"])
        try:
            with progress() as bar:
                task = bar.add_task(f"check {name} files", total=total, info="")
                for rec in pool.run(jobs()):
                    if rec["status"] == "ok":
                        tally.clip(rec["split"], rec["labels"], rec.get("has_audio", True))
                    else:
                        tally.problem("unreadable", rec["clip"], rec["reason"], rec["split"])
                    bar.advance(task)
        finally:
            pool.close()
    tally.summary(f"check {root}: {name} media files against {len(annotations)} annotation file(s)", stream.rows,
                  published(name, ds["ucf_split"]))
    return tally.n_problems


def check(target: Path, cfg: dict) -> int:
    """`prepare-data --check TARGET`: a prepared folder or a media folder (see the module docstring)."""
    target = Path(target)
    if (target / "dataset.json").exists():
        return check_prepared(target)
    return check_media(target, cfg)
