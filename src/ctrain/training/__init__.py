"""Training: the LightningModule (module), its objectives (objectives, losses, diffcse), masked-LM pre-training
(pretrain), the optimizer (optim) and the loggers (loggers)."""
