"""The COVIDNet Kubeflow pipelines (built from params by covidnet_pipeline.py) and their compiled IR YAML."""
