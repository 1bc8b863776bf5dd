"""Every shipped run config and callback preset parses, and the bert-base configs have the papers' settings."""

from pathlib import Path

import pytest
import yaml

from ctrain.cli import main

ROOT = Path(__file__).resolve().parents[1]


FIT_CONFIGS = sorted(path for path in (ROOT / "configs").glob("*.yaml") if not path.name.startswith("pretrain_"))
PRESETS = sorted((ROOT / "callbacks").glob("*.yaml"))
# Every run config alone, and every preset composed with a CPU config and a hub (GPU) config: a preset sets
# trainer, wandb or schedule entries, never data or encoder ones, so two configs of each kind test its composition
# (all 200-odd pairs cost a minute of the suite).
PAIRS = [(config, None) for config in FIT_CONFIGS] + [
    (ROOT / "configs" / name, preset) for preset in PRESETS for name in ("demo.yaml", "simcse_bert_unsup.yaml")
]


@pytest.mark.parametrize(
    ("config", "preset"), PAIRS, ids=[f"{config.name}+{preset.name if preset else 'none'}" for config, preset in PAIRS]
)  # pretrain_*: tests/test_pretrain.py
def test_config_parses(config, preset, capsys):
    args = ["fit", "--config", str(config)] + (["--config", str(preset)] if preset else []) + ["--print_config"]
    with pytest.raises(SystemExit) as exit_code:
        main(args)
    assert exit_code.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    given = yaml.safe_load(config.read_text())["model"]["encoder"]
    assert {key: printed["model"]["encoder"][key] for key in given} == given


def test_presets_set_no_data_or_encoder_entries():
    """What makes composing each preset with two configs enough (PAIRS)."""
    for preset in PRESETS:
        entries = yaml.safe_load(preset.read_text())
        assert set(entries) <= {"trainer", "wandb", "model"}, preset.name
        assert set(entries.get("model", {})) <= {"schedule"}, preset.name


def test_bert_base_has_the_published_simcse_defaults():
    config = yaml.safe_load((ROOT / "configs" / "simcse_bert_unsup.yaml").read_text())
    assert config["model"]["temperature"] == 0.05 and config["model"]["learning_rate"] == 3e-5
    assert config["data"]["batch_size"] == 64 and config["data"]["max_length"] == 32
    assert config["trainer"]["max_epochs"] == 1 and config["trainer"]["val_check_interval"] == 125
    assert config["data"]["train"].endswith("wiki1m_for_simcse.txt")


def test_bert_base_objective_configs_have_the_published_settings():
    sbert = yaml.safe_load((ROOT / "configs" / "sbert_nli_bert.yaml").read_text())
    assert sbert["model"]["objective"] == "nli_classifier" and sbert["model"]["encoder"]["pooling"] == "mean"
    assert sbert["model"]["learning_rate"] == 2e-5 and sbert["model"]["warmup"] == 0.1 and sbert["data"]["batch_size"] == 16
    assert sbert["data"]["label_column"] == "label" and sbert["trainer"]["max_epochs"] == 1
    diffcse = yaml.safe_load((ROOT / "configs" / "diffcse_bert_unsup.yaml").read_text())["model"]
    objective = diffcse["objective"]
    assert objective["class_path"] == "ctrain.training.objectives.DiffCSE"
    assert objective["init_args"] == {"generator": "distilbert-base-uncased", "weight": 0.005, "mask_ratio": 0.3}
    assert diffcse["learning_rate"] == 7e-6
    symmetric = yaml.safe_load((ROOT / "configs" / "symmetric_infonce_bert.yaml").read_text())["model"]
    assert symmetric["objective"] == "symmetric_infonce" and symmetric["temperature"] == 0.05  # scale 20


def test_objective_sweep_covers_every_objective():
    from ctrain.training.objectives import OBJECTIVES

    sweep = yaml.safe_load((ROOT / "sweeps" / "objectives.yaml").read_text())
    lab = {"logistic", "sgns"}  # the Theorem-1 lab's objectives: sweeps/theorem_lab.yaml
    swept = set()
    for overlay in sweep["parameters"]["config"]["values"]:
        objective = yaml.safe_load((ROOT / overlay).read_text())["model"]["objective"]
        swept.add(objective if isinstance(objective, str) else objective["class_path"].rsplit(".", 1)[-1])
    names = {cls.__name__: name for name, cls in OBJECTIVES.items()}
    assert {names.get(value, value) for value in swept} == set(OBJECTIVES) - lab
    assert {"program", "method", "command"} <= set(sweep)
