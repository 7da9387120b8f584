"""Recipes: one TOML file describes a whole experiment; every CLI option overrides one key.

`DEFAULTS` is the schema: every key a recipe may set, with its type (taken from the default) and
default. Unknown keys and wrong types are rejected with one line naming the file and key."""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path
from typing import Any

from .errors import UserError

REPO_ROOT = Path(__file__).resolve().parent.parent
RECIPES_DIR = REPO_ROOT / "recipes"
DEFAULT_RECIPE = RECIPES_DIR / "demo.toml"

HEADS = ("audio", "rgb", "flow", "fused")
MODALITIES = ("audio", "rgb", "flow")
GBLEND_MODES = ("offline", "online", "fixed", "equal")  # fixed: hand-set weights; equal: auxiliary loss
BALANCING_METHODS = ("ogm-ge", "mmpareto", "umt", "ume", "inforeg")  # G-Blend's successors (experiment.RunKey)

DEFAULTS: dict[str, dict[str, Any]] = {
    "dataset": {
        "name": "demo",  # demo|kinetics400|kinetics600|kinetics700|kinetics-sounds|audioset|epic-kitchens|cremad|ave|ucf101|vggsound|csv|folder
        "root": "",  # folder of media files
        "annotations": [],  # annotation files (CSV / txt; for ave and ucf101 also their folder)
        "classes": [],  # Kinetics readers: keep only these classes ([]: all); kinetics-sounds needs its subset (recipes/kinetics-sounds.toml)
        "ucf_split": 1,  # ucf101: which official train/test split (trainlist0N/testlist0N): 1, 2 or 3
        "data_dir": "",  # prepared dataset; "" -> data/<name>
        "results_dir": "",  # run folders; "" -> results/<name>
        "label_field": "verb",  # EPIC-Kitchens: verb|noun|action
        "allow_outside_root": False,  # accept manifest paths outside root
    },
    "prepare": {
        "fps": 8.0,  # frames are resampled to this rate
        "short_side": 32,  # frames resized so the short side has this many pixels
        "max_seconds": 0.0,  # keep at most this much of each clip (0: all)
        "flow": "dis",  # dis|tvl1|none
        "flow_bound": 20.0,  # px: flow is clipped to +-bound and quantised to uint8 (20: the convention at full resolution; smaller frames, smaller motions)
        "store": "npy",  # npy: raw arrays (exact, 16.5 MB per 10-s clip at short side 128); packed: JPEG frames in one file per clip (~1/10; docs/PERFORMANCE.md)
        "workers": 1,
        "threads": 1,  # OpenCV/torch threads per worker
        "decode_timeout_s": 120.0,  # per file; a file that takes longer is reported and skipped
        "transient_tries": 3,  # a clip that failed for a transient reason (timeout, killed, out of memory) this many times running on one file is left failed on reruns (0: tried on every rerun)
    },
    "demo": {  # the embedded demo dataset's generator (see gblend_cli/demo_data.py)
        "seed": 0,  # data seed: which videos are generated (training seeds are train.seed)
        "classes": 8,
        "train_videos": 400,
        "test_videos": 500,
        "seconds": 2.0,
        "fps": 8,
        "size": 32,
        "blob_sigma": 3.6,  # px at `size`
        "blob_speed": 3.0,  # px per frame at `size`
        "blank_fraction": 0.25,  # videos with no moving object
        "still_object": 0.0,  # of the blank videos, the fraction whose object stands still (RGB sees its colour; flow sees nothing)
        "still_where_silent": False,  # a still object only in blank videos whose audio has no class tone (each cue its own videos)
        "object_hue": 0.0,  # 0-1: how far the object's colour leans to its class's hue (appearance only RGB sees)
        "pixel_noise": 0.1,  # per-pixel, per-frame noise: optical flow degrades with it faster than RGB
        "texture_amp": 0.0,  # a static, class-free random texture per video (memorisable by RGB, not by flow)
        "texture_block": 4,  # its block size, px at `size`
        "direction_jitter_deg": 5.0,
        "drift_amp": 0.0,  # blank videos (not those with a still object): quadrants of texture drifting in their own random directions (class-free motion flow can memorise); 0: none
        "drift_speed": 3.0,  # its speed, px per frame at `size` (x U(0.7, 1.3) per quadrant)
        "drift_block": 8,  # its texture's block size, px at `size`
        "audio_class_fraction": 0.7,  # videos whose audio carries the class tone
        "audio_class_amp": 0.9,
        "audio_memo_tones": 8,  # video-specific steady tones (memorisable, class-free)
        "audio_memo_amp": 0.8,
        "audio_noise": 0.05,
    },
    "clip": {
        "frames": 8,  # frames per visual clip
        "crop": 32,  # square crop (random in training, centre in evaluation)
        "flip": False,  # random horizontal flip in training (flow x is negated)
        "eval_clips": 10,  # uniformly spaced clips per video for video-level accuracy
        "audio_frames": 100,  # log-mel frames (10 ms each) centred on the visual clip
    },
    "model": {
        "visual": "slim_r2plus1d",  # r2plus1d_18|r2plus1d_34|r3d_18|r3d_50|slim_r2plus1d|slim_r3d
        "visual_widths": [16, 32, 64, 128],  # slim variants only
        "visual_layers": [1, 1, 1, 1],  # slim variants only
        "audio": "slim_resnet2d",  # resnet18|resnet34|resnet50|slim_resnet2d
        "audio_widths": [16, 32, 64, 128],
        "audio_layers": [1, 1, 1, 1],
        "fusion_dropout": 0.5,
        "fusion": "late",  # late|dropout|midconcat|se-gate|nl-gate: naive fusion's attempted fixes (paper Fig. 1; gblend_cli/fusion/)
        "fix_dropout": 0.8,  # fusion = "dropout": the fusion head's stronger dropout rate (the paper's regulariser, Table 5)
        "fusion_stage": 3,  # midconcat|se-gate|nl-gate: after which backbone stage (1-3 of 4) audio meets the visual features
    },
    "train": {
        "epochs": 30,
        "batch_size": 32,
        "optimizer": "sgd",  # sgd|adam|adagrad
        "lr": 0.05,
        "momentum": 0.9,
        "weight_decay": 1e-4,
        "schedule": "cosine",  # cosine|step|constant (per iteration, after warm-up)
        "warmup_epochs": 0.0,
        "milestones": [],  # epochs, for schedule = "step"
        "gamma": 0.1,
        "grad_clip": 0.0,  # max gradient norm; 0: off
        "amp": "auto",  # auto|bf16|fp16|none (auto: bf16 on CUDA, none on CPU)
        "channels_last": True,  # channels_last(_3d) memory format on CUDA
        "compile": False,  # torch.compile the model (CUDA)
        "workers": 0,  # DataLoader worker processes
        "threads": 1,  # torch intra-op threads (CPU)
        "holdout_fraction": 0.08,  # V: stratified share of train held out (G-Blend needs it)
        "train_eval_size": 1000,  # T': fixed subset of T measured in eval mode each epoch
        "eval_every": 1,  # epochs between evaluations (the last epoch is always evaluated)
        "seed": 0,
        "device": "auto",  # auto|cpu|cuda|cuda:N
        "init_from": "",  # run folder whose uni-modal backbones initialise this model
    },
    "gblend": {
        "mode": "offline",  # offline (Alg. 2) | online (Alg. 3) | fixed (hand-set / equal weights)
        "metric": "loss",  # loss|accuracy: what G and O are measured with
        "rule": "regularised",  # regularised|raw|formula (see gblend_cli/blend.py; formula: w_raw, no guard)
        "weights": "",  # fixed weights "rgb=.63,audio=.01,fused=.36"; "equal" = auxiliary-loss baseline
        "estimate_epochs": 0,  # offline: estimation length; 0 = the whole run (as in the paper)
        "warmup_super_epoch": 10,  # online: first super-epoch length
        "super_epoch": 5,  # online: later super-epoch length
        "min_weight": 0.05,  # regularised rule: weight of a head whose ΔG <= 0 (a guard, not a knob: <= 0.05 in all)
        "evidence_z": 2.0,  # online: a later estimate in which no head's ΔG exceeds z·SE(ΔG) keeps the weights in force (0: always re-weight)
        "keep_noise_bound": False,  # online: so does a later estimate in which the noise guard sets a generalising head's ΔO² (|ΔO| < SE(ΔO))
        "estimate_from": [],  # offline: run folders (uni-modal per modality + naive, one or more seeds) to read Algorithm 2's terms from
    },
    "methods": {  # G-Blend's successors (`gblend train-method`; gblend_cli/policies/): the papers' defaults, fixed a priori
        "from_runs": [],  # umt/ume: the uni-modal run folders to read ([]: RESULTS/unimodal-<m>-s<seed>)
        "ogm_alpha": 0.1,  # OGM-GE's α in k_u = 1 - tanh(α·ρ_u) (Peng et al. 2022, Eq. 10)
        "ogm_coefficient": "paper",  # paper: 1 - tanh(α·ρ) for ρ > 1 (Eq. 10, the official code); shifted: 1 - tanh(α·relu(ρ - 1))
        "ogm_noise": True,  # OGM-GE's generalisation enhancement: + N(0, std(g)²) on each encoder gradient (False: OGM)
        "ogm_end_epoch": 0,  # modulate in epochs [0, ogm_end_epoch) (0: the whole run)
        "mmpareto_gamma": 1.5,  # MMPareto's magnitude factor γ on the combined encoder gradients (the official code's 1.5)
        "umt_weight": 1.0,  # UMT's λ: L = CE_fused + λ Σ_m MSE(student_m, teacher_m) over the pooled features
        "inforeg_beta": 0.95,  # InfoReg's β in β·exp(tanh(s_u - s_min)) (the official code's audio value)
        "inforeg_threshold": 0.04,  # InfoReg's prime learning window: while the encoder's FIM-trace growth k > this
        "inforeg_window": 0,  # epochs averaged in the FIM-trace growth k (0: max(1, epochs // 8), 10 of 80 as in the code)
    },
    "tables": {  # the runs of the paper's Table 3 (optimisers), Table 5 (regularisers) and Fig. 1 (attempted fixes)
        "optimizers": ["adam", "adagrad"],  # Table 3's optimisers (each: RGB only, naive, G-Blend offline)
        "adam_lr": 0.001,  # Table 3's learning rate with Adam (train.lr is SGD's)
        "adagrad_lr": 0.01,  # Table 3's learning rate with AdaGrad
    },
    "reproduce": {  # the matrix `gblend reproduce` runs and `gblend report` expects
        "seeds": [0, 1, 2],  # seeds of the main combination's rows
        "main": "audio+rgb",
        "other_combos": ["rgb+flow", "audio+flow", "audio+rgb+flow"],
        "other_seeds": [0],
        "gblend_modes": ["offline", "online"],  # for the main combination
        "other_gblend_modes": ["offline"],
        "jobs": 2,  # runs in parallel (one thread each)
        "offline_from_runs": True,  # offline G-Blend reads Algorithm 2's terms from the matrix's own uni-modal and naive runs
        "offline_pool": True,  # ... pooled over every seed of its row: one weight set per combination, as the paper's Table 4
        "methods": ["ogm-ge", "mmpareto", "umt", "ume", "inforeg"],  # `reproduce --table methods`: these, beside naive and offline G-Blend
        "methods_combos": ["audio+rgb", "audio+rgb+flow"],  # ... on these combinations, for every seed of `seeds`
        "methods_epochs": 0,  # the methods matrix's train.epochs (0: the recipe's); > 0: give it its own --results
    },
}


