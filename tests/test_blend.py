"""G-Blend weights and OGR on hand-computed numbers (paper Eq. 3 and Proposition 1)."""

import math

import pytest

from gblend_cli.blend import blend_row, blend_weights, noise_bound, raw_weights
from gblend_cli.policies.gblend import GradientBlending
from gblend_cli.ogr import gradient_blend_terms, ogr_between


def test_terms_follow_equation_3():
    # O_before = 2.0 - 1.9 = 0.1; O_after = 1.5 - 0.5 = 1.0 -> ΔO = 0.9; ΔG = 2.0 - 1.5 = 0.5
    t = gradient_blend_terms(LT_before=1.9, LV_before=2.0, LT_after=0.5, LV_after=1.5)
    assert t["delta_O"] == pytest.approx(0.9)
    assert t["delta_G"] == pytest.approx(0.5)
    assert t["ogr"] == pytest.approx(1.8)


def test_zero_generalisation_gives_infinite_ogr():
    t = gradient_blend_terms(1.0, 2.0, 0.5, 2.0)
    assert t["delta_G"] == 0 and math.isinf(t["ogr"])


def test_raw_weights_equal_the_formula():
    dg = {"audio": 0.2, "rgb": 0.6, "fused": 0.4}
    do = {"audio": 0.5, "rgb": 0.2, "fused": 0.4}
    s = {h: dg[h] / do[h] ** 2 for h in dg}  # 0.8, 15, 2.5
    z = sum(s.values())
    w = raw_weights(dg, do)
    for h in dg:
        assert w[h] == pytest.approx(s[h] / z)
    # with every ΔG > 0 and ΔO well away from 0, both rules without floors reproduce the formula
    w_raw_rule = blend_weights(dg, do, rule="raw")
    for h in dg:
        assert w_raw_rule[h] == pytest.approx(s[h] / z)


def test_raw_weights_clip_negative_generalisation_and_flag_undefined():
    w = raw_weights({"a": -0.5, "b": 1.0}, {"a": 1.0, "b": 0.5})
    assert w == {"a": 0.0, "b": 1.0}  # a head that does not generalise gets nothing
    assert raw_weights({"a": 1.0, "b": 1.0}, {"a": 0.0, "b": 1.0}) == {"a": None, "b": None}  # ΔO = 0: undefined
    assert raw_weights({"a": -1.0, "b": 0.0}, {"a": 1.0, "b": 1.0}) == {"a": None, "b": None}  # Z = 0


def test_raw_rule_clips_negative_generalisation_to_zero():
    w = blend_weights({"audio": -0.3, "rgb": 0.6, "fused": 0.2}, {"audio": 1.0, "rgb": 0.5, "fused": 0.5}, rule="raw")
    assert w["audio"] == 0.0
    assert w["rgb"] == pytest.approx(0.75) and w["fused"] == pytest.approx(0.25)


def test_all_negative_generalisation_falls_back_to_equal_weights():
    dg = {"audio": -0.1, "rgb": -0.2, "fused": -0.3}
    do = {"audio": 1.0, "rgb": 0.5, "fused": 0.2}
    for rule in ("raw", "regularised"):
        w = blend_weights(dg, do, rule=rule)
        assert all(v == pytest.approx(1 / 3) for v in w.values())
        assert sum(w.values()) == pytest.approx(1.0)


def test_a_delta_o_within_its_noise_is_floored_at_the_noise():
    dg = {"audio": 0.5, "rgb": 0.5, "fused": 0.5}
    do = {"audio": 1.0, "rgb": 1e-6, "fused": 0.5}
    se = {"audio": 0.05, "rgb": 0.1, "fused": 0.05}
    assert blend_weights(dg, do, rule="raw")["rgb"] > 0.999  # without SEs: winner-take-all by a near-zero ΔO
    w = blend_weights(dg, do, rule="raw", delta_o_se=se)
    # rgb's ΔO² = 1e-12 is floored at SE² = 0.01; audio and fused are above their noise: scores 0.5, 50, 2
    assert w["rgb"] == pytest.approx(50 / 52.5)
    assert w["fused"] == pytest.approx(2 / 52.5)
    assert w["audio"] == pytest.approx(0.5 / 52.5)
    # the guard is each head's own noise: how much another head overfits does not move it
    w2 = blend_weights(dg, {**do, "audio": 10.0}, rule="raw", delta_o_se=se)
    assert w2["rgb"] / w2["fused"] == pytest.approx(w["rgb"] / w["fused"])
    assert noise_bound(do, se) == {"audio": False, "rgb": True, "fused": False}


