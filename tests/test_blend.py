"""G-Blend weights and OGR on hand-computed numbers (paper Eq. 3 and Proposition 1)."""

import math

import pytest

from gblend_cli.blend import _apply_floors, blend_weights, raw_weights
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


def test_raw_weights_keep_negative_terms_and_flag_undefined():
    w = raw_weights({"a": -0.5, "b": 1.0}, {"a": 1.0, "b": 1.0})
    assert w["a"] == pytest.approx(-0.5 / 0.5) and w["b"] == pytest.approx(1.0 / 0.5)
    assert raw_weights({"a": 1.0, "b": -1.0}, {"a": 1.0, "b": 1.0}) == {"a": None, "b": None}  # Z = 0


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


def test_tiny_delta_o_is_floored_relative_to_the_largest():
    dg = {"audio": 0.5, "rgb": 0.5, "fused": 0.5}
    do = {"audio": 1.0, "rgb": 1e-6, "fused": 0.5}
    raw = blend_weights(dg, do, rule="raw")
    assert raw["rgb"] > 0.999  # winner-take-all by a near-zero denominator
    w = blend_weights(dg, do, rule="regularised", min_weight=0.0, fused_min_weight=0.0, delta_o_floor=0.01)
    # rgb's ΔO² = 1e-12 is floored at 0.01 * 1.0: scores 0.5, 50, 2 -> normalised
    assert w["rgb"] == pytest.approx(50 / 52.5)
    assert w["fused"] == pytest.approx(2 / 52.5)
    assert w["audio"] == pytest.approx(0.5 / 52.5)


def test_floors_keep_every_head_and_the_fused_head():
    dg = {"audio": -0.5, "rgb": 1.2, "fused": 0.8}
    do = {"audio": 2.7, "rgb": 0.3, "fused": 1.1}
    w = blend_weights(dg, do, rule="regularised", min_weight=0.05, fused_min_weight=0.3)
    assert w["audio"] == pytest.approx(0.05)
    assert w["fused"] == pytest.approx(0.3)
    assert w["rgb"] == pytest.approx(0.65)
    assert sum(w.values()) == pytest.approx(1.0)


def test_apply_floors_takes_mass_proportionally():
    w = _apply_floors({"a": 0.9, "b": 0.08, "c": 0.02}, {"a": 0.0, "b": 0.1, "c": 0.1})
    assert w["b"] == pytest.approx(0.1) and w["c"] == pytest.approx(0.1) and w["a"] == pytest.approx(0.8)
    # floors that exceed the budget are shared in proportion
    w = _apply_floors({"a": 1.0, "b": 0.0}, {"a": 0.8, "b": 0.8})
    assert w == {"a": pytest.approx(0.5), "b": pytest.approx(0.5)}


def test_weights_are_a_distribution_under_any_input():
    import random

    rng = random.Random(0)
    for _ in range(200):
        heads = ["audio", "rgb", "flow", "fused"][: rng.randint(2, 4)]
        dg = {h: rng.uniform(-1, 1) for h in heads}
        do = {h: rng.choice([0.0, rng.uniform(-1, 1)]) for h in heads}
        for rule in ("raw", "regularised"):
            w = blend_weights(dg, do, rule=rule)
            assert sum(w.values()) == pytest.approx(1.0)
            assert all(v >= 0 for v in w.values())
            if rule == "regularised":
                assert all(w[h] >= (0.1 if h == "fused" else 0.05) - 1e-9 for h in heads)


def test_online_schedule_has_a_warm_up_then_super_epochs():
    g = GradientBlending({"warmup_super_epoch": 10, "super_epoch": 5, "estimate_epochs": 0}, "online", 23,
                         ["audio", "rgb", "fused"])
    assert g.schedule() == {0: 10, 10: 5, 15: 5, 20: 3}
    off = GradientBlending({"warmup_super_epoch": 10, "super_epoch": 5, "estimate_epochs": 0}, "offline", 23,
                           ["audio", "rgb", "fused"])
    assert off.schedule() == {0: 23}  # offline estimators train the whole run length, as in the paper
    off.gcfg["estimate_epochs"] = 4
    assert off.schedule() == {0: 4}


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
