"""Theorem-1 lab's positive control checked against a peer: gensim's word2vec and ctrain's `sgns`, trained long.

Everything is measured with the lab's own probe, `ctrain.probes.weighting.lab_peer.LabProbe`: the lab's fits of
`0.5 ||w||^2` of the input rows on KL, dKL and -log P, on the lab's points (docs/theorem_lab.md).

Subcommands:

    gensim   word2vec (gensim, sg=1, negative sampling, hs=0, sample=0, whole-sentence window, 64 wide) on the lab's
             training tokens: the bag-bert WordPiece tokens of the 10,566 unique STS-B train sentences, truncated at 32,
             no special tokens; one run per (ns_exponent, epochs), each with gensim's own linearly decaying rate.
    replica  ctrain's `sgns` step in plain torch (same batches, pairs, negatives, init, SGD; no Lightning), with
             switches for what differs from word2vec; `--check RUN_DIR` compares it with a ctrain run's probe.
    runs     the fits logged by ctrain runs (metrics.csv of `ctrain fit ... --config benchmarks/lab/lab_peer_probe.yaml`).
    cost     where a ctrain bag `sgns` step's time goes (Lightning step vs the bare step, its parts).
    plot     ctrain runs' Spearman of 0.5 ||w||^2 on KL against epochs, beside one word2vec run's, snapshotted at the
             end of chosen epochs (its rate decays over the whole run, as one ctrain run's trajectory is one run):
             a PNG and a CSV of every point, its columns named as ctrain's metrics, so that
             `ctrain report SWEEP --reference OUT.csv` draws word2vec in the lab sweep's figures.

    python benchmarks/lab/lab_peer.py gensim [--epochs 1 2 5 10 20 50 100] [--ns-exponents 1.0 0.75] [--negative 5]
    python benchmarks/lab/lab_peer.py replica --steps 16500 --lr 10 [--no-self] [--schedule linear] [--reduction sum]
    python benchmarks/lab/lab_peer.py runs runs/.../version_0 [...]
    python benchmarks/lab/lab_peer.py cost [--threads 1]
    python benchmarks/lab/lab_peer.py plot RUN_DIR [...] --out lab_trajectories.png [--epochs 120] [--negative 5]

On shared cores run everything with OMP_NUM_THREADS=1: with 2 torch threads beside other jobs a bag sgns step cost
6-7x the CPU time (thread spinning), e.g. 187 vs 28 ms CPU, 610 vs 90 ms wall, measured by `cost`.

What it finds, with the commands that produced each number: docs/theorem_lab.md.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ctrain.probes.weighting import QUANTITIES
from ctrain.probes.weighting.lab_peer import LAB_MAX_LENGTH, Fit, LabProbe, gensim_rows, lab_training_tokens, train_word2vec

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, where the shared --toy option lives
from _toy import add_toy_option

MAX_LENGTH, BATCH, WIDTH, SEED = LAB_MAX_LENGTH, 64, 64, 42
STEPS_PER_EPOCH = 10_566 // BATCH  # 165: the lab's unique STS-B train sentences, last partial batch dropped


HEADER = (
    f"{'':>24} | {'slope KL':>9} {'R2 KL':>7} {'rho KL':>7} | {'slope dKL':>9} {'R2 dKL':>7} {'rho dKL':>7} |"
    f" {'slope -lP':>9} {'R2 -lP':>7} {'rho -lP':>7} | {'n':>5}"
)


def row(label: str, fits: dict[str, Fit], extra: str = "") -> str:
    cells = " | ".join(f"{fits[q].slope:>9.4g} {fits[q].r2:>7.3f} {fits[q].spearman:>7.3f}" for q in QUANTITIES)
    return f"{label:>24} | {cells} | {fits['kl'].n:>5}{extra}"


# --- gensim -------------------------------------------------------------------------------------------------------


def cmd_gensim(args: argparse.Namespace) -> None:
    import gensim

    probe = LabProbe()
    _, tokens = lab_training_tokens(probe.tokenizer)
    print(f"gensim {gensim.__version__}: {len(tokens)} sentences, {sum(map(len, tokens))} tokens, window "
          f"{max(map(len, tokens))} (whole sentence, shrink_windows=False), sample 0, negative {args.negative}, "
          f"min_count {args.min_count}, alpha {args.alpha} -> {args.min_alpha} linearly, workers {args.workers}, "
          f"seed {args.seed}; INPUT vectors (wv)" + (", and OUTPUT vectors (syn1neg)" if args.output else ""))
    for exponent in args.ns_exponents:
        print(f"\nns_exponent {exponent}\n{'epochs':>24} | " + HEADER[27:] + " | seconds")
        for epochs in args.epochs:
            started = time.perf_counter()
            model = train_word2vec(tokens, width=WIDTH, epochs=epochs, negative=args.negative, ns_exponent=exponent,
                                   min_count=args.min_count, seed=args.seed, workers=args.workers, alpha=args.alpha,
                                   min_alpha=args.min_alpha)  # fmt: skip
            seconds = time.perf_counter() - started
            print(row(str(epochs), probe.fits(gensim_rows(model, probe.tokenizer, model.wv.vectors)), f" | {seconds:.1f}"),
                  flush=True)  # fmt: skip
            if args.output:
                print(row(f"{epochs} (output)", probe.fits(gensim_rows(model, probe.tokenizer, model.syn1neg))), flush=True)


# --- replica of ctrain's sgns ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Replica:
    """What a replica run trains with; the defaults are configs/theorem_lab.yaml + configs/theorem_lab/sgns.yaml."""

    steps: int = 600
    lr: float = 100.0
    schedule: str = "constant"  # or linear (to 0 at the last step)
    reduction: str = "mean"  # or sum: the loss summed over pairs, so that lr is a per-pair rate as word2vec's
    self_pair: bool = True  # False: each position is not its own context (word2vec)
    alpha: float = 1.0
    negatives: int = 1


def replica_steps(config: Replica, encoder=None):
    """ctrain's `sgns` objective (ctrain.training.objectives.SGNS) trained without Lightning (EpochSampler, Collator, SGD).

    Yields (steps done, input table, output table, loss) after every step (first (0, ..., nan)). With the defaults it
    reproduces `ctrain fit --config configs/theorem_lab.yaml --config configs/theorem_lab/sgns.yaml` (seed 42) step for
    step (tests/test_lab_peer.py); each field of `Replica` moves one thing towards word2vec.
    """
    from ctrain.data.datamodule import Collator, EpochSampler
    from ctrain.models.encoder import load_encoder
    from ctrain.runtime import step_seed
    from ctrain.training.objectives import SGNS, sgns_pairs, unigram_noise

    os.environ["PL_GLOBAL_SEED"] = str(SEED)  # the seed ctrain's run exports (seed_everything)
    encoder = encoder or load_encoder("bag-bert", tiny_hidden_size=WIDTH, seed=SEED, bag_layers=0, embedding_init_std=0.01)
    tokenizer = encoder.tokenizer
    sentences, _ = lab_training_tokens(tokenizer)
    examples = [(s,) for s in sentences]
    objective = SGNS(num_negatives=config.negatives, alpha=config.alpha)
    objective.attach(encoder, SEED)
    objective.noise = unigram_noise(encoder, sentences, MAX_LENGTH, config.alpha)
    words_table, contexts_table = encoder.word_embeddings, objective.context_embeddings
    collate = Collator(tokenizer, MAX_LENGTH, cache_size=len(examples))  # many epochs: each sentence tokenised once
    sampler = EpochSampler(len(examples), BATCH, SEED)
    per_epoch = sampler.batches_per_epoch()
    optimizer = torch.optim.SGD([words_table.weight, contexts_table.weight], lr=config.lr)
    step = 0
    yield 0, words_table.weight, contexts_table.weight, math.nan
    while step < config.steps:
        sampler.set_epoch(step // per_epoch)
        order = list(iter(sampler))
        for start in range(0, len(order), BATCH):
            if step >= config.steps:
                break
            batch = collate([examples[i] for i in order[start : start + BATCH]])
            input_ids, mask = batch["input_ids"], batch["attention_mask"]
            pairs = sgns_pairs(~encoder.special_mask(input_ids) & mask.bool(), config.self_pair)
            loss = objective.pair_loss(encoder, input_ids, pairs, step_seed(step, 0, "objective"))  # ctrain's objective stream
            (loss * len(pairs[0]) if config.reduction == "sum" else loss).backward()
            if config.schedule == "linear":
                for group in optimizer.param_groups:
                    group["lr"] = config.lr * max(0.0, (config.steps - step) / config.steps)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            value = float(loss.detach())
            if not math.isfinite(value):
                raise FloatingPointError(f"loss {value} at step {step}")
            yield step, words_table.weight, contexts_table.weight, value


def cmd_replica(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    config = Replica(args.steps, args.lr, args.schedule, args.reduction, not args.no_self, args.alpha, args.negatives)
    probe = LabProbe()
    epochs = args.probe_epochs
    probe_steps = {0, args.steps} | {round(e * STEPS_PER_EPOCH) for e in epochs} if epochs else {0, args.steps}
    probe_steps |= set(args.probe_steps or [])
    reference = read_run(Path(args.check)) if args.check else {}
    print(f"replica of ctrain sgns: {config}, {STEPS_PER_EPOCH} steps/epoch")
    print(f"{'step (epoch)':>24} | " + HEADER[27:] + " | loss | s/step")
    losses, started, last = [], time.perf_counter(), time.perf_counter()
    for step, words, contexts, loss in replica_steps(config):
        losses.append(loss)
        if step not in probe_steps:
            continue
        seconds = (time.perf_counter() - last) / max(len(losses) - 1, 1)
        extra = f" | {np.nanmean(losses) if step else math.nan:.3f} | {seconds:.4f}"
        print(row(f"{step} ({step / STEPS_PER_EPOCH:.2f})", probe.fits(words), extra), flush=True)
        if args.output:
            print(row("  output rows", probe.fits(contexts)), flush=True)
        if step in reference:
            print(row("  ctrain run", reference[step]), flush=True)
        losses, last = [], time.perf_counter()
    print(f"{time.perf_counter() - started:.0f} s in all")


# --- ctrain runs ----------------------------------------------------------------------------------------------------


def read_run(run: Path) -> dict[int, dict[str, Fit]]:
    """step -> the input-row fits a ctrain run's WordWeightingProbe logged."""
    names = {"kl": "weighting/theorem_input", "dkl": "weighting/theorem_input_dkl", "selfinfo": "weighting/theorem_input_selfinfo"}
    result = {}
    with (run / "metrics.csv").open() as handle:
        for record in csv.DictReader(handle):
            if record.get("weighting/theorem_input_slope"):
                result[int(record["step"])] = {
                    q: Fit(float(record[f"{k}_slope"]), float(record[f"{k}_r2"]), float(record[f"{k}_spearman"]), int(float(record[f"{k}_n"])))
                    for q, k in names.items()
                }  # fmt: skip
    return result


