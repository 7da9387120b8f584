"""Experiments: what identifies a run, and which runs a recipe's matrix holds.

A run is identified by a `RunKey` (method, modalities, seed, mode). The key is the one place that
knows a run's folder name (``gblend-offline-audio+rgb-s0``, ``ogm-ge-audio+rgb-s0``), the heads its
model has (and which are stop-gradient probes, and how it fuses), the head it is judged by, the runs
it reads, the command line that trains it, and how to read all of that back from a folder name or
a final.json. `matrix(cfg)` expands a recipe's ``[reproduce]`` section into keys (Tables 1 and 4),
`methods_matrix(cfg)` the matrix of G-Blend's successors (`reproduce --table methods`).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from .config import BALANCING_METHODS, MODALITIES
from .errors import UserError

# G-Blend's successors (config.BALANCING_METHODS), each a loss policy in gblend_cli/policies/
# (`gblend train-method --method NAME`)
METHODS = ("unimodal", "naive", "gblend") + BALANCING_METHODS
GBLEND_MODES = ("offline", "online", "fixed", "equal")  # fixed: hand-set weights; equal: auxiliary loss
COMMANDS = {"unimodal": "train-unimodal", "naive": "train-naive", "gblend": "train-gblend"} | \
    {m: "train-method" for m in BALANCING_METHODS}
READS_UNIMODAL_RUNS = ("umt", "ume")  # methods built on the finished uni-modal runs of the same seed
PROBE_HEAD_METHODS = ("ogm-ge", "umt")  # uni-modal heads behind a stop-gradient: linear probes


def parse_modalities(text: str, minimum: int = 1) -> tuple[str, ...]:
    """'rgb,audio' -> ('audio', 'rgb'): known, distinct, canonical order (audio, rgb, flow)."""
    mods = [m.strip() for m in text.split(",") if m.strip()]
    for m in mods:
        if m not in MODALITIES:
            raise UserError(f"--modalities: unknown modality {m!r} (choose from {', '.join(MODALITIES)})")
    if len(set(mods)) != len(mods):
        raise UserError(f"--modalities: {text!r} names a modality twice")
    if len(mods) < minimum:
        raise UserError(f"--modalities: give at least {minimum} of {', '.join(MODALITIES)}, e.g. audio,rgb")
    return tuple(m for m in MODALITIES if m in mods)


@dataclass(frozen=True)
class RunKey:
    """The identity of one run. `mode` is set for G-Blend runs only."""

    method: str
    modalities: tuple[str, ...]
    seed: int
    mode: str | None = None

    def __post_init__(self):
        if set(self.modalities) - set(MODALITIES) or len(set(self.modalities)) != len(self.modalities):
            raise ValueError(f"modalities {self.modalities!r}")
        object.__setattr__(self, "modalities", tuple(m for m in MODALITIES if m in self.modalities))
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}")
        if (self.method == "gblend") != (self.mode is not None) or (self.mode and self.mode not in GBLEND_MODES):
            raise ValueError(f"mode {self.mode!r} does not fit method {self.method!r}")
        if (self.method == "unimodal") != (len(self.modalities) == 1) or not self.modalities:
            raise ValueError(f"a {self.method} run on {'+'.join(self.modalities) or 'no modality'}")

    @classmethod
    def for_config(cls, method: str, modalities, cfg: dict) -> "RunKey":
        """The key of a train command's run: the seed from `train.seed`; a G-Blend run's mode from
        `gblend.weights` (hand-set -> fixed, 'equal' -> equal) or else `gblend.mode`."""
        mode = None
        if method == "gblend":
            weights = cfg["gblend"]["weights"].strip()
            mode = cfg["gblend"]["mode"]
            if weights == "equal" or (mode == "fixed" and not weights):
                mode = "equal"
            elif weights:
                mode = "fixed"
        return cls(method, tuple(modalities), int(cfg["train"]["seed"]), mode)

    # --- derived ------------------------------------------------------------------------------
    @property
    def combo(self) -> str:
        """'audio+rgb' (a uni-modal run's combo is its modality)."""
        return "+".join(self.modalities)

    @property
    def variant(self) -> str:
        """The method with its mode: 'unimodal', 'naive', 'gblend-offline', ..."""
        return f"{self.method}-{self.mode}" if self.mode else self.method

    @property
    def name(self) -> str:
        """The run folder's name, e.g. unimodal-rgb-s0, naive-audio+rgb-s0, gblend-online-audio+rgb-s1."""
        return f"{self.variant}-{self.combo}-s{self.seed}"

    @property
    def heads(self) -> list[str]:
        """The model's heads: a uni-modal run has its modality's, naive the fused one, G-Blend all."""
        if self.method == "unimodal":
            return [self.modalities[0]]
        if self.method == "naive":
            return ["fused"]
        return list(self.modalities) + ["fused"]

    @property
    def probe_heads(self) -> list[str]:
        """Uni-modal heads trained on their backbone's features through a stop-gradient: the method
        puts no uni-modal loss on its encoders (OGM-GE reads its confidence ratios from them, UMT
        trains its encoders by distillation), and the heads still measure each encoder."""
        return list(self.modalities) if self.method in PROBE_HEAD_METHODS else []

    @property
    def fusion(self) -> str:
        """How the fused head combines modalities: "mlp" (the paper's head) or "mean" (UME: the mean
        of the uni-modal runs' logits)."""
        return "mean" if self.method == "ume" else "mlp"

    @property
    def eval_head(self) -> str:
        """The head a run is judged by."""
        return self.modalities[0] if self.method == "unimodal" else "fused"

    def estimator_keys(self) -> list["RunKey"]:
        """The runs that Algorithm 2's estimators of this offline G-Blend run are: the uni-modal run
        of each modality and the naive run, same seed (gblend_cli/blend.py `terms_from_runs`)."""
        if self.variant != "gblend-offline":
            return []
        return [RunKey("unimodal", (m,), self.seed) for m in self.modalities] + [RunKey("naive", self.modalities, self.seed)]

    def source_keys(self) -> list["RunKey"]:
        """The finished runs this run is built on: UMT's teachers and UME's members are the
        uni-modal runs of its modalities, same seed (`methods.from_runs`)."""
        if self.method not in READS_UNIMODAL_RUNS:
            return []
        return [RunKey("unimodal", (m,), self.seed) for m in self.modalities]

    # --- the command that trains it -----------------------------------------------------------
    def argv(self, *, recipe: str | Path | None = None, data: Path | None = None, out: Path | None = None,
             sets=(), threads: int | None = None, resume: bool = False, estimate_from=()) -> list[str]:
        """`gblend` arguments that train this run (`estimate_from`: run folders an offline G-Blend
        run reads its weights' terms from, or UMT/UME their uni-modal runs)."""
        args = [COMMANDS[self.method]]
        if self.method in BALANCING_METHODS:
            args += ["--method", self.method]
        if self.method == "unimodal":
            args += ["--modality", self.modalities[0]]
        else:
            args += ["--modalities", ",".join(self.modalities)]
        if self.mode in ("offline", "online", "fixed"):
            args += ["--mode", self.mode]
        elif self.mode == "equal":
            args += ["--weights", "equal"]
        args += ["--seed", str(self.seed)]
        if estimate_from:
            option = "--from-runs" if self.method in READS_UNIMODAL_RUNS else "--estimate-from"
            args += [option, ",".join(str(p) for p in estimate_from)]
        if data is not None:
            args += ["--data", str(data)]
        if out is not None:
            args += ["--out", str(out)]
        if threads is not None:
            args += ["--threads", str(threads)]
        if recipe:
            args += ["--recipe", str(recipe)]
        for s in sets:
            args += ["--set", s]
        if resume:
            args.append("--resume")
        return args

    def command(self, **kw) -> str:
        """The shell command line (`gblend ...`) that trains this run."""
        return "gblend " + shlex.join(self.argv(**kw))

    # --- reading it back ----------------------------------------------------------------------
    _NAME = re.compile(rf"^({'|'.join(METHODS)})(?:-(offline|online|fixed|equal))?-([a-z+]+)-s(\d+)$")

    @classmethod
    def parse(cls, name: str) -> "RunKey | None":
        """The key of a folder name written by `name`; None for anything else."""
        m = cls._NAME.match(name)
        if not m:
            return None
        try:
            return cls(m[1], tuple(m[3].split("+")), int(m[4]), m[2])
        except ValueError:
            return None

    @classmethod
    def from_variant(cls, variant: str, modalities, seed: int) -> "RunKey":
        """The key of a `variant` ('naive', 'gblend-offline', 'ogm-ge', ...) on `modalities`."""
        if variant.startswith("gblend-"):
            return cls("gblend", tuple(modalities), seed, variant[len("gblend-"):])
        return cls(variant, tuple(modalities), seed)

    @classmethod
    def from_final(cls, final: dict) -> "RunKey":
        """The key recorded in a final.json (method, modalities, seed and, for G-Blend, mode)."""
        return cls(final["method"], tuple(final["modalities"]), int(final["seed"]),
                   final.get("mode") if final["method"] == "gblend" else None)


def matrix(cfg: dict) -> list[RunKey]:
    """Every run of the recipe's reproduce matrix, in run order, each once: for the main combination
    and every other one, per seed, the uni-modal runs of its modalities, naive fusion and G-Blend in
    each listed mode."""
    rp = cfg["reproduce"]
    plan = [(rp["main"], rp["seeds"], rp["gblend_modes"])]
    plan += [(combo, rp["other_seeds"], rp["other_gblend_modes"]) for combo in rp["other_combos"]]
    keys: list[RunKey] = []
    for combo, seeds, modes in plan:
        mods = tuple(combo.split("+"))
        for seed in seeds:
            batch = [RunKey("unimodal", (m,), seed) for m in mods] + [RunKey("naive", mods, seed)]
            batch += [RunKey("gblend", mods, seed, mode) for mode in modes]
            keys += [k for k in batch if k not in keys]
    return keys


def methods_matrix(cfg: dict) -> list[RunKey]:
    """`reproduce --table methods`: for each combination of `reproduce.methods_combos` and seed of
    `reproduce.seeds`, the uni-modal runs, naive fusion, offline G-Blend and every method of
    `reproduce.methods`, in run order (each run after the runs it reads). Runs shared with
    `matrix(cfg)` have the same keys, hence the same folders: they are trained once."""
    rp = cfg["reproduce"]
    keys: list[RunKey] = []
    for combo in rp["methods_combos"]:
        mods = tuple(combo.split("+"))
        for seed in rp["seeds"]:
            batch = [RunKey("unimodal", (m,), seed) for m in mods] + [RunKey("naive", mods, seed),
                                                                      RunKey("gblend", mods, seed, "offline")]
            batch += [RunKey(m, mods, seed) for m in rp["methods"]]
            keys += [k for k in batch if k not in keys]
    return keys
