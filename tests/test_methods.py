"""G-Blend's successors (gblend_cli/policies/): each method's core computation against its paper's
formula on hand-made numbers, each gradient hook against an independent computation on a small
network, the Shapley contributions of a toy with known answers, the protocol guard, and — on the
tiny demo — every method training for 2 and 3 modalities and resuming bit-identically on CPU."""

from __future__ import annotations

import copy
import json
import math
from types import SimpleNamespace

import pytest
import torch

from gblend_cli.config import load_config
from gblend_cli.diagnostics import SubsetAccuracy, shapley
from gblend_cli.engine import Precision, TrainStep
from gblend_cli.errors import ProtocolError, UserError
from gblend_cli.experiment import RunKey, methods_matrix
from gblend_cli.metrics import head_loss
from gblend_cli.models import MultiModalNet
from gblend_cli.policies.inforeg import InfoReg, regulation_strengths, trace_growth
from gblend_cli.policies.mmpareto import MMPareto, mmpareto_combine, pareto_alpha
from gblend_cli.policies.ogm_ge import OGMGE, ogm_coefficients
from gblend_cli.policies.umt import UMT

MODEL_CFG = {"visual": "slim_r2plus1d", "visual_widths": [4, 8, 8, 8], "visual_layers": [1, 1, 1, 1],
             "audio": "slim_resnet2d", "audio_widths": [4, 8, 8, 8], "audio_layers": [1, 1, 1, 1], "fusion_dropout": 0.0}


# --- the formulas on hand-made numbers -------------------------------------------------------------
def test_ogm_ge_coefficient_follows_eq_10():
    # two modalities: rho_a = 30/10 = 3 > 1 -> k_a = 1 - tanh(0.1 * 3); the weaker one keeps k = 1
    k = ogm_coefficients({"audio": 30.0, "rgb": 10.0}, alpha=0.1)
    assert k["audio"] == pytest.approx(1 - math.tanh(0.3)) and k["rgb"] == 1.0
    # Eq. 10 jumps at rho = 1: just above, k = 1 - tanh(alpha * 1.0...); the shifted form is continuous
    k = ogm_coefficients({"audio": 10.001, "rgb": 10.0}, alpha=0.5)
    assert k["audio"] == pytest.approx(1 - math.tanh(0.5 * 1.0001)) and k["rgb"] == 1.0
    k = ogm_coefficients({"audio": 10.001, "rgb": 10.0}, alpha=0.5, form="shifted")
    assert k["audio"] == pytest.approx(1 - math.tanh(0.5 * 0.0001))
    assert ogm_coefficients({"audio": 30.0, "rgb": 10.0}, 0.1, "shifted")["audio"] == pytest.approx(1 - math.tanh(0.2))
    # equal scores: nobody is slowed
    assert ogm_coefficients({"audio": 5.0, "rgb": 5.0}, alpha=0.8) == {"audio": 1.0, "rgb": 1.0}
    # three modalities: each against the weakest other one (rgb 10): audio rho 3, flow rho 2, rgb rho 10/20
    k = ogm_coefficients({"audio": 30.0, "rgb": 10.0, "flow": 20.0}, alpha=0.1)
    assert k == pytest.approx({"audio": 1 - math.tanh(0.3), "flow": 1 - math.tanh(0.2), "rgb": 1.0})


