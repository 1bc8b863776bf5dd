"""Benchmark: ctrain's streamed geometry probe vs a straightforward implementation.

The straightforward one does what published analysis code does: one sentence per
forward pass, every hidden state of every layer kept in memory as numpy arrays, and a
full cosine matrix per word type, per anisotropy sample, per informativity sample and
over all sentence embeddings, per layer, in float32. Both run on all-MiniLM-L6-v2 and
the first sentence of each STS-B test pair under the isotropy2023 convention. So that
values can be compared, the baseline is handed ctrain's random draws (anisotropy and
informativity samples), translated to (sentence, token) positions before its clock
starts; it tokenises and groups tokens itself.

Each implementation runs in its own subprocess, after a 16-sentence warm-up; the fastest
of `--repeats` (ctrain) or `--baseline-repeats` runs is kept (other work on the machine
only slows runs down; the load average is printed).
Memory is the peak resident set size (VmHWM from /proc after resetting it via
/proc/self/clear_refs) minus the RSS just before the timed call: what the computation
adds on top of the loaded model, including what glibc's allocator keeps cached.
`forward` times ctrain's model calls alone (same batches, no metric), so that the
metric cost beyond the model can be compared with the baseline's metric phase.

    .venv/bin/python benchmarks/geometry.py [--sentences N] [--threads T]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ctrain.encoder import SentenceEncoder, load_encoder
from ctrain.probes.geometry import GeometryConfig, _plan, geometry_probe, positive_pairs, probe_sentences

MODEL = "all-MiniLM-L6-v2"


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _cosine_matrix(vectors: np.ndarray) -> np.ndarray:
    units = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    return units @ units.T


def _off_diagonal_mean(matrix: np.ndarray) -> float:
    count = matrix.shape[0]
    return float((matrix.sum() - np.trace(matrix)) / (count * (count - 1)))


def straightforward(encoder: SentenceEncoder, sentences: list[str], config: GeometryConfig, draws: dict) -> dict:
    """Per-sentence forward passes, all states kept, full cosine matrices per word / sample / layer."""
    config = config.resolved()
    phases = {}
    start = time.perf_counter()
    per_sentence, token_lists, embeddings = [], [], []
    with torch.no_grad():
        for sentence in sentences:
            batch = encoder.tokenize([sentence], config.max_length)
            output = encoder.token_states(**batch, output_hidden_states=True)
            ids = batch["input_ids"][0]
            keep = np.ones(len(ids), bool) if config.include_specials else ~encoder.special_mask(ids).numpy()
            per_sentence.append(np.stack([h[0].numpy() for h in output.hidden_states])[:, keep])
            token_lists.append(ids.numpy()[keep])
            embeddings.append(encoder.pooler(output.last_hidden_state, batch["attention_mask"])[0].numpy())
        pairs = positive_pairs(config.positives_split, config.positive_min_score)
        left = np.stack([encoder(**encoder.tokenize([a], config.max_length))[0].numpy() for a, _ in pairs])
        right = np.stack([encoder(**encoder.tokenize([b], config.max_length))[0].numpy() for _, b in pairs])
    phases["forward_s"] = time.perf_counter() - start

    start = time.perf_counter()
    occurrences: dict[int, list[tuple[int, int]]] = {}
    totals: dict[int, int] = {}
    for s, tokens in enumerate(token_lists):
        seen = set()
        for position, token in enumerate(tokens.tolist()):
            totals[token] = totals.get(token, 0) + 1
            if config.occurrences == "first" and token in seen:
                continue
            seen.add(token)
            occurrences.setdefault(token, []).append((s, position))
    qualifying = {
        token: places
        for token, places in occurrences.items()
        if totals[token] >= config.min_occurrences
        and len({s for s, _ in places}) >= config.min_sentences
        and len(places) >= 2
    }
    metrics = {}
    for layer in range(encoder.num_layers + 1):
        every = np.concatenate([states[layer] for states in per_sentence])
        samples = [
            _off_diagonal_mean(_cosine_matrix(np.stack([per_sentence[s][layer, p] for s, p in places])))
            for places in draws["anisotropy"][layer]
        ]
        baseline = float(np.mean(samples))
        metrics[f"anisotropy/layer_{layer}"] = baseline
        self_similarity = [
            _off_diagonal_mean(_cosine_matrix(np.stack([per_sentence[s][layer, p] for s, p in places])))
            for places in qualifying.values()
        ]
        metrics[f"self_similarity/layer_{layer}"] = float(np.mean(self_similarity))
        metrics[f"self_similarity_adjusted/layer_{layer}"] = metrics[f"self_similarity/layer_{layer}"] - baseline
        intra = []
        for states in per_sentence:
            if len(states[layer]):
                mean = states[layer].mean(0)
                norms = np.linalg.norm(states[layer], axis=1) * np.linalg.norm(mean)
                intra.append(float(np.mean(states[layer] @ mean / norms)))
        metrics[f"intra_similarity/layer_{layer}"] = float(np.mean(intra))
        metrics[f"intra_similarity_adjusted/layer_{layer}"] = float(np.mean(intra)) - baseline
        norms = np.linalg.norm(every, axis=1)
        metrics[f"norm_mean/layer_{layer}"] = float(norms.mean())
        metrics[f"norm_std/layer_{layer}"] = float(norms.std(ddof=1))
        total = (every / norms[:, None]).sum(0)
        shares = total**2 / (total**2).sum()
        ranked = np.sort(shares)[::-1]
        for k in (1, 2, 3):
            metrics[f"rogue_top{k}/layer_{layer}"] = float(ranked[k - 1])
        sample = np.stack([per_sentence[s][layer, p] for s, p in draws["informativity"]])
        upper = np.triu_indices(len(sample), 1)
        full = _cosine_matrix(sample)[upper]
        for k in config.rogue_remove:
            reduced = sample.copy()
            reduced[:, np.argsort(-shares)[:k]] = 0
            metrics[f"informativity_r2_k{k}/layer_{layer}"] = float(np.corrcoef(full, _cosine_matrix(reduced)[upper])[0, 1] ** 2)
    units = np.stack(embeddings) / np.linalg.norm(np.stack(embeddings), axis=1, keepdims=True)
    squared = 2 - 2 * (units @ units.T)
    upper = np.triu_indices(len(units), 1)
    metrics["uniformity"] = float(np.log(np.mean(np.exp(-config.uniformity_t * squared[upper]))))
    left, right = (v / np.linalg.norm(v, axis=1, keepdims=True) for v in (left, right))
    metrics["alignment"] = float(np.mean(np.linalg.norm(left - right, axis=1) ** config.alignment_alpha))
    phases["metrics_s"] = time.perf_counter() - start
    return {"metrics": metrics, "phases": phases, "types": len(qualifying)}


def _translated_draws(encoder: SentenceEncoder, sentences: list[str], config: GeometryConfig) -> dict:
    """ctrain's random draws as (corpus sentence, token-set position) pairs."""
    plan = _plan(encoder, sentences, config.resolved())
    starts = plan.occurrence_start

    def place(occurrence: int) -> tuple[int, int]:
        slot = int(np.searchsorted(starts.numpy(), occurrence, side="right")) - 1
        return plan.order[slot], occurrence - int(starts[slot])

    anisotropy = [[[place(o) for o in sample.tolist()] for sample in layer] for layer in plan.anisotropy_draws]
    return {"anisotropy": anisotropy, "informativity": [place(o) for o in plan.informativity_draws.tolist()]}