def cmd_runs(args: argparse.Namespace) -> None:
    for run in map(Path, args.runs):
        fits = read_run(run)
        seconds = []
        with (run / "metrics.csv").open() as handle:
            seconds = [float(r["weighting/seconds"]) for r in csv.DictReader(handle) if r.get("weighting/seconds")]
        print(f"\n{run} ({len(fits)} probes, {sum(seconds):.0f} s in probes)\n{'step (epoch)':>24} | " + HEADER[27:])
        steps = sorted(fits)
        if args.epochs:
            wanted = {round(e * STEPS_PER_EPOCH) for e in args.epochs} | {0, steps[-1]}
            steps = [s for s in steps if s in wanted]
        for step in steps:
            print(row(f"{step} ({step / STEPS_PER_EPOCH:.2f})", fits[step]))


# --- trajectories beside word2vec's ---------------------------------------------------------------------------------


def word2vec_trajectory(args: argparse.Namespace, probe: LabProbe, snapshots: list[int]) -> dict[int, dict[str, Fit]]:
    """The lab fits of one word2vec run's input rows at the end of each snapshot epoch."""
    from gensim.models.callbacks import CallbackAny2Vec

    _, tokens = lab_training_tokens(probe.tokenizer)
    fits: dict[int, dict[str, Fit]] = {}

    class Snapshot(CallbackAny2Vec):
        def __init__(self) -> None:
            self.epoch = 0

        def on_epoch_end(self, model) -> None:
            self.epoch += 1
            if self.epoch in snapshots:
                fits[self.epoch] = probe.fits(gensim_rows(model, probe.tokenizer, model.wv.vectors))

    train_word2vec(tokens, width=WIDTH, epochs=args.epochs, negative=args.negative, ns_exponent=args.ns_exponent,
                   min_count=args.min_count, seed=SEED, alpha=args.alpha, min_alpha=args.min_alpha, callbacks=[Snapshot()])  # fmt: skip
    return fits


