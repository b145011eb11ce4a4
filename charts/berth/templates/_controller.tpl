{{/*
The central controllers' containers, as YAML text for "berth.container".
*/}}

{{/* berth --mode controller: call with (dict "ctx" $ "driver" local|nfs "cfg" .Values.<driver>). */}}
{{- define "berth.controller.berth" -}}
{{- $ctx := .ctx }}
{{- $metricsPort := index $ctx.Values.metrics.ports .driver }}
name: berth
image: {{ include "berth.image" $ctx }}
imagePullPolicy: {{ $ctx.Values.image.pullPolicy }}
args:
  {{- $health := include "berth.listen" (dict "address" "" "port" $ctx.Values.controller.ports.health) }}
  {{- include "berth.serveArgs" (dict "ctx" $ctx "mode" "controller" "driver" .cfg.driverName "metricsPort" $metricsPort "health" $health) | nindent 2 }}
env:
  {{- include "berth.nodeNameEnv" $ctx | nindent 2 }}
securityContext:
  allowPrivilegeEscalation: false
  readOnlyRootFilesystem: true
  capabilities:
    drop: ["ALL"]
ports:
  # berth's own /healthz and /readyz (--health-address), on every address of the pod.
  - name: healthz
    containerPort: {{ $ctx.Values.controller.ports.health }}
    protocol: TCP
  {{- if $ctx.Values.metrics.enabled }}
  - name: metrics-{{ .driver }}
    containerPort: {{ $metricsPort }}
    protocol: TCP
  {{- end }}
{{ include "berth.probes" (dict "port" "healthz") }}
resources:
  {{- toYaml $ctx.Values.controller.resources.berth | nindent 2 }}
volumeMounts:
  - name: socket-dir
    mountPath: /csi
  - name: config
    mountPath: /etc/berth
    readOnly: true
  # berth's records directory; the controller keeps nothing on the host.
  - name: state
    mountPath: {{ trimSuffix "/" .cfg.stateDir }}
{{- end }}

{{/*
A leader-elected sidecar (provisioner, attacher, resizer, snapshotter): call with
(dict "ctx" $ "driver" local|nfs "role" ROLE). Its --http-endpoint serves /metrics and
/healthz/leader-election, which fails once the leader can no longer renew its lease: the
liveness probe restarts such a sidecar, so another pod can lead.
*/}}
{{- define "berth.controller.sidecar" -}}
{{- $ctx := .ctx }}
{{- $sidecars := $ctx.Values.sidecars }}
{{- $port := index $ctx.Values.controller.ports .role }}
name: csi-{{ .role }}
image: {{ include "berth.sidecarImage" (index $sidecars .role) }}
imagePullPolicy: {{ $sidecars.pullPolicy }}
args:
  - --csi-address=/csi/csi.sock
  {{- if eq .role "provisioner" }}
  - --extra-create-metadata
  {{- end }}
  - --leader-election
  - --leader-election-namespace=$(NAMESPACE)
  {{- if and (eq .driver "nfs") (has .role (list "provisioner" "snapshotter")) }}
  # Clones, restores and snapshots are server-side copies of whole directories.
  - --timeout={{ $sidecars.copyTimeout }}
  {{- else }}
  - --timeout={{ $sidecars.timeout }}
  {{- end }}
  {{- if eq .role "snapshotter" }}
  # NFS volumes cannot be frozen together: no group snapshots here.
  - --feature-gates=CSIVolumeGroupSnapshot=false
  {{- end }}
  - --http-endpoint={{ include "berth.listen" (dict "address" "" "port" $port) }}
env:
  {{- include "berth.podIdentityEnv" $ctx | nindent 2 }}
ports:
  - name: sc-{{ .role }}
    containerPort: {{ $port }}
    protocol: TCP
livenessProbe:
  httpGet:
    path: /healthz/leader-election
    port: sc-{{ .role }}
  initialDelaySeconds: 10
  timeoutSeconds: 10
  periodSeconds: 20
  failureThreshold: 1
{{ include "berth.sidecarSecurityContext" . }}
resources:
  {{- toYaml $ctx.Values.controller.resources.sidecars | nindent 2 }}
volumeMounts:
  - name: socket-dir
    mountPath: /csi
{{- end }}

{{/*
csi-external-health-monitor-controller of the NFS controller (healthMonitor): leader
elected like the other sidecars, so --http-endpoint serves /metrics and
/healthz/leader-election, its liveness probe.
*/}}
{{- define "berth.controller.healthMonitor" -}}
{{- $hm := .Values.healthMonitor }}
{{- $port := .Values.controller.ports.healthMonitor }}
name: csi-health-monitor
image: {{ include "berth.sidecarImage" .Values.sidecars.healthMonitor }}
imagePullPolicy: {{ .Values.sidecars.pullPolicy }}
args:
  - --csi-address=/csi/csi.sock
  - --leader-election
  - --leader-election-namespace=$(NAMESPACE)
  - --timeout={{ $hm.timeout }}
  # berth offers LIST_VOLUMES: one ListVolumes round per interval.
  - --list-volumes-interval={{ $hm.listVolumesInterval }}
  - --monitor-interval={{ $hm.monitorInterval }}
  - --http-endpoint={{ include "berth.listen" (dict "address" "" "port" $port) }}
env:
  {{- include "berth.podIdentityEnv" . | nindent 2 }}
ports:
  - name: sc-monitor
    containerPort: {{ $port }}
    protocol: TCP
livenessProbe:
  httpGet:
    path: /healthz/leader-election
    port: sc-monitor
  initialDelaySeconds: 10
  timeoutSeconds: 10
  periodSeconds: 20
  failureThreshold: 1
{{ include "berth.sidecarSecurityContext" . }}
resources:
  {{- toYaml .Values.controller.resources.sidecars | nindent 2 }}
volumeMounts:
  - name: socket-dir
    mountPath: /csi
{{- end }}
