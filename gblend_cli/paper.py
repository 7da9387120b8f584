"""The paper's own numbers (Wang, Tran, Feiszli, CVPR 2020; Kinetics), as data for the report's
"paper" columns. Nothing here is ever presented as a result of this tool."""

from __future__ import annotations

# Table 1: naive late fusion vs best uni-modal, video top-1
TABLE1 = {
    "audio+rgb": {"late_fusion": 71.4, "best_unimodal": "rgb", "best_unimodal_video_top1": 72.6, "drop": -1.2},
    "rgb+flow": {"late_fusion": 71.3, "best_unimodal": "rgb", "best_unimodal_video_top1": 72.6, "drop": -1.3},
    "audio+flow": {"late_fusion": 58.3, "best_unimodal": "flow", "best_unimodal_video_top1": 62.1, "drop": -3.8},
    "audio+rgb+flow": {"late_fusion": 70.0, "best_unimodal": "rgb", "best_unimodal_video_top1": 72.6, "drop": -2.6},
}

# Table 4: clip top-1 / video top-1 / video top-5, and the G-Blend weights
TABLE4 = {
    "audio+rgb": {"weights": {"rgb": .630, "audio": .014, "fused": .356},
                  "best_unimodal": (63.5, 72.6, 90.1), "naive": (61.8, 71.4, 89.3), "gblend": (65.9, 74.7, 91.5)},
    "rgb+flow": {"weights": {"rgb": .309, "flow": .495, "fused": .196},
                 "best_unimodal": (63.5, 72.6, 90.1), "naive": (62.2, 71.3, 89.6), "gblend": (64.3, 73.1, 90.8)},
    "audio+flow": {"weights": {"flow": .827, "audio": .011, "fused": .162},
                   "best_unimodal": (49.2, 62.1, 82.6), "naive": (46.2, 58.3, 79.9), "gblend": (54.4, 66.3, 86.0)},
    "audio+rgb+flow": {"weights": {"rgb": .33, "flow": .53, "audio": .01, "fused": .13},
                       "best_unimodal": (63.5, 72.6, 90.1), "naive": (61.0, 70.0, 88.7), "gblend": (66.1, 74.9, 91.8)},
}

# Table 2: A+RGB on Kinetics, offline vs online G-Blend
TABLE2 = {"naive": (61.8, 71.7, 89.6), "rgb": (63.5, 72.6, 90.1), "gblend-offline": (65.9, 74.7, 91.5),
          "gblend-online": (66.9, 75.8, 91.9)}

COMBOS = ("audio+rgb", "rgb+flow", "audio+flow", "audio+rgb+flow")
SHORT = {"audio": "A", "rgb": "RGB", "flow": "OF"}


def combo_label(combo: str) -> str:
    return "+".join(SHORT[m] for m in combo.split("+"))


def compared(variant: str, combo: str) -> dict[str, float] | None:
    """The paper's video top-1 of the rows a report check compares on `combo` ("naive", "best
    uni-modal", and "gblend" for a G-Blend variant), from the table that reports that comparison:
    Table 1 for naive fusion, Table 4 for offline G-Blend, Table 2 for online (A+RGB only; its naive
    reads 71.7, Table 1's 71.4). None where the paper has no such row."""
    if variant == "naive" and combo in TABLE1:
        t = TABLE1[combo]
        return {"naive": t["late_fusion"], "best uni-modal": t["best_unimodal_video_top1"]}
    if variant == "gblend-offline" and combo in TABLE4:
        t = TABLE4[combo]
        return {"naive": t["naive"][1], "best uni-modal": t["best_unimodal"][1], "gblend": t["gblend"][1]}
    if variant == "gblend-online" and combo == "audio+rgb":
        return {"naive": TABLE2["naive"][1], "best uni-modal": TABLE2["rgb"][1], "gblend": TABLE2["gblend-online"][1]}
    return None


# Table 5: A+RGB on Kinetics (clip top-1 / video top-1 / video top-5), by row id (experiment.table_keys);
# the paper's mini-Sports column beside it
TABLE5 = {"audio": (13.9, 19.7, 33.6), "rgb": (63.5, 72.6, 90.1), "pretrain": (61.9, 71.7, 89.6),
          "naive": (61.8, 71.7, 89.3), "dropout": (63.8, 72.9, 90.6), "aux": (60.5, 70.8, 88.6),
          "gblend": (65.9, 74.7, 91.5)}
TABLE5_MINI_SPORTS = {"audio": (14.7, 22.1, 35.6), "rgb": (48.5, 62.7, 84.8), "pretrain": (48.3, 61.3, 84.9),
                      "naive": (47.1, 60.2, 83.3), "dropout": (47.4, 61.4, 84.3), "aux": (48.9, 62.1, 84.0),
                      "gblend": (49.7, 62.8, 85.5)}

# Figure 1: attempted fixes for A+RGB on Kinetics, video top-1 only
FIG1 = {"rgb": 72.6, "late": 71.4, "pretrain": 71.7, "earlystop": 71.3, "dropout": 72.9, "midconcat": 72.8,
        "se-gate": 71.4, "nl-gate": 72.0}

# Table 3: optimisers (clip top-1 / video top-1 / video top-5): visual (RGB) only, naive A+RGB, G-Blend
TABLE3 = {"adagrad": {"rgb": (60.0, 68.9, 88.4), "naive": (56.4, 65.2, 86.5), "gblend": (62.1, 71.3, 89.8)},
          "adam": {"rgb": (60.1, 69.3, 88.7), "naive": (57.9, 66.4, 86.8), "gblend": (63.0, 72.1, 90.5)}}
