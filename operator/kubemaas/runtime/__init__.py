"""Code that runs inside the workload containers: trainer harness, artifact store, crypto, model loader."""
