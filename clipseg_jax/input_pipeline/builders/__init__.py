"""TFDS builders (array_record) for the datasets clipseg-jax trains and evaluates on.

Each reads its dataset's original on-disk layout from a manual directory; nothing is downloaded.
"""

BUILDERS = {  # our short name -> (module, TFDS builder name)
  "synthetic": ("clipseg_jax.input_pipeline.builders.synthetic", "clipseg_synthetic"),
  "phrasecut": ("clipseg_jax.input_pipeline.builders.phrasecut", "clipseg_phrasecut"),
  "pascal_voc": ("clipseg_jax.input_pipeline.builders.pascal_voc", "clipseg_pascal_voc"),
  "coco": ("clipseg_jax.input_pipeline.builders.coco", "clipseg_coco"),
}
