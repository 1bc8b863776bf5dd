"""`ctrain pretrain`: `ctrain fit`'s LightningCLI over the masked-LM pair (ctrain.training.pretrain, ctrain.data.mlm)."""

from __future__ import annotations

from ctrain.callbacks.outputs import PretrainOutputs
from ctrain.cli.fit import CtrainCLI
from ctrain.data.mlm import PretrainDataModule
from ctrain.keys import MLM_HELD_OUT_LOSS
from ctrain.training.pretrain import MaskedLMModule


class PretrainCLI(CtrainCLI):
    """`ctrain fit`'s CLI over the masked-LM objective: best checkpoint by held-out MLM loss."""

    model_class = MaskedLMModule
    datamodule_class = PretrainDataModule
    outputs_class = PretrainOutputs
    monitor, monitor_mode, monitor_label = MLM_HELD_OUT_LOSS, "min", "held-out MLM loss"
    default_run_name = "pretrain"
    command = "pretrain"
