{{/* Labels of every object of the chart. */}}
{{- define "kjd.labels" -}}
app.kubernetes.io/part-of: k8s-job-dispatcher
{{- if .Values.releaseLabels }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}
{{- end }}

{{/* The dispatcher's pods: the Deployment's selector (as the kustomize base always had it). */}}
{{- define "kjd.selector" -}}
app.kubernetes.io/name: {{ .Values.name }}
{{- end }}

{{- define "kjd.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ $tag }}
{{- end -}}
{{- end }}

{{/* The Secret holding AMQP_USER and AMQP_PASSWORD. */}}
{{- define "kjd.amqpSecret" -}}
{{- $auth := .Values.broker.auth -}}
{{- if $auth.existingSecret -}}
{{ $auth.existingSecret }}
{{- else if and $auth.user $auth.password -}}
{{ .Values.name }}-amqp
{{- else -}}
{{ fail "broker.auth: give existingSecret (a Secret with AMQP_USER and AMQP_PASSWORD), or user and password" }}
{{- end -}}
{{- end }}

{{- define "kjd.tlsDir" -}}/etc/dispatcher/amqp-tls{{- end }}

{{/* The settings the chart derives from its values, as a YAML map of strings. */}}
{{- define "kjd.derivedSettings" -}}
{{- $broker := .Values.broker -}}
{{- $hosts := $broker.hosts -}}
{{- if and (not $hosts) .Values.rabbitmq.bundled -}}
{{- $hosts = list (printf "rabbitmq.%s.svc.cluster.local" .Values.namespaces.dispatcher) -}}
{{- end -}}
{{- if not $hosts -}}
{{- fail "broker.hosts: give the broker's nodes (host or host:port), or set rabbitmq.bundled=true to try the chart with a RabbitMQ of its own" -}}
{{- end -}}
{{- $port := $broker.port | default (ternary 5671 5672 $broker.tls.enabled) -}}
AMQP_HOST: {{ join "," $hosts | quote }}
AMQP_PORT: {{ $port | toString | quote }}
AMQP_VHOST: {{ $broker.vhost | quote }}
{{- if $broker.tls.enabled }}
{{- if not $broker.tls.secretName }}
{{- fail "broker.tls.secretName: give the Secret with the broker's CA (and client certificate) when broker.tls.enabled" }}
{{- end }}
AMQP_TLS: "true"
AMQP_CA_FILE: {{ printf "%s/%s" (include "kjd.tlsDir" .) $broker.tls.caKey | quote }}
{{- if $broker.tls.certKey }}
AMQP_CERT_FILE: {{ printf "%s/%s" (include "kjd.tlsDir" .) $broker.tls.certKey | quote }}
AMQP_KEY_FILE: {{ printf "%s/%s" (include "kjd.tlsDir" .) $broker.tls.keyKey | quote }}
{{- end }}
{{- with $broker.tls.serverName }}
AMQP_SERVER_NAME: {{ . | quote }}
{{- end }}
{{- end }}
K8S_IN_CLUSTER: "true"
JOB_NAMESPACE: {{ .Values.namespaces.jobs | quote }}
DISPATCHER_NAME: {{ .Values.name | quote }}
PVC_NAME: {{ .Values.persistence.claimName | quote }}
PV_NAME: {{ .Values.persistence.volumeName | quote }}
INTERNAL_SERVICE_ACCOUNT_NAME: {{ .Values.jobServiceAccountName | quote }}
HEALTH_PORT: {{ .Values.healthPort | toString | quote }}
{{- end }}

{{/* Settings only the chart's values set (so that the Role, the probes, the mounts and the
settings cannot disagree). */}}
{{- define "kjd.derivedNames" -}}
AMQP_HOST AMQP_PORT AMQP_VHOST AMQP_USER AMQP_PASSWORD AMQP_TLS AMQP_CA_FILE AMQP_CERT_FILE
AMQP_KEY_FILE AMQP_SERVER_NAME K8S_IN_CLUSTER JOB_NAMESPACE DISPATCHER_NAME PVC_NAME PV_NAME
INTERNAL_SERVICE_ACCOUNT_NAME HEALTH_PORT
{{- end }}

{{/* Every setting: the derived ones, then `settings` as strings (a whole number stays one:
YAML numbers reach templates as floats). */}}
{{- define "kjd.settings" -}}
{{- $all := include "kjd.derivedSettings" . | fromYaml -}}
{{- $refused := include "kjd.derivedNames" . | splitList "\n" | join " " | splitList " " -}}
{{- range $key, $value := .Values.settings -}}
{{- if has $key $refused -}}
{{- fail (printf "settings.%s: the chart sets it from its values (see values.yaml); set those instead" $key) -}}
{{- end -}}
{{- if and (kindIs "float64" $value) (eq $value (floor $value)) -}}
{{- $value = $value | int64 -}}
{{- end -}}
{{- $_ := set $all $key (toString $value) -}}
{{- end -}}
{{- toYaml $all -}}
{{- end }}

{{/* files/alerts.yaml (one group) with this release's scrape job in place of
"dispatcher-metrics", each value marked `# threshold: NAME` replaced by
metrics.prometheusRule.thresholds.NAME, and metrics.prometheusRule.rules added to the group. */}}
{{- define "kjd.alertRules" -}}
{{- $p := .Values.metrics.prometheusRule -}}
{{- $text := .Files.Get "files/alerts.yaml" -}}
{{- $job := $p.job | default (printf "%s-metrics" .Values.name) -}}
{{- $text = $text | replace "job=\"dispatcher-metrics\"" (printf "job=%q" $job) -}}
{{- range $name, $value := $p.thresholds -}}
{{- $marker := printf "(?m)\\S+(\\s+# threshold: %s)$" $name -}}
{{- if not (regexMatch $marker $text) -}}
{{- fail (printf "metrics.prometheusRule.thresholds.%s: files/alerts.yaml marks no such threshold" $name) -}}
{{- end -}}
{{- $text = regexReplaceAll $marker $text (printf "%v${1}" $value) -}}
{{- end -}}
{{- $rules := fromYaml $text -}}
{{- $group := index $rules.groups 0 -}}
{{- $_ := set $group "rules" (concat $group.rules $p.rules) -}}
{{- toYaml $rules -}}
{{- end }}