# the element type of list keys whose default is empty (a non-empty default's elements say it)
LIST_ITEMS = {"dataset.annotations": str, "dataset.classes": str, "train.milestones": float,
              "gblend.estimate_from": str, "methods.from_runs": str}


# Reading a folder made by an older gblend (a run's config.toml, a prepared folder's
# prepare_config.toml): a key added since then is read as what gblend did before the key existed.
# A new key's package default is that behaviour (drift_amp 0: no drift; flow_bound 20; store npy),
# so the default answers, except where a key's default changed behaviour for some runs:
BEFORE_KEY: dict[str, Any] = {
    # online G-Blend re-weighted at every estimate before the evidence rule (0 = always re-weight)
    "gblend.evidence_z": lambda saved: 0.0 if saved.get("gblend", {}).get("mode") == "online"
    else DEFAULTS["gblend"]["evidence_z"],
}


def saved_value(saved: dict, section: str, key: str) -> Any:
    """A key's value in a saved recipe (parsed TOML); for a key added since it was saved, what the
    folder's gblend did without it (BEFORE_KEY, else the key's default)."""
    if key in saved.get(section, {}):
        return saved[section][key]
    before = BEFORE_KEY.get(f"{section}.{key}", DEFAULTS.get(section, {}).get(key))
    return before(saved) if callable(before) else before


