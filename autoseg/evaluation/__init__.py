"""Evaluation without torch: per-class overlap and surface metrics, folder evaluation to ``summary.json``."""
