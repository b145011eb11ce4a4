{{/*
The node plugin's containers, as YAML text for "berth.container" (which adds the user's
extraArgs, extraEnv, extraVolumeMounts, resources and securityContext).
*/}}

{{/*
A berth container of the node plugin: call with (dict "ctx" $ "name" NAME "mode" MODE
"driver" DRIVER "socketVolume" VOL "config" VOL "state" VOL "stateDir" PATH "healthPort"
PORT "healthName" NAME "metricsName" NAME "metricsPort" PORT "pools" LIST "devices" BOOL).
*/}}
{{- define "berth.node.berthContainer" -}}
{{- $ctx := .ctx }}
{{- $stateDir := .stateDir }}
name: {{ .name }}
image: {{ include "berth.image" $ctx }}
imagePullPolicy: {{ $ctx.Values.image.pullPolicy }}
args:
  {{- include "berth.serveArgs" (dict "ctx" $ctx "mode" .mode "driver" .driver "metricsPort" .metricsPort) | nindent 2 }}
env:
  {{- include "berth.nodeNameEnv" $ctx | nindent 2 }}
securityContext:
  # Mounts, loop devices, quotas, mkfs and NFS mounts need full privileges on the host.
  privileged: true
ports:
  # The port of this driver's livenessprobe sidecar, named here for berth's probe.
  - name: {{ .healthName }}
    containerPort: {{ .healthPort }}
    protocol: TCP
  {{- if $ctx.Values.metrics.enabled }}
  - name: {{ .metricsName }}
    containerPort: {{ .metricsPort }}
    protocol: TCP
  {{- end }}
{{ include "berth.livenessProbe" (dict "ctx" $ctx "port" .healthName "host" (include "berth.node.healthAddress" $ctx)) }}
resources:
  {{- toYaml $ctx.Values.node.resources.berth | nindent 2 }}
volumeMounts:
  - name: {{ .socketVolume }}
    mountPath: /csi
  # Mounts berth makes there must reach the host, and the kubelet's must reach berth.
  - name: kubelet-pods
    mountPath: {{ trimSuffix "/" $ctx.Values.kubeletDir }}/pods
    mountPropagation: Bidirectional
  - name: kubelet-csi
    mountPath: {{ trimSuffix "/" $ctx.Values.kubeletDir }}/plugins/kubernetes.io/csi
    mountPropagation: Bidirectional
  {{- if .devices }}
  - name: dev
    mountPath: /dev
  {{- end }}
  - name: {{ .config }}
    mountPath: /etc/berth
    readOnly: true
  - name: {{ .state }}
    mountPath: {{ $stateDir }}
    mountPropagation: HostToContainer
  {{- range .pools }}
  {{- if and .path (not (hasPrefix (printf "%s/" $stateDir) .path)) }}
  - name: pool-{{ .name }}
    mountPath: {{ .path }}
    mountPropagation: HostToContainer
  {{- end }}
  {{- end }}
{{- end }}

{{/*
node-driver-registrar: call with (dict "ctx" $ "name" NAME "driver" DRIVER "socketVolume"
VOL "port" PORT "portName" NAME).
*/}}
{{- define "berth.node.registrar" -}}
{{- $ctx := .ctx }}
name: {{ .name }}
image: {{ include "berth.sidecarImage" $ctx.Values.sidecars.nodeDriverRegistrar }}
imagePullPolicy: {{ $ctx.Values.sidecars.pullPolicy }}
args:
  - --csi-address=/csi/csi.sock
  - --kubelet-registration-path={{ include "berth.socketDir" (dict "ctx" $ctx "driver" .driver) }}/csi.sock
  - --http-endpoint={{ include "berth.listen" (dict "address" (include "berth.node.healthAddress" $ctx) "port" .port) }}
ports:
  - name: {{ .portName }}
    containerPort: {{ .port }}
    protocol: TCP
livenessProbe:
  {{- include "berth.node.httpGet" (dict "ctx" $ctx "port" .portName "path" "/healthz") | nindent 2 }}
  initialDelaySeconds: 5
  timeoutSeconds: 5
{{ include "berth.sidecarSecurityContext" . }}
resources:
  {{- toYaml $ctx.Values.node.resources.sidecars | nindent 2 }}
volumeMounts:
  - name: {{ .socketVolume }}
    mountPath: /csi
  - name: registration-dir
    mountPath: /registration
{{- end }}

