"""Reading a prepared dataset for training and evaluation.

- Splits: the prepared "train" split is divided by the core into T (trained on) and the held-out
  V (`train.holdout_fraction`, stratified, seeded, whole source groups: `split_holdout`): G-Blend's
  OGR needs V; T' is a fixed subset of T measured in eval mode. The prepared "val" split is the
  evaluation set.
- Training clips: random temporal position, random crop (and optional flip); evaluation clips:
  `clip.eval_clips` uniformly spaced positions per video, centre crop.
- A batch is assembled in one `__getitems__` call (uint8 frames, float16 log-mel), so a
  DataLoader with workers moves whole batches, and the model normalises on the device.
"""

from __future__ import annotations

import csv
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import DATASET_FORMAT_VERSION
from .errors import UserError
from .media import LOG_EPS
from .storage import require_known_format
from .integrity import parse_checksums
from .store import Reader as PackedReader, StoreError

SILENCE = float(np.log(LOG_EPS))


@dataclass
class Clip:
    clip_id: str
    split: str
    labels: tuple[int, ...]
    frames: int
    has_audio: bool
    group: str = ""  # source group (index.csv "group"; the clip id in folders prepared before it)


class PreparedDataset:
    """The index and arrays of a folder written by `prepare-data`."""

    def __init__(self, root: Path, cache_bytes: int = 4 << 30):
        self.root = Path(root)
        meta_path = self.root / "dataset.json"
        if not meta_path.exists():
            raise UserError(f"{self.root}: not a prepared dataset (no dataset.json); run `gblend prepare-data` first")
        fix = "run the same `gblend prepare-data` command again to rewrite it"
        try:
            self.meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise UserError(f"{meta_path}: not valid JSON (damaged); {fix}") from None
        if not isinstance(self.meta, dict):
            raise UserError(f"{meta_path}: not a dataset.json (damaged); {fix}")
        require_known_format(self.meta, meta_path, DATASET_FORMAT_VERSION)
        self.store = self.meta.get("store", "npy")
        if self.store not in ("npy", "packed"):
            raise UserError(f"{meta_path}: unknown store {self.store!r}; upgrade gblend")
        self._packed = PackedReader(self.root) if self.store == "packed" else None
        try:
            self.classes: list[str] = list(self.meta["classes"])
            self.multilabel: bool = bool(self.meta["multilabel"])
            self.fps: float = float(self.meta["fps"])
            self.modalities: list[str] = [str(m) for m in self.meta["modalities"]]
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"{meta_path}: damaged ({type(e).__name__}: {e}); {fix}") from None
        self.clips: list[Clip] = []
        self.checksums: list[dict[str, str]] = []
        index = self.root / "index.csv"
        try:
            with open(index, newline="", encoding="utf-8") as f:
                for n, row in enumerate(csv.DictReader(f), 2):
                    try:
                        if row["status"] != "ok":
                            continue
                        labels = tuple(int(x) for x in row["labels"].split(";") if x)
                        clip = Clip(row["clip_id"], row["split"], labels, int(row["frames"]), row["has_audio"] == "true",
                                    # a folder prepared before the "group" column: each clip its own group,
                                    # so its held-out split is the per-clip one it always had
                                    row.get("group") or row["clip_id"])
                        sums = parse_checksums(row.get("checksums") or "")
                        if not clip.clip_id or any(not 0 <= k < len(self.classes) for k in labels) or clip.frames < 0:
                            raise ValueError("clip id, label or frame count out of range")
                    except (KeyError, TypeError, ValueError, AttributeError) as e:
                        raise UserError(f"{index}: line {n} is damaged ({type(e).__name__}: {' '.join(str(e).split())[:80]});"
                                        f" {fix}") from None
                    self.clips.append(clip)
                    self.checksums.append(sums)
        except FileNotFoundError:
            raise UserError(f"{index}: missing; {fix}") from None
        except (UnicodeDecodeError, csv.Error) as e:
            raise UserError(f"{index}: damaged ({type(e).__name__}); {fix}") from None
        self._verified: set[int] = set()
        self._cache: dict[tuple[str, str], np.ndarray] = {}
        self._headers: dict[tuple[str, str], tuple] = {}
        self._cache_ok = self._estimate_bytes() <= cache_bytes

    def _estimate_bytes(self) -> int:
        """Bytes the dataset takes in RAM (decoded, for the packed store)."""
        total = 0
        if self._packed is not None:
            sizes = []
            for c in self.clips[:20]:
                try:
                    h = self._packed.head(c.clip_id)
                except (OSError, StoreError):
                    continue
                pixels = h.frames * h.height * h.width
                sizes.append(3 * pixels * ("rgb" in self.modalities) + 2 * pixels * (h.flow is not None)
                             + h.mel_rows * 80)
            return int(np.mean(sizes)) * len(self.clips) if sizes else 0
        for m in self.modalities:
            sample = [self.root / m / f"{c.clip_id}.npy" for c in self.clips[:20]]
            sizes = [p.stat().st_size for p in sample if p.exists()]
            total += int(np.mean(sizes)) * len(self.clips) if sizes else 0
        return total

    def split_indices(self, split: str) -> list[int]:
        return [i for i, c in enumerate(self.clips) if c.split == split]

    def verify(self, i: int) -> None:
        """Clip i's files are what prepare-data wrote (index.csv's "checksums"): their sizes, and
        their CRC-32 when the dataset is small enough to be read whole into RAM anyway. Checked
        once per clip; a damaged file is refused, never trained on."""
        if i in self._verified:
            return
        from .integrity import digest_problem

        clip = self.clips[i].clip_id
        for name, digest in self.checksums[i].items():
            path = (self._packed.path(clip) if name == "clip" else self.root / name / f"{clip}.npy")
            problem = digest_problem(path, digest, full=self._cache_ok)
            if problem:
                raise UserError(f"{path}: {problem}; delete it and run the same `gblend prepare-data` command again "
                                f"to prepare that clip again (`gblend prepare-data --check {self.root}` lists all)")
        self._verified.add(i)

    def array(self, modality: str, i: int) -> np.ndarray:
        """The whole clip's array (cached in RAM when the dataset is small, else memory-mapped)."""
        key = (modality, self.clips[i].clip_id)
        arr = self._cache.get(key)
        if arr is None:
            self.verify(i)
            if self._packed is not None:
                arr = self._read_packed(modality, i, 0, self.length(modality, i))
            else:
                path = self.root / modality / f"{key[1]}.npy"
                try:
                    arr = np.load(path, mmap_mode=None if self._cache_ok else "r", allow_pickle=False)
                except (OSError, ValueError, EOFError) as e:
                    raise UserError(f"{path}: not a whole array ({type(e).__name__}); delete it and run the same "
                                    f"`gblend prepare-data` command again to prepare that clip again") from None
            if self._cache_ok:
                self._cache[key] = arr
        return arr

    def _header(self, modality: str, i: int) -> tuple[Path, tuple, np.dtype, int]:
        """(path, shape, dtype, data offset) of a clip's .npy, read once and remembered."""
        key = (modality, self.clips[i].clip_id)
        h = self._headers.get(key)
        if h is None:
            self.verify(i)
            path = self.root / modality / f"{key[1]}.npy"
            try:
                with open(path, "rb") as f:
                    version = np.lib.format.read_magic(f)
                    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                    shape, fortran, dtype = read(f)
                    h = (path, shape, dtype, f.tell())
            except (OSError, ValueError, EOFError) as e:
                raise UserError(f"{path}: not a whole array ({type(e).__name__}); delete it and run the same "
                                f"`gblend prepare-data` command again to prepare that clip again") from None
            if fortran:
                raise UserError(f"{path}: Fortran-ordered array; re-run prepare-data")
            self._headers[key] = h
        return h

    def length(self, modality: str, i: int) -> int:
        key = (modality, self.clips[i].clip_id)
        if key in self._cache:
            return len(self._cache[key])
        if self._packed is not None:
            self.verify(i)
            try:
                return self._packed.length(key[1], modality)
            except (OSError, StoreError) as e:
                raise UserError(f"{self._packed.path(key[1])}: {e}; `gblend prepare-data --check {self.root}` lists "
                                f"every damaged clip") from None
        return self._header(modality, i)[1][0]

    def _read_packed(self, modality: str, i: int, lo: int, hi: int) -> np.ndarray:
        self.verify(i)
        try:
            return self._packed.rows(self.clips[i].clip_id, modality, lo, hi)
        except StoreError as e:
            raise UserError(f"{self._packed.path(self.clips[i].clip_id)}: {e}; `gblend prepare-data --check "
                            f"{self.root}` lists every damaged clip") from None

    def rows(self, modality: str, i: int, lo: int, hi: int) -> np.ndarray:
        """array[lo:hi] of a clip. From disk this is one `pread` of the contiguous rows (3.3x faster
        than page-faulting through a memory map: docs/PERFORMANCE.md); from the packed store, a
        pread of the window's JPEG frames and their decoding."""
        if self._cache_ok:
            return self.array(modality, i)[lo:hi]
        if self._packed is not None:
            return self._read_packed(modality, i, lo, hi)
        path, shape, dtype, offset = self._header(modality, i)
        lo, hi = max(0, lo), min(shape[0], hi)
        row = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        fd = os.open(path, os.O_RDONLY)
        try:
            buf = os.pread(fd, row * (hi - lo), offset + row * lo)
        finally:
            os.close(fd)
        return np.frombuffer(buf, dtype=dtype).reshape((hi - lo,) + tuple(shape[1:]))

    def preload(self, indices, modalities) -> None:
        """Fill the RAM cache before DataLoader workers fork (they share it copy-on-write)."""
        if self._cache_ok:
            for i in indices:
                for m in modalities:
                    self.array(m, i)

    def check_modalities(self, modalities) -> None:
        for m in modalities:
            if m not in self.modalities:
                raise UserError(f"{self.root}: modality '{m}' was not prepared (has: {', '.join(self.modalities)}); "
                                f"prepare with --flow dis|tvl1 for flow")


