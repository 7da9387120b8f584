"""`gblend measure-ogr`: OGR = |ΔO/ΔG| per run and head from metrics.jsonl, checked against numbers
computed by hand (O = L^V - L^T on the held-out split V, ΔO = O_b - O_a, ΔG = L^V_a - L^V_b)."""

from __future__ import annotations

import csv
import io
import json

import pytest

from gblend_cli.errors import UserError
from gblend_cli.ogr import measure, print_measure


def write_metrics(run_dir, heads, points):
    """points: [(epoch, None | {head: (L_train, L_holdout, L_val)})]; None = trained, not evaluated."""
    run_dir.mkdir(parents=True)
    rows = []
    for epoch, p in points:
        row = {"epoch": epoch, "lr": 0.05, "weights": {h: 1 / len(heads) for h in heads}}
        if p is not None:
            for split, i in (("train", 0), ("holdout", 1), ("val", 2)):
                row[split] = {h: {"loss": p[h][i], "top1": 100.0 - 25.0 * p[h][i]} for h in heads}
        if epoch:
            row["train_running"] = {"total": 1.0}
        rows.append(row)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run_dir


# G-Blend run, heads audio / rgb / fused, evaluated at epochs 0, 2, 4 (1 and 3 trained only).
# (L_train, L_holdout, L_val): the val column differs so that using it instead of holdout shows.
GB = {0: {"audio": (2.0, 2.1, 2.2), "rgb": (2.0, 2.0, 2.0), "fused": (2.0, 2.0, 2.0)},
      2: {"audio": (1.0, 1.6, 1.7), "rgb": (1.5, 1.6, 1.6), "fused": (1.2, 1.4, 1.5)},
      4: {"audio": (0.4, 1.5, 1.3), "rgb": (1.2, 1.3, 1.4), "fused": (0.8, 1.2, 1.3)}}
UNI = {0: {"rgb": (2.0, 2.0, 2.0)}, 2: {"rgb": (1.4, 1.5, 1.6)}, 4: {"rgb": (1.0, 1.1, 1.2)}}


def hand(p, head, a, b, split=1):
    """By hand: ΔO, ΔG and OGR of `head` between epochs a and b (split 1 = holdout, 2 = val)."""
    lt_a, lv_a, lt_b, lv_b = p[a][head][0], p[a][head][split], p[b][head][0], p[b][head][split]
    d_o = (lv_b - lt_b) - (lv_a - lt_a)
    d_g = lv_a - lv_b
    return d_o, d_g, abs(d_o / d_g)


@pytest.fixture
def runs(tmp_path):
    uni = write_metrics(tmp_path / "unimodal-rgb-s0", ["rgb"], [(0, UNI[0]), (1, None), (2, UNI[2]), (3, None), (4, UNI[4])])
    gb = write_metrics(tmp_path / "gblend-offline-audio+rgb-s0", ["audio", "rgb", "fused"],
                       [(0, GB[0]), (1, None), (2, GB[2]), (3, None), (4, GB[4])])
    return uni, gb


def test_hand_numbers_are_what_the_test_thinks():
    # audio: O_0 = 0.1, O_4 = 1.1 -> ΔO = 1.0; ΔG = 2.1 - 1.5 = 0.6 -> OGR 5/3
    assert hand(GB, "audio", 0, 4) == pytest.approx((1.0, 0.6, 5 / 3))
    assert hand(GB, "audio", 0, 2) == pytest.approx((0.5, 0.5, 1.0))
    assert hand(GB, "audio", 2, 4) == pytest.approx((0.5, 0.1, 5.0))
    assert hand(GB, "rgb", 0, 4) == pytest.approx((0.1, 0.7, 1 / 7))
    assert hand(GB, "fused", 0, 4) == pytest.approx((0.4, 0.8, 0.5))
    assert hand(UNI, "rgb", 0, 4) == pytest.approx((0.1, 0.9, 1 / 9))
    assert hand(GB, "audio", 0, 4, split=2)[2] != pytest.approx(5 / 3)  # val would differ


def test_measure_default_range_per_head_and_per_epoch(runs):
    uni, gb = runs
    rows = measure([uni, gb], None, None)
    assert [(r["run"], r["head"]) for r in rows] == [(str(uni), "rgb"), (str(gb), "audio"), (str(gb), "rgb"), (str(gb), "fused")]
    data = {"unimodal-rgb-s0": UNI, "gblend-offline-audio+rgb-s0": GB}
    for r in rows:
        p = data[r["run"].rsplit("/", 1)[-1]]
        assert (r["from"], r["to"]) == (0, 4) and r["held_out"] == "holdout" and r["metric"] == "loss"
        d_o, d_g, ogr = hand(p, r["head"], 0, 4)
        assert (r["delta_O"], r["delta_G"], r["ogr"]) == pytest.approx((d_o, d_g, ogr)), r
        # per-epoch: between consecutive EVALUATED epochs only (0->2, 2->4; 1 and 3 were not evaluated)
        assert [(e["from"], e["to"]) for e in r["per_epoch"]] == [(0, 2), (2, 4)]
        for e in r["per_epoch"]:
            assert (e["delta_O"], e["delta_G"], e["ogr"]) == pytest.approx(hand(p, r["head"], e["from"], e["to"])), e
    audio = rows[1]
    assert audio["ogr"] == pytest.approx(5 / 3) and [e["ogr"] for e in audio["per_epoch"]] == pytest.approx([1.0, 5.0])


