"""What every table is built from: per-sample losses, clip and video top-k, mAP and mAUC.

- Loss: cross-entropy per clip (multi-label data: binary cross-entropy summed over classes), the
  mean over clips for L^T and L^V (summing over batches would make O depend on set sizes), with
  its standard error (`loss_se`, from the per-clip losses; G-Blend's noise guard on ΔO uses it)
  and the number of clips `n`.
- Clip top-1: the argmax of one clip's logits is (one of) its label(s).
- Video top-1/top-5: softmax (multi-label: sigmoid) averaged over a video's clips, then top-k
  (multi-label: a hit when any label is among the top k).
- mAP / mAUC (multi-label, AudioSet): per-class AP / ROC AUC of the video scores, averaged over the
  classes where they are defined.
`ClipAccumulator` gathers these over batches on the device and merges them across processes.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from . import distributed as dist_utils


def head_loss(logits: torch.Tensor, y: torch.Tensor, multilabel: bool, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of one head (float32), mean over clips or per clip (`reduction='none'`)."""
    logits = logits.float()
    if multilabel:
        loss = F.binary_cross_entropy_with_logits(logits, y, reduction="none").sum(1)
        return loss.mean() if reduction == "mean" else loss
    return F.cross_entropy(logits, y, reduction=reduction)


def average_precision(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per-class AP (AudioSet mAP): the step-wise AP over distinct score thresholds, so items with
    tied scores count together (the precision of a tie group is taken after the whole group, as
    sklearn's average_precision_score does), whatever their order; classes without positives give NaN."""
    out = np.full(scores.shape[1], np.nan)
    for c in range(scores.shape[1]):
        order = np.argsort(-scores[:, c], kind="stable")
        s, t = scores[order, c], targets[order, c] > 0
        npos = t.sum()
        if not npos:
            continue
        last = np.r_[s[1:] != s[:-1], True]  # the last item of each group of tied scores
        tp = np.cumsum(t)[last]
        seen = np.flatnonzero(last) + 1
        out[c] = float((np.diff(tp, prepend=0) / npos * tp / seen).sum())
    return out


def auc(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per-class ROC AUC via ranks (ties averaged); NaN without both classes."""
    import pandas as pd

    out = np.full(scores.shape[1], np.nan)
    for c in range(scores.shape[1]):
        pos = targets[:, c] > 0
        n1, n0 = pos.sum(), (~pos).sum()
        if n1 and n0:
            r = pd.Series(scores[:, c]).rank(method="average").to_numpy()
            out[c] = (r[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0)
    return out


class ClipAccumulator:
    """Per-head sums over an evaluation pass: loss, correct clips, and each video's summed clip
    probabilities. `result()` merges them across processes (each process evaluates whole videos)."""

    def __init__(self, heads: list[str], n_videos: int, n_classes: int, multilabel: bool, device: torch.device):
        self.heads, self.nv, self.nc, self.multilabel, self.device = heads, n_videos, n_classes, multilabel, device
        self.acc = {h: {"loss": torch.zeros((), device=device), "correct": torch.zeros((), device=device),
                        "loss_sq": torch.zeros((), dtype=torch.float64, device=device),
                        "probs": torch.zeros(n_videos, n_classes, device=device)} for h in heads}
        self.nclips = torch.zeros(n_videos, device=device)
        self.labels: dict[int, object] = {}

    def add(self, out: dict[str, torch.Tensor], y: torch.Tensor, video: torch.Tensor, labels_cpu=None,
            videos_cpu: list[int] | None = None) -> None:
        """One batch: `out` the heads' logits, `y` labels and `video` row indices on the device; with
        `labels_cpu`/`videos_cpu`, each video's label is remembered for video-level metrics."""
        for h in self.heads:
            logits = out[h].float()
            a = self.acc[h]
            per_clip = head_loss(logits, y, self.multilabel, reduction="none")
            a["loss"] += per_clip.sum()
            a["loss_sq"] += per_clip.double().square().sum()
            if self.multilabel:
                p = torch.sigmoid(logits)
                a["correct"] += (y.gather(1, logits.argmax(1, keepdim=True)) > 0).sum()
            else:
                p = logits.softmax(1)
                a["correct"] += (logits.argmax(1) == y).sum()
            a["probs"].index_add_(0, video, p)
        self.nclips.index_add_(0, video, torch.ones_like(video, dtype=torch.float))
        if videos_cpu is not None:
            for vi, yi in zip(videos_cpu, labels_cpu):
                self.labels[vi] = yi

    def result(self, video_level: bool) -> dict:
        """{head: {"loss", "top1"} (+ "video_top1", "video_top5", and "map", "mauc" for multi-label)}."""
        n_total = dist_utils.all_reduce_sum(self.nclips.sum().clone())
        result = {}
        for h in self.heads:
            a = self.acc[h]
            sums = dist_utils.all_reduce_sum(torch.stack([a["loss"], a["correct"]]))
            sq = float(dist_utils.all_reduce_sum(a["loss_sq"].clone()))
            n, mean = float(n_total), float(sums[0] / n_total)
            var = max(0.0, sq / n - mean * mean) * n / max(1.0, n - 1)  # per-clip variance (unbiased)
            r = {"loss": mean, "top1": 100.0 * float(sums[1] / n_total), "loss_se": (var / n) ** 0.5, "n": int(n)}
            if video_level:
                r |= self._video_metrics((a["probs"] / self.nclips.clamp(min=1)[:, None]).cpu())
            result[h] = r
        return result

    def _video_metrics(self, probs: torch.Tensor) -> dict:
        nv, nc = self.nv, self.nc
        r = {}
        top = probs.topk(min(5, nc), 1).indices
        if self.multilabel:
            y_all = torch.stack([self.labels[i] for i in range(nv)]).numpy()
            gathered = dist_utils.all_gather_objects((probs.numpy(), y_all))
            s, t = np.concatenate([g[0] for g in gathered]), np.concatenate([g[1] for g in gathered])
            r["map"] = float(np.nanmean(average_precision(s, t)))
            r["mauc"] = float(np.nanmean(auc(s, t)))
            yv = torch.from_numpy(y_all)
            c1 = (yv.gather(1, top[:, :1]) > 0).any(1).sum()
            c5 = (yv.gather(1, top) > 0).any(1).sum()
        else:
            yv = torch.tensor([int(self.labels[i]) for i in range(nv)])
            c1 = (top[:, 0] == yv).sum()
            c5 = (top == yv[:, None]).any(1).sum()
        counts = dist_utils.all_reduce_sum(torch.tensor([float(c1), float(c5), float(nv)], device=self.device))
        r["video_top1"] = 100.0 * float(counts[0] / counts[2])
        r["video_top5"] = 100.0 * float(counts[1] / counts[2])
        return r


def true_class_confidence(logits: torch.Tensor, y: torch.Tensor, multilabel: bool) -> torch.Tensor:
    """s = Σ_i p_i(y_i): the probability each clip's head gives its label, summed over the batch
    (OGM-GE's and InfoReg's per-modality score); multi-label: the mean sigmoid over a clip's labels."""
    logits = logits.detach().float()
    if multilabel:
        p = torch.sigmoid(logits)
        return ((p * y).sum(1) / y.sum(1).clamp(min=1)).sum()
    return logits.softmax(1).gather(1, y[:, None]).sum()
