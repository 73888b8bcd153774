"""Input pipeline: TFDS datasets, PhraseCut+ sampling, visual prompt engineering, loaders.

Heavy dependencies (TensorFlow Datasets, grain) are imported on first use.
"""

from clipseg_jax.input_pipeline.sources import build, open_source, raw_examples

__all__ = ["build", "open_source", "raw_examples"]
