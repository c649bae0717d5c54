"""Discrete Diffusion VLA: masked-token action chunks decoded in parallel (docs/algorithms.md section 5)."""
