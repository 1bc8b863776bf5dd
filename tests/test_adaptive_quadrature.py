"""Adaptive IG quadrature: closed-form near-steps, completeness on the three tiny families, budget, warnings."""

import pytest
import torch

from ctrain.data.sources import read_sts_b
from ctrain.models.encoder import load_encoder
from ctrain.probes.weighting import WeightingConfig, completeness_warning, weighting_probe
from ctrain.probes.weighting.adaptive import MIN_WIDTH, adaptive_path_rule
from ctrain.probes.weighting.ig import integrated_gradients, quadrature_rule
from ctrain.probes.weighting.keys import IG_COMPLETENESS_OVER_TOL_SHARE, IG_EVALUATIONS_MAX

STEP = 0.2237  # where all-mpnet-base-v2's attention heads switch on the PAD-baseline path, about
SENTENCES = [row[0] for row in read_sts_b("dev")[:4]]


def steep_path(widths: list[float]):
    """Sentence s's path: f(t) = (sigmoid((t - STEP) / w_s), t^2), with its exact derivative; (f(1) - f(0)) in closed form."""
    width = torch.tensor(widths, dtype=torch.float64)

    def evaluate(sentence: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = torch.sigmoid((t - STEP) / width[sentence])
        return torch.stack([s, t**2], 1), torch.stack([s * (1 - s) / width[sentence], 2 * t], 1)

    change = torch.stack([torch.sigmoid((1 - STEP) / width) - torch.sigmoid(-STEP / width), torch.ones_like(width)], 1)
    return evaluate, change


def test_the_adaptive_rule_integrates_a_near_step_that_gauss_legendre_misses():
    widths = [1e-2, 1e-4, 1e-6]
    evaluate, change = steep_path(widths)
    rule = adaptive_path_rule(evaluate, len(widths), tol=0.01, max_evaluations=256, panels=8)
    _, slopes = evaluate(rule.sentence, rule.alphas)
    integral = torch.zeros(len(widths), 2, dtype=torch.float64).index_add_(0, rule.sentence, rule.weights.unsqueeze(1) * slopes)
    error = (integral - change).norm(dim=1) / change.norm(dim=1)
    assert (error < 0.01).all() and torch.allclose(error, rule.completeness_error)
    assert (rule.evaluations > 17).all() and (rule.evaluations <= 256).all()
    assert torch.equal(torch.bincount(rule.sentence), rule.evaluations)  # every evaluated point is a node
    nodes, weights = quadrature_rule("gauss_legendre", 16)
    for s in range(len(widths)):
        _, fixed = evaluate(torch.full((16,), s), nodes)
        assert float((weights @ fixed - change[s]).norm() / change[s].norm()) > 0.1  # GL-16 misses every one of them


def test_the_budget_is_never_exceeded_and_a_missed_tolerance_is_reported():
    evaluate, change = steep_path([1e-6, 1e-6])
    for budget in (17, 18, 25, 40):
        rule = adaptive_path_rule(evaluate, 2, tol=1e-6, max_evaluations=budget, panels=8)
        assert (rule.evaluations <= budget).all()
    assert (rule.completeness_error > 1e-6).all()  # 40 points cannot resolve a step 1e-6 wide to 1e-6
    with pytest.raises(ValueError, match="raise max_evaluations to at least 17"):
        adaptive_path_rule(evaluate, 2, tol=0.01, max_evaluations=16, panels=8)


def test_a_step_narrower_than_float32_resolves_is_not_split_forever():
    evaluate, _ = steep_path([1e-12])
    rule = adaptive_path_rule(evaluate, 1, tol=1e-9, max_evaluations=10_000, panels=1)
    assert rule.evaluations[0] < 200 and torch.diff(rule.alphas.sort().values).min() >= MIN_WIDTH / 4


def test_a_step_narrower_than_float32_resolves_is_integrated_at_float64s_floor():
    """A switch 1e-9 wide (float32 spaces t by 6e-8 near the switch): float32's floor gives its residual up, float64's does not."""
    evaluate, _ = steep_path([1e-9])
    coarse = adaptive_path_rule(evaluate, 1, tol=0.01, max_evaluations=1000, panels=8)
    fine = adaptive_path_rule(evaluate, 1, tol=0.01, max_evaluations=1000, panels=8, min_width=torch.finfo(torch.float64).eps / 2)
    assert coarse.completeness_error[0] > 0.05 and coarse.evaluations[0] < 1000  # stopped at the floor, not the budget
    assert fine.completeness_error[0] < 0.01 and fine.evaluations[0] < 1000


def test_float64_ig_agrees_with_float32_and_leaves_the_model_as_it_was(family):
    encoder, batch = family
    before = {name: tensor.clone() for name, tensor in encoder.state_dict().items()}
    settings = dict(steps=8, mode="sketch", sketch_size=4, sketch_kind="orthogonal", seed=1)
    single = integrated_gradients(encoder, **batch, **settings)
    double = integrated_gradients(encoder, **batch, precision="float64", **settings)
    torch.testing.assert_close(double.weights, single.weights, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(double.completeness_error, single.completeness_error, rtol=1e-3, atol=1e-6)
    assert double.weights.dtype == torch.float32
    after = encoder.state_dict()
    assert all(after[name].dtype == tensor.dtype and torch.equal(after[name], tensor) for name, tensor in before.items())


@pytest.fixture(scope="module", params=["tiny-bert", "tiny-roberta", "tiny-mpnet"])
def family(request):
    encoder = load_encoder(request.param)
    return encoder, encoder.tokenize(SENTENCES)


def test_float64_adaptive_ig_on_a_model_saved_and_loaded_from_a_directory(tiny_bert, tmp_path):
    """The path users take: a sentence-transformers directory loaded back (eval mode, its own pooling and normalisation)."""
    from ctrain.models.export import save_sentence_transformer

    save_sentence_transformer(tiny_bert, tmp_path / "saved", "cos")
    model = load_encoder(str(tmp_path / "saved"))
    batch = model.tokenize(SENTENCES)
    settings = dict(steps=4, quadrature="adaptive", completeness_tol=1e-4, mode="sketch", sketch_size=4, sketch_kind="orthogonal")
    double = integrated_gradients(model, **batch, precision="float64", **settings)
    single = integrated_gradients(model, **batch, **settings)
    assert (double.completeness_error < 1e-4).all() and next(model.parameters()).dtype == torch.float32
    torch.testing.assert_close(double.weights, single.weights, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("mode", ["exact", "sketch"])
def test_adaptive_ig_meets_the_tolerance_and_agrees_with_a_fine_fixed_rule(family, mode):
    encoder, batch = family
    settings = dict(mode=mode, sketch_size=8, sketch_kind="orthogonal", seed=3)
    adaptive = integrated_gradients(encoder, **batch, steps=2, quadrature="adaptive", completeness_tol=1e-4, **settings)
    assert (adaptive.completeness_error < 1e-4).all()
    assert adaptive.evaluations.sum() > 2 * len(SENTENCES)  # refined beyond its 3-point start, over several path chunks
    fine = integrated_gradients(encoder, **batch, steps=32, **settings)
    torch.testing.assert_close(adaptive.weights, fine.weights, rtol=1e-3, atol=1e-5)


def test_on_a_smooth_integrand_adaptive_is_the_fixed_rule_within_the_tolerance(tiny_bert):
    batch = tiny_bert.tokenize(SENTENCES)
    fixed = integrated_gradients(tiny_bert, **batch, steps=16)
    adaptive = integrated_gradients(tiny_bert, **batch, steps=16, quadrature="adaptive", completeness_tol=0.01)
    assert (adaptive.evaluations == 17).all()  # composite Simpson's start already meets 1%: no refinement
    assert (fixed.completeness_error < 0.01).all() and (adaptive.completeness_error < 0.01).all()
    torch.testing.assert_close(adaptive.weights, fixed.weights, rtol=0.01, atol=0)


def test_the_probe_logs_the_share_over_tolerance_and_warns_in_one_line_naming_the_fix(tiny_bert, capsys):
    from types import SimpleNamespace

    from ctrain.callbacks import WordWeightingProbe

    coarse = WeightingConfig(steps=1, batch_size=2, min_count=1, dkl_repeats=1, completeness_tol=1e-4, theorem=False)
    callback = WordWeightingProbe(num_sentences=4, config=coarse)
    callback.sentences = callback.load_sentences()
    metrics, _ = callback.measure(SimpleNamespace(encoder=tiny_bert))
    share = metrics[IG_COMPLETENESS_OVER_TOL_SHARE]
    assert share > 0 and metrics[IG_EVALUATIONS_MAX] == 1
    lines = [line for line in capsys.readouterr().out.splitlines() if "miss IG completeness" in line]
    missed = round(share * 4)
    assert lines == [
        f"weighting: {missed} of 4 sentences miss IG completeness 0.01% (worst {100 * metrics['weighting/ig_completeness_error_max']:.1f}%): "
        "set weighting.quadrature: adaptive; their IG weights are not trustworthy"
    ]
    adaptive = WeightingConfig(**{**coarse.__dict__, "steps": 2, "quadrature": "adaptive", "max_evaluations": 7})
    result = weighting_probe(tiny_bert, callback.sentences, adaptive)
    assert result.metrics[IG_EVALUATIONS_MAX] <= 7
    warning = completeness_warning(result.metrics, adaptive)
    assert (warning is None) == (result.metrics[IG_COMPLETENESS_OVER_TOL_SHARE] == 0)
    generous = WeightingConfig(**{**adaptive.__dict__, "max_evaluations": 256})
    assert weighting_probe(tiny_bert, callback.sentences, generous).metrics[IG_COMPLETENESS_OVER_TOL_SHARE] == 0
    missing = {**metrics, IG_COMPLETENESS_OVER_TOL_SHARE: 0.5, IG_EVALUATIONS_MAX: 7}
    assert "raise weighting.max_evaluations (now 7)" in completeness_warning(missing, adaptive)
    assert "set weighting.ig_precision: float64" in completeness_warning({**missing, IG_EVALUATIONS_MAX: 5}, adaptive)
    in_float64 = WeightingConfig(**{**adaptive.__dict__, "ig_precision": "float64"})
    assert "raise weighting.max_evaluations (now 7)" in completeness_warning({**missing, IG_EVALUATIONS_MAX: 5}, in_float64)


def test_bad_adaptive_settings_are_one_line_errors():
    with pytest.raises(ValueError, match="completeness_tol must be > 0"):
        WeightingConfig(completeness_tol=0)
    with pytest.raises(ValueError, match="max_evaluations 10 is below the adaptive rule's starting 17 points"):
        WeightingConfig(quadrature="adaptive", steps=16, max_evaluations=10)
    with pytest.raises(ValueError, match="ig_precision"):
        WeightingConfig(ig_precision="float16")


@pytest.mark.slow
def test_adaptive_ig_meets_the_tolerance_on_minilm():
    """all-MiniLM-L6-v2, two short STS-B dev sentences in sketch mode: under 1% within the budget."""
    encoder = load_encoder("all-MiniLM-L6-v2")
    batch = encoder.tokenize(["A man is playing a flute.", "Three dogs are running through the snow."])
    ig = integrated_gradients(encoder, **batch, steps=4, quadrature="adaptive", max_evaluations=64, mode="sketch", sketch_size=4)
    assert (ig.completeness_error < 0.01).all() and (ig.evaluations <= 64).all()
    double = integrated_gradients(encoder, **batch, steps=4, quadrature="adaptive", max_evaluations=64, mode="sketch", sketch_size=4, precision="float64")
    assert (double.completeness_error < 0.01).all() and next(encoder.parameters()).dtype == torch.float32
    torch.testing.assert_close(double.weights, ig.weights, rtol=0.02, atol=1e-6)  # both within 1% of complete