def read_saved_toml(path: Path, fix: str) -> dict:
    """A TOML file gblend wrote (a run's config.toml, prepare_config.toml), parsed; when it is
    damaged, one line naming it and ending with `fix` (OSError passes: callers say what is missing)."""
    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: damaged, not the TOML gblend writes ({e}); {fix}") from None


def _is(x: Any, t: type) -> bool:
    """x is of schema type t (an integer counts as a number; a boolean is neither)."""
    if isinstance(x, bool):
        return t is bool
    return isinstance(x, (int, float)) if t is float else isinstance(x, t)


def _type_name(v: Any) -> str:
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "list"}[type(v)]


def _check_value(where: str, key: str, default: Any, value: Any) -> Any:
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, str):
        ok = isinstance(value, str)
    elif isinstance(default, list):
        item = LIST_ITEMS.get(key) or (type(default[0]) if default else None)
        ok = isinstance(value, list) and all(not isinstance(x, (dict, list)) for x in value)
        if ok and item is not None and not all(_is(x, item) for x in value):
            raise UserError(f"{where}: key '{key}' must be a list of {_type_name(item())}s, got {value!r}")
    else:  # pragma: no cover
        ok = False
    if not ok:
        name = _type_name(default)
        raise UserError(f"{where}: key '{key}' must be {'an' if name[0] in 'aeiou' else 'a'} {name}, got {value!r}")
    return value


