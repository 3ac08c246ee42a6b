"""Postprocessing without torch: connected-component rules, chosen on cross-validation predictions."""
