{{/* The release's full name, used for every object the chart creates (63 characters at most). */}}
{{- define "chaperone.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "chaperone.serviceAccountName" -}}
{{- default (include "chaperone.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{/* Recommended labels (https://helm.sh/docs/chart_best_practices/labels/). */}}
{{- define "chaperone.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: chaperone
{{- end -}}

{{- define "chaperone.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{/* repository:tag, or repository@digest when a digest is given. */}}
{{- define "chaperone.image" -}}
{{- $image := index . 0 -}}
{{- $appVersion := index . 1 -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $image.repository $image.digest -}}
{{- else -}}
{{- printf "%s:%s" $image.repository (default $appVersion $image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "chaperone.webhookServiceName" -}}
{{- printf "%s-webhook" (include "chaperone.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "chaperone.mutatingWebhookName" -}}
{{- printf "%s-pod-injector" (include "chaperone.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "chaperone.validatingWebhookName" -}}
{{- printf "%s-pod-validator" (include "chaperone.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* With cert-manager, its CA injector writes caBundle from the webhook Certificate. */}}
{{- define "chaperone.caInjection" -}}
{{- if .Values.certManager.enabled -}}
annotations:
  cert-manager.io/inject-ca-from: {{ printf "%s/%s" .Release.Namespace (include "chaperone.webhookServiceName" .) }}
{{- end -}}
{{- end -}}
