"""clipseg-jax: CLIPSeg (Lüddecke & Ecker, CVPR 2022) in JAX/Flax, numerically identical to PyTorch."""

from clipseg_jax.api import ClipSeg
from clipseg_jax.config import ClipSegConfig, TextConfig, VisionConfig
from clipseg_jax.load import load_model

__all__ = ["ClipSeg", "ClipSegConfig", "TextConfig", "VisionConfig", "load_model"]
__version__ = "0.1.0"
