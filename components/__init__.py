"""Kubeflow Pipelines components of COVIDNet: one thin, typed wrapper per stage (see stages.py)."""

from components.stages import (IMAGE, evaluate, exclude, fetch_cohort, preprocess, promote, split, synth, train,
                               validate)

__all__ = ["IMAGE", "evaluate", "exclude", "fetch_cohort", "preprocess", "promote", "split", "synth", "train",
           "validate"]
