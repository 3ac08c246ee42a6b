"""Reading and writing images, labels and raw dataset folders (SimpleITK; no torch)."""
