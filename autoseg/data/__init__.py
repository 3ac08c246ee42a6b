"""Training data: patch sampling with foreground oversampling, augmentation, background batch loaders."""
