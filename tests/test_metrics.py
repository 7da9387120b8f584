"""What every table is built from: `engine.evaluate` (per-clip loss, its mean, standard error and
count, clip top-1, video top-1/top-5 from the softmax averaged over each video's clips; for
multi-label data BCE, sigmoid averaging, mAP and mAUC), checked against references written here
in plain NumPy from the definitions, on known logits fed through a fake model and loader. And the
final evaluation of one trained checkpoint with 1 and with 2 processes (torchrun, gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import gblend_env

# ============================================================================================ references
# (plain NumPy, float64, from the definitions; nothing here calls gblend_cli)


def np_softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def np_sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def np_cross_entropy(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """-log softmax(z)[y] per row."""
    m = z.max(1)
    lse = m + np.log(np.exp(z - m[:, None]).sum(1))
    return lse - z[np.arange(len(y)), y]


def np_bce_sum(z: np.ndarray, t: np.ndarray) -> np.ndarray:
    """sum over classes of -(t log σ(z) + (1 - t) log(1 - σ(z))), per row."""
    p = np_sigmoid(z)
    return -(t * np.log(p) + (1 - t) * np.log1p(-p)).sum(1)


def np_ap(scores: np.ndarray, targets: np.ndarray) -> float:
    """Average precision of one class: the mean, over its positives, of the precision among all
    items scoring at least as high as that positive (so tied items count together, whatever their
    order: the usual step-wise AP over distinct thresholds). NaN without positives."""
    pos = np.flatnonzero(targets > 0)
    if not len(pos):
        return float("nan")
    return float(np.mean([(targets[scores >= scores[i]] > 0).mean() for i in pos]))


def np_auc(scores: np.ndarray, targets: np.ndarray) -> float:
    """ROC AUC of one class: P(score of a positive > score of a negative), ties counting 1/2, over
    every (positive, negative) pair. NaN without both."""
    p, n = scores[targets > 0], scores[targets <= 0]
    if not len(p) or not len(n):
        return float("nan")
    diff = p[:, None] - n[None, :]
    return float(((diff > 0) + 0.5 * (diff == 0)).mean())


def reference(logits: dict[str, np.ndarray], clip_video: np.ndarray, video_labels, multilabel: bool) -> dict:
    """{head: {loss, loss_se, n, top1, video_top1, video_top5 (, map, mauc)}} from the definitions."""
    nv = len(video_labels)
    out = {}
    for h, z in logits.items():
        z = z.astype(np.float64)
        if multilabel:
            t = np.stack([video_labels[v] for v in clip_video]).astype(np.float64)
            per_clip = np_bce_sum(z, t)
            clip_hit = t[np.arange(len(z)), z.argmax(1)] > 0
            probs = np_sigmoid(z)
        else:
            y = np.array([video_labels[v] for v in clip_video])
            per_clip = np_cross_entropy(z, y)
            clip_hit = z.argmax(1) == y
            probs = np_softmax(z)
        vid = np.stack([probs[clip_video == v].mean(0) for v in range(nv)])
        ranked = np.argsort(-vid, axis=1)
        if multilabel:
            hit1 = [video_labels[v][ranked[v, 0]] > 0 for v in range(nv)]
            hit5 = [(video_labels[v][ranked[v, :5]] > 0).any() for v in range(nv)]
        else:
            hit1 = [ranked[v, 0] == video_labels[v] for v in range(nv)]
            hit5 = [video_labels[v] in ranked[v, :5] for v in range(nv)]
        r = {"loss": per_clip.mean(), "loss_se": per_clip.std(ddof=1) / np.sqrt(len(per_clip)), "n": len(per_clip),
             "top1": 100.0 * np.mean(clip_hit), "video_top1": 100.0 * np.mean(hit1),
             "video_top5": 100.0 * np.mean(hit5)}
        if multilabel:
            T = np.stack(video_labels)
            r["ap"] = [np_ap(vid[:, c], T[:, c]) for c in range(T.shape[1])]
            r["auc"] = [np_auc(vid[:, c], T[:, c]) for c in range(T.shape[1])]
            r["map"] = np.nanmean(r["ap"])
            r["mauc"] = np.nanmean(r["auc"])
        out[h] = r
    return out


# ============================================================================================ fakes

class FixedLogits(torch.nn.Module):
    """A model whose heads return fixed logits per clip: input "x" holds each clip's row."""

    def __init__(self, logits: dict[str, np.ndarray]):
        super().__init__()
        self.table = {h: torch.tensor(z, dtype=torch.float32) for h, z in logits.items()}
        self.dummy = torch.nn.Parameter(torch.zeros(()))
        self.modes: list[bool] = []

    def forward(self, inputs):
        self.modes.append(self.training)
        rows = inputs["x"].long()
        return {h: z[rows] for h, z in self.table.items()}