def test_formula_rule_is_w_raw_with_no_guard():
    dg = {"audio": -0.3, "rgb": 0.5, "fused": 0.5}
    do = {"audio": 1.0, "rgb": 0.05, "fused": 0.5}
    se = {"audio": 0.05, "rgb": 0.1, "fused": 0.05}
    w = blend_weights(dg, do, rule="formula", delta_o_se=se)  # the SEs change nothing: no guard
    # audio's ΔG < 0 -> 0; rgb 0.5/0.0025 = 200, fused 0.5/0.25 = 2
    assert w == raw_weights(dg, do) and w["audio"] == 0
    assert w["rgb"] == pytest.approx(200 / 202) and w["fused"] == pytest.approx(2 / 202)
    assert blend_weights(dg, do, rule="raw", delta_o_se=se)["rgb"] < w["rgb"]  # where the guard would act
    no_g = {h: -0.1 for h in dg}  # undefined (no head generalises): equal weights
    assert blend_weights(no_g, do, rule="formula") == {h: pytest.approx(1 / 3) for h in dg}
    row = blend_row(0, 30, {"rule": "formula", "min_weight": 0.05, "metric": "loss"},
                    {h: {"delta_G": dg[h], "delta_O": do[h], "delta_O_se": se[h], "ogr": 1.0} for h in dg})
    assert not any(r["noise_bound"] or r["floored"] for r in row["heads"].values())  # nothing acted, nothing flagged
    assert [r["w"] for r in row["heads"].values()] == [r["w_raw"] for r in row["heads"].values()]


def test_flags_follow_the_clipped_delta_g_the_rules_weigh_by():
    """A ΔG of +Inf counts as no evidence (clipped to 0, as the weights do): with no other head
    generalising the weights are equal and the row says so, flooring nobody (before, it flagged no
    fallback and a floored head). The noise guard is flagged only where it set the denominator of
    a head with clipped ΔG > 0: for a head with none it moves no weight."""
    gcfg = {"rule": "regularised", "min_weight": 0.05, "metric": "loss"}

    def row(dg, do, se):
        return blend_row(0, 2, gcfg, {h: {"delta_G": dg[h], "delta_O": do[h], "delta_O_se": se[h], "ogr": 1.0}
                                      for h in dg})

    r = row({"audio": math.inf, "fused": -0.1}, {"audio": 0.5, "fused": 0.5}, {"audio": 0.1, "fused": 0.1})
    assert [v["w"] for v in r["heads"].values()] == [0.5, 0.5]
    assert r["equal_fallback"] and not any(v["floored"] or v["noise_bound"] for v in r["heads"].values())
    # rgb and fused ΔO within their noise; only fused (ΔG > 0) has its weight set by the guard
    r = row({"audio": 0.4, "rgb": -0.2, "fused": 0.3}, {"audio": 0.5, "rgb": 0.01, "fused": 0.02},
            {"audio": 0.1, "rgb": 0.1, "fused": 0.1})
    flags = {h: (v["noise_bound"], v["floored"]) for h, v in r["heads"].items()}
    assert flags == {"audio": (False, False), "rgb": (False, True), "fused": (True, False)} and not r["equal_fallback"]
    # every ΔG <= 0: equal weights, no guard acted
    r = row({"audio": -0.4, "fused": 0.0}, {"audio": 0.01, "fused": 0.5}, {"audio": 0.1, "fused": 0.1})
    assert r["equal_fallback"] and not any(v["floored"] or v["noise_bound"] for v in r["heads"].values())