def test_mmpareto_combination_by_hand():
    # conflicting pair (cos < 0): alpha = (|g_u|^2 - g_mm.g_u) / |g_mm - g_u|^2 = (2 + 1) / 5
    g_mm, g_u = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])
    alpha, cos = pareto_alpha(g_mm.double(), g_u.double())
    assert alpha == pytest.approx(0.6) and cos == pytest.approx(-1 / math.sqrt(2))
    (new,), a, _ = mmpareto_combine([g_mm], [g_u], gamma=1.5)
    # 2 (0.6 g_mm + 0.4 g_u) = (0.4, 0.8), norm 0.894 < |g_mm + g_u| = 1 -> rescaled to norm 1, then x 1.5
    expected = torch.tensor([0.4, 0.8]) / math.sqrt(0.8) * 1.5
    assert torch.allclose(new, expected, atol=1e-6)
    d = expected / 1.5  # the min-norm direction helps (or spares) both objectives to first order
    assert float(d @ g_mm) >= -1e-6 and float(d @ g_u) >= -1e-6
    # agreeing pair (cos > 0): alpha = 1/2, 2 (g_mm + g_u) / 2 = (2, 1) has the plain sum's norm: x 1.5 only
    (new,), a, cos = mmpareto_combine([torch.tensor([1.0, 0.0])], [torch.tensor([1.0, 1.0])], gamma=1.5)
    assert a == 0.5 and cos > 0 and torch.allclose(new, torch.tensor([3.0, 1.5]))
    # exactly opposed: the min-norm point is 0 and stays 0 (no division by a zero norm)
    (new,), a, _ = mmpareto_combine([torch.tensor([1.0, 0.0])], [torch.tensor([-1.0, 0.0])], gamma=1.5)
    assert a == pytest.approx(0.5) and torch.equal(new, torch.zeros(2))
    # alpha and cos over the whole encoder (tensors flattened together), the rescaling per tensor
    (n1, n2), a, _ = mmpareto_combine([torch.tensor([1.0]), torch.tensor([0.0])],
                                      [torch.tensor([-1.0]), torch.tensor([1.0])], gamma=1.0)
    assert a == pytest.approx(0.6)
    assert torch.allclose(n1, torch.tensor([0.4])) and torch.allclose(n2, torch.tensor([1.0]))  # |0.8| < |1| -> 1


def test_inforeg_window_and_strength_by_hand():
    assert trace_growth([], 2) == 1.0 and trace_growth([5.0], 2) == 1.0  # before two epochs: in the window
    assert trace_growth([1.0, 2.0, 4.0], 2) == pytest.approx((3.0 - 1.5) / 3.0)
    assert trace_growth([4.0, 4.0, 4.0], 1) == 0.0  # no more growth: the window has closed
    b = regulation_strengths({"audio": 20.0, "rgb": 12.0}, {"audio": True, "rgb": True}, beta=0.95)
    assert b == pytest.approx({"audio": 0.95 * math.exp(math.tanh(8.0)), "rgb": 0.0})
    # the visual modality ahead is regulated too (the official code's second branch is never reached)
    b = regulation_strengths({"audio": 12.0, "rgb": 12.5}, {"audio": True, "rgb": True}, beta=0.95)
    assert b == pytest.approx({"audio": 0.0, "rgb": 0.95 * math.exp(math.tanh(0.5))})
    # out of its window: not regulated; three modalities: each against the weakest
    b = regulation_strengths({"audio": 20.0, "rgb": 10.0, "flow": 15.0}, {"audio": False, "rgb": True, "flow": True}, 1.0)
    assert b == pytest.approx({"audio": 0.0, "rgb": 0.0, "flow": math.exp(math.tanh(5.0))})


def test_shapley_values_of_hand_made_games():
    v = {frozenset(): 10.0, frozenset({"a"}): 30.0, frozenset({"b"}): 50.0, frozenset({"a", "b"}): 80.0}
    assert shapley(v, ["a", "b"]) == pytest.approx({"a": 25.0, "b": 45.0})  # (20 + 30) / 2, (40 + 50) / 2
    # an additive game gives each player its own worth; the values always add up to v(M) - v(empty)
    worth = {"a": 1.0, "b": 2.0, "c": 4.0}
    import itertools
    v3 = {frozenset(s): sum(worth[p] for p in s) for r in range(4) for s in itertools.combinations("abc", r)}
    assert shapley(v3, ["a", "b", "c"]) == pytest.approx(worth)
    v3[frozenset("abc")] += 3.0  # a synergy of all three is shared equally
    assert shapley(v3, ["a", "b", "c"]) == pytest.approx({k: w + 1.0 for k, w in worth.items()})


class _ToyFusion:
    """fuse(f) = 10 a + 10 b + a small bias towards class 0: audio tells classes 0 and 1 apart,
    rgb classes 2 and 3; a missing modality's features are 0 (the means the test passes)."""

    modalities = ["audio", "rgb"]

    def fuse(self, f):
        return 10 * f["audio"] + 10 * f["rgb"] + torch.tensor([0.1, 0.0, 0.0, 0.0])


