{{/*
The pod spec of a load test: the worker image mints the buyers' tokens into an emptyDir (it alone holds the JWT
secret); k6 runs `script` as an init container with those tokens and writes its summary to a shared emptyDir;
then the integrity audit (worker image) reads that summary, Redis and the ledger, waits for the queue to settle,
and exits non-zero on any violation. The pod fails when either fails.
Usage: include "stampede.loadtest.podSpec" (dict "root" . "script" "smoke.js" "env" (dict "RATE" "50" ...))
*/}}
{{- define "stampede.loadtest.podSpec" -}}
{{- $root := .root -}}
{{- $lt := $root.Values.loadTest -}}
{{- $sale := $lt.sale -}}
{{- $base := $lt.apiUrl | default (printf "http://%s-api.%s.svc" $sale $root.Release.Namespace) -}}
{{- $summary := printf "/results/%s-summary.json" (trimSuffix ".js" .script) -}}
restartPolicy: Never
automountServiceAccountToken: false
enableServiceLinks: false
{{- with (include "stampede.imagePullSecrets" $root) }}
{{ . }}
{{- end }}
securityContext:
  runAsNonRoot: true
  runAsUser: 12345
  runAsGroup: 12345
  fsGroup: 12345
  seccompProfile: {type: RuntimeDefault}
initContainers:
  # Buyer tokens minted by the project's own image, the only container here that holds the signing secret: k6 (a
  # third-party image running scripts from a ConfigMap) reads the tokens, never the secret.
  - name: tokens
    image: {{ include "stampede.image" (dict "image" $root.Values.image.worker "root" $root) }}
    imagePullPolicy: {{ $root.Values.image.pullPolicy }}
    command: ["stampede", "mint-token", "buyer", "--count", {{ .env.BUYERS | toString | quote }}, "--ttl", "3600", "--out", "/tokens/tokens.tsv"]
    env:
      - name: STAMPEDE_JWT_SECRET
        valueFrom:
          secretKeyRef:
            name: {{ include "stampede.secretName" $root }}
            key: STAMPEDE_JWT_SECRET
    resources:
      {{- toYaml $lt.auditResources | nindent 6 }}
    securityContext:
      runAsUser: 10001
      runAsGroup: 10001
      allowPrivilegeEscalation: false
      readOnlyRootFilesystem: true
      capabilities: {drop: [ALL]}
    volumeMounts:
      - name: tokens
        mountPath: /tokens
      - name: tmp
        mountPath: /tmp
{{- if not $lt.audit.enabled }}
containers:
{{- end }}
  - name: k6
    image: {{ include "stampede.thirdPartyImage" $lt.image }}
    imagePullPolicy: {{ $lt.image.pullPolicy }}
    args: ["run", "--no-color", "/scripts/{{ .script }}"]
    env:
      - name: BASE_URL
        value: {{ $base | quote }}
      - name: SALE
        value: {{ $sale | quote }}
      - name: TOKENS_PATH
        value: /tokens/tokens.tsv
      - name: SUMMARY_PATH
        value: {{ $summary | quote }}
      - name: K6_NO_USAGE_REPORT
        value: "true"
      - name: HOME
        value: /tmp
      {{- range $k, $v := .env }}
      - name: {{ $k }}
        value: {{ $v | toString | quote }}
      {{- end }}
    resources:
      {{- toYaml $lt.resources | nindent 6 }}
    securityContext:
      allowPrivilegeEscalation: false
      readOnlyRootFilesystem: true
      capabilities: {drop: [ALL]}
    volumeMounts:
      - name: scripts
        mountPath: /scripts
        readOnly: true
      - name: results
        mountPath: /results
      - name: tokens
        mountPath: /tokens
        readOnly: true
      - name: tmp
        mountPath: /tmp
{{- if $lt.audit.enabled }}
containers:
  - name: audit
    image: {{ include "stampede.image" (dict "image" $root.Values.image.worker "root" $root) }}
    imagePullPolicy: {{ $root.Values.image.pullPolicy }}
    command:
      {{- range $lt.audit.command }}
      - {{ . | replace "{sale}" (printf "%s/%s" $root.Release.Namespace $sale) | replace "{summary}" $summary | replace "{timeout}" (toString $lt.audit.settleTimeoutSeconds) | quote }}
      {{- end }}
    env:
      {{- include "stampede.secretEnv" $root | nindent 6 }}
    resources:
      {{- toYaml $lt.auditResources | nindent 6 }}
    securityContext:
      # The worker image's own user.
      runAsUser: 10001
      runAsGroup: 10001
      allowPrivilegeEscalation: false
      readOnlyRootFilesystem: true
      capabilities: {drop: [ALL]}
    volumeMounts:
      - name: results
        mountPath: /results
        readOnly: true
      - name: tmp
        mountPath: /tmp
{{- end }}
volumes:
  - name: scripts
    configMap:
      name: {{ include "stampede.componentName" (list $root "k6") }}
      items:
        {{- range $path, $_ := $root.Files.Glob "files/k6/**.js" }}
        {{- $rel := trimPrefix "files/k6/" $path }}
        - key: {{ $rel | replace "/" "." }}
          path: {{ $rel }}
        {{- end }}
  - name: results
    emptyDir:
      sizeLimit: 64Mi
  - name: tokens
    emptyDir:
      medium: Memory
      sizeLimit: 64Mi
  - name: tmp
    emptyDir:
      sizeLimit: 64Mi
{{- end -}}
