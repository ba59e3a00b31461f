"""Kubeflow Pipelines components of COVIDNet: one thin, typed wrapper per stage (stages.py), the PyTorchJob launcher
(distributed.py)."""
