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

{{/* The Prefect image: [<registry>/]<repository>:<tag>; registry: image.registry, else
     global.image.registry; tag: image.tag, else <global.image.version or appVersion>-<python>-prefect. */}}
{{- define "ffprefect.image" -}}
{{- $g := dig "image" dict (.Values.global | default dict) -}}
{{- $registry := .Values.image.registry | default ($g.registry | default "") | trimSuffix "/" -}}
{{- $tag := .Values.image.tag | default (printf "%s-%s-prefect" ($g.version | default .Chart.AppVersion) .Values.image.python) -}}
{{- if $registry }}{{ printf "%s/%s:%s" $registry .Values.image.repository $tag }}{{ else }}{{ printf "%s:%s" .Values.image.repository $tag }}{{ end -}}
{{- end -}}

{{/* The API auth Secret: auth.existingSecret, or the one this chart generates. */}}
{{- define "ffprefect.authSecret" -}}
{{- tpl .Values.auth.existingSecret . | default (printf "%s-api-auth" (include "ffprefect.fullname" .)) -}}
{{- end -}}

{{/* The API URL inside the cluster. */}}
{{- define "ffprefect.apiUrl" -}}
{{- printf "http://%s-server.%s.svc:%d/api" (include "ffprefect.fullname" .) .Release.Namespace (int .Values.server.service.port) -}}
{{- end -}}

{{/* The S3 settings (JSON): storage.s3, else the umbrella's global.s3, else defaults. With
     no endpoint anywhere and the umbrella's in-cluster store (global.s3.store), the store's
     Service and generated Secret, named as functionfuse-minio names them. */}}
{{- define "ffprefect.s3" -}}
{{- $own := .Values.storage.s3 -}}
{{- $g := dig "s3" dict (.Values.global | default dict) -}}
{{- $endpoint := tpl ($own.endpoint | default "") . | default (tpl ($g.endpoint | default "") .) -}}
{{- $secret := tpl ($own.existingSecret | default "") . | default (tpl ($g.existingSecret | default "") .) -}}
{{- if and (not $endpoint) $g.store -}}
{{- $name := $g.store.fullnameOverride | default (ternary .Release.Name (printf "%s-functionfuse-minio" .Release.Name) (contains "functionfuse-minio" .Release.Name)) | trunc 55 | trimSuffix "-" -}}
{{- $endpoint = printf "http://%s.%s.svc:%d" $name .Release.Namespace (int ($g.store.port | default 9000)) -}}
{{- $secret = $secret | default $name -}}
{{- end -}}
{{- toJson (dict "endpoint" $endpoint "secret" $secret
    "bucket" ($own.bucket | default $g.bucket | default "functionfuse")
    "prefix" ($own.prefix | default "")
    "region" ($own.region | default $g.region | default "us-east-1")
    "accessKeyKey" ($own.accessKeyKey | default $g.accessKeyKey | default "accessKey")
    "secretKeyKey" ($own.secretKeyKey | default $g.secretKeyKey | default "secretKey")) -}}
{{- end -}}

{{/* A placeholder of Prefect's job templates: {{ name }}. */}}
{{- define "ffprefect.ph" -}}
{{- printf "{{ %s }}" . -}}
{{- end -}}

{{- define "ffprefect.workerServiceAccount" -}}
{{- if .Values.worker.serviceAccount.create -}}
{{- .Values.worker.serviceAccount.name | default (printf "%s-worker" (include "ffprefect.fullname" .)) -}}
{{- else -}}
{{- .Values.worker.serviceAccount.name | default "default" -}}
{{- end -}}
{{- end -}}

{{- define "ffprefect.storageEnv" -}}
{{- $s3 := include "ffprefect.s3" . | fromJson -}}
{{- $endpoint := $s3.endpoint -}}
{{- $secret := $s3.secret -}}
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
