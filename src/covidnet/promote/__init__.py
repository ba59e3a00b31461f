"""Promotion in the MLflow registry: the gate and the aliases."""
