{{/* Whether one monitoring object is rendered: "true" or "". Call with
(dict "root" . "enabled" .Values.monitoring.X.enabled). `auto` renders only where the cluster
serves the Prometheus Operator's API, so an install without it does not fail on an unknown kind;
`helm template` needs `--api-versions monitoring.coreos.com/v1` to see it. */}}
{{- define "ssekeeper.monitoringOn" -}}
{{- $on := .enabled -}}
{{- if kindIs "bool" $on -}}
{{- if $on }}true{{ end -}}
{{- else if eq (toString $on) "auto" -}}
{{- if .root.Capabilities.APIVersions.Has "monitoring.coreos.com/v1" }}true{{ end -}}
{{- end -}}
{{- end -}}
