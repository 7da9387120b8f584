"""Experiments: what identifies a run, and which runs a recipe's matrix holds.

A run is identified by a `RunKey` (method, modalities, seed, mode, and for the paper's other
experiments a fix and an optimiser). The key is the one place that knows a run's folder name
(``gblend-offline-audio+rgb-s0``, ``ogm-ge-audio+rgb-s0``, ``naive-pretrain-audio+rgb-s0``,
``unimodal-rgb-adam-s0``), the heads its model has (and which are stop-gradient probes, and how it
fuses), the head it is judged by, the runs it reads or needs first, the command line that trains
it, and how to read all of that back from a folder name or a final.json. `matrix(cfg)` expands a
recipe's ``[reproduce]`` section into keys (Tables 1, 4 and the overfitting comparison);
`table_keys` and `tables_matrix` give the runs of Table 3, Table 5 and Figure 1, `methods_matrix`
the matrix of G-Blend's successors (`reproduce --table methods`).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from .config import BALANCING_METHODS, GBLEND_MODES, MODALITIES
from .errors import UserError

# G-Blend's successors (config.BALANCING_METHODS), each a loss policy in gblend_cli/policies/
# (`gblend train-method --method NAME`)
METHODS = ("unimodal", "naive", "gblend") + BALANCING_METHODS
COMMANDS = {"unimodal": "train-unimodal", "naive": "train-naive", "gblend": "train-gblend"} | \
    {m: "train-method" for m in BALANCING_METHODS}
READS_UNIMODAL_RUNS = ("umt", "ume")  # methods built on the finished uni-modal runs of the same seed
PROBE_HEAD_METHODS = ("ogm-ge", "umt")  # uni-modal heads behind a stop-gradient: linear probes
# naive fusion's attempted fixes (paper Fig. 1, Table 5): pre-training (train.init_from) and the
# model options of gblend_cli/fusion/ (model.fusion)
FUSION_FIXES = ("dropout", "midconcat", "se-gate", "nl-gate")
FIXES = ("pretrain",) + FUSION_FIXES
OPTIMIZERS = ("adam", "adagrad")  # a key's optimizer: None is SGD, the paper's (Table 3 adds these)


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
    """The identity of one run. `mode` is set for G-Blend runs only; `fix` for a naive run with one
    of the paper's attempted fixes (or a G-Blend run initialised from uni-modal runs: pretrain);
    `optimizer` when the run is not trained with SGD."""

    method: str
    modalities: tuple[str, ...]
    seed: int
    mode: str | None = None
    fix: str | None = None
    optimizer: str | None = None

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
        if self.fix is not None and (self.fix not in FIXES or self.method == "unimodal"
                                     or (self.fix in FUSION_FIXES and self.method != "naive")):
            raise ValueError(f"fix {self.fix!r} does not fit a {self.method} run")
        if self.optimizer is not None and self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer {self.optimizer!r} (None is SGD)")

    @classmethod
    def for_config(cls, method: str, modalities, cfg: dict) -> "RunKey":
        """The key of a train command's run: the seed from `train.seed`; a G-Blend run's mode from
        `gblend.weights` (hand-set -> fixed, 'equal' -> equal) or else `gblend.mode`; the fix from
        `model.fusion` (naive runs) or `train.init_from` (pretrain); the optimizer from
        `train.optimizer`. A fix that does not fit the run is one line (UserError)."""
        mode, fix = None, None
        if method == "gblend":
            weights = cfg["gblend"]["weights"].strip()
            mode = cfg["gblend"]["mode"]
            if weights == "equal" or (mode == "fixed" and not weights):
                mode = "equal"
            elif weights:
                mode = "fixed"
        fusion, init = cfg["model"]["fusion"], str(cfg["train"]["init_from"]).strip()
        if method != "unimodal" and fusion != "late":
            if method != "naive":
                raise UserError(f"model.fusion = {fusion} is a naive-fusion baseline (paper Fig. 1): train it with "
                                f"train-naive --fusion {fusion}")
            if init:
                raise UserError(f"model.fusion = {fusion} with --init-from: one attempted fix at a time")
            mods = set(modalities)
            if fusion != "dropout" and ("audio" not in mods or len(mods) != 2):
                raise UserError(f"--fusion {fusion} joins audio and one visual modality; got {','.join(modalities)} "
                                f"(use --modalities audio,rgb or audio,flow)")
            fix = fusion
        elif method != "unimodal" and init:
            fix = "pretrain"
        opt = cfg["train"]["optimizer"]
        return cls(method, tuple(modalities), int(cfg["train"]["seed"]), mode, fix, None if opt == "sgd" else opt)

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
        """The run folder's name, e.g. unimodal-rgb-s0, naive-audio+rgb-s0, gblend-online-audio+rgb-s1,
        naive-pretrain-audio+rgb-s0, gblend-offline-audio+rgb-adam-s0."""
        fix, opt = f"-{self.fix}" if self.fix else "", f"-{self.optimizer}" if self.optimizer else ""
        return f"{self.variant}{fix}-{self.combo}{opt}-s{self.seed}"

    @property
    def plain(self) -> bool:
        """No fix, trained with SGD: a run of Tables 1 and 4 (and of the overfitting comparison)."""
        return self.fix is None and self.optimizer is None

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

    def estimator_keys(self, seeds=None) -> list["RunKey"]:
        """The runs that Algorithm 2's estimators of this offline G-Blend run are: the uni-modal run
        of each modality and the naive run of its seed, or of each of `seeds` when its terms are
        pooled over its row's seeds (`pooled_seeds`; gblend_cli/blend.py `terms_from_runs`)."""
        if self.variant != "gblend-offline" or self.fix:
            return []
        return [k for s in (seeds or (self.seed,)) for k in
                [RunKey("unimodal", (m,), s, optimizer=self.optimizer) for m in self.modalities] +
                [RunKey("naive", self.modalities, s, optimizer=self.optimizer)]]

    def init_keys(self) -> list["RunKey"]:
        """The uni-modal runs a pre-training run's backbones start from (`train.init_from`)."""
        if self.fix != "pretrain":
            return []
        return [RunKey("unimodal", (m,), self.seed, optimizer=self.optimizer) for m in self.modalities]

    def dependencies(self, offline_from_runs: bool = True, estimator_seeds=None) -> list["RunKey"]:
        """The runs that must finish before this one starts: a pre-training run's uni-modal runs,
        UMT's and UME's uni-modal runs, and (with `reproduce.offline_from_runs`) an offline G-Blend
        run's estimator runs (of `estimator_seeds`: `estimators(cfg, key)`)."""
        return self.init_keys() + self.source_keys() + (self.estimator_keys(estimator_seeds) if offline_from_runs else [])

    def source_keys(self) -> list["RunKey"]:
        """The finished runs this run is built on: UMT's teachers and UME's members are the
        uni-modal runs of its modalities, same seed (`methods.from_runs`)."""
        if self.method not in READS_UNIMODAL_RUNS:
            return []
        return [RunKey("unimodal", (m,), self.seed, optimizer=self.optimizer) for m in self.modalities]

    # --- the command that trains it -----------------------------------------------------------
    def argv(self, *, recipe: str | Path | None = None, data: Path | None = None, out: Path | None = None,
             sets=(), threads: int | None = None, resume: bool = False, estimate_from=(), init_from=(),
             cfg: dict | None = None) -> list[str]:
        """`gblend` arguments that train this run (`estimate_from`: run folders an offline G-Blend
        run reads its weights' terms from, or UMT/UME their uni-modal runs; `init_from`: the
        uni-modal run folders a pretrain run starts from; `cfg`: the recipe, for the learning rate of
        an optimizer other than its own, `tables.adam_lr` / `tables.adagrad_lr`)."""
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
        if self.fix in FUSION_FIXES:
            args += ["--fusion", self.fix]
        if self.optimizer:
            args += ["--optimizer", self.optimizer]
            if cfg is not None and cfg["train"]["optimizer"] != self.optimizer:
                args += ["--lr", repr(float(cfg["tables"][f"{self.optimizer}_lr"]))]
        args += ["--seed", str(self.seed)]
        if init_from:
            args += ["--init-from", ",".join(str(p) for p in init_from)]
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
    _NAME = re.compile(rf"^({'|'.join(METHODS)})(?:-(offline|online|fixed|equal))?"
                       rf"(?:-({'|'.join(FIXES)}))?-([a-z+]+)(?:-({'|'.join(OPTIMIZERS)}))?-s(\d+)$")

    @classmethod
    def parse(cls, name: str) -> "RunKey | None":
        """The key of a folder name written by `name`; None for anything else."""
        m = cls._NAME.match(name)
        if not m:
            return None
        try:
            return cls(m[1], tuple(m[4].split("+")), int(m[6]), m[2], m[3], m[5])
        except ValueError:
            return None

    @classmethod
    def from_variant(cls, variant: str, modalities, seed: int, optimizer: str | None = None) -> "RunKey":
        """The key of a `variant` ('naive', 'gblend-offline', 'ogm-ge', ...) on `modalities`."""
        if variant.startswith("gblend-"):
            return cls("gblend", tuple(modalities), seed, variant[len("gblend-"):], optimizer=optimizer)
        return cls(variant, tuple(modalities), seed, optimizer=optimizer)

    @classmethod
    def from_final(cls, final: dict) -> "RunKey":
        """The key recorded in a final.json (method, modalities, seed and, for G-Blend, mode; fix and
        optimizer when set)."""
        return cls(final["method"], tuple(final["modalities"]), int(final["seed"]),
                   final.get("mode") if final["method"] == "gblend" else None, final.get("fix"), final.get("optimizer"))


