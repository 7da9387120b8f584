"""gblend: reproduce Wang, Tran & Feiszli, "What Makes Training Multi-Modal Classification
Networks Hard?" (CVPR 2020) end to end: data preparation, uni-modal / naive / Gradient-Blending
training, the Overfitting-to-Generalization Ratio, and the paper's tables."""

__version__ = "0.1.0"

# Bumped whenever the layout of prepared data or run folders changes incompatibly.
FORMAT_VERSION = 1
