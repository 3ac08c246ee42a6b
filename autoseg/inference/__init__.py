"""Inference: tiling and Gaussian weights (numpy), sliding-window prediction with mirror TTA (torch)."""
