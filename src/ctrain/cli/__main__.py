"""`python -m ctrain.cli ...` is the `ctrain` command (sweeps and tests start runs this way)."""

from ctrain.cli.main import main

main()
