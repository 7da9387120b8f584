"""`prepare-data`: media files -> the prepared dataset a data loader reads without decoding video.

Layout of a prepared dataset DIR (one .npy per clip and modality, read memory-mapped so a
training clip reads only its own frames):
  DIR/dataset.json          classes, sampling settings, counts, format version
  DIR/index.csv             one row per clip: clip_id, split, labels, seconds, frames, has_audio, status, reason,
                            source, checksums, group (the source group the held-out split keeps whole)
  DIR/rgb/<clip>.npy        (T, H, W, 3) uint8, T = seconds * fps, short side = prepare.short_side
  DIR/audio/<clip>.npy      (A, 40) float16 log-mel, A = 100 per second (silence when has_audio is false)
  DIR/flow/<clip>.npy       (T, H, W, 2) uint8 quantised flow (frame t -> t+1)
  DIR/prepare_report.json   {"ok", "no_audio", "failed": [{"clip", "reason", "transient"...}], ...}
  DIR/oracle.json           the demo only: per split, the videos showing each cue and the best video top-1
                            any model of each stream set could reach (demo_data.oracle)
  DIR/progress.jsonl        journal: one line per finished clip; a rerun skips those (resume), except
                            clips that failed for a transient reason (a timeout, a killed worker, out of
                            memory; up to prepare.transient_tries times running) and clips whose
                            annotations now name another file or span
Every array is written to a temp file and renamed, so a killed run leaves no partial array.

The main process never holds per-clip state in memory: the manifest is read as a stream, and the
plan (clips to do, rows without a clip, the journal's records) lives in a scratch SQLite file in
DIR while the command runs (`prepare_plan._Plan`), so preparing Kinetics-400 (260k clips) costs
it the same memory as 10k clips.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import re
from pathlib import Path

from . import DATASET_FORMAT_VERSION, FORMAT_VERSION
from .config import data_dir, read_saved_toml, saved_value, to_toml
from .clip_files import write_output
from .integrity import format_checksums
from .errors import OutOfSpace, UserError
from .storage import (append_jsonl, folder_lock, remove_stale_temps, require_known_format,
                      write_json_atomic, write_lines_atomic, write_text_atomic)
from .ui import console, progress
from .prepare_plan import _Plan
from .workers import ClipPool, clip_record, failed_record, is_transient, quiet_worker, source_stat, worker_context

SETTINGS_KEYS = ("fps", "short_side", "max_seconds", "flow", "flow_bound", "store")


def prepare_one(spec: dict, settings: dict) -> dict:
    """Decode one clip and write its modality arrays. Returns its journal record."""
    import numpy as np

    from .media import DecodeError, decode_clip, log_mel, optical_flow, silence_log_mel

    stat = source_stat(spec["path"])  # before decoding: a file replaced meanwhile is noticed by the next run
    rec = clip_record(spec) | ({"source_size": stat[0]} if stat else {})
    out = Path(settings["out"])
    try:
        clip = decode_clip(spec["path"], fps=settings["fps"], short_side=settings["short_side"],
                           start=spec.get("start"), end=spec.get("end"), max_seconds=settings["max_seconds"],
                           span_if_longer=spec.get("span_if_longer", False))
    except DecodeError as e:
        return failed_record(spec, str(e))
    n_audio = int(round(clip.seconds * 100))
    has_audio = clip.audio is not None
    mel = log_mel(clip.audio) if has_audio else silence_log_mel(n_audio)
    if len(mel) < n_audio:  # pad a short tail with the last frame
        pad = silence_log_mel(n_audio - len(mel)) if len(mel) == 0 else np.repeat(mel[-1:], n_audio - len(mel), axis=0)
        mel = np.concatenate([mel, pad])
    mel = mel[:n_audio].astype(np.float16)
    flow = optical_flow(clip.frames, settings["flow"], settings["flow_bound"]) if settings["flow"] != "none" else None
    files = {}  # what each written file must be ("SIZE:CRC32"): index.csv, --check and the loader verify it
    if settings.get("store", "npy") == "packed":
        from .store import SUFFIX, encode_clip

        files["clip"] = write_output(out / "clips" / f"{spec['clip_id']}{SUFFIX}", encode_clip(clip.frames, flow, mel))
    else:
        arrays = {"rgb": clip.frames, "audio": mel} | ({"flow": flow} if flow is not None else {})
        for m, arr in arrays.items():
            buf = io.BytesIO()
            np.save(buf, arr, allow_pickle=False)
            files[m] = write_output(out / m / f"{spec['clip_id']}.npy", buf.getvalue())
    return {**rec, "status": "ok", "has_audio": has_audio, "seconds": round(clip.seconds, 4),
            "frames": int(clip.frames.shape[0]), "height": int(clip.frames.shape[1]), "width": int(clip.frames.shape[2]),
            "files": files}


def probe_one(spec: dict, settings: dict) -> dict:
    """Check one clip's media file without preparing it (`prepare-data --check` on a media folder)."""
    from .media import DecodeError, probe_media

    rec = clip_record(spec)
    try:
        found = probe_media(spec["path"], spec.get("start"), spec.get("end"), spec.get("span_if_longer", False))
    except DecodeError as e:
        return failed_record(spec, str(e))
    return {**rec, "status": "ok", **found}


