"""Behaviour pinned across refactors: five small CPU runs (every method and mode) must write the
numbers recorded in `tests/golden/runs.json`, bit for bit.

The numbers are CPU results, and floating-point results differ between CPUs (measured, AMD EPYC
against Intel Xeon, both AVX512, one thread: the epoch-0 evaluation, before any step, agrees to
3e-6; after two epochs the losses differ by up to 0.4%, a clip or video flips in a 16-video
accuracy, and online G-Blend's noise-level ΔO — and so its weights — move freely). So the file
holds one recording per machine (torch version, CPU capability, CPU model), and:
- on a recorded machine, every field must equal that machine's recording exactly;
- elsewhere, against every recording: the same fields, every integer and string exactly, the
  epoch-0 evaluation to 1e-4 and every training or evaluation loss to 2% (an online run's only up
  to its first re-estimate: after it, it trains with that machine's noise-level weights);
  accuracies, standard errors and G-Blend's estimates (each blend row but its epoch) are checked
  there only against their own formulas (tests/blend_check.py), which every run must satisfy on
  any machine.

After an *intended* change of behaviour (say so in the commit), record this machine anew; the
other machines' recordings are dropped (they are stale):

    python tests/test_golden_runs.py --regenerate

To add this machine's recording without a change of behaviour (its runs must first pass the
comparison for another machine):

    python tests/test_golden_runs.py --add-machine
"""

from __future__ import annotations

import json
import math
import platform
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
GOLDEN = TESTS / "golden" / "runs.json"
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from blend_check import check_blend_row, check_blend_run, check_fixed_weights_run  # noqa: E402
from conftest import gblend_cmd, gblend_env  # noqa: E402

SMALL = ["--set", "model.visual_widths=[4,8,8,8]", "--set", "model.audio_widths=[4,8,8,8]",
         "--set", "train.batch_size=8", "--set", "clip.eval_clips=3", "--set", "train.train_eval_size=16",
         "--set", "train.eval_every=1", "--seed", "3"]
RUNS = {
    "unimodal-audio": ["train-unimodal", "--modality", "audio", "--epochs", "2"],
    "naive-audio+rgb": ["train-naive", "--modalities", "audio,rgb", "--epochs", "2"],
    "gblend-offline-audio+rgb": ["train-gblend", "--modalities", "audio,rgb", "--mode", "offline", "--epochs", "2"],
    "gblend-online-audio+rgb+flow": ["train-gblend", "--modalities", "audio,rgb,flow", "--mode", "online", "--epochs", "3",
                                     "--set", "gblend.warmup_super_epoch=2", "--set", "gblend.super_epoch=1"],
    "gblend-equal-rgb+flow": ["train-gblend", "--modalities", "rgb,flow", "--weights", "equal", "--epochs", "2"],
}
TIMING = {"seconds", "epoch_seconds", "clips_per_s", "peak_memory_mb"}  # wall-clock and memory: never compared


