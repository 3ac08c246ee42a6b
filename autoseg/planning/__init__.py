"""Pure planning heuristics (no torch): spacing, topology, memory, patch and batch size, normalisation."""