def _check_settings(out: Path, cfg: dict) -> None:
    """A resumed preparation must use the settings the folder was started with."""
    meta = out / "dataset.json"
    if meta.exists():
        try:
            require_known_format(json.loads(meta.read_text()), meta, DATASET_FORMAT_VERSION)
        except json.JSONDecodeError:
            raise UserError(f"{meta}: not valid JSON; use another --out") from None
    saved = out / "prepare_config.toml"
    if not saved.exists():
        return
    old = read_saved_toml(saved, "use another --out")
    held = old.get("dataset", {}).get("name")
    if held != cfg["dataset"]["name"]:
        raise UserError(f"{out}: holds dataset {held!r}, not {cfg['dataset']['name']!r}")
    # another split or class subset is another dataset; other generator settings would mix two in one folder
    keys = [("prepare", k) for k in SETTINGS_KEYS] + [("dataset", "ucf_split"), ("dataset", "classes")]
    keys += [("demo", k) for k in cfg["demo"]] if cfg["dataset"]["name"] == "demo" else []
    for section, key in keys:
        before = saved_value(old, section, key)
        if before != cfg[section][key]:
            raise UserError(f"{out}: was prepared with {section}.{key}={before!r}, now {cfg[section][key]!r}; "
                            f"use the same settings to resume or another --out")


def _load_manifest(cfg: dict, out: Path, db):
    """The recipe's dataset as a manifest stream (manifests.open_manifest), its bookkeeping in `db`."""
    from .manifests import KNOWN_DATASETS, ManifestError, open_manifest

    ds = cfg["dataset"]
    name = ds["name"]
    if name != "demo" and name.lower().replace("_", "-") not in KNOWN_DATASETS:
        raise UserError(f"--dataset: unknown dataset {name!r} (choose from demo, {', '.join(KNOWN_DATASETS)})")
    if name == "demo":
        root, annotations = generate_demo_media(cfg, out / "media")
        name = "kinetics400"  # the demo goes through exactly the Kinetics reader
    else:
        if not ds["root"] and name not in ("csv",):
            raise UserError(f"--root is required for --dataset {name} (the folder of media files)")
        root = Path(ds["root"] or ".")
        if not root.is_dir():
            raise UserError(f"{root}: no such media folder (--root)")
        annotations = annotation_files(name, ds["annotations"])
        if not annotations and name not in ("cremad", "folder"):
            raise UserError(f"--annotations is required for --dataset {name}")
    try:
        return open_manifest(name, root, annotations, db=db, allow_outside_root=ds["allow_outside_root"],
                             label_field=ds["label_field"], classes=ds["classes"] or None, ucf_split=ds["ucf_split"])
    except ManifestError as e:
        raise UserError(str(e)) from None


