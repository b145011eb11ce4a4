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
  {{- $health := include "berth.listen" (dict "address" (include "berth.node.healthAddress" $ctx) "port" .healthPort) }}
  {{- include "berth.serveArgs" (dict "ctx" $ctx "mode" .mode "driver" .driver "metricsPort" .metricsPort "health" $health) | nindent 2 }}
env:
  {{- include "berth.nodeNameEnv" $ctx | nindent 2 }}
  {{- with $ctx.Values.node.sidecarUser }}
  # The non-root sidecars (node.sidecarUser) reach the socket through its group.
  - name: BERTH_SOCKET_GROUP
    value: {{ . | quote }}
  {{- end }}
securityContext:
  # Mounts, loop devices, quotas, mkfs and NFS mounts need full privileges on the host.
  privileged: true
ports:
  # berth's own /healthz and /readyz (--health-address), which the kubelet probes.
  - name: {{ .healthName }}
    containerPort: {{ .healthPort }}
    protocol: TCP
  {{- if $ctx.Values.metrics.enabled }}
  - name: {{ .metricsName }}
    containerPort: {{ .metricsPort }}
    protocol: TCP
  {{- end }}
{{ include "berth.probes" (dict "port" .healthName "host" (include "berth.node.healthAddress" $ctx)) }}
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
  {{- with .Values.local.provisionerApi }}
  # Three API requests per claim: at the sidecar's default 5/s a burst of claims waits
  # here, not in berth (values.yaml, local.provisionerApi). Absent only in an upgrade
  # with --reuse-values from a release before it: then the sidecar's own 5/10.
  - --kube-api-qps={{ .qps }}
  - --kube-api-burst={{ .burst }}
  {{- end }}
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
{{ include "berth.node.sidecarSecurityContext" . }}
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
  # Group snapshots of this node's volumes (snapshots.groups; needs their CRDs).
  - --feature-gates=CSIVolumeGroupSnapshot={{ .Values.snapshots.groups }}
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
{{ include "berth.node.sidecarSecurityContext" . }}
resources:
  {{- toYaml .Values.node.resources.sidecars | nindent 2 }}
volumeMounts:
  - name: local-socket-dir
    mountPath: /csi
{{- end }}

{{/*
csi-external-health-monitor-controller of the node-local driver (healthMonitor.nodeLocal):
one per node, without leader election. berth's ListVolumes here lists only this node's
volumes, and the sidecar skips the PersistentVolumes it did not list, so each node reports
its own. Like the node's provisioner it serves only metrics (no /healthz/leader-election),
so --http-endpoint comes with metrics.enabled and there is no liveness probe.
*/}}
{{- define "berth.node.healthMonitor" -}}
{{- $hm := .Values.healthMonitor }}
name: csi-health-monitor
image: {{ include "berth.sidecarImage" .Values.sidecars.healthMonitor }}
imagePullPolicy: {{ .Values.sidecars.pullPolicy }}
args:
  - --csi-address=/csi/csi.sock
  - --timeout={{ $hm.timeout }}
  # berth offers LIST_VOLUMES: one ListVolumes round per interval.
  - --list-volumes-interval={{ $hm.listVolumesInterval }}
  - --monitor-interval={{ $hm.monitorInterval }}
  {{- if .Values.metrics.enabled }}
  - --http-endpoint={{ include "berth.listen" (dict "address" .Values.metrics.bindAddress "port" .Values.node.ports.localHealthMonitor) }}
  {{- end }}
{{- if .Values.metrics.enabled }}
ports:
  - name: sc-monitor
    containerPort: {{ .Values.node.ports.localHealthMonitor }}
    protocol: TCP
{{- end }}
{{ include "berth.node.sidecarSecurityContext" . }}
resources:
  {{- toYaml .Values.node.resources.sidecars | nindent 2 }}
volumeMounts:
  - name: local-socket-dir
    mountPath: /csi
{{- end }}

