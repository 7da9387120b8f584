"""The embedded demo dataset: real H.264 + AAC mp4 files in the Kinetics-400 layout, with
Kinetics-style CSVs, generated deterministically from a seed.

Design (the paper's mechanism in miniature):
- RGB: one blurred blob moves across a noisy frame; the class is its motion direction (C
  directions). Learning it takes a few epochs and generalises. In `blank_fraction` of the videos
  there is no blob (a visual ceiling below 100%). Each video has its own static, class-free
  background texture (`texture_amp`): RGB can memorise it, as Kinetics RGB can memorise scenes, so
  RGB overfits somewhat too; flow, which sees only motion, cannot.
- Flow (computed by prepare-data from the frames) sees the motion directly, but per-pixel noise
  (`pixel_noise`) corrupts small-frame optical flow more than it hurts a network reading the raw
  frames over 8 of them: flow ends second, below RGB, as on Kinetics.
- In the blank videos, the four quadrants of the frame hold textures that drift steadily, each in
  its own random direction (`drift_amp`): motion that belongs to no class and differs from video to
  video, so flow too has something to memorise (as Kinetics flow has camera and background
  motion), without a second moving object competing with the class's blob.
- Audio: every video has its own chord of steady tones at random mel bands away from the class
  bands (class-free and unique per video: a network memorises it within a few epochs, like
  Kinetics audio), plus white noise; in `audio_class_fraction` of the videos a tone pulsed at
  the class's own mel band carries a weak class signal that generalises, and that complements
  RGB exactly where RGB is blind (the blank videos).
So audio-only overfits (train >> val), RGB generalises, and naive joint training lets the audio
memoriser drive the fused training loss to zero before the RGB pathway has learned motion.

A cue only RGB can read (`still_object`, `object_hue`, `still_where_silent`; README "The demo's
design", items 9-10): in the blank videos whose audio carries no class tone, the object stands
still, its colour the class's hue — RGB sees it, flow sees nothing, audio has nothing to add there
(and such videos get no drifting quadrants, which would hide the colour). Without it RGB and flow
read one cue, the motion, and both end within a point or two of the best any model of that cue can
reach (`oracle`): RGB vs flow is a coin toss and a fusion of the two has nothing to add. Each cue
then has videos of its own: motion (RGB and flow), the still object (RGB), the class tone where
nothing moves (audio). At their package defaults the three draw nothing, so a data seed renders
the videos it always did.
"""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import numpy as np

from .config import MODALITIES
from .media import SAMPLE_RATE, mel_band_centres_hz
from .paper import COMBOS

DIRECTION_NAMES_8 = ["moving right", "moving up-right", "moving up", "moving up-left",
                     "moving left", "moving down-left", "moving down", "moving down-right"]
SPLIT_IDS = {"train": 1, "val": 2}
ORACLE_FILE = "oracle.json"  # in the prepared folder: `oracle` below
CSV_NAMES = {"train": "train.csv", "val": "validate.csv"}


def class_names(n: int) -> list[str]:
    if n == 8:
        return list(DIRECTION_NAMES_8)
    return [f"moving {round(360 * i / n):03d}deg" for i in range(n)]


def youtube_id(seed: int, split: str, index: int) -> str:
    """11 characters, like a YouTube id."""
    return f"d{seed % 100:02d}{split[0]}{index:07d}"


def class_band(label: int, n_classes: int, n_mels: int = 40) -> int:
    """Mel band of class `label`'s tone: spread evenly over the 40 bands (8 classes: 2, 7, ..., 37)."""
    step = n_mels / n_classes
    return int(step * label + step / 2 - 0.5) if n_classes > 1 else n_mels // 2