def test_shapley_contributions_of_a_two_modality_toy():
    y = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    eye = torch.eye(4)
    audio = torch.stack([eye[c] if c < 2 else torch.zeros(4) for c in y.tolist()])
    rgb = torch.stack([eye[c] if c >= 2 else torch.zeros(4) for c in y.tolist()])
    sub = SubsetAccuracy(_ToyFusion(), {"audio": torch.zeros(4), "rgb": torch.zeros(4)}, 8, 4, False, torch.device("cpu"))
    video = torch.arange(8)
    sub.add({"audio": audio, "rgb": rgb}, {"label": y, "video": video}, y, video)
    d = sub.diagnostics({"video_top1": 100.0})  # the full set: every clip right
    # v(none) = 25 (always class 0), v(audio) = 50 (classes 0, 1), v(rgb) = 75 (classes 2, 3 and 0 by the bias)
    assert d["subset_top1"] == pytest.approx({"none": 25.0, "audio": 50.0, "rgb": 75.0, "audio+rgb": 100.0})
    # phi_audio = ((50 - 25) + (100 - 75)) / 2 = 25, phi_rgb = ((75 - 25) + (100 - 50)) / 2 = 50
    assert d["contribution"] == pytest.approx({"audio": 25.0, "rgb": 50.0})


# --- the gradient hooks on a small network -----------------------------------------------------------
def _net(mods, method, seed=0):
    key = RunKey(method, tuple(mods), 0)
    torch.manual_seed(seed)
    return MultiModalNet(list(key.modalities), key.heads, 8, MODEL_CFG, init_seed=seed, probe_heads=key.probe_heads,
                         fusion=key.fusion)


