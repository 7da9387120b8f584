"""Fuzzed input (README "Guarantees", reliability figures): hypothesis generates recipe TOML, --set
strings, the CSV/text files of every manifest reader, and run folders (final.json, journals,
config.toml: mutated and cut). Every case either works or is refused with a `UserError` whose
message is one line; through the real entry point (`gblend_cli.cli.main`, in this process) the same
input exits 0 or 2 with one `error:` line on stderr, never a traceback.

Cases per input kind: GBLEND_FUZZ_EXAMPLES (default 30, ~15 s here); `python tests/fault_campaign.py
--full` runs 1,000 per kind and counts them for the README's table."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")  # the `test` extra (pyproject.toml) installs it
from hypothesis import HealthCheck, example, given, settings, strategies as st  # noqa: E402

from gblend_cli.config import DEFAULTS, load_config  # noqa: E402
from gblend_cli.errors import UserError  # noqa: E402
from gblend_cli.manifests import ManifestError, read_manifest  # noqa: E402
from gblend_cli.run_folder import RunFolder  # noqa: E402

EXAMPLES = int(os.environ.get("GBLEND_FUZZ_EXAMPLES", "30"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))
COUNTS_FILE = os.environ.get("GBLEND_FUZZ_COUNTS")  # the campaign's tally: one line per case


def tally(kind: str, outcome: str) -> None:
    if COUNTS_FILE:
        with open(COUNTS_FILE, "a") as f:
            f.write(json.dumps({"kind": kind, "outcome": outcome}) + "\n")


def refused_or_ok(fn) -> str:
    """Run fn: "ok", or "refused" for a one-line UserError; anything else fails the test."""
    try:
        fn()
    except (UserError, ManifestError) as e:  # prepare-data turns a ManifestError into a UserError
        msg = str(e)
        assert msg and "\n" not in msg, repr(msg)
        return "refused"
    return "ok"


def cli(*argv) -> tuple[int, str]:
    """gblend <argv> in this process: (exit code, stderr). A traceback would escape as an exception."""
    from gblend_cli.cli import main

    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            main([str(a) for a in argv])
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return code, err.getvalue()


def assert_cli(code: int, stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    assert code in (0, 2), (code, stderr)
    if code == 2:
        lines = [ln for ln in stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:"), stderr
    return "ok" if code == 0 else "refused"


# ------------------------------------------------------------------------------------ values

nasty = st.text(alphabet=st.sampled_from(list("aZ09 _-.,;:=/\\\"'&#[]{}\t\n\r") + ["é", "∑", "\x00", "😀"]),
                max_size=12)
scalars = st.one_of(st.integers(-10**12, 10**12), st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
                    nasty, st.just(""), st.sampled_from(["sgd", "adam", "offline", "online", "auto", "cpu", "loss"]))
toml_values = st.one_of(scalars, st.lists(scalars, max_size=4))


def toml_literal(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if v != v else ("inf" if v > 0 else "-inf") if v in (float("inf"), float("-inf")) else repr(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_literal(x) for x in v) + "]"
    return json.dumps(v)


sections = st.sampled_from(list(DEFAULTS) + ["trian", "x"])


@st.composite
def recipe_text(draw) -> str:
    if draw(st.integers(0, 4)) == 0:  # raw text, often not TOML at all
        return draw(st.text(max_size=80))
    lines = []
    for section in draw(st.lists(sections, min_size=1, max_size=3, unique=True)):
        lines.append(f"[{section}]")
        keys = list(DEFAULTS.get(section, {})) + ["nope"]
        for key in draw(st.lists(st.sampled_from(keys), max_size=4, unique=True)):
            lines.append(f"{key} = {toml_literal(draw(toml_values))}")
    return "\n".join(lines) + "\n"


@st.composite
def set_string(draw) -> str:
    if draw(st.integers(0, 3)) == 0:
        return draw(st.text(max_size=30))
    section = draw(sections)
    key = draw(st.sampled_from(list(DEFAULTS.get(section, {"k": 0})) + ["nope", ""]))
    raw = draw(st.one_of(toml_values.map(toml_literal), nasty))
    return f"{section}.{key}={raw}"


# ------------------------------------------------------------------------------------ recipes, --set

@FUZZ
@given(text=recipe_text())
def test_fuzz_recipe_toml(text):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "r.toml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        got = refused_or_ok(lambda: load_config(path))
        cli_got = assert_cli(*cli("reproduce", "--print-commands", "--recipe", path))
        assert got == cli_got, (got, cli_got, text)
        tally("recipe TOML", got)


@FUZZ
@given(text=set_string())
@example(text='reproduce.gblend_modes=["sgd"]')  # found by this test: was a ValueError traceback
@example(text='reproduce.other_gblend_modes=[1]')
def test_fuzz_set_strings(text):
    got = refused_or_ok(lambda: load_config(None, sets=[text]))
    if "\x00" not in text:  # a NUL cannot be passed in argv; load_config covers it above
        cli_got = assert_cli(*cli("reproduce", "--print-commands", "--recipe", "-", "--set", text))
        assert got == cli_got, (got, cli_got, text)
    tally("--set strings", got)


# ------------------------------------------------------------------------------------ manifests

MANIFESTS = {  # dataset: (annotation file name, separator, header or None, plausible field values)
    "kinetics400": ("train.csv", ",", "label,youtube_id,time_start,time_end,split",
                    ["playing guitar", "abcdefghijk", "0", "10", "train", "val", "-5", "1e9"]),
    "vggsound": ("vggsound.csv", ",", None, ["abcdefghijk", "30", "dog barking", "train", "test"]),
    "audioset": ("balanced_train_segments.csv", ", ", "# YTID, start_seconds, end_seconds, positive_labels",
                 ["abcdefghijk", "30.000", "40.000", '"/m/09x0r,/m/04rlf"', "/m/nope"]),
    "epic-kitchens": ("EPIC_100_train.csv", ",", "narration_id,participant_id,video_id,start_timestamp,"
                      "stop_timestamp,verb,verb_class,noun,noun_class",
                      ["P01_01_0", "P01", "P01_01", "00:00:00.14", "00:00:03.37", "open", "3", "door", "-1"]),
    "csv": ("list.csv", ",", "path,label,split,start,end",
            ["a.mp4", "../x.mp4", "/etc/passwd", "dog;cat", "train", "validation", "1.5", "", "nan"]),
    "ave": ("Annotations.txt", "&", "Category&VideoID&Quality&StartTime&EndTime",
            ["Church bell", "abcdefghijk", "good", "0", "10", "11", "-1"]),
    "ucf101": ("trainlist01.txt", " ", None, ["ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi", "1", "0", "102"]),
}
EXTRA = {  # the other files a reader needs, fixed
    "audioset": {"class_labels_indices.csv": 'index,mid,display_name\n0,/m/09x0r,"Speech"\n1,/m/04rlf,"Music"\n'},
    "ucf101": {"classInd.txt": "1 ApplyEyeMakeup\n2 Archery\n", "testlist01.txt": "Archery/v_Archery_g01_c01.avi\n"},
    "ave": {"trainSet.txt": "Church bell&abcdefghijk&good&0&10\n", "valSet.txt": "", "testSet.txt": ""},
}


@st.composite
def manifest_case(draw) -> tuple[str, dict[str, str]]:
    name = draw(st.sampled_from(sorted(MANIFESTS)))
    fname, sep, header, values = MANIFESTS[name]
    field = st.one_of(st.sampled_from(values), nasty)
    rows = draw(st.lists(st.lists(field, min_size=0, max_size=9), max_size=6))
    lines = ([header] if header is not None and draw(st.integers(0, 5)) else []) + [sep.join(r) for r in rows]
    text = draw(st.sampled_from(["\n", "\r\n"])).join(lines) + ("\n" if draw(st.booleans()) else "")
    if draw(st.integers(0, 6)) == 0:
        text = draw(st.text(max_size=60))
    return name, {fname: text, **EXTRA.get(name, {})}


@FUZZ
@given(case=manifest_case())
def test_fuzz_manifest_readers(case):
    name, files = case
    with tempfile.TemporaryDirectory() as tmp:
        root, ann = Path(tmp) / "media", Path(tmp) / "ann"
        for p in ("a.mp4", "abcdefghijk.mp4", "P01/videos/P01_01.MP4", "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi"):
            (root / p).parent.mkdir(parents=True, exist_ok=True)
            (root / p).write_bytes(b"\x00")
        ann.mkdir()
        paths = []
        for fname, text in files.items():
            (ann / fname).write_bytes(text.encode("utf-8", errors="surrogatepass"))
            paths.append(ann / fname)
        got = refused_or_ok(lambda: read_manifest(name, root, paths))
        tally("manifest CSV", got)


# ------------------------------------------------------------------------------------ run folders

FINAL = {"head": "fused", "clip_top1": 12.5, "video_top1": 12.5, "video_top5": 62.5, "train_top1": 12.5,
         "val_loss": 2.1, "train_loss": 2.1, "heads": {h: {"clip_top1": 10.0, "video_top1": 10.0, "video_top5": 60.0,
                                                          "train_top1": 10.0} for h in ("audio", "rgb", "fused")},
         "method": "gblend", "modalities": ["audio", "rgb"], "seed": 1, "epochs": 2,
         "weights": {"audio": 0.2, "rgb": 0.3, "fused": 0.5}, "dataset": "demo",
         "splits": {"T": 16, "V": 8, "T_prime": 16, "val": 8}, "seconds": 1.0, "mode": "offline", "format_version": 1}
ROW = {"epoch": 0, "lr": 0.05, "weights": {"audio": 0.3, "rgb": 0.3, "fused": 0.4},
       **{s: {h: {"loss": 2.1, "top1": 12.5, "loss_se": 0.1, "n": 8} for h in ("audio", "rgb", "fused")}
          for s in ("train", "holdout", "val")}}


def damage(text: str, draw) -> str:
    kind = draw(st.integers(0, 4))
    if kind == 0 or not text:
        return text
    i = draw(st.integers(0, len(text) - 1))
    if kind == 1:
        return text[:i]  # cut short
    if kind == 2:
        return text[:i] + draw(nasty) + text[i + 1:]  # replaced
    if kind == 3:
        return text[:i] + text[i + 1:]
    return text[:i] + draw(st.sampled_from(["\n", "{", "null", "\x00"])) + text[i:]


@st.composite
def run_folder_case(draw) -> dict[str, str]:
    final = json.loads(json.dumps(FINAL))
    for key in draw(st.lists(st.sampled_from(sorted(FINAL)), max_size=3, unique=True)):
        final[key] = draw(st.one_of(toml_values, st.dictionaries(nasty, scalars, max_size=2), st.none()))
    rows = []
    for e in range(draw(st.integers(0, 3))):
        row = json.loads(json.dumps(ROW)) | {"epoch": e}
        if draw(st.integers(0, 3)) == 0:
            row[draw(st.sampled_from(sorted(ROW)))] = draw(st.one_of(scalars, st.none()))
        rows.append(json.dumps(row))
    files = {"final.json": json.dumps(final), "metrics.jsonl": "".join(r + "\n" for r in rows),
             "blend_weights.jsonl": json.dumps({"epoch": 0, "heads": {}}) + "\n",
             "config.toml": "[train]\nepochs = 2\n"}
    target = draw(st.sampled_from(sorted(files)))
    files[target] = damage(files[target], draw)
    return files


def _final_with(**fields) -> dict[str, str]:
    return {"final.json": json.dumps(FINAL | fields), "metrics.jsonl": "", "config.toml": ""}


@FUZZ
@given(files=run_folder_case())
@example(files=_final_with(format_version=""))  # found by this test: TypeError tracebacks in report
@example(files=_final_with(clip_top1=""))
@example(files=_final_with(heads={"fused": {"clip_top1": "x"}}))
@example(files=_final_with() | {"blend_weights.jsonl": '{"epoch": 0, "eads": {}}\n'})  # found at 1,000 cases: KeyError
def test_fuzz_run_folders(files):
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "results" / "run"
        run.mkdir(parents=True)
        for name, text in files.items():
            (run / name).write_bytes(text.encode("utf-8", errors="surrogatepass"))
        folder = RunFolder(run, writer=False)
        refused_or_ok(lambda: (folder.final(), folder.key(), folder.metrics(), folder.blend_rows(),
                               RunFolder.discover(run.parent)))
        got = assert_cli(*cli("report", "--results", run.parent, "--table", "4", "--format", "json", "--recipe", "-"))
        shutil.rmtree(run.parent / "report", ignore_errors=True)
        tally("run folders", got)
