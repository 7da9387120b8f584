"""The command line as researchers use it: results on stdout and everything else on stderr, one
error style for every bad value, honest --resume, the matrix's commands for batch scripts, and
report on incomplete results."""

from __future__ import annotations

import json
import os
import re
import subprocess
import tomllib
from pathlib import Path

import pytest

from conftest import gblend_env

REPO = Path(__file__).resolve().parent.parent
TINY = ["--set", "model.visual_widths=[4,8,8,8]", "--set", "model.audio_widths=[4,8,8,8]",
        "--set", "train.batch_size=8", "--set", "clip.eval_clips=3", "--set", "train.train_eval_size=16"]


def one_line_error(p, *needles, code=2):
    assert p.returncode == code, (p.returncode, p.stderr[-2000:])
    lines = [x for x in p.stderr.strip().splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), p.stderr
    assert "Traceback" not in p.stderr and "╭" not in p.stderr and "│" not in p.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


@pytest.mark.parametrize("args,needles", [
    (["train-naive", "--modalities", "audio,rgb", "--lr", "abc"], ["--lr"]),
    (["train-naive", "--modalities", "audio,rgb", "--epochs", "abc"], ["--epochs"]),
    (["train-gblend", "--modalities", "audio,rgb", "--mode", "onlin"], ["--mode", "offline", "online"]),
    (["train-naive", "--modalities", "audio,rgb", "--epochs", "-1"], ["--epochs", "> 0"]),
    (["train-naive", "--modalities", "audio,rgb", "--optimizer", "rmsprop"], ["--optimizer", "adagrad"]),
    (["train-naive"], ["--modalities"]),
    (["report", "--table", "7"], ["--table"]),
    (["train-naive", "--modalities", "audio,rgb", "--no-such-option"], ["--no-such-option"]),
])
def test_every_bad_value_is_one_line_naming_the_option(run_gblend, args, needles):
    one_line_error(run_gblend(*args), *needles)


def test_help_shows_defaults_and_every_choice_uncut(run_gblend):
    p = run_gblend("train-gblend", "--help")
    assert p.returncode == 0
    text = p.stdout
    assert "offline|online" in text and "loss|accuracy" in text and "sgd|adam|adagrad" in text
    defaults = tomllib.loads((REPO / "recipes" / "demo.toml").read_text())
    assert f"[default: {defaults['train']['epochs']}]" in " ".join(text.split())
    assert "…" not in text  # nothing cut short
    assert "Examples" in text


def test_resume_is_honest(tiny_demo, tmp_path, run_gblend):
    args = ["train-unimodal", "--modality", "audio", "--data", tiny_demo, "--epochs", "1", *TINY]
    one_line_error(run_gblend(*args, "--out", tmp_path / "none", "--resume"), "nothing to resume")
    assert not (tmp_path / "none").exists()
    p = run_gblend(*args, "--out", tmp_path / "r")
    assert p.returncode == 0, p.stderr[-2000:]
    final = (tmp_path / "r" / "final.json").read_bytes()
    mtimes = {f: f.stat().st_mtime_ns for f in (tmp_path / "r").rglob("*") if f.is_file()}
    p = run_gblend(*args, "--out", tmp_path / "r", "--resume")
    assert p.returncode == 0 and "already complete" in p.stdout
    assert (tmp_path / "r" / "final.json").read_bytes() == final
    assert {f: f.stat().st_mtime_ns for f in (tmp_path / "r").rglob("*") if f.is_file()} == mtimes
    # killed after final.json, before releasing the folder: its .lock and a temp stay; --resume tidies
    # them (under the lock) and touches nothing else (the fault campaign caught the lock left)
    from reliability import write_stale_lock

    write_stale_lock(tmp_path / "r")
    (tmp_path / "r" / "checkpoints" / ".last.pt.x1y2.tmp").write_bytes(b"cut short")
    p = run_gblend(*args, "--out", tmp_path / "r", "--resume")
    assert p.returncode == 0 and "already complete" in p.stdout, p.stderr[-2000:]
    assert {f: f.stat().st_mtime_ns for f in (tmp_path / "r").rglob("*") if f.is_file()} == mtimes