class FakeLoader:
    """Dict batches as ClipDataset yields them; `.dataset.videos` lists the videos."""

    def __init__(self, order: list[int], clip_video: np.ndarray, video_labels, batch: int, multilabel: bool):
        self.dataset = type("D", (), {"videos": list(range(len(video_labels)))})()
        self.batches = []
        for s in range(0, len(order), batch):
            rows = order[s:s + batch]
            if multilabel:
                label = torch.tensor(np.stack([video_labels[clip_video[r]] for r in rows]), dtype=torch.float32)
            else:
                label = torch.tensor([video_labels[clip_video[r]] for r in rows], dtype=torch.long)
            self.batches.append({"x": torch.tensor(rows), "label": label,
                                 "video": torch.tensor([int(clip_video[r]) for r in rows])})

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)


CLIPS_PER_VIDEO = [3, 3, 1, 3, 2, 3, 3, 3, 2]  # uneven: the video mean must divide by each video's own count
N_CLASSES = 7


def _clips():
    return np.repeat(np.arange(len(CLIPS_PER_VIDEO)), CLIPS_PER_VIDEO)


def _evaluate(logits, clip_video, video_labels, multilabel, *, video_level=True, order=None, batch=4):
    from gblend_cli.engine import Precision, evaluate

    model = FixedLogits(logits)
    model.train()
    order = list(range(len(clip_video))) if order is None else order
    loader = FakeLoader(order, clip_video, video_labels, batch, multilabel)
    res = evaluate(model, loader, list(logits), precision=Precision(torch.device("cpu")), modalities=["x"],
                   num_classes=N_CLASSES, multilabel=multilabel, video_level=video_level)
    return res, model


def _assert_matches(res: dict, ref: dict, video_level: bool = True):
    for h, r in ref.items():
        got = res[h]
        assert got["n"] == r["n"], h
        assert got["loss"] == pytest.approx(r["loss"], rel=1e-6), h
        assert got["loss_se"] == pytest.approx(r["loss_se"], rel=1e-4), h
        # accuracies are float32 ratios: 1e-6 tells apart any two counts of these few clips
        assert got["top1"] == pytest.approx(r["top1"], rel=1e-6), h
        if video_level:
            assert got["video_top1"] == pytest.approx(r["video_top1"], rel=1e-6), h
            assert got["video_top5"] == pytest.approx(r["video_top5"], rel=1e-6), h
            if "map" in r:
                assert got["map"] == pytest.approx(r["map"], rel=1e-9), h
                assert got["mauc"] == pytest.approx(r["mauc"], rel=1e-9), h
        else:
            assert not {"video_top1", "video_top5", "map", "mauc"} & set(got), h


# ============================================================================================ single-label

def _single_label_case(seed: int = 0):
    rng = np.random.default_rng(seed)
    clip_video = _clips()
    labels = [int(x) for x in rng.integers(0, N_CLASSES, len(CLIPS_PER_VIDEO))]
    logits = {}
    for h, scale in (("audio", 1.0), ("rgb", 2.5), ("fused", 4.0)):
        z = rng.normal(0, scale, (len(clip_video), N_CLASSES))
        # some clips right, some wrong: make half the videos' true class clearly the largest
        for v in range(0, len(labels), 2):
            z[clip_video == v, labels[v]] += 2 * scale
        # video 1: its class the least likely in every clip -> a top-5 miss (7 classes)
        z[clip_video == 1, labels[1]] = z[clip_video == 1].min() - 5
        logits[h] = z
    return logits, clip_video, labels


