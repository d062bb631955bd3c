{{- define "ffminio.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name. Under the umbrella chart global.s3.store.fullnameOverride names the store,
     so that the other parts compute the same name (ffray.s3 and friends). */}}
{{- define "ffminio.fullname" -}}
{{- $override := .Values.fullnameOverride | default (dig "s3" "store" "fullnameOverride" "" (.Values.global | default dict)) -}}
{{- if $override -}}
{{- $override | trunc 55 | trimSuffix "-" -}}
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

{{/* The umbrella's shared S3 settings (global.s3), or an empty dict. */}}
{{- define "ffminio.global" -}}
{{- toJson (dig "s3" dict (.Values.global | default dict)) -}}
{{- end -}}

{{/* The Secret holding the root credentials: the user's (auth.existingSecret, or the
     umbrella's global.s3.existingSecret), or the one this chart generates. */}}
{{- define "ffminio.secretName" -}}
{{- $g := include "ffminio.global" . | fromJson -}}
{{- tpl .Values.auth.existingSecret . | default (tpl ($g.existingSecret | default "") .) | default (include "ffminio.fullname" .) -}}
{{- end -}}

{{/* Keys of the access key and the secret key in that Secret. */}}
{{- define "ffminio.accessKeyKey" -}}
{{- $g := include "ffminio.global" . | fromJson -}}
{{- $g.accessKeyKey | default .Values.auth.accessKeyKey -}}
{{- end -}}
{{- define "ffminio.secretKeyKey" -}}
{{- $g := include "ffminio.global" . | fromJson -}}
{{- $g.secretKeyKey | default .Values.auth.secretKeyKey -}}
{{- end -}}

{{/* The S3 port: the umbrella's global.s3.store.port, else service.port. */}}
{{- define "ffminio.port" -}}
{{- $g := include "ffminio.global" . | fromJson -}}
{{- int (dig "store" "port" .Values.service.port $g) -}}
{{- end -}}

{{- define "ffminio.endpoint" -}}
{{- printf "http://%s.%s.svc:%s" (include "ffminio.fullname" .) .Release.Namespace (include "ffminio.port" .) -}}
{{- end -}}

{{/* Buckets the job creates: bucketJob.buckets plus the umbrella's global.s3.bucket. */}}
{{- define "ffminio.buckets" -}}
{{- $g := include "ffminio.global" . | fromJson -}}
{{- $buckets := .Values.bucketJob.buckets -}}
{{- with $g.bucket }}{{ $buckets = append $buckets . }}{{ end -}}
{{- join " " (uniq $buckets) -}}
{{- end -}}

{{/* The bucket job's image: [<registry>/]<repository>:<tag>, registry from
     bucketJob.image.registry or global.image.registry, tag "" : <version>-<python>. */}}
{{- define "ffminio.jobImage" -}}
{{- $image := .Values.bucketJob.image -}}
{{- $g := dig "image" dict (.Values.global | default dict) -}}
{{- $registry := $image.registry | default ($g.registry | default "") | trimSuffix "/" -}}
{{- $tag := $image.tag | default (printf "%s-%s" ($g.version | default .Chart.AppVersion) $image.python) -}}
{{- if $registry }}{{ printf "%s/%s:%s" $registry $image.repository $tag }}{{ else }}{{ printf "%s:%s" $image.repository $tag }}{{ end -}}
{{- end -}}

{{/* The server's image: <registry>/<repository>:<tag>@<digest>. */}}
{{- define "ffminio.image" -}}
{{- $image := .Values.image -}}
{{- $ref := $image.repository -}}
{{- with $image.registry }}{{ $ref = printf "%s/%s" (trimSuffix "/" .) $ref }}{{ end -}}
{{- with $image.tag }}{{ $ref = printf "%s:%s" $ref . }}{{ end -}}
{{- with $image.digest }}{{ $ref = printf "%s@%s" $ref . }}{{ end -}}
{{- $ref -}}
{{- end -}}