{{/* livenessprobe: call with (dict "ctx" $ "name" NAME "socketVolume" VOL "port" PORT). */}}
{{- define "berth.node.livenessProbe" -}}
{{- $ctx := .ctx }}
name: {{ .name }}
image: {{ include "berth.sidecarImage" $ctx.Values.sidecars.livenessProbe }}
imagePullPolicy: {{ $ctx.Values.sidecars.pullPolicy }}
args:
  - --csi-address=/csi/csi.sock
  - --http-endpoint={{ include "berth.listen" (dict "address" (include "berth.node.healthAddress" $ctx) "port" .port) }}
{{ include "berth.sidecarSecurityContext" . }}
resources:
  {{- toYaml $ctx.Values.node.resources.sidecars | nindent 2 }}
volumeMounts:
  - name: {{ .socketVolume }}
    mountPath: /csi
{{- end }}

{{/* csi-provisioner of the node-local driver, with --node-deployment. */}}
{{- define "berth.node.provisioner" -}}
{{- $sidecars := .Values.sidecars }}
name: csi-provisioner
image: {{ include "berth.sidecarImage" $sidecars.provisioner }}
imagePullPolicy: {{ $sidecars.pullPolicy }}
args:
  - --csi-address=/csi/csi.sock
  # Only act on claims whose selected node is this node.
  - --node-deployment=true
  # Publish this node's free space per StorageClass (CSIStorageCapacity).
  - --enable-capacity
  - --capacity-poll-interval={{ .Values.local.capacityPollInterval }}
  # The DaemonSet owns the capacity objects: they survive pod restarts and go away with
  # an uninstall.
  - --capacity-ownerref-level=1
  # PVC name and namespace, PV name as CreateVolume parameters.
  - --extra-create-metadata
  # CreateVolume names exactly the selected node.
  - --strict-topology
  - --immediate-topology=false
  # Clones copy data where the filesystem cannot reflink.
  - --timeout={{ $sidecars.copyTimeout }}
  {{- if .Values.metrics.enabled }}
  # Its metrics (no leader election here, so no /healthz/leader-election).
  - --http-endpoint={{ include "berth.listen" (dict "address" .Values.metrics.bindAddress "port" .Values.node.ports.localProvisioner) }}
  {{- end }}
env:
  {{- include "berth.nodeNameEnv" . | nindent 2 }}
  {{- include "berth.podIdentityEnv" . | nindent 2 }}
{{- if .Values.metrics.enabled }}
ports:
  - name: sc-provisioner
    containerPort: {{ .Values.node.ports.localProvisioner }}
    protocol: TCP
{{- end }}
{{ include "berth.sidecarSecurityContext" . }}
resources:
  {{- toYaml .Values.node.resources.sidecars | nindent 2 }}
volumeMounts:
  - name: local-socket-dir
    mountPath: /csi
{{- end }}

{{/* csi-snapshotter of the node-local driver, with --node-deployment. */}}
{{- define "berth.node.snapshotter" -}}
{{- $sidecars := .Values.sidecars }}
name: csi-snapshotter
image: {{ include "berth.sidecarImage" $sidecars.snapshotter }}
imagePullPolicy: {{ $sidecars.pullPolicy }}
args:
  - --csi-address=/csi/csi.sock
  # Only VolumeSnapshotContents labelled for this node; the snapshot-controller labels
  # them when it runs with --enable-distributed-snapshotting.
  - --node-deployment=true
  # Snapshots copy data where the filesystem cannot snapshot or reflink.
  - --timeout={{ $sidecars.copyTimeout }}
  # berth has no group snapshots (no GroupController service).
  - --feature-gates=CSIVolumeGroupSnapshot=false
  {{- if .Values.metrics.enabled }}
  - --http-endpoint={{ include "berth.listen" (dict "address" .Values.metrics.bindAddress "port" .Values.node.ports.localSnapshotter) }}
  {{- end }}
env:
  {{- include "berth.nodeNameEnv" . | nindent 2 }}
{{- if .Values.metrics.enabled }}
ports:
  - name: sc-snapshotter
    containerPort: {{ .Values.node.ports.localSnapshotter }}
    protocol: TCP
{{- end }}
{{ include "berth.sidecarSecurityContext" . }}
resources:
  {{- toYaml .Values.node.resources.sidecars | nindent 2 }}
volumeMounts:
  - name: local-socket-dir
    mountPath: /csi
{{- end }}