def test_measure_from_to_honoured(runs):
    uni, gb = runs
    rows = measure([gb], 2, 4)
    audio = next(r for r in rows if r["head"] == "audio")
    assert (audio["from"], audio["to"]) == (2, 4)
    assert (audio["delta_O"], audio["delta_G"], audio["ogr"]) == pytest.approx((0.5, 0.1, 5.0))
    assert [(e["from"], e["to"]) for e in audio["per_epoch"]] == [(2, 4)]
    rows = measure([gb], None, 2)
    assert {(r["from"], r["to"]) for r in rows} == {(0, 2)}
    assert next(r for r in rows if r["head"] == "fused")["ogr"] == pytest.approx(hand(GB, "fused", 0, 2)[2])


def test_measure_accuracy_metric_uses_error_rate(runs):
    _, gb = runs
    audio = next(r for r in measure([gb], None, None, "accuracy") if r["head"] == "audio")
    # top1 = 100 - 25 L  ->  error rate = 0.25 L: ΔO and ΔG scale by 0.25, the ratio does not
    assert audio["metric"] == "accuracy"
    assert (audio["delta_O"], audio["delta_G"], audio["ogr"]) == pytest.approx((0.25, 0.15, 5 / 3))


def test_measure_no_generalisation_gives_null_ogr(tmp_path):
    run = write_metrics(tmp_path / "naive-audio+rgb-s0", ["fused"],
                        [(0, {"fused": (2.0, 1.5, 1.5)}), (2, {"fused": (1.0, 1.5, 1.4)})])  # ΔG = 0
    (r,) = measure([run], None, None)
    assert r["delta_G"] == 0 and r["delta_O"] == pytest.approx(1.0) and r["ogr"] is None
    assert json.loads(json.dumps(r))["ogr"] is None


@pytest.mark.parametrize("start, end, needle", [(1, None, "--from"), (None, 3, "--to"), (7, None, "--from"),
                                                (4, 2, "must be after")])
def test_measure_bad_epochs_are_user_errors(runs, start, end, needle):
    _, gb = runs
    with pytest.raises(UserError, match=needle):
        measure([gb], start, end)


def test_measure_needs_two_evaluated_epochs(tmp_path):
    run = write_metrics(tmp_path / "r", ["rgb"], [(0, UNI[0]), (1, None)])
    with pytest.raises(UserError, match="two evaluated epochs"):
        measure([run], None, None)


def test_measure_run_in_progress_last_epoch_not_evaluated(tmp_path):
    run = write_metrics(tmp_path / "gblend-offline-audio+rgb-s0", ["audio", "rgb", "fused"],
                        [(0, GB[0]), (1, None), (2, GB[2]), (3, None)])
    rows = measure([run], None, None)
    assert [r["head"] for r in rows] == ["audio", "rgb", "fused"]
    assert rows[0]["to"] == 2 and rows[0]["ogr"] == pytest.approx(1.0)


def test_print_measure_csv(runs, capsys):
    uni, gb = runs
    print_measure(measure([uni, gb], None, None), "csv")
    text = capsys.readouterr().out
    assert text.splitlines()[0] == "run,head,from,to,delta_O,delta_G,ogr"
    recs = list(csv.DictReader(io.StringIO(text)))
    assert [(r["run"], r["head"]) for r in recs] == [(str(uni), "rgb"), (str(gb), "audio"), (str(gb), "rgb"), (str(gb), "fused")]
    audio = recs[1]
    assert (audio["from"], audio["to"]) == ("0", "4")
    assert float(audio["ogr"]) == pytest.approx(5 / 3, rel=1e-5)
    assert float(audio["delta_O"]) == pytest.approx(1.0, rel=1e-5) and float(audio["delta_G"]) == pytest.approx(0.6, rel=1e-5)


# --- the real entry point ------------------------------------------------------------------------
def test_cli_json_with_from_to(runs, run_gblend):
    uni, gb = runs
    proc = run_gblend("measure-ogr", uni, gb, "--from", "2", "--to", "4", "--format", "json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(proc.stdout)
    assert len(rows) == 4 and all({"run", "head", "from", "to", "delta_O", "delta_G", "ogr", "per_epoch"} <= set(r) for r in rows)
    data = {str(uni): UNI, str(gb): GB}
    for r in rows:
        assert (r["from"], r["to"]) == (2, 4)
        assert (r["delta_O"], r["delta_G"], r["ogr"]) == pytest.approx(hand(data[r["run"]], r["head"], 2, 4)), r
        assert [(e["from"], e["to"]) for e in r["per_epoch"]] == [(2, 4)]


def test_cli_table_names_the_run_that_overfits_most(runs, run_gblend):
    uni, gb = runs
    # highest OGR 0->4: gblend run, audio head (5/3); it is neither the first nor the last row
    proc = run_gblend("measure-ogr", uni, gb)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = proc.stdout + proc.stderr
    assert "overfits most: gblend-offline-audio+rgb-s0 (audio head), OGR 1.667" in text, text
    assert "unimodal-rgb-s0" in text  # the table lists every run


def _one_line_error(proc):
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    return lines[0]


def test_cli_from_epoch_not_evaluated_exits_2(runs, run_gblend):
    _, gb = runs
    proc = run_gblend("measure-ogr", gb, "--from", "1", "--format", "json")
    assert proc.returncode == 2, proc.stderr[-2000:]
    line = _one_line_error(proc)
    assert "epoch 1" in line and "--from" in line


def test_cli_folder_without_metrics_exits_2(runs, run_gblend, tmp_path):
    uni, _ = runs
    empty = tmp_path / "not-a-run"
    empty.mkdir()
    proc = run_gblend("measure-ogr", uni, empty, "--format", "json")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "not-a-run" in _one_line_error(proc)
