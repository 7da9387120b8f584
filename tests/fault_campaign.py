"""The fault campaign: how much of what a cluster user meets gblend survives, in figures.

    python tests/fault_campaign.py              # quick form (3 kills: what tests/test_fault_campaign.py runs)
    python tests/fault_campaign.py --mid        # ~30 kills, fuzz 200 per kind
    python tests/fault_campaign.py --full       # >= 50 kills, fuzz 1,000 per kind, every fault test
    python tests/fault_campaign.py --full --readme   # ... and rewrite the README's table from the figures

Random kills: with a seeded generator, SIGKILL (the whole process group) prepare-data, train-unimodal,
train-naive, train-gblend (offline: its estimation included; kills aimed at the estimation and at
the final evaluation as well as at random moments), reproduce and report; check that every
visible file is whole right after the kill; rerun the same command (--resume for train commands,
plain when the kill came before the first checkpoint and --resume says there is nothing to
resume) and compare the final files with an uninterrupted run's (CPU, same seed): final.json
(without its wall-clock seconds), metrics.jsonl (without timings), blend_weights.jsonl, the
checkpoint's weights, the prepared arrays and index, the report.

The other rows come from the fault tests (damaged files, disk full / read-only, fuzzed input,
distributed), run by pytest from here; fuzzing with GBLEND_FUZZ_EXAMPLES cases per input kind.

Figures go to docs/faults.json (and, with --readme, to README.md between the
`<!-- faults:begin -->` / `<!-- faults:end -->` markers)."""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
sys.path[:0] = [str(TESTS), str(REPO)]

from conftest import gblend_cmd, gblend_env  # noqa: E402
from reliability import TINY, Proc, final_numbers, journal_lines, metrics_rows, safe_check, wait_for  # noqa: E402

DEMO = ["--dataset", "demo", "--set", "demo.train_videos=24", "--set", "demo.test_videos=8", "--workers", "2"]
EPOCHS = 3
TRAIN = {
    "train-unimodal": ["train-unimodal", "--modality", "rgb"],
    "train-naive": ["train-naive", "--modalities", "audio,rgb"],
    "train-gblend": ["train-gblend", "--modalities", "audio,rgb", "--mode", "offline"],
}
COMMON = ["--epochs", str(EPOCHS), "--seed", "7", *TINY, "--set", "train.eval_every=1"]
# kills per command: (random moments, aimed at the G-Blend estimation, aimed at the final evaluation)
FORMS = {
    "quick": {"prepare-data": (0, 0, 0), "train-unimodal": (0, 0, 0), "train-naive": (0, 0, 0),
              "train-gblend": (0, 1, 1), "report": (1, 0, 0), "reproduce": (0, 0, 0), "fuzz": 0, "tests": False},
    "mid": {"prepare-data": (4, 0, 0), "train-unimodal": (3, 0, 1), "train-naive": (3, 0, 1),
            "train-gblend": (4, 3, 2), "report": (4, 0, 0), "reproduce": (3, 0, 0), "fuzz": 200, "tests": True},
    "full": {"prepare-data": (9, 0, 0), "train-unimodal": (7, 0, 2), "train-naive": (7, 0, 2),
             "train-gblend": (9, 5, 4), "report": (6, 0, 0), "reproduce": (5, 0, 0), "fuzz": 1000, "tests": True,
             "tries": 3},
    # more kill points where the first full campaign's drawn moments often fell after the end
    "extra": {"prepare-data": (5, 0, 0), "train-unimodal": (3, 0, 0), "train-naive": (3, 0, 0),
              "train-gblend": (3, 0, 0), "report": (3, 0, 0), "reproduce": (3, 0, 0), "fuzz": 0, "tests": False,
              "tries": 3},
}


