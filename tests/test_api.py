"""The Python API: `from ctrain import ...` gives the public names, and an encoder can be given by its name alone."""

import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import yaml
from jsonargparse import Namespace

import ctrain
from ctrain.cli import main
from ctrain.cli.fit import CtrainCLI
from ctrain.models.encoder import EncoderConfig, SentenceEncoder

ROOT = Path(__file__).resolve().parents[1]


def test_every_public_name_resolves_to_a_ctrain_object():
    assert {"ContrastiveModule", "ContrastiveDataModule", "EncoderConfig", "load_encoder"} <= set(ctrain.__all__)
    for name in ctrain.__all__:
        assert getattr(ctrain, name).__module__.startswith("ctrain."), name
    assert set(ctrain.__all__) <= set(dir(ctrain))


def test_importing_ctrain_imports_neither_torch_nor_lightning():
    """Every `ctrain.*` import runs ctrain/__init__.py first: the public names must not cost each of them Lightning."""
    code = "import sys, ctrain; print(sorted({'torch', 'pytorch_lightning'} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"


def test_a_name_is_the_encoder_of_that_name_with_default_settings():
    model = ctrain.ContrastiveModule(encoder="tiny-bert")
    assert model.encoder_config == EncoderConfig(name="tiny-bert") and isinstance(model.encoder, SentenceEncoder)


def test_an_encoder_given_by_name_on_the_command_line_is_written_out_in_full():
    """`--model.encoder NAME` parses to a string; config.yaml (which `ctrain report` reads) still holds `model.encoder.name`."""
    cli = Namespace(subcommand="fit", config={"fit": Namespace(model=Namespace(encoder="tiny-roberta"), trainer=Namespace(default_root_dir=None, logger=None))})
    CtrainCLI.before_instantiate_classes(cli)
    assert cli.config["fit"].model.encoder == Namespace(**asdict(EncoderConfig(name="tiny-roberta")))


def test_the_command_line_takes_an_encoder_by_name(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(ROOT / "configs" / "demo.yaml"), "--model.encoder", "all-MiniLM-L6-v2", "--print_config"])
    assert yaml.safe_load(capsys.readouterr().out)["model"]["encoder"] == "all-MiniLM-L6-v2"
