"""Semi-supervised 3D medical image segmentation for nnU-Net v2 (dual networks, CPS and CCE).

Kept import-free: a ``.pth`` hook imports :mod:`nnunet_ccesemi._discovery` in every Python process.
"""
__version__ = "0.1.0"
