"""`ctrain report DIR`: PNG figures and one self-contained HTML page for a run or a sweep directory.

It reads only what runs write (metrics.csv, config.yaml, probes/*.jsonl, a sweep's sweep.yaml),
so it works on finished, running and interrupted runs alike. Figures: every metric family against
the optimizer step or the number of training examples seen (STS-B, loss, word-weighting R^2 beside
its slope beta per method and information quantity, geometry per layer); for a sweep, one figure per
metric with a curve per run and a table of final values.

A word-weighting fit is always drawn as two panels, R^2 and beta, each shaded with its interval where one
was logged: R^2 alone cannot tell a weakening negative relation from a vanishing positive one.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
from collections.abc import Iterable
from pathlib import Path

import pandas as pd
import yaml
from matplotlib.figure import Figure

from ctrain.fileio import atomic_write_text, complete_lines
from ctrain.keys import EXAMPLES_SEEN, MLM_HELD_OUT_LOSS, STS_DEV, STS_TEST
from ctrain.reporting import lab_report
from ctrain.reporting.figures import (
    METHOD_LABELS,
    QUANTITY_LABELS,
    XAxis,
    curve_of,
    line_figure,
    log_x_axes,
    panel_figure,
    save_figure,
    seed_band,
)
from ctrain.reporting.geometry_plots import words as geometry_words
from ctrain.sweeps import parse_run_label, run_label

SCALAR_LABELS = {
    STS_DEV: "STS-B dev Spearman x100",
    STS_TEST: "STS-B test Spearman x100 (final model)",
    "train/loss": "training loss",
    "convergence/objective": "training objective on fixed batches",
    "convergence/relative_range": "objective's relative range over the convergence window",
    MLM_HELD_OUT_LOSS: "held-out MLM loss",
    "train/mlm_loss": "training MLM loss",
    "val/mlm_accuracy": "held-out masked-token accuracy",
}
# The training criterion of a run (`ctrain fit`: STS-B dev; `ctrain pretrain`: the held-out MLM loss), drawn beside the
# word-weight fits so that a change in the weighting is read against how far training has got.
TRAINING_CRITERIA = (MLM_HELD_OUT_LOSS, STS_DEV)  # a pretrain run logs both (STS-B dev of its backbone): its own first
FIT_STATISTICS = {"r2": "R^2 of word weight on information", "beta": "slope beta of word weight on information"}
FIT_TITLE = "word weight on information: R^2 and slope beta (shaded: interval)"


# ---- reading runs (pure functions of the files a run writes) ----


def read_run(run_dir: Path) -> pd.DataFrame:
    """One row per logged step: metrics.csv merged by step, with `examples` (examples seen) added.

    Steps and values missing from metrics.csv (a run still training flushes it only at checkpoints;
    a crashed one never wrote its last rows) are filled from probes/*.jsonl; where both hold a value,
    metrics.csv's wins."""
    if not run_dir.exists():
        raise FileNotFoundError(f"'{run_dir}' does not exist; give a run directory (runs/NAME/version_N) or a sweep directory")
    metrics_file = run_dir / "metrics.csv"
    text = complete_lines(metrics_file) if metrics_file.exists() else ""
    frame = pd.read_csv(io.StringIO(text)) if text.strip() else pd.DataFrame({"step": []})
    probes = read_probes(run_dir)
    if not probes.empty:
        frame = pd.concat([frame, probes], ignore_index=True).copy()  # metrics.csv's rows first: first() keeps its values
    if frame.empty:
        raise ValueError(f"'{run_dir}' has no metrics yet (no metrics.csv or probes/*.jsonl); give a ctrain run directory")
    frame = frame.groupby("step", as_index=False).first().sort_values("step")
    frame["examples"] = examples_seen(frame, run_dir)
    return frame.drop(columns=[EXAMPLES_SEEN], errors="ignore")


def examples_seen(frame: pd.DataFrame, run_dir: Path) -> pd.Series:
    """Training examples seen at each step: the logged `trainer/examples_seen` (steps x the global batch the
    run really had); a step without it (a probe-only row) gets its step x the run's logged examples per step.
    Runs that logged none fall back to the batch size in config.yaml (`examples_per_step`)."""
    logged = frame[EXAMPLES_SEEN] if EXAMPLES_SEEN in frame else pd.Series(float("nan"), index=frame.index)
    known = logged.notna() & (frame["step"] > 0)
    per_step = (logged[known] / frame["step"][known]).median() if known.any() else examples_per_step(run_dir)
    return logged.fillna(frame["step"] * per_step)


def read_probes(run_dir: Path) -> pd.DataFrame:
    """The probes' JSON lines as columns named as in metrics.csv (`geometry/...`, `weighting/...`).

    A record's key gets its file's stem as prefix unless it has it already, the rule the probe callbacks log by:
    the weighting probe writes full keys (`weighting/ig_kl_r2`), the geometry probe short ones (`anisotropy/layer_4`)."""
    rows: dict[int, dict[str, float]] = {}
    for path in sorted((run_dir / "probes").glob("*.jsonl")):
        prefix = f"{path.stem}/"
        for line in complete_lines(path).splitlines():
            if line.strip():
                record = json.loads(line)
                row = rows.setdefault(int(record["step"]), {"step": int(record["step"])})
                row.update({key if key.startswith(prefix) else prefix + key: value for key, value in record.get("metrics", {}).items()})
    return pd.DataFrame(sorted(rows.values(), key=lambda row: row["step"]))


def run_config(run_dir: Path) -> dict:
    path = run_dir / "config.yaml"
    return yaml.safe_load(path.read_text()) if path.exists() else {}


def config_value(config: dict, dotted: str):
    """`model.temperature` -> config["model"]["temperature"] (None when absent)."""
    value = config
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def examples_per_step(run_dir: Path) -> int:
    """Global batch size from the run's config (per-process batch x devices x accumulation), for runs that did not
    log `trainer/examples_seen`; `devices` auto / -1 and num_nodes are not resolved here, so it can be short."""
    config = run_config(run_dir)
    batch = config_value(config, "data.batch_size") or 1
    devices = config_value(config, "trainer.devices")
    processes = devices if isinstance(devices, int) else len(devices) if isinstance(devices, list) else 1
    return int(batch) * int(processes) * int(config_value(config, "trainer.accumulate_grad_batches") or 1)


# Where a run is written, not what it trained: runs equal but for these and seed_everything are seeds of one arm.
PLACEMENT_KEYS = ("trainer.logger.init_args.version", "trainer.default_root_dir", "ckpt_path")


def compare_labels(paths: list[Path]) -> dict[Path, str]:
    """Run directory -> its label in a comparison; a sweep directory stands for its runs, each labelled by the
    sweep's name and its swept values."""
    labels: dict[Path, str] = {}
    for path in paths:
        if (path / "sweep.yaml").exists():
            labels |= {run_dir: f"{path.name}: {label}" for label, run_dir in sweep_runs(path).items()}
        else:
            model = config_value(config := run_config(path), "model.encoder.name") or config_value(config, "model.init_from") or "masked LM"
            labels[path] = f"{model} ({path.parent.name}/{path.name})"
    return labels


def seed_groups(labels: dict[Path, str]) -> dict[str, list[Path]]:
    """Curve label -> the run directories whose configs differ only in seed_everything and PLACEMENT_KEYS, in the
    order given (so a comparison of arms with several seeds each draws one band per arm)."""
    groups: dict[str, list[Path]] = {}
    for run_dir in labels:
        config = run_config(run_dir)
        config.pop("seed_everything", None)
        for dotted in PLACEMENT_KEYS:
            *parents, leaf = dotted.split(".")
            if isinstance(holder := config_value(config, ".".join(parents)) if parents else config, dict):
                holder.pop(leaf, None)
        groups.setdefault(json.dumps(config, sort_keys=True, default=str), []).append(run_dir)
    return {_group_label(dirs, labels[dirs[0]]) if len(dirs) > 1 else labels[dirs[0]]: dirs for dirs in groups.values()}


def _group_label(run_dirs: list[Path], first_label: str) -> str:
    """A sweep run's label without its seed, else the run's model and logger name; with the number of seeds."""
    if "seed_everything=" in first_label:
        sweep_name, label = first_label.split(": ", 1)
        settings = {key: value for key, value in parse_run_label(label).items() if key != "seed_everything"}
        unseeded = f"{sweep_name}: {run_label(settings, list(settings))}" if settings else sweep_name
        return f"{unseeded} ({len(run_dirs)} seeds)"
    return f"{first_label.split(' (')[0]} ({run_dirs[0].parent.name}, {len(run_dirs)} seeds)"


def run_title(run_dir: Path) -> str:
    """The model a run trains (a pretrain run: its architecture and shape, or its starting model) and where the run is."""
    config = run_config(run_dir)
    model = config_value(config, "model.encoder.name") or config_value(config, "model.init_from")
    if model is None and (architecture := config_value(config, "model.architecture")) is not None:
        model = f"MLM pre-training of {architecture}, {config_value(config, 'model.num_layers')} layers x {config_value(config, 'model.hidden_size')}"
    return f"{model or 'unknown model'}, run {run_dir.parent.name}/{run_dir.name}"


# ---- figures ----


def weighting_fits(columns: Iterable[str]) -> dict[str, str]:
    """Legend words (`IG on KL(w)`) -> column prefix (`weighting/ig_kl`) of every word-weight fit with R^2 or beta."""
    fits = {}
    for column in columns:
        match = re.fullmatch(r"(weighting/(?!theorem_)(\w+?)_(kl|dkl|selfinfo))_(r2|beta)", column)
        if match:
            fits[f"{METHOD_LABELS.get(match[2], match[2])} on {QUANTITY_LABELS[match[3]]}"] = match[1]
    return fits


def metric_families(columns: Iterable[str]) -> dict[str, tuple[str, dict[str, str]]]:
    """Figure name -> (y-axis label, {legend words: column}) for every metric family present."""
    columns = list(columns)
    families: dict[str, tuple[str, dict[str, str]]] = {}
    for column, words in SCALAR_LABELS.items():
        if column in columns:
            families[column.replace("/", "_")] = (words, {words: column})
    fits = weighting_fits(columns)
    for statistic, words in FIT_STATISTICS.items():
        lines = {label: f"{prefix}_{statistic}" for label, prefix in fits.items() if f"{prefix}_{statistic}" in columns}
        if lines:
            families[f"weighting_{statistic}"] = (words, lines)
    geometry: dict[str, dict[str, str]] = {}
    for column in columns:
        match = re.fullmatch(r"geometry/(\w+)/layer_(\d+)", column)
        if match and not match[1].endswith(("_std", "_adjusted")):
            geometry.setdefault(match[1], {})[f"layer {match[2]}" + (" (embeddings)" if match[2] == "0" else "")] = column
        elif re.fullmatch(r"geometry/(alignment|uniformity)", column):
            geometry.setdefault(column.split("/")[1], {})["sentence embedding"] = column
    for name, lines in sorted(geometry.items()):
        families[f"geometry_{name}"] = (geometry_words(name), lines)
    return families


def fit_panels(curves: dict[str, tuple[pd.DataFrame, str]]) -> dict[str, dict[str, pd.DataFrame]]:
    """R^2 and beta panels of word-weight fits: y-axis label -> {legend words: curve}, from legend words ->
    (the frame, the fit's column prefix)."""
    return {words: {label: curve_of(frame, f"{prefix}_{statistic}") for label, (frame, prefix) in curves.items()} for statistic, words in FIT_STATISTICS.items()}


def criterion_panel(runs: dict[str, pd.DataFrame]) -> dict[str, dict[str, pd.DataFrame]]:
    """The runs' training criterion as one panel, a curve per run: the first of TRAINING_CRITERIA that every run logs
    (a comparison of SimCSE arms with an MLM control: STS-B dev), else the first any run logs; none when none does."""
    logged = [column for column in TRAINING_CRITERIA if any(column in frame for frame in runs.values())]
    column = next((column for column in logged if all(column in frame for frame in runs.values())), logged[0] if logged else None)
    return {SCALAR_LABELS[column]: {label: curve_of(frame, column) for label, frame in runs.items()}} if column else {}


def run_figures(frame: pd.DataFrame, title: str, x: XAxis = "step") -> dict[str, Figure]:
    """Every metric family of one run against `x`, a line per layer / method and quantity; the word-weight fits in
    one figure, R^2 beside beta beside the training criterion."""
    figures = {}
    fits = {label: (frame, prefix) for label, prefix in weighting_fits(frame.columns).items()}
    panels = fit_panels(fits) | criterion_panel({"run": frame})
    if fits and (figure := panel_figure(panels, f"{FIT_TITLE}\n{title}", x)) is not None:
        figures["weighting_fits"] = figure
    for name, (y_label, lines) in metric_families(frame.columns).items():
        if name.startswith("weighting_"):  # drawn above, R^2 beside beta
            continue
        figure = line_figure({words: curve_of(frame, column) for words, column in lines.items()}, y_label, f"{y_label}\n{title}", x)
        if figure is not None:
            figures[name] = figure
    return figures


def sweep_figures(runs: dict[str, pd.DataFrame], title: str, x: XAxis, legend_title: str) -> dict[str, Figure]:
    """One figure per metric with a curve per run; geometry at the last layer (the sentence encoder's output); a word-
    weight fit's R^2 beside its beta."""
    figures = {}
    fits = {label: prefix for frame in runs.values() for label, prefix in weighting_fits(frame.columns).items()}
    for fit, prefix in fits.items():
        curves = {label: (frame, prefix) for label, frame in runs.items()}
        figure = panel_figure(fit_panels(curves) | criterion_panel(runs), f"{fit}: {FIT_TITLE}\n{title}", x)
        if figure is not None:
            for axes in figure.axes:
                if axes.get_legend() is not None:
                    axes.get_legend().set_title(legend_title)
            figures[re.sub(r"\W+", "_", f"weighting_{fit}").rstrip("_")] = figure
    families: dict[str, tuple[str, dict[str, str]]] = {}
    for frame in runs.values():
        for name, (y_label, lines) in metric_families(frame.columns).items():
            if name.startswith("weighting_"):  # drawn above
                continue
            if name.startswith("geometry_") and len(lines) > 1:
                last = max(lines, key=lambda words: int(re.sub(r"\D", "", words) or 0))
                families[f"{name}_{last.split()[-1]}"] = (f"{y_label}, {last}", {"": lines[last]})
            else:
                for words, column in lines.items():
                    label = y_label if len(lines) == 1 else f"{y_label}: {words}"
                    families[re.sub(r"\W+", "_", f"{name}_{words}" if len(lines) > 1 else name)] = (label, {"": column})
    for name, (y_label, lines) in families.items():
        column = next(iter(lines.values()))
        figure = line_figure({label: curve_of(frame, column) for label, frame in runs.items()}, y_label, f"{y_label}\n{title}", x)
        if figure is not None:
            figure.axes[0].get_legend().set_title(legend_title)
            figures[name] = figure
    return figures


def final_values(frame: pd.DataFrame) -> dict[str, float]:
    """Last logged value of each headline metric (words as keys)."""
    values = {}
    for name, (y_label, lines) in metric_families(frame.columns).items():
        if name.startswith("geometry_") and len(lines) > 1:
            last = max(lines, key=lambda words: int(re.sub(r"\D", "", words) or 0))
            lines = {f"{y_label}, {last}": lines[last]}
        elif len(lines) > 1:
            lines = {f"{y_label}: {words}": column for words, column in lines.items()}
        else:
            lines = {y_label: next(iter(lines.values()))}
        for words, column in lines.items():
            series = frame[column].dropna()
            if not series.empty:
                values[words] = float(series.iloc[-1])
    return values


# ---- pages ----


def html_page(title: str, images: list[Path], tables: list[str], captions: dict[str, str]) -> str:
    """A page with every image inline (base64) and no external resource: it opens from disk."""
    parts = [f"<h1>{html.escape(title)}</h1>", *tables]
    for image in images:
        encoded = base64.b64encode(image.read_bytes()).decode("ascii")
        caption = html.escape(captions.get(image.stem, image.stem.replace("_", " ")))
        parts.append(f'<figure><img src="data:image/png;base64,{encoded}" alt="{caption}"><figcaption>{caption}</figcaption></figure>')
    style = (
        "body{font-family:sans-serif;margin:2em;max-width:1400px}figure{display:inline-block;margin:0.5em}"
        "img{max-width:640px}table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:3px 8px;"
        "text-align:right}th{background:#eee}"
    )
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{style}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n"
    )


def _table(rows: list[dict], caption: str) -> str:
    if not rows:
        return ""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    def cell(value) -> str:
        if isinstance(value, float):
            return "" if math.isnan(value) else f"{value:.4g}"
        return html.escape(str(value))
    head = "".join(f"<th>{html.escape(column)}</th>" for column in columns)
    body = "".join("<tr>" + "".join(f"<td>{cell(row.get(column, ''))}</td>" for column in columns) + "</tr>" for row in rows)
    return f"<table><caption>{html.escape(caption)}</caption><tr>{head}</tr>{body}</table>"


def _write(figures: dict[str, Figure], out: Path, title: str, tables: list[str], extra: list[Path] = (), log_x: bool = False) -> Path:
    """PNGs of `figures` (their x-axes on a log scale with `log_x`), then report.html with them, the tables and `extra`
    images (already drawn)."""
    if log_x:
        log_x_axes(figures.values())
    images = [save_figure(figure, out / f"{name}.png", dpi=110) for name, figure in figures.items()]
    captions = {name: (figure.get_suptitle() or figure.axes[0].get_ylabel()).split("\n")[0] for name, figure in figures.items()}
    captions.update({image.stem: f"final model: {image.stem.replace('_', ' ')}" for image in extra})
    return atomic_write_text(out / "report.html", html_page(title, [*images, *extra], tables, captions))


def sweep_runs(sweep_dir: Path) -> dict[str, Path]:
    """Run label (`ctrain.sweeps.run_label` of the swept values the run's config.yaml holds) -> run directory, in
    ascending order of the swept values."""
    spec = yaml.safe_load((sweep_dir / "sweep.yaml").read_text())
    keys = [key for key in spec.get("parameters", {}) if "values" in spec["parameters"][key] or "distribution" in spec["parameters"][key]]
    swept = {run_dir: [config_value(run_config(run_dir), key) for key in keys] for run_dir in (sweep_dir / "runs").iterdir() if (run_dir / "config.yaml").exists()}

    def ascending(run_dir: Path) -> tuple:  # numbers by value, then words
        return tuple((0, value, "") if isinstance(value, (int, float)) else (1, 0, str(value)) for value in swept[run_dir])

    def label(run_dir: Path) -> str:  # a swept --config file is not in config.yaml: the directory names it
        if None in swept[run_dir]:
            return run_dir.name
        return run_label(dict(zip(keys, swept[run_dir])), keys) if keys else run_dir.name

    return {label(run_dir): run_dir for run_dir in sorted(swept, key=lambda run_dir: (ascending(run_dir), run_dir.name))}


def final_probe_figures(run_dir: Path, out: Path, num_sentences: int) -> list[Path]:
    """The final model's weight-vs-KL scatter (with its regression line) and sentence weight bars, drawn by
    `ctrain probe` on the run's exported model (IG, sketch mode); none when the run exported no model yet."""
    from ctrain.probes.model import probe_model, resolve_model
    from ctrain.probes.weighting import WeightingConfig
    from ctrain.reporting.probe_figures import model_probe_figures

    if resolve_model(str(run_dir)) == str(run_dir):
        return []
    config = WeightingConfig(methods=("ig",), ig_mode="sketch", sketch_size=8, sketch_kind="orthogonal", steps=16)
    probed = probe_model(str(run_dir), measure=["weighting"], out=str(out), num_sentences=num_sentences, weighting=config, say=print)
    return sorted(model_probe_figures(probed))


def report(
    directory: str,
    out: str | None = None,
    *,
    x: XAxis | None = None,
    final_probe: bool = True,
    probe_sentences: int = 48,
    compare: list[str] | None = None,
    reference: list[str] | None = None,
    seed_bands: bool = True,
    log_x: bool = False,
) -> Path:
    """Draw the run or sweep in DIRECTORY; returns the HTML page.

    Args:
        directory: a run directory (has metrics.csv) or a sweep directory (has sweep.yaml and runs/).
        out: where the PNGs and report.html go (default DIRECTORY/report, DIRECTORY/comparison with --compare).
        compare: other run or sweep directories drawn beside the run (or sweep) in DIRECTORY, a curve per run, as a
            sweep's runs are (e.g. the same training from two starting points, or a sweep's arms beside a control's).
        x: x-axis, step or examples (training examples seen); a sweep over the batch size defaults to examples.
        final_probe: for a run, also probe its exported model for the weight-vs-KL scatter and sentence weight bars.
        probe_sentences: STS-B dev sentences of that final probe.
        reference: CSV files of a peer's curves drawn in black in a Theorem-1 lab sweep's figures: a `run` column
            (the curve's label), `step`, and columns named as ctrain's metrics (`benchmarks/lab/lab_peer.py plot` writes one
            for gensim's word2vec).
        seed_bands: with --compare, runs whose configs differ only in seed_everything (and where they are written) are
            one curve: their mean at each step, shaded from the lowest to the highest seed; false draws each run.
        log_x: the x-axis on a log scale (symmetric log, linear below 1 so that step 0 is drawn): for probes at
            log-spaced steps (callbacks/probes_logspaced.yaml), where the early steps would otherwise overlap.
    """
    path = Path(directory)
    target = Path(out) if out else path / ("comparison" if compare else "report")
    if compare:
        labels = compare_labels([path, *map(Path, compare)])
        groups = seed_groups(labels) if seed_bands else {label: [run_dir] for run_dir, label in labels.items()}
        runs = {label: seed_band([read_run(d) for d in dirs]) if len(dirs) > 1 else read_run(dirs[0]) for label, dirs in groups.items()}
        title = f"{sum(map(len, groups.values()))} runs compared" + (f", {len(groups)} curves (mean over seeds, shaded lowest to highest seed)" if len(groups) < sum(map(len, groups.values())) else "")
        rows = [{"run": label, "seeds": len(groups[label]), "last step": int(frame["step"].max()), **final_values(frame)} for label, frame in runs.items()]
        return _write(sweep_figures(runs, title, x or "step", legend_title="run"), target, title, [_table(rows, "Final values of each run (the mean over seeds where it has several)")], log_x=log_x)
    if (path / "sweep.yaml").exists():
        runs = {label: read_run(run_dir) for label, run_dir in sweep_runs(path).items()}
        if not runs:
            raise ValueError(f"sweep '{path}' has no runs yet; start it with ctrain sweep")
        spec = yaml.safe_load((path / "sweep.yaml").read_text())
        swept = list(spec.get("parameters", {}))
        axis = x or ("examples" if any(key.endswith("batch_size") for key in swept) else "step")
        model = config_value(run_config(next(iter(sweep_runs(path).values()))), "model.encoder.name")
        title = f"{model}, sweep {path.name} over {', '.join(swept)}"
        figures = sweep_figures(runs, title, axis, legend_title="run")
        rows = [{"run": label, "last step": int(frame["step"].max()), **final_values(frame)} for label, frame in runs.items()]
        tables = [_table(rows, "Final values of each run")]
        if lab_report.has_theorem_fits(runs):  # the Theorem-1 lab's table and figures first
            settings = [Path(str(value)).stem for value in spec["parameters"].get("config", {}).get("values", [])]
            lab_rows = lab_report.table_rows(runs, settings)
            atomic_write_text(target / "theorem_lab.csv", lab_report.csv_text(lab_rows))
            figures = lab_report.figures(runs, title, axis, settings, read_references(reference or [])) | figures
            tables.insert(0, _table(lab_rows, lab_report.CAPTION))
            if seeds := lab_report.seed_rows(lab_rows):
                tables.insert(0, _table(seeds, lab_report.SEEDS_CAPTION))
        return _write(figures, target, title, tables, log_x=log_x)
    if reference:
        raise ValueError(f"--reference draws a peer beside a Theorem-1 lab sweep's fits; '{path}' is a single run: give its sweep directory")
    frame = read_run(path)
    title = run_title(path)
    figures = run_figures(frame, title, x or "step")
    rows = [{"metric": words, "final value": value} for words, value in final_values(frame).items()]
    extra = final_probe_figures(path, target / "final_probe", probe_sentences) if final_probe else []
    return _write(figures, target, title, [_table(rows, f"Final values, step {int(frame['step'].max())}")], extra, log_x)


def read_references(files: list[str]) -> dict[str, pd.DataFrame]:
    """Label -> curve frame of each peer run in the reference CSVs (`run`, `step`, `examples` and metric columns)."""
    references = {}
    for file in files:
        frame = pd.read_csv(file)
        if missing := {"run", "step", "examples"} - set(frame.columns):
            raise ValueError(f"reference '{file}' lacks the columns {sorted(missing)}: write it with benchmarks/lab/lab_peer.py plot")
        references |= {str(label): curve for label, curve in frame.groupby("run", sort=False)}
    return references


def figure_pixels(figure: Figure):
    """The figure as an RGBA array (what W&B's image logging takes without pyplot)."""
    import numpy as np

    figure.canvas.draw()
    return np.asarray(figure.canvas.buffer_rgba())
