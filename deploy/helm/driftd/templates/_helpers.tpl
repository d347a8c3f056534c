{{/*
Names, labels and the rendered driftd.yaml, shared by the templates.
*/}}

{{- define "driftd.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's full name; Kubernetes names are at most 63 characters. */}}
{{- define "driftd.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "driftd.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Selector labels. `component: server` keeps the re-tuning Jobs' pods (also labelled
app.kubernetes.io/name: driftd) out of the Service and the PodDisruptionBudget.
*/}}
{{- define "driftd.selectorLabels" -}}
app.kubernetes.io/name: {{ include "driftd.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: server
{{- end }}

{{- define "driftd.labels" -}}
helm.sh/chart: {{ include "driftd.chart" . }}
{{ include "driftd.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: driftd
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "driftd.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "driftd.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "driftd.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "driftd.jobsClaimName" -}}
{{- default (printf "%s-jobs" (include "driftd.fullname" .)) .Values.jobsVolume.existingClaim }}
{{- end }}

{{- define "driftd.jobsNamespace" -}}
{{- default .Release.Namespace .Values.kubernetesExecutor.namespace }}
{{- end }}

{{/*
Refuse values that would start a broken installation, with what to do instead.
*/}}
{{- define "driftd.validate" -}}
{{- $shared := false }}
{{- if .Values.existingSecret }}{{ $shared = true }}{{ end }}
{{- range .Values.secretEnv }}{{ if eq .name "DRIFTD_STORAGE_URL" }}{{ $shared = true }}{{ end }}{{ end }}
{{- if hasPrefix "postgres" (dig "storage" "url" "" .Values.config) }}{{ $shared = true }}{{ end }}
{{- if and (gt (int .Values.replicaCount) 1) (not $shared) }}
{{- fail "replicaCount > 1 needs a shared PostgreSQL store: put DRIFTD_STORAGE_URL in existingSecret (or secretEnv), or set replicaCount: 1 for the embedded SQLite store" }}
{{- end }}
{{- if and .Values.kubernetesExecutor.enabled (not .Values.jobsVolume.enabled) }}
{{- fail "kubernetesExecutor.enabled needs jobsVolume.enabled: the Jobs read their spec and write their artifacts in config.scheduling.jobs_dir, which must be a ReadWriteMany volume shared with driftd's pods" }}
{{- end }}
{{- if and .Values.jobsVolume.enabled (not (hasPrefix "/" .Values.config.scheduling.jobs_dir)) }}
{{- fail "jobsVolume.enabled needs an absolute config.scheduling.jobs_dir (the volume is mounted there), e.g. /var/lib/driftd/jobs" }}
{{- end }}
{{- end }}

{{/*
driftd.yaml: .Values.config, plus the Kubernetes executor's section when it is enabled.
*/}}
{{- define "driftd.config" -}}
{{- $config := deepCopy .Values.config }}
{{- if .Values.kubernetesExecutor.enabled }}
{{- $scheduling := default (dict) $config.scheduling }}
{{- $job := deepCopy .Values.kubernetesExecutor.job }}
{{- if not $job.image }}{{ $_ := set $job "image" (include "driftd.image" .) }}{{ end }}
{{- if not $job.service_account }}{{ $_ := unset $job "service_account" }}{{ end }}
{{- $_ := set $job "namespace" (include "driftd.jobsNamespace" .) }}
{{- $_ := set $job "jobs_volume_claim" (include "driftd.jobsClaimName" .) }}
{{- $_ := set $scheduling "executor" "kubernetes" }}
{{- $_ := set $scheduling "kubernetes" $job }}
{{- $_ := set $config "scheduling" $scheduling }}
{{- end }}
{{- toYaml $config }}
{{- end }}
