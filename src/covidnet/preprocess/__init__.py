"""Preprocessing, MONAI-style in two layers: pure functions on one volume and the cohort stage.

``array`` (clip, scale, linear resize, centre crop of one volume), ``series`` (one DICOM series to
the model tensor, reading only what it needs), ``qc`` (the per-scan QC values), ``params`` (the
``preprocess`` section of params.yaml) and ``stage`` (every scan of the split; the DVC stage).
"""