def _inputs(mods, b=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    shapes = {"audio": ((b, 100, 40), None), "rgb": ((b, 8, 16, 16, 3), torch.uint8), "flow": ((b, 8, 16, 16, 2), torch.uint8)}
    x = {}
    for m in mods:
        shape, dtype = shapes[m]
        x[m] = torch.randint(0, 255, shape, generator=g, dtype=dtype) if dtype else torch.randn(shape, generator=g) - 5
    return x, torch.randint(0, 8, (b,), generator=g)


def _step(model, x, y, weights):
    out, feats = model(x, return_features=True)
    heads = [h for h, w in weights.items() if w > 0]
    losses = {h: head_loss(out[h], y, False) for h in heads}
    loss = sum(weights[h] * losses[h] for h in heads)
    prec = Precision.for_device(torch.device("cpu"), "none")
    return TrainStep(model, model, x, y, out, feats, losses, loss, prec.new_scaler(), prec, 0, 0, False)


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("mods", [("audio", "rgb"), ("audio", "rgb", "flow")])
def test_ogm_ge_scales_each_encoders_fused_gradient_by_its_coefficient(mods):
    cfg = load_config(None, {"methods.ogm_noise": False, "methods.ogm_alpha": 0.5})
    x, y = _inputs(mods)
    ref, net = _net(mods, "ogm-ge"), _net(mods, "ogm-ge")
    pol = OGMGE(cfg, list(mods))
    step = _step(ref, x, y, pol.weights_for(0))
    step.loss.backward()
    plain = _grads(ref)
    step = _step(net, x, y, pol.weights_for(0))
    scores = {m: float(step.out[m].detach().softmax(1)[torch.arange(len(y)), y].sum()) for m in mods}
    k = ogm_coefficients(scores, 0.5)
    assert min(k.values()) < 1.0  # some modality is slowed on this batch
    pol.backward(step)
    got = _grads(net)
    for n, g in plain.items():
        parts = n.split(".")
        if parts[0] == "backbones" and g.dim() > 1:
            assert torch.allclose(got[n], g * k[parts[1]], rtol=1e-5, atol=1e-8), n
        else:  # BatchNorm/bias of the encoders, the fused head and the probes: untouched
            assert torch.equal(got[n], g), n
    after = pol.after_epoch(0)
    assert after["ogm_k_mean"] == pytest.approx(k, abs=1e-5)


def test_ogm_ge_noise_has_the_gradients_scale_and_comes_from_the_seeded_rng():
    mods = ("audio", "rgb")
    cfg = load_config(None, {"methods.ogm_alpha": 0.5})
    x, y = _inputs(mods)
    runs = []
    for _ in range(2):
        net = _net(mods, "ogm-ge")
        torch.manual_seed(7)
        OGMGE(cfg, list(mods)).backward(_step(net, x, y, {"audio": 1.0, "rgb": 1.0, "fused": 1.0}))
        runs.append(_grads(net))
    assert all(torch.equal(runs[0][n], runs[1][n]) for n in runs[0])  # same seed, same noise


def test_probe_heads_do_not_train_the_encoders():
    mods = ("audio", "rgb")
    x, y = _inputs(mods)
    net = _net(mods, "ogm-ge")
    step = _step(net, x, y, {"audio": 1.0, "rgb": 1.0, "fused": 0.0})
    step.loss.backward()
    assert all(p.grad is None for p in net.backbones.parameters())
    assert all(p.grad is not None for p in net.heads.parameters())


@pytest.mark.parametrize("mods", [("audio", "rgb"), ("audio", "rgb", "flow")])
def test_mmpareto_hook_combines_the_two_gradients_of_every_encoder(mods):
    cfg = load_config(None)
    x, y = _inputs(mods)
    ref, net = _net(mods, "mmpareto"), _net(mods, "mmpareto")
    step = _step(ref, x, y, {m: 1.0 for m in mods} | {"fused": 1.0})
    g_mm = torch.autograd.grad(step.losses["fused"], list(ref.parameters()), retain_graph=True, allow_unused=True)
    g_u = torch.autograd.grad(sum(step.losses[m] for m in mods), list(ref.parameters()), allow_unused=True)
    names = [n for n, _ in ref.named_parameters()]
    g_mm = {n: (g if g is not None else torch.zeros_like(p)) for n, g, p in zip(names, g_mm, ref.parameters())}
    g_u = {n: (g if g is not None else torch.zeros_like(p)) for n, g, p in zip(names, g_u, ref.parameters())}
    pol = MMPareto(cfg, list(mods))
    total = pol.backward(_step(net, x, y, pol.weights_for(0)))
    got = _grads(net)
    for m in mods:
        enc = [n for n in names if n.startswith(f"backbones.{m}.")]
        want, _, _ = mmpareto_combine([g_mm[n] for n in enc], [g_u[n] for n in enc], 1.5)
        for n, w in zip(enc, want):
            assert torch.allclose(got[n], w, rtol=1e-4, atol=1e-7), n
    for n in names:  # heads: each gets its own loss's gradient
        if not n.startswith("backbones."):
            assert torch.allclose(got[n], g_mm[n] + g_u[n], atol=1e-7), n
    assert float(total) == pytest.approx(float(step.loss.detach()), rel=1e-5)


def test_inforeg_adds_the_proximal_pull_to_the_encoder_ahead():
    mods = ("audio", "rgb")
    cfg = load_config(None, {"methods.inforeg_beta": 0.5})
    x, y = _inputs(mods)
    ref, net = _net(mods, "inforeg"), _net(mods, "inforeg")
    step = _step(ref, x, y, {"audio": 1.0, "rgb": 1.0, "fused": 1.0})
    step.loss.backward()
    plain = _grads(ref)
    pol = InfoReg(cfg, list(mods))
    pol.before_epoch(0, SimpleNamespace(model=net))
    with torch.no_grad():  # as if the epoch started one unit away: θ - θ̃ = 1 everywhere
        pol.anchor = {m: [a - 1.0 for a in pol.anchor[m]] for m in mods}
    step = _step(net, x, y, pol.weights_for(0))
    scores = {m: float(step.out[m].detach().softmax(1)[torch.arange(len(y)), y].sum()) for m in mods}
    beta = regulation_strengths(scores, {m: True for m in mods}, 0.5)
    assert sum(b > 0 for b in beta.values()) == 1
    pol.backward(step)
    got = _grads(net)
    for n, g in plain.items():
        m = n.split(".")[1] if n.startswith("backbones.") else None
        assert torch.allclose(got[n], g + (beta[m] if m else 0.0), atol=1e-6), n
    summary = pol.after_epoch(0)
    assert pol.traces["audio"][0] > 0
    assert pol.traces["audio"][0] == pytest.approx(summary["inforeg_trace"]["audio"], abs=1e-6)
    assert pol.state_dict()["traces"] == pol.traces and json.dumps(pol.state_dict())  # plain data


def test_umt_adds_the_feature_distillation_loss():
    mods = ("audio", "rgb")
    cfg = load_config(None, {"model.visual_widths": [4, 8, 8, 8], "model.audio_widths": [4, 8, 8, 8],
                             "methods.umt_weight": 2.0})
    x, y = _inputs(mods)
    net = _net(mods, "umt")
    teacher_net = _net(mods, "umt", seed=5)
    sources = {m: (f"unimodal-{m}-s0", {k: v for k, v in teacher_net.state_dict().items()}) for m in mods}
    pol = UMT(cfg, list(mods), sources)
    pol.before_epoch(0, SimpleNamespace(device=torch.device("cpu")))
    step = _step(net, x, y, pol.weights_for(0))
    with torch.no_grad():
        teacher_net.eval()
        want = {m: teacher_net.backbones[m](x[m]) for m in mods}
    expected = step.loss + 2.0 * sum(torch.nn.functional.mse_loss(step.features[m], want[m]) for m in mods)
    total = pol.backward(step)
    assert float(total) == pytest.approx(float(expected.detach()), rel=1e-6)
    assert all(not p.requires_grad for p in pol.teachers.parameters())


# --- the protocol ---------------------------------------------------------------------------------
def test_a_policy_can_measure_only_t_prime_and_v():
    from gblend_cli.train import RunContext

    calls = []
    trainer = SimpleNamespace(tcfg={"seed": 0, "epochs": 1}, device=torch.device("cpu"), cfg={"model": {}},
                              env=SimpleNamespace(is_main=True, rank=0),
                              evaluate=lambda model, split, heads: calls.append(split) or {})
    ctx = RunContext(trainer, folder=None)
    for split in ("train", "holdout"):
        ctx.evaluate(None, split, ["fused"])
    for split in ("val", "final", "test"):
        with pytest.raises(ProtocolError, match="evaluation split"):
            ctx.evaluate(None, split, ["fused"])
    assert calls == ["train", "holdout"]  # the evaluation split was never passed on


def test_best_checkpoint_is_chosen_on_v_only():
    from gblend_cli.run_folder import best_score

    assert best_score({"holdout": {"fused": {"top1": 40.0}}, "val": {"fused": {"top1": 90.0}}}, "fused") == 40.0
    assert best_score({"val": {"fused": {"top1": 90.0}}}, "fused") == -math.inf  # no V: no choice at all


# --- identity -------------------------------------------------------------------------------------
def test_run_keys_of_the_methods():
    k = RunKey("ogm-ge", ("rgb", "audio"), 0)
    assert k.name == "ogm-ge-audio+rgb-s0" and RunKey.parse(k.name) == k
    assert k.heads == ["audio", "rgb", "fused"] and k.probe_heads == ["audio", "rgb"] and k.fusion == "mlp"
    assert k.argv()[:5] == ["train-method", "--method", "ogm-ge", "--modalities", "audio,rgb"]
    assert RunKey("mmpareto", ("audio", "rgb", "flow"), 2).name == "mmpareto-audio+rgb+flow-s2"
    assert RunKey("ume", ("audio", "rgb"), 1).fusion == "mean"
    assert [s.name for s in RunKey("umt", ("audio", "rgb"), 1).source_keys()] == ["unimodal-audio-s1", "unimodal-rgb-s1"]
    assert "--from-runs" in RunKey("ume", ("audio", "rgb"), 1).argv(estimate_from=["a", "b"])
    assert RunKey.from_variant("gblend-offline", ("audio", "rgb"), 0) == RunKey("gblend", ("audio", "rgb"), 0, "offline")
    assert RunKey.parse("ogm-ge-offline-audio+rgb-s0") is None
    with pytest.raises(ValueError):
        RunKey("ogm-ge", ("audio",), 0)


def test_the_methods_matrix_shares_the_paper_matrix_runs():
    from gblend_cli.experiment import matrix

    cfg = load_config(None, {"reproduce.seeds": [0], "reproduce.other_seeds": [0]})
    keys = methods_matrix(cfg)
    names = [k.name for k in keys]
    assert len(names) == len(set(names)) == 17
    for combo in ("audio+rgb", "audio+rgb+flow"):
        for m in ("naive", "gblend-offline", "ogm-ge", "mmpareto", "umt", "ume", "inforeg"):
            assert f"{m}-{combo}-s0" in names
    for k in keys:  # every run after the runs it reads
        for d in k.source_keys() + k.estimator_keys():
            assert names.index(d.name) < names.index(k.name)
    shared = set(names) & {k.name for k in matrix(cfg)}
    assert {"unimodal-audio-s0", "naive-audio+rgb-s0", "gblend-offline-audio+rgb+flow-s0"} <= shared


# --- real runs on the tiny demo --------------------------------------------------------------------
def tiny_cfg(results, **over):
    o = {"model.visual_widths": [4, 8, 8, 8], "model.audio_widths": [4, 8, 8, 8], "train.batch_size": 8,
         "clip.eval_clips": 3, "train.train_eval_size": 16, "train.epochs": 2, "train.eval_every": 1,
         "train.seed": 5, "dataset.results_dir": str(results)}
    o.update(over)
    return load_config(None, o)


@pytest.fixture(scope="module")
def unimodal_runs(tiny_demo, tmp_path_factory):
    """The uni-modal runs (audio, RGB, flow; seed 5) UMT and UME stand on, in RESULTS."""
    from gblend_cli import runs

    results = tmp_path_factory.mktemp("methods_results")
    for m in ("audio", "rgb", "flow"):
        runs.train(tiny_cfg(results), "unimodal", (m,), data=tiny_demo, out=results / f"unimodal-{m}-s5")
    return results


def _final(run):
    f = json.loads((run / "final.json").read_text())
    for k in ("seconds", "peak_memory_mb"):
        f.pop(k)
    return f


def _rows(run):
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("epoch_seconds", "train_running")} for r in rows]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["ogm-ge", "mmpareto", "inforeg", "umt", "ume"])
def test_each_method_trains_and_resumes_bit_identically(method, unimodal_runs, tiny_demo, tmp_path, monkeypatch):
    """An uninterrupted run beside one interrupted (Ctrl-C) right after its first checkpoint and
    resumed: the same metrics rows, final numbers and diagnostics, bit for bit (CPU)."""
    from gblend_cli import run_folder, runs

    cfg = tiny_cfg(unimodal_runs)
    mods = ("audio", "rgb")
    runs.train(copy.deepcopy(cfg), method, mods, data=tiny_demo, out=tmp_path / "ref")
    real = run_folder.RunFolder.save_checkpoint

    def interrupted(self, state, is_best):
        real(self, state, is_best)
        raise KeyboardInterrupt

    monkeypatch.setattr(run_folder.RunFolder, "save_checkpoint", interrupted)
    with pytest.raises(KeyboardInterrupt):
        runs.train(copy.deepcopy(cfg), method, mods, data=tiny_demo, out=tmp_path / "run")
    monkeypatch.setattr(run_folder.RunFolder, "save_checkpoint", real)
    run = tmp_path / "run"
    assert not (run / "final.json").exists() and (run / "checkpoints" / "last.pt").exists()
    (run / ".lock").unlink(missing_ok=True)
    runs.train(copy.deepcopy(cfg), method, mods, data=tiny_demo, out=run, resume=True)
    assert _rows(run) == _rows(tmp_path / "ref")
    assert _final(run) == _final(tmp_path / "ref")
    final = _final(run)
    assert final["method"] == method and set(final["heads"]) == {"audio", "rgb", "fused"}
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)  # policy state: plain data
    assert state["spec"]["method"] == method
    ref = torch.load(tmp_path / "ref" / "checkpoints" / "last.pt", weights_only=True)
    assert state["model"].keys() == ref["model"].keys()
    assert all(torch.equal(state["model"][k], ref["model"][k]) for k in ref["model"]), "the same weights, bit for bit"
    if method != "ume":
        assert all("policy" in r for r in _rows(run)[1:]), "the method's per-epoch statistics"


