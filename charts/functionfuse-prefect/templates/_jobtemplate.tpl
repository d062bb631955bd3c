{{/* The base job template of the kubernetes work pool (prefect-kubernetes' format: a
     job_configuration with {{ placeholders }} and the JSON schema of its variables, as
     KubernetesWorker.get_default_base_job_template() gives it), with functionfuse's defaults:
     the Prefect image of this chart, the storage settings and credentials, a restricted
     security context, a writable /tmp on a read-only root filesystem, requests and limits.
     The env list is written out (not {{ env }}): the worker puts its settings in front of it. */}}
{{- define "ffprefect.baseJobTemplate" -}}
{{- $res := .Values.worker.flowRun.resources -}}
job_configuration:
  command: {{ include "ffprefect.ph" "command" | quote }}
  env: {{ include "ffprefect.ph" "env" | quote }}
  labels: {{ include "ffprefect.ph" "labels" | quote }}
  name: {{ include "ffprefect.ph" "name" | quote }}
  annotations: {{ include "ffprefect.ph" "annotations" | quote }}
  namespace: {{ include "ffprefect.ph" "namespace" | quote }}
  job_manifest:
    apiVersion: batch/v1
    kind: Job
    metadata:
      annotations: {{ include "ffprefect.ph" "annotations" | quote }}
      generateName: {{ printf "%s-" (include "ffprefect.ph" "name") | quote }}
      labels: {{ include "ffprefect.ph" "labels" | quote }}
      namespace: {{ include "ffprefect.ph" "namespace" | quote }}
    spec:
      backoffLimit: {{ include "ffprefect.ph" "backoff_limit" | quote }}
      ttlSecondsAfterFinished: {{ include "ffprefect.ph" "finished_job_ttl" | quote }}
      template:
        metadata:
          labels:
            app.kubernetes.io/name: {{ include "ffprefect.name" . }}
            app.kubernetes.io/instance: {{ .Release.Name }}
            app.kubernetes.io/part-of: functionfuse
            app.kubernetes.io/component: flow-run
        spec:
          # prefect-kubernetes' manifest check requires these two (placed as upstream's
          # default template places them)
          completions: 1
          parallelism: 1
          restartPolicy: Never
          serviceAccountName: {{ include "ffprefect.ph" "service_account_name" | quote }}
          automountServiceAccountToken: false
          {{- with .Values.imagePullSecrets }}
          imagePullSecrets:
            {{- range . }}
            - name: {{ . }}
            {{- end }}
          {{- end }}
          securityContext:
            {{- toYaml .Values.podSecurityContext | nindent 12 }}
          containers:
            - name: prefect-job
              image: {{ include "ffprefect.ph" "image" | quote }}
              imagePullPolicy: {{ include "ffprefect.ph" "image_pull_policy" | quote }}
              args: {{ include "ffprefect.ph" "command" | quote }}
              env:
                - {name: PREFECT_HOME, value: /tmp/prefect}
                - {name: HOME, value: /tmp}
                {{- include "ffprefect.storageEnv" . | nindent 16 }}
              resources:
                requests:
                  cpu: {{ include "ffprefect.ph" "cpu_request" | quote }}
                  memory: {{ include "ffprefect.ph" "memory_request" | quote }}
                limits:
                  cpu: {{ include "ffprefect.ph" "cpu_limit" | quote }}
                  memory: {{ include "ffprefect.ph" "memory_limit" | quote }}
              securityContext:
                {{- toYaml .Values.securityContext | nindent 16 }}
              volumeMounts:
                - {name: tmp, mountPath: /tmp}
          volumes:
            - name: tmp
              emptyDir: {sizeLimit: 1Gi}
  cluster_config: {{ include "ffprefect.ph" "cluster_config" | quote }}
  job_watch_timeout_seconds: {{ include "ffprefect.ph" "job_watch_timeout_seconds" | quote }}
  pod_watch_timeout_seconds: {{ include "ffprefect.ph" "pod_watch_timeout_seconds" | quote }}
  stream_output: {{ include "ffprefect.ph" "stream_output" | quote }}
variables:
  type: object
  properties:
    name: {type: string, title: Name, description: Name given to infrastructure created by a worker.}
    env:
      type: object
      title: Environment Variables
      description: Environment variables to set when starting a flow run.
      additionalProperties: {type: string}
    labels:
      type: object
      title: Labels
      description: Labels applied to infrastructure created by a worker.
      additionalProperties: {type: string}
    command: {type: string, title: Command, description: "The command that starts a flow run (empty: the worker generates it)."}
    annotations:
      type: object
      title: Annotations
      description: Annotations applied to Kubernetes jobs and pods created by the worker.
      additionalProperties: {type: string}
    namespace: {type: string, title: Namespace, default: {{ .Release.Namespace | quote }}, description: The Kubernetes namespace to create jobs within.}
    image: {type: string, title: Image, default: {{ include "ffprefect.image" . | quote }}, description: The image of the flow-run Jobs (the functionfuse Prefect image).}
    service_account_name: {type: string, title: Service Account Name, description: The Kubernetes service account of the flow-run pods.}
    image_pull_policy: {type: string, title: Image Pull Policy, enum: [IfNotPresent, Always, Never], default: {{ .Values.image.pullPolicy | quote }}}
    backoff_limit: {type: integer, title: Backoff Limit, minimum: 0, default: 0, description: The number of times Kubernetes retries a job after pod eviction.}
    finished_job_ttl: {type: integer, title: Finished Job TTL, default: {{ int .Values.worker.flowRun.finishedJobTtl }}, description: Seconds a finished Job is kept.}
    job_watch_timeout_seconds: {type: integer, title: Job Watch Timeout Seconds, description: "Seconds to wait for each event of a job (empty: no limit)."}
    pod_watch_timeout_seconds: {type: integer, title: Pod Watch Timeout Seconds, default: 300, description: Seconds to wait for the pod to be created.}
    stream_output: {type: boolean, title: Stream Output, default: true, description: Stream the job's output to the worker's output.}
    cluster_config: {type: object, title: Cluster Config, description: "The Kubernetes cluster config to use for job creation (empty: the worker's in-cluster config)."}
    cpu_request: {type: string, title: CPU Request, default: {{ $res.requests.cpu | toString | quote }}}
    cpu_limit: {type: string, title: CPU Limit, default: {{ $res.limits.cpu | toString | quote }}}
    memory_request: {type: string, title: Memory Request, default: {{ $res.requests.memory | toString | quote }}}
    memory_limit: {type: string, title: Memory Limit, default: {{ $res.limits.memory | toString | quote }}}
{{- end -}}
