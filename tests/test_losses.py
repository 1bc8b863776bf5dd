"""The objectives against their formulas (and sentence-transformers' losses); DDP gather against one process."""

import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ctrain.training.losses import (
    info_nce,
    logistic_loss,
    pair_classifier_loss,
    replaced_token_detection_loss,
    similarity_matrix,
)



def symmetric_info_nce(*args, **kwargs):
    return info_nce(*args, symmetric=True, **kwargs)


def _manual_info_nce(anchors, positives, temperature, similarity, negatives=None, weight=0.0):
    candidates = positives if negatives is None else torch.cat([positives, negatives])
    total = 0.0
    for i in range(anchors.shape[0]):
        logits = []
        for j in range(candidates.shape[0]):
            a, c = anchors[i].double(), candidates[j].double()
            s = torch.dot(a, c) / (a.norm() * c.norm()) if similarity == "cos" else torch.dot(a, c)
            s = s / temperature
            if negatives is not None and j == positives.shape[0] + i:
                s = s + weight
            logits.append(s)
        logits = torch.stack(logits)
        total += -(logits[i] - torch.logsumexp(logits, 0))
    return total / anchors.shape[0]


@pytest.mark.parametrize("similarity", ["cos", "dot"])
@pytest.mark.parametrize("with_negatives", [False, True])
def test_info_nce_matches_formula(similarity, with_negatives):
    g = torch.Generator().manual_seed(0)
    anchors, positives, negatives = (torch.randn(6, 5, generator=g) for _ in range(3))
    negatives = negatives if with_negatives else None
    loss = info_nce(anchors, positives, 0.5, similarity, negatives, hard_negative_weight=0.7)
    expected = _manual_info_nce(anchors, positives, 0.5, similarity, negatives, 0.7 if with_negatives else 0.0)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("similarity", ["cos", "dot"])
def test_symmetric_info_nce_is_the_mean_of_both_directions(similarity):
    g = torch.Generator().manual_seed(4)
    anchors, positives = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    loss = symmetric_info_nce(anchors, positives, 0.3, similarity)
    expected = (_manual_info_nce(anchors, positives, 0.3, similarity) + _manual_info_nce(positives, anchors, 0.3, similarity)) / 2
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert loss.item() != pytest.approx(info_nce(anchors, positives, 0.3, similarity).item(), rel=1e-3)


@pytest.mark.parametrize("with_negatives", [False, True])
def test_symmetric_info_nce_matches_sentence_transformers(with_negatives):
    from sentence_transformers.sentence_transformer.losses import (
        MultipleNegativesSymmetricRankingLoss,
    )

    g = torch.Generator().manual_seed(5)
    anchors, positives, negatives = (torch.randn(6, 8, generator=g) for _ in range(3))
    embeddings = [anchors, positives] + ([negatives] if with_negatives else [])
    reference = MultipleNegativesSymmetricRankingLoss(model=None, scale=20.0)  # cos_sim; scale = 1 / temperature
    expected = reference.compute_loss_from_embeddings(embeddings, None)
    loss = symmetric_info_nce(anchors, positives, 0.05, "cos", negatives if with_negatives else None)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_pair_classifier_loss_matches_hand_computation():
    g = torch.Generator().manual_seed(6)
    first, second = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    labels = torch.tensor([0, 2, 1, 2])
    classifier = torch.nn.Linear(9, 3)
    loss = pair_classifier_loss(first, second, labels, classifier)
    expected = 0.0
    for u, v, label in zip(first.double(), second.double(), labels):
        features = torch.cat([u, v, (u - v).abs()])
        logits = classifier.weight.detach().double() @ features + classifier.bias.detach().double()
        expected -= float(logits[label] - torch.logsumexp(logits, 0))
    assert loss.item() == pytest.approx(expected / 4, rel=1e-5)


def test_replaced_token_detection_scores_only_the_scored_tokens():
    logits = torch.tensor([[5.0, 0.3, -1.2, 9.0], [-7.0, 2.0, 0.0, 4.0]])
    replaced = torch.tensor([[False, True, False, True], [False, False, True, False]])
    scored = torch.tensor([[False, True, True, False], [False, True, True, False]])  # [CLS] w w [SEP]/PAD
    loss = replaced_token_detection_loss(logits, replaced, scored)
    # -log sigma(0.3) - log(1 - sigma(-1.2)) - log(1 - sigma(2.0)) - log sigma(0.0), over 4 scored tokens
    expected = -(math.log(1 / (1 + math.exp(-0.3))) + math.log(1 / (1 + math.exp(-1.2)))
                 + math.log(1 / (1 + math.exp(2.0))) + math.log(0.5)) / 4  # fmt: skip
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    changed = logits.masked_fill(~scored, 100.0)
    assert replaced_token_detection_loss(changed, replaced, scored).item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="no scored tokens"):
        replaced_token_detection_loss(logits, replaced, torch.zeros_like(scored))


