"""Callbacks: run outputs, and the probes that measure the model while it trains."""

from ctrain.callbacks.convergence import MetricConvergence, ObjectiveConvergence
from ctrain.callbacks.outputs import RunOutputs
from ctrain.callbacks.probes import GeometryProbe, WordWeightingProbe

__all__ = ["GeometryProbe", "MetricConvergence", "ObjectiveConvergence", "RunOutputs", "WordWeightingProbe"]
