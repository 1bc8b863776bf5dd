"""Training throughput: ctrain vs sentence-transformers' own trainer, same model, data, batch and length.

Both fine-tune the offline all-MiniLM-L6-v2 on STS-B train pairs (score >= 4) with in-batch
negatives, cosine similarity and temperature 0.05 (MultipleNegativesRankingLoss, scale 20), batch
32, max length 32, AdamW lr 3e-5, no evaluation or saving. Both train with dropout on: every
module's mode and every dropout probability are read inside the timed steps, and the benchmark
fails when the two sides differ. Steps after `--warmup` are timed and the ratio
ctrain / sentence-transformers is printed (>= 1.0 means ctrain is not slower). `--model` trains another
encoder on both sides (ctrain's sentence-transformers export of it, so that both start from the same weights).

    python benchmarks/speed/train_throughput.py [--steps 40] [--warmup 5] [--device cpu|cuda] [--model NAME] [--batch 32]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, where the shared --toy option lives
from _toy import TOY_MODEL, parse_args

MODEL, MAX_LENGTH, LR = "all-MiniLM-L6-v2", 32, 3e-5
TOY = {"model": TOY_MODEL, "steps": 3, "warmup": 1, "batch": 4, "pairs": 16}


def _training_state(model: torch.nn.Module) -> tuple[bool, tuple[float, ...]]:
    """(every module in train mode, the sorted dropout probabilities): what makes two trainers' steps alike."""
    probabilities = sorted(m.p for m in model.modules() if isinstance(m, torch.nn.Dropout))
    return all(m.training for m in model.modules()), tuple(probabilities)


class _StepTimer:
    """Wall time from the start of step `warmup` to the end of the last step."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.end, self.steps = warmup, None, None, 0
        self.states: set[tuple[bool, tuple[float, ...]]] = set()

    def step_begin(self, step: int) -> None:
        if step == self.warmup:
            self.start = time.perf_counter()

    def step_end(self, step: int) -> None:
        if step >= self.warmup:
            self.steps += 1
            self.end = time.perf_counter()

    @property
    def rate(self) -> float:
        return self.steps / (self.end - self.start)


def sentence_transformers_directory(name: str, scratch: Path) -> Path:
    """The model as a sentence-transformers directory, what both trainers load: the offline MiniLM's own, or
    ctrain's export of any other encoder into `scratch`."""
    from ctrain.assets import minilm_path
    from ctrain.models.encoder import load_encoder
    from ctrain.models.export import save_sentence_transformer

    if name == MODEL:
        return minilm_path()
    return save_sentence_transformer(load_encoder(name), scratch / "model", max_seq_length=MAX_LENGTH)


def run_ctrain(directory: Path, pairs: list[tuple[str, str]], batch: int, steps: int, warmup: int, device: str) -> _StepTimer:
    import pytorch_lightning as pl

    from ctrain import ContrastiveDataModule, ContrastiveModule

    timer = _StepTimer(warmup)

    class Timing(pl.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            timer.step_begin(trainer.global_step)

        def on_before_backward(self, trainer, module, loss):
            timer.states.add(_training_state(module.encoder.backbone))

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            timer.step_end(trainer.global_step - 1)

    pl.seed_everything(0, verbose=False)
    module = ContrastiveModule(encoder=str(directory), similarity="cos", temperature=0.05, learning_rate=LR)
    data = ContrastiveDataModule(supervised=True, batch_size=batch, max_length=MAX_LENGTH)
    data.examples = list(pairs)
    data.dev = data.test = [("a", "b", 1.0)]
    trainer = pl.Trainer(
        accelerator="gpu" if device == "cuda" else "cpu", devices=1, max_steps=steps, limit_val_batches=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[Timing()], use_distributed_sampler=False,
    )  # fmt: skip
    trainer.fit(module, datamodule=data)
    return timer


def run_sentence_transformers(directory: Path, pairs: list[tuple[str, str]], batch: int, steps: int, warmup: int, device: str) -> _StepTimer:
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.losses import MultipleNegativesRankingLoss
    from transformers import TrainerCallback

    timer = _StepTimer(warmup)

    class Timing(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            timer.step_begin(state.global_step)

        def on_step_end(self, args, state, control, model=None, **kwargs):
            timer.states.add(_training_state(model[0].auto_model))  # the transformer, as on ctrain's side
            timer.step_end(state.global_step - 1)

    model = SentenceTransformer(str(directory), device=device)
    model.max_seq_length = MAX_LENGTH
    dataset = Dataset.from_dict({"anchor": [a for a, _ in pairs], "positive": [p for _, p in pairs]})
    with tempfile.TemporaryDirectory() as output_dir:
        args = SentenceTransformerTrainingArguments(
            output_dir=output_dir, per_device_train_batch_size=batch, max_steps=steps, learning_rate=LR,
            warmup_steps=0, save_strategy="no", eval_strategy="no", report_to="none", logging_steps=10_000,
            dataloader_drop_last=True, seed=0, use_cpu=device == "cpu", disable_tqdm=True,
        )  # fmt: skip
        trainer = SentenceTransformerTrainer(
            model=model, args=args, train_dataset=dataset, loss=MultipleNegativesRankingLoss(model, scale=20.0),
            callbacks=[Timing()],
        )  # fmt: skip
        trainer.train()
    return timer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--pairs", type=int, default=None, help="the first N pairs (default: all)")
    options = parse_args(parser, TOY, argv)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from ctrain.data.sources import sts_b_examples

    pairs = sts_b_examples(supervised=True)[: options.pairs]
    print(f"{options.model}, {len(pairs)} STS-B pairs, batch {options.batch}, max length {MAX_LENGTH}, "
          f"{options.steps} steps ({options.warmup} untimed), {options.device}, torch threads {torch.get_num_threads()}")  # fmt: skip
    with tempfile.TemporaryDirectory() as scratch:
        directory = sentence_transformers_directory(options.model, Path(scratch))
        setting = (pairs, options.batch, options.steps, options.warmup, options.device)
        st = run_sentence_transformers(directory, *setting)
        ours = run_ctrain(directory, *setting)
    for name, timer in (("sentence-transformers", st), ("ctrain", ours)):
        if len(timer.states) != 1 or not next(iter(timer.states))[0]:
            raise SystemExit(f"{name} did not train with every module in train mode in every step: {timer.states}")
    if st.states != ours.states:
        raise SystemExit(f"the trainers differ in mode or dropout: sentence-transformers {st.states}, ctrain {ours.states}")
    _, dropout = next(iter(ours.states))
    print(f"both sides: every module in train mode in every step, dropout probabilities {sorted(set(dropout))}")
    print(f"sentence-transformers trainer: {st.rate:.3f} steps/s")
    print(f"ctrain:                        {ours.rate:.3f} steps/s")
    print(f"ratio ctrain / sentence-transformers: {ours.rate / st.rate:.3f}")


if __name__ == "__main__":
    main()