def cmd_plot(args: argparse.Namespace) -> None:
    import matplotlib

    from ctrain.probes.weighting import THEOREM_KEYS

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    probe = LabProbe()
    snapshots = sorted({e for e in (1, 2, 3, 5, 10, 20, 30, 50, 75, 100, 120, 150, 200) if e <= args.epochs} | {args.epochs})
    peer = word2vec_trajectory(args, probe, snapshots)
    peer_label = f"word2vec (gensim, ns_exponent {args.ns_exponent})"
    rows = [(peer_label, epoch, epoch * STEPS_PER_EPOCH, fit) for epoch, fit in sorted(peer.items())]
    for run in map(Path, args.runs):
        rows += [(run.name, step / STEPS_PER_EPOCH, step, fit) for step, fit in sorted(read_run(run).items()) if step > 0]
    out = Path(args.out)
    # Columns named as ctrain's metrics, so that `ctrain report SWEEP --reference <this CSV>` draws word2vec beside the runs.
    metric_columns = [(q, k, getattr(THEOREM_KEYS["input", q], k)) for q in QUANTITIES for k in ("slope", "r2", "spearman")]
    with out.with_suffix(".csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["run", "epoch", "step", "examples", *(column for *_, column in metric_columns)])
        for label, epoch, step, fit in rows:
            writer.writerow([label, f"{epoch:.4g}", round(step), round(step) * BATCH, *(f"{getattr(fit[q], k):.6g}" for q, k, _ in metric_columns)])
    figure, axes = plt.subplots(figsize=(7.5, 4.5))
    for label in dict.fromkeys(label for label, *_ in rows):
        points = [(epoch, fit["kl"].spearman) for name, epoch, _, fit in rows if name == label]
        style = {"color": "black", "linewidth": 2.5} if label == peer_label else {"alpha": 0.8}
        axes.plot(*zip(*points), marker="o", markersize=3, label=label, **style)
    axes.axhline(0, color="grey", linewidth=0.8)
    axes.set_xscale("log")
    axes.set_xlabel(f"epochs over the lab's corpus ({STEPS_PER_EPOCH} steps of {BATCH} sentences)")
    axes.set_ylabel("Spearman of 0.5 ||w||^2 on KL(w)")
    axes.set_title(f"input rows, the lab's probe; word2vec: negative {args.negative}, ns_exponent {args.ns_exponent}, {args.epochs} epochs")
    axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(out, dpi=120)
    print(f"{out} and {out.with_suffix('.csv')}: {len(rows)} points")
    for label, epoch, step, fit in rows:
        print(row(f"{label} {epoch:.3g}", fit))


# --- cost of a step -------------------------------------------------------------------------------------------------


def cmd_cost(args: argparse.Namespace) -> None:
    """Per step: ctrain's Lightning loop (no probes, no validation, CSV logger) against the same work run bare.

    Both wall and CPU seconds (process_time, one torch thread by default): on shared cores the CPU time is the
    stable number, the wall time depends on what else runs.
    """
    import pytorch_lightning as pl

    from ctrain.data.datamodule import Collator, ContrastiveDataModule
    from ctrain.models.encoder import EncoderConfig
    from ctrain.training.losses import sgns_loss
    from ctrain.training.module import ContrastiveModule
    from ctrain.training.objectives import sgns_pairs, unigram_noise

    torch.set_num_threads(args.threads)
    pl.seed_everything(SEED, verbose=False)
    encoder_config = EncoderConfig("bag-bert", tiny_hidden_size=WIDTH, bag_layers=0, embedding_init_std=0.01, pooling="mean", normalize=False)
    hp = dict(encoder=encoder_config, similarity="dot", temperature=1.0, objective="sgns", optimizer="sgd", learning_rate=100.0,
              schedule="constant")  # fmt: skip

    class Clock(pl.Callback):
        def __init__(self) -> None:
            self.times: list[tuple[float, float]] = []

        def on_train_batch_start(self, *a) -> None:
            self.times.append((time.perf_counter(), time.process_time()))

    def lightning(log_every: int) -> tuple[float, float]:
        module = ContrastiveModule(**hp)
        data = ContrastiveDataModule(train="sts-b", keep_eval_overlap=True, batch_size=BATCH, max_length=MAX_LENGTH)
        clock = Clock()
        trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=args.steps, logger=pl.loggers.CSVLogger("/tmp/lab_peer_cost"),
                             log_every_n_steps=log_every, enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False, limit_val_batches=0, callbacks=[clock])  # fmt: skip
        trainer.fit(module, datamodule=data)
        times = np.array(clock.times[args.warmup :])
        return tuple(float(x) for x in (times[-1] - times[0]) / (len(times) - 1))

    results = {}
    for log_every in (25, 1):
        results[log_every] = lightning(log_every)

    module = ContrastiveModule(**hp)
    data = ContrastiveDataModule(train="sts-b", keep_eval_overlap=True, batch_size=BATCH, max_length=MAX_LENGTH)
    data.load_training_examples(1)
    sentences = [e[0] for e in data.examples]
    encoder = module.encoder
    module.objective.noise = unigram_noise(encoder, sentences, MAX_LENGTH, module.objective.alpha)
    collate = Collator(encoder.tokenizer, MAX_LENGTH, cache_size=len(sentences))  # as a multi-epoch ctrain run
    optimizer = torch.optim.SGD(module.parameters(), lr=100.0)
    names = ("collate", "pairs", "noise.cpu()", "multinomial", "lookup+loss", "backward", "sgd step", "zero_grad")
    parts = np.zeros((len(names), 2))
    rng = np.random.default_rng(0)
    for step in range(args.steps):
        clock = [(time.perf_counter(), time.process_time())]
        batch = collate([(sentences[i],) for i in rng.choice(len(sentences), BATCH, replace=False)])
        clock.append((time.perf_counter(), time.process_time()))
        input_ids, mask = batch["input_ids"], batch["attention_mask"]
        sentence, centre, context = sgns_pairs(~encoder.special_mask(input_ids) & mask.bool())
        clock.append((time.perf_counter(), time.process_time()))
        cpu_noise = module.objective.noise.cpu()
        clock.append((time.perf_counter(), time.process_time()))
        negatives = torch.multinomial(cpu_noise, len(sentence), replacement=True, generator=torch.Generator().manual_seed(step))
        clock.append((time.perf_counter(), time.process_time()))
        loss = sgns_loss(encoder.word_embeddings(input_ids[sentence, centre]), module.objective.context_embeddings(input_ids[sentence, context]),
                         module.objective.context_embeddings(negatives.view(len(sentence), -1)))  # fmt: skip
        clock.append((time.perf_counter(), time.process_time()))
        loss.backward()
        clock.append((time.perf_counter(), time.process_time()))
        optimizer.step()
        clock.append((time.perf_counter(), time.process_time()))
        optimizer.zero_grad(set_to_none=True)
        clock.append((time.perf_counter(), time.process_time()))
        if step >= args.warmup:
            parts += np.diff(np.array(clock), axis=0)
    parts /= args.steps - args.warmup
    print(f"\nms per step ({args.threads} torch thread(s), {args.steps - args.warmup} timed steps)   wall    CPU")
    for log_every, (wall, cpu) in results.items():
        print(f"{'Lightning, log every ' + str(log_every):>36} {wall * 1e3:7.1f} {cpu * 1e3:7.1f}")
    print(f"{'bare step (same work)':>36} {parts[:, 0].sum() * 1e3:7.1f} {parts[:, 1].sum() * 1e3:7.1f}")
    for name, (wall, cpu) in zip(names, parts):
        print(f"{name:>36} {wall * 1e3:7.2f} {cpu * 1e3:7.2f}")