def _forward_only(encoder: SentenceEncoder, sentences: list[str], config: GeometryConfig) -> dict:
    """ctrain's model calls without any metric: batched forward with hidden states, plus the positive pairs."""
    config = config.resolved()
    with torch.no_grad():
        for start in range(0, len(sentences), config.batch_size):
            encoder.token_states(**encoder.tokenize(sentences[start : start + config.batch_size]), output_hidden_states=True)
        pairs = positive_pairs(config.positives_split, config.positive_min_score)
        for side in zip(*pairs):
            encoder.encode(list(side), config.batch_size, config.max_length)
    return {"metrics": {}, "phases": {}, "types": None}


def _measure(run, repeats: int) -> dict:
    """Fastest of `repeats` calls, with the largest peak RSS increase over them."""
    best = None
    for _ in range(repeats):
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM
        baseline_kb = _rss_kb("VmRSS")
        start = time.perf_counter()
        report = run()
        report["seconds"] = time.perf_counter() - start
        report["peak_mb"] = (_rss_kb("VmHWM") - baseline_kb) / 1024
        peak = max(report["peak_mb"], best["peak_mb"] if best else 0.0)
        best = {**(report if best is None or report["seconds"] < best["seconds"] else best), "peak_mb": peak}
    return best


def _ctrain(encoder: SentenceEncoder, sentences: list[str], config: GeometryConfig) -> dict:
    result = geometry_probe(encoder, sentences, config)
    return {"metrics": result.metrics, "phases": {}, "types": result.sample_sizes["self_similarity/layer_0"]}


