"""Dataset fingerprint: per-case measurements (pure) and their parallel aggregation."""