def _merge(cfg: dict, updates: dict, where: str) -> None:
    for section, values in updates.items():
        if section not in DEFAULTS:
            raise UserError(f"{where}: unknown section '{section}' (known: {', '.join(DEFAULTS)})")
        if not isinstance(values, dict):
            raise UserError(f"{where}: '{section}' must be a table of keys")
        for key, value in values.items():
            if key not in DEFAULTS[section]:
                raise UserError(f"{where}: unknown key '{section}.{key}'")
            cfg[section][key] = _check_value(where, f"{section}.{key}", DEFAULTS[section][key], value)


def parse_override(text: str) -> tuple[str, str, Any]:
    """'train.lr=0.1' -> ('train', 'lr', 0.1). The value is read as TOML, else as a string."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise UserError(f"--set {text!r}: expected SECTION.KEY=VALUE, e.g. train.lr=0.1")
    dotted, raw = text.split("=", 1)
    section, key = dotted.strip().split(".", 1)
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return section, key, value


NO_RECIPE = "-"  # built-in defaults only


def resolve_recipe_path(recipe: str | Path | None) -> Path | None:
    if str(recipe) == NO_RECIPE:
        return None
    if recipe is None or str(recipe) == "":
        return DEFAULT_RECIPE if DEFAULT_RECIPE.exists() else None
    p = Path(recipe)
    if not p.exists() and not p.suffix and (RECIPES_DIR / f"{p}.toml").exists():
        p = RECIPES_DIR / f"{p}.toml"  # `--recipe kinetics400` names a bundled recipe
    if not p.exists():
        raise UserError(f"{recipe}: no such recipe file")
    return p


def load_config(recipe: str | Path | None = None, overrides: dict[str, Any] | None = None,
                sets: list[str] | None = None, options: dict[str, str] | None = None) -> dict:
    """Defaults <- recipe file <- `--set` overrides <- explicit CLI options (dotted keys).

    `options` maps dotted keys to the CLI option that set them (e.g. "train.epochs": "--epochs"),
    so a bad value is reported under the name the user typed."""
    cfg = copy.deepcopy(DEFAULTS)
    path = resolve_recipe_path(recipe)
    if path is not None:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as e:
            raise UserError(f"{path}: not valid TOML ({e})") from None
        except OSError as e:
            raise UserError(f"{path}: cannot read recipe ({e.strerror})") from None
        _merge(cfg, data, str(path))
    for text in sets or []:
        section, key, value = parse_override(text)
        _merge(cfg, {section: {key: value}}, f"--set {text}")
    given = {}
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        section, key = dotted.split(".", 1)
        given[dotted] = (options or {}).get(dotted, f"option for {dotted}")
        _merge(cfg, {section: {key: value}}, given[dotted])
    try:
        validate(cfg)
    except BadValue as e:
        if e.key in given and given[e.key].startswith("-"):
            raise UserError(f"{given[e.key]}: {e.problem}") from None
        raise
    _canonical_combos(cfg["reproduce"])
    cfg["_recipe"] = str(path) if path else ""
    return cfg


def canonical_combo(combo: str) -> str:
    """A combination in the one spelling runs are named by (rgb+audio -> audio+rgb)."""
    mods = combo.split("+")
    return "+".join(m for m in MODALITIES if m in mods)


def _canonical_combos(rp: dict) -> None:
    """The matrix's combinations in canonical order: a recipe's "rgb+audio" names the runs of
    audio+rgb (report rows, the main combination's seeds and margins, offline pooling)."""
    rp["main"] = canonical_combo(rp["main"])
    for k in ("other_combos", "methods_combos"):
        rp[k] = list(dict.fromkeys(canonical_combo(c) for c in rp[k]))


class BadValue(UserError):
    """A recipe key with a value outside its range. The caller may name the CLI option that set it."""

    def __init__(self, key: str, problem: str):
        super().__init__(f"recipe key '{key}' {problem}")
        self.key, self.problem = key, problem


def _get(cfg: dict, dotted: str):
    section, key = dotted.split(".")
    return cfg[section][key]


def _choice(cfg: dict, dotted: str, choices: tuple[str, ...]) -> None:
    if _get(cfg, dotted) not in choices:
        raise BadValue(dotted, f"must be one of {', '.join(choices)}; got {_get(cfg, dotted)!r}")


def _positive(cfg: dict, dotted: str, allow_zero: bool = False) -> None:
    v = _get(cfg, dotted)
    if v < 0 or (v == 0 and not allow_zero):
        raise BadValue(dotted, f"must be {'>= 0' if allow_zero else '> 0'}; got {v!r}")


def validate(cfg: dict) -> None:
    """Value checks beyond types; each failure names the key."""
    _choice(cfg, "prepare.flow", ("dis", "tvl1", "none"))
    _choice(cfg, "prepare.store", ("npy", "packed"))
    _choice(cfg, "train.optimizer", ("sgd", "adam", "adagrad"))
    _choice(cfg, "train.schedule", ("cosine", "step", "constant"))
    _choice(cfg, "train.amp", ("auto", "bf16", "fp16", "none"))
    _choice(cfg, "gblend.mode", ("offline", "online", "fixed"))
    _choice(cfg, "model.fusion", ("late", "dropout", "midconcat", "se-gate", "nl-gate"))
    _choice(cfg, "gblend.metric", ("loss", "accuracy"))
    _choice(cfg, "gblend.rule", ("regularised", "raw", "formula"))
    _choice(cfg, "dataset.label_field", ("verb", "noun", "action"))
    _choice(cfg, "methods.ogm_coefficient", ("paper", "shifted"))
    for m in cfg["reproduce"]["methods"]:
        if m not in BALANCING_METHODS:
            raise BadValue("reproduce.methods", f"holds {m!r}; known methods: {', '.join(BALANCING_METHODS)}")
    if cfg["dataset"]["ucf_split"] not in (1, 2, 3):
        raise BadValue("dataset.ucf_split", f"must be 1, 2 or 3 (UCF-101's official splits); got {cfg['dataset']['ucf_split']!r}")
    if not all(isinstance(c, str) and c for c in cfg["dataset"]["classes"]):
        raise BadValue("dataset.classes", f"must be a list of class names; got {cfg['dataset']['classes']!r}")
    for k in ("train.epochs", "train.batch_size", "clip.frames", "clip.crop", "clip.eval_clips",
              "clip.audio_frames", "prepare.fps", "prepare.short_side", "prepare.flow_bound", "train.lr", "prepare.decode_timeout_s",
              "gblend.super_epoch", "gblend.warmup_super_epoch", "tables.adam_lr", "tables.adagrad_lr", "demo.classes", "demo.fps", "demo.size",
              "demo.texture_block", "demo.drift_block",
              "train.eval_every"):
        _positive(cfg, k)
    for k in ("train.weight_decay", "train.warmup_epochs", "train.grad_clip", "train.workers",
              "gblend.estimate_epochs", "prepare.workers", "prepare.transient_tries", "gblend.min_weight", "gblend.evidence_z",
              "demo.train_videos", "demo.test_videos", "train.train_eval_size",
              "train.momentum", "train.gamma", "train.seed", "demo.seed", "train.threads", "model.fusion_dropout",
              "model.fix_dropout",
              "prepare.threads", "prepare.max_seconds", "demo.seconds", "demo.blob_sigma",
              "demo.blob_speed", "demo.blank_fraction", "demo.pixel_noise", "demo.direction_jitter_deg",
              "demo.texture_amp", "demo.drift_amp", "demo.drift_speed", "demo.still_object", "demo.object_hue",
              "demo.audio_class_fraction", "demo.audio_class_amp", "demo.audio_memo_tones", "demo.audio_memo_amp",
              "demo.audio_noise", "methods.ogm_alpha", "methods.ogm_end_epoch", "methods.mmpareto_gamma",
              "methods.umt_weight", "methods.inforeg_beta", "methods.inforeg_threshold", "methods.inforeg_window",
              "reproduce.methods_epochs"):
        _positive(cfg, k, allow_zero=True)
    for k in ("train.momentum", "demo.blank_fraction", "demo.audio_class_fraction", "demo.still_object", "demo.object_hue"):
        if _get(cfg, k) > 1:
            raise BadValue(k, f"must be <= 1; got {_get(cfg, k)}")
    for k in ("model.fusion_dropout", "model.fix_dropout"):
        if _get(cfg, k) >= 1:
            raise BadValue(k, f"must be < 1; got {_get(cfg, k)}")
    if cfg["model"]["fusion_stage"] not in (1, 2, 3):
        raise BadValue("model.fusion_stage", f"must be 1, 2 or 3 (the stage after which audio meets the visual "
                                             f"features); got {cfg['model']['fusion_stage']!r}")
    for opt in cfg["tables"]["optimizers"]:
        if opt not in ("sgd", "adam", "adagrad"):
            raise BadValue("tables.optimizers", f"holds {opt!r}; choose from sgd, adam, adagrad")
    for k in ("model.visual_widths", "model.visual_layers", "model.audio_widths", "model.audio_layers"):
        v = _get(cfg, k)
        if len(v) != 4 or not all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in v):
            raise BadValue(k, f"must be 4 positive integers (one per ResNet stage); got {v!r}")
    for k in ("reproduce.seeds", "reproduce.other_seeds"):  # integers (the schema); other_seeds = []: no other runs
        v = _get(cfg, k)
        if any(x < 0 for x in v) or not (v or k == "reproduce.other_seeds"):
            raise BadValue(k, f"must be a list of training seeds (integers >= 0); got {v!r}")
    v = cfg["train"]["milestones"]
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) and x >= 0 for x in v):
        raise BadValue("train.milestones", f"must be a list of epochs >= 0; got {v!r}")
    if cfg["gblend"]["min_weight"] > 0.05:
        raise BadValue("gblend.min_weight", f"must be <= 0.05 (a guard for heads that do not generalise, not a "
                                            f"tuning knob); got {cfg['gblend']['min_weight']}")
    rp = cfg["reproduce"]
    for k, combos in (("reproduce.main", [rp["main"]]), ("reproduce.other_combos", rp["other_combos"]),
                      ("reproduce.methods_combos", rp["methods_combos"])):
        for c in combos:
            mods = str(c).split("+")
            if len(mods) < 2 or len(set(mods)) != len(mods) or not set(mods) <= set(MODALITIES):
                raise BadValue(k, f"holds {c!r}, not a combination like audio+rgb of {', '.join(MODALITIES)}")
    for k in ("gblend_modes", "other_gblend_modes"):
        bad = [m for m in rp[k] if m not in GBLEND_MODES]
        if bad:
            raise BadValue(f"reproduce.{k}", f"holds {bad[0]!r}, not a G-Blend mode ({', '.join(GBLEND_MODES)})")
    if not 0 <= cfg["train"]["holdout_fraction"] < 1:
        raise BadValue("train.holdout_fraction", f"must be in [0, 1); got {cfg['train']['holdout_fraction']}")
    if cfg["clip"]["crop"] > cfg["prepare"]["short_side"]:
        raise BadValue("clip.crop", f"({cfg['clip']['crop']}) must not exceed 'prepare.short_side' "
                                    f"({cfg['prepare']['short_side']})")


def data_dir(cfg: dict) -> Path:
    return Path(cfg["dataset"]["data_dir"] or f"data/{cfg['dataset']['name']}")


def results_dir(cfg: dict) -> Path:
    return Path(cfg["dataset"]["results_dir"] or f"results/{cfg['dataset']['name']}")


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v)} to TOML")


def to_toml(cfg: dict) -> str:
    """The resolved config as TOML (saved beside every output; `tomllib` reads it back)."""
    lines = [f"# resolved gblend config (recipe: {cfg.get('_recipe') or 'built-in defaults'})"]
    for section in DEFAULTS:
        lines.append(f"\n[{section}]")
        for key in DEFAULTS[section]:
            lines.append(f"{key} = {_toml_value(cfg[section][key])}")
    return "\n".join(lines) + "\n"


def read_saved_config(path: Path) -> dict:
    """Read a config.toml saved by `to_toml` (validated against the schema); a key it lacks reads as
    what its gblend did without it (saved_value)."""
    cfg = load_config(path)
    saved = tomllib.loads(path.read_text(encoding="utf-8"))
    for section, values in DEFAULTS.items():
        for key in values:
            if key not in saved.get(section, {}):
                cfg[section][key] = saved_value(saved, section, key)
    return cfg