def row_seeds(cfg: dict, key: RunKey) -> list[int]:
    """The seeds of the matrix row `key` is in: `reproduce.seeds` for the main combination (and
    for the tables' and methods' matrices), `reproduce.other_seeds` for the other combinations."""
    rp = cfg["reproduce"]
    return list(rp["other_seeds"] if key.combo in rp["other_combos"] and key.combo != rp["main"] else rp["seeds"])


def pooled_seeds(cfg: dict, key: RunKey) -> tuple[int, ...]:
    """The seeds whose uni-modal and naive runs an offline G-Blend run of the matrix reads its
    terms from: with `reproduce.offline_pool`, every seed of its row (the paper's Table 4 gives one
    weight set per combination for its three G-Blend runs; averaging the estimators' ΔG and ΔO over
    seeds is the same estimate with less noise), else its own seed."""
    seeds = row_seeds(cfg, key)
    if cfg["reproduce"]["offline_pool"] and key.seed in seeds:
        return tuple(sorted(set(seeds)))
    return (key.seed,)


def estimators(cfg: dict, key: RunKey) -> list[RunKey]:
    """The finished runs an offline G-Blend run of the matrix reads Algorithm 2's terms from
    ([] without `reproduce.offline_from_runs`: it trains its own estimators)."""
    return key.estimator_keys(pooled_seeds(cfg, key)) if cfg["reproduce"]["offline_from_runs"] else []


