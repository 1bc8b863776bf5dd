"""Reports: figures of runs and sweeps (report, lab_report, figures), probe figures (weighting_plots,
geometry_plots) and the measurement of a saved model (model_probe, behind `ctrain probe`)."""
