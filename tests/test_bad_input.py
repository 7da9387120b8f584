"""The README's "Bad input" guarantee, checked on the real entry point (`python -m gblend_cli`
subprocesses): bad configuration -> one line on stderr, exit code 2, no file changed (a refused
command creates no folder); negative values; data, checkpoints and results from a newer gblend. And
from "Safety": recipes are data (strings that look like code are never run), manifest paths outside
the root.

The refused commands (`bad_config`) are built once per session in conftest.py: its NaN-loss case is
checked in test_numerical.py."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from reliability import assert_one_line_error, run_many


REFUSED = ["unknown_recipe_key", "wrong_type", "negative_epochs",
           "modality_not_prepared", "resume_other_recipe", "newer_dataset", "newer_checkpoint",
           "run_folder_holds_a_run", "code_in_recipe", "code_in_set"]


def _check_refused(c: dict) -> None:
    assert_one_line_error(c["rc"], c["stderr"], c["stdout"], *c["needles"], code=c["code"])
    assert c["after"] == c["before"], sorted(set(c["after"].items()) ^ set(c["before"].items()))[:10]


@pytest.mark.parametrize("name", REFUSED)
def test_bad_input_is_one_line_exit_2_and_changes_nothing(bad_config, name):
    _check_refused(bad_config[name])


def test_recipe_strings_are_never_run(bad_config):
    for name in ("code_in_recipe", "code_in_set"):
        cwd = bad_config[name]["cwd"]
        assert not [p for p in cwd.rglob("PWNED*")], name
        assert not list(Path.cwd().glob("PWNED*"))


NEGATIVE_VALUES = {"train.momentum": -1.0, "train.gamma": -1.0, "train.seed": -1, "model.fusion_dropout": -0.5,
                   "model.audio_widths": [-4, 8, 8, 8], "model.visual_layers": [-1, 1, 1, 1], "prepare.threads": -1,
                   "prepare.decode_timeout_s": -1.0, "prepare.max_seconds": -1.0, "gblend.min_weight": -0.01,
                   "demo.seconds": -1.0, "gblend.evidence_z": -1.0, "reproduce.seeds": [0, -1]}


@pytest.mark.parametrize("key", list(NEGATIVE_VALUES))
def test_negative_values_are_rejected_by_the_schema(key):
    from gblend_cli.config import load_config
    from gblend_cli.errors import UserError

    with pytest.raises(UserError, match=key.replace(".", r"\.")):
        load_config(None, {key: NEGATIVE_VALUES[key]})


@pytest.mark.parametrize("key,value", [("reproduce.seeds", [0, ""]), ("reproduce.seeds", []),
                                       ("reproduce.other_seeds", [1.5]), ("reproduce.seeds", [True])])
def test_seed_lists_hold_integers(key, value):
    """Found by the fuzzer at 1,000 cases (`--set reproduce.seeds=[0,""]` ended in a TypeError while
    the matrix was planned): a seed list is checked where the recipe is read."""
    from gblend_cli.config import load_config
    from gblend_cli.errors import UserError

    with pytest.raises(UserError, match=key.replace(".", r"\.") + ".*(training seeds|list of integers)"):
        load_config(None, {key: value})
    assert load_config(None, {"reproduce.other_seeds": []})["reproduce"]["other_seeds"] == []


@pytest.mark.parametrize("key,value,kind", [("gblend.estimate_from", [1], "strings"), ("methods.from_runs", [2.5], "strings"),
                                            ("dataset.annotations", [True], "strings"), ("dataset.classes", [3], "strings"),
                                            ("model.audio_widths", [16, 32, 64.5, 128], "integers"),
                                            ("train.milestones", ["5"], "numbers")])
def test_list_keys_check_their_elements(key, value, kind):
    """Every list key's elements have the schema's type (a list of run folders of numbers reached
    os.fspath and ended in a TypeError traceback): one line naming the key."""
    from gblend_cli.config import load_config
    from gblend_cli.errors import UserError

    with pytest.raises(UserError, match=key.replace(".", r"\.") + f".*must be a list of {kind}"):
        load_config(None, {key: value})


def test_refused_list_elements_are_one_line_errors_on_the_command_line(run_gblend, tmp_path):
    """The same through the real entry point, for a train command (where the TypeError was)."""
    r = run_gblend("train-gblend", "--modalities", "audio,rgb", "--out", tmp_path / "g", "--set", "gblend.estimate_from=[1]")
    assert_one_line_error(r.returncode, r.stderr, r.stdout, "gblend.estimate_from", "list of strings", code=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written: no run folder, no demo data


def test_a_damaged_saved_recipe_is_one_line_and_kept(run_gblend, tmp_path):
    """A prepared folder's prepare_config.toml, a run's config.toml or a results folder's
    reproduce_config.toml cut or edited into invalid TOML (the first two ended in a TOMLDecodeError
    traceback): one line naming the file, which is left as it was."""
    from gblend_cli.config import load_config
    from gblend_cli.errors import UserError
    from gblend_cli.run_folder import RunFolder

    data = tmp_path / "data"
    data.mkdir()
    (data / "prepare_config.toml").write_text("[dataset\n")
    r = run_gblend("prepare-data", "--dataset", "demo", "--out", data)
    assert_one_line_error(r.returncode, r.stderr, r.stdout, "prepare_config.toml: damaged", "another --out", code=2)
    assert sorted(p.name for p in data.iterdir()) == ["prepare_config.toml"]
    assert (data / "prepare_config.toml").read_text() == "[dataset\n"
    results = tmp_path / "results"  # the recipe reproduce ran, which report reads
    results.mkdir()
    (results / "reproduce_config.toml").write_text("[reproduce]\nseeds = [6,\n")
    r = run_gblend("report", "--results", results)
    assert_one_line_error(r.returncode, r.stderr, r.stdout, "reproduce_config.toml", "not valid TOML", code=2)
    assert sorted(p.name for p in results.iterdir()) == ["reproduce_config.toml"]
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.toml").write_bytes(b"[train]\nepochs = \xff\n")
    with pytest.raises(UserError, match=r"config\.toml: damaged") as e:
        RunFolder(tmp_path / "run", writer=False).check_same_recipe(load_config(None))
    assert "\n" not in str(e.value)


def test_init_from_a_newer_checkpoint_is_refused(bad_config):
    _check_refused(bad_config["init_from_newer_checkpoint"])


def test_report_on_newer_results_is_refused(bad_config):
    _check_refused(bad_config["report_newer_results"])


def test_prepare_into_a_newer_dataset_is_refused(bad_config):
    _check_refused(bad_config["prepare_into_newer_dataset"])


def test_refused_train_command_creates_no_folder(bad_config):
    assert not (bad_config["modality_not_prepared"]["cwd"] / "out").exists()


# ============================================================================================ safety: manifest paths

@pytest.fixture(scope="module")
def outside_root(tmp_path_factory):
    """A generic-CSV dataset whose manifest points outside --root three ways."""
    import media_factory as mf

    tmp = tmp_path_factory.mktemp("outside")
    root = tmp / "root"
    mf.write_video(root / "cats" / "inside.mp4", seconds=1.0)
    outside = mf.write_video(tmp / "outside.mp4", seconds=1.0)
    os.symlink(outside, root / "cats" / "link.mp4")
    ann = tmp / "train.csv"
    ann.write_text(f"path,label,split\ncats/inside.mp4,cat,train\n../outside.mp4,cat,train\n{outside},dog,train\n"
                   "cats/link.mp4,dog,train\n")
    recipe = mf.write_bytes(tmp / "r.toml",
                            '[prepare]\nfps = 8.0\nshort_side = 32\nflow = "none"\n\n[clip]\ncrop = 32\n')
    base = ["prepare-data", "--dataset", "csv", "--root", root, "--annotations", ann, "--recipe", recipe,
            "--workers", "1"]
    cases = {"strict": {"args": [*base, "--out", tmp / "strict"], "cwd": tmp},
             "allowed": {"args": [*base, "--out", tmp / "allowed", "--allow-outside-root"], "cwd": tmp}}
    run_many(cases, parallel=2)
    return tmp, cases


def test_manifest_paths_outside_the_root_are_rejected(outside_root):
    tmp, cases = outside_root
    c = cases["strict"]
    assert c["rc"] == 0 and "Traceback" not in c["stderr"], c["stderr"][-2000:]
    report = json.loads((tmp / "strict" / "prepare_report.json").read_text())
    assert report["ok"] == 1
    reasons = {f["clip"]: f["reason"] for f in report["failed"]}
    assert len(reasons) == 3, reasons
    assert all("escapes dataset root" in r for r in reasons.values()), reasons
    assert not list((tmp / "strict" / "rgb").glob("*outside*")) and not list((tmp / "strict" / "rgb").glob("*link*"))


def test_allow_outside_root_accepts_them(outside_root):
    tmp, cases = outside_root
    c = cases["allowed"]
    assert c["rc"] == 0, c["stderr"][-2000:]
    report = json.loads((tmp / "allowed" / "prepare_report.json").read_text())
    assert (report["ok"], report["failed"]) == (4, [])
