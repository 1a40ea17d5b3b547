"""Data: labeled datasets from folders, manifests, arrays and built-in sets; splits; input checks."""

from .dataset import LabeledDataset, Problem, Splits, TorchDataset

__all__ = ["LabeledDataset", "Problem", "Splits", "TorchDataset"]