def test_floors_lift_only_heads_that_do_not_generalise():
    dg = {"audio": -0.5, "rgb": 1.2, "fused": 0.8}
    do = {"audio": 2.7, "rgb": 0.3, "fused": 1.1}
    raw = raw_weights(dg, do)
    w = blend_weights(dg, do, rule="regularised", min_weight=0.05)
    assert raw["audio"] == 0.0 and w["audio"] == pytest.approx(0.05)
    # the generalising heads keep their ratio and lose the 0.05 proportionally
    assert w["rgb"] == pytest.approx(raw["rgb"] * 0.95) and w["fused"] == pytest.approx(raw["fused"] * 0.95)
    # a fused head that generalises is never lifted, however small its weight
    w = blend_weights({"audio": 0.01, "rgb": 1.2, "fused": 0.05}, {"audio": 2.0, "rgb": 0.3, "fused": 2.0},
                      rule="regularised", min_weight=0.05)
    assert w == pytest.approx(raw_weights({"audio": 0.01, "rgb": 1.2, "fused": 0.05}, {"audio": 2.0, "rgb": 0.3, "fused": 2.0}))
    # two heads without generalisation share the 0.05 budget
    w = blend_weights({"audio": -0.1, "flow": 0.0, "rgb": 1.0, "fused": 1.0}, {h: 1.0 for h in ("audio", "flow", "rgb", "fused")},
                      rule="regularised", min_weight=0.05)
    assert w["audio"] == pytest.approx(0.025) and w["flow"] == pytest.approx(0.025) and w["rgb"] == pytest.approx(0.475)


def test_weights_are_a_distribution_under_any_input():
    import random

    rng = random.Random(0)
    for _ in range(300):
        heads = ["audio", "rgb", "flow", "fused"][: rng.randint(2, 4)]
        dg = {h: rng.uniform(-1, 1) for h in heads}
        do = {h: rng.choice([0.0, rng.uniform(-1, 1)]) for h in heads}
        raw = raw_weights(dg, do)
        for rule in ("raw", "regularised"):
            w = blend_weights(dg, do, rule=rule)
            assert sum(w.values()) == pytest.approx(1.0)
            assert all(v >= 0 for v in w.values())
            if raw[heads[0]] is not None:  # defined formula, no noise guard: within 0.05 of it
                assert all(abs(w[h] - raw[h]) <= 0.05 + 1e-12 for h in heads), (dg, do, w, raw)
            if rule == "regularised" and any(v > 0 for v in dg.values()):
                n_lift = sum(v <= 0 for v in dg.values())
                assert all(w[h] == pytest.approx(min(0.05, 0.05 / n_lift)) for h in heads if dg[h] <= 0)


def test_online_schedule_has_a_warm_up_then_super_epochs():
    cfg = {"gblend": {"warmup_super_epoch": 10, "super_epoch": 5, "estimate_epochs": 0, "estimate_from": []},
           "train": {"epochs": 23}}
    g = GradientBlending(cfg, "online", ["audio", "rgb", "fused"])
    assert g.schedule() == {0: 10, 10: 5, 15: 5, 20: 3}
    off = GradientBlending(cfg, "offline", ["audio", "rgb", "fused"])
    assert off.schedule() == {0: 23}  # offline estimators train the whole run length, as in the paper
    off.gcfg["estimate_epochs"] = 4
    assert off.schedule() == {0: 4}


def _estimate(epoch, n, gcfg, dg_se, do_se=None, **dg):
    """A blend_weights row from given ΔG per head (ΔO 0.3 each, SE(ΔO) 0.05 or `do_se`'s {head:
    SE}), built by blend_row."""
    rows = {h: {"LT_before": 2.0, "LV_before": 2.0, "LT_after": 2.0 - g - 0.3, "LV_after": 2.0 - g,
                **gradient_blend_terms(2.0, 2.0, 2.0 - g - 0.3, 2.0 - g), "delta_O_se": (do_se or {}).get(h, 0.05),
                "delta_G_se": dg_se}
            for h, g in dg.items()}
    return blend_row(epoch, n, gcfg, rows)


class _Ctx:
    is_main = False

    def __init__(self):
        self.rows = []

    def record(self, row):
        self.rows.append(row)


def _run_online(monkeypatch, gcfg, estimate):
    """An online GradientBlending over 6 epochs (estimates at 0, 2, 4) whose Algorithm 1 is
    `estimate(epoch)`: (policy, context with its logged rows)."""
    from gblend_cli.policies import gblend as policy

    monkeypatch.setattr(policy, "estimate_blend_weights", lambda ctx, e, n, g: estimate(e))
    g = GradientBlending({"gblend": gcfg, "train": {"epochs": 6}}, "online", ["audio", "rgb", "fused"])
    ctx = _Ctx()
    for epoch in range(6):
        g.before_epoch(epoch, ctx)
    return g, ctx


