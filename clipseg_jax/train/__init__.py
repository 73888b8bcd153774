"""Training: the train step, the trainer, sharding, checkpoints, the feature cache, CLIP pretraining."""
