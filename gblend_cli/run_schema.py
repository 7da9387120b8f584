"""What makes a run folder's journal row or final.json unusable to a reader (report, resume):
a field missing or of the wrong type. RunFolder refuses such a file in one line naming it, rather
than let a reader fail on it later."""

from __future__ import annotations


def _number(v) -> bool:
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))


def _numbers(d) -> bool:
    return isinstance(d, dict) and all(_number(v) for v in d.values())


def row_problem(journal: str, row: dict) -> str | None:
    """What makes a journal row unusable by a reader (a field missing or of the wrong type), or None."""
    if not isinstance(row.get("epoch"), int) or isinstance(row.get("epoch"), bool):
        return "epoch"
    if journal == "metrics.jsonl":
        if not _number(row.get("lr")) or ("weights" in row and not _numbers(row["weights"])):
            return "lr or weights"
        for split in ("train", "holdout", "val"):
            if split in row and not (isinstance(row[split], dict) and all(_numbers(v) for v in row[split].values())):
                return split
    elif journal == "blend_weights.jsonl":
        heads = row.get("heads")
        if not isinstance(heads, dict) or not all(isinstance(v, dict) and _number(v.get("w_raw")) and
                                                  _number(v.get("w")) and v.get("w") is not None for v in heads.values()):
            return "heads"  # (w_raw may be null: the formula is undefined there; w never is)
    return None


# what every report reads of a final.json (every gblend has written them)
FINAL_REQUIRED = ("clip_top1", "video_top1", "video_top5", "train_top1")


def names_earlier_estimate(row: dict, earlier: list[dict]) -> bool:
    """A blend_weights.jsonl row that kept the weights in force (`kept_from`) names an estimate
    logged before it (the weights came from there: run_folder.estimate_in_force)."""
    return row.get("kept_from") is None or any(r.get("epoch") == row["kept_from"] for r in earlier)


def final_problem(final: dict) -> str | None:
    """What makes a final.json unusable by a reader (a field missing or of the wrong type), or None."""
    for k in FINAL_REQUIRED:
        if final.get(k) is None:  # a null accuracy would drop out of a mean while its seed still counted
            return f"{k} is missing"
    if not isinstance(final.get("head"), str):
        return "head is missing"
    for k in ("clip_top1", "video_top1", "video_top5", "train_top1", "val_loss", "train_loss", "map", "mauc"):
        if k in final and not _number(final[k]):
            return f"{k} is not a number"
    for k in ("heads", "weights", "splits"):
        if k in final and not isinstance(final[k], dict):
            return f"{k} is not a table"
    for head, vals in final.get("heads", {}).items():
        if not isinstance(vals, dict) or not all(_number(v) for v in vals.values()):
            return f"heads.{head} holds a value that is not a number"
    if not all(_number(v) and v is not None for v in final.get("weights", {}).values()):
        return "weights holds a value that is not a number"
    for k in ("seed", "epochs"):
        if k in final and (not isinstance(final[k], int) or isinstance(final[k], bool)):
            return f"{k} is not an integer"
    if "modalities" in final and (not isinstance(final["modalities"], list)
                                  or not all(isinstance(m, str) for m in final["modalities"])):
        return "modalities is not a list of names"
    for k in ("method", "head", "mode", "dataset"):
        if k in final and not isinstance(final[k], str):
            return f"{k} is not a name"
    return None
