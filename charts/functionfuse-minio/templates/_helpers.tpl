{{- define "ffminio.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "ffminio.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 55 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 55 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 55 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "ffminio.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "ffminio.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: functionfuse
{{- end -}}

{{- define "ffminio.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ffminio.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The Secret holding the root credentials: the user's, or the one this chart generates. */}}
{{- define "ffminio.secretName" -}}
{{- tpl .Values.auth.existingSecret . | default (include "ffminio.fullname" .) -}}
{{- end -}}

{{- define "ffminio.endpoint" -}}
{{- printf "http://%s.%s.svc:%d" (include "ffminio.fullname" .) .Release.Namespace (int .Values.service.port) -}}
{{- end -}}