def test_results_go_to_stdout_and_progress_to_stderr(tiny_demo, tmp_path, run_gblend):
    run = tmp_path / "r"
    p = run_gblend("train-unimodal", "--modality", "rgb", "--data", tiny_demo, "--epochs", "2", *TINY, "--out", run)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "video top-1" in p.stdout and "whole run" in p.stderr and "video top-1" not in p.stderr
    assert "\x1b[" not in p.stdout  # no colour codes in a pipe
    p = run_gblend("measure-ogr", run)
    assert p.returncode == 0 and "OGR" in p.stdout and p.stderr.strip() == ""
    p = run_gblend("report", "--results", tmp_path, "--table", "overfit")
    assert "Overfitting comparison" in p.stdout and "uni-modal RGB" in p.stdout
    assert "Overfitting comparison" not in p.stderr


def recipe_for(tmp: Path, data: Path) -> Path:
    path = tmp / "small.toml"
    path.write_text(f"""
[dataset]
name = "demo"
data_dir = "{data}"
results_dir = "{tmp / 'results'}"

[reproduce]
seeds = [0, 1]
main = "audio+rgb"
other_combos = ["rgb+flow"]
other_seeds = [1]
gblend_modes = ["offline", "online"]
other_gblend_modes = ["offline"]
""")
    return path


def out_folders(lines: list[str]) -> list[str]:
    return [Path(re.search(r"--out (\S+)", x).group(1)).name for x in lines if " train-" in x]


