"""`ctrain probe` end to end on a tiny model, its setups and output folders, and the top-level help."""

import json

import pytest

from ctrain.cli import main
from ctrain.cli.probe import probe_parser
from ctrain.probes.sentences import sample_sentences, sts_b_sentences
from ctrain.probes.weighting import BatchProgress, WeightingConfig
from ctrain.probes.model import SETUPS, ProgressLine, output_directory, projected_seconds


def test_probe_writes_results_and_prints_tables(tmp_path, capsys):
    main(["probe", "tiny-bert", "--measure", "[sts,weighting,geometry]", "--num_sentences", "6", "--weighting.steps", "8",
          "--weighting.methods", "[ig,shap]", "--weighting.min_count", "1", "--geometry_sentences", "40",
          "--out", str(tmp_path)])  # fmt: skip
    printed = capsys.readouterr().out
    assert "STS-B dev: Spearman x100" in printed and "STS-B test: Spearman x100" in printed
    assert "6 of 3000 STS-B dev sentences" in printed and "KL counts the word's own occurrence (include_self=True)" in printed
    assert "IG   vs KL(w)" in printed and "SHAP vs -log P(w)" in printed
    assert "  IG exact, 8 gauss_legendre steps, float32; SHAP exact; tokens, min_count 1" in printed
    assert "weighting: 6/6 sentences" in printed and "projected time of all 3000 sentences" in printed
    assert "convention isotropy2023" in printed and ", on cpu, " in printed  # --device auto on a machine without a GPU
    assert not (tmp_path / "weighting_batches").exists()  # the kept batches go once weighting.json is written
    weighting = json.loads((tmp_path / "weighting.json").read_text())
    assert weighting["metrics"]["weighting/ig_kl_n"] > 0 and weighting["config"]["steps"] == 8
    for name in ("ig_vs_kl.png", "shap_sentences.png", "geometry_default.png", "geometry_isotropy2023.json"):
        assert (tmp_path / name).stat().st_size > 0, name


def test_a_gpu_that_is_not_there_is_a_one_line_error(monkeypatch):
    import torch

    from ctrain.probes.model import probe_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert probe_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match=r"--device cuda:1: torch sees no CUDA GPU.*use --device cpu"):
        probe_device("cuda:1")


def test_the_kl_choice_is_a_flag_and_is_printed_and_missed_completeness_is_one_warning_line(tmp_path, capsys):
    main(["probe", "tiny-bert", "--measure", "[weighting]", "--num_sentences", "4", "--weighting.steps", "2",
          "--weighting.include_self", "false", "--weighting.theorem", "false", "--weighting.completeness_tol", "1e-9",
          "--out", str(tmp_path)])  # fmt: skip
    printed = capsys.readouterr().out
    assert "KL leaves out the word's own occurrence (include_self=False)" in printed
    assert "\n  IG exact, 2 gauss_legendre steps, float32; tokens, min_count 5\n" in printed
    assert [line for line in printed.splitlines() if "miss IG completeness" in line] == [
        f"  weighting: 4 of 4 sentences miss IG completeness 1e-07% (worst {100 * json.loads((tmp_path / 'weighting.json').read_text())['metrics']['weighting/ig_completeness_error_max']:.1f}%): "
        "set weighting.quadrature: adaptive; their IG weights are not trustworthy"
    ]
    assert json.loads((tmp_path / "weighting.json").read_text())["metrics"]["weighting/kl_include_self"] == 0.0


def test_setups_are_defaults_that_later_flags_override():
    parser = probe_parser()
    parser.set_defaults(SETUPS["kurita2023"])
    values = parser.instantiate(parser.parse_args(["m", "--weighting.steps", "7"])).as_dict()
    assert values["num_sentences"] is None and values["columns"] == "both" and values["split"] == "dev"
    config = values["weighting"]
    assert isinstance(config, WeightingConfig) and config.steps == 7
    assert config.methods == ("ig", "shap") and config.shap_mode == "partition_native" and config.include_self
    assert config.shap_batch_size is None  # the shap library's default batch, as the paper called it
    assert parser.instantiate(parser.parse_args(["m", "--weighting.shap_batch_size", "256"])).weighting.shap_batch_size == 256
    assert parser.instantiate(parser.parse_args(["m"])).weighting.steps == 16  # the setup's own quadrature
    assert probe_parser().parse_args(["m"]).weighting.steps == WeightingConfig().steps  # one home for the defaults


def test_sampled_sentences_are_seeded_and_the_corpus_has_both_columns():
    corpus = sts_b_sentences("dev")
    assert len(corpus) == 3000 and len(sts_b_sentences("dev", "first")) == 1500
    sample = sample_sentences(corpus, 100, seed=0)
    assert sample == sample_sentences(corpus, 100, seed=0) != sample_sentences(corpus, 100, seed=1)
    assert len(set(sample)) > 90 and sample != corpus[:100]
    assert sample_sentences(corpus, None, seed=0) == corpus
    with pytest.raises(ValueError, match="unknown columns"):
        sts_b_sentences("dev", "second")


def test_two_run_directories_get_two_output_folders():
    first, second = output_directory("runs/demo/version_0", None), output_directory("runs/demo/version_1/", None)
    assert first != second and first.parent == second.parent
    assert output_directory("all-MiniLM-L6-v2", "kurita2023").name == "all-MiniLM-L6-v2-kurita2023"