def test_single_label_metrics_equal_the_numpy_definitions():
    """Per head: the mean per-clip cross-entropy, its standard error (per-clip std / sqrt n), the
    clip count, clip top-1, and video top-1/top-5 of the softmax averaged over each video's clips
    (videos with 1, 2 and 3 clips; clips of one video spread over several batches)."""
    logits, clip_video, labels = _single_label_case()
    ref = reference(logits, clip_video, labels, multilabel=False)
    assert 0 < ref["fused"]["video_top1"] < 100 and ref["fused"]["video_top5"] < 100  # the case is not trivial
    assert ref["audio"]["top1"] != ref["fused"]["top1"]
    res, model = _evaluate(logits, clip_video, labels, multilabel=False)
    assert set(res) == set(logits)
    _assert_matches(res, ref)
    assert model.modes and not any(model.modes), "evaluation must run in eval mode"
    assert model.training, "the model's train mode is restored afterwards"


def test_video_metrics_do_not_depend_on_clip_order_or_batching():
    """The video mean is a mean per video, not per batch: shuffled clips and other batch sizes
    give the same numbers."""
    logits, clip_video, labels = _single_label_case(seed=1)
    ref = reference(logits, clip_video, labels, multilabel=False)
    order = list(np.random.default_rng(5).permutation(len(clip_video)))
    for batch in (1, 5, len(clip_video)):
        res, _ = _evaluate(logits, clip_video, labels, multilabel=False, order=order, batch=batch)
        _assert_matches(res, ref)


def test_video_average_is_of_probabilities_not_logits():
    """One video, three clips: averaging logits would pick class 0, averaging the softmax picks 1."""
    z = np.array([[40.0, 0.0], [0.0, 2.0], [0.0, 2.0]])
    logits = {"fused": np.concatenate([z, np.full((3, N_CLASSES - 2), -30.0)], 1)}
    assert np_softmax(logits["fused"]).mean(0).argmax() == 1 and logits["fused"].mean(0).argmax() == 0
    res, _ = _evaluate(logits, np.array([0, 0, 0]), [1], multilabel=False)
    assert res["fused"]["video_top1"] == 100.0
    assert res["fused"]["top1"] == pytest.approx(200 / 3, rel=1e-6)


def test_clip_level_evaluation_has_no_video_metrics():
    logits, clip_video, labels = _single_label_case(seed=2)
    res, _ = _evaluate(logits, clip_video, labels, multilabel=False, video_level=False)
    _assert_matches(res, reference(logits, clip_video, labels, multilabel=False), video_level=False)


# ============================================================================================ multi-label

def _multi_label_case(seed: int = 3):
    """Multi-hot video labels with: a class without positives (AP and AUC undefined), a class where
    every video is positive (AUC undefined), and tied video scores between a positive and a negative
    video (the positive first, so an AP that breaks ties by position would come out higher)."""
    rng = np.random.default_rng(seed)
    clip_video = _clips()
    nv = len(CLIPS_PER_VIDEO)
    T = (rng.random((nv, N_CLASSES)) < 0.35).astype(np.float32)
    T[:, 5] = 0  # no positives
    T[:, 6] = 1  # every video positive
    T[0, 2], T[3, 2] = 1, 0  # tie: video 0 (positive) and video 3 (negative), 3 clips each
    T[4, 2], T[8, 2] = 0, 1  # tie: video 4 (negative) and video 8 (positive), 2 clips each
    labels = [T[v] for v in range(nv)]
    logits = {}
    for h, scale in (("audio", 1.5), ("fused", 3.0)):
        z = rng.normal(0, scale, (len(clip_video), N_CLASSES))
        z[clip_video == 3, 2] = z[clip_video == 0, 2]  # identical clip logits -> identical video scores
        z[clip_video == 8, 2] = z[clip_video == 4, 2]
        logits[h] = z
    return logits, clip_video, labels


def test_multilabel_metrics_equal_the_numpy_definitions():
    """BCE summed over classes per clip (its mean, SE and count), clip top-1 (the argmax is one of
    the labels), video top-1/top-5 (any label among the top k of the averaged sigmoids), and mAP /
    mAUC: the mean over the classes where AP / AUC is defined (tied scores counted together)."""
    logits, clip_video, labels = _multi_label_case()
    ref = reference(logits, clip_video, labels, multilabel=True)
    for h in ref:  # the case exercises what it claims
        assert np.isnan(ref[h]["ap"][5]) and np.isnan(ref[h]["auc"][5]) and np.isnan(ref[h]["auc"][6])
        assert ref[h]["ap"][6] == 1.0
        assert 0 < ref[h]["top1"] < 100
    res, _ = _evaluate(logits, clip_video, labels, multilabel=True)
    _assert_matches(res, ref)