{{/*
One node plugin DaemonSet: call with (dict "ctx" $ "group" G), G a dict with name (""
for the main DaemonSet), pools (its node-local pools), config (its ConfigMap), and
nodeSelector, tolerations, affinity.
*/}}
{{- define "berth.node.daemonset" -}}
{{- $ctx := .ctx }}
{{- $g := .group }}
{{- with $ctx }}
{{- $fullname := include "berth.fullname" . }}
{{- $local := .Values.local }}
{{- $nfs := .Values.nfs }}
{{- $ports := .Values.node.ports }}
{{- $over := .Values.node.containers }}
{{- $localPools := $g.pools }}
{{- $stateDir := trimSuffix "/" $local.stateDir }}
{{- $kubeletDir := trimSuffix "/" .Values.kubeletDir }}
{{- $component := ternary "node" (printf "node-%s" $g.name) (eq $g.name "") }}
# The node plugin, on every node. For the node-local driver it is also the provisioner:
# csi-provisioner and csi-snapshotter run here with --node-deployment, so the node that
# owns the disk creates, deletes and snapshots its volumes, and the health monitor reports
# the condition of that node's volumes.
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: {{ $fullname }}-{{ $component }}
  namespace: {{ .Release.Namespace }}
  labels:
    {{- include "berth.labels" (dict "ctx" . "component" $component) | nindent 4 }}
