"""clipseg-jax: CLIPSeg (Lüddecke & Ecker, CVPR 2022) in JAX/Flax, numerically identical to PyTorch."""

from clipseg_jax.api import ClipSeg, load_model
from clipseg_jax.config import ClipSegConfig, TextConfig, VisionConfig

__all__ = ["ClipSeg", "ClipSegConfig", "TextConfig", "VisionConfig", "load_model"]
__version__ = "0.1.0"
