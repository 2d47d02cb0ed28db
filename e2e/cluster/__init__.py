"""A real single-host Kubernetes control plane built from pinned Go modules.

`python -m e2e.cluster build|up|down|status` builds etcd, kube-apiserver,
kube-controller-manager, kube-scheduler, kubectl, helm, kwok and the Kubeflow
training operator into a cache outside the repository, and runs them on
loopback with kwok-simulated CPU and GPU nodes. See docs/local-cluster.md.
"""
