{{/* The chart's name, or nameOverride. */}}
{{- define "operator.name" -}}
{{- .Values.nameOverride | default .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The name of every object of this release: fullnameOverride; the chart's name for a release
named after the project (metrics-pipeline gives metrics-pipeline-operator, not
metrics-pipeline-metrics-pipeline-operator); the release's name when it holds the chart's; else
both. */}}
{{- define "operator.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "operator.name" . -}}
{{- if eq (printf "%s-operator" .Release.Name) $name -}}
{{- $name -}}
{{- else if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- .Values.serviceAccount.name | default (include "operator.fullname" .) -}}
{{- else -}}
{{- required "serviceAccount.name: name the ServiceAccount to use when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "operator.labels" -}}
{{ include "operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- /* The image tag as written: a tag of digits only (a short commit id given with --set) reaches
the template as a number, which YAML and JSON values make a float (1.234567e+06). */ -}}
{{- define "operator.tag" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion -}}
{{- if kindIs "float64" $tag -}}{{ $tag | int64 }}{{- else -}}{{ $tag }}{{- end -}}
{{- end -}}

{{- define "operator.image" -}}
{{ .Values.image.repository }}:{{ include "operator.tag" . }}
{{- end -}}

{{- define "operator.aggregatorImage" -}}
{{- if .Values.aggregatorImage -}}
{{ .Values.aggregatorImage }}
{{- else -}}
{{ regexReplaceAll "[^/]+$" .Values.image.repository "metrics-aggregator" }}:{{ include "operator.tag" . }}
{{- end -}}
{{- end -}}
