{{/*
Names, labels and the rendered certbound config. Every template takes its
names and labels from here so that selectors never drift apart.
*/}}

{{/* Chart name, overridable with nameOverride. */}}
{{- define "certbound.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name, truncated to 63 characters (DNS label limit).
A release name that already contains the chart name is used as is.
*/}}
{{- define "certbound.fullname" -}}
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

{{/* Chart name and version for the helm.sh/chart label. */}}
{{- define "certbound.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "certbound.labels" -}}
helm.sh/chart: {{ include "certbound.chart" . }}
{{ include "certbound.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: certbound
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Labels that select the pods; immutable once a Deployment exists. */}}
{{- define "certbound.selectorLabels" -}}
app.kubernetes.io/name: {{ include "certbound.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Name of the admin (metrics and probes) Service. */}}
{{- define "certbound.adminServiceName" -}}
{{- printf "%s-admin" (include "certbound.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* ServiceAccount name. */}}
{{- define "certbound.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "certbound.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Name of the Secret with tls.crt, tls.key and ca.crt. */}}
{{- define "certbound.tlsSecretName" -}}
{{- default (printf "%s-tls" (include "certbound.fullname" .)) .Values.tls.secretName }}
{{- end }}

{{/* Proxy image reference; the tag defaults to the chart's appVersion. */}}
{{- define "certbound.proxyImage" -}}
{{- $tag := default .Chart.AppVersion .Values.proxy.image.tag -}}
{{- if .Values.proxy.image.digest -}}
{{- printf "%s@%s" .Values.proxy.image.repository .Values.proxy.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.proxy.image.repository $tag -}}
{{- end -}}
{{- end }}

{{/* Workload image reference. */}}
{{- define "certbound.workloadImage" -}}
{{- if .Values.workload.image.digest -}}
{{- printf "%s@%s" .Values.workload.image.repository .Values.workload.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.workload.image.repository .Values.workload.image.tag -}}
{{- end -}}
{{- end }}

{{/* Directory where the TLS Secret is mounted (whole directory, no subPath,
so that rotated files show up and the proxy's file watch sees them). */}}
{{- define "certbound.tlsDir" -}}/etc/certbound/tls{{- end }}
{{- define "certbound.clientCADir" -}}/etc/certbound/client-ca{{- end }}
{{/* Where proxy.dpop.nonceKey's Secret is mounted (dpop.nonce_secret_file points into it). */}}
{{- define "certbound.dpopNonceDir" -}}/etc/certbound/dpop-nonce{{- end }}

{{/*
The certbound config file (see docs/configuration.md). The chart owns listen, admin,
tls file paths and upstream.url; everything else comes from proxy.config,
then proxy.extraConfig is merged over it for keys newer than this chart.
*/}}
{{- define "certbound.config" -}}
{{- $c := deepCopy .Values.proxy.config -}}
{{- $_ := set $c "listen" (dict "host" "0.0.0.0" "port" (int .Values.proxy.ports.mtls) "workers" (int .Values.proxy.workers)) -}}
{{- $_ := set $c "admin" (dict "host" "0.0.0.0" "port" (int .Values.proxy.ports.admin)) -}}
{{- $_ := set $c "listen" (merge $c.listen (deepCopy (default (dict) .Values.proxy.listen))) -}}
{{- $clientCA := printf "%s/ca.crt" (include "certbound.tlsDir" .) -}}
{{- if .Values.tls.clientCA.secretName -}}
{{- $clientCA = printf "%s/%s" (include "certbound.clientCADir" .) .Values.tls.clientCA.key -}}
{{- end -}}
{{- $tls := dict "cert_file" (printf "%s/tls.crt" (include "certbound.tlsDir" .)) "key_file" (printf "%s/tls.key" (include "certbound.tlsDir" .)) "client_ca_file" $clientCA -}}
{{- $_ := set $c "tls" (merge $tls (default (dict) $c.tls)) -}}
{{- $up := dict "url" (printf "http://127.0.0.1:%d" (int .Values.workload.port)) -}}
{{- $_ := set $c "upstream" (merge $up (default (dict) $c.upstream)) -}}
{{- if .Values.proxy.dpop.nonceKey.secretName -}}
{{- $dpop := deepCopy (default (dict) $c.dpop) -}}
{{- $_ := set $dpop "nonce_secret_file" (printf "%s/%s" (include "certbound.dpopNonceDir" .) .Values.proxy.dpop.nonceKey.key) -}}
{{- $_ := set $c "dpop" $dpop -}}
{{- end -}}
{{- $c = mustMergeOverwrite $c (deepCopy .Values.proxy.extraConfig) -}}
{{- toYaml $c -}}
{{- end }}

{{/*
Checks across values that the schema cannot word clearly; each fails the render with
the fix. Included by deployment.yaml; renders nothing.
*/}}
{{- define "certbound.validate" -}}
{{- $cfg := include "certbound.config" . | fromYaml -}}
{{- $dpop := default (dict) $cfg.dpop -}}
{{- $secrets := .Values.proxy.dpop -}}
{{- $given := dict -}}
{{- $_ := set $given "replay_cache" (or (dig "dpop" "replay_cache" "" .Values.proxy.config) (dig "dpop" "replay_cache" "" .Values.proxy.extraConfig)) -}}
{{- $_ := set $given "nonce_secret_file" (or (dig "dpop" "nonce_secret_file" "" .Values.proxy.config) (dig "dpop" "nonce_secret_file" "" .Values.proxy.extraConfig)) -}}
{{- if and $secrets.replayCache.secretName $given.replay_cache -}}
{{- fail "proxy.config.dpop.replay_cache and proxy.dpop.replayCache.secretName are both set: the URL from the Secret would silently win; leave proxy.config.dpop.replay_cache empty" -}}
{{- end -}}
{{- if and $given.replay_cache (not (regexMatch "^rediss?://[^/?#]" (toString $given.replay_cache))) -}}
{{- fail "proxy.config.dpop.replay_cache: must be empty or a redis:// or rediss:// URL (the value is not shown here: it may hold a password)" -}}
{{- end -}}
{{- if or (regexMatch "^[a-zA-Z]+://[^/@]*:[^/@]*@" (toString $given.replay_cache)) (regexMatch "(?i)[?&]password=" (toString $given.replay_cache)) -}}
{{- fail "proxy.config.dpop.replay_cache holds a password, which would be written into a ConfigMap (the value is not shown here): put the URL in a Secret and name it in proxy.dpop.replayCache.secretName" -}}
{{- end -}}
{{- if and $secrets.nonceKey.secretName $given.nonce_secret_file -}}
{{- fail "proxy.config.dpop.nonce_secret_file and proxy.dpop.nonceKey.secretName are both set: the chart sets nonce_secret_file to the mounted Secret; leave it empty" -}}
{{- end -}}
{{- if and $secrets.nonceKey.secretName (not $dpop.nonce) -}}
{{- fail "proxy.dpop.nonceKey.secretName is set but proxy.config.dpop.nonce is not true: certbound refuses a nonce key without nonces; set proxy.config.dpop.nonce: true or drop the Secret" -}}
{{- end -}}
{{- if and $dpop.nonce (gt (int .Values.replicaCount) 1) (not $dpop.nonce_secret_file) -}}
{{- fail (printf "proxy.config.dpop.nonce is true with replicaCount %d but no shared nonce key: each replica would refuse the nonces the others issue. Create a Secret (kubectl create secret generic NAME --from-literal=nonce.key=\"$(openssl rand -base64 32)\") and set proxy.dpop.nonceKey.secretName" (int .Values.replicaCount)) -}}
{{- end -}}
{{- end }}

{{/* "true" when the config suggests clients use DPoP: connections without a client
certificate are allowed, a route requires a DPoP binding, or nonces are on. */}}
{{- define "certbound.dpopInUse" -}}
{{- $cfg := include "certbound.config" . | fromYaml -}}
{{- $used := or (eq (toString (dig "tls" "client_cert" "" $cfg)) "optional") (dig "dpop" "nonce" false $cfg) -}}
{{- range (dig "policy" "routes" (list) $cfg) -}}
{{- if eq (toString (get . "binding")) "dpop" -}}{{- $used = true -}}{{- end -}}
{{- end -}}
{{- if $used -}}true{{- end -}}
{{- end }}

{{/*
The injector serves every enabled namespace of the cluster: the chart's placeholder token
settings must never reach it. Fails the render with the values to set; renders nothing.
*/}}
{{- define "certbound.validateInjector" -}}
{{- if not .Values.injector.configMap -}}
{{- $tokens := default (dict) .Values.proxy.config.tokens -}}
{{- $missing := list -}}
{{- if not $tokens.issuers -}}
{{- if or (not $tokens.issuer) (eq (toString $tokens.issuer) "https://issuer.example.com") -}}
{{- $missing = append $missing "proxy.config.tokens.issuer" -}}
{{- end -}}
{{- if or (not $tokens.audience) (eq (toString $tokens.audience) "certbound-demo") -}}
{{- $missing = append $missing "proxy.config.tokens.audience" -}}
{{- end -}}
{{- end -}}
{{- if $missing -}}
{{- fail (printf "injector.enabled: set %s to your authorization server's (the chart's placeholders would be trusted by every injected pod), or name a ConfigMap holding config.yaml in injector.configMap; a pod's certbound.io/audience annotation chooses its own audience" (join " and " $missing)) -}}
{{- end -}}
{{- end -}}
{{- end }}

{{/* Injector labels. Its own app.kubernetes.io/name, so that the workload's Service and
PDB never select injector pods. The webhook is never sent the injector's own pods: they are
labelled certbound.io/inject "false" and run in the release namespace, both excluded. */}}
{{- define "certbound.injectorSelectorLabels" -}}
app.kubernetes.io/name: {{ printf "%s-injector" (include "certbound.name" .) | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: injector
{{- end }}
{{- define "certbound.injectorLabels" -}}
helm.sh/chart: {{ include "certbound.chart" . }}
{{ include "certbound.injectorSelectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: certbound
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
The injector's config file: its listener and serving certificate, and the sidecar
values (the same proxy.* as this chart's own sidecar, see proxy/inject/spec.py).
*/}}
{{- define "certbound.injectorConfig" -}}
{{- $tls := dict "secretName" .Values.injector.tlsSecretName "defaultMode" .Values.tls.defaultMode "clientCA" .Values.tls.clientCA -}}
{{- $proxy := pick .Values.proxy "image" "ports" "workers" "listen" "config" "extraConfig" "env" "resources" "securityContext" "livenessProbe" "readinessProbe" "startupProbe" "extraVolumes" "extraVolumeMounts" "dpop" -}}
{{- $inject := dict "mode" .Values.injector.mode "configMap" .Values.injector.configMap "ports" .Values.injector.ports -}}
{{- $values := dict "proxy" $proxy "tls" $tls "inject" $inject -}}
{{- $listen := dict "host" "0.0.0.0" "port" (int .Values.injector.port) -}}
{{- $files := dict "cert_file" "/etc/certbound-injector/tls/tls.crt" "key_file" "/etc/certbound-injector/tls/tls.key" -}}
{{- toYaml (dict "listen" $listen "tls" $files "values" $values) -}}
{{- end }}
