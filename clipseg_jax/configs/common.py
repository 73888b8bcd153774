"""The fields every training config has; recipes override what differs (one file per recipe).

Recipes hold literals and import nothing from the library (only ml_collections and each other): what a
value means is decided where the library reads the config. tests/test_configs.py checks that the literals
below match the library's own defaults.
"""

import ml_collections

# timojl/clipseg `get_prompt_list("shuffle+")` (= clipseg_jax.input_pipeline.pcplus.TEMPLATES): one drawn per sample
SHUFFLE_PLUS = (
  "a photo of a {}.",
  "a photograph of a {}.",
  "an image of a {}.",
  "{}.",
  "a cropped photo of a {}.",
  "a good photo of a {}.",
  "a photo of one {}.",
  "a bad photo of a {}.",
  "a photo of the {}.",
)
# The paper's: the decoder trains, CLIP is frozen (= clipseg_jax.train.freeze.DEFAULT_RULES)
DECODER_ONLY = (("decoder/.*", 1.0), ("clip/.*", "frozen"))


def base() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.total_steps = 20_000
  c.batch_size = 64
  c.checkpoint_every = 1000
  c.keep_checkpoints = 3
  c.log_every = 50
  c.eval_every = 2000
  c.eval_images = 200  # held-out images per periodic evaluation
  c.sample_every = 2000  # prediction pictures in the workdir

  c.model = ml_collections.ConfigDict()
  c.model.clip = "openai/clip-vit-base-patch16"  # anything load_model or an HF CLIP dir gives
  # The released weights (and HF configs) read (3, 6, 9); the original's training yamls say [3, 7, 9]:
  # `paper()` sets those for the paper's recipes.
  c.model.extract_layers = (3, 6, 9)
  c.model.reduce_dim = 64
  c.model.decoder_num_attention_heads = 4
  c.model.decoder_intermediate_size = 2048
  c.model.conditional_layer = 0
  c.model.use_complex_transposed_convolution = False
  # The refined head's two upsampling kernels (k1, k2), k1 * k2 = the patch size (e.g. (7, 2) for patch 14,
  # (8, 4) for patch 32); () is transformers' (patch // 4, patch // 4), exact for patch 16 only.
  c.model.transposed_convolution_kernels = ()
  c.model.use_decoder_blocks = True  # False: the CLIP-Deconv baseline (no decoder blocks)
  c.model.withhold_prompt = False  # ablation: the decoder never sees the prompt
  c.model.activation_scale = 1.0  # the reduce layers train on s x CLIP's activations
  # (train/step.py: fold_activation_scale)
  # Dropout in the decoder blocks while training, where torch's nn.TransformerEncoderLayer puts it (its
  # default 0.1 was on in the original's training: `paper()`); never at inference.
  c.model.decoder_dropout = 0.0
  # The original's CLIPDenseBaseline: its reduce2 MLP width (needs use_decoder_blocks=False); None: off.
  c.model.reduce2_dim = ml_collections.config_dict.placeholder(int)

  c.data = ml_collections.ConfigDict()
  c.data.name = "phrasecut"
  # Prepared datasets; unset: $TFDS_DATA_DIR, else ~/tensorflow_datasets (input_pipeline.sources.data_dir_or_default)
  c.data.data_dir = ml_collections.config_dict.placeholder(str)
  c.data.train_split = "train"
  c.data.eval_split = "val"
  c.data.workers = 2
  # Batches per worker kept in shared memory that is reused (input_pipeline/handoff.py); unset: the
  # loader's default (its read-ahead + 4); 0: grain's new segment per array per batch (about 1.5 ms
  # per MB more host time on a 2-core VM).
  c.data.pool_slots = ml_collections.config_dict.placeholder(int)
  c.data.heldout_classes = ()  # PASCAL classes removed for zero-/one-shot training
  # How phrases naming them are found (input_pipeline/heldout.py): "wordnet" (the original's WordNet
  # hyponyms + lemmatizer) or "synonyms" (a short hand-made list)
  c.data.heldout_rule = "wordnet"
  # The original's `only_visual`: train only on phrases that more than one sample carries (the condition is
  # then the visual prompt alone: set data.pcplus.mix_max=0.0)
  c.data.only_visual = False
  c.data.pcplus = ml_collections.ConfigDict(
    dict(
      image_size=352,
      q_neg=0.2,
      visual_prompts=True,
      mix_max=0.5,
      prompt_mode="crop_blur_highlight",
      crop_tries=50,
      min_mask_fraction=0.05,
      augment=True,
      templates=SHUFFLE_PLUS,
      # Supports' prompt engineering inside the jitted step (input_pipeline/device.py): the same samples
      # (to float32 rounding), 2.3x the loader's throughput per worker; False: all on the host.
      device_augment=True,
      # device_augment: crops up to this side ship as padded uint8 and are resized on the device; larger
      # ones are resized on the host (PhraseCut's images are mostly 500-800 px)
      max_crop_side=512,
    )
  )  # prompt engineering: one drawn per sample
  c.data.cache_features = "auto"  # "auto": on when query images are not augmented

  c.optim = ml_collections.ConfigDict()
  c.optim.learning_rate = 1e-3
  c.optim.end_learning_rate = 1e-4  # cosine decay to this over total_steps
  c.optim.warmup_steps = 0
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.weight_decay = 0.01
  c.optim.grad_clip_norm = 0.0  # 0: no clipping
  # A step with a non-finite loss, gradient norm or update stops the run (before anything is saved);
  # up to this many such steps (per invocation) are skipped instead: the update is dropped.
  c.optim.skip_nonfinite_steps = 0
  c.optim.compute_dtype = "float32"  # "bfloat16": bf16 compute, float32 params
  # What trains: (regex over '/'-joined parameter paths, learning-rate multiplier or "frozen"), first
  # match wins (clipseg_jax/train/freeze.py). E.g. the last vision block at a tenth of the rate:
  # (("decoder/.*", 1.0), ("clip/vision_model/encoder/layers_11/.*", 0.1), ("clip/.*", "frozen")).
  c.optim.freeze_rules = DECODER_ONLY

  c.mesh = ml_collections.ConfigDict()
  c.mesh.shape = (-1, 1)  # (data, model); -1: all remaining devices
  c.mesh.axes = ("data", "model")
  c.mesh.clip_sharding = "replicated"  # or "fsdp": CLIP weights split over the model axis
  return c


def paper() -> ml_collections.ConfigDict:
  """`base()` with what every training yaml of the original shares (timojl/clipseg experiments/*.yaml:
  `extract_layers: [3, 7, 9]`, `amp: True`) and what torch did by default there (decoder dropout 0.1):
  recipes of the paper start here. Released weights still load with (3, 6, 9) (their HF configs)."""
  c = base()
  c.model.extract_layers = (3, 7, 9)
  c.model.decoder_dropout = 0.1
  # The original's AMP: bfloat16 compute (CLIP forward and decoder), float32 master weights and optimiser
  # state; --config.optim.compute_dtype=float32 for full precision (e.g. on CPUs, where bf16 is slower).
  c.optim.compute_dtype = "bfloat16"
  return c