@pytest.mark.parametrize("z,kept", [(2.0, True), (0.0, False)])
def test_online_keeps_the_weights_in_force_when_no_head_generalises_measurably(monkeypatch, z, kept):
    """Online (Algorithm 3): a later estimate whose every ΔG is within evidence_z SE(ΔG) of 0
    keeps the weights in force — logged with kept_from and the estimate's own w_estimated — and
    one with a measurable ΔG re-weights; evidence_z = 0 re-weights at every estimate. The first
    estimate always sets the weights."""
    gcfg = {"warmup_super_epoch": 2, "super_epoch": 2, "estimate_epochs": 0, "estimate_from": [], "rule": "regularised",
            "min_weight": 0.05, "metric": "loss", "evidence_z": z}
    plan = {0: dict(audio=0.05, rgb=1.0, fused=0.6),     # RGB and fused generalise clearly
            2: dict(audio=0.15, rgb=-0.05, fused=0.02),  # within 2 SE (0.1) of 0: noise
            4: dict(audio=0.05, rgb=0.5, fused=0.1)}     # RGB generalises again
    g, ctx = _run_online(monkeypatch, gcfg, lambda e: _estimate(e, 2, gcfg, 0.1, **plan[e]))
    first, second = ({h: r["w"] for h, r in row["heads"].items()} for row in ctx.rows[:2])  # the weights of epochs 0-1, 2-3
    assert first["rgb"] > first["fused"] > first["audio"]
    if kept:
        assert second == first and ctx.rows[1]["kept_from"] == 0 and ctx.rows[1]["kept_why"] == "no_generalisation"
        assert ctx.rows[1]["heads"]["audio"]["w_estimated"] > 0.5  # what the noise would have set
        # the flags describe w, the weights in force (nothing moved them at epoch 0); what
        # this estimate's guards did is *_estimated: its rgb (ΔG < 0) was floored
        rgb = ctx.rows[1]["heads"]["rgb"]
        assert not rgb["floored"] and rgb["floored_estimated"] and not ctx.rows[0]["heads"]["rgb"]["floored"]
        assert ctx.rows[1]["equal_fallback"] is False and ctx.rows[1]["equal_fallback_estimated"] is False
    else:
        assert ctx.rows[1].get("kept_from") is None and second["audio"] > 0.5
    assert [r.get("kept_from") for r in ctx.rows] == [None, 0 if kept else None, None]
    assert g.weights == {h: v["w"] for h, v in ctx.rows[2]["heads"].items()} and g.weights["rgb"] > 0.5
    resumed = GradientBlending({"gblend": gcfg, "train": {"epochs": 6}}, "online", ["audio", "rgb", "fused"])
    resumed.load_state_dict(GradientBlending.state_dict(g) | {"history": g.history[:2]})
    assert resumed.source_epoch == (0 if kept else 2)  # a resumed run keeps the right estimate's weights


@pytest.mark.parametrize("keep", [True, False])
def test_online_keep_noise_bound_keeps_the_weights_when_the_guard_would_set_one(monkeypatch, keep):
    """gblend.keep_noise_bound (off by default; README "Online estimates without evidence"): a
    later estimate in which a head that generalises has |ΔO| below SE(ΔO) — the noise guard, not
    the formula, would set its weight — keeps the weights in force (kept_why "noise_bound"); off, it
    re-weights with the guard. An estimate with every ΔO measured re-weights either way, and so does
    the first estimate, guard or not."""
    gcfg = {"warmup_super_epoch": 2, "super_epoch": 2, "estimate_epochs": 0, "estimate_from": [], "rule": "regularised",
            "min_weight": 0.05, "metric": "loss", "evidence_z": 2.0, "keep_noise_bound": keep}
    plan = {0: ({"fused": 0.5}, dict(audio=0.05, rgb=1.0, fused=0.6)),  # the first: sets the weights, guard or not
            2: ({"fused": 0.5}, dict(audio=0.05, rgb=0.8, fused=0.6)),  # ΔG measured, fused's ΔO 0.3 ± 0.5
            4: ({}, dict(audio=0.05, rgb=0.2, fused=0.9))}             # every ΔO measured
    g, ctx = _run_online(monkeypatch, gcfg, lambda e: _estimate(e, 2, gcfg, 0.1, plan[e][0], **plan[e][1]))
    first = {h: r["w"] for h, r in ctx.rows[0]["heads"].items()}
    assert ctx.rows[0]["heads"]["fused"]["noise_bound"] and ctx.rows[0].get("kept_from") is None
    second = ctx.rows[1]
    assert second["heads"]["fused"][f"noise_bound{'_estimated' if keep else ''}"]  # what the estimate's guard did
    if keep:
        assert second["kept_from"] == 0 and second["kept_why"] == "noise_bound"
        assert {h: r["w"] for h, r in second["heads"].items()} == first
    else:
        assert second.get("kept_from") is None and {h: r["w"] for h, r in second["heads"].items()} != first
    assert ctx.rows[2].get("kept_from") is None and g.weights == {h: r["w"] for h, r in ctx.rows[2]["heads"].items()}
    assert g.weights["fused"] > g.weights["rgb"]


