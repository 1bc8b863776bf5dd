"""Reports: figures of runs and sweeps (report, lab_report, figures) and of probes (weighting_plots, geometry_plots,
and probe_figures for what `ctrain probe` measured)."""
