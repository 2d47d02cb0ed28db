{{/*
Objects the Python generator writes into the chart (`make crds`: admission/ and roles/, the same files as
the repository's crds/admission/ and crds/roles/), read here instead of written twice. Their names start
with `kubemaas-`; in a release that prefix becomes the release's full name, so two releases never own the
same cluster-scoped object, and the default release `kubemaas` keeps the plain manifests' names.
*/}}

{{- define "kubemaas.generatedName" -}}
{{- printf "%s-%s" (include "kubemaas.fullname" .root) (trimPrefix "kubemaas-" .name) -}}
{{- end -}}

{{/* One generated object (`object`, the parsed file) as a release object: renamed, with the chart's labels. */}}
{{- define "kubemaas.generatedObject" -}}
{{- $obj := .object -}}
{{- $_ := set $obj.metadata "name" (include "kubemaas.generatedName" (dict "root" .root "name" $obj.metadata.name)) -}}
{{- $_ := set $obj.metadata "labels" (merge (include "kubemaas.labels" .root | fromYaml) $obj.metadata.labels) -}}
{{- toYaml $obj -}}
{{- end -}}
