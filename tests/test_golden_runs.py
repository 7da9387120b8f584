"""Behaviour pinned across refactors: five small CPU runs (every method and mode) must write the
numbers recorded in `tests/golden/runs.json`, bit for bit.

The numbers are CPU results, and floating-point reductions differ between instruction sets, so
the exact comparison applies on a machine with the recorded fingerprint (torch version, CPU
capability, CPU model); elsewhere every loss must agree to 1e-3 (relative) and every other
field exactly. Regenerate after an *intended* change of behaviour, and say so in the commit:

    python tests/test_golden_runs.py --regenerate
"""

from __future__ import annotations

import json
import math
import platform
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


def differences(got, want, exact: bool, where: str = "") -> list[str]:
    if isinstance(want, dict) and isinstance(got, dict):
        if set(got) != set(want):
            return [f"{where}: keys {sorted(set(got) ^ set(want))} differ"]
        return [d for k in want for d in differences(got[k], want[k], exact, f"{where}.{k}")]
    if isinstance(want, list) and isinstance(got, list):
        if len(got) != len(want):
            return [f"{where}: {len(got)} items, recorded {len(want)}"]
        return [d for i, (g, w) in enumerate(zip(got, want)) for d in differences(g, w, exact, f"{where}[{i}]")]
    loose = not exact and isinstance(want, float) and isinstance(got, float) and where.split(".")[-1] in (
        "loss", "LT_before", "LV_before", "LT_after", "LV_after", "val_loss", "train_loss", "total")
    if loose and math.isclose(got, want, rel_tol=1e-3):
        return []
    return [] if got == want else [f"{where}: {got!r}, recorded {want!r}"]


def test_recorded_blend_rows_follow_the_formulas():
    """The recorded G-Blend rows (what the exact comparison pins) are themselves consistent: terms,
    w_raw and w recomputed from their own L^T/L^V, and every recorded epoch trained with them."""
    golden = json.loads(GOLDEN.read_text())["runs"]
    for name in ("gblend-offline-audio+rgb", "gblend-online-audio+rgb+flow"):
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
    golden = json.loads(GOLDEN.read_text())
    got = train_all(tiny_demo, tmp_path)
    exact = golden["fingerprint"] == fingerprint()
    # the runs agree with themselves: every blend row with the formulas recomputed from its own
    # losses, every epoch's weights with the rows (tests/blend_check.py)
    check_blend_run(tmp_path / "gblend-offline-audio+rgb")
    check_blend_run(tmp_path / "gblend-online-audio+rgb+flow")
    check_fixed_weights_run(tmp_path / "gblend-equal-rgb+flow", {h: 1 / 3 for h in ("rgb", "flow", "fused")})
    diffs = [d for name in RUNS for d in differences(got[name], golden["runs"][name], exact, name)]
    assert not diffs, (f"{len(diffs)} differences ({'exact' if exact else 'loose: another machine'} comparison); "
                       "first: " + "; ".join(diffs[:5]))


if __name__ == "__main__":  # python tests/test_golden_runs.py --regenerate
    import tempfile

    assert sys.argv[1:] == ["--regenerate"], __doc__
    from conftest import TINY_DEMO_OVERRIDES

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        code = ("import json, sys\nfrom gblend_cli.config import load_config\nfrom gblend_cli.prepare import prepare_dataset\n"
                "prepare_dataset(load_config(None, json.loads(sys.argv[1])), sys.argv[2])\n")
        subprocess.run([sys.executable, "-c", code, json.dumps(TINY_DEMO_OVERRIDES), str(tmp / "data")],
                       env=gblend_env(), check=True, capture_output=True)
        runs = train_all(tmp / "data", tmp)
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps({"fingerprint": fingerprint(), "runs": runs}, indent=1) + "\n")
    print(f"wrote {GOLDEN}")
