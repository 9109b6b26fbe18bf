{{/*
Names, labels and shared snippets of the Stampede chart.
*/}}

{{/* The chart's name, overridable with nameOverride. */}}
{{- define "stampede.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The release's fully qualified name, used as the prefix of every object (63 characters at most, a DNS label).
A release named like the chart ("stampede") is not repeated: "stampede", not "stampede-stampede".
*/}}
{{- define "stampede.fullname" -}}
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

{{/* "<fullname>-<suffix>", kept within 63 characters. Usage: include "stampede.componentName" (list . "operator") */}}
{{- define "stampede.componentName" -}}
{{- $root := index . 0 -}}
{{- printf "%s-%s" (include "stampede.fullname" $root | trunc (int (sub 62 (len (index . 1))))) (index . 1) | trimSuffix "-" -}}
{{- end -}}

{{- define "stampede.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels of every object. */}}
{{- define "stampede.labels" -}}
helm.sh/chart: {{ include "stampede.chart" . }}
{{ include "stampede.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: stampede
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels: the stable subset (never add a label here after a release: selectors are immutable). */}}
{{- define "stampede.selectorLabels" -}}
app.kubernetes.io/name: {{ include "stampede.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels of one component. Usage: include "stampede.componentLabels" (list . "operator") */}}
{{- define "stampede.componentLabels" -}}
{{ include "stampede.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/* Selector labels of one component. Usage: include "stampede.componentSelectorLabels" (list . "operator") */}}
{{- define "stampede.componentSelectorLabels" -}}
{{ include "stampede.selectorLabels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/*
Labels that select the pods the operator creates for sales (API or worker). The operator's builders label them
app.kubernetes.io/name=stampede (names.APP_NAME, whatever the chart's nameOverride), app.kubernetes.io/instance=<sale>,
app.kubernetes.io/component=api|worker, app.kubernetes.io/managed-by=stampede-operator and stampede.dev/sale=<sale>.
Usage: include "stampede.salePodLabels" "api"
*/}}
{{- define "stampede.salePodLabels" -}}
app.kubernetes.io/name: stampede
app.kubernetes.io/managed-by: stampede-operator
app.kubernetes.io/component: {{ . }}
{{- end -}}

{{/*
An image reference. Usage: include "stampede.image" (dict "image" .Values.image.operator "root" .)
A component's repository is prefixed by image.registry; its tag defaults to image.tag, then the chart's appVersion;
a digest, when given, wins over the tag.
*/}}
{{- define "stampede.image" -}}
{{- $root := .root -}}
{{- $registry := $root.Values.image.registry | trimSuffix "/" -}}
{{- $repo := ternary (printf "%s/%s" $registry .image.repository) .image.repository (ne $registry "") -}}
{{- if .image.digest -}}
{{- printf "%s@%s" $repo .image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repo (.image.tag | default $root.Values.image.tag | default $root.Chart.AppVersion) -}}
{{- end -}}
{{- end -}}

{{/* A third-party image (bundled Redis/PostgreSQL, k6): repository:tag or repository@digest. */}}
{{- define "stampede.thirdPartyImage" -}}
{{- if .digest -}}
{{- printf "%s@%s" .repository .digest -}}
{{- else -}}
{{- printf "%s:%s" .repository .tag -}}
{{- end -}}
{{- end -}}

{{/* imagePullSecrets of a pod spec (nothing when image.pullSecrets is empty). */}}
{{- define "stampede.imagePullSecrets" -}}
{{- with .Values.image.pullSecrets -}}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end -}}
{{- end -}}

{{/* The operator's ServiceAccount. */}}
{{- define "stampede.operator.serviceAccountName" -}}
{{- if .Values.operator.serviceAccount.create -}}
{{- default (include "stampede.componentName" (list . "operator")) .Values.operator.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.operator.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The ServiceAccount of the sales' API and worker pods (the operator's STAMPEDE_SALE_SERVICE_ACCOUNT). */}}
{{- define "stampede.sale.serviceAccountName" -}}
{{- default (include "stampede.componentName" (list . "sale")) .Values.operator.saleServiceAccount.name -}}
{{- end -}}

{{/*
The ACL rules of Stampede's user in the bundled Redis, one argument each: only keys under "stampede:" (and the empty
key name: reserve.lua is handed "" as the per-IP bucket when a caller has no client address, and never touches it),
no Pub/Sub channels, and only the commands Stampede sends: EVALSHA and SCRIPT LOAD/EXISTS (redis-py loads a script
on NOSCRIPT), the commands its Lua scripts call (ACLs apply inside scripts too), SCAN/DEL (deleting a sale),
HGET/HSCAN/HDEL/ZRANGEBYSCORE/TIME (reads and healing), SET/GET (the per-sale restore lock), INFO (the server's
run_id, which tells a restarted Redis), PING (readiness), SELECT (a database other than 0). redis-py's CLIENT SETINFO
on connect is refused and ignored by redis-py.
*/}}
{{- define "stampede.redis.aclRules" -}}
{{- $rules := list "resetkeys" "~stampede:*" "~" "resetchannels" "-@all" -}}
{{- range list "evalsha" "script|load" "script|exists" "ping" "select" "time" "scan" "del" "exists" "hget" "hset" "hdel" "hexists" "hgetall" "hincrby" "hlen" "hmget" "hscan" "pexpire" "zadd" "zcard" "zcount" "zrange" "zrank" "zrem" "zrangebyscore" "get" "set" "info" -}}
{{- $rules = append $rules (printf "+%s" .) -}}
{{- end -}}
{{- toJson $rules -}}
{{- end -}}

{{/* kopf's peering name (leader election among the operator's replicas). */}}
{{- define "stampede.operator.peeringName" -}}
{{- default (include "stampede.fullname" .) .Values.operator.peering.name -}}
{{- end -}}

{{/*
The namespaces the operator watches for FlashSales: the release namespace unless operator.watchNamespaces lists
others. Empty when operator.clusterWide (every namespace).
*/}}
{{- define "stampede.operator.namespaces" -}}
{{- if not .Values.operator.clusterWide -}}
{{- $ns := .Values.operator.watchNamespaces | default (list .Release.Namespace) -}}
{{- toJson (uniq $ns) -}}
{{- else -}}
[]
{{- end -}}
{{- end -}}

{{/*
The Secret holding STAMPEDE_REDIS_URL, STAMPEDE_DATABASE_URL and STAMPEDE_JWT_SECRET (keys named like the
variables; every pod reads only the keys it uses, by secretKeyRef).
*/}}
{{- define "stampede.secretName" -}}
{{- default (include "stampede.componentName" (list . "env")) .Values.secrets.existingSecret -}}
{{- end -}}

{{- define "stampede.redis.fullname" -}}
{{- include "stampede.componentName" (list . "redis") -}}
{{- end -}}

{{/* The Secret with the bundled Redis' and PostgreSQL's own passwords (kept apart from the envFrom-ready one). */}}
{{- define "stampede.datastoreSecretName" -}}
{{- include "stampede.componentName" (list . "datastores") -}}
{{- end -}}

{{- define "stampede.postgresql.fullname" -}}
{{- include "stampede.componentName" (list . "postgresql") -}}
{{- end -}}

{{/*
A value that survives upgrades: `default` when set, else the one already stored in Secret `secret` under `key`, else
a new random string of `length` characters. Usage:
include "stampede.persistedSecret" (dict "root" . "secret" "name" "key" "STAMPEDE_JWT_SECRET" "default" "" "length" 48)
*/}}
{{- define "stampede.persistedSecret" -}}
{{- $root := .root -}}
{{- $existing := lookup "v1" "Secret" $root.Release.Namespace .secret -}}
{{- if .default -}}
{{- .default -}}
{{- else if and $existing (hasKey ($existing.data | default dict) .key) -}}
{{- index $existing.data .key | b64dec -}}
{{- else -}}
{{- randAlphaNum (int .length) -}}
{{- end -}}
{{- end -}}

{{/* The env of every Stampede process: settings from the Secret, one variable per key. */}}
{{- define "stampede.secretEnv" -}}
- name: STAMPEDE_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "stampede.secretName" . }}
      key: STAMPEDE_REDIS_URL
- name: STAMPEDE_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "stampede.secretName" . }}
      key: STAMPEDE_DATABASE_URL
{{- end -}}

