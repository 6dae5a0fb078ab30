{{/* Name of the chart, for labels. */}}
{{- define "sidekey.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name of the release's objects: <release>-sidekey, or the release name when it already says sidekey. */}}
{{- define "sidekey.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "sidekey.webhookName" -}}{{ include "sidekey.fullname" . | trunc 55 | trimSuffix "-" }}-webhook{{- end -}}
{{- define "sidekey.probeName" -}}{{ include "sidekey.fullname" . | trunc 57 | trimSuffix "-" }}-probe{{- end -}}

{{/* The MutatingWebhookConfiguration is cluster-scoped: its name carries the namespace so two releases never collide. */}}
{{- define "sidekey.webhookConfigName" -}}
{{- printf "%s-%s" (include "sidekey.webhookName" .) .Release.Namespace | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "sidekey.tlsSecretName" -}}
{{- default (printf "%s-tls" (include "sidekey.webhookName" .)) .Values.webhook.tls.secretName -}}
{{- end -}}

{{/* self or certManager; certManager.enabled wins. */}}
{{- define "sidekey.tlsMode" -}}
{{- if .Values.certManager.enabled -}}certManager{{- else -}}{{ .Values.webhook.tls.mode }}{{- end -}}
{{- end -}}

{{- define "sidekey.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "sidekey.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels; call with (dict "ctx" $ "component" "webhook"). */}}
{{- define "sidekey.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sidekey.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* repository:tag or repository@digest; call with (dict "image" .Values.image "ctx" $). */}}
{{- define "sidekey.image" -}}
{{- if .image.digest -}}
{{- printf "%s@%s" .image.repository .image.digest -}}
{{- else -}}
{{- printf "%s:%s" .image.repository (default .ctx.Chart.AppVersion .image.tag) -}}
{{- end -}}
{{- end -}}

{{/* The serving certificate's host when the webhook is called by URL. */}}
{{- define "sidekey.urlHost" -}}
{{- if .Values.webhook.url -}}{{- (urlParse .Values.webhook.url).hostname -}}{{- end -}}
{{- end -}}