@pytest.mark.slow
@pytest.mark.parametrize("method", ["ogm-ge", "mmpareto", "inforeg", "umt", "ume"])
def test_each_method_on_three_modalities_writes_its_diagnostics(method, unimodal_runs, tiny_demo, tmp_path):
    from gblend_cli import runs

    final = runs.train(tiny_cfg(unimodal_runs), method, ("audio", "rgb", "flow"),
                       data=tiny_demo, out=tmp_path / "run")
    d = final["diagnostics"]
    assert set(d["subset_top1"]) == {"none", "audio", "rgb", "flow", "audio+rgb", "audio+flow", "rgb+flow",
                                     "audio+rgb+flow"}
    assert d["subset_top1"]["audio+rgb+flow"] == final["video_top1"]
    assert sum(d["contribution"].values()) == pytest.approx(final["video_top1"] - d["subset_top1"]["none"])
    assert final["peak_memory_mb"] > 0 and final["peak_memory_kind"] == "process_max_rss"
    assert final["epochs"] == (0 if method == "ume" else 2)
    # each modality's own head and its OGR over the run, from the same run folder
    assert d["head_video_top1"] == {m: final["heads"][m]["video_top1"] for m in ("audio", "rgb", "flow")}
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    ep = [r["epoch"] for r in rows if r.get("train") and r.get("holdout")]
    for h in ("audio", "rgb", "flow", "fused"):
        if method == "ume":  # trained nothing: one evaluated epoch, no OGR
            assert d["ogr"][h] is None
            continue
        (lt0, lv0), (lt1, lv1) = [(r["train"][h]["loss"], r["holdout"][h]["loss"]) for r in rows if r["epoch"] in (ep[0], ep[-1])]
        want = abs(((lv1 - lt1) - (lv0 - lt0)) / (lv0 - lv1))  # OGR = |ΔO / ΔG|, by hand
        assert d["ogr"][h] == pytest.approx(want, rel=1e-9)


