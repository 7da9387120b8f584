"""gblend: reproduce Wang, Tran & Feiszli, "What Makes Training Multi-Modal Classification
Networks Hard?" (CVPR 2020) end to end: data preparation, uni-modal / naive / Gradient-Blending
training, the Overfitting-to-Generalization Ratio, and the paper's tables."""

__version__ = "0.1.0"

# Bumped whenever the layout of prepared data or run folders changes incompatibly.
FORMAT_VERSION = 1
# Prepared datasets: 1 = raw .npy arrays (store "npy"), 2 = one packed file per clip (store
# "packed", gblend_cli/store.py). This gblend reads both; an older one refuses 2 with one line.
DATASET_FORMAT_VERSION = 2
