"""Serving: the KServe model and what it is built from (bundle, request, study, answer, ...)."""