def test_similarity_is_fp32_under_autocast():
    a = torch.randn(4, 8, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        sims = similarity_matrix(a, a, "dot")
    assert sims.dtype == torch.float32
    assert torch.allclose(sims, a.float() @ a.float().T)


def test_logistic_loss_matches_formula():
    g = torch.Generator().manual_seed(1)
    anchors, positives = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    loss = logistic_loss(anchors, positives, 2.0, "dot", num_negatives=2, generator=torch.Generator().manual_seed(7))
    shifts = torch.randint(1, 5, (5, 2), generator=torch.Generator().manual_seed(7))
    expected = 0.0
    for i in range(5):
        expected -= math.log(torch.sigmoid(anchors[i] @ positives[i] / 2.0))
        for k in range(2):
            j = (i + int(shifts[i, k])) % 5
            assert j != i
            expected -= math.log(torch.sigmoid(-(anchors[i] @ positives[j]) / 2.0))
    assert loss.item() == pytest.approx(expected / 5, rel=1e-5)


def test_logistic_rejects_too_many_negatives():
    with pytest.raises(ValueError, match="num_negatives"):
        logistic_loss(torch.randn(3, 2), torch.randn(3, 2), 1.0, num_negatives=3)


LOSS_FUNCTIONS = [info_nce, symmetric_info_nce]


def _ddp_worker(rank, world, port, anchors, positives, negatives, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        local = slice(rank * 4, (rank + 1) * 4)
        for loss_function in LOSS_FUNCTIONS:
            a = anchors[local].clone().requires_grad_(True)
            p = positives[local].clone().requires_grad_(True)
            n = negatives[local].clone().requires_grad_(True)
            loss = loss_function(a, p, 0.05, "cos", n, hard_negative_weight=0.3)
            loss.backward()
            # DDP averages gradients over ranks; do the same here to compare with one process.
            grads = [t.grad.clone() for t in (a, p, n)]
            losses = [torch.zeros(()) for _ in range(world)]
            dist.all_gather(losses, loss.detach())
            results[loss_function.__name__, rank] = (sum(losses) / world, grads)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_results():
    """Every loss under 2 gloo processes, spawned once for all of them (each spawned process pays the torch import)."""
    g = torch.Generator().manual_seed(3)
    inputs = tuple(torch.randn(8, 6, generator=g) for _ in range(3))
    port = 29500 + os.getpid() % 1000
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_ddp_worker, args=(2, port, *inputs, results), nprocs=2, join=True)
        return inputs, dict(results)


@pytest.mark.parametrize("loss_function", LOSS_FUNCTIONS, ids=lambda f: f.__name__)
def test_ddp_gather_loss_and_gradients_equal_single_process(loss_function, ddp_results):
    (anchors, positives, negatives), results = ddp_results
    full = [t.clone().requires_grad_(True) for t in (anchors, positives, negatives)]
    single = loss_function(full[0], full[1], 0.05, "cos", full[2], hard_negative_weight=0.3)
    single.backward()
    for rank in range(2):
        loss, grads = results[loss_function.__name__, rank]
        assert loss.item() == pytest.approx(single.item(), rel=1e-6)
        for grad, reference in zip(grads, full):
            # Each rank's loss is a mean over its 4 anchors; DDP averages over 2 ranks -> same as the mean over 8.
            assert torch.allclose(grad / 2, reference.grad[rank * 4 : (rank + 1) * 4], atol=1e-6)


def test_one_table_names_every_similarity():
    from typing import get_args

    from ctrain.models.similarity import SIMILARITIES, Similarity

    assert tuple(SIMILARITIES) == get_args(Similarity)
    with pytest.raises(ValueError, match="unknown similarity 'l2': choose one of cos, dot"):
        similarity_matrix(torch.ones(2, 3), torch.ones(2, 3), "l2")