def render_video(rng: np.random.Generator, label: int, p: dict, truth: dict | None = None,
                 tone: bool | None = None) -> np.ndarray:
    """(T, S, S, 3) uint8 frames of one demo video; `truth`, when given, receives what the video shows
    ("blank": no moving object, "still": the object stands still instead). `tone`: whether the
    video's audio carries the class tone, when drawn beforehand (`class_tone`): a still object then
    stands only where it does not."""
    n_frames, size = int(round(p["seconds"] * p["fps"])), p["size"]
    theta = 2 * math.pi * label / p["classes"] + math.radians(rng.normal(0, p["direction_jitter_deg"]))
    speed = p["blob_speed"] * rng.uniform(0.85, 1.15)
    margin = 0.15 * size
    cx, cy = rng.uniform(margin, size - margin, size=2)
    colour = rng.uniform(0.6, 1.0, size=3)
    if p.get("object_hue", 0.0) > 0:  # the object's colour leans to its class's hue: appearance RGB sees, flow cannot
        colour = (1 - p["object_hue"]) * colour + p["object_hue"] * class_colour(label, p["classes"])
    blank = rng.random() < p["blank_fraction"]
    still = blank and p.get("still_object", 0.0) > 0 and rng.random() < p["still_object"] and not tone
    if truth is not None:
        truth["blank"], truth["still"] = bool(blank), bool(still)
    background = np.full((size, size, 3), 0.15, dtype=np.float32)
    if p["texture_amp"] > 0:  # the video's own static texture: blocks of random colour
        blk = max(1, int(p["texture_block"]))
        n = -(-size // blk)
        blocks = rng.uniform(-1, 1, size=(n, n, 3)).astype(np.float32) * p["texture_amp"]
        background += np.kron(blocks, np.ones((blk, blk, 1), dtype=np.float32))[:size, :size]
    drift = _drifting_quadrants(rng, size, p) if blank and not still and p["drift_amp"] > 0 else None
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    frames = np.empty((n_frames, size, size, 3), dtype=np.float32)
    for t in range(n_frames):
        img = background + rng.normal(0.0, p["pixel_noise"], size=(size, size, 1)).astype(np.float32)
        if drift is not None:
            img += _drift_frame(drift, t, size)
        if not blank or still:
            dt = 0.0 if still else t - (n_frames - 1) / 2  # trajectory centred at the middle frame
            x, y = cx + speed * dt * math.cos(theta), cy - speed * dt * math.sin(theta)  # image y points down
            blob = np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * p["blob_sigma"] ** 2))
            img = img + blob[..., None] * colour[None, None, :]
        frames[t] = img
    return (np.clip(frames, 0, 1) * 255).round().astype(np.uint8)


def class_colour(label: int, n_classes: int) -> np.ndarray:
    """RGB in [0, 1] of class `label`'s hue (hues evenly round the colour wheel, saturation 0.6)."""
    import colorsys

    return np.array(colorsys.hsv_to_rgb(label / n_classes, 0.6, 1.0))


