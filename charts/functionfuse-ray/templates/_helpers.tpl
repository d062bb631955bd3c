{{/* Chart name, truncated for label values. */}}
{{- define "ffray.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name: release-chart unless the release name already holds the chart name. KubeRay
     appends suffixes (-head-xxxxx, -workers-worker-xxxxx) to it, so it is kept short. */}}
{{- define "ffray.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "ffray.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "ffray.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: functionfuse
{{- end -}}

{{/* The Ray image: [<registry>/]<repository>:<tag>; registry: image.registry, else
     global.image.registry; tag: image.tag, else <global.image.version or appVersion>-<python>-ray. */}}
{{- define "ffray.image" -}}
{{- $g := dig "image" dict (.Values.global | default dict) -}}
{{- $registry := .Values.image.registry | default ($g.registry | default "") | trimSuffix "/" -}}
{{- $tag := .Values.image.tag | default (printf "%s-%s-ray" ($g.version | default .Chart.AppVersion) .Values.image.python) -}}
{{- if $registry }}{{ printf "%s/%s:%s" $registry .Values.image.repository $tag }}{{ else }}{{ printf "%s:%s" .Values.image.repository $tag }}{{ end -}}
{{- end -}}

{{/* The S3 settings (JSON): storage.s3, else the umbrella's global.s3, else defaults. With
     no endpoint anywhere and the umbrella's in-cluster store (global.s3.store), the store's
     Service and generated Secret, named as functionfuse-minio names them. */}}
{{- define "ffray.s3" -}}
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

{{/* rayStartParams of a group: its custom resources as KubeRay expects them (a quoted
     JSON string) plus the group's own parameters. */}}
{{- define "ffray.rayStartParams" -}}
{{- $params := dict -}}
{{- range $k, $v := .group.rayStartParams }}{{ $_ := set $params $k (toString $v) }}{{ end -}}
{{- if .group.customResources }}{{ $_ := set $params "resources" (toJson .group.customResources | quote) }}{{ end -}}
{{- range $k, $v := .extra }}{{ $_ := set $params $k $v }}{{ end -}}
{{- toYaml $params -}}
{{- end -}}

{{/* Environment variables of every Ray container: storage settings and credentials. */}}
{{- define "ffray.storageEnv" -}}
{{- $s3 := include "ffray.s3" . | fromJson -}}
{{- $endpoint := $s3.endpoint -}}
{{- $secret := $s3.secret -}}
- name: FUNCTIONFUSE_STORAGE
  value: {{ printf "s3://%s/%s" $s3.bucket $s3.prefix | trimSuffix "/" | quote }}
- name: FUNCTIONFUSE_S3_BUCKET
  value: {{ $s3.bucket | quote }}
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
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $s3.accessKeyKey }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $s3.secretKeyKey }}
{{- end }}
{{- end -}}

{{/* Volumes of every Ray pod: the scratch emptyDir (/tmp and $HOME, the root filesystem
     being read-only) and /dev/shm. */}}
{{- define "ffray.volumes" -}}
- name: scratch
  emptyDir:
    sizeLimit: {{ .root.Values.scratchSize }}
{{- if .group.shmSize }}
- name: shm
  emptyDir:
    medium: Memory
    sizeLimit: {{ .group.shmSize }}
{{- end }}
{{- end -}}
{{- define "ffray.volumeMounts" -}}
- {name: scratch, mountPath: /tmp, subPath: tmp}
- {name: scratch, mountPath: /home/functionfuse, subPath: home}
{{- if .group.shmSize }}
- {name: shm, mountPath: /dev/shm}
{{- end }}
{{- end -}}

{{/* Readiness and liveness of a Ray container, without wget or curl in the image: the
     raylet health endpoint of the dashboard agent (and the GCS one on the head). */}}
{{- define "ffray.probe" -}}
exec:
  command:
    - python
    - -c
    - |
      import urllib.request
      for url in {{ .urls | toJson }}:
          with urllib.request.urlopen(url, timeout=2) as r:
              assert b"success" in r.read(), url
initialDelaySeconds: {{ .delay }}
periodSeconds: 5
timeoutSeconds: 5
failureThreshold: {{ .failures }}
{{- end -}}