def dependencies(cfg: dict, key: RunKey) -> list[RunKey]:
    """The runs that must finish before `key` starts, under the recipe's reproduce settings."""
    return key.dependencies(cfg["reproduce"]["offline_from_runs"], pooled_seeds(cfg, key))


def matrix(cfg: dict) -> list[RunKey]:
    """Every run of the recipe's reproduce matrix, in run order, each once: for the main combination
    and every other one, the uni-modal runs of its modalities and naive fusion per seed, then G-Blend
    in each listed mode per seed (after every seed's estimator runs: offline terms may be pooled)."""
    rp = cfg["reproduce"]
    plan = [(rp["main"], rp["seeds"], rp["gblend_modes"])]
    plan += [(combo, rp["other_seeds"], rp["other_gblend_modes"]) for combo in rp["other_combos"]]
    keys: list[RunKey] = []
    for combo, seeds, modes in plan:
        mods = tuple(combo.split("+"))
        batch = [k for seed in seeds for k in [RunKey("unimodal", (m,), seed) for m in mods] + [RunKey("naive", mods, seed)]]
        batch += [RunKey("gblend", mods, seed, mode) for seed in seeds for mode in modes]
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


# --- the paper's Table 3, Table 5 and Figure 1 --------------------------------------------------
CORE_TABLES = ("table1", "table4", "overfit")  # the runs of `matrix(cfg)`
EXTRA_TABLES = ("table3", "table5", "fig1")


