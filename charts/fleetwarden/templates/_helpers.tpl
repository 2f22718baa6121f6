{{/* The chart's name, overridable. */}}
{{- define "fleetwarden.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release's name prefix: the release name when it contains the chart's name
(release "fleetwarden" gives "fleetwarden", as the kustomize install names things). */}}
{{- define "fleetwarden.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The operator's Deployment, ServiceAccount, ClusterRole and friends. */}}
{{- define "fleetwarden.operator" -}}
{{- printf "%s-operator" (include "fleetwarden.fullname" . | trunc 54 | trimSuffix "-") -}}
{{- end -}}

{{/* Labels of every object. */}}
{{- define "fleetwarden.labels" -}}
app.kubernetes.io/name: {{ include "fleetwarden.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* What selects the operator's pods (Deployment, Service, PodDisruptionBudget, monitors). */}}
{{- define "fleetwarden.operatorSelector" -}}
app.kubernetes.io/name: {{ include "fleetwarden.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{/* The documents of a YAML file under files/, as a list of objects (comments and empty
documents dropped). */}}
{{- define "fleetwarden.fileObjects" -}}
{{- $objects := list -}}
{{- range $doc := regexSplit "(?m)^---[ \t]*$" (.context.Files.Get .path) -1 -}}
{{- $object := fromYaml $doc -}}
{{- if $object -}}
{{- $objects = append $objects $object -}}
{{- end -}}
{{- end -}}
{{- toYaml (dict "objects" $objects) -}}
{{- end -}}

{{/* An object read from files/, with the chart's labels added to its own. */}}
{{- define "fleetwarden.fileObject" -}}
{{- $object := .object -}}
{{- $labels := merge (fromYaml (include "fleetwarden.labels" .context)) ($object.metadata.labels | default dict) -}}
{{- $_ := set $object.metadata "labels" $labels -}}
{{- toYaml $object -}}
{{- end -}}