def annotation_files(name: str, given: list[str]) -> list[Path]:
    """--annotations as files. For ave and ucf101 a folder stands for its annotation files (AVE's
    Annotations.txt / trainSet.txt / valSet.txt / testSet.txt; UCF-101's ucfTrainTestlist/)."""
    from .manifests import normalise_name

    name = normalise_name(name)
    files = []
    for a in map(Path, given):
        if a.is_dir() and name in ("ave", "ucf101"):
            pattern = re.compile(r"(annotations|trainset|valset|testset)\.txt" if name == "ave" else
                                 r"(classind|trainlist0[1-3]|testlist0[1-3])\.txt", re.IGNORECASE)
            found = sorted(p for p in a.iterdir() if p.is_file() and pattern.fullmatch(p.name))
            if not found:
                raise UserError(f"{a}: no {name} annotation files in this folder (--annotations)")
            files += found
        elif not a.is_file():
            raise UserError(f"{a}: no such annotation file (--annotations)")
        else:
            files.append(a)
    return files


def generate_demo_media(cfg: dict, media: Path) -> tuple[Path, list[Path]]:
    """Render the demo's mp4 files (resumable: existing files are kept) and its Kinetics CSVs."""
    from . import demo_data

    p = cfg["demo"]
    jobs = demo_data.video_jobs(media, p, p["seed"])
    todo = [j for j in jobs if not Path(j["path"]).exists()]
    if todo:
        workers = max(1, cfg["prepare"]["workers"])
        with progress() as bar:
            task = bar.add_task("render demo videos", total=len(todo), info="")
            if workers == 1:
                for j in todo:
                    demo_data.render_job(j, p)
                    bar.advance(task)
            else:
                with worker_context().Pool(workers, initializer=quiet_worker) as pool:
                    for _ in pool.imap_unordered(_render_demo_job, [(j, p) for j in todo], chunksize=4):
                        bar.advance(task)
    # what each stream could score at best on these videos (report: Table 1's oracle column); a rerun
    # keeps it: the folder's generator settings cannot change (_check_settings)
    if not (media.parent / demo_data.ORACLE_FILE).exists():
        write_json_atomic(media.parent / demo_data.ORACLE_FILE, demo_data.oracle(jobs, p))
    return media / "videos", demo_data.write_annotations(media, jobs)


def _render_demo_job(args):
    from . import demo_data

    return demo_data.render_job(*args)


def _remove_stale_scratch(out: Path) -> None:
    """Scratch files a killed run left behind (we hold the folder's lock: none is in use)."""
    for p in out.glob(".gblend-scratch-*.sqlite"):
        with contextlib.suppress(OSError):
            p.unlink()
    remove_stale_temps(out, *(out / d for d in ("rgb", "audio", "flow", "clips")))  # arrays a kill cut off


