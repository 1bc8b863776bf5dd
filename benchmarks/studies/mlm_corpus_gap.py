"""Does the corpus limit MLM pre-training? The held-out loss against the same measurement on training sentences.

`ctrain pretrain` logs train/mlm_loss on packed rows with dropout on and val/mlm_loss on single held-out sentences
with dropout off, so the gap between the two curves mixes memorisation with the two measurements' differences. This
script measures a pre-trained start both ways alike: eval mode, one sentence a row, the validation's masks
(VALIDATION_SEED + batch index), on the held-out sentences and on every training sentence, the latter in blocks as
large as the held-out set (a seeded shuffle). The blocks' spread is the noise of a set that size, against which the gap
is read: a training loss well below the held-out loss means the model fits its corpus better than new text, so the
corpus limits. The held-out figure must equal the run's logged val/mlm_loss at that step (a check that the measurement
is the validation's).

    python benchmarks/studies/mlm_corpus_gap.py runs/vanilla_start/converged/checkpoints/last.ckpt
    python benchmarks/studies/mlm_corpus_gap.py runs/vanilla_converged/mlm_bert   # an export: masking as configs/pretrain_bert_cpu.yaml
    python benchmarks/studies/mlm_corpus_gap.py --toy   # a tiny random masked LM on STS-B train sentences (the test suite runs it)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

from ctrain.data.mlm import PretrainDataModule
from ctrain.data.sources import read_sts_b
from ctrain.training.pretrain import VALIDATION_SEED, MaskedLMModule

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, where the shared --toy option lives
from _toy import parse_args  # noqa: E402

TOY = {"start": None, "val_size": 40}


def validation_style_loss(module: MaskedLMModule, sentences: list[str], batch_size: int) -> tuple[float, float]:
    """(loss, accuracy) per masked token of `sentences` measured as the validation measures its held-out set."""
    totals = torch.zeros(3, dtype=torch.float64)
    module.eval()
    with torch.no_grad():
        for index, start in enumerate(range(0, len(sentences), batch_size)):
            batch = module.collator(sentences[start : start + batch_size])
            generator = torch.Generator().manual_seed(VALIDATION_SEED + index)
            totals += torch.stack([value.double() for value in module.masked_lm(batch, generator)])
    loss_sum, correct, count = totals.tolist()
    return loss_sum / count, correct / count


def load_start(args: argparse.Namespace) -> MaskedLMModule:
    """A checkpoint of `ctrain pretrain` (its own hyperparameters), an export (masking from the options) or, with
    --toy, a tiny random masked LM."""
    masking = {"max_length": args.max_length, "whole_word_masking": args.whole_word_masking}
    if args.start is None:
        return MaskedLMModule(hidden_size=32, num_layers=1, **masking)
    if args.start.suffix == ".ckpt":
        return MaskedLMModule.load_from_checkpoint(args.start, map_location="cpu")
    return MaskedLMModule(init_from=str(args.start), **masking)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("start", type=Path, nargs="?", help="a ctrain pretrain checkpoint (.ckpt) or export directory")
    parser.add_argument("--train", default="data/corpus/all.txt", help="the run's data.train")
    parser.add_argument("--val-size", type=int, default=1000, help="the run's data.val_size")
    parser.add_argument("--max-length", type=int, default=32, help="an export's model.max_length")
    parser.add_argument("--whole-word-masking", action=argparse.BooleanOptionalAction, default=True, help="an export's masking")
    parser.add_argument("--seed", type=int, default=1, help="shuffle of the training sentences into blocks")
    args = parse_args(parser, TOY, argv)
    with tempfile.TemporaryDirectory() as scratch:
        if args.toy:
            args.train = str(Path(scratch) / "toy.txt")
            Path(args.train).write_text("\n".join(row[0] for row in read_sts_b("train")[:200]) + "\n")
        elif args.start is None:
            parser.error("give a start: a ctrain pretrain checkpoint (.ckpt) or export directory, or --toy")
        data = PretrainDataModule(args.train, val_size=args.val_size)
        data.load_training_examples(world_size=1)
    module = load_start(args)
    order = torch.randperm(len(data.sentences), generator=torch.Generator().manual_seed(args.seed)).tolist()
    size, batch_size = len(data.held_out), data.hparams.eval_batch_size
    blocks = [[data.sentences[i] for i in order[start : start + size]] for start in range(0, len(order) - size + 1, size)]
    held_out_loss, held_out_accuracy = validation_style_loss(module, data.held_out, batch_size)
    block_losses = torch.tensor([validation_style_loss(module, block, batch_size)[0] for block in blocks], dtype=torch.float64)
    train_loss, spread = block_losses.mean().item(), block_losses.std().item()
    print(f"{args.start or 'a tiny random masked LM (--toy)'}: {size} held-out sentences; {len(blocks)} blocks of {size} training sentences, measured alike")
    print(f"  held-out: MLM loss {held_out_loss:.4f}, masked-token accuracy {held_out_accuracy:.2%}")
    print(f"  training: MLM loss {train_loss:.4f} (mean over blocks; standard deviation of a block {spread:.4f})")
    print(f"  gap (held-out - training): {held_out_loss - train_loss:+.4f} = {(held_out_loss - train_loss) / spread:+.2f} block standard deviations")


if __name__ == "__main__":
    main()