def test_print_commands_and_the_batch_script_run_the_recipes_matrix(tiny_demo, tmp_path, run_gblend):
    from gblend_cli.config import load_config
    from gblend_cli.experiment import matrix

    recipe = recipe_for(tmp_path, tiny_demo)
    want = [k.name for k in matrix(load_config(recipe))]
    p = run_gblend("reproduce", "--print-commands", "--recipe", recipe)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.strip().splitlines()
    assert all(x.startswith("gblend train-") for x in lines), lines  # data prepared: no prepare-data line
    assert out_folders(lines) == want and len(set(want)) == len(want) == 13  # 2 x 5 for A+RGB, 3 for RGB+OF s1
    # every offline G-Blend run comes after the runs it reads its terms from
    for i, x in enumerate(lines):
        for dep in (re.search(r"--estimate-from (\S+)", x).group(1).split(",") if "--estimate-from" in x else []):
            assert Path(dep).name in out_folders(lines[:i]), (x, dep)
    # offline terms pooled over the row's seeds: each A+RGB offline run reads both seeds' runs (one
    # weight set per combination); with reproduce.offline_pool = false, its own seed's only
    seeds = sorted({int(n.rsplit("-s", 1)[1]) for n in want if "-audio+rgb-" in n})
    reads = lambda ls: {Path(re.search(r"--out (\S+)", x).group(1)).name: sorted(
        Path(d).name for d in re.search(r"--estimate-from (\S+)", x).group(1).split(","))
        for x in ls if "gblend-offline-audio+rgb-" in x}
    pooled = sorted(f"{k}-s{s}" for s in seeds for k in ("unimodal-audio", "unimodal-rgb", "naive-audio+rgb"))
    assert len(seeds) == 2 and reads(lines) == {f"gblend-offline-audio+rgb-s{s}": pooled for s in seeds}
    own = run_gblend("reproduce", "--print-commands", "--recipe", recipe, "--set", "reproduce.offline_pool=false")
    assert reads(own.stdout.strip().splitlines()) == {
        f"gblend-offline-audio+rgb-s{s}": sorted(f"{k}-s{s}" for k in ("unimodal-audio", "unimodal-rgb", "naive-audio+rgb"))
        for s in seeds}
    # the batch script runs exactly these, from any folder, with extra options passed to every command
    env = gblend_env() | {"DRY_RUN": "1", "GBLEND": f"{os.sys.executable} -m gblend_cli"}
    s = subprocess.run(["bash", str(REPO / "recipes" / "batch" / "matrix.sh"), "--recipe", str(recipe), "--",
                        "--workers", "0"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert s.returncode == 0, s.stderr
    batch = s.stdout.strip().splitlines()
    assert out_folders(batch) == want and all(x.endswith(" --workers 0") for x in batch)
    # --seeds sets every combination's seeds; a finished run is left out
    lines = run_gblend("reproduce", "--print-commands", "--recipe", recipe, "--seeds", "7").stdout.strip().splitlines()
    assert {Path(n).name.rsplit("-s", 1)[1] for n in out_folders(lines)} == {"7"} and len(lines) == 8
    done = tmp_path / "results" / "naive-audio+rgb-s7"
    done.mkdir(parents=True)
    (done / "final.json").write_text(json.dumps({"method": "naive", "modalities": ["audio", "rgb"], "seed": 7}))
    lines = run_gblend("reproduce", "--print-commands", "--recipe", recipe, "--seeds", "7").stdout.strip().splitlines()
    assert "naive-audio+rgb-s7" not in out_folders(lines) and len(lines) == 7
    (done / ".lock").write_text("{}")  # killed after final.json, before its release: resumed, to tidy it
    lines = run_gblend("reproduce", "--print-commands", "--recipe", recipe, "--seeds", "7").stdout.strip().splitlines()
    assert len(lines) == 8 and [x for x in lines if "naive-audio+rgb-s7" in x][0].endswith("--resume")
    (done / ".lock").unlink()
    lines = run_gblend("reproduce", "--print-commands", "--recipe", recipe, "--seeds", "7", "--all",
                       "--launcher", "torchrun -m gblend_cli").stdout.strip().splitlines()
    assert len(lines) == 8 and all(x.startswith("torchrun -m gblend_cli train-") for x in lines)
    assert [x for x in lines if "naive-audio+rgb-s7" in x][0].endswith("--resume")


def test_report_on_incomplete_results_lists_each_missing_run_once(tiny_demo, tmp_path, run_gblend):
    recipe = recipe_for(tmp_path, tiny_demo)
    results = tmp_path / "elsewhere"
    results.mkdir()
    p = run_gblend("report", "--recipe", recipe, "--results", results)
    one_line_error(p, "no runs for", "table1")
    missing = [x.strip() for x in p.stdout.splitlines() if x.strip().startswith("gblend train-")]
    assert len(missing) == len(set(missing)) == 13
    assert all(f"--out {results}/" in x for x in missing)  # into the folder that was asked about
    # csv: one table per file, plain cells
    p = run_gblend("report", "--recipe", recipe, "--results", results, "--format", "csv")
    one_line_error(p, "--format csv")
    p = run_gblend("report", "--recipe", recipe, "--results", results, "--format", "csv", "--out", tmp_path / "t.csv")
    assert p.returncode == 2
    for k in ("table1", "table4", "overfit"):
        text = (tmp_path / f"t_{k}.csv").read_text()
        assert "{" not in text and "[" not in text, text


def test_report_expects_the_matrix_reproduce_ran_into_the_folder(tiny_demo, tmp_path, run_gblend):
    """`reproduce --seeds 7 --results R` records its resolved recipe in R; `report --results R` then
    expects seed 7's runs (it listed the recipe's default seeds as missing beside the ones found),
    and its commands for missing runs use that recipe. An explicit --recipe still wins."""
    from gblend_cli.config import load_config, to_toml

    recipe = recipe_for(tmp_path, tiny_demo)
    results = tmp_path / "ran"
    results.mkdir()
    ran = load_config(recipe, {"reproduce.seeds": [7], "reproduce.other_seeds": [7]})
    assert load_config(recipe)["reproduce"]["seeds"] != [7]  # else this test could not fail
    (results / "reproduce_config.toml").write_text(to_toml(ran))
    p = run_gblend("report", "--results", results)
    one_line_error(p, "no runs for", "table1")
    missing = [x.strip() for x in p.stdout.splitlines() if x.strip().startswith("gblend train-")]
    assert missing and all("-s7 " in x and f"--recipe {results / 'reproduce_config.toml'}" in x for x in missing), missing
    p = run_gblend("report", "--recipe", recipe, "--results", results)
    missing = [x.strip() for x in p.stdout.splitlines() if x.strip().startswith("gblend train-")]
    assert missing and not any("-s7 " in x for x in missing), missing