{{/*
Refuses combinations that cannot work, with a message that says what to change.
*/}}
{{- define "stampede.validate" -}}
{{- if and .Values.secrets.existingSecret (or .Values.redis.enabled .Values.postgresql.enabled) -}}
{{- fail "secrets.existingSecret names a Secret you manage: it is for external Redis/PostgreSQL, so set redis.enabled=false and postgresql.enabled=false (the bundled ones take their passwords from the chart's own Secret)" -}}
{{- end -}}
{{- if not .Values.secrets.existingSecret -}}
{{- if and (not .Values.redis.enabled) (not .Values.redis.external.url) -}}
{{- fail "redis.enabled=false needs redis.external.url (or secrets.existingSecret holding STAMPEDE_REDIS_URL)" -}}
{{- end -}}
{{- if and (not .Values.postgresql.enabled) (not .Values.postgresql.external.url) -}}
{{- fail "postgresql.enabled=false needs postgresql.external.url (or secrets.existingSecret holding STAMPEDE_DATABASE_URL)" -}}
{{- end -}}
{{- end -}}
{{- if gt (int .Values.operator.replicas) (int .Values.operator.peering.priorityBase) -}}
{{- fail "operator.peering.priorityBase must be at least operator.replicas (replica N runs with priority priorityBase - N, which must stay above 0)" -}}
{{- end -}}
{{- if and .Values.operator.clusterWide .Values.operator.watchNamespaces -}}
{{- fail "operator.clusterWide=true watches every namespace: leave operator.watchNamespaces empty" -}}
{{- end -}}
{{- end -}}

