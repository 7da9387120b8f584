"""The README's "Safety" guarantee: every checkpoint loads with `torch.load(weights_only=True)` (those of
the `train_chain` and `train_lock_scenario` fixtures in conftest.py). Its other parts, recipes are
data and manifest paths outside the root, are checked in test_bad_input.py."""

from __future__ import annotations

import torch


def test_every_checkpoint_loads_with_weights_only(train_chain, train_lock_scenario):
    ref, run, _ = train_chain
    paths = [p for d in (ref, run, train_lock_scenario["run"]) for p in d.rglob("*.pt")]
    assert len(paths) >= 5
    for p in paths:
        state = torch.load(p, map_location="cpu", weights_only=True)
        assert state["format_version"] >= 1 and isinstance(state["config"], str)
