{{- define "ffkfp.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "ffkfp.fullname" -}}
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

{{- define "ffkfp.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "ffkfp.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: functionfuse
{{- end -}}

{{- define "ffkfp.serviceAccount" -}}
{{- if .Values.serviceAccount.create -}}
{{- .Values.serviceAccount.name | default (printf "%s-runner" (include "ffkfp.fullname" .)) -}}
{{- else -}}
{{- .Values.serviceAccount.name | default "pipeline-runner" -}}
{{- end -}}
{{- end -}}

{{/* The KFP step image: [<registry>/]<repository>:<tag>; registry: image.registry, else
     global.image.registry; tag: image.tag, else <global.image.version or appVersion>-<python>-kfp. */}}
{{- define "ffkfp.image" -}}
{{- $g := dig "image" dict (.Values.global | default dict) -}}
{{- $registry := .Values.image.registry | default ($g.registry | default "") | trimSuffix "/" -}}
{{- $tag := .Values.image.tag | default (printf "%s-%s-kfp" ($g.version | default .Chart.AppVersion) .Values.image.python) -}}
{{- if $registry }}{{ printf "%s/%s:%s" $registry .Values.image.repository $tag }}{{ else }}{{ printf "%s:%s" .Values.image.repository $tag }}{{ end -}}
{{- end -}}

{{/* The S3 settings (JSON): storage.s3, else the umbrella's global.s3, else defaults. With
     no endpoint anywhere and the umbrella's in-cluster store (global.s3.store), the store's
     Service and generated Secret, named as functionfuse-minio names them. */}}
{{- define "ffkfp.s3" -}}
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

{{- define "ffkfp.pipelineRoot" -}}
{{- $s3 := include "ffkfp.s3" . | fromJson -}}
{{- .Values.pipelineRoot.root | default (printf "s3://%s/pipeline-root" $s3.bucket) -}}
{{- end -}}

{{/* The `providers` block of KFP's launcher config (KFP >= 2.3: s3.default endpoint as
     host[:port], region, disableSSL, forcePathStyle, credentials fromEnv or secretRef). */}}
{{- define "ffkfp.providers" -}}
{{- $s3 := include "ffkfp.s3" . | fromJson -}}
{{- $default := dict "region" $s3.region -}}
{{- if $s3.endpoint -}}
{{- $url := urlParse $s3.endpoint -}}
{{- $_ := set $default "endpoint" ($url.host | default $s3.endpoint) -}}
{{- $_ := set $default "disableSSL" (eq $url.scheme "http") -}}
{{- $_ := set $default "forcePathStyle" true -}}
{{- else -}}
{{- $_ := set $default "endpoint" "s3.amazonaws.com" -}}
{{- $_ := set $default "disableSSL" false -}}
{{- end -}}
{{- if $s3.secret -}}
{{- $_ := set $default "credentials" (dict "fromEnv" false "secretRef" (dict "secretName" $s3.secret "accessKeyKey" $s3.accessKeyKey "secretKeyKey" $s3.secretKeyKey)) -}}
{{- else -}}
{{- $_ := set $default "credentials" (dict "fromEnv" true) -}}
{{- end -}}
{{- toYaml (dict "s3" (dict "default" $default)) -}}
{{- end -}}
