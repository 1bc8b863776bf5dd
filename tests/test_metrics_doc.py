"""docs/metrics.md names every column that a run of the demo with its probe preset writes, literally.

Per-layer keys are documented once with `layer_<l>` for the layer number; every other key must appear as
written in metrics.csv, so that a grep for any column finds its definition.
"""

import csv
import re
from pathlib import Path

from helpers import quick_probes_preset

from ctrain.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_every_demo_column_is_defined_in_metrics_doc_and_the_run_prints_its_weighting_curve(tmp_path, capsys):
    main([
        "fit", "--config", str(ROOT / "configs" / "demo.yaml"), "--config", str(quick_probes_preset(tmp_path / "probes.yaml", 2, 8, 40)),
        "--data.batch_size", "8", "--data.max_examples", "32", "--data.max_eval_pairs", "32", "--trainer.max_steps", "2",
        "--trainer.val_check_interval", "2", "--trainer.enable_progress_bar", "false",
        "--trainer.logger.init_args.save_dir", str(tmp_path),
    ])  # fmt: skip
    with (tmp_path / "demo" / "version_0" / "metrics.csv").open() as handle:
        columns = next(csv.reader(handle))
    doc = (ROOT / "docs" / "metrics.md").read_text()
    keys = {re.sub(r"/layer_\d+$", "/layer_<l>", column) for column in columns} - {"step", "epoch"}
    assert any(key.startswith("weighting/") for key in keys) and any(key.startswith("geometry/") for key in keys)
    missing = sorted(key for key in keys if f"`{key}`" not in doc)
    assert not missing, f"docs/metrics.md does not name these metrics.csv columns: {missing}"
    printed = capsys.readouterr().out
    number = r"([+-]?\d\.\d{4})"
    curve = re.findall(rf"step +(\d+): R\^2 {number} \[{number}, {number}\]  beta {number} \[{number}, {number}\]", printed)
    assert "IG-on-KL R^2 and beta [95% interval]" in printed and [int(step) for step, *_ in curve] == [0, 2]
    for _, _, r2_low, r2_high, beta, beta_low, beta_high in curve:  # a percentile interval need not hold the estimate
        assert 0 <= float(r2_low) <= float(r2_high) <= 1 and float(beta_low) <= float(beta_high) and beta[0] in "+-"
