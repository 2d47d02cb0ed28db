{{/* Names and labels shared by every template. */}}

{{- define "kubemaas.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "kubemaas.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "kubemaas.labels" -}}
{{ include "kubemaas.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: kubemaas
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "kubemaas.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "kubemaas.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "kubemaas.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* One replica runs standalone; more replicas coordinate through kopf peering. */}}
{{- define "kubemaas.peering" -}}
{{- if gt (int .Values.replicas) 1 -}}true{{- end -}}
{{- end -}}

{{/*
What the controllers do inside a watched namespace. The same list becomes a ClusterRole (all
namespaces) or one Role per entry of watchNamespaces.
*/}}
{{- define "kubemaas.namespacedRules" -}}
# The operator's own kinds: watched, and patched for kopf's progress annotations (never spec).
- apiGroups: [kubemaas.io]
  resources: [trainingjobs, modelservices]
  verbs: [get, list, watch, patch]
# Conditions, replica counts and the published model live in status.
- apiGroups: [kubemaas.io]
  resources: [trainingjobs/status, modelservices/status]
  verbs: [get, patch]
# A TrainingJob's workers: a Kubeflow Trainer v2 TrainJob and the TrainingRuntime made for it (when Trainer is
# served) ...
- apiGroups: [trainer.kubeflow.org]
  resources: [trainjobs, trainingruntimes]
  verbs: [get, list, watch, create, patch, delete]
# ... a Kubeflow PyTorchJob (Kubeflow's legacy API, when its CRD is served) ...
- apiGroups: [kubeflow.org]
  resources: [pytorchjobs]
  verbs: [get, list, watch, create, patch, delete]
# ... or an Indexed Job without Kubeflow.
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, watch, create, patch, delete]
# Read-only, with scheduling.queueName: whether the LocalQueue exists, and Kueue's Workload that says why a job
# waits (the Queued and Admitted conditions). Nothing is asked of Kueue where its CRDs are not served.
- apiGroups: [kueue.x-k8s.io]
  resources: [localqueues, workloads]
  verbs: [get, list]
# Headless Services for the Job backend's rendezvous, and the ModelService's serving Service.
- apiGroups: [""]
  resources: [services]
  verbs: [get, list, watch, create, patch, delete]
# Triton Deployments of a ModelService (stable and canary).
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, patch, delete]
# Read-only: rollout progress of a Deployment's ReplicaSets.
- apiGroups: [apps]
  resources: [replicasets]
  verbs: [get, list, watch]
# Read-only: exit codes and termination messages of training ranks and model-loader init containers.
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch]
# The ModelService autoscaler.
- apiGroups: [autoscaling]
  resources: [horizontalpodautoscalers]
  verbs: [get, list, watch, create, patch, delete]
# Availability of serving pods during node drains.
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [get, list, watch, create, patch, delete]
# Who may reach the pods: a TrainingJob's ranks only each other, a ModelService's inference ports its clients.
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [get, list, watch, create, patch, delete]
# Events on condition transitions (posted by the controllers and by kopf).
- apiGroups: [""]
  resources: [events]
  verbs: [create, patch]
# Checks that the claim named by a pvc:// URI exists before pods are created.
- apiGroups: [""]
  resources: [persistentvolumeclaims]
  verbs: [get]
# Key Secrets: create for encryption.generateKey, and a dry-run create (answered 409 when it exists) to check
# that a referenced key is there. No get, list or watch: the operator never reads a Secret (docs/security.md).
- apiGroups: [""]
  resources: [secrets]
  verbs: [create]
{{- if and (include "kubemaas.peering" .) .Values.watchNamespaces }}
# kopf peering (replicas > 1, watched namespaces): the KopfPeering object of each watched namespace.
- apiGroups: [kopf.dev]
  resources: [kopfpeerings]
  verbs: [get, list, watch, patch]
{{- end }}
{{- end -}}

{{/* Cluster-scoped reads every install needs, namespaced or not. */}}
{{- define "kubemaas.clusterRules" -}}
# Read-only CRD discovery: whether the PyTorchJob CRD is served (backend Auto), and kopf's scanning of
# resources appearing and disappearing.
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [get, list, watch]
{{- if .Values.watchNamespaces }}
# kopf lists namespaces to notice a watched namespace being deleted and created again; without this it
# warns on every start and only sees such changes on restart.
- apiGroups: [""]
  resources: [namespaces]
  verbs: [list, watch]
{{- end }}
{{- if and (include "kubemaas.peering" .) (not .Values.watchNamespaces) }}
# kopf peering (replicas > 1, all namespaces): replicas announce themselves in the ClusterKopfPeering
# object and only the one with the highest priority handles objects.
- apiGroups: [kopf.dev]
  resources: [clusterkopfpeerings]
  verbs: [get, list, watch, patch]
{{- end }}
{{- end -}}