def _drifting_quadrants(rng: np.random.Generator, size: int, p: dict) -> list[tuple[float, float, np.ndarray]]:
    """Per quadrant: velocity (px/frame, image axes) and a texture periodic with period 2 * quadrant
    (so a window sliding over it wraps without a seam). Quadrants, not a finer grid: at 16 px DIS
    follows a drifting 8-px patch (correlation with the true motion ~0.8 at pixel noise 0.3) but
    not a 4-px one (~0.2)."""
    half, blk = size // 2, max(1, int(p["drift_block"]))
    out = []
    for _ in range(4):
        angle = rng.uniform(0, 2 * math.pi)
        speed = p["drift_speed"] * rng.uniform(0.7, 1.3)
        n = -(-2 * half // blk)
        tile = np.kron(rng.uniform(-1, 1, size=(n, n, 3)).astype(np.float32) * p["drift_amp"],
                       np.ones((blk, blk, 1), dtype=np.float32))[:2 * half, :2 * half]
        out.append((speed * math.cos(angle), -speed * math.sin(angle), np.tile(tile, (2, 2, 1))))
    return out


def _drift_frame(drift: list[tuple[float, float, np.ndarray]], t: int, size: int) -> np.ndarray:
    """Frame t of the drifting quadrants: each quadrant's texture moved by t * its velocity."""
    half = size // 2
    layer = np.zeros((size, size, 3), dtype=np.float32)
    for k, (vx, vy, tex) in enumerate(drift):
        i, j = divmod(k, 2)
        ox, oy = int(round(-vx * t)) % (2 * half), int(round(-vy * t)) % (2 * half)
        layer[i * half:(i + 1) * half, j * half:(j + 1) * half] = tex[oy:oy + half, ox:ox + half]
    return layer


def render_audio(rng: np.random.Generator, label: int, p: dict, truth: dict | None = None,
                 tone: bool | None = None) -> np.ndarray:
    """Mono 16 kHz float32 waveform of one demo video (see the module docstring); `truth`, when given,
    receives "audio_class": whether the class tone sounds. `tone`: that, when drawn beforehand."""
    n = int(round(p["seconds"] * SAMPLE_RATE))
    t = np.arange(n, dtype=np.float64) / SAMPLE_RATE
    centres = mel_band_centres_hz()
    wave = rng.normal(0.0, p["audio_noise"], size=n)
    class_bands = {class_band(c, p["classes"], len(centres)) for c in range(p["classes"])}
    free = [b for b in range(len(centres)) if not any(abs(b - c) <= 1 for c in class_bands)]
    memo_bands = rng.choice(free, size=min(p["audio_memo_tones"], len(free)), replace=False)
    for b in memo_bands:  # the video's own steady chord, away from the class bands: memorisable, classless
        amp = p["audio_memo_amp"] * rng.uniform(0.5, 1.5)
        wave += amp * np.sin(2 * math.pi * centres[b] * t + rng.uniform(0, 2 * math.pi))
    if tone is None:
        tone = rng.random() < p["audio_class_fraction"]
    if truth is not None:
        truth["audio_class"] = bool(tone)
    if tone:  # the class tone, pulsed 0.25 s on / 0.25 s off
        f = centres[class_band(label, p["classes"], len(centres))]
        gate = ((t + rng.uniform(0, 0.5)) % 0.5) < 0.25
        wave += p["audio_class_amp"] * gate * np.sin(2 * math.pi * f * t)
    peak = np.abs(wave).max()
    if peak > 0.95:
        wave *= 0.95 / peak
    return wave.astype(np.float32)


def encode_mp4(path: Path, frames: np.ndarray, wave: np.ndarray, fps: int) -> None:
    """H.264 (yuv420p) + AAC (16 kHz mono) mp4 via PyAV, written to a temp name then renamed."""
    import os

    import av

    tmp = path.with_name(f".{path.name}.tmp.mp4")
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(tmp), "w") as out:
        vs = out.add_stream("libx264", rate=Fraction(fps))
        vs.width, vs.height, vs.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        # rc-lookahead=0: x264's lookahead (macroblock tree) makes the output depend on what the
        # process encoded before, so the same frames gave different files in different workers
        vs.options = {"crf": "12", "preset": "veryfast", "threads": "1", "x264-params": "rc-lookahead=0"}
        aus = out.add_stream("aac", rate=SAMPLE_RATE, layout="mono")
        aus.bit_rate = 64000
        for img in frames:
            for pkt in vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(pkt)
        for pkt in vs.encode():
            out.mux(pkt)
        frame_size = aus.codec_context.frame_size or 1024
        pcm = wave.reshape(1, -1)
        for i in range(0, pcm.shape[1], frame_size):
            af = av.AudioFrame.from_ndarray(np.ascontiguousarray(pcm[:, i:i + frame_size]), format="flt", layout="mono")
            af.sample_rate = SAMPLE_RATE
            af.pts = i
            for pkt in aus.encode(af):
                out.mux(pkt)
        for pkt in aus.encode():
            out.mux(pkt)
    os.replace(tmp, path)


def video_jobs(out: Path, p: dict, seed: int) -> list[dict]:
    """One job per demo video: where it goes and how to render it (labels balanced per split)."""
    names = class_names(p["classes"])
    secs = int(math.ceil(p["seconds"]))
    jobs = []
    for split, count in (("train", p["train_videos"]), ("val", p["test_videos"])):
        for i in range(count):
            label = i % p["classes"]
            yid = youtube_id(seed, split, i)
            start = 10 * (i % 7)
            jobs.append({
                "split": split, "index": i, "label": label, "label_name": names[label], "youtube_id": yid,
                "time_start": start, "time_end": start + secs, "seed": seed,
                "path": str(out / "videos" / split / names[label] / f"{yid}_{start:06d}_{start + secs:06d}.mp4"),
            })
    return jobs


def class_tone(job: dict, p: dict) -> bool | None:
    """With `still_where_silent`, whether a video's audio carries the class tone, drawn before its
    frames (from a stream of its own) so that a still object can stand where it does not; None
    otherwise (render_audio draws it, after the frames, as it always did)."""
    if not p.get("still_where_silent"):
        return None
    rng = np.random.default_rng([job["seed"], SPLIT_IDS[job["split"]], job["index"], 1])
    return bool(rng.random() < p["audio_class_fraction"])


