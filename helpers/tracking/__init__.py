"""Experiment tracking, client side: MLflow credentials from ~/.mlflow/credentials, the `track` and
`wandb-sync` commands. The pod side (the tracking sidecar, row environments) is helpers/pod/tracking/."""
