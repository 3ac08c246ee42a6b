"""autoseg: a self-configuring medical image segmentation engine in the nnU-Net tradition."""

__version__ = "0.1.0"
