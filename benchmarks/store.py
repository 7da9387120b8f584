"""Section 7, the prepared store: candidate formats on the same Kinetics-shaped clips (10 s, 15 fps,
short side 128 -> 128x171 RGB, DIS flow, 1,000 log-mel rows): bytes per clip, fidelity, and what
one loader core delivers of 16x112x112 RGB + flow + 100 log-mel rows, from the page cache and cold.

Candidates (each a prepared folder or its stand-in):
  npy      today's store: one raw .npy per clip and modality (PreparedDataset, pread windows)
  packed   gblend_cli/store.py: RGB JPEG q90 + quantised flow JPEG q95 (x|y side by side) + raw
           log-mel in one file per clip with a frame-offset index (PreparedDataset)
  h264     re-encoded short-side video, keyframe every 16 frames (libx264 CRF 23 for RGB, CRF 18
           for the flow image) + log-mel .npy; a window seeks to its keyframe and decodes (PyAV)
and a size reference: the same RGB and flow frames as H.264 CRF 23 with x264's default keyframe
interval (250), what a video file of these frames would take.

The clips: no Kinetics here, and synthetic patterns compress unlike video, so each clip pans a
128x171 window with sub-pixel motion over a real photograph (matplotlib's sample images), with an
object moving across it and sensor-like noise (sigma 2 grey levels). Flow is gblend's own DIS flow
of those frames. Sizes of real Kinetics frames will differ (more texture: larger JPEGs and videos
alike); the ratios between stores are what this measures.

    python -m benchmarks.run --only store          # a section of the benchmarks
    python -m benchmarks.store [--clips 8]          # alone
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

from .common import Ctx, Table, interleave, log, med, paired_ratio

SECONDS, FPS, SHORT, LONG = 10, 15, 128, 171
WINDOW, CROP, AUDIO = 16, 112, 100
BATCH = 16


# --- the clips --------------------------------------------------------------------------------------
def photographs() -> list[np.ndarray]:
    import matplotlib.cbook as cbook
    from PIL import Image

    hopper = np.asarray(Image.open(cbook.get_sample_data("grace_hopper.jpg")).convert("RGB"))
    present = np.asarray(Image.open(cbook.get_sample_data("Minduka_Present_Blue_Pack.png")).convert("RGB"))
    return [hopper, hopper[:, ::-1].copy(), present]


def synth_clip(rng, base: np.ndarray, other: np.ndarray) -> np.ndarray:
    """(150, 128, 171, 3) uint8: a window panning over `base` (scaled so its short side is 220 px)
    with sub-pixel motion, a 40x40 patch of `other` crossing it, and noise."""
    import cv2

    h, w = base.shape[:2]
    scale = 220 / min(h, w)
    big = cv2.resize(base, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA).astype(np.float32)
    patch = cv2.resize(other, (40, 40), interpolation=cv2.INTER_AREA).astype(np.float32)
    H, W = big.shape[:2]
    x, y = rng.uniform(0, W - LONG), rng.uniform(0, H - SHORT)
    vx, vy = rng.uniform(-1.5, 1.5), rng.uniform(-1.0, 1.0)
    px, py, pvx, pvy = rng.uniform(0, LONG - 40), rng.uniform(0, SHORT - 40), rng.uniform(1, 3), rng.uniform(-1, 1)
    frames = np.empty((SECONDS * FPS, SHORT, LONG, 3), np.uint8)
    for t in range(len(frames)):
        m = np.float32([[1, 0, -x], [0, 1, -y]])
        img = cv2.warpAffine(big, m, (LONG, SHORT), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        ix, iy = int(px) % (LONG - 40), int(abs(py)) % (SHORT - 40)
        img[iy:iy + 40, ix:ix + 40] = 0.3 * img[iy:iy + 40, ix:ix + 40] + 0.7 * patch
        img += rng.normal(0, 2.0, img.shape).astype(np.float32)
        frames[t] = np.clip(img, 0, 255).astype(np.uint8)
        x, y, px, py = x + vx, y + vy, px + pvx, py + pvy
        if not 0 <= x <= W - LONG:
            vx, x = -vx, min(max(x, 0), W - LONG)
        if not 0 <= y <= H - SHORT:
            vy, y = -vy, min(max(y, 0), H - SHORT)
    return frames


def make_clips(k: int, seed: int = 0) -> list[dict]:
    """`k` clips: frames, DIS flow (gblend's own), log-mel of a synthetic sound (gblend's own)."""
    import cv2

    from gblend_cli.media import SAMPLE_RATE, log_mel, optical_flow

    cv2.setNumThreads(1)
    rng = np.random.default_rng(seed)
    photos = photographs()
    clips = []
    for i in range(k):
        frames = synth_clip(rng, photos[i % len(photos)], photos[(i + 1) % len(photos)])
        t = np.arange(SECONDS * SAMPLE_RATE) / SAMPLE_RATE
        wave = 0.3 * np.sin(2 * np.pi * rng.uniform(200, 3000) * t) + 0.05 * rng.standard_normal(len(t))
        mel = log_mel(wave.astype(np.float32))[:SECONDS * 100].astype(np.float16)
        clips.append({"id": f"clip{i:03d}", "rgb": frames, "flow": optical_flow(frames, "dis"), "audio": mel})
    return clips


# --- writing the stores ----------------------------------------------------------------------------
def _dataset(folder: Path, clips: list[dict], store: str) -> None:
    from gblend_cli import DATASET_FORMAT_VERSION, FORMAT_VERSION

    meta = {"format_version": DATASET_FORMAT_VERSION if store == "packed" else FORMAT_VERSION, "store": store,
            "dataset": "bench", "classes": ["a"], "multilabel": False, "fps": FPS, "short_side": SHORT,
            "modalities": ["audio", "rgb", "flow"], "clips": {"train": len(clips)}}
    (folder / "dataset.json").write_text(json.dumps(meta))
    with open(folder / "index.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["clip_id", "split", "labels", "seconds", "frames", "has_audio", "status", "reason", "source"])
        for c in clips:
            w.writerow([c["id"], "train", "0", SECONDS, len(c["rgb"]), "true", "ok", "", ""])


def write_npy(folder: Path, clips: list[dict]) -> dict[str, list[Path]]:
    files: dict[str, list[Path]] = {}
    for c in clips:
        for m in ("rgb", "flow", "audio"):
            p = folder / m / f"{c['id']}.npy"
            p.parent.mkdir(parents=True, exist_ok=True)
            np.save(p, c[m])
            files.setdefault(c["id"], []).append(p)
    _dataset(folder, clips, "npy")
    return files


def write_packed(folder: Path, clips: list[dict]) -> dict[str, list[Path]]:
    from gblend_cli.store import SUFFIX, write_clip

    files = {}
    for c in clips:
        p = folder / "clips" / f"{c['id']}{SUFFIX}"
        write_clip(p, c["rgb"], c["flow"], c["audio"])
        files[c["id"]] = [p]
    _dataset(folder, clips, "packed")
    return files


def encode_video(path: Path, frames: np.ndarray, crf: int, gop: int | None, grey: bool = False) -> None:
    """H.264 (libx264, yuv420p, 1 thread) of (T, H, W, 3) RGB or (T, H, W) grey frames; odd
    widths are padded by one column (yuv420p needs even sizes)."""
    import av

    h, w = frames.shape[1:3]
    pad = w % 2
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=Fraction(FPS))
        s.width, s.height, s.pix_fmt = w + pad, h, "yuv420p"
        opts = {"crf": str(crf), "preset": "medium", "threads": "1"}
        if gop:
            opts["x264-params"] = f"keyint={gop}:min-keyint={gop}:scenecut=0"
        s.options = opts
        for f in frames:
            if pad:
                f = np.concatenate([f, f[:, -1:]], axis=1)
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="gray" if grey else "rgb24")
            for pkt in s.encode(vf):
                out.mux(pkt)
        for pkt in s.encode(None):
            out.mux(pkt)


def flow_image(flow: np.ndarray) -> np.ndarray:
    return np.concatenate([flow[..., 0], flow[..., 1]], axis=2)  # (T, H, 2W): x | y


def write_h264(folder: Path, clips: list[dict], gop: int | None = 16, crf_rgb: int = 23, crf_flow: int = 18
               ) -> dict[str, list[Path]]:
    files = {}
    for c in clips:
        (folder / "rgb").mkdir(parents=True, exist_ok=True)
        (folder / "flow").mkdir(parents=True, exist_ok=True)
        (folder / "audio").mkdir(parents=True, exist_ok=True)
        rgb, flow, audio = (folder / "rgb" / f"{c['id']}.mp4", folder / "flow" / f"{c['id']}.mp4",
                            folder / "audio" / f"{c['id']}.npy")
        encode_video(rgb, c["rgb"], crf_rgb, gop)
        encode_video(flow, flow_image(c["flow"]), crf_flow, gop, grey=True)
        np.save(audio, c["audio"])
        files[c["id"]] = [rgb, flow, audio]
    return files


# --- reading -----------------------------------------------------------------------------------------
class H264Reader:
    """Window reads from the h264 candidate: open, seek to the keyframe at or before the window,
    decode to its end (one reused colour converter; the grey flow image's Y plane directly)."""

    def __init__(self, folder: Path):
        import av

        self.av, self.folder = av, folder
        self.reformatter = av.video.reformatter.VideoReformatter()

    def frames(self, path: Path, lo: int, n: int, grey: bool) -> np.ndarray:
        out = []
        with self.av.open(str(path)) as c:
            s = c.streams.video[0]
            s.thread_type, s.codec_context.thread_count = "SLICE", 1
            tb = s.time_base
            c.seek(int(lo / FPS / tb), stream=s, backward=True, any_frame=False)
            for frame in c.decode(s):
                k = round(float(frame.pts * tb) * FPS)
                if k < lo:
                    continue
                if grey:
                    plane = frame.planes[0]
                    out.append(np.frombuffer(plane, np.uint8).reshape(frame.height, plane.line_size)[:, :frame.width])
                else:
                    out.append(self.reformatter.reformat(frame, format="rgb24").to_ndarray())
                if len(out) == n:
                    break
        return np.stack(out)

    def window(self, clip: str, t0: int, y0: int, x0: int) -> dict[str, np.ndarray]:
        rgb = self.frames(self.folder / "rgb" / f"{clip}.mp4", t0, WINDOW, grey=False)[:, y0:y0 + CROP, x0:x0 + CROP]
        g = self.frames(self.folder / "flow" / f"{clip}.mp4", t0, WINDOW, grey=True)
        flow = np.stack([g[:, y0:y0 + CROP, x0:x0 + CROP], g[:, y0:y0 + CROP, LONG + x0:LONG + x0 + CROP]], -1)
        a0 = audio_start(t0)
        audio = np.load(self.folder / "audio" / f"{clip}.npy", mmap_mode="r")[a0:a0 + AUDIO]
        return {"rgb": np.ascontiguousarray(rgb), "flow": flow, "audio": np.ascontiguousarray(audio)}


def audio_start(t0: int) -> int:
    return max(0, min(int(round((t0 + WINDOW / 2) / FPS * 100 - AUDIO / 2)), SECONDS * 100 - AUDIO))


def loader(folder: Path):
    """ClipDataset over a prepared candidate folder, as training reads it (random windows and crops)."""
    from gblend_cli.data import ClipDataset, PreparedDataset

    ds = PreparedDataset(folder, cache_bytes=0)  # from the files, never a RAM copy
    clip_cfg = {"frames": WINDOW, "crop": CROP, "flip": False, "audio_frames": AUDIO}
    return ClipDataset(ds, [(i, -1) for i in range(len(ds.clips))], ["audio", "rgb", "flow"], clip_cfg, train=True)


def evict(paths) -> None:
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def warm(paths) -> None:
    for p in paths:
        with open(p, "rb") as f:
            while f.read(1 << 20):
                pass


# --- fidelity -------------------------------------------------------------------------------------
def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * np.log10(255 ** 2 / mse) if mse else float("inf")


def fidelity(clips: list[dict], read) -> dict:
    """RGB PSNR (dB) and flow error (px, after dequantisation) of a store's decoded frames."""
    from gblend_cli.media import FLOW_BOUND

    step = 2 * FLOW_BOUND / 255
    p, errs, big = [], [], []
    for c in clips:
        rgb, flow = read(c)
        p.append(psnr(rgb, c["rgb"]))
        d = np.abs(flow.astype(np.int16) - c["flow"].astype(np.int16))
        errs.append(float(d.mean()) * step)
        big.append(float((d > 1).mean()))
    return {"rgb_psnr_db": float(np.mean(p)), "flow_mae_px": float(np.mean(errs)), "flow_off_by_more_than_1_step": float(np.mean(big))}


# --- the measurement --------------------------------------------------------------------------------
def measure(work: Path, k: int, reps: int, batches: int) -> dict:
    from gblend_cli.store import Reader

    t = time.perf_counter()
    clips = make_clips(k)
    log(f"7 store: {k} clips of {SECONDS} s at {FPS} fps, {SHORT}x{LONG} (+ DIS flow, log-mel) in {time.perf_counter() - t:.1f}s")
    folders = {name: work / name for name in ("npy", "packed", "h264", "h264_ref")}
    for f in folders.values():
        shutil.rmtree(f, ignore_errors=True)
        f.mkdir(parents=True)
    t = time.perf_counter()
    files = {"npy": write_npy(folders["npy"], clips), "packed": write_packed(folders["packed"], clips),
             "h264": write_h264(folders["h264"], clips), "h264_ref": write_h264(folders["h264_ref"], clips, gop=None,
                                                                                crf_flow=23)}
    log(f"  stores written in {time.perf_counter() - t:.1f}s")

    def sizes(name):
        per = {"rgb": [], "flow": [], "audio": []}
        for c in clips:
            if name == "packed":
                for m, n in Reader(folders["packed"]).head(c["id"]).bytes_of().items():
                    per[m].append(n)
                per.setdefault("file", []).append(files["packed"][c["id"]][0].stat().st_size)
            else:
                for m, p in zip(("rgb", "flow", "audio"), files[name][c["id"]]):
                    per[m].append(p.stat().st_size)
        out = {m: float(np.mean(v)) for m, v in per.items()}
        out["total"] = out.get("file", out["rgb"] + out["flow"] + out["audio"])
        return out

    size = {name: sizes(name) for name in files}
    reader = Reader(folders["packed"])
    h264 = H264Reader(folders["h264"])
    fid = {
        "packed": fidelity(clips, lambda c: (reader.rows(c["id"], "rgb", 0, len(c["rgb"])),
                                             reader.rows(c["id"], "flow", 0, len(c["rgb"])))),
        "h264": fidelity(clips, lambda c: (h264.frames(folders["h264"] / "rgb" / f"{c['id']}.mp4", 0, len(c["rgb"]),
                                                       False)[:, :, :LONG],
                                           _flow_from_grey(h264.frames(folders["h264"] / "flow" / f"{c['id']}.mp4", 0,
                                                                       len(c["rgb"]), True)))),
    }
    # loaders: the same random windows for every candidate in a repetition
    sets = {name: loader(folders[name]) for name in ("npy", "packed")}
    rng = np.random.default_rng(1)
    n_items = batches * BATCH
    epoch = [0]

    def run(name, cold):
        all_files = [p for ps in files[name].values() for p in ps]

        def fn():
            (evict if cold else warm)(all_files)
            if name == "h264":
                picks = [(int(rng.integers(0, k)), int(rng.integers(0, SECONDS * FPS - WINDOW + 1)),
                          int(rng.integers(0, SHORT - CROP + 1)), int(rng.integers(0, LONG - CROP + 1)))
                         for _ in range(n_items)]
                t0 = time.perf_counter()
                for c, w0, y0, x0 in picks:
                    h264.window(clips[c]["id"], w0, y0, x0)
                return time.perf_counter() - t0
            ds = sets[name]
            ds.set_epoch(epoch[0])
            epoch[0] += 1
            ks = [int(x) for x in rng.integers(0, k, size=n_items)]
            t0 = time.perf_counter()
            for b in range(batches):
                ds.__getitems__(ks[b * BATCH:(b + 1) * BATCH])
            return time.perf_counter() - t0
        return fn

    def io_only(name):
        """Cold: only the reads a window needs (no decoding), as one loader process issues them."""
        from benchmarks.loading import read_rows

        def fn():
            all_files = [p for ps in files[name].values() for p in ps]
            evict(all_files)
            picks = [(int(rng.integers(0, k)), int(rng.integers(0, SECONDS * FPS - WINDOW + 1))) for _ in range(n_items)]
            t0 = time.perf_counter()
            for c, w0 in picks:
                cid = clips[c]["id"]
                if name == "npy":
                    read_rows(folders["npy"] / "rgb" / f"{cid}.npy", w0, WINDOW)
                    read_rows(folders["npy"] / "flow" / f"{cid}.npy", w0, WINDOW)
                    read_rows(folders["npy"] / "audio" / f"{cid}.npy", audio_start(w0), AUDIO)
                else:
                    fresh = Reader(folders["packed"], keep=0)  # every window reads its clip's head
                    path = fresh.path(cid)
                    fd = os.open(path, os.O_RDONLY)
                    try:
                        from gblend_cli.store import read_head

                        h = read_head(fd)
                        for offsets in (h.rgb, h.flow):
                            os.pread(fd, int(offsets[w0 + WINDOW] - offsets[w0]), int(offsets[w0]))
                        os.pread(fd, AUDIO * 80, h.mel_offset + audio_start(w0) * 80)
                    finally:
                        os.close(fd)
            return time.perf_counter() - t0
        return fn

    decoders = decoder_times(folders["packed"], clips, reps)
    log(f"7 store: loaders, {n_items} training clips per pass, {reps} interleaved repetitions")
    s = interleave({"npy_warm": run("npy", False), "packed_warm": run("packed", False), "h264_warm": run("h264", False),
                    "npy_cold": run("npy", True), "packed_cold": run("packed", True), "h264_cold": run("h264", True),
                    "npy_io": io_only("npy"), "packed_io": io_only("packed")}, reps, label="  per pass")
    rates = {key: [n_items / x for x in v] for key, v in s.items()}
    return {"clips": k, "items_per_pass": n_items, "sizes": size, "fidelity": fid, "samples": s, "rates": rates,
            "decoders": decoders}


def decoder_times(folder: Path, clips: list[dict], reps: int) -> dict:
    """Seconds to decode the same 160 RGB JPEG frames of the packed store with OpenCV (what the store
    uses), PIL and torchvision.io.decode_jpeg, one thread each, interleaved."""
    import io

    import cv2
    import torch
    from PIL import Image
    from torchvision.io import decode_jpeg

    from gblend_cli.store import Reader, _frames

    r = Reader(folder)
    data = []
    for c in clips[:10]:
        fd = os.open(r.path(c["id"]), os.O_RDONLY)
        try:
            data += _frames(fd, r.head(c["id"]).rgb, 0, 16)
        finally:
            os.close(fd)
    tensors = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in data]

    def timed(fn):
        def run():
            t = time.perf_counter()
            for b in fn():
                pass
            return time.perf_counter() - t
        return run

    return {"frames": len(data)} | interleave({
        "opencv": timed(lambda: (cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR) for b in data)),
        "pil": timed(lambda: (np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in data)),
        "torchvision": timed(lambda: (decode_jpeg(t) for t in tensors)),
    }, reps, label=f"  decode {len(data)} RGB JPEGs")


