"""The one STS evaluator against brute force, and every STS score of a run (validation, testing) being its value."""

import math

import numpy as np
import pytest
import torch
import yaml
from helpers import QUICK_FIT

from ctrain.cli.fit import run_cli
from ctrain.data.sources import read_sts_b
from ctrain.probes.sts import StsEvaluator


def _brute_force_spearman(encoder, rows) -> float:
    """Each sentence embedded alone (no padding, no batch), cosines by their formula, Spearman as the Pearson
    correlation of the ranks (no ties among these cosines or scores: plain argsort ranks)."""
    encoder.eval()
    cosines = []
    with torch.no_grad():
        for first, second, _ in rows:
            u, v = (encoder(**encoder.tokenize([sentence], 128))[0].double() for sentence in (first, second))
            cosines.append(float(u @ v) / math.sqrt(float(u @ u) * float(v @ v)))
    gold = np.array([row[2] for row in rows])
    assert len(set(cosines)) == len(rows) and len(set(gold)) == len(rows)
    ranks = [np.argsort(np.argsort(values)).astype(float) for values in (np.array(cosines), gold)]
    return float(np.corrcoef(*ranks)[0, 1]) * 100


def test_evaluator_is_cosine_spearman_of_each_sentence_alone(tiny_bert):
    scores, unique = set(), []
    for row in read_sts_b("dev"):  # distinct gold scores: the brute force's ranks need no tie rule
        if row[2] not in scores:
            scores.add(row[2])
            unique.append(row)
    unique = unique[:24]
    # Batches of 5 sentences, sorted by length inside encode: padding and order must not change the value.
    spearman, pairs = StsEvaluator(unique, batch_size=5)(tiny_bert)
    assert pairs == 24
    assert spearman == pytest.approx(_brute_force_spearman(tiny_bert, unique), abs=1e-6)


def test_bad_evaluator_settings_are_one_line_errors():
    with pytest.raises(ValueError, match="batch size 0"):
        StsEvaluator([], batch_size=0)
    with pytest.raises(ValueError, match="max length 2"):
        StsEvaluator([], max_length=2)


def test_validation_and_test_scores_are_the_evaluators(tmp_path, capsys):
    """`ctrain validate` / `ctrain test` log StsEvaluator's value on the data module's pairs under the model's settings;
    the old data.eval_batch_size key still sets it (moved to model.sts_batch_size, one deprecation line)."""
    common = [*QUICK_FIT, "--data.max_eval_pairs", "40", "--trainer.logger.init_args.save_dir", str(tmp_path)]
    validated = run_cli(["validate", *common, "--data.eval_batch_size", "7"])
    assert "data.eval_batch_size is deprecated" in capsys.readouterr().err
    module = validated.model
    assert module.hparams.sts_batch_size == 7
    expected, _ = StsEvaluator(read_sts_b("dev")[:40], batch_size=7)(module.encoder)
    assert float(validated.trainer.callback_metrics["val/stsb_spearman"]) == pytest.approx(expected, abs=1e-4)  # logged as float32
    saved = yaml.safe_load(next(tmp_path.rglob("config.yaml")).read_text())
    assert saved["model"]["sts_batch_size"] == 7 and saved["data"]["eval_batch_size"] is None
    tested = run_cli(["test", *common, "--model.sts_max_length", "8"])
    expected, _ = StsEvaluator(read_sts_b("test")[:40], max_length=8)(tested.model.encoder)
    assert float(tested.trainer.callback_metrics["test/stsb_spearman"]) == pytest.approx(expected, abs=1e-4)