def test_average_precision_and_auc_per_class_with_ties_and_missing_classes():
    """metrics.average_precision / auc per class against the definitions, on scores with ties
    (also ties between a positive and a negative placed in either order) and classes without
    positives or without negatives (NaN)."""
    from gblend_cli.metrics import auc, average_precision

    rng = np.random.default_rng(11)
    n, c = 40, 6
    scores = rng.integers(0, 6, (n, c)).astype(np.float64) / 5  # many ties
    targets = (rng.random((n, c)) < 0.4).astype(np.float64)
    targets[:, 4] = 0
    targets[:, 5] = 1
    want_ap = np.array([np_ap(scores[:, k], targets[:, k]) for k in range(c)])
    want_auc = np.array([np_auc(scores[:, k], targets[:, k]) for k in range(c)])
    got_ap, got_auc = average_precision(scores, targets), auc(scores, targets)
    np.testing.assert_allclose(got_ap, want_ap, rtol=1e-12, equal_nan=True)
    np.testing.assert_allclose(got_auc, want_auc, rtol=1e-12, equal_nan=True)
    # a tie's value does not depend on the order of the tied items
    s = np.array([[0.9], [0.5], [0.5]])
    for t in ([[1], [1], [0]], [[1], [0], [1]]):
        assert average_precision(s, np.array(t, dtype=float))[0] == pytest.approx((1 + 2 / 3) / 2)
        assert auc(s, np.array(t, dtype=float))[0] == pytest.approx(0.75)


# ============================================================================================ 1 vs 2 processes

EVAL_SCRIPT = """
import sys
from pathlib import Path

from gblend_cli import distributed
from gblend_cli.config import read_saved_config
from gblend_cli.run_folder import RunFolder, load_checkpoint
from gblend_cli.train import Trainer

run, out = Path(sys.argv[1]), Path(sys.argv[2])
src = RunFolder(run, writer=False)
cfg = read_saved_config(run / "config.toml")
folder = RunFolder(out, writer=distributed.launch_rank() == 0)
trainer = Trainer(cfg, src.key(), folder, Path(cfg["dataset"]["data_dir"]))
trainer.model.load_state_dict(load_checkpoint(src.last)["model"])
trainer.finish(src.final()["weights"], 0.0)  # the run's final evaluation -> out/final.json
distributed.barrier()
distributed.cleanup()
"""


def _final(path: Path) -> dict:
    f = json.loads((path / "final.json").read_text())
    for k in ("seconds", "peak_memory_mb"):  # wall clock and memory: not part of a run's numbers
        f.pop(k, None)
    f.get("diagnostics", {}).pop("ogr", None)  # from the run's metrics.jsonl: not the evaluation's
    return f


@pytest.mark.slow
def test_two_process_evaluation_equals_one_process(matrix_runs, tmp_path):
    """The final evaluation of one trained checkpoint (a 3-head G-Blend run) with 2 processes
    (torchrun, gloo: each process evaluates whole videos, sums are all-reduced) gives the
    final.json of 1 process: accuracies exactly, losses up to float summation order. The 1-process
    evaluation itself reproduces the run's own final.json."""
    run = matrix_runs["self"]
    script = tmp_path / "evaluate_checkpoint.py"
    script.write_text(EVAL_SCRIPT)
    env = gblend_env() | {"MASTER_PORT": str(29500 + (os.getpid() + 7) % 1000)}
    one = subprocess.run([sys.executable, str(script), str(run), str(tmp_path / "one")], env=env,
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port",
                          env["MASTER_PORT"], str(script), str(run), str(tmp_path / "two")], env=env,
                         capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = _final(tmp_path / "one"), _final(tmp_path / "two")
    assert a == _final(run), "the evaluation script does not reproduce the run's final evaluation"
    for k in ("val_loss", "train_loss"):
        assert b.pop(k) == pytest.approx(a.pop(k), rel=1e-5), k
    assert b == a
    assert set(a["heads"]) == {"audio", "rgb", "fused"}
