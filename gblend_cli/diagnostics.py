"""Diagnostics of a finished multi-modal run, written to final.json's "diagnostics": how much each
modality contributes to the fused prediction, and the run's peak memory.

Contribution (Shapley values). For a subset S of the run's k modalities, v(S) is the fused head's
video top-1 (%) on the evaluation split — the same clips and clip averaging as the reported
video top-1 — when the pooled backbone features of every modality outside S are replaced by a
neutral value: **their mean over T'** (the final model in eval mode; a constant input carries no
information about the clip, and it stays on the data manifold the head was trained on, unlike
zeros). v(M) is the run's reported video top-1 and v(∅) the accuracy of the one constant
prediction the all-mean features give. Each modality's Shapley value over the 2^k − 1 non-empty
subsets (plus the empty baseline) is

    φ_m = Σ_{S ⊆ M∖{m}} |S|! (k − |S| − 1)! / k! · (v(S ∪ {m}) − v(S)),

so Σ_m φ_m = v(M) − v(∅) (efficiency): the points of video top-1 the fused head owes to each
modality. Multi-label data: v is mAP (%). The whole computation rides on the final evaluation
pass (`engine.evaluate(on_features=...)`): the backbones run once, only the fused head runs
2^k − 1 more times per batch.

Peak memory: on CUDA the peak memory allocated by tensors on the device
(`torch.cuda.max_memory_allocated`); on CPU the peak resident set size of the run's process
(`ru_maxrss`, which includes the Python and torch runtime).
"""

from __future__ import annotations

import itertools
import math

import torch

from . import distributed as dist_utils
from .metrics import ClipAccumulator

NEUTRAL = "mean of the modality's pooled features over T' (final model, eval mode)"


def subset_name(subset, order: list[str]) -> str:
    """'audio+rgb' in the run's modality order; 'none' for the empty subset."""
    return "+".join(m for m in order if m in subset) or "none"


def shapley(values: dict[frozenset, float], players: list[str]) -> dict[str, float]:
    """Shapley values φ_m of the game `values` {frozenset(S): v(S)} over every subset of `players`
    (the empty set included)."""
    k = len(players)
    phi = {}
    for m in players:
        others = [p for p in players if p != m]
        total = 0.0
        for r in range(len(others) + 1):
            weight = math.factorial(r) * math.factorial(k - r - 1) / math.factorial(k)
            for s in itertools.combinations(others, r):
                total += weight * (values[frozenset(s) | {m}] - values[frozenset(s)])
        phi[m] = total
    return phi


class FeatureMeans:
    """The mean pooled features per modality over an evaluation pass (all-reduced across processes)."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.n = 0

    def add(self, feats: dict[str, torch.Tensor], batch: dict, y=None, video=None) -> None:
        for m, f in feats.items():
            s = f.detach().float().sum(0)
            self.sums[m] = self.sums[m] + s if m in self.sums else s
        self.n += len(batch["label"])

    def result(self) -> dict[str, torch.Tensor]:
        n = float(dist_utils.all_reduce_sum(torch.tensor(float(self.n), device=next(iter(self.sums.values())).device)))
        return {m: dist_utils.all_reduce_sum(s.clone()) / n for m, s in self.sums.items()}


class SubsetAccuracy:
    """v(S) for every proper subset S of the modalities, accumulated batch by batch beside the final
    evaluation: the fused head (`model.fuse`) on features where the modalities outside S are
    replaced by their T' means."""

    def __init__(self, model, means: dict[str, torch.Tensor], n_videos: int, n_classes: int, multilabel: bool,
                 device: torch.device):
        self.model, self.means, self.order = model, means, list(model.modalities)
        subsets = [frozenset(s) for r in range(len(self.order)) for s in itertools.combinations(self.order, r)]
        self.names = {subset_name(s, self.order): s for s in subsets}
        self.acc = ClipAccumulator(list(self.names), n_videos, n_classes, multilabel, device)
        self.multilabel = multilabel

    def add(self, feats: dict[str, torch.Tensor], batch: dict, y: torch.Tensor, video: torch.Tensor) -> None:
        out = {}
        for name, s in self.names.items():
            f = {m: feats[m] if m in s else self.means[m].to(feats[m].dtype).expand_as(feats[m]) for m in self.order}
            out[name] = self.model.fuse(f)
        self.acc.add(out, y, video, batch["label"], batch["video"].tolist())

    def values(self, full: dict) -> dict[str, float]:
        """{subset name: v(S)}, the full set's from the final evaluation's fused head (`full`)."""
        key = "map" if self.multilabel else "video_top1"
        res = self.acc.result(video_level=True)
        vals = {name: 100.0 * res[name][key] if key == "map" else res[name][key] for name in self.names}
        vals[subset_name(self.order, self.order)] = 100.0 * full[key] if key == "map" else full[key]
        return vals

    def diagnostics(self, full: dict) -> dict:
        vals = self.values(full)
        by_set = {frozenset() if n == "none" else frozenset(n.split("+")): v for n, v in vals.items()}
        phi = shapley(by_set, self.order)
        return {"value": "map" if self.multilabel else "video_top1", "neutral": NEUTRAL,
                "subset_top1": vals, "contribution": phi}


def peak_memory(device: torch.device) -> dict:
    """{"peak_memory_mb", "peak_memory_kind"} of this process (see the module docstring)."""
    if device.type == "cuda":
        return {"peak_memory_mb": round(torch.cuda.max_memory_allocated(device) / 2**20, 1),
                "peak_memory_kind": "cuda_max_allocated"}
    try:
        import resource
        import sys

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        mb = rss / 2**20 if sys.platform == "darwin" else rss / 1024  # bytes on macOS, KiB on Linux
    except (ImportError, OSError):
        return {"peak_memory_mb": None, "peak_memory_kind": None}
    return {"peak_memory_mb": round(mb, 1), "peak_memory_kind": "process_max_rss"}
