"""Metric key names that several modules write or read (the logged columns of metrics.csv).

docs/metrics.md defines each one; keys used by one module only stay in that module.
"""

STS_DEV = "val/stsb_spearman"  # STS-B dev Spearman x100 of the model being trained
STS_TEST = "test/stsb_spearman"  # STS-B test Spearman x100 of the final model
STS_TEST_BEST = "test/stsb_spearman_best"  # ... of the best checkpoint's model
TRAIN_LOSS = "train/loss"
EXAMPLES_SEEN = "trainer/examples_seen"  # optimizer steps x global batch size
MLM_HELD_OUT_LOSS = "val/mlm_loss"  # masked-LM loss on the held-out sentences (`ctrain pretrain`)
IG_KL_R2 = "weighting/ig_kl_r2"  # R^2 of IG weights on KL(w); its interval is IG_KL_R2 + "_ci_low" / "_ci_high"
