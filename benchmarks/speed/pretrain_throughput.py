"""Benchmark: masked-LM pre-training throughput against what this machine's matmuls can do.

The peer is the machine itself. A dense fp32 matmul of the same threads gives the FLOP/s ceiling.
The pre-training step (`MaskedLMModule.masked_lm`, backward, AdamW, as `ctrain pretrain` runs it,
without the Lightning loop) gives tokens per second. The model's FLOPs per token, counted from
its shape, turn those into achieved FLOP/s. Printed: both, and their ratio (the share of the
ceiling a step uses), for the model of `configs/pretrain_bert_cpu.yaml` and any `--tokenizer`,
`--hidden-size` / `--num-layers` or `--pack` variant. Tokens are real tokens (padding not counted), so the
padding of one sentence a row shows as lost throughput, and `--pack` (`data.pack`: full rows) as won back.

Sentences are the STS-B train sentences (offline), batched as the config batches them.

    python benchmarks/speed/pretrain_throughput.py [--config configs/pretrain_bert_cpu.yaml] [--tokenizer bpe:data/corpus/all.txt] [--pack]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import yaml

from ctrain.data.sources import sts_b_examples
from ctrain.training.pretrain import MaskedLMModule

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, where the shared --toy option lives
from _toy import parse_args

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "pretrain_bert_cpu.yaml"
TOY = {"tokenizer": "bert-uncased", "hidden_size": 32, "num_layers": 1, "steps": 2}


def matmul_flops(size: int = 1024, repeats: int = 20) -> float:
    """FLOP/s of a dense fp32 (size x size) @ (size x size) matmul: the ceiling for the model's own matmuls."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(3):
        a @ b
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - started)


def flops_per_token(hidden: int, layers: int, vocabulary: int, length: float, mlm_share: float) -> float:
    """Training FLOPs per token (forward x 3): the layers' matmuls, attention scores, and the MLM head at masked positions."""
    layer = 2 * 12 * hidden**2 + 2 * 2 * length * hidden  # projections and feed-forward (4h), QK^T and AV
    head = mlm_share * 2 * (hidden**2 + hidden * vocabulary)  # transform, then the vocabulary projection
    return 3 * (layers * layer + head)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(CONFIG))
    parser.add_argument("--tokenizer", help="override the config's model.tokenizer")
    parser.add_argument("--hidden-size", type=int)
    parser.add_argument("--num-layers", type=int)
    parser.add_argument("--pack", action="store_true", help="packed rows of max_length tokens (data.pack)")
    parser.add_argument("--steps", type=int, default=30)
    args = parse_args(parser, TOY, argv)
    settings = yaml.safe_load(Path(args.config).read_text())
    model_settings = dict(settings["model"])
    for key, value in (("tokenizer", args.tokenizer), ("hidden_size", args.hidden_size), ("num_layers", args.num_layers)):
        if value is not None:
            model_settings[key] = value
    batch_size = settings["data"]["batch_size"]
    module = MaskedLMModule(**model_settings)
    module.model.train()
    optimizer = torch.optim.AdamW(module.parameters(), lr=model_settings.get("learning_rate", 5e-4))
    sentences = [example[0] for example in sts_b_examples(supervised=False)]
    examples, collate = (module.pack(sentences), module.packed_collator) if args.pack else (sentences, module.collator)
    batches = [collate(examples[i : i + batch_size]) for i in range(0, batch_size * (args.steps + 5), batch_size)]
    generator = torch.Generator().manual_seed(0)
    tokens = 0
    for step, batch in enumerate(batches):
        if step == 5:  # warm-up done
            started, tokens = time.perf_counter(), 0
        loss_sum, _, count = module.masked_lm(batch, generator)
        (loss_sum / count.clamp_min(1)).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tokens += int(batch["attention_mask"].sum())
    seconds = time.perf_counter() - started
    measured = batches[5:]
    length = sum(int(b["attention_mask"].sum()) for b in measured) / sum(len(b["attention_mask"]) for b in measured)
    per_token = flops_per_token(
        module.model.config.hidden_size, module.model.config.num_hidden_layers, len(module.tokenizer), length,
        model_settings.get("mlm_probability", 0.15),
    )  # fmt: skip
    head_share = 1 - flops_per_token(
        module.model.config.hidden_size, module.model.config.num_hidden_layers, 0, length, 0.0
    ) / per_token  # fmt: skip
    achieved, ceiling = per_token * tokens / seconds, matmul_flops()
    print(f"model: hidden {module.model.config.hidden_size}, {module.model.config.num_hidden_layers} layers, vocabulary "
          f"{len(module.tokenizer)}, {sum(p.numel() for p in module.parameters()) / 1e6:.2f}M parameters; batch {batch_size}, "
          f"{length:.1f} tokens a row on average ({'packed' if args.pack else 'one sentence a row'}); "
          f"torch threads {torch.get_num_threads()}")  # fmt: skip
    print(f"pre-training: {tokens / seconds:,.0f} tokens/s ({args.steps / seconds:.2f} steps/s), "
          f"{per_token / 1e6:.2f} MFLOP a token ({head_share:.0%} of them in the MLM head) -> {achieved / 1e9:.2f} GFLOP/s")
    print(f"matmul ceiling (fp32 1024^3): {ceiling / 1e9:.2f} GFLOP/s; ratio step / ceiling: {achieved / ceiling:.1%}")


if __name__ == "__main__":
    main()
