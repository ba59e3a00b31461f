"""Evaluation as the paper reports it: metrics with bootstrap CIs, figures, the report."""
