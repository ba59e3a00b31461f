"""Monitoring the endpoint: prediction log, reference profile, drift, feedback, Prometheus."""
