"""`ctrain probe MODEL`: the word-weighting and geometry measurements of any model, without training.

MODEL is a hub id, a local directory, a ctrain run directory (its model_best/, else
model_final/), an offline short name (all-MiniLM-L6-v2, all-mpnet-base-v2) or tiny-bert.
Results go to `--out` as JSON plus figures, and the headline numbers to the terminal.
`--setup NAME` starts from a paper's measurement (`SETUPS`); any flag given after it wins.
"""

from __future__ import annotations

import argparse

from jsonargparse import ActionConfigFile, ArgumentParser

from ctrain.probes.geometry import format_layer_table
from ctrain.probes.model import SETUPS, ModelProbe, WeightingRun, format_seconds, probe_model
from ctrain.probes.weighting import FIT_KEYS, THEOREM_KEYS, completeness_warning
from ctrain.probes.weighting.keys import IG_COMPLETENESS_ERROR_MAX, IG_COMPLETENESS_ERROR_MEAN, IG_EVALUATIONS_MEAN


def probe_parser() -> ArgumentParser:
    """`ctrain probe`'s parser: probe_model()'s arguments, MODEL positional, --config/--print_config for YAML."""
    parser = ArgumentParser(prog="ctrain probe", description=__doc__, exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile, help="YAML with any of the arguments below")
    parser.add_function_arguments(probe_model, as_positional=True, skip={"say"})
    return parser


def probe_main(args: list[str]) -> None:
    """Parse `ctrain probe` arguments with the chosen setup's values as defaults, probe, print and draw the results."""
    from ctrain.reporting.probe_figures import model_probe_figures

    chosen = argparse.ArgumentParser(add_help=False)
    chosen.add_argument("--setup")
    setup = chosen.parse_known_args(args)[0].setup
    parser = probe_parser()
    if setup in SETUPS:  # an unknown name is reported by the full parser
        parser.set_defaults(SETUPS[setup])
    values = parser.instantiate(parser.parse_args(args)).as_dict()
    values.pop("config", None)
    probed = probe_model(**values, say=lambda line: print(line, flush=True))
    model_probe_figures(probed)
    print("\n".join(result_lines(probed)))


def result_lines(probed: ModelProbe) -> list[str]:
    """The headline numbers of each measurement, as the terminal shows them."""
    lines = [f"STS-B {split}: Spearman x100 {spearman:.2f} over {pairs} pairs" for split, (spearman, pairs) in probed.sts.items()]
    if probed.weighting is not None:
        lines += weighting_lines(probed.weighting)
    for convention, result in probed.geometry.items():
        lines += [f"\ngeometry, convention {convention}, {result.num_sentences} STS-B {result.config['split']} sentences:", format_layer_table(result)]
    return lines


def weighting_lines(run: WeightingRun) -> list[str]:
    """Each method's fits to KL, -log P and dKL (with bootstrap intervals), IG's completeness and Theorem 1's fit."""
    result, c = run.result, run.result.config
    ci = f", [{100 * c.confidence:g}% bootstrap interval over {c.bootstrap_resamples} resamples of the sentences]" if c.bootstrap_resamples else ""
    weighed = run.num_sentences - run.reused_sentences
    rate = f"{run.seconds / weighed:.2f} s/sentence, " if weighed else ""
    reused = f" ({run.reused_sentences} sentences read back from an interrupted run's batches)" if run.reused_sentences else ""
    lines = [f"\n  (R^2 x100, beta x100, n{ci})  {rate}{format_seconds(run.seconds)} in all{reused}"]
    for method in c.methods:
        for quantity, label in (("kl", "KL(w)"), ("selfinfo", "-log P(w)"), ("dkl", "dKL(w)")):
            keys = FIT_KEYS[method, quantity]
            lines.append(f"  {method.upper():4s} vs {label:10s} R^2 {100 * result.metrics[keys.r2]:7.2f}"
                         f"{_interval(result.metrics, keys.r2_ci_low, keys.r2_ci_high)}   beta {100 * result.metrics[keys.slope]:8.2f}"
                         f"{_interval(result.metrics, keys.slope_ci_low, keys.slope_ci_high)}   n {int(result.metrics[keys.n])}")  # fmt: skip
    if IG_COMPLETENESS_ERROR_MEAN in result.metrics:
        lines.append(f"  IG completeness error: mean {result.metrics[IG_COMPLETENESS_ERROR_MEAN]:.2e}, "
                     f"max {result.metrics[IG_COMPLETENESS_ERROR_MAX]:.2e}; {result.metrics[IG_EVALUATIONS_MEAN]:.1f} path points a sentence")  # fmt: skip
        if warning := completeness_warning(result.metrics, c):
            lines.append(f"  {warning}")
    for (target, quantity), keys in THEOREM_KEYS.items():
        if keys.r2 in result.metrics and quantity == "kl":
            lines.append(f"  Theorem 1, 0.5||w||^2 vs KL ({target}): R^2 {result.metrics[keys.r2]:.4f}, "
                         f"slope {result.metrics[keys.slope]:.4f}, intercept {result.metrics[keys.intercept]:.4f}, "
                         f"Spearman {result.metrics[keys.spearman]:.4f}")  # fmt: skip
    if run.num_sentences < run.corpus_size and weighed:
        lines.append(f"  projected time of all {run.corpus_size} sentences on this machine: "
                     f"about {format_seconds(run.projected_corpus_seconds)} (from the {weighed} random ones weighed here)")
    return lines


def _interval(metrics: dict[str, float], low: str | None, high: str | None) -> str:
    """` [low, high]` (x100) where the metrics hold the interval, else nothing."""
    if low not in metrics or high not in metrics:
        return ""
    return f" [{100 * metrics[low]:.2f}, {100 * metrics[high]:.2f}]"
