"""UME as a (non-training) loss policy: Uni-Modal Ensemble (Du et al., "On Uni-Modal Feature
Learning in Supervised Multi-Modal Learning", ICML 2023).

The finished uni-modal runs of the same recipe and seed are put side by side, and the prediction
is the mean of their logits:

    f(x) = (1/k) Σ_u W_u φ_u(x_u) + b_u        (`MultiModalNet(fusion="mean")`, RunKey.fusion)

Nothing is trained (`trains = False`): the run loads the uni-modal runs' backbones and heads
(their last.pt), measures epoch 0 on T', V and the evaluation split, and evaluates. Its wall time
is the evaluation's; the uni-modal runs it stands on are their own rows.

Our reading: the members are weighted equally (a weighting would be a hyper-parameter, and would
have to be chosen on V); logits are averaged, not probabilities.
"""

from __future__ import annotations

from ..models import load_backbones


class UME:
    """An ensemble of the finished uni-modal runs; trains nothing."""

    trains = False

    def __init__(self, modalities: list[str], sources: dict[str, tuple[str, dict]]):
        """`sources`: {modality: (run name, its last.pt model state)}."""
        self.modalities = list(modalities)
        self.sources = {m: name for m, (name, _) in sources.items()}
        self._states = [(name, state) for name, state in sources.values()]

    def init_model(self, model) -> None:
        load_backbones(model, self._states)

    def before_epoch(self, epoch: int, ctx) -> None:
        pass

    def weights_for(self, epoch: int) -> dict[str, float]:
        return {}

    def estimation_plan(self) -> dict[int, int]:
        return {}

    def state_dict(self) -> dict:
        return {"sources": dict(self.sources)}

    def load_state_dict(self, state: dict) -> None:
        pass