def prepare_dataset(cfg: dict, out: Path | None = None) -> dict:
    """Prepare every clip of the recipe's dataset into `out`; resumable; returns the report (whose
    "failed" list is cut at REPORT_FAILED_MAX entries; prepare_report.json has them all).

    The main process streams: manifest rows, the plan, the journal and the outputs go through a
    scratch SQLite file in `out` (removed at the end), so its memory is the same for 10k and
    260k clips (benchmarks/scale.py measures it)."""
    from .storage import ScratchDB

    out = Path(out or data_dir(cfg))
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder (--out)")
    with folder_lock(out, "prepare-data"):
        _check_settings(out, cfg)
        _remove_stale_scratch(out)
        with ScratchDB(out) as db:
            stream = _load_manifest(cfg, out, db)
            plan = _Plan(db, stream.root)
            plan.add(stream)
            if not plan.n_clips and not plan.n_missing:
                raise UserError(f"dataset {cfg['dataset']['name']}: the annotations list no clips")
            write_text_atomic(out / "prepare_config.toml", to_toml(cfg))  # only a valid command claims the folder
            journal = out / "progress.jsonl"
            tries = cfg["prepare"]["transient_tries"]
            again = plan.load_journal(journal, out, tries)
            for why, what in (("cut", "prepared clips have missing or cut-short files: preparing them again"),
                              ("moved", "clips now name another media file or span of it in the annotations: "
                                        "preparing them again"),
                              ("replaced", "clips were prepared from a media file whose size has changed since (a "
                                           "file replaced): preparing them again"),
                              ("transient", "clips failed for a transient reason last time (a timeout, a killed "
                                            "worker, out of memory): trying them again"),
                              ("fixed", "clips failed on a media file that has been replaced since: trying them again")):
                if again[why]:
                    console.print(f"{again[why]} {what}")
            if again["given_up"]:
                console.print(f"{again['given_up']} clips failed for a transient reason {tries} times running on the same "
                              f"file: left failed; to try them again: --set prepare.transient_tries=0 (with more time "
                              f"or memory: a larger prepare.decode_timeout_s, fewer --workers)")
            if plan.damaged_lines:
                console.print(f"{journal}: {len(plan.damaged_lines)} damaged lines (first: line "
                              f"{plan.damaged_lines[0]}) ignored; the clips they recorded are prepared again")
            n_todo = plan.count_todo()
            settings = {k: cfg["prepare"][k] for k in SETTINGS_KEYS} | {"out": str(out)}
            if n_todo:
                pool = ClipPool(cfg["prepare"]["workers"], prepare_one, settings, cfg["prepare"]["threads"],
                                cfg["prepare"]["decode_timeout_s"])
                n_failed = 0
                try:
                    with progress() as bar:
                        task = bar.add_task("prepare clips", total=n_todo, info="")
                        for rec in pool.run(plan.todo()):
                            if rec["status"] == "output_error":
                                raise OutOfSpace(f"{rec['reason']}; free space (or make {out} writable), then run the "
                                                 f"same prepare-data command again: the {plan.n_done()} clips "
                                                 f"prepared so far are kept")
                            append_jsonl(journal, rec)
                            plan.record(rec)
                            n_failed += rec["status"] != "ok"
                            bar.update(task, advance=1, info=f"failed {n_failed}")
                except (OutOfSpace, OSError):
                    pool.close()
                    raise  # one line naming the file and the fix, exit 1
                except KeyboardInterrupt:
                    pool.close()
                    console.print(f"{plan.n_done()} of {plan.n_clips} clips are prepared in {out}")
                    raise  # the CLI says how to resume and exits 130
                pool.close()
            report = write_outputs(out, cfg, stream, plan)
    return report


REPORT_FAILED_MAX = 1000
INDEX_COLUMNS = ["clip_id", "split", "labels", "seconds", "frames", "has_audio", "status", "reason", "source",
                 "checksums", "group"]  # group: the clip's source group (data.split_holdout keeps it whole)


def _csv_line(fields: list) -> str:
    buf = io.StringIO()
    csv.writer(buf).writerow(fields)
    return buf.getvalue()


