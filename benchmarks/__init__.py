"""Performance benchmarks of gblend (not part of the installed package).

    python -m benchmarks.run [--quick]     # CPU: decoding, loading, training core, G-Blend, scaling
    python benchmarks/gpu.py               # CUDA: R(2+1)D-18/34 throughput and TFLOP/s vs the card's peak

Every figure is a ratio against a baseline measured in the same run (median of repeated,
interleaved measurements), so the numbers survive a noisy, shared machine. Results go to
benchmarks/results/<YYYY-MM-DD>-<machine>.json; the latest table is in docs/PERFORMANCE.md.
"""
