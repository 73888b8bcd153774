"""TFDS builders (array_record) for the datasets clipseg-jax trains and evaluates on.

Each reads its dataset's original on-disk layout from a manual directory; nothing is downloaded.
"""

BUILDERS = {  # our short name -> (module, TFDS builder name)
    "synthetic": ("input_pipeline.builders.synthetic", "clipseg_synthetic"),
    "phrasecut": ("input_pipeline.builders.phrasecut", "clipseg_phrasecut"),
    "pascal_voc": ("input_pipeline.builders.pascal_voc", "clipseg_pascal_voc"),
    "coco": ("input_pipeline.builders.coco", "clipseg_coco"),
}
