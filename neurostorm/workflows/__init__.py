"""Workflows over training runs: comparisons of methods, label-efficiency curves, attribution maps, the demo."""
