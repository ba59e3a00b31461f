"""The COVIDNet Kubeflow pipeline (covidnet_pipeline.py) and its compiled IR YAML."""
