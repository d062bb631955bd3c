{{- define "ffprefect.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "ffprefect.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "ffprefect.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "ffprefect.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: functionfuse
{{- end -}}

{{- define "ffprefect.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ffprefect.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "ffprefect.image" -}}
{{- $tag := .Values.image.tag | default (printf "%s-%s-prefect" .Chart.AppVersion .Values.image.python) -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}

{{- define "ffprefect.workerServiceAccount" -}}
{{- if .Values.worker.serviceAccount.create -}}
{{- .Values.worker.serviceAccount.name | default (printf "%s-worker" (include "ffprefect.fullname" .)) -}}
{{- else -}}
{{- .Values.worker.serviceAccount.name | default "default" -}}
{{- end -}}
{{- end -}}

{{- define "ffprefect.storageEnv" -}}
{{- $s3 := .Values.storage.s3 -}}
{{- $endpoint := tpl $s3.endpoint . -}}
{{- $secret := tpl $s3.existingSecret . -}}
- name: FUNCTIONFUSE_STORAGE
  value: {{ printf "s3://%s/%s" $s3.bucket $s3.prefix | trimSuffix "/" | quote }}
- name: AWS_DEFAULT_REGION
  value: {{ $s3.region | quote }}
- name: AWS_EC2_METADATA_DISABLED
  value: "true"
{{- if $endpoint }}
- name: AWS_ENDPOINT_URL_S3
  value: {{ $endpoint | quote }}
- name: FSSPEC_S3_ENDPOINT_URL
  value: {{ $endpoint | quote }}
{{- end }}
{{- if $secret }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef: {name: {{ $secret }}, key: {{ $s3.accessKeyKey }}}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef: {name: {{ $secret }}, key: {{ $s3.secretKeyKey }}}
{{- end }}
{{- end -}}
