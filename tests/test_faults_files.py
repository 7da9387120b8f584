"""Damaged files (README "Guarantees", reliability figures): a truncated or bit-flipped checkpoint,
a damaged journal line in the middle, a damaged prepared array, dataset.json or index.csv. Each is
found — never trained on — and either recovered (best.pt, the checkpoint's copy of the journals,
preparing that clip again) or refused with one line naming the file and the fix.

The run-folder cases share one 3-epoch uni-modal run (`damaged_run`); they and the dataset.json /
index.csv cases are `slow` (~70 s together on 2 cores); the in-process checks and the damaged
prepared array (~15 s) run in the fast subset."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from conftest import TINY_DEMO_OVERRIDES, gblend_cmd, gblend_env
from reliability import TINY, assert_one_line_error, check_outputs, final_numbers, metrics_rows

from gblend_cli.errors import UserError
from gblend_cli.integrity import state_checksum
from gblend_cli.run_folder import DamagedCheckpoint, RunFolder, load_checkpoint
from gblend_cli.storage import read_jsonl


def gblend(*args, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(gblend_cmd(*args), cwd=cwd, env=gblend_env(), capture_output=True, text=True, timeout=timeout)


def flip_bit(path: Path, at: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0x04
    path.write_bytes(bytes(data))


def cut(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def damage_line(path: Path, line: int) -> None:
    lines = path.read_text().splitlines(keepends=True)
    lines[line - 1] = lines[line - 1][: len(lines[line - 1]) // 2] + "\n"
    path.write_text("".join(lines))


# ------------------------------------------------------------------------------------ in-process

def test_checkpoint_checksum_finds_a_flipped_bit_and_a_cut_file(tmp_path):
    state = {"model": {"w": torch.arange(1000, dtype=torch.float32)}, "epoch": 3, "format_version": 1}
    state["checksum"] = state_checksum(state)
    path = tmp_path / "last.pt"
    torch.save(state, path)
    assert load_checkpoint(path)["epoch"] == 3
    flipped = {**state, "model": {"w": state["model"]["w"].clone()}}
    flipped["model"]["w"][500] += 1e-3  # what a flipped bit in the tensor's bytes leaves after loading
    torch.save(flipped, path)
    with pytest.raises(DamagedCheckpoint, match="differ from its checksum"):
        load_checkpoint(path)
    torch.save(state, path)
    flip_bit(path, 0.6)
    with pytest.raises(DamagedCheckpoint) as e:
        load_checkpoint(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)
    torch.save(state, path)
    cut(path)
    with pytest.raises(DamagedCheckpoint, match="cut short"):
        load_checkpoint(path)


def test_a_damaged_journal_line_in_the_middle_is_refused_a_cut_last_line_is_not(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    rows = [{"epoch": e, "lr": 0.1} for e in range(4)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"epoch": 4, "l')
    assert RunFolder(run).metrics() == rows  # a kill mid-append: ignored
    damage_line(run / "metrics.jsonl", 2)
    damaged: list[int] = []
    assert len(read_jsonl(run / "metrics.jsonl", damaged)) == 3 and damaged == [2]
    with pytest.raises(UserError, match=r"metrics\.jsonl: line 2 is damaged.*--resume"):
        RunFolder(run).metrics()


# ------------------------------------------------------------------------------------ a run folder

@pytest.fixture(scope="module")
def damaged_run(tiny_demo, tmp_path_factory):
    """A finished 3-epoch uni-modal RGB run evaluated every epoch (best.pt at some epoch <= 3)."""
    tmp = tmp_path_factory.mktemp("damaged_run")
    args = ["train-unimodal", "--modality", "rgb", "--data", tiny_demo, "--epochs", "3", "--seed", "3", *TINY,
            "--set", "train.eval_every=1"]
    p = gblend(*args, "--out", tmp / "ref", cwd=tmp)
    assert p.returncode == 0, p.stderr[-2000:]
    return tmp, args


def copy_run(damaged_run, name: str) -> Path:
    tmp, _ = damaged_run
    shutil.copytree(tmp / "ref", tmp / name)
    return tmp / name


@pytest.mark.slow
@pytest.mark.parametrize("how", ["truncated", "bit-flipped"])
def test_damaged_last_pt_resumes_from_best_pt_to_the_same_numbers(damaged_run, how):
    tmp, args = damaged_run
    run = copy_run(damaged_run, f"last_{how}")
    (run / "final.json").unlink()  # an unfinished run: --resume must read last.pt
    (cut if how == "truncated" else flip_bit)(run / "checkpoints" / "last.pt")
    p = gblend(*args, "--out", run, "--resume", cwd=tmp)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "last.pt" in p.stderr and "best.pt" in p.stderr  # said what it did
    assert final_numbers(run) == final_numbers(tmp / "ref")
    assert metrics_rows(run) == metrics_rows(tmp / "ref")
    check_outputs(run)


@pytest.mark.slow
def test_damaged_last_and_best_pt_are_refused_in_one_line(damaged_run):
    tmp, args = damaged_run
    run = copy_run(damaged_run, "both_damaged")
    (run / "final.json").unlink()
    cut(run / "checkpoints" / "last.pt")
    flip_bit(run / "checkpoints" / "best.pt")
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    p = gblend(*args, "--out", run, "--resume", cwd=tmp)
    assert_one_line_error(p.returncode, p.stderr, p.stdout, "last.pt", "best.pt", "new --out")
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


@pytest.mark.slow
def test_damaged_journal_lines_are_refused_by_report_and_repaired_by_resume(damaged_run):
    tmp, args = damaged_run
    run = copy_run(damaged_run, "journal")
    want = (run / "metrics.jsonl").read_text()
    damage_line(run / "metrics.jsonl", 2)
    results = tmp / "journal_results"
    results.mkdir()
    shutil.move(str(run), results / "run")
    run = results / "run"
    p = gblend("report", "--results", results, "--table", "overfit", "--format", "json", cwd=tmp)
    assert_one_line_error(p.returncode, p.stderr, p.stdout, "metrics.jsonl", "line 2", "--resume")
    p = gblend(*args, "--out", run, "--resume", cwd=tmp)
    assert p.returncode == 0 and "rewrote metrics.jsonl" in p.stdout, p.stdout + p.stderr[-2000:]
    assert (run / "metrics.jsonl").read_text() == want
    p = gblend("report", "--results", results, "--table", "overfit", "--format", "json", cwd=tmp)
    assert "metrics.jsonl" not in p.stderr, p.stderr[-2000:]


# ------------------------------------------------------------------------------------ prepared data

PREPARE = ["prepare-data", "--dataset", "demo", "--set", f"demo.train_videos={TINY_DEMO_OVERRIDES['demo.train_videos']}",
           "--set", f"demo.test_videos={TINY_DEMO_OVERRIDES['demo.test_videos']}", "--workers", "1"]


@pytest.fixture
def data_copy(tiny_demo, tmp_path) -> Path:
    data = tmp_path / "data"
    shutil.copytree(tiny_demo, data)
    return data


def clip_rows(data: Path) -> list[str]:
    return [ln for ln in (data / "index.csv").read_text().splitlines()[1:] if ",ok," in ln]


def test_a_damaged_prepared_array_is_found_refused_and_prepared_again(data_copy, tmp_path):
    data = data_copy
    clip = clip_rows(data)[0].split(",")[0]
    array = data / "rgb" / f"{clip}.npy"
    flip_bit(array, 0.9)  # same size: only the checksum tells
    p = gblend("prepare-data", "--check", data, cwd=tmp_path)
    assert p.returncode == 1 and f"damaged\t{clip}\t" in p.stdout and "checksum" in p.stdout, p.stdout
    p = gblend("train-unimodal", "--modality", "rgb", "--data", data, "--epochs", "1", *TINY, "--out", tmp_path / "r",
               cwd=tmp_path)
    assert_one_line_error(p.returncode, p.stderr, p.stdout, str(array), "prepare-data")
    assert not (tmp_path / "r").exists()
    cut(array)  # cut short: the next prepare-data finds it by its size and prepares the clip again
    journal = data / "progress.jsonl"
    other = clip_rows(data)[5].split(",")[0]
    n = next(i for i, ln in enumerate(journal.read_text().splitlines(), 1) if f'"{other}"' in ln)
    damage_line(journal, n)  # a torn line in the middle of progress.jsonl: that clip is prepared again
    other_before = (data / "rgb" / f"{other}.npy").stat().st_mtime_ns
    want = (data / "rgb" / f"{other}.npy").read_bytes()
    p = gblend(*PREPARE, "--out", data, cwd=tmp_path)
    assert p.returncode == 0 and "preparing them again" in p.stderr, p.stderr[-2000:]
    assert f"1 damaged lines (first: line {n})" in " ".join(p.stderr.split()), p.stderr[-2000:]
    assert (data / "rgb" / f"{other}.npy").stat().st_mtime_ns != other_before
    assert (data / "rgb" / f"{other}.npy").read_bytes() == want
    p = gblend("prepare-data", "--check", data, cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr


@pytest.mark.slow
@pytest.mark.parametrize("target", ["dataset.json", "index.csv"])
def test_a_damaged_dataset_json_or_index_csv_is_refused_in_one_line(data_copy, tmp_path, target):
    data = data_copy
    path = data / target
    if target == "dataset.json":
        meta = json.loads(path.read_text())
        del meta["classes"]
        path.write_text(json.dumps(meta))
    else:
        lines = path.read_text().splitlines(keepends=True)
        lines[3] = lines[3].split(",")[0] + ",train,notalabel,2.0,x,true,ok,,\n"
        path.write_text("".join(lines))
    p = gblend("train-unimodal", "--modality", "rgb", "--data", data, "--epochs", "1", *TINY, "--out", tmp_path / "r",
               cwd=tmp_path)
    assert_one_line_error(p.returncode, p.stderr, p.stdout, str(path), "prepare-data")
    p = gblend(*PREPARE, "--out", data, cwd=tmp_path)  # the fix the message names
    assert p.returncode == 0, p.stderr[-2000:]
    p = gblend("prepare-data", "--check", data, cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
