"""Fused CUDA kernels for upfirdn2d and bias_act: sources (compiled by ops/cuda_build.py on first
use) and their autograd Functions (functions.py)."""
