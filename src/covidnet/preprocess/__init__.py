"""Preprocessing: pure functions on one volume, the cohort stage, and the QC values."""