def test_the_corpus_projection_fits_the_timed_batches_over_the_whole_sample():
    """Batches go shortest first: the sample's time is the fitted cost of all its batches (the first one's warm-up
    left out), scaled to the corpus, not the rate of its later, longer batches."""
    lengths = (5, 10, 20)
    ticks = iter([0.0, 100.0, 105.0, 115.0, 115.0])  # start; warm-up batch; 0.5 s a token at lengths 10 and 20; finish
    progress = ProgressLine("weighting", interval=1e9, clock=lambda: next(ticks))
    for batch in range(3):
        progress(BatchProgress(8 * (batch + 1), 24, batch, lengths, False))
    progress.finish()
    assert progress.seconds_for(3000) == pytest.approx(0.5 * sum(lengths) * 3000 / 24)


def test_time_left_is_projected_from_the_token_lengths_to_come():
    def cost(length: int) -> float:
        return 0.1 * length + 0.04 * length**2

    timed = [(length, cost(length)) for length in (7, 9, 12, 15)]
    rest = [20, 26, 38, 53]
    assert projected_seconds(timed, rest) == pytest.approx(sum(map(cost, rest)), rel=1e-6)
    assert projected_seconds([(10, 5.0), (10, 7.0)], [20]) == pytest.approx(12.0)  # one length timed: cost per token


def test_progress_line_times_neither_reused_batches_nor_the_first_weighed_one(capsys):
    ticks = iter([0.0, 1.0, 50.0, 54.0, 62.0])  # start; a reused batch; warm-up; 4 s at length 10; 8 s at 20
    progress = ProgressLine("weighting", interval=0.0, clock=lambda: next(ticks))
    lengths = (5, 5, 10, 20, 40)
    for batch, reused in enumerate([True, False, False, False]):
        progress(BatchProgress(8 * (batch + 1), 40, batch, lengths, reused))
    assert progress.timed == [(10, 4.0), (20, 8.0)]
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "  weighting: 8/40 sentences, 1s elapsed, time left not known yet"
    assert printed[-1] == "  weighting: 32/40 sentences, 1m02s elapsed, about 16s left"


def test_probe_resolves_a_run_directory(tmp_path):
    from ctrain.models.encoder import load_encoder
    from ctrain.models.export import save_sentence_transformer
    from ctrain.probes.model import resolve_model

    save_sentence_transformer(load_encoder("tiny-bert"), tmp_path / "model_final")
    assert resolve_model(str(tmp_path)) == str(tmp_path / "model_final")
    assert resolve_model("all-MiniLM-L6-v2") == "all-MiniLM-L6-v2"


def test_help_lists_ctrains_commands_and_predict_is_not_one(capsys):
    main(["--help"])
    printed = capsys.readouterr().out
    for command in ("fit", "validate", "test", "probe"):
        assert f"\n  {command} " in printed
    assert "ctrain fit --resume RUN_DIR" in printed
    with pytest.raises(SystemExit) as exit_info:
        main(["predict"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith("ctrain: error:") and "predict" in error and error.count("\n") == 1


def test_probe_help_names_probe(capsys):
    with pytest.raises(SystemExit):
        main(["probe", "--help"])
    assert capsys.readouterr().out.startswith("usage: ctrain probe")


def test_isotropy2023_setup_runs_only_its_geometry_convention(tmp_path, capsys):
    main(["probe", "tiny-bert", "--setup", "isotropy2023", "--measure", "[geometry]", "--geometry_sentences", "40",
          "--out", str(tmp_path)])  # fmt: skip
    printed = capsys.readouterr().out
    assert "setup isotropy2023" in printed and "convention isotropy2023, 40 STS-B test sentences" in printed
    assert "convention default" not in printed and "word weighting" not in printed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["geometry_isotropy2023.json", "geometry_isotropy2023.png"]


def test_a_bad_weighting_flag_is_one_line_naming_the_choices(capsys):
    with pytest.raises(SystemExit):
        main(["probe", "tiny-bert", "--weighting.ig_mode", "fast"])
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "weighting.ig_mode" in error and "'exact', 'sketch'" in error
    assert error.rstrip().endswith("(ctrain probe --help lists the keys)")


def test_a_resumed_probe_times_only_the_sentences_it_weighed(tmp_path, monkeypatch, capsys):
    """Rerun after a stop, the probe reads the kept batches back: its rate and projection come from the rest alone."""
    import ctrain.probes.model as probe_module

    args = ["probe", "tiny-bert", "--measure", "[weighting]", "--num_sentences", "8", "--weighting.batch_size", "4",
            "--weighting.steps", "2", "--weighting.theorem", "false", "--out", str(tmp_path)]  # fmt: skip
    weighting_probe = probe_module.weighting_probe

    def stopped_after_the_first_batch(*args, progress, **kwargs):
        def stop(batch):
            progress(batch)
            raise KeyboardInterrupt

        return weighting_probe(*args, progress=stop, **kwargs)

    monkeypatch.setattr(probe_module, "weighting_probe", stopped_after_the_first_batch)
    with pytest.raises((KeyboardInterrupt, SystemExit)):
        main(args)
    monkeypatch.setattr(probe_module, "weighting_probe", weighting_probe)
    capsys.readouterr()
    main(args)
    printed = capsys.readouterr().out
    assert "  1 batches kept in" in printed
    (line,) = [line for line in printed.splitlines() if "s/sentence" in line]
    assert line.endswith(" in all (4 sentences read back from an interrupted run's batches)")
    assert "(from the 4 random ones weighed here)" in printed