{{/* NetworkPolicy peers allowed to reach the data stores: the chart's pods and the sales' pods in the watched
namespaces (any namespace when the list is empty). Usage: include "stampede.netpol.from" (list . $namespaces) */}}
{{- define "stampede.netpol.from" -}}
{{- $root := index . 0 -}}
{{- $nss := index . 1 -}}
- podSelector:
    matchLabels:
      {{- include "stampede.selectorLabels" $root | nindent 6 }}
{{- range $c := list "api" "worker" }}
{{- if $nss }}
{{- range $nss }}
- namespaceSelector:
    matchLabels:
      kubernetes.io/metadata.name: {{ . }}
  podSelector:
    matchLabels:
      {{- include "stampede.salePodLabels" $c | nindent 6 }}
{{- end }}
{{- else }}
- namespaceSelector: {}
  podSelector:
    matchLabels:
      {{- include "stampede.salePodLabels" $c | nindent 6 }}
{{- end }}
{{- end }}
{{- end -}}

{{/* The operator's namespaced rules (see templates/operator/rbac.yaml for why each is there). */}}
{{- define "stampede.operator.rules" -}}
- apiGroups: ["stampede.dev"]
  resources: ["flashsales"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["stampede.dev"]
  resources: ["flashsales/status"]
  verbs: ["get", "patch"]
- apiGroups: ["stampede.dev"]
  resources: ["flashsales/finalizers"]
  verbs: ["update"]
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "watch", "create", "patch"]
# The sale's API HPA (spec.api.autoscale / api.autoscale): deleted when the sale stops asking for one.
- apiGroups: ["autoscaling"]
  resources: ["horizontalpodautoscalers"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end -}}