def child(implementation: str, count: int | None, repeats: int, max_memory_mb: float) -> None:
    """One implementation in a fresh process after a 16-sentence warm-up; prints its reports as JSON.

    The ctrain child also times the bare model calls afterwards (their memory is not reported).
    """
    encoder = load_encoder(MODEL).eval()
    sentences = probe_sentences()[:count]
    config = GeometryConfig(convention="isotropy2023", max_memory_mb=max_memory_mb)
    warm = sentences[:16]
    reports = {}
    if implementation == "straightforward":
        straightforward(encoder, warm, config, _translated_draws(encoder, warm, config))
        draws = _translated_draws(encoder, sentences, config)
        reports["straightforward"] = _measure(lambda: straightforward(encoder, sentences, config, draws), repeats)
    else:
        _ctrain(encoder, warm, config)
        reports["ctrain"] = _measure(lambda: _ctrain(encoder, sentences, config), repeats)
        if implementation == "ctrain+forward":
            reports["forward"] = _measure(lambda: _forward_only(encoder, sentences, config), repeats)
    print(json.dumps(reports))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sentences", type=int, default=None, help="first N probe sentences (default: all)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads in each run")
    parser.add_argument("--repeats", type=int, default=3, help="timed ctrain runs; the fastest is kept")
    parser.add_argument("--baseline-repeats", type=int, default=1, help="timed straightforward runs")
    parser.add_argument("--small-cap-mb", type=float, default=160.0, help="a second ctrain run under this memory cap")
    parser.add_argument("--child", choices=["ctrain", "ctrain+forward", "straightforward"], help=argparse.SUPPRESS)
    parser.add_argument("--max-memory-mb", type=float, default=GeometryConfig.max_memory_mb, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        child(args.child, args.sentences, args.repeats, args.max_memory_mb)
        return

    load_before = os.getloadavg()[0]
    default_cap = GeometryConfig.max_memory_mb
    runs = {  # child, memory cap, repeats, name for its ctrain report
        "ctrain+forward": (default_cap, args.repeats, f"ctrain ({default_cap:g} MB cap)"),
        "ctrain": (args.small_cap_mb, 1, f"ctrain ({args.small_cap_mb:g} MB cap)"),
        "straightforward": (default_cap, args.baseline_repeats, None),
    }
    reports = {}
    for implementation, (cap, repeats, ctrain_name) in runs.items():
        command = [sys.executable, __file__, "--child", implementation, "--threads", str(args.threads)]
        command += ["--repeats", str(repeats), "--max-memory-mb", str(cap)]
        if args.sentences:
            command += ["--sentences", str(args.sentences)]
        completed = subprocess.run(command, capture_output=True, text=True)
        if completed.returncode:
            sys.exit(f"{implementation} failed:\n{completed.stderr[-3000:]}")
        for name, report in json.loads(completed.stdout.strip().splitlines()[-1]).items():
            reports[ctrain_name if name == "ctrain" else name] = report
    ours, forward = reports[f"ctrain ({default_cap:g} MB cap)"], reports["forward"]
    theirs = reports["straightforward"]
    sentences = len(probe_sentences()[: args.sentences])
    print(f"geometry benchmark: {MODEL}, {sentences} STS-B test first sentences, isotropy2023, {args.threads} threads")
    print(f"load average (1 min) before {load_before:.2f}, after {os.getloadavg()[0]:.2f}; ctrain: fastest of")
    print(f"{args.repeats}, straightforward: fastest of {args.baseline_repeats}; memory = peak RSS (VmHWM reset via")
    print("/proc/self/clear_refs) minus RSS before the call, fresh subprocess each (allocator cache included)")
    for name, report in reports.items():
        phases = ", ".join(f"{k} {v:.2f}" for k, v in report["phases"].items())
        memory = f"peak +{report['peak_mb']:7.1f} MB" if name != "forward" else "(model calls only)"
        print(f"  {name:<24} {report['seconds']:8.2f} s  {memory}  {phases}")
    print(f"speed ratio, end to end         {theirs['seconds'] / ours['seconds']:.2f}x (goal >= 10x)")
    print(
        f"metric time beyond model calls  ctrain {ours['seconds'] - forward['seconds']:.2f} s (total - forward) vs "
        f"straightforward {theirs['phases']['metrics_s']:.2f} s"
    )
    print(f"peak memory ratio               {theirs['peak_mb'] / max(ours['peak_mb'], 1e-9):.2f}x")
    print(f"qualifying types                ctrain {ours['types']}, straightforward {theirs['types']}")
    for name, report in reports.items():
        if report["metrics"] and name != "straightforward":
            differences = {key: abs(report["metrics"][key] - value) for key, value in theirs["metrics"].items()}
            worst = max(differences, key=differences.get)
            print(f"max |difference| {name:<22} {differences[worst]:.3e} at {worst} over {len(differences)} values")
    print("(goal for the difference: <= 1e-5)")


if __name__ == "__main__":
    main()