@pytest.mark.slow
def test_ume_predicts_the_mean_of_the_unimodal_runs_logits(unimodal_runs, tiny_demo, tmp_path):
    from gblend_cli import runs
    from gblend_cli.run_folder import load_checkpoint

    runs.train(tiny_cfg(unimodal_runs), "ume", ("audio", "rgb"), data=tiny_demo, out=tmp_path / "ume")
    mods = ("audio", "rgb")
    x, _ = _inputs(mods, seed=3)
    ume = _net(mods, "ume")
    ume.load_state_dict(load_checkpoint(tmp_path / "ume" / "checkpoints" / "last.pt")["model"])
    ume.eval()
    logits = []
    for m in mods:
        uni = MultiModalNet([m], [m], 8, MODEL_CFG)
        uni.load_state_dict(load_checkpoint(unimodal_runs / f"unimodal-{m}-s5" / "checkpoints" / "last.pt")["model"])
        logits.append(uni.eval()({m: x[m]})[m])
    with torch.no_grad():
        assert torch.allclose(ume(x)["fused"], (logits[0] + logits[1]) / 2, atol=1e-6)
    uni_final = json.loads((unimodal_runs / "unimodal-audio-s5" / "final.json").read_text())
    ume_final = json.loads((tmp_path / "ume" / "final.json").read_text())
    assert ume_final["heads"]["audio"]["video_top1"] == uni_final["video_top1"]  # the member, as it was


