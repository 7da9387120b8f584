"""Section 1, decoding: prepare-data clips/s per worker against the ffmpeg command line decoding the
same files; 1 vs 2 workers; peak memory of the preparing processes, small vs large dataset.

Every measurement runs in a fresh process (benchmarks/_child.py), so peak RSS is the preparing
run's own and not this process's.
"""

from __future__ import annotations

import shutil

from .common import DEMO_RECIPE, Ctx, fmt_rate, log, med, paired_ratio

def find_ffmpeg() -> tuple[str | None, str]:
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe(), "imageio-ffmpeg"
    except (ImportError, RuntimeError):
        pass
    exe = shutil.which("ffmpeg")
    return (exe, "PATH") if exe else (None, "")


def section_decode(ctx: Ctx) -> None:
    S = ctx.S
    log(f"1 decode: peak memory, {S['mem_small']} vs {S['train_videos'] + S['test_videos']} clips (fresh process each)")
    small = ctx.memory_run("small")
    large = ctx.memory_run("large")
    ctx.details["memory_small"], ctx.details["memory_large"] = small, large
    log(f"  small: {small['clips']} clips, max RSS main {small['maxrss_main_kb'] / 1024:.0f} MB, workers "
        f"{small['maxrss_children_kb'] / 1024:.0f} MB; large: {large['clips']} clips, main "
        f"{large['maxrss_main_kb'] / 1024:.0f} MB, workers {large['maxrss_children_kb'] / 1024:.0f} MB")

    exe, source = find_ffmpeg()
    if exe is None:
        log("  ffmpeg: not found (pip install -e '.[bench]' installs imageio-ffmpeg, which ships one): "
            "the decode-vs-ffmpeg ratio is skipped")
    log(f"1 decode: clips/s, {S['decode_clips']} clips, {S['reps']} interleaved repetitions")
    res = ctx.child("decode", {"recipe": str(DEMO_RECIPE), "root": str(ctx.media / "videos"),
                               "annotations": [ctx.ann_decode], "work": str(ctx.work / "decode"),
                               "ffmpeg": exe or "", "reps": S["reps"], "stage_clips": S["stage_clips"]}, "decode")
    ctx.details["decode"] = res | {"ffmpeg_source": source, "ffmpeg": exe}
    w1 = [s["clips_per_s"] for s in res["samples"]["prepare_w1"]]
    w2 = [s["clips_per_s"] for s in res["samples"]["prepare_w2"]]
    if exe:
        ffmpeg_rows(ctx, res, w1)
    else:
        ctx.table.add("1", "prepare-data, 1 worker vs `ffmpeg` CLI", fmt_rate(med(w1)), "ffmpeg not installed", None,
                      note="skipped: no ffmpeg binary (pip install -e '.[bench]')")
    ctx.table.add("1", "prepare-data, 2 workers vs 1 worker (ideal 2.0x; 2 cores, shared)",
                  f"{fmt_rate(med(w2))} ({med(w2) / 2:.1f}/worker)", fmt_rate(med(w1)), paired_ratio(w2, w1))
    memory_rows(ctx, small, large)
    ctx.details["decode_stage_note"] = ", ".join(f"{k} {v['median_ms']:.1f} ms" for k, v in res["stages"].items()) + (
        f"; {ctx.details['decode_ffmpeg_note']}" if "decode_ffmpeg_note" in ctx.details else "")
    log("  per clip: " + ctx.details["decode_stage_note"])


def ffmpeg_rows(ctx: Ctx, res: dict, w1: list[float]) -> None:
    """prepare-data at 1 worker vs the ffmpeg CLI: per file, and with the command's start-up taken out."""
    T = ctx.table
    ff = [s["clips_per_s"] for s in res["samples"]["ffmpeg"]]
    T.add("1", f"prepare-data, 1 worker vs `ffmpeg` CLI decode to raw frames+audio (1 process per file, -threads 1), "
               f"{res['clips']} demo clips", fmt_rate(med(w1)), fmt_rate(med(ff)), paired_ratio(w1, ff))
    start_ms = [s["ms_per_command"] for s in res["samples"]["ffmpeg_start"]]
    if "ffmpeg_long" in res["samples"]:
        # the stable baseline: all clips through one ffmpeg command; its start-up share is reported
        long_ = [s["clips_per_s"] for s in res["samples"]["ffmpeg_long"]]
        share = med([st / 1000 / s["wall_s"] for st, s in zip(start_ms, res["samples"]["ffmpeg_long"])])
        T.add("1", f"prepare-data, 1 worker vs ffmpeg decoding the same {res['clips']} clips in ONE command (concat "
                   f"demuxer, -threads 1; its start-up {share:.0%} of its time): the stable decode baseline",
              fmt_rate(med(w1)), fmt_rate(med(long_)), paired_ratio(w1, long_), note=f"start-up share {share:.3f}")
    # per-file time minus the command start of the same repetition (a rep where noise makes it <= 0 is dropped)
    pairs = [(w, 1000 / (1000 / f - st)) for w, f, st in zip(w1, ff, start_ms) if 1000 / f - st > 0.5]
    figure = (f"prepare-data, 1 worker vs ffmpeg decode alone (per-file time minus the {med(start_ms):.0f} ms "
              f"start of an ffmpeg command, measured alongside)")
    if len(pairs) >= (len(w1) + 1) // 2:
        T.add("1", figure, fmt_rate(med([w for w, _ in pairs])), fmt_rate(med([d for _, d in pairs])),
              paired_ratio([w for w, _ in pairs], [d for _, d in pairs]),
              note=f"{len(pairs)} of {len(w1)} repetitions usable")
    else:
        T.add("1", figure, fmt_rate(med(w1)), "n/a", None,
              note="command start-up >= per-file time in most repetitions (noise): not computed")
    ctx.details["decode_ffmpeg_note"] = (f"ffmpeg CLI {1000 / med(ff):.1f} ms per file, of which "
                                         f"{med(start_ms):.1f} ms starting the command")


def memory_rows(ctx: Ctx, small: dict, large: dict) -> None:
    """Peak memory of the large vs the small preparing run, and the main process's growth per clip
    extrapolated to Kinetics-400."""
    T = ctx.table
    for key, label in (("maxrss_children_kb", "largest preparing process (worker), max RSS"),
                       ("maxrss_main_kb", "main process, max RSS"),
                       ("tree_pss_kb", "all preparing processes, peak total PSS (sampled 10/s)")):
        if not small[key]:
            continue
        r = large[key] / small[key]
        T.add("1", f"{label}: {large['clips']} vs {small['clips']} clips", f"{large[key] / 1024:.0f} MB",
              f"{small[key] / 1024:.0f} MB", r, "flat (<= 1.10x)", r <= 1.10)
    # (the main process's growth per clip is measured at Kinetics-400 scale in section 6, benchmarks/scale.py:
    # extrapolating a difference of a few hundred kB between these two runs would mostly extrapolate noise)
