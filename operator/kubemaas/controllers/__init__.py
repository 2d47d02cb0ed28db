"""The operator: kopf handlers, reconcilers and their shared skeleton."""

# Here rather than in metrics.py so `kubemaas --help` can show it without importing prometheus-client,
# which the model-loader image does not install.
DEFAULT_METRICS_PORT = 8080
# Ask the API server to end watches before any proxy or load balancer silently drops them. kopf resumes a
# watch the server ended from its last resourceVersion (re-listing only after 410 Gone), so this costs one
# WATCH request per watched kind per period.
WATCH_SERVER_TIMEOUT = 270  # whole seconds: the API server rejects timeoutSeconds=270.0
