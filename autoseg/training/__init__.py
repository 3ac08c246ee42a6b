"""Training: losses, schedule, optimiser, the Trainer loop and its callbacks."""
