"""TFDS builder for the built-in synthetic dataset (generated, no files needed)."""

from __future__ import annotations

import dataclasses

import tensorflow_datasets as tfds

from clipseg_jax.input_pipeline import synthetic
from clipseg_jax.input_pipeline.builders.common import mask_feature, referring_features


@dataclasses.dataclass
class SyntheticConfig(tfds.core.BuilderConfig):
  image_size: int = 256
  seed: int = 0
  scenes: dict = dataclasses.field(default_factory=dict)  # split -> number of scenes


class ClipsegSynthetic(tfds.core.GeneratorBasedBuilder):
  """Coloured shapes on textured backgrounds with referring phrases and negatives."""

  name = "clipseg_synthetic"
  VERSION = tfds.core.Version("1.1.0")
  SUPPORTED_VERSIONS = [tfds.core.Version("1.0.0")]  # read where prepared (sources.tfds_builder)
  RELEASE_NOTES = {"1.1.0": "masks stored as 1-bit PNGs (the same pixels).", "1.0.0": "First release."}
  BUILDER_CONFIGS = [
    SyntheticConfig(
      name="default", description="the demo's training set", scenes={"train": 2000, "validation": 100, "test": 200}
    ),
    SyntheticConfig(
      name="tiny", description="for tests", image_size=96, scenes={"train": 24, "validation": 6, "test": 6}
    ),
  ]

  def _info(self):
    return self.dataset_info_from_configs(features=referring_features(), homepage="", description=synthetic.__doc__)

  def _split_generators(self, dl_manager):
    return {split: self._generate_examples(split, n) for split, n in self.builder_config.scenes.items()}

  def _generate_examples(self, split, n):
    cfg = self.builder_config
    offset = {"train": 0, "validation": 1, "test": 2}.get(split, 3) * 10_000_000  # disjoint streams
    for i in range(n):
      examples, _ = synthetic.scene_examples(cfg.seed, offset + i, cfg.image_size)
      yield (
        f"{split}-{i}",
        {
          "image": examples[0]["image"],
          "image_id": f"{split}-{i}",
          "phrases": [e["phrase"] for e in examples],
          "masks": [mask_feature(e["mask"]) for e in examples],
        },
      )