def write_outputs(out: Path, cfg: dict, stream, plan: _Plan) -> dict:
    """index.csv, dataset.json and prepare_report.json, streamed from the plan."""
    def index_lines():
        yield _csv_line(INDEX_COLUMNS)
        for r in plan.records():
            yield _csv_line([r["clip"], r["split"], ";".join(map(str, r["labels"])), r.get("seconds", ""),
                             r.get("frames", ""), str(r.get("has_audio", "")).lower(), r["status"], r.get("reason", ""),
                             r["source"], format_checksums(r.get("files") or {}), r["group"]])

    write_lines_atomic(out / "index.csv", index_lines())
    per_split = plan.ok_per_split()
    n_ok = sum(n for n, _ in per_split.values())
    packed = cfg["prepare"]["store"] == "packed"
    meta = {
        "format_version": DATASET_FORMAT_VERSION if packed else FORMAT_VERSION,  # older gblends read npy folders
        "store": cfg["prepare"]["store"],
        "dataset": cfg["dataset"]["name"],
        "classes": stream.classes,
        "multilabel": stream.multilabel,
        "fps": cfg["prepare"]["fps"],
        "short_side": cfg["prepare"]["short_side"],
        "sample_rate": 16000,
        "audio_frames_per_second": 100,
        "mel_bands": 40,
        "flow": cfg["prepare"]["flow"],
        "flow_bound": cfg["prepare"]["flow_bound"],  # flow is uint8 over +-flow_bound px (the model reads px / bound)
        "modalities": ["audio", "rgb"] + ([] if cfg["prepare"]["flow"] == "none" else ["flow"]),
        "clips": {s: n for s, (n, _) in per_split.items()},
    }
    if stream.dataset == "ucf101":
        meta["ucf_split"] = cfg["dataset"]["ucf_split"]
    write_json_atomic(out / "dataset.json", meta)

    def failed():
        for r in plan.records("d.status != 'ok'"):
            yield {"clip": r["clip"], "reason": r["reason"], "stage": "decode", "split": r["split"],
                   "transient": is_transient(r)}  # a rerun tries it again
        yield from plan.missing()

    head = []
    n_failed = 0

    def failed_json():
        nonlocal n_failed
        for entry in failed():
            if len(head) < REPORT_FAILED_MAX:
                head.append(entry)
            n_failed += 1
            yield entry

    report = {
        "ok": n_ok,
        "no_audio": sum(a for _, a in per_split.values()),
        "failed": failed_json(),
        "missing_files": plan.n_missing,
        "total": plan.n_clips + plan.n_missing,
        "dataset": cfg["dataset"]["name"],
        "bytes_per_clip": _bytes_per_clip(out, plan, cfg["prepare"]["store"]),
        "rows": stream.rows,  # annotation rows per split (the expected clips), None without annotation files
        "dropped_rows": stream.dropped,  # rows of classes outside dataset.classes
    }
    shared, examples = plan.groups_in_two_splits()
    report["sources_in_two_splits"] = {"count": shared, "examples": examples}  # train and val share a source
    write_lines_atomic(out / "prepare_report.json", _json_lines(report))
    return report | {"failed": head, "failed_count": n_failed}


def _json_lines(obj: dict):
    """`obj` as indented JSON, pieces at a time; a generator value is written as a list, one
    element per line (the report's failed list: up to one entry per annotation row)."""
    yield "{\n"
    items = list(obj.items())
    for k, (key, value) in enumerate(items):
        yield f"  {json.dumps(key)}: "
        if hasattr(value, "__next__"):
            first = True
            yield "["
            for element in value:
                yield ("\n    " if first else ",\n    ") + json.dumps(element)
                first = False
            yield "]" if first else "\n  ]"
        else:
            yield json.dumps(value)
        yield ",\n" if k < len(items) - 1 else "\n"
    yield "}\n"


def _bytes_per_clip(out: Path, plan: _Plan, store: str = "npy") -> dict:
    """Mean bytes per clip and modality over the first 50 prepared clips ("file": the whole packed
    file, index included)."""
    sizes: dict[str, list[int]] = {}
    if store == "packed":  # (numpy, which the store's index needs, stays out of the main process otherwise)
        from .store import Reader, StoreError

        reader = Reader(out, keep=1)
    for k, r in enumerate(plan.records("d.status = 'ok'")):
        if k >= 50:
            break
        if store == "packed":
            try:
                found = reader.head(r["clip"]).bytes_of() | {"file": reader.path(r["clip"]).stat().st_size}
            except (OSError, StoreError):
                continue
            for m, n in found.items():
                sizes.setdefault(m, []).append(n)
            continue
        for m in ("rgb", "audio", "flow"):
            p = out / m / f"{r['clip']}.npy"
            if p.exists():
                sizes.setdefault(m, []).append(p.stat().st_size)
    return {m: int(sum(v) / len(v)) for m, v in sizes.items()}