def test_the_estimate_in_force_is_the_one_a_kept_row_points_to(tmp_path):
    """RunFolder.blend_in_force: the last row, or the row whose weights the last (kept) row kept;
    the report's weights_raw and the 'within 0.05 of w_raw' check read it."""
    import json

    from gblend_cli.run_folder import RunFolder

    rows = [{"epoch": 0, "heads": {"rgb": {"w": 0.9, "w_raw": 0.9}}},
            {"epoch": 10, "heads": {"rgb": {"w": 0.2, "w_raw": 0.2}}},
            {"epoch": 20, "kept_from": 10, "heads": {"rgb": {"w": 0.2, "w_raw": 0.95, "w_estimated": 0.95}}}]
    (tmp_path / "blend_weights.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert RunFolder(tmp_path).blend_in_force() == rows[1]
    (tmp_path / "blend_weights.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:2]))
    assert RunFolder(tmp_path).blend_in_force() == rows[1]
    (tmp_path / "blend_weights.jsonl").write_text("")
    assert RunFolder(tmp_path).blend_in_force() is None


def test_ogr_between_uses_holdout_and_eval_mode_train_losses():
    rows = [
        {"epoch": 0, "train": {"rgb": {"loss": 2.0, "top1": 10}}, "holdout": {"rgb": {"loss": 2.1, "top1": 10}},
         "val": {"rgb": {"loss": 9.0, "top1": 10}}},
        {"epoch": 5, "train": {"rgb": {"loss": 1.0, "top1": 60}}, "holdout": {"rgb": {"loss": 1.5, "top1": 50}},
         "val": {"rgb": {"loss": 9.0, "top1": 50}}},
    ]
    r = ogr_between(rows, "rgb", 0, 5)
    assert r["held_out"] == "holdout"
    assert r["delta_O"] == pytest.approx(0.5 - 0.1)
    assert r["delta_G"] == pytest.approx(0.6)
    assert r["ogr"] == pytest.approx(0.4 / 0.6)
    acc = ogr_between(rows, "rgb", 0, 5, metric="accuracy")  # error rates: O 0->0.1, G 0.9->0.5
    assert acc["delta_O"] == pytest.approx(0.1) and acc["delta_G"] == pytest.approx(0.4)


@pytest.mark.parametrize("mode,refused", [("online", True), ("offline", False)])
def test_a_run_made_before_evidence_z_existed_reads_as_what_it_did(tmp_path, mode, refused):
    """gblend.evidence_z was added after online runs had been made: a saved recipe without it reads
    as 0 for an online run (it re-weighted at every estimate), so it is not taken for a finished
    run of today's default; for any other run the missing key reads as its default."""
    from gblend_cli.config import load_config, to_toml
    from gblend_cli.errors import UserError
    from gblend_cli.run_folder import RunFolder

    cfg = load_config(None, {"gblend.mode": mode})
    saved = "\n".join(ln for ln in to_toml(cfg).splitlines() if not ln.startswith("evidence_z"))
    assert "evidence_z" not in saved
    (tmp_path / "config.toml").write_text(saved + "\n")
    if refused:
        with pytest.raises(UserError, match="gblend.evidence_z was 0.0, now 2.0"):
            RunFolder(tmp_path).check_same_recipe(cfg)
    else:
        RunFolder(tmp_path).check_same_recipe(cfg)
    (tmp_path / "config.toml").write_text(to_toml(cfg))
    RunFolder(tmp_path).check_same_recipe(cfg)  # saved with the key: the same recipe
