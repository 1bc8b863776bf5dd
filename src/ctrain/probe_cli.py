"""`ctrain probe MODEL`: the word-weighting and geometry measurements of any model, without training.

MODEL is a hub id, a local directory, a ctrain run directory (its model_best/, else
model_final/), an offline short name (all-MiniLM-L6-v2, all-mpnet-base-v2) or tiny-bert.
Results go to `--out` as JSON plus figures, and the headline numbers to the terminal.
"""

from __future__ import annotations

from pathlib import Path

from jsonargparse import CLI

from ctrain.data import read_sts_b
from ctrain.encoder import load_encoder
from ctrain.fileio import atomic_write_text
from ctrain.probes.sts import encoder_sts


def resolve_model(model: str) -> str:
    """A ctrain run directory stands for its best (else final) exported model."""
    path = Path(model)
    for exported in ("model_best", "model_final"):
        if (path / exported / "modules.json").exists():
            return str(path / exported)
    return model


def probe(
    model: str,
    weighting: bool = True,
    geometry: bool = False,
    sts: bool = True,
    out: str | None = None,
    split: str = "dev",
    num_sentences: int = 200,
    methods: list[str] = ["ig", "shap"],  # noqa: B006 (jsonargparse reads the default)
    mode: str = "sketch",
    steps: int = 50,
    probes: int = 32,
    units: str = "tokens",
    min_count: int = 5,
    conventions: list[str] = ["default", "isotropy2023"],  # noqa: B006
    geometry_sentences: int = 1379,
    max_length: int = 128,
    seed: int = 0,
) -> None:
    """Probe MODEL.

    Args:
        model: hub id, local path, run directory, all-MiniLM-L6-v2, all-mpnet-base-v2 or tiny-bert.
        weighting: IG / SHAP weights regressed on KL, dKL and -log P, plus Theorem-1 norms (spec 1-5).
        geometry: per-layer isotropy, self- and intra-sentence similarity, norms, rogue dims (spec 6).
        sts: STS-B dev and test Spearman x100 (spec 7).
        out: output directory (default: probe_results/<model name>).
        split: STS-B split whose first sentences are the weighting probe set.
        num_sentences: size of the weighting probe set.
        methods: attribution methods, ig and/or shap.
        mode: IG sketch (r random probes, default: minutes on a CPU) or exact (full Jacobian: d VJPs a step, slow on CPU).
        steps: IG quadrature steps (Gauss-Legendre).
        probes: probe vectors of sketch mode.
        units: tokens or words.
        min_count: regression keeps types seen at least this often.
        conventions: geometry conventions to compute (default, isotropy2023).
        geometry_sentences: geometry probe corpus size (STS-B test first sentences; isotropy2023 uses them all).
        max_length: tokens per sentence.
        seed: seed of every random choice.
    """
    source = resolve_model(model)
    encoder = load_encoder(source)
    directory = Path(out or Path("probe_results") / Path(source.rstrip("/")).name)
    directory.mkdir(parents=True, exist_ok=True)
    print(f"ctrain probe: {model} ({encoder.backbone.config.model_type}, {encoder.num_layers} layers, "
          f"pooling {encoder.pooler.mode}, normalize {encoder.normalize}) -> {directory}")  # fmt: skip
    if sts:
        for split in ("dev", "test"):
            spearman, pairs = encoder_sts(encoder, read_sts_b(split))
            print(f"STS-B {split}: Spearman x100 {spearman:.2f} over {pairs} pairs")
    if weighting:
        _weighting(encoder, directory, split, num_sentences, methods, mode, steps, probes, units, min_count, max_length, seed)
    if geometry:
        _geometry(encoder, directory, conventions, geometry_sentences, max_length, seed)


def _weighting(encoder, directory, split, num_sentences, methods, mode, steps, probes, units, min_count, max_length, seed):
    from ctrain.plots.weighting import plot_sentence_weights, plot_weight_vs_information
    from ctrain.probes.weighting import WeightingConfig, weighting_probe

    sentences = [row[0] for row in read_sts_b(split)][:num_sentences]
    config = WeightingConfig(
        methods=tuple(methods), mode=mode, steps=steps, probes=probes, units=units, min_count=min_count,
        max_length=max_length, seed=seed,
    )  # fmt: skip
    result = weighting_probe(encoder, sentences, config)
    atomic_write_text(directory / "weighting.json", result.to_json())
    print(f"\nword weighting on {len(sentences)} STS-B {split} sentences (R^2 x100, beta x100, n):")
    for method in methods:
        for quantity, label in (("kl", "KL(w)"), ("selfinfo", "-log P(w)"), ("dkl", "dKL(w)")):
            key = f"{method}_{quantity}"
            print(f"  {method.upper():4s} vs {label:10s} R^2 {100 * result.metrics[key + '_r2']:7.2f}   "
                  f"beta {100 * result.metrics[key + '_beta']:8.2f}   n {int(result.metrics[key + '_n'])}")  # fmt: skip
        plot_weight_vs_information(result, directory / f"{method}_vs_kl.png", method, "kl")
        plot_sentence_weights(result, directory / f"{method}_sentences.png", 4, method)
    if "ig_completeness_error_mean" in result.metrics:
        print(f"  IG completeness error: mean {result.metrics['ig_completeness_error_mean']:.2e}, "
              f"max {result.metrics['ig_completeness_error_max']:.2e}")  # fmt: skip
    for target in ("input", "last", "last_type"):
        key = f"theorem_{target}"
        if key + "_r2" in result.metrics:
            print(f"  Theorem 1, 0.5||w||^2 vs KL ({target}): R^2 {result.metrics[key + '_r2']:.4f}, "
                  f"slope {result.metrics[key + '_slope']:.4f}, intercept {result.metrics[key + '_intercept']:.4f}")  # fmt: skip


def _geometry(encoder, directory, conventions, geometry_sentences, max_length, seed):
    from ctrain.plots.geometry import plot_metrics_by_layer
    from ctrain.probes.geometry import GeometryConfig, format_layer_table, geometry_probe

    for convention in conventions:
        config = GeometryConfig(convention=convention, num_sentences=geometry_sentences, max_length=max_length, seed=seed)
        result = geometry_probe(encoder, config=config)
        atomic_write_text(directory / f"geometry_{convention}.json", result.to_json())
        plot_metrics_by_layer(result, directory / f"geometry_{convention}.png")
        print(f"\ngeometry, convention {convention}, {result.num_sentences} STS-B {config.split} sentences:")
        print(format_layer_table(result))


def probe_main(args: list[str]) -> None:
    CLI(probe, args=args)