def test_umt_and_ume_need_their_unimodal_runs(tiny_demo, tmp_path, run_gblend):
    p = run_gblend("train-method", "--method", "umt", "--modalities", "audio,rgb", "--data", tiny_demo,
                   "--set", f"dataset.results_dir={tmp_path / 'empty'}", "--out", tmp_path / "out")
    assert p.returncode == 2, p.stderr
    err = p.stderr.strip().splitlines()
    assert len(err) == 1 and "unimodal-audio-s0" in err[0] and "train-unimodal" in err[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_umt_refuses_a_teacher_from_another_recipe(unimodal_runs, tiny_demo):
    from gblend_cli.policies import make_policy
    from gblend_cli.runs import adopt_data_settings

    same = tiny_cfg(unimodal_runs, **{"dataset.data_dir": str(tiny_demo.resolve())})
    adopt_data_settings(same, tiny_demo.resolve())  # as runs.train does before make_policy
    assert make_policy(RunKey("umt", ("audio", "rgb"), 5), same).sources == {"audio": "unimodal-audio-s5",
                                                                              "rgb": "unimodal-rgb-s5"}
    other = tiny_cfg(unimodal_runs, **{"dataset.data_dir": str(tiny_demo.resolve()), "train.lr": 0.3})
    adopt_data_settings(other, tiny_demo.resolve())
    with pytest.raises(UserError, match="train.lr = 0.05, this run with 0.3"):
        make_policy(RunKey("umt", ("audio", "rgb"), 5), other)
    seed6 = same | {"train": same["train"] | {"seed": 6},
                    "methods": same["methods"] | {"from_runs": [str(unimodal_runs / f"unimodal-{m}-s5") for m in ("audio", "rgb")]}}
    with pytest.raises(UserError, match="train.seed = 5, this run with 6"):  # another seed's runs are not its teachers
        make_policy(RunKey("umt", ("audio", "rgb"), 6), seed6)
    with pytest.raises(UserError, match="no finished uni-modal run"):  # by default: RESULTS/unimodal-<m>-s6
        make_policy(RunKey("ume", ("audio", "rgb"), 6), same | {"train": same["train"] | {"seed": 6}})


def test_run_keys_of_the_methods_with_the_paper_tables_fields():
    """The methods beside the paper's other experiments (a fix, an optimiser): folder names,
    commands and parsing back; `tables_matrix` covers the methods matrix for "methods" only, and
    "all" (the paper's tables) leaves the methods out."""
    from gblend_cli.experiment import tables_matrix
    from gblend_cli.report import parse_tables

    cfg = load_config(None, {"reproduce.seeds": [0], "reproduce.other_seeds": [0]})
    for k in (RunKey("ogm-ge", ("audio", "rgb"), 0, optimizer="adam"), RunKey("umt", ("audio", "rgb"), 1, optimizer="adagrad"),
              RunKey("inforeg", ("audio", "rgb"), 0, fix="pretrain"), RunKey("naive", ("audio", "rgb"), 0, fix="se-gate")):
        assert RunKey.parse(k.name) == k
    k = RunKey("ogm-ge", ("audio", "rgb"), 0, optimizer="adam")
    assert k.name == "ogm-ge-audio+rgb-adam-s0"
    argv = k.argv(cfg=cfg)
    assert argv[:3] == ["train-method", "--method", "ogm-ge"] and argv[argv.index("--optimizer") + 1] == "adam"
    assert [s.name for s in RunKey("ume", ("audio", "rgb"), 1, optimizer="adam").dependencies()] == \
        ["unimodal-audio-adam-s1", "unimodal-rgb-adam-s1"]
    with pytest.raises(ValueError):
        RunKey("ogm-ge", ("audio", "rgb"), 0, fix="se-gate")  # a fusion fix is naive fusion's
    assert set(tables_matrix(cfg, ["methods"])) == set(methods_matrix(cfg))
    assert "methods" not in parse_tables("all") and parse_tables("methods") == ["methods"]
    assert not any(k.method in ("ogm-ge", "umt") for k in tables_matrix(cfg, parse_tables("all")))


def test_offline_estimators_pool_the_seeds_of_their_row():
    """An offline G-Blend run of the matrix reads the uni-modal and naive runs of every seed of its
    row (reproduce.seeds for the main combination, other_seeds for the others), its own seed's only
    when it is outside the row or pooling is off, and none without reproduce.offline_from_runs."""
    from gblend_cli.config import DEFAULTS
    from gblend_cli.experiment import RunKey, dependencies, estimators, matrix, pooled_seeds

    cfg = copy.deepcopy(DEFAULTS)
    cfg["reproduce"] |= {"seeds": [4, 3], "other_seeds": [7], "main": "audio+rgb", "other_combos": ["rgb+flow"],
                         "gblend_modes": ["offline", "online"], "other_gblend_modes": ["offline"]}
    main = RunKey("gblend", ("audio", "rgb"), 4, "offline")
    assert pooled_seeds(cfg, main) == (3, 4)
    assert [k.name for k in estimators(cfg, main)] == [
        "unimodal-audio-s3", "unimodal-rgb-s3", "naive-audio+rgb-s3", "unimodal-audio-s4", "unimodal-rgb-s4",
        "naive-audio+rgb-s4"]
    assert pooled_seeds(cfg, RunKey("gblend", ("rgb", "flow"), 7, "offline")) == (7,)
    assert pooled_seeds(cfg, RunKey("gblend", ("audio", "rgb"), 9, "offline")) == (9,)  # not in the row
    assert estimators(cfg, RunKey("gblend", ("audio", "rgb"), 4, "online")) == []
    keys = matrix(cfg)
    for k in keys:  # every run after every run it reads
        assert all(keys.index(d) < keys.index(k) for d in dependencies(cfg, k)), k.name
    off = copy.deepcopy(cfg)
    off["reproduce"]["offline_pool"] = False
    assert [k.seed for k in estimators(off, main)] == [4, 4, 4]
    off["reproduce"]["offline_from_runs"] = False
    assert estimators(off, main) == [] and dependencies(off, main) == []
