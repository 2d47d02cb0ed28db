"""The operator: kopf handlers, reconcilers and their shared skeleton."""

# Here rather than in metrics.py so `kubemaas --help` can show it without importing prometheus-client,
# which the model-loader image does not install.
DEFAULT_METRICS_PORT = 8080
