"""Callbacks: run outputs, and the probes that measure the model while it trains."""

from ctrain.callbacks.convergence import ObjectiveConvergence
from ctrain.callbacks.outputs import RunOutputs
from ctrain.callbacks.probes import GeometryProbe, WordWeightingProbe

__all__ = ["GeometryProbe", "ObjectiveConvergence", "RunOutputs", "WordWeightingProbe"]
