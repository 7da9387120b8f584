"""The README's "Numerical faults" guarantee: NaN loss -> exit 3 with the last good checkpoint (on the
real entry point, a case of the `bad_config` fixture in conftest.py); G-Blend weights always a
distribution (in a run of the `train_chain` fixture, and `blend.blend_weights` on its edge cases)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from blend_check import check_blend_run
from reliability import check_outputs


def test_nan_loss_exits_3_and_keeps_the_last_good_checkpoint(bad_config):
    c = bad_config["diverged"]
    assert c["rc"] == 3, c["stderr"][-2000:]
    assert "Traceback" not in c["stderr"] + c["stdout"]
    last = [ln for ln in c["stderr"].splitlines() if ln.strip()][-1]
    assert last.startswith("error:") and "nan" in last and "last good checkpoint" in last, last
    out = c["cwd"] / "out"
    state = torch.load(out / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert not (out / "final.json").exists() and not (out / ".lock").exists()
    check_outputs(out)


def test_gblend_weights_in_the_run_are_a_distribution(train_chain):
    """Both runs of the chain (killed and resumed, uninterrupted): weights >= 0 summing to 1, each
    row equal to the formulas recomputed from its own losses, and trained with (blend_check.py)."""
    ref, run, _ = train_chain
    rows = [json.loads(line) for line in (run / "blend_weights.jsonl").read_text().splitlines()]
    assert rows
    for r in rows:
        w = [h["w"] for h in r["heads"].values()]
        assert all(v >= 0 and math.isfinite(v) for v in w) and sum(w) == pytest.approx(1.0)
    check_blend_run(run)
    check_blend_run(ref)


@pytest.mark.parametrize("rule", ["raw", "regularised"])
@pytest.mark.parametrize("heads", [["audio", "fused"], ["audio", "rgb", "fused"], ["audio", "rgb", "flow", "fused"]])
def test_gblend_weights_when_no_head_generalises(rule, heads):
    """Every ΔG <= 0 (negative, zero, -0.0, with ΔO of any sign or 0): the documented fallback,
    equal weights, under either rule."""
    from gblend_cli.blend import blend_weights

    cases = [({h: -0.1 * (i + 1) for i, h in enumerate(heads)}, {h: 0.5 for h in heads}),
             ({h: 0.0 for h in heads}, {h: 0.0 for h in heads}),
             ({h: -0.0 for h in heads}, {h: (-1) ** i * 1e-9 for i, h in enumerate(heads)}),
             ({h: -1e-12 for h in heads}, {h: 3.0 for h in heads})]
    for dg, do in cases:
        w = blend_weights(dg, do, rule=rule, min_weight=0.05)
        assert set(w) == set(heads)
        assert all(v >= 0 and math.isfinite(v) for v in w.values()), w
        assert sum(w.values()) == pytest.approx(1.0)
        assert all(v == 1 / len(heads) for v in w.values()), w


NON_FINITE = [pytest.param(rule, bad, id=f"{rule}-{bad}") for rule in ("raw", "regularised")
              for bad in ("nan_dg", "nan_do", "inf_do", "inf_dg")]


@pytest.mark.parametrize("rule,bad", NON_FINITE)
def test_gblend_weights_with_non_finite_terms(rule, bad):
    """A diverged estimator can give NaN/Inf losses; the weights must still be a distribution."""
    from gblend_cli.blend import blend_weights

    dg = {"audio": 0.3, "rgb": 0.2, "fused": 0.1}
    do = {"audio": 0.5, "rgb": 0.4, "fused": 0.3}
    if bad == "nan_dg":
        dg["audio"] = math.nan
    elif bad == "nan_do":
        do["rgb"] = math.nan
    elif bad == "inf_do":
        do["rgb"] = math.inf
    else:
        dg["audio"] = math.inf
    w = blend_weights(dg, do, rule=rule)
    assert all(v >= 0 and math.isfinite(v) for v in w.values()), w
    assert sum(w.values()) == pytest.approx(1.0)
