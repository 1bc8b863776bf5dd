"""Every shipped run config and callback preset parses, and the bert-base config has SimCSE's defaults."""

from pathlib import Path

import pytest
import yaml

from ctrain.cli import main

ROOT = Path(__file__).resolve().parents[1]


FIT_CONFIGS = sorted(path for path in (ROOT / "configs").glob("*.yaml") if not path.name.startswith("pretrain_"))


@pytest.mark.parametrize("config", FIT_CONFIGS, ids=lambda p: p.name)  # pretrain_*: tests/test_pretrain.py
@pytest.mark.parametrize("preset", [None, *sorted((ROOT / "callbacks").glob("*.yaml"))], ids=lambda p: getattr(p, "name", "none"))
def test_config_parses(config, preset, capsys):
    args = ["fit", "--config", str(config)] + (["--config", str(preset)] if preset else []) + ["--print_config"]
    with pytest.raises(SystemExit) as exit_code:
        main(args)
    assert exit_code.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["encoder"] == yaml.safe_load(config.read_text())["model"]["encoder"]


def test_bert_base_has_the_published_simcse_defaults():
    config = yaml.safe_load((ROOT / "configs" / "simcse_bert_unsup.yaml").read_text())
    assert config["model"]["temperature"] == 0.05 and config["model"]["learning_rate"] == 3e-5
    assert config["data"]["batch_size"] == 64 and config["data"]["max_length"] == 32
    assert config["trainer"]["max_epochs"] == 1 and config["trainer"]["val_check_interval"] == 125
    assert config["data"]["train"].endswith("wiki1m_for_simcse.txt")
