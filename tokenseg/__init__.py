"""TokenSeg: boundary-aware sparse token 3D medical image segmentation for MONAI."""

__version__ = "0.1.0"