def run(args, cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(gblend_cmd(*args), cwd=cwd, env=gblend_env(), capture_output=True, text=True,
                          timeout=timeout)


def sha(p: Path) -> str:
    return hashlib.sha1(p.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------ what "identical" means

def run_files(run: Path) -> dict:
    """The final files of a run, without the fields that measure the process rather than the run
    (wall-clock seconds, peak memory: a resumed run's is its second process's)."""
    import torch

    final, metrics = final_numbers(run), metrics_rows(run)
    blend = (run / "blend_weights.jsonl").read_text() if (run / "blend_weights.jsonl").exists() else ""
    state = torch.load(run / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    weights = hashlib.sha1(b"".join(t.numpy().tobytes() for _, t in sorted(state["model"].items()))).hexdigest()
    return {"final": final, "metrics": metrics, "blend": blend, "weights": weights, "epoch": state["epoch"],
            "summary": (run / "summary.csv").read_text().splitlines()[0]}


def prepared_files(data: Path) -> dict:
    import csv

    with open(data / "index.csv", newline="") as f:
        index = [{k: v for k, v in row.items() if k != "source"} for row in csv.DictReader(f)]  # paths differ
    arrays = {str(p.relative_to(data)): sha(p) for m in ("rgb", "audio", "flow") for p in sorted((data / m).glob("*.npy"))}
    meta = json.loads((data / "dataset.json").read_text())
    return {"index": index, "arrays": arrays, "meta": meta}


def results_files(results: Path) -> dict:
    return {p.name: run_files(p) for p in sorted(results.iterdir()) if (p / "final.json").exists()}


# ------------------------------------------------------------------------------------ one kill

class Campaign:
    def __init__(self, work: Path, seed: int, log=print):
        self.work, self.rng, self.log = Path(work), random.Random(seed), log
        self.rows: list[dict] = []
        self.refs: dict[str, dict] = {}
        self.ref_seconds: dict[str, float] = {}

    def ref(self, kind: str):
        """The uninterrupted run of `kind` (made on first use) and how long it took."""
        if kind in self.refs:
            return self.refs[kind]
        if kind != "prepare-data" and "prepare-data" not in self.refs:
            self.ref("prepare-data")
        t = time.monotonic()
        if kind == "prepare-data":
            self.data = self.work / "data"
            p = run(["prepare-data", *DEMO, "--out", self.data], self.work)
            assert p.returncode == 0, p.stderr[-2000:]
            self.refs[kind] = prepared_files(self.data)
            timed = self.work / "data_timed"  # how long a kill's prepare-data runs (media linked, not rendered)
            self.prepare_folder(kind, timed)
            t = time.monotonic()
            p = run(["prepare-data", *DEMO, "--out", timed], self.work)
            assert p.returncode == 0 and prepared_files(timed) == self.refs[kind], p.stderr[-2000:]
        elif kind in TRAIN:
            p = run([*TRAIN[kind], "--data", self.data, *COMMON, "--out", self.work / "ref" / kind], self.work)
            assert p.returncode == 0, p.stderr[-2000:]
            self.refs[kind] = run_files(self.work / "ref" / kind)
        elif kind == "report":
            if not any(k in self.refs for k in TRAIN):
                self.ref("train-gblend")
            t = time.monotonic()
            p = run(self.report_args(self.work / "ref_report" / "report.md"), self.work)
            assert p.returncode == 0, p.stderr[-2000:]
            self.refs[kind] = (self.work / "ref_report" / "report.md").read_text()
        else:
            self.recipe = self.work / "tiny.toml"
            self.recipe.write_text(
                f'[dataset]\nname = "demo"\ndata_dir = "{self.data}"\n[demo]\ntrain_videos = 24\ntest_videos = 8\n'
                '[prepare]\nworkers = 2\n[reproduce]\nseeds = [0]\nother_combos = []\ngblend_modes = ["offline"]\n'
                'jobs = 1\n[train]\nepochs = 2\nbatch_size = 8\ntrain_eval_size = 16\n[clip]\neval_clips = 3\n'
                '[model]\nvisual_widths = [4, 8, 8, 8]\naudio_widths = [4, 8, 8, 8]\n')
            p = run(self.reproduce_args(self.work / "ref_matrix"), self.work)
            assert p.returncode == 0, p.stderr[-2000:]
            self.refs[kind] = results_files(self.work / "ref_matrix")
        self.ref_seconds[kind] = time.monotonic() - t
        self.log(f"reference {kind}: {self.ref_seconds[kind]:.1f} s")
        return self.refs[kind]

    def report_args(self, out: Path) -> list:
        return ["report", "--results", self.work / "ref", "--table", "4", "--format", "markdown", "--out", out,
                "--figure", out.with_suffix(".png")]

    def reproduce_args(self, results: Path) -> list:
        return ["reproduce", "--recipe", self.recipe, "--results", results, "--table", "4"]

    def command(self, kind: str, folder: Path) -> list:
        if kind == "prepare-data":
            return ["prepare-data", *DEMO, "--out", folder]
        if kind == "report":
            return self.report_args(folder / "report.md")
        if kind == "reproduce":
            return self.reproduce_args(folder)
        return [*TRAIN[kind], "--data", self.data, *COMMON, "--out", folder]

    def prepare_folder(self, kind: str, folder: Path) -> None:
        if kind == "prepare-data":  # the rendered media are not what is tested: link them in
            shutil.copytree(self.data / "media", folder / "media", copy_function=os.link)
        elif kind == "report":
            folder.mkdir(parents=True)

    def kill_once(self, kind: str, aim: str, n: int, tries: int = 3) -> dict:
        """One kill point; a drawn moment that falls after the command has ended is drawn again,
        earlier (up to `tries` times), so that kill points are kills."""
        self.ref(kind)
        delay = self.rng.uniform(0.02, 0.9) * self.ref_seconds[kind]
        for attempt in range(tries):
            row = self._kill(kind, aim, f"{n:03d}_{attempt}", delay)
            if row["killed"] or aim != "random":
                break
            delay *= self.rng.uniform(0.2, 0.6)
        return row | {"attempts": attempt + 1}

    def _kill(self, kind: str, aim: str, name: str, delay: float) -> dict:
        folder = self.work / "kills" / f"{name}_{kind}_{aim}"
        self.prepare_folder(kind, folder)
        args = self.command(kind, folder)
        proc = Proc(args, self.work, f"k{name}")
        if aim == "estimation":
            wait_for(lambda: (folder / "checkpoints" / "estimation.pt").exists(), proc, timeout=300)
            delay = self.rng.uniform(0.0, 0.4)
        elif aim == "evaluation":
            wait_for(lambda: journal_lines(folder / "metrics.jsonl") >= EPOCHS + 1, proc, timeout=300)
            delay = self.rng.uniform(0.0, 0.4)
        deadline = time.monotonic() + delay
        while time.monotonic() < deadline and proc.alive():
            time.sleep(0.01)
        killed = proc.alive()
        proc.signal(signal.SIGKILL, group=True)
        proc.wait()
        row = {"kind": kind, "aim": aim, "delay_s": round(delay, 3), "killed": killed}
        if not killed:  # the command had ended: not a kill point (kill_once draws again)
            self.log(json.dumps(row))
            return row
        after = safe_check(folder)
        row["whole_after_kill"] = after["error"] is None
        row["temps_after_kill"] = len(after["temps"])
        resumed = self.resume(kind, folder, args)
        row.update(resumed)
        if resumed["resumed"]:
            row["identical"] = self.identical(kind, folder)
            end = safe_check(folder)
            row["whole_at_end"] = end["error"] is None and not end["locks"] and not end["temps"]
            if not row["whole_at_end"]:  # what is left, for the report and a failing test's message
                row["left_at_end"] = end["error"] or [str(Path(p).relative_to(folder)) for p in end["locks"] + end["temps"]]
        self.log(json.dumps(row))
        return row

    def resume(self, kind: str, folder: Path, args: list) -> dict:
        again = list(args)
        if kind in TRAIN:
            again.append("--resume")
        p = run(again, self.work)
        how = "--resume" if kind in TRAIN else "again"
        if p.returncode == 2 and "nothing to resume" in p.stderr:  # killed before its first checkpoint
            p = run(args, self.work)
            how = "plain (no checkpoint yet)"
        out = {"resumed": p.returncode == 0, "resume": how}
        if p.returncode != 0:
            out["resume_error"] = p.stderr.strip().splitlines()[-1:] if p.stderr.strip() else [f"exit {p.returncode}"]
        return out

    def identical(self, kind: str, folder: Path) -> bool:
        if kind == "prepare-data":
            return prepared_files(folder) == self.refs[kind]
        if kind == "report":
            return (folder / "report.md").read_text() == self.refs[kind]
        if kind == "reproduce":
            return results_files(folder) == self.refs[kind]
        return run_files(folder) == self.refs[kind]

    def kills(self, form: dict) -> list[dict]:
        plan = []
        for kind in ("prepare-data", "train-unimodal", "train-naive", "train-gblend", "report", "reproduce"):
            for aim, count in zip(("random", "estimation", "evaluation"), form[kind]):
                plan += [(kind, aim)] * count
        for kind in dict.fromkeys(k for k, _ in plan):  # references first, the report's after the runs it reads
            self.ref(kind)
        self.rng.shuffle(plan)
        return [self.kill_once(kind, aim, n, form.get("tries", 1)) for n, (kind, aim) in enumerate(plan)]


# ------------------------------------------------------------------------------------ the fault tests

def run_fault_tests(fuzz: int, work: Path, log=print) -> dict:
    """pytest over the fault test files; per file: cases tried and survived (fuzz: generated cases)."""
    counts = work / "fuzz_counts.jsonl"
    env = gblend_env() | {"GBLEND_FUZZ_EXAMPLES": str(fuzz), "GBLEND_FUZZ_COUNTS": str(counts)}
    out = {}
    for name in ("test_faults_files.py", "test_faults_disk.py", "test_faults_distributed.py", "test_fuzz.py"):
        report = work / f"{name}.json"
        junit = work / f"{name}.xml"
        subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", str(TESTS / name),
                        f"--junitxml={junit}"], cwd=REPO, env=env, capture_output=True, text=True, timeout=3600)
        import xml.etree.ElementTree as ET

        cases = ET.parse(junit).getroot().iter("testcase")
        res = {"tried": 0, "survived": 0, "skipped": 0, "failed": []}
        for c in cases:
            if c.find("skipped") is not None:
                res["skipped"] += 1
                continue
            res["tried"] += 1
            bad = c.find("failure") if c.find("failure") is not None else c.find("error")
            if bad is None:
                res["survived"] += 1
            else:
                res["failed"].append(c.get("name"))
        out[name] = res
        report.write_text(json.dumps(res))
        log(f"{name}: {json.dumps(res)}")
    if counts.exists():
        per_kind: dict[str, dict] = {}
        for ln in counts.read_text().splitlines():
            r = json.loads(ln)
            k = per_kind.setdefault(r["kind"], {"cases": 0, "accepted": 0, "refused": 0})
            k["cases"] += 1
            k["accepted" if r["outcome"] == "ok" else "refused"] += 1
        out["fuzz_kinds"] = per_kind
    return out


# ------------------------------------------------------------------------------------ figures

def summarise(kills: list[dict]) -> dict:
    tried = [k for k in kills if k["killed"]]
    kills = [k for k in kills if k["killed"] or "resumed" in k]  # a redrawn moment is not a kill point
    return {
        "kills_tried": len(tried),
        "finished_before_kill": len(kills) - len(tried),
        "whole_after_kill": sum(k["whole_after_kill"] for k in tried),
        "resumed": sum(k["resumed"] for k in tried),
        "identical": sum(bool(k.get("identical")) for k in tried),
        "whole_at_end": sum(bool(k.get("whole_at_end")) for k in tried),
        "per_command": {kind: {"tried": sum(k["kind"] == kind for k in tried),
                               "resumed": sum(k["kind"] == kind and k["resumed"] for k in tried),
                               "identical": sum(k["kind"] == kind and bool(k.get("identical")) for k in tried)}
                        for kind in sorted({k["kind"] for k in kills})},
    }


def table(fig: dict) -> str:
    k = fig["kills"]
    rows = [("Random SIGKILL, resumed (" + ", ".join(f"{c} {v['tried']}" for c, v in k["per_command"].items()) + ")",
             k["kills_tried"], k["identical"], k["kills_tried"] - k["identical"],
             f"{k['whole_after_kill']}/{k['kills_tried']} folders whole right after the kill; "
             f"{k['resumed']} resumed; identical = same final files as an uninterrupted run"
             + (f"; {k['whole_at_end']}/{k['kills_tried']} left no lock or temp file at the end" if "whole_at_end" in k else "")
             + (f"; {k['finished_before_kill']} more drawn kill moments fell after the command had finished"
                if k["finished_before_kill"] else ""))]
    tests = fig.get("tests", {})
    labels = {"test_faults_files.py": "Damaged files (checkpoints, journals, prepared arrays, dataset.json, index.csv)",
              "test_faults_disk.py": "Disk full (ENOSPC injected + a real tmpfs) and read-only folders",
              "test_faults_distributed.py": "Distributed: a rank killed mid-epoch (torchrun, 2 x gloo), a rank the "
                                            "launcher stops; lock fallback"}
    for name, label in labels.items():
        if name in tests:
            t = tests[name]
            rows.append((label, t["tried"], t["survived"], t["tried"] - t["survived"],
                         f"scenarios (test cases); {t['skipped']} skipped" if t["skipped"] else "scenarios (test cases)"))
    fuzz_tests = {"recipe TOML": "test_fuzz_recipe_toml", "--set strings": "test_fuzz_set_strings",
                  "manifest CSV": "test_fuzz_manifest_readers", "run folders": "test_fuzz_run_folders"}
    failed = tests.get("test_fuzz.py", {}).get("failed", [])
    for kind, c in sorted(tests.get("fuzz_kinds", {}).items()):
        lost = int(fuzz_tests.get(kind) in failed)  # hypothesis stops at the first failing case (then shrinks it)
        rows.append((f"Fuzzed {kind} (hypothesis)", c["cases"], c["cases"] - lost, lost,
                     f"{c['accepted']} accepted, {c['refused'] - lost} refused in one line (exit 2)"
                     + ("; stopped at a traceback (see the test's output)" if lost else "; no traceback")))
    lines = [f"Measured {fig['date']} ({fig['form']}, seed {fig['seed']}, {fig['setting']}); regenerate with "
             f"`python tests/fault_campaign.py --full --readme`.", "",
             "| Fault | Tried | Survived | Lost | Notes |", "|---|---:|---:|---:|---|"]
    lines += [f"| {a} | {b} | {c} | {d} | {e} |" for a, b, c, d, e in rows]
    return "\n".join(lines) + "\n"


def write_readme(text: str) -> None:
    readme = REPO / "README.md"
    s = readme.read_text()
    begin, end = "<!-- faults:begin -->\n", "<!-- faults:end -->"
    a, b = s.index(begin) + len(begin), s.index(end)
    readme.write_text(s[:a] + text + s[b:])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--mid", action="store_true")
    g.add_argument("--full", action="store_true")
    g.add_argument("--extra", action="store_true", help="20 more random kill points (merge with --from-log)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one, removed)")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "faults.json")
    ap.add_argument("--readme", action="store_true", help="rewrite the README's table from the figures")
    ap.add_argument("--no-tests", action="store_true", help="kills only")
    ap.add_argument("--table-from", type=Path, default=None, help="only print (and with --readme write) the table of "
                                                                   "figures saved by an earlier campaign (its --out)")
    ap.add_argument("--label", default="merged logs", help="with --from-log: how the table names the form")
    ap.add_argument("--from-log", type=Path, nargs=2, metavar=("LOG", "TESTS_JSON"), default=None,
                    help="figures from an interrupted campaign's log (its kill rows) and a saved run_fault_tests() "
                         "result, written to --out (the form is then named 'partial')")
    a = ap.parse_args(argv)
    if a.from_log:
        logs, tests = a.from_log  # LOG may be several logs joined with ","
        logs = [Path(p) for p in str(logs).split(",")]
        kills = [json.loads(ln) for log in logs for ln in log.read_text().splitlines() if ln.startswith('{"kind"')]
        log = logs[-1]
        fig = {"date": datetime.datetime.fromtimestamp(log.stat().st_mtime, datetime.timezone.utc).strftime(
                   "%Y-%m-%d %H:%M UTC"), "form": a.label, "seed": a.seed,
               "setting": f"CPU, {os.cpu_count()} cores, demo 24+8 clips, {EPOCHS} epochs, tiny model",
               "kills": summarise(kills), "kill_rows": kills, "tests": json.loads(tests.read_text())}
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(fig, indent=1) + "\n")
        a.table_from = a.out
    if a.table_from:
        text = table(json.loads(a.table_from.read_text()))
        print(text)
        if a.readme:
            write_readme(text)
        return 0
    form = "full" if a.full else "mid" if a.mid else "extra" if a.extra else "quick"
    spec = FORMS[form]
    work = a.work or Path(tempfile.mkdtemp(prefix="gblend-faults-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    c = Campaign(work, a.seed)
    kills = c.kills(spec)
    fig = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "form": f"{form} form",
           "seed": a.seed, "setting": f"CPU, {os.cpu_count()} cores, demo 24+8 clips, {EPOCHS} epochs, tiny model",
           "kills": summarise(kills), "kill_rows": kills}
    if spec["tests"] and not a.no_tests:
        fig["tests"] = run_fault_tests(spec["fuzz"], work)
    fig["seconds"] = round(time.monotonic() - t0)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(fig, indent=1) + "\n")
    text = table(fig)
    print(text)
    if a.readme:
        write_readme(text)
    if a.work is None:
        shutil.rmtree(work, ignore_errors=True)
    k = fig["kills"]
    return 0 if k["identical"] == k["kills_tried"] == k["resumed"] else 1


if __name__ == "__main__":
    sys.exit(main())
