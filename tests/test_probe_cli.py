"""`ctrain probe` end to end on a tiny model: JSON, figures and the printed headline numbers."""

import json

from ctrain.cli import main


def test_probe_writes_results_and_prints_tables(tmp_path, capsys):
    main(["probe", "tiny-bert", "--geometry", "true", "--num_sentences", "6", "--steps", "8", "--min_count", "1",
          "--geometry_sentences", "40", "--out", str(tmp_path)])  # fmt: skip
    printed = capsys.readouterr().out
    assert "STS-B dev: Spearman x100" in printed and "STS-B test: Spearman x100" in printed
    assert "IG   vs KL(w)" in printed and "SHAP vs -log P(w)" in printed
    assert "convention isotropy2023" in printed
    weighting = json.loads((tmp_path / "weighting.json").read_text())
    assert weighting["metrics"]["ig_kl_n"] > 0
    for name in ("ig_vs_kl.png", "shap_sentences.png", "geometry_default.png", "geometry_isotropy2023.json"):
        assert (tmp_path / name).stat().st_size > 0, name


def test_probe_resolves_a_run_directory(tmp_path):
    from ctrain.encoder import load_encoder
    from ctrain.export import save_sentence_transformer
    from ctrain.probe_cli import resolve_model

    save_sentence_transformer(load_encoder("tiny-bert"), tmp_path / "model_final")
    assert resolve_model(str(tmp_path)) == str(tmp_path / "model_final")
    assert resolve_model("all-MiniLM-L6-v2") == "all-MiniLM-L6-v2"