def _flow_from_grey(g: np.ndarray) -> np.ndarray:
    return np.stack([g[:, :, :LONG], g[:, :, LONG:2 * LONG]], -1)


def add_rows(T: Table, res: dict) -> None:
    S, F, R = res["sizes"], res["fidelity"], res["rates"]
    npy = S["npy"]["total"]
    for name, label in (("packed", "packed (JPEG q90 RGB + JPEG q95 flow + raw log-mel, one file per clip)"),
                        ("h264", "H.264 per modality, keyframe every 16 frames (CRF 23 RGB, CRF 18 flow)")):
        T.add("7", f"bytes per 10-s clip (128x171, 15 fps): {label} vs raw .npy (today)",
              f"{S[name]['total'] / 1e6:.2f} MB", f"{npy / 1e6:.2f} MB", S[name]["total"] / npy, "<= 0.20x",
              S[name]["total"] / npy <= 0.20)
        T.add("7", f"bytes per clip: {name} vs H.264 CRF 23, default keyframe interval (RGB + flow frames, same clips)",
              f"{S[name]['total'] / 1e6:.2f} MB", f"{(S['h264_ref']['rgb'] + S['h264_ref']['flow'] + S['npy']['audio']) / 1e6:.2f} MB",
              S[name]["total"] / (S["h264_ref"]["rgb"] + S["h264_ref"]["flow"] + S["npy"]["audio"]))
    for name in ("packed", "h264"):
        T.add("7", f"one loader core, page cache: {name} vs .npy, 16x112x112 RGB + flow + 100 log-mel rows per clip "
                   f"(RGB PSNR {F[name]['rgb_psnr_db']:.1f} dB, flow error {F[name]['flow_mae_px']:.3f} px)",
              f"{med(R[name + '_warm']):,.0f} clips/s", f"{med(R['npy_warm']):,.0f} clips/s",
              paired_ratio(R[name + "_warm"], R["npy_warm"]), ">= 100 clips/s", med(R[name + "_warm"]) >= 100)
    T.add("7", "one loader core, page cache: packed vs h264 (the two compact candidates, same windows)",
          f"{med(R['packed_warm']):,.0f} clips/s", f"{med(R['h264_warm']):,.0f} clips/s",
          paired_ratio(R["packed_warm"], R["h264_warm"]))
    D = res.get("decoders")
    if D:
        n = D.get("frames", 160)
        for name, label in (("pil", "PIL"), ("torchvision", "torchvision.io.decode_jpeg (CPU)")):
            T.add("7", f"JPEG decoding of the packed store's RGB frames, one thread: OpenCV cv2.imdecode (used) vs {label}",
                  f"{1000 * med(D['opencv']) / n:.3f} ms/frame", f"{1000 * med(D[name]) / n:.3f} ms/frame",
                  paired_ratio(D["opencv"], D[name]))
    r = paired_ratio(R["packed_io"], R["npy_io"])
    T.add("7", "cold reads per training clip, page cache dropped, no decoding: packed (head + 3 preads) vs .npy "
               "(3 preads, today's PreparedDataset.rows)", f"{med(R['packed_io']):,.0f} clips/s",
          f"{med(R['npy_io']):,.0f} clips/s", r, ">= 1x (no slower)", r >= 1)
    for name in ("packed", "h264"):
        T.add("7", f"one loader core, cold (page cache dropped), reading and decoding: {name} vs .npy (.npy: "
                   f"bound by the disk, {name}: by decoding)",
              f"{med(R[name + '_cold']):,.0f} clips/s", f"{med(R['npy_cold']):,.0f} clips/s",
              paired_ratio(R[name + "_cold"], R["npy_cold"]))


def section_store(ctx: Ctx) -> None:
    res = measure(ctx.work / "store", ctx.S.get("store_clips", 8), ctx.S["reps"], ctx.S.get("store_batches", 4))
    ctx.details["store"] = res
    add_rows(ctx.table, res)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.store", description=__doc__.split("\n\n")[0])
    ap.add_argument("--clips", type=int, default=8)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--batches", type=int, default=4, help="batches of 16 training clips per pass")
    ap.add_argument("--work", type=Path)
    ap.add_argument("--out", type=Path, help="write the results JSON here")
    a = ap.parse_args(argv)
    import cv2
    import torch

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    work = a.work or Path(tempfile.mkdtemp(prefix="gblend-store-"))
    try:
        res = measure(work, a.clips, a.reps, a.batches)
    finally:
        if not a.work:
            shutil.rmtree(work, ignore_errors=True)
    T = Table()
    add_rows(T, res)
    print(Table.render(T.rows))
    print(json.dumps({"sizes": res["sizes"], "fidelity": res["fidelity"]}, indent=1))
    if a.out:
        a.out.write_text(json.dumps({"rows": T.rows, "details": res}, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