def fingerprint() -> dict:
    import torch

    model = ""
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor()
    return {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu": model}


def _strip(o):
    if isinstance(o, dict):
        return {k: _strip(v) for k, v in o.items() if k not in TIMING}
    if isinstance(o, list):
        return [_strip(v) for v in o]
    return o


def collect(run: Path) -> dict:
    """What a run folder says about its numbers, wall-clock fields removed."""
    out = {"final": _strip(json.loads((run / "final.json").read_text())),
           "metrics": [_strip(json.loads(x)) for x in (run / "metrics.jsonl").read_text().splitlines()]}
    if (run / "blend_weights.jsonl").exists():
        out["blend_weights"] = [_strip(json.loads(x)) for x in (run / "blend_weights.jsonl").read_text().splitlines()]
    return out


def train_all(data: Path, out: Path) -> dict:
    def one(name):
        p = subprocess.run(gblend_cmd(*RUNS[name], "--data", data, "--out", out / name, *SMALL), env=gblend_env(),
                           capture_output=True, text=True, timeout=600, cwd=out)
        assert p.returncode == 0, (name, p.stderr[-3000:])
        return name, collect(out / name)

    with ThreadPoolExecutor(2) as ex:
        return dict(ex.map(one, RUNS))


LOSSES = ("loss", "LT_before", "LV_before", "LT_after", "LV_after", "val_loss", "train_loss", "total")
NOISY = ("top1", "clip_top1", "video_top1", "video_top5", "train_top1", "loss_se", "map", "mauc")
EPOCH0_REL, LOSS_REL = 1e-4, 2e-2  # another machine: see the module docstring


def _tolerance(where: str, estimated: bool, reweighted_after: int | None = None) -> float | None:
    """How far another machine's float at `where` may be from the recording (relative; None: not
    compared there, the formula checks cover it). `reweighted_after`: the epoch of an online run's
    first re-estimate, whose noise-level weights train the epochs after it."""
    key = where.split(".")[-1]
    if ".metrics[0]." in where:  # the evaluation before any training step
        return EPOCH0_REL
    if ".diagnostics." in where or key in NOISY:
        return None
    if estimated and (".weights." in where or ".train_running." in where):
        return None  # weights set by noise-level estimates, and the running losses trained with them
    row = re.search(r"\.metrics\[(\d+)\]\.", where)
    if reweighted_after is not None and (".final." in where or (row and int(row[1]) > reweighted_after)):
        return None  # trained with another machine's re-estimate: any loss
    if key in LOSSES or ".train_running." in where:
        return LOSS_REL
    return 0.0  # set by the recipe (learning rate, fixed weights): the same everywhere


def differences(got, want, exact: bool, where: str = "", estimated: bool = False,
                reweighted_after: int | None = None) -> list[str]:
    """Where `got` differs from the recording `want`: exactly, or as another machine may (`exact`
    False: the module docstring; `estimated`: the run's weights are G-Blend's estimates;
    `reweighted_after`: `_tolerance`)."""
    if isinstance(want, dict) and isinstance(got, dict):
        if not exact and re.search(r"\.blend_weights\[\d+\]$", where):  # a G-Blend estimate: the formula checks
            return differences(got.get("epoch"), want.get("epoch"), exact, f"{where}.epoch")
        if set(got) != set(want):
            return [f"{where}: keys {sorted(set(got) ^ set(want))} differ"]
        return [d for k in want for d in differences(got[k], want[k], exact, f"{where}.{k}", estimated, reweighted_after)]
    if isinstance(want, list) and isinstance(got, list):
        if len(got) != len(want):
            return [f"{where}: {len(got)} items, recorded {len(want)}"]
        return [d for i, (g, w) in enumerate(zip(got, want))
                for d in differences(g, w, exact, f"{where}[{i}]", estimated, reweighted_after)]
    if not exact and isinstance(want, float) and isinstance(got, float):
        rel = _tolerance(where, estimated, reweighted_after)
        if rel is None or math.isclose(got, want, rel_tol=rel, abs_tol=1e-9 if rel else 0.0):
            return []
    return [] if got == want else [f"{where}: {got!r}, recorded {want!r}"]


def run_differences(got: dict, want: dict, exact: bool) -> list[str]:
    """Every difference of the five runs `got` from one machine's recording `want`."""
    def reweighted_after(run: dict) -> int | None:  # online: the epoch of its first re-estimate
        rows = run.get("blend_weights") or []
        return rows[1]["epoch"] if len(rows) > 1 else None

    return [d for name in RUNS for d in differences(got[name], want[name], exact, name, "blend_weights" in want[name],
                                                    reweighted_after(want[name]))]


def recordings() -> list[dict]:
    return json.loads(GOLDEN.read_text())["recordings"]


def compare(got: dict) -> tuple[str, list[str]]:
    """('exact' | 'another machine', differences) of a set of runs against the recordings."""
    mine = fingerprint()
    for rec in recordings():
        if rec["fingerprint"] == mine:
            return "exact", run_differences(got, rec["runs"], True)
    diffs = [run_differences(got, rec["runs"], False) for rec in recordings()]
    return "another machine", next((d for d in diffs if d), [])


def test_recorded_blend_rows_follow_the_formulas():
    """The recorded G-Blend rows (what the exact comparison pins) are themselves consistent: terms,
    w_raw and w recomputed from their own L^T/L^V, and every recorded epoch trained with them."""
    for golden, name in [(rec["runs"], name) for rec in recordings()
                         for name in ("gblend-offline-audio+rgb", "gblend-online-audio+rgb+flow")]:
        rows = golden[name]["blend_weights"]
        assert rows, name
        for row in rows:
            check_blend_row(row, {"metric": "loss", "rule": "regularised", "min_weight": 0.05})
        for m in golden[name]["metrics"][1:]:
            est = [r for r in rows if r["epoch"] <= m["epoch"] - 1][-1]
            assert m["weights"] == {h: round(v["w"], 6) for h, v in est["heads"].items()}, (name, m["epoch"])
        assert golden[name]["final"]["weights"] == {h: v["w"] for h, v in rows[-1]["heads"].items()}


@pytest.mark.slow
def test_runs_write_the_recorded_numbers(tiny_demo, tmp_path):
    got = train_all(tiny_demo, tmp_path)
    # the runs agree with themselves: every blend row with the formulas recomputed from its own
    # losses, every epoch's weights with the rows (tests/blend_check.py)
    check_blend_run(tmp_path / "gblend-offline-audio+rgb")
    check_blend_run(tmp_path / "gblend-online-audio+rgb+flow")
    check_fixed_weights_run(tmp_path / "gblend-equal-rgb+flow", {h: 1 / 3 for h in ("rgb", "flow", "fused")})
    how, diffs = compare(got)
    assert not diffs, f"{len(diffs)} differences ({how} comparison); first: " + "; ".join(diffs[:5])


def test_the_comparison_for_another_machine_still_finds_a_change():
    """The tolerances for an unrecorded machine let through what another CPU's rounding moves
    (measured: module docstring) and nothing the size of a change of behaviour: a learning rate 10%
    off, one more epoch, a fixed weight moved, another epoch-0 evaluation, a loss moved by 3%."""
    import copy

    runs = recordings()[0]["runs"]
    assert not run_differences(runs, runs, False)

    def changed(edit) -> list[str]:
        c = copy.deepcopy(runs)
        edit(c)
        return run_differences(c, runs, False)

    assert changed(lambda c: c["naive-audio+rgb"]["metrics"][1].update(lr=c["naive-audio+rgb"]["metrics"][1]["lr"] * 1.1))
    assert changed(lambda c: c["unimodal-audio"]["metrics"].append(c["unimodal-audio"]["metrics"][-1]))
    assert changed(lambda c: c["gblend-equal-rgb+flow"]["final"]["weights"].update(rgb=0.3))
    assert changed(lambda c: c["unimodal-audio"]["metrics"][0]["val"]["audio"].update(loss=2.1))
    assert changed(lambda c: c["unimodal-audio"]["final"].update(val_loss=c["unimodal-audio"]["final"]["val_loss"] * 1.03))
    assert changed(lambda c: c["gblend-offline-audio+rgb"]["blend_weights"].pop())
    online = "gblend-online-audio+rgb+flow"  # before its first re-estimate (epoch 2) its losses count
    assert changed(lambda c: c[online]["metrics"][2]["val"]["rgb"].update(loss=c[online]["metrics"][2]["val"]["rgb"]["loss"] * 1.03))

    def within(c):  # what the other CPU moved, at most, and more than the exact comparison allows
        c["unimodal-audio"]["final"]["val_loss"] *= 1.004
        c["unimodal-audio"]["metrics"][0]["val"]["audio"]["loss"] *= 1 + 3e-6
        c["gblend-online-audio+rgb+flow"]["blend_weights"][-1]["heads"]["fused"]["w"] += 0.15
        c["gblend-online-audio+rgb+flow"]["metrics"][3]["val"]["rgb"]["loss"] *= 1.10  # trained with it

    assert not changed(within)
    c = copy.deepcopy(runs)
    within(c)
    assert run_differences(c, runs, True)


def _record(replace_all: bool) -> None:
    import tempfile

    from conftest import TINY_DEMO_OVERRIDES

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        code = ("import json, sys\nfrom gblend_cli.config import load_config\nfrom gblend_cli.prepare import prepare_dataset\n"
                "prepare_dataset(load_config(None, json.loads(sys.argv[1])), sys.argv[2])\n")
        subprocess.run([sys.executable, "-c", code, json.dumps(TINY_DEMO_OVERRIDES), str(tmp / "data")],
                       env=gblend_env(), check=True, capture_output=True)
        runs = train_all(tmp / "data", tmp)
    mine = {"fingerprint": fingerprint(), "runs": runs}
    if replace_all:
        recs = [mine]
    else:
        others = [r for r in recordings() if r["fingerprint"] != mine["fingerprint"]]
        diffs = [d for r in others for d in run_differences(runs, r["runs"], False)]
        if diffs:
            sys.exit(f"not added: {len(diffs)} differences beyond another machine's (first: {diffs[0]}); "
                     "if the change is intended, --regenerate")
        recs = others + [mine]
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps({"recordings": recs}, indent=1) + "\n")
    print(f"wrote {GOLDEN} ({len(recs)} machines: " + "; ".join(r["fingerprint"]["cpu"] for r in recs) + ")")


if __name__ == "__main__":  # python tests/test_golden_runs.py --regenerate | --add-machine
    if sys.argv[1:] not in (["--regenerate"], ["--add-machine"]):
        sys.exit(__doc__)
    _record(replace_all=sys.argv[1] == "--regenerate")