spec:
  selector:
    matchLabels:
      {{- include "berth.selectorLabels" (dict "ctx" . "component" $component) | nindent 6 }}
  updateStrategy:
    {{- toYaml .Values.node.updateStrategy | nindent 4 }}
  template:
    metadata:
      labels:
        {{- include "berth.labels" (dict "ctx" . "component" $component) | nindent 8 }}
        {{- with .Values.node.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      annotations:
        # Roll the pods when berth's configuration changes.
        checksum/config: {{ include (print .Template.BasePath "/configmap.yaml") . | sha256sum }}
        {{- with .Values.node.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      serviceAccountName: {{ $fullname }}-node
      # Only the node-local driver's provisioner and snapshotter talk to the API server.
      automountServiceAccountToken: {{ $local.enabled }}
      priorityClassName: {{ .Values.node.priorityClassName }}
      # At least berth's --drain-seconds (drainSeconds), so calls in flight can finish.
      terminationGracePeriodSeconds: {{ .Values.node.terminationGracePeriodSeconds }}
      hostNetwork: {{ include "berth.node.hostNetwork" . }}
      {{- if eq (include "berth.node.hostNetwork" .) "true" }}
      dnsPolicy: ClusterFirstWithHostNet
      {{- end }}
      hostPID: false
      # The sidecars run under the runtime's default seccomp profile (the privileged berth
      # containers are exempt, as every privileged container is).
      securityContext:
        {{- toYaml (mergeOverwrite (dict "seccompProfile" (dict "type" "RuntimeDefault")) (deepCopy .Values.node.podSecurityContext)) | nindent 8 }}
      {{- with .Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $g.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $g.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $g.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      containers:
        {{- if $local.enabled }}
        {{- /* berth serves the node-local driver: Identity, Node (for the kubelet) and
        Controller (for the provisioner and snapshotter beside it). */}}
        {{- $text := include "berth.node.berthContainer" (dict "ctx" . "name" "berth" "mode" "all" "driver" $local.driverName
              "socketVolume" "local-socket-dir" "config" "local-config" "state" "local-state" "stateDir" $stateDir
              "healthPort" $ports.localHealth "healthName" "healthz" "metricsName" "metrics-local"
              "metricsPort" .Values.metrics.ports.local "pools" $localPools "devices" true) }}
        {{- include "berth.container" (dict "spec" $text "over" (get $over "berth")) | nindent 8 }}
        {{- $text = include "berth.node.registrar" (dict "ctx" . "name" "node-driver-registrar" "driver" $local.driverName
              "socketVolume" "local-socket-dir" "port" $ports.localRegistrar "portName" "healthz-reg") }}
        {{- include "berth.container" (dict "spec" $text "over" (get $over "node-driver-registrar")) | nindent 8 }}
        {{- $text = include "berth.node.provisioner" . }}
        {{- include "berth.container" (dict "spec" $text "over" (get $over "csi-provisioner")) | nindent 8 }}
        {{- if .Values.snapshots.enabled }}
        {{- $text = include "berth.node.snapshotter" . }}
        {{- include "berth.container" (dict "spec" $text "over" (get $over "csi-snapshotter")) | nindent 8 }}
        {{- end }}
        {{- if has "node" (include "berth.healthMonitor.components" . | fromJsonArray) }}
        {{- $text = include "berth.node.healthMonitor" . }}
        {{- include "berth.container" (dict "spec" $text "over" (get $over "csi-health-monitor")) | nindent 8 }}
        {{- end }}
        {{- end }}
        {{- if $nfs.enabled }}
        {{- /* berth serves the NFS driver's Node service: it mounts exports on this node. */}}
        {{- $text := include "berth.node.berthContainer" (dict "ctx" . "name" "berth-nfs" "mode" "node" "driver" $nfs.driverName
              "socketVolume" "nfs-socket-dir" "config" "nfs-config" "state" "nfs-state" "stateDir" (trimSuffix "/" $nfs.stateDir)
              "healthPort" $ports.nfsHealth "healthName" "healthz-nfs" "metricsName" "metrics-nfs"
              "metricsPort" .Values.metrics.ports.nfs "pools" list "devices" false) }}
        {{- include "berth.container" (dict "spec" $text "over" (get $over "berth-nfs")) | nindent 8 }}
        {{- $text = include "berth.node.registrar" (dict "ctx" . "name" "node-driver-registrar-nfs" "driver" $nfs.driverName
              "socketVolume" "nfs-socket-dir" "port" $ports.nfsRegistrar "portName" "healthz-reg-nfs") }}
        {{- include "berth.container" (dict "spec" $text "over" (get $over "node-driver-registrar-nfs")) | nindent 8 }}
        {{- end }}
      volumes:
        # Only the two kubelet directories where berth mounts volumes, with Bidirectional
        # propagation in the berth containers: pods/ (publish targets) and
        # plugins/kubernetes.io/csi/ (staging, and raw block devices). The rest of the
        # kubelet's directory stays out of reach.
        - name: kubelet-pods
          hostPath:
            path: {{ $kubeletDir }}/pods
            type: Directory
        - name: kubelet-csi
          hostPath:
            path: {{ $kubeletDir }}/plugins/kubernetes.io/csi
            type: DirectoryOrCreate
        - name: registration-dir
          hostPath:
            path: {{ include "berth.registrationDir" . }}
            type: Directory
        {{- if $local.enabled }}
        - name: local-socket-dir
          hostPath:
            path: {{ include "berth.socketDir" (dict "ctx" . "driver" $local.driverName) }}
            type: DirectoryOrCreate
        - name: dev
          hostPath:
            path: /dev
            type: Directory
        - name: local-config
          configMap:
            name: {{ $g.config }}
        - name: local-state
          hostPath:
            path: {{ $stateDir }}
            type: DirectoryOrCreate
        {{- range $localPools }}
        {{- if and .path (not (hasPrefix (printf "%s/" $stateDir) .path)) }}
        # Directory, not DirectoryOrCreate: a data disk that is not mounted yet must keep
        # the pod from starting, not become a pool on the root disk.
        - name: pool-{{ .name }}
          hostPath:
            path: {{ .path }}
            type: Directory
        {{- end }}
        {{- end }}
        {{- end }}
        {{- if $nfs.enabled }}
        - name: nfs-socket-dir
          hostPath:
            path: {{ include "berth.socketDir" (dict "ctx" . "driver" $nfs.driverName) }}
            type: DirectoryOrCreate
        - name: nfs-config
          configMap:
            name: {{ $fullname }}-nfs-config
        - name: nfs-state
          hostPath:
            path: {{ trimSuffix "/" $nfs.stateDir }}
            type: DirectoryOrCreate
        {{- end }}
        {{- with .Values.node.extraVolumes }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
{{- end }}
{{- end }}