def tables_pair(cfg: dict) -> tuple[str, str]:
    """The combination of Tables 3 and 5 and Fig. 1: the paper's A+RGB, i.e. the recipe's main
    combination when it is audio and one visual modality, else audio+rgb."""
    mods = tuple(cfg["reproduce"]["main"].split("+"))
    return mods if len(mods) == 2 and "audio" in mods else ("audio", "rgb")


def table_keys(cfg: dict, table: str, seed: int) -> list[tuple[str, str | None, "RunKey"]]:
    """The rows of the paper's Table 3, Table 5 or Figure 1 for one seed, as (row, optimizer, key):
    row ids are those of gblend_cli/paper.py; the optimizer is Table 3's (None elsewhere). Figure
    1's "earlystop" row is the naive run itself (read at its best-by-V epoch, early_stop.json)."""
    mods = tables_pair(cfg)
    visual = mods[1] if mods[0] == "audio" else mods[0]
    base = None if cfg["train"]["optimizer"] == "sgd" else cfg["train"]["optimizer"]
    uni = {m: RunKey("unimodal", (m,), seed, optimizer=base) for m in mods}
    naive = RunKey("naive", mods, seed, optimizer=base)
    fixed = {fix: RunKey("naive", mods, seed, fix=fix, optimizer=base) for fix in FIXES}
    if table == "table5":
        rows5 = [("audio", uni["audio"]), ("rgb", uni[visual]), ("pretrain", fixed["pretrain"]), ("naive", naive),
                 ("dropout", fixed["dropout"]), ("aux", RunKey("gblend", mods, seed, "equal", optimizer=base)),
                 ("gblend", RunKey("gblend", mods, seed, "offline", optimizer=base))]
        return [(row, None, k) for row, k in rows5]
    if table == "fig1":
        rows1 = [("rgb", uni[visual]), ("late", naive), ("pretrain", fixed["pretrain"]), ("earlystop", naive)]
        return [(row, None, k) for row, k in rows1 + [(fix, fixed[fix]) for fix in FUSION_FIXES]]
    if table == "table3":
        rows = []
        for opt in cfg["tables"]["optimizers"]:
            o = None if opt == "sgd" else opt
            rows += [("rgb", opt, RunKey("unimodal", (visual,), seed, optimizer=o)),
                     ("naive", opt, RunKey("naive", mods, seed, optimizer=o)),
                     ("gblend", opt, RunKey("gblend", mods, seed, "offline", optimizer=o))]
        return rows
    raise ValueError(f"unknown table {table!r}")


def tables_matrix(cfg: dict, tables) -> list[RunKey]:
    """Every run the given tables need, each once, each after the runs it depends on: `matrix(cfg)`
    for Tables 1 and 4 and the overfitting comparison, `table_keys` (per seed of
    `reproduce.seeds`) for Table 3, Table 5 and Figure 1, `methods_matrix` for "methods" (G-Blend's
    successors). A run two tables share is listed once."""
    keys: list[RunKey] = list(matrix(cfg)) if set(tables) & set(CORE_TABLES) else []
    wanted = [k for table in EXTRA_TABLES if table in tables for seed in cfg["reproduce"]["seeds"]
              for _, _, k in table_keys(cfg, table, seed)]
    wanted += methods_matrix(cfg) if "methods" in tables else []
    for k in wanted:
        for dep in dependencies(cfg, k) + [k]:
            if dep not in keys:
                keys.append(dep)
    return keys
