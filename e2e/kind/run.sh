#!/usr/bin/env bash
# Create a kind cluster, build and load the Kubemaas images, install the Kubeflow training operator,
# kwok (simulated GPU nodes) and the Helm chart, then run the e2e suite against it.
#
#   e2e/kind/run.sh                 # everything; leaves the cluster running
#   e2e/kind/run.sh --delete        # delete the cluster afterwards
#   PYTEST_ARGS="-k chart" e2e/kind/run.sh
#
# Needs: docker (with a running engine), kind >= 0.30, kubectl, helm 3, and the repository's venv
# (`make venv`). See e2e/kind/README.md; it cannot run on machines without a Docker engine.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CLUSTER="${KIND_CLUSTER:-kubemaas-e2e}"
# Kubernetes 1.34, the version the local control plane pins (e2e/cluster/versions.toml).
NODE_IMAGE="${KIND_NODE_IMAGE:-kindest/node:v1.34.0}"
# The versions e2e/cluster/versions.toml pins for the local control plane.
TRAINING_OPERATOR_VERSION="${TRAINING_OPERATOR_VERSION:-v1.8.1}"
KWOK_VERSION="${KWOK_VERSION:-v0.8.0}"
TAG="${KUBEMAAS_IMAGE_TAG:-e2e}"
PYTHON="${PYTHON:-${REPO}/.venv/bin/python}"
OPERATOR_NS=kubemaas-system
SMOKE_NS=kubemaas-smoke
DELETE_AFTER=false

for arg in "$@"; do
  case "${arg}" in
    --delete) DELETE_AFTER=true ;;
    *) echo "unknown argument: ${arg}" >&2; exit 2 ;;
  esac
done

log() { printf '[kind-e2e] %s\n' "$*" >&2; }

for tool in docker kind kubectl helm; do
  command -v "${tool}" > /dev/null || { echo "${tool} is required (see e2e/kind/README.md)" >&2; exit 1; }
done
docker info > /dev/null 2>&1 || { echo "no Docker engine answers: kind needs one" >&2; exit 1; }
[[ -x "${PYTHON}" ]] || { echo "${PYTHON} missing: run 'make venv' first" >&2; exit 1; }

KUBECONFIG_FILE="$(mktemp -t kubemaas-kind-kubeconfig.XXXXXX)"
cleanup() {
  rm -f "${KUBECONFIG_FILE}"
  if [[ "${DELETE_AFTER}" == true ]]; then
    kind delete cluster --name "${CLUSTER}"
  fi
}
trap cleanup EXIT

if kind get clusters | grep -qx "${CLUSTER}"; then
  log "reusing kind cluster ${CLUSTER}"
else
  log "creating kind cluster ${CLUSTER} (${NODE_IMAGE})"
  kind create cluster --name "${CLUSTER}" --image "${NODE_IMAGE}" \
    --config "${REPO}/e2e/kind/kind-config.yaml" --wait 120s
fi
kind get kubeconfig --name "${CLUSTER}" > "${KUBECONFIG_FILE}"
export KUBECONFIG="${KUBECONFIG_FILE}"

log "building images (tag ${TAG})"
for image in operator model-loader trainer; do
  docker build --file "${REPO}/images/${image}/Dockerfile" --tag "kubemaas/${image}:${TAG}" "${REPO}"
  kind load docker-image --name "${CLUSTER}" "kubemaas/${image}:${TAG}"
done
# The CPU serving image is large (Triton plus torch); build it only when asked.
if [[ "${KUBEMAAS_TRITON_PYTHON:-false}" == true ]]; then
  docker build --tag "kubemaas/triton-python:${TAG}" "${REPO}/images/triton-python"
  kind load docker-image --name "${CLUSTER}" "kubemaas/triton-python:${TAG}"
fi

log "installing the Kubeflow training operator ${TRAINING_OPERATOR_VERSION}"
kubectl apply --server-side \
  -k "github.com/kubeflow/training-operator.git/manifests/overlays/standalone?ref=${TRAINING_OPERATOR_VERSION}"
kubectl -n kubeflow rollout status deployment/training-operator --timeout=300s

log "installing kwok ${KWOK_VERSION} with the suite's pod stages and simulated GPU nodes"
kubectl apply -f "https://github.com/kubernetes-sigs/kwok/releases/download/${KWOK_VERSION}/kwok.yaml"
kubectl -n kube-system rollout status deployment/kwok-controller --timeout=300s
kubectl apply -f "${REPO}/e2e/cluster/kwok-stages.yaml"
(cd "${REPO}" && "${PYTHON}" - << 'PY'
import yaml
from e2e.cluster.nodes import ALL_NODES, node_manifest
print(yaml.safe_dump_all([node_manifest(n) for n in ALL_NODES]))
PY
) | kubectl apply -f -
kubectl wait --for=condition=Ready node --selector=type=kwok --timeout=120s

# The operator must run on a real kind node, not on a kwok node that only pretends to run it.
NOT_ON_KWOK='affinity={"nodeAffinity":{"requiredDuringSchedulingIgnoredDuringExecution":{"nodeSelectorTerms":[{"matchExpressions":[{"key":"type","operator":"NotIn","values":["kwok"]}]}]}}}'
log "installing the chart (operator watches ${SMOKE_NS} only: the suite runs its own operators per test)"
for ns in "${OPERATOR_NS}" "${SMOKE_NS}"; do
  kubectl create namespace "${ns}" --dry-run=client -o yaml | kubectl apply -f -
  kubectl label --overwrite namespace "${ns}" pod-security.kubernetes.io/enforce=restricted
done
helm upgrade --install kubemaas "${REPO}/charts/kubemaas" --namespace "${OPERATOR_NS}" \
  --set image.repository=kubemaas/operator --set "image.tag=${TAG}" --set image.pullPolicy=Never \
  --set "watchNamespaces={${SMOKE_NS}}" \
  --set-json "${NOT_ON_KWOK}" \
  --wait --timeout 300s
kubectl -n "${OPERATOR_NS}" rollout status deployment/kubemaas --timeout=120s

log "running the e2e suite"
cd "${REPO}"
# PYTEST_ARGS is split on purpose: it holds several pytest arguments.
# shellcheck disable=SC2086
KUBEMAAS_E2E_KUBECONFIG="${KUBECONFIG_FILE}" "${PYTHON}" -m pytest e2e ${PYTEST_ARGS:-}