def render(job: dict, p: dict, truth: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One demo video's frames and waveform, drawn in the one order every reader uses (the files
    and the oracle's re-rendering alike); `truth` as in render_video and render_audio."""
    rng = np.random.default_rng([job["seed"], SPLIT_IDS[job["split"]], job["index"]])
    tone = class_tone(job, p)
    frames = render_video(rng, job["label"], p, truth, tone=tone)
    return frames, render_audio(rng, job["label"], p, truth, tone=tone)


def render_job(job: dict, p: dict) -> str:
    """Render and encode one demo video unless it is already there (resumable)."""
    path = Path(job["path"])
    if not path.exists():
        frames, wave = render(job, p)
        encode_mp4(path, frames, wave, int(p["fps"]))
    return job["path"]


def write_annotations(out: Path, jobs: list[dict]) -> list[Path]:
    """Kinetics-400 style CSVs (`label,youtube_id,time_start,time_end,split`)."""
    from .storage import write_text_atomic

    paths = []
    for split in ("train", "val"):
        rows = [j for j in jobs if j["split"] == split]
        if not rows:
            continue
        lines = ["label,youtube_id,time_start,time_end,split"]
        kin_split = "train" if split == "train" else "validate"
        for j in rows:
            lines.append(f"{j['label_name']},{j['youtube_id']},{j['time_start']},{j['time_end']},{kin_split}")
        path = out / "annotations" / CSV_NAMES[split]
        write_text_atomic(path, "\n".join(lines) + "\n")
        paths.append(path)
    return paths


# Which stream can read which of a demo video's cues (the class is in each cue it shows).
CUE_READERS = {"motion": ("rgb", "flow"), "still": ("rgb",), "audio_class": ("audio",)}


def video_truth(job: dict, p: dict) -> dict:
    """What one demo video shows, by rendering it again in memory (the renderer's own draws, so the
    flags cannot drift from the files): "motion" (the object moves), "still" (it stands still),
    "audio_class" (the class tone sounds)."""
    truth: dict = {}
    render(job, p, truth)
    return {"motion": not truth["blank"], "still": truth["still"], "audio_class": truth["audio_class"]}


def oracle_top1(truths: list[dict], streams: tuple[str, ...], classes: int, readers: dict | None = None) -> float:
    """Video top-1 (%) of an oracle that reads every cue visible to `streams` perfectly and guesses
    (1/classes) where none is: an upper bound for any model of those streams on these videos.
    `readers`: which streams read which cue (default CUE_READERS)."""
    readers = CUE_READERS if readers is None else readers
    seen = sum(any(t[cue] and set(who) & set(streams) for cue, who in readers.items()) for t in truths)
    return 100.0 * (seen + (len(truths) - seen) / classes) / len(truths)


def oracle(jobs: list[dict], p: dict) -> dict:
    """Per split: how many videos show each cue, and the oracle video top-1 for every stream set
    (`oracle_top1`). On the demo's recipe RGB and flow read the same cue (the motion), so their
    oracle is one number and a fusion of the two has nothing to add above it."""
    # a still object tells the class only through its colour, and only when that leans to the class's hue
    readers = CUE_READERS | ({} if p.get("object_hue", 0.0) > 0 else {"still": ()})
    out = {}
    for split in SPLIT_IDS:
        truths = [video_truth(j, p) for j in jobs if j["split"] == split]
        if not truths:
            continue
        out[split] = {
            "videos": len(truths),
            "cues": {cue: sum(t[cue] for t in truths) for cue in CUE_READERS},
            "video_top1": {name: round(oracle_top1(truths, tuple(name.split("+")), p["classes"], readers), 2)
                           for name in MODALITIES + COMBOS},
        }
    return out


def read_oracle(data: str | Path | None) -> dict | None:
    """The evaluation split's oracle video top-1 per stream set ("audio+rgb": %, ...) of a prepared
    demo folder, or None (another dataset, a folder prepared before the file existed, or gone)."""
    import json

    try:
        return json.loads((Path(data) / ORACLE_FILE).read_text())["val"]["video_top1"] if data else None
    except (OSError, ValueError, KeyError, TypeError):
        return None
