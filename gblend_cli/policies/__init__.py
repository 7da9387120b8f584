"""Loss policies: how a run weighs its heads' losses, L = sum_h w_h CE_h, and — through the
optional gradient hook — how it turns them into gradients.

Each method is one class in one file behind the `LossPolicy` interface (policies/base.py):
uni-modal {m: 1}, naive {fused: 1}, hand-set or equal weights (the auxiliary-loss baseline), and
Gradient-Blending (policies/gblend.py), whose weights Algorithm 1 estimates; and G-Blend's
successors: OGM-GE (ogm_ge.py), MMPareto (mmpareto.py), UMT (umt.py), UME (ume.py) and InfoReg
(inforeg.py). `make_policy` picks the class for a run's key.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from ..experiment import RunKey
from .base import EstimationContext, LossPolicy
from .fixed import FixedWeights, parse_weights

__all__ = ["EstimationContext", "FixedWeights", "LossPolicy", "make_policy", "parse_weights", "unimodal_sources"]


def unimodal_sources(key: RunKey, cfg: dict) -> dict[str, tuple[str, dict]]:
    """{modality: (run name, last.pt model state)} of the finished uni-modal runs UMT and UME stand
    on: `methods.from_runs`, or RESULTS/unimodal-<m>-s<seed>; each checked to have run this recipe
    and seed (RunFolder.check_same_setup)."""
    from ..config import results_dir
    from ..run_folder import finished_runs

    sources = cfg["methods"]["from_runs"] or [str(results_dir(cfg) / k.name) for k in key.source_keys()]
    for s in sources:
        if not (Path(s) / "final.json").exists():
            need = RunKey.parse(Path(s).name)
            hint = f"; train it first: {need.command(out=Path(s))}" if need and need.method == "unimodal" else ""
            raise UserError(f"{s}: no finished uni-modal run here ({key.method} reads the uni-modal run of each "
                            f"modality, --from-runs){hint}")
    want = {m: ("unimodal", (m,)) for m in key.modalities}
    found = finished_runs(sources, want, "methods.from_runs", "needs the uni-modal run of each modality")
    out = {}
    for m, f in found.items():
        f.check_same_setup(cfg, f"it is not this run's uni-modal {m} run (methods.from_runs)")
        out[m] = (f.path.name, f.load_checkpoint("last")["model"])
    return out


def make_policy(key: RunKey, cfg: dict) -> LossPolicy:
    """The policy of a run: fixed weights for uni-modal, naive, hand-set and equal-weight runs;
    Gradient-Blending (offline or online); or one of G-Blend's successors."""
    if key.method == "unimodal":
        return FixedWeights({key.modalities[0]: 1.0})
    if key.method == "naive":
        return FixedWeights({"fused": 1.0})
    mods = list(key.modalities)
    if key.method == "ogm-ge":
        from .ogm_ge import OGMGE

        return OGMGE(cfg, mods)
    if key.method == "mmpareto":
        from .mmpareto import MMPareto

        return MMPareto(cfg, mods)
    if key.method == "inforeg":
        from .inforeg import InfoReg

        return InfoReg(cfg, mods)
    if key.method == "umt":
        from .umt import UMT

        return UMT(cfg, mods, unimodal_sources(key, cfg))
    if key.method == "ume":
        from .ume import UME

        return UME(mods, unimodal_sources(key, cfg))
    if key.mode in ("fixed", "equal"):
        return FixedWeights(parse_weights(cfg["gblend"]["weights"] if key.mode == "fixed" else "equal", key.heads))
    # offline G-Blend reading Algorithm 2's terms from finished runs (--estimate-from) measures nothing
    # itself; online G-Blend measures V again at every super-epoch (Algorithm 3), --estimate-from or not
    if cfg["train"]["holdout_fraction"] == 0 and not (key.mode == "offline" and cfg["gblend"]["estimate_from"]):
        why = ("online G-Blend measures its weights on V at every super-epoch (Algorithm 3; gblend.estimate_from serves "
               "offline G-Blend only)" if key.mode == "online" else "G-Blend's weights are measured on V (Algorithm 1)")
        raise UserError(f"train.holdout_fraction = 0 leaves no held-out V, and {why}; set train.holdout_fraction > 0 "
                        "(the paper holds out 8%) or give --weights")
    from .gblend import GradientBlending

    return GradientBlending(cfg, key.mode, key.heads)
