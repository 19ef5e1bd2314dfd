{{- define "ssekeeper.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "ssekeeper.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "ssekeeper.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "ssekeeper.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/name: {{ include "ssekeeper.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "ssekeeper.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ssekeeper.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "ssekeeper.serviceAccountName" -}}
{{- default (include "ssekeeper.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{/* An image reference: <imageRegistry>/<repository>:<tag or appVersion>; a repository with a "/"
is a full name of its own. Call with (dict "root" . "image" .Values.image). */}}
{{- define "ssekeeper.image" -}}
{{- $repo := .image.repository -}}
{{- if not (contains "/" $repo) -}}{{- $repo = printf "%s/%s" (trimSuffix "/" .root.Values.imageRegistry) $repo -}}{{- end -}}
{{- if .image.digest -}}
{{- printf "%s@%s" $repo .image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repo (.image.tag | default .root.Chart.AppVersion) -}}
{{- end -}}
{{- end -}}

{{/* The watched namespaces as a JSON list: operator.watchNamespaces plus the older single
operator.watchNamespace; empty means every namespace. */}}
{{- define "ssekeeper.watchNamespaces" -}}
{{- $list := concat (.Values.operator.watchNamespaces | default list) (compact (list .Values.operator.watchNamespace)) | uniq -}}
{{- toJson $list -}}
{{- end -}}
