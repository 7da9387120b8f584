"""The optimisers and the learning-rate schedule (gblend_cli/engine.py): `lr_factor` against its
definition, `make_scheduler(offset_epochs)` (G-Blend's estimators replay the segment of the main
schedule they stand in for: at each step their learning rate is the main run's at the same epoch
and step, checked with real optimisers stepping), and `make_optimizer` (SGD with momentum, Adam,
AdaGrad with the recipe's learning rate and weight decay, and a run that trains with each)."""

from __future__ import annotations

import math

import pytest
import torch

SPE = 7  # steps per epoch


def tcfg(**over) -> dict:
    return {"epochs": 6, "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4, "optimizer": "sgd",
            "schedule": "cosine", "warmup_epochs": 0.0, "milestones": [], "gamma": 0.1} | over


def reference_factor(step: int, t: dict) -> float:
    """The schedule's definition: linear warm-up to 1 over `warmup_epochs`, then cosine from 1 to 0
    at the last step / x gamma at each milestone epoch passed / constant."""
    warm = t["warmup_epochs"] * SPE
    if step < warm:
        return (step + 1) / warm
    if t["schedule"] == "cosine":
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / (t["epochs"] * SPE - warm)))
    if t["schedule"] == "step":
        return t["gamma"] ** len([m for m in t["milestones"] if step >= m * SPE])
    return 1.0


SCHEDULES = {
    "cosine": tcfg(),
    "cosine_warmup": tcfg(warmup_epochs=1.5),
    "step": tcfg(schedule="step", milestones=[2, 4], gamma=0.3),
    "step_warmup": tcfg(schedule="step", milestones=[3], warmup_epochs=1.0),
    "constant": tcfg(schedule="constant"),
}


def stepped_lrs(t: dict, offset_epochs: int, n_steps: int, optimizer: str = "sgd") -> list[float]:
    """The learning rate of each of `n_steps` real optimiser steps under make_scheduler."""
    from gblend_cli.engine import make_optimizer, make_scheduler

    model = torch.nn.Linear(3, 2)
    opt = make_optimizer(model.parameters(), t | {"optimizer": optimizer})
    sched = make_scheduler(opt, SPE, t, offset_epochs=offset_epochs)
    lrs = []
    for _ in range(n_steps):
        lrs.append(opt.param_groups[0]["lr"])
        model(torch.ones(1, 3)).sum().backward()
        opt.step()
        opt.zero_grad()
        sched.step()
    return lrs


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_lr_factor_follows_its_definition(name):
    from gblend_cli.engine import lr_factor

    t = SCHEDULES[name]
    for s in range(t["epochs"] * SPE):
        assert lr_factor(s, SPE, t) == pytest.approx(reference_factor(s, t), rel=1e-12, abs=1e-15), (name, s)
    main = stepped_lrs(t, 0, t["epochs"] * SPE)
    assert main == pytest.approx([t["lr"] * reference_factor(s, t) for s in range(len(main))], rel=1e-12, abs=1e-15)
    assert len(set(main)) > 1 or name == "constant"


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adagrad"])
@pytest.mark.parametrize("name", list(SCHEDULES))
def test_estimators_replay_the_main_schedule_from_their_epoch(name, optimizer):
    """An estimator started at epoch N for n epochs (make_scheduler(offset_epochs=N), a fresh
    optimiser) steps with exactly the main run's learning rates of epochs N .. N+n-1."""
    t = SCHEDULES[name]
    main = stepped_lrs(t, 0, t["epochs"] * SPE, optimizer)
    for first, n in ((0, 6), (1, 2), (2, 3), (5, 1)):
        est = stepped_lrs(t, first, n * SPE, optimizer)
        assert est == main[first * SPE:(first + n) * SPE], (name, first, n)


# ============================================================================================ optimisers

@pytest.mark.parametrize("name,cls", [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam),
                                      ("adagrad", torch.optim.Adagrad)])
def test_make_optimizer_uses_the_recipes_settings(name, cls):
    from gblend_cli.engine import make_optimizer

    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    model[0].weight.requires_grad_(False)  # frozen parameters are not optimised
    opt = make_optimizer(model.parameters(), tcfg(optimizer=name, lr=0.0123, weight_decay=3e-3))
    assert type(opt) is cls
    (group,) = opt.param_groups
    assert group["lr"] == 0.0123 and group["weight_decay"] == 3e-3
    assert {id(p) for p in group["params"]} == {id(p) for p in model.parameters() if p.requires_grad}
    if name == "sgd":
        assert group["momentum"] == 0.9


@pytest.mark.parametrize("name,state_key", [("adam", "exp_avg_sq"), ("adagrad", "sum")])
def test_a_run_trains_with_adam_and_adagrad(tiny_demo, tmp_path, name, state_key):
    """`train.optimizer = adam | adagrad`: the run's checkpoint holds that optimiser's state with the
    recipe's learning rate and weight decay, and every trained parameter moved from its
    initialisation."""
    from test_train import tiny_cfg

    from gblend_cli import runs
    from gblend_cli.models import MultiModalNet

    cfg = tiny_cfg(**{"train.epochs": 1, "train.optimizer": name, "train.lr": 0.01, "train.weight_decay": 2e-4,
                      "train.schedule": "constant"})
    final = runs.train(cfg, "unimodal", ["rgb"], data=tiny_demo, out=tmp_path / name)
    state = torch.load(tmp_path / name / "checkpoints" / "last.pt", weights_only=True)
    opt = state["optimizer"]
    assert opt["param_groups"][0]["lr"] == 0.01 and opt["param_groups"][0]["weight_decay"] == 2e-4
    assert opt["state"] and all(state_key in s for s in opt["state"].values())
    if name == "adam":
        assert {"betas", "amsgrad"} <= set(opt["param_groups"][0])
    else:
        assert "lr_decay" in opt["param_groups"][0]
    init = MultiModalNet(["rgb"], ["rgb"], 8, cfg["model"], init_seed=cfg["train"]["seed"]).state_dict()
    params = {n for n, _ in MultiModalNet(["rgb"], ["rgb"], 8, cfg["model"]).named_parameters()}
    assert all(not torch.equal(state["model"][k], init[k]) for k in params)
    assert math.isfinite(final["train_loss"])
