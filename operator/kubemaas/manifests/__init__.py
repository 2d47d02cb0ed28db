"""Pure builders: a typed spec in, the Kubernetes objects of its children out (plain dicts; no API calls)."""