def split_holdout(ds: PreparedDataset, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Stratified held-out split V of the training split (Sec. 3.3: V approximates the target
    distribution), made of whole source groups: clips cut from one source video share a group
    (`Clip.group`, index.csv "group": UCF-101 class + gXX, EPIC-Kitchens the video_id, Kinetics,
    AudioSet and VGGSound the YouTube id, AVE the video, CREMA-D/csv/folder the media file unless
    a csv's `group` column says otherwise). A group is wholly in T or wholly in V, so V holds no
    near-duplicate of a training clip (which would make L^V underestimate overfitting, shrink
    ΔO and distort G-Blend's weights).

    A group's class is its clips' first label (multi-label data: first labels), the most common
    one if they differ (a tie: the one met first). Per class, n clips in its groups: the target is
    round(fraction * n) clips (at least 1 when fraction > 0 and n >= 2); the groups are shuffled
    and taken in that order while the target is not reached, a group only when taking it leaves
    V's count nearer the target than leaving it out (a group too large is passed over); when no
    group was taken and the class has two or more, its smallest group goes to V (the first of
    the shuffled order among equals). A class with a single group stays in T unless fraction is
    above about one half (as a class's only clip went to V before groups).

    When every group is one clip (the demo; folders prepared before groups existed), this is
    the per-clip split of earlier versions, draw for draw: per class round(fraction * n) clips,
    the first of the same permutation."""
    train = ds.split_indices("train")
    if fraction <= 0:
        return train, []
    rng = np.random.default_rng([seed, 8])
    groups: dict[str, list[int]] = {}  # in the order of their first clip
    for i in train:
        groups.setdefault(ds.clips[i].group, []).append(i)
    by_class: dict[int, list[list[int]]] = {}
    for members in groups.values():
        firsts = Counter(ds.clips[i].labels[0] if ds.clips[i].labels else -1 for i in members)
        by_class.setdefault(max(firsts, key=firsts.__getitem__), []).append(members)  # a tie: the first met
    t, v = [], []
    for _, class_groups in sorted(by_class.items()):
        order = rng.permutation(len(class_groups))  # the draws of permuting the clips when groups are clips
        n = sum(len(g) for g in class_groups)
        target = int(round(fraction * n))
        if target == 0 and n >= 2:
            target = 1
        taken, count = [], 0
        for j in order:
            if count >= target:
                break
            if count + len(class_groups[j]) - target < target - count:
                taken.append(j)
                count += len(class_groups[j])
        if not taken and len(class_groups) >= 2:
            taken = [min(order, key=lambda j: len(class_groups[j]))]
        chosen = {int(j) for j in taken}
        for j, members in enumerate(class_groups):
            (v if j in chosen else t).extend(members)
    return sorted(t), sorted(v)


def subset(indices: list[int], size: int, seed: int) -> list[int]:
    """A fixed random subset (T' of T)."""
    if size <= 0 or size >= len(indices):
        return list(indices)
    rng = np.random.default_rng([seed, 7])
    return sorted(rng.choice(indices, size=size, replace=False).tolist())


class ClipDataset(torch.utils.data.Dataset):
    """Items are (clip index, start frame or -1 for random); `__getitems__` returns a batch dict:
    {modality: tensor, "label": tensor, "video": tensor (row in `videos`)}."""

    def __init__(self, ds: PreparedDataset, items: list[tuple[int, int]], modalities: list[str], clip_cfg: dict,
                 train: bool, seed: int = 0):
        self.ds, self.items, self.modalities, self.train, self.seed = ds, items, list(modalities), train, seed
        self.frames, self.crop, self.flip = clip_cfg["frames"], clip_cfg["crop"], clip_cfg["flip"] and train
        self.audio_frames = clip_cfg["audio_frames"]
        self.epoch = 0
        self.videos = sorted({i for i, _ in items})
        self._video_row = {v: r for r, v in enumerate(self.videos)}

    def __len__(self) -> int:
        return len(self.items)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, k: int):  # pragma: no cover - batches go through __getitems__
        return self.__getitems__([k])

    def __getitems__(self, ks: list[int]) -> dict:
        # augmentation randomness depends only on (seed, epoch, item), so a resumed run and any
        # number of loader workers draw the same clips. The crop offsets come from a stream of their
        # own: a run that loads no frames (audio alone) then draws the same starts and flips as one
        # that does, so a uni-modal audio run is the audio estimator of a fused run (blend.terms_from_runs).
        key = [self.seed, self.epoch, int(ks[0]), len(ks)]
        rng = np.random.default_rng(key) if self.train else None
        crop_rng = np.random.default_rng(key + [1]) if self.train else None
        cols: dict[str, list[np.ndarray]] = {m: [] for m in self.modalities}
        labels, videos = [], []
        for k in ks:
            i, start = self.items[k]
            clip = self.ds.clips[i]
            n = clip.frames
            if start < 0:
                start = int(rng.integers(0, max(1, n - self.frames + 1)))
            t_idx = np.minimum(np.arange(start, start + self.frames), n - 1)
            crop_box = None
            flip = bool(self.flip and rng.random() < 0.5)
            for m in self.modalities:
                if m == "audio":
                    cols[m].append(self._audio_window(i, (start + self.frames / 2) / self.ds.fps))
                    continue
                arr = self.ds.rows(m, i, int(t_idx[0]), int(t_idx[-1]) + 1)
                h, w = arr.shape[1:3]
                if crop_box is None:
                    c = min(self.crop, h, w)
                    if self.train:
                        y0, x0 = int(crop_rng.integers(0, h - c + 1)), int(crop_rng.integers(0, w - c + 1))
                    else:
                        y0, x0 = (h - c) // 2, (w - c) // 2
                    crop_box = (y0, x0, c)
                y0, x0, c = crop_box
                x = arr[t_idx - t_idx[0], y0:y0 + c, x0:x0 + c]
                if flip:
                    x = x[:, :, ::-1]
                    if m == "flow":  # mirrored motion: negate x displacement (quantised: 255 - q)
                        x = x.copy()
                        x[..., 0] = 255 - x[..., 0]
                cols[m].append(np.ascontiguousarray(x))
            labels.append(clip.labels)
            videos.append(self._video_row[i])
        batch = {m: torch.from_numpy(np.stack(v)) for m, v in cols.items()}
        if self.ds.multilabel:
            y = torch.zeros(len(ks), len(self.ds.classes))
            for r, ls in enumerate(labels):
                y[r, list(ls)] = 1.0
        else:
            y = torch.tensor([ls[0] for ls in labels], dtype=torch.long)
        batch["label"] = y
        batch["video"] = torch.tensor(videos, dtype=torch.long)
        return batch

    def _audio_window(self, i: int, centre_s: float) -> np.ndarray:
        """`audio_frames` log-mel frames centred on the visual clip's centre; the part of the window
        before the start or after the end of the audio is silence (the window is never shifted:
        the audio stays aligned with the frames it is classified with)."""
        a = self.audio_frames
        n = self.ds.length("audio", i)
        lo = int(round(centre_s * 100 - a / 2))
        first, stop = min(max(0, lo), n), max(0, min(n, lo + a))
        rows = self.ds.rows("audio", i, first, max(first, stop))
        if len(rows) == a:
            return rows
        out = np.full((a, rows.shape[1]), SILENCE, dtype=rows.dtype)
        out[first - lo:first - lo + len(rows)] = rows
        return out


def eval_items(ds: PreparedDataset, indices: list[int], n_clips: int, frames: int) -> list[tuple[int, int]]:
    """`n_clips` uniformly spaced clip starts per video (1 = the centre clip). A video with fewer
    start positions than `n_clips` repeats some (rounding): the demo's 16-frame videos have 9
    positions for 10 clips and count start 4 twice in the video average. Kept: de-duplicating
    would change every published demo number for a weight of 1/10 on one clip."""
    items = []
    for i in indices:
        last = max(0, ds.clips[i].frames - frames)
        if n_clips == 1:
            starts = [last // 2]
        else:
            starts = [int(round(j * last / (n_clips - 1))) for j in range(n_clips)]
        items += [(i, s) for s in starts]
    return items


def _identity(batch):
    return batch


def make_loader(dataset: ClipDataset, batch_size: int, *, shuffle: bool, seed: int, workers: int,
                rank: int = 0, world: int = 1, drop_last: bool = False, pin_memory: bool = False):
    """DataLoader over whole batches; distributed runs shard with DistributedSampler."""
    if world > 1:
        sampler = torch.utils.data.DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=shuffle,
                                                      seed=seed, drop_last=drop_last)
    elif shuffle:
        sampler = _EpochRandomSampler(dataset, seed)
    else:
        sampler = None
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, shuffle=False, num_workers=workers, collate_fn=_identity,
        pin_memory=pin_memory, drop_last=drop_last, persistent_workers=False,
        generator=torch.Generator().manual_seed(seed),  # never draws from (and shifts) the global RNG
        worker_init_fn=_worker_init if workers else None)


def _worker_init(_):
    torch.set_num_threads(1)


class _EpochRandomSampler(torch.utils.data.Sampler):
    """A permutation that depends only on (seed, epoch): resumable and reproducible."""

    def __init__(self, dataset: ClipDataset, seed: int):
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        return iter(torch.randperm(len(self.dataset), generator=g).tolist())

    def __len__(self) -> int:
        return len(self.dataset)


@dataclass
class RunData:
    """The loaders of one run: T (training, shuffled per (seed, epoch)), the per-epoch evaluation
    splits (T' in eval mode, the held-out V and the evaluation split, one centre clip per video)
    and the final evaluation (`eval_clips` clips per video). In a distributed run each process
    trains on its shard of T and evaluates whole videos of its own."""

    ds: PreparedDataset
    train_loader: torch.utils.data.DataLoader
    eval_loaders: dict[str, torch.utils.data.DataLoader] = field(default_factory=dict)  # train | holdout | val
    final_loader: torch.utils.data.DataLoader | None = None
    split_sizes: dict[str, int] = field(default_factory=dict)

    @property
    def steps_per_epoch(self) -> int:
        return len(self.train_loader)


def build_run_data(ds: PreparedDataset, modalities: list[str], cfg: dict, *, rank: int = 0, world: int = 1,
                   pin_memory: bool = False) -> RunData:
    tcfg, clip = cfg["train"], cfg["clip"]
    seed, batch = tcfg["seed"], tcfg["batch_size"]
    T, V = split_holdout(ds, tcfg["holdout_fraction"], seed)
    val = ds.split_indices("val") or ds.split_indices("test")
    if not T:
        raise UserError(f"{ds.root}: no training clips (split 'train' is empty)")
    if not val:
        raise UserError(f"{ds.root}: no evaluation clips (split 'val' is empty)")
    ds.preload(T + V + val, modalities)
    train_set = ClipDataset(ds, [(i, -1) for i in T], modalities, clip, train=True, seed=seed)
    train_loader = make_loader(train_set, batch, shuffle=True, seed=seed, drop_last=True, workers=tcfg["workers"],
                               rank=rank, world=world, pin_memory=pin_memory)
    if len(train_loader) == 0:
        raise UserError(f"train.batch_size = {batch} is larger than the {len(T)} training clips per process")
    Tp = subset(T, tcfg["train_eval_size"], seed)

    def eval_loader(indices: list[int], n_clips: int):
        mine = [i for r, i in enumerate(indices) if r % world == rank]  # whole videos per process
        dataset = ClipDataset(ds, eval_items(ds, mine, n_clips, clip["frames"]), modalities, clip, train=False)
        return make_loader(dataset, batch * 2, shuffle=False, seed=0, workers=tcfg["workers"], pin_memory=pin_memory)

    loaders = {name: eval_loader(idx, 1) for name, idx in (("train", Tp), ("holdout", V), ("val", val)) if idx}
    return RunData(ds, train_loader, loaders, eval_loader(val, clip["eval_clips"]),
                   {"T": len(T), "V": len(V), "T_prime": len(Tp), "val": len(val)})