TOY = {
    "gensim": {"epochs": [1], "ns_exponents": [1.0]},
    "replica": {"steps": 4, "probe_epochs": [], "threads": 1},
    "runs": {},
    "cost": {"steps": 3, "warmup": 1},
    "plot": {"epochs": 1},
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("gensim")
    g.add_argument("--epochs", type=int, nargs="+", default=[1, 2, 5, 10, 20, 50, 100])
    g.add_argument("--ns-exponents", type=float, nargs="+", default=[1.0, 0.75])
    g.add_argument("--negative", type=int, default=5)
    g.add_argument("--min-count", type=int, default=5, help="gensim's min_count (the lab's probe uses 5)")
    g.add_argument("--alpha", type=float, default=0.025)
    g.add_argument("--min-alpha", type=float, default=0.0001)
    g.add_argument("--workers", type=int, default=1)
    g.add_argument("--seed", type=int, default=SEED)
    g.add_argument("--output", action="store_true", help="also fit the output vectors (syn1neg)")
    r = sub.add_parser("replica")
    r.add_argument("--steps", type=int, default=600)
    r.add_argument("--lr", type=float, default=100.0)
    r.add_argument("--schedule", choices=("constant", "linear"), default="constant")
    r.add_argument("--reduction", choices=("mean", "sum"), default="mean", help="sum: lr is per pair, as word2vec's")
    r.add_argument("--no-self", action="store_true", help="leave out each position's pair with itself (word2vec)")
    r.add_argument("--alpha", type=float, default=1.0)
    r.add_argument("--negatives", type=int, default=1)
    r.add_argument("--probe-epochs", type=float, nargs="*", default=[1, 2, 5, 10, 20, 50, 100, 200, 500])
    r.add_argument("--probe-steps", type=int, nargs="*")
    r.add_argument("--output", action="store_true", help="also fit the output rows")
    r.add_argument("--check", help="a ctrain run directory whose probed steps to print beside")
    r.add_argument("--threads", type=int, default=2)
    s = sub.add_parser("runs")
    s.add_argument("runs", nargs="+")
    s.add_argument("--epochs", type=float, nargs="*")
    c = sub.add_parser("cost")
    c.add_argument("--steps", type=int, default=60)
    c.add_argument("--warmup", type=int, default=10)
    c.add_argument("--threads", type=int, default=1)
    p = sub.add_parser("plot")
    p.add_argument("runs", nargs="*", help="ctrain run directories (metrics.csv with the lab's probe)")
    p.add_argument("--out", default="lab_trajectories.png")
    p.add_argument("--epochs", type=int, default=120, help="word2vec's run length (its rate decays over it)")
    p.add_argument("--negative", type=int, default=5)
    p.add_argument("--ns-exponent", type=float, default=1.0)
    p.add_argument("--min-count", type=int, default=5)
    p.add_argument("--alpha", type=float, default=0.025)
    p.add_argument("--min-alpha", type=float, default=0.0001)
    for name, subparser in sub.choices.items():
        add_toy_option(subparser, TOY[name], argv)
    args = parser.parse_args(argv)
    {"gensim": cmd_gensim, "replica": cmd_replica, "runs": cmd_runs, "cost": cmd_cost, "plot": cmd_plot}[args.command](args)


if __name__ == "__main__":
    main()
