"""The fault campaign's quick form (tests/fault_campaign.py; `--full` for the README's figures):
seeded SIGKILLs of train-gblend in its G-Blend estimation and in its final evaluation, and of
report at a random moment; each folder is whole right after the kill, and the rerun ends with the
same files as an uninterrupted run. ~50 s on 2 cores: slow."""

from __future__ import annotations

import json

import pytest

import fault_campaign


@pytest.mark.slow
def test_quick_fault_campaign(tmp_path):
    rows = fault_campaign.Campaign(tmp_path, seed=0, log=lambda *_: None).kills(fault_campaign.FORMS["quick"])
    assert len(rows) == 3
    killed = [r for r in rows if r["killed"]]
    # the estimation lasts epochs: that kill always lands; another moment may fall after a command ended
    assert ("train-gblend", "estimation") in {(r["kind"], r["aim"]) for r in killed}, rows
    for r in killed:
        assert r["whole_after_kill"] and r["resumed"] and r["identical"] and r["whole_at_end"], json.dumps(r)
