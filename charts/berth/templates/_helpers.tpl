{{/*
Names, labels and the small pieces every template shares.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "berth.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The prefix of every object name: fullnameOverride, else "<release>-<name>", else just the
release name when it already contains the chart name. Kept to 40 characters so that
"<prefix>-local-controller" still fits the 63-character label limit.
*/}}
{{- define "berth.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "berth.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels that select one component's pods: call with (dict "ctx" $ "component" "node"). */}}
{{- define "berth.selectorLabels" -}}
app.kubernetes.io/name: {{ include "berth.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* The recommended labels: call with (dict "ctx" $ "component" "node"). */}}
{{- define "berth.labels" -}}
helm.sh/chart: {{ include "berth.chart" .ctx }}
{{ include "berth.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: berth
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
{{- end }}

{{/* An image reference, repository:tag or, with a digest, repository:tag@digest (the
runtime pulls the digest; the tag stays for people reading the manifest). Call with a
map of repository, tag and digest. */}}
{{- define "berth.imageRef" -}}
{{- printf "%s:%s" .repository .tag }}
{{- with .digest }}@{{ . }}{{ end }}
{{- end }}

{{/* The berth image reference; the tag defaults to the chart's appVersion. */}}
{{- define "berth.image" -}}
{{- include "berth.imageRef" (dict "repository" .Values.image.repository "tag" (default .Chart.AppVersion .Values.image.tag) "digest" .Values.image.digest) }}
{{- end }}

{{/* A sidecar image reference: call with the sidecars.<name> map. */}}
{{- define "berth.sidecarImage" -}}
{{- include "berth.imageRef" . }}
{{- end }}

{{/* The pools each driver serves, by type. Output is YAML: {pools: [...]}. */}}
{{- define "berth.localPools" -}}
{{- $pools := list }}
{{- range .Values.pools }}
{{- if has .type (list "hostpath" "block" "device") }}
{{- $pools = append $pools . }}
{{- end }}
{{- end }}
{{- toYaml (dict "pools" $pools) }}
{{- end }}

{{/*
The local driver's configured pools: its own, then the nfs pools of snapshots.copyPools,
marked copiesOnly (snapshot copies go there; no volume is made in them).
*/}}
{{- define "berth.localConfigPools" -}}
{{- $pools := (include "berth.localPools" . | fromYaml).pools }}
{{- $copyPools := .Values.snapshots.copyPools | default list }}
{{- range .Values.pools }}
{{- if and (eq .type "nfs") (has .name $copyPools) }}
{{- $pools = append $pools (merge (dict "copiesOnly" true) (omit . "ephemeral")) }}
{{- end }}
{{- end }}
{{- toYaml (dict "pools" $pools) }}
{{- end }}

{{- define "berth.nfsPools" -}}
{{- $pools := list }}
{{- range .Values.pools }}
{{- if eq .type "nfs" }}
{{- $pools = append $pools . }}
{{- end }}
{{- end }}
{{- toYaml (dict "pools" $pools) }}
{{- end }}

{{/*
The directory on the host holding a driver's socket: call with (dict "ctx" $ "driver" NAME).
*/}}
{{- define "berth.socketDir" -}}
{{- printf "%s/plugins/%s" (trimSuffix "/" .ctx.Values.kubeletDir) .driver }}
{{- end }}

{{- define "berth.registrationDir" -}}
{{- printf "%s/plugins_registry" (trimSuffix "/" .Values.kubeletDir) }}
{{- end }}

{{/*
"true" when the cluster serves VolumeSnapshotClass (or snapshots.createClasses=always):
without the VolumeSnapshot CRDs an install that renders the classes fails with "no
matches for kind VolumeSnapshotClass".
*/}}
{{- define "berth.snapshotAPI" -}}
{{- if or (eq .Values.snapshots.createClasses "always") (.Capabilities.APIVersions.Has "snapshot.storage.k8s.io/v1/VolumeSnapshotClass") }}true{{ else }}false{{ end }}
{{- end }}

{{/* Whether to render VolumeGroupSnapshotClasses: as berth.snapshotAPI, for the group API. */}}
{{- define "berth.groupSnapshotAPI" -}}
{{- if or (eq .Values.snapshots.createClasses "always") (.Capabilities.APIVersions.Has "groupsnapshot.storage.k8s.io/v1/VolumeGroupSnapshotClass") }}true{{ else }}false{{ end }}
{{- end }}

{{/* The DaemonSet runs in the host network when asked, and always with NFS mounts. */}}
{{- define "berth.node.hostNetwork" -}}
{{- if or .Values.node.hostNetwork .Values.nfs.enabled }}true{{ else }}false{{ end }}
{{- end }}

{{/*
The berth container's arguments: call with
(dict "ctx" $ "mode" "all" "driver" NAME "metricsPort" PORT "health" HOST:PORT).
The socket is always /csi/csi.sock inside the container; the health address serves the
kubelet's probes (berth.probes) whether or not metrics are on.
*/}}
{{- define "berth.serveArgs" -}}
- serve
- --endpoint=unix:///csi/csi.sock
- --node-id=$(NODE_NAME)
- --config=/etc/berth/config.yaml
- --mode={{ .mode }}
- --driver-name={{ .driver }}
- --log-level={{ .ctx.Values.logLevel }}
- --log-format={{ .ctx.Values.logFormat }}
- --drain-seconds={{ .ctx.Values.drainSeconds }}
- --health-address={{ .health }}
{{- if .ctx.Values.metrics.enabled }}
- --metrics-address={{ include "berth.listen" (dict "address" .ctx.Values.metrics.bindAddress "port" .metricsPort) }}
{{- end }}
{{- end }}

{{/*
HOST:PORT for a listen flag: call with (dict "address" ADDR "port" PORT). An empty address
gives ":PORT" (every address, for Go's listeners); an IPv6 address gets brackets.
*/}}
{{- define "berth.listen" -}}
{{- if not .address }}:{{ .port }}
{{- else if contains ":" .address }}[{{ .address }}]:{{ .port }}
{{- else }}{{ .address }}:{{ .port }}
{{- end }}
{{- end }}

{{/*
Where the node pod's health endpoints listen: on the host network only on
node.healthAddress (loopback by default), since every address of the pod is the host's;
otherwise on every address of the pod, which is its own.
*/}}
{{- define "berth.node.healthAddress" -}}
{{- if eq (include "berth.node.hostNetwork" .) "true" }}{{ .Values.node.healthAddress }}{{ end }}
{{- end }}

{{/*
An HTTP probe of a port in the node pod: call with (dict "ctx" $ "port" NAME "path" PATH).
On the host network the kubelet asks node.healthAddress, where the endpoint listens.
*/}}
{{- define "berth.node.httpGet" -}}
httpGet:
  path: {{ .path }}
  port: {{ .port }}
  {{- with include "berth.node.healthAddress" .ctx }}
  host: {{ . | quote }}
  {{- end }}
{{- end }}

{{/*
One container from its YAML text, with the user's additions from values: call with
(dict "spec" TEXT "over" MAP), MAP being node.containers.<name> or
controller.containers.<name> (or empty). extraArgs, extraEnv and extraVolumeMounts are
appended, resources replaces the chart's, securityContext is merged over the chart's.
*/}}
{{- define "berth.container" -}}
{{- $c := fromYaml .spec }}
{{- if hasKey $c "Error" }}
{{- fail (printf "berth chart bug: a container does not parse (%s):\n%s" $c.Error .spec) }}
{{- end }}
{{- $o := .over | default dict }}
{{- with $o.extraArgs }}{{ $_ := set $c "args" (concat ($c.args | default list) .) }}{{ end }}
{{- with $o.extraEnv }}{{ $_ := set $c "env" (concat ($c.env | default list) .) }}{{ end }}
{{- with $o.extraVolumeMounts }}{{ $_ := set $c "volumeMounts" (concat ($c.volumeMounts | default list) .) }}{{ end }}
{{- with $o.resources }}{{ $_ := set $c "resources" . }}{{ end }}
{{- with $o.securityContext }}{{ $_ := set $c "securityContext" (mergeOverwrite (deepCopy ($c.securityContext | default dict)) .) }}{{ end }}
{{- toYaml (list $c) }}
{{- end }}

{{/* Environment every container that needs the node name gets. */}}
{{- define "berth.nodeNameEnv" -}}
- name: NODE_NAME
  valueFrom:
    fieldRef:
      fieldPath: spec.nodeName
{{- end }}

{{- define "berth.podIdentityEnv" -}}
- name: NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
{{- end }}

{{/*
The probes every berth container gets, against its own --health-address: call with
(dict "port" NAME "host" ADDRESS-or-empty).
Liveness asks /healthz, which answers 200 while berth serves, also while a start finishes
work a restart interrupted (a copy may take minutes), and 503 once berth stops: a restart
can only help a berth that no longer answers at all. It must not ask CSI Probe, which
answers "not ready" during that work, so restarting would start the work over, forever.
Readiness asks /readyz, 200 once Probe answers ready: a node pod that is still recovering
is not ready and holds a DaemonSet rolling update (maxUnavailable) until it is.
*/}}
{{- define "berth.probes" -}}
livenessProbe:
  httpGet:
    path: /healthz
    port: {{ .port }}
    {{- with .host }}
    host: {{ . | quote }}
    {{- end }}
  initialDelaySeconds: 10
  timeoutSeconds: 3
  periodSeconds: 10
  failureThreshold: 5
readinessProbe:
  httpGet:
    path: /readyz
    port: {{ .port }}
    {{- with .host }}
    host: {{ . | quote }}
    {{- end }}
  timeoutSeconds: 3
  periodSeconds: 5
  failureThreshold: 3
{{- end }}

{{/* Security context of sidecars: no privilege, nothing written outside volumes. */}}
{{- define "berth.sidecarSecurityContext" -}}
securityContext:
  allowPrivilegeEscalation: false
  readOnlyRootFilesystem: true
  capabilities:
    drop: ["ALL"]
{{- end }}

{{/*
The securityContext of a node sidecar that needs only berth's socket and the API server:
with node.sidecarUser set it runs as that user, in the group berth gives its socket (see
berth.node.berthContainer). Call with the root context or a dict holding it as "ctx".
*/}}
{{- define "berth.node.sidecarSecurityContext" -}}
{{- $ctx := . }}
{{- if hasKey . "ctx" }}{{ $ctx = .ctx }}{{ end }}
{{- include "berth.sidecarSecurityContext" . }}
{{- with $ctx.Values.node.sidecarUser }}
  runAsNonRoot: true
  runAsUser: {{ . }}
  runAsGroup: {{ . }}
{{- end }}
{{- end }}

{{/*
The NFS pool the restore drill checks: drill.pool, or the only nfs pool when it is empty.
*/}}
{{- define "berth.drill.pool" -}}
{{- $nfs := (include "berth.nfsPools" . | fromYaml).pools }}
{{- if .Values.drill.pool }}{{ .Values.drill.pool }}{{ else if eq (len $nfs) 1 }}{{ (index $nfs 0).name }}{{ end }}
{{- end }}

{{/*
Checks that fail the install early with a reason, instead of a berth that refuses to
start or a StorageClass that can never provision.
*/}}
{{- define "berth.validate" -}}
{{- range $component := list "node" "controller" }}
{{- $grace := (index $.Values $component).terminationGracePeriodSeconds | int }}
{{- if lt $grace ($.Values.drainSeconds | int) }}
{{- fail (printf "berth: %s.terminationGracePeriodSeconds (%d) is shorter than drainSeconds (%d): the pod would be killed while berth still finishes calls" $component $grace ($.Values.drainSeconds | int)) }}
{{- end }}
{{- end }}
{{- if not (or .Values.local.enabled .Values.nfs.enabled) }}
{{- fail "berth: enable at least one driver (local.enabled or nfs.enabled)" }}
{{- end }}
{{- if and .Values.local.enabled .Values.nfs.enabled (eq .Values.local.driverName .Values.nfs.driverName) }}
{{- fail (printf "berth: local.driverName and nfs.driverName are both %q; each driver needs its own name" .Values.local.driverName) }}
{{- end }}
{{- range $driver := list "local" "nfs" }}
{{- $cfg := index $.Values $driver }}
{{- $socket := printf "%s/csi.sock" (include "berth.socketDir" (dict "ctx" $ "driver" $cfg.driverName)) }}
{{- if and $cfg.enabled (gt (len $socket) 107) }}
{{- fail (printf "berth: the kubelet reaches the %s driver at %s, %d bytes: a unix socket path must be at most 107; shorten kubeletDir or %s.driverName" $driver $socket (len $socket) $driver) }}
{{- end }}
{{- end }}
{{- $local := (include "berth.localPools" . | fromYaml).pools }}
{{- $nfs := (include "berth.nfsPools" . | fromYaml).pools }}
{{- range .Values.node.groups }}
{{- $group := . }}
{{- $seen := dict }}
{{- range .pools }}
{{- if hasKey $seen .name }}
{{- fail (printf "berth: node group %q has two pools named %q" $group.name .name) }}
{{- end }}
{{- $_ := set $seen .name true }}
{{- if .snapshotPool }}
{{- $snap := .snapshotPool }}
{{- $found := false }}
{{- range $group.pools }}{{ if and (eq .name $snap) (eq .type "block") }}{{ $found = true }}{{ end }}{{ end }}
{{- if not $found }}
{{- fail (printf "berth: node group %q, pool %q: snapshotPool %q must name a block pool of the group" $group.name .name $snap) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- $groupNames := dict }}
{{- range .Values.node.groups }}
{{- if hasKey $groupNames .name }}
{{- fail (printf "berth: two node groups named %q" .name) }}
{{- end }}
{{- $_ := set $groupNames .name true }}
{{- end }}
{{- if and .Values.local.enabled .Values.nfs.enabled (eq (trimSuffix "/" .Values.local.stateDir) (trimSuffix "/" .Values.nfs.stateDir)) }}
{{- fail "berth: local.stateDir and nfs.stateDir must differ: each driver keeps its own records" }}
{{- end }}
{{- range .Values.snapshots.copyPools }}
{{- $name := . }}
{{- $found := false }}
{{- range $nfs }}{{ if eq .name $name }}{{ $found = true }}{{ end }}{{ end }}
{{- if not $found }}
{{- fail (printf "berth: snapshots.copyPools names %q, which is not a pool of type nfs in `pools`" $name) }}
{{- end }}
{{- end }}
{{- range .Values.volumeSnapshotClasses }}
{{- if .copyTo }}
{{- if ne .driver "local" }}
{{- fail (printf "berth: VolumeSnapshotClass %s: copyTo is for the local driver's snapshots (nfs volumes are on the shared pool already)" .name) }}
{{- end }}
{{- if not (has .copyTo ($.Values.snapshots.copyPools | default list)) }}
{{- fail (printf "berth: VolumeSnapshotClass %s: copyTo %q must be one of snapshots.copyPools" .name .copyTo) }}
{{- end }}
{{- end }}
{{- end }}
{{- if and .Values.local.enabled (not $local) }}
{{- fail "berth: local.enabled needs at least one pool of type hostpath, block or device in `pools`" }}
{{- end }}
{{- if and .Values.nfs.enabled (not $nfs) }}
{{- fail "berth: nfs.enabled needs at least one pool of type nfs in `pools`" }}
{{- end }}
{{- if .Values.drill.enabled }}
{{- $drillPool := include "berth.drill.pool" . }}
{{- $copyPool := and .Values.local.enabled (has $drillPool (.Values.snapshots.copyPools | default list)) }}
{{- if not (or .Values.nfs.enabled $copyPool) }}
{{- fail "berth: drill.enabled needs nfs.enabled, or drill.pool among snapshots.copyPools: the restore drill checks the snapshot copies kept on an NFS pool" }}
{{- end }}
{{- if not $drillPool }}
{{- fail (printf "berth: drill.pool must name the NFS pool to drill: the nfs driver has %d pools" (len $nfs)) }}
{{- end }}
{{- $found := false }}
{{- range $nfs }}{{ if eq .name $drillPool }}{{ $found = true }}{{ end }}{{ end }}
{{- if not $found }}
{{- fail (printf "berth: drill.pool %q is not an nfs pool of `pools`" $drillPool) }}
{{- end }}
{{- end }}
{{- range $driver, $pools := dict "local" $local "nfs" $nfs }}
{{- $seen := dict }}
{{- range $pools }}
{{- if hasKey $seen .name }}
{{- fail (printf "berth: the %s driver has two pools named %q" $driver .name) }}
{{- end }}
{{- $_ := set $seen .name true }}
{{- end }}
{{- end }}
{{- range $local }}
{{- if .snapshotPool }}
{{- $snap := .snapshotPool }}
{{- $found := false }}
{{- range $local }}{{ if and (eq .name $snap) (eq .type "block") }}{{ $found = true }}{{ end }}{{ end }}
{{- if not $found }}
{{- fail (printf "berth: pool %q: snapshotPool %q must name a block pool" .name $snap) }}
{{- end }}
{{- end }}
{{- end }}
{{- $stateSub := printf "%s/state" (trimSuffix "/" .Values.local.stateDir) }}
{{- range (include "berth.allLocalPools" . | fromYaml).pools }}
{{- if and .path (or (eq (trimSuffix "/" .path) $stateSub) (hasPrefix (printf "%s/" $stateSub) .path)) }}
{{- fail (printf "berth: pool %q: path %s is inside berth's records directory %s" .name .path $stateSub) }}
{{- end }}
{{- end }}
{{- $allLocal := (include "berth.allLocalPools" . | fromYaml).pools }}
{{- range .Values.storageClasses }}
{{- $sc := . }}
{{- $pools := ternary $allLocal $nfs (eq .driver "local") }}
{{- if and (eq .driver "local") $.Values.local.enabled (not .pool) (gt (len $pools) 1) }}
{{- fail (printf "berth: StorageClass %s must set `pool`: the local driver has %d pools" .name (len $pools)) }}
{{- end }}
{{- if and (eq .driver "nfs") $.Values.nfs.enabled (not .pool) (gt (len $pools) 1) }}
{{- fail (printf "berth: StorageClass %s must set `pool`: the nfs driver has %d pools" .name (len $pools)) }}
{{- end }}
{{- if and .pool (or (and (eq .driver "local") $.Values.local.enabled) (and (eq .driver "nfs") $.Values.nfs.enabled)) }}
{{- $found := dict }}
{{- range $pools }}
{{- if eq .name $sc.pool }}
{{- $found = . }}
{{- end }}
{{- end }}
{{- if not $found }}
{{- fail (printf "berth: StorageClass %s names pool %q, which the %s driver does not have" .name .pool .driver) }}
{{- end }}
{{- if and .fsType (not (has $found.type (list "block" "device"))) }}
{{- fail (printf "berth: StorageClass %s sets fsType, but pool %q is a %s pool; only block and device pools format filesystems" .name .pool $found.type) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/*
A ClusterRoleBinding of <fullname>-<role> to the components' ServiceAccounts: call with
(dict "ctx" $ "role" "provisioner" "components" (list "node" ...)).
*/}}
{{- define "berth.clusterRoleBinding" }}
{{- $fullname := include "berth.fullname" .ctx }}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: {{ $fullname }}-{{ .role }}
  labels:
    {{- include "berth.labels" (dict "ctx" .ctx "component" "rbac") | nindent 4 }}
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: {{ $fullname }}-{{ .role }}
subjects:
  {{- range .components }}
  - kind: ServiceAccount
    name: {{ $fullname }}-{{ . }}
    namespace: {{ $.ctx.Release.Namespace }}
  {{- end }}
{{- end }}

{{/*
The sidecars' metrics ports some pod serves, as a JSON list of {name, port}: name is the
container port's name (sc-<role>), port the Service's port. The node plugin's provisioner
and snapshotter (local driver), the controllers' resizer, the NFS controller's
provisioner, attacher and snapshotter, and the health monitor wherever it runs.
*/}}
{{- define "berth.metrics.sidecars" -}}
{{- $roles := list }}
{{- $snap := .Values.snapshots.enabled }}
{{- if or .Values.local.enabled .Values.nfs.enabled }}{{ $roles = append $roles "provisioner" }}{{ end }}
{{- if .Values.nfs.enabled }}{{ $roles = append $roles "attacher" }}{{ end }}
{{- if or .Values.nfs.enabled (and .Values.local.enabled .Values.local.expansion.enabled) }}{{ $roles = append $roles "resizer" }}{{ end }}
{{- if and $snap (or .Values.local.enabled .Values.nfs.enabled) }}{{ $roles = append $roles "snapshotter" }}{{ end }}
{{- $out := list }}
{{- range $roles }}{{ $out = append $out (dict "name" (printf "sc-%s" .) "port" (index $.Values.controller.ports .)) }}{{ end }}
{{- if include "berth.healthMonitor.components" . | fromJsonArray }}
{{- $out = append $out (dict "name" "sc-monitor" "port" .Values.controller.ports.healthMonitor) }}
{{- end }}
{{- toJson $out }}
{{- end }}

{{/*
The components that run csi-external-health-monitor-controller, as a JSON list: "node"
(one per node for the node-local driver, healthMonitor.nodeLocal) and "nfs-controller".
*/}}
{{- define "berth.healthMonitor.components" -}}
{{- $out := list }}
{{- if .Values.healthMonitor.enabled }}
{{- if and .Values.local.enabled .Values.healthMonitor.nodeLocal }}{{ $out = append $out "node" }}{{ end }}
{{- if .Values.nfs.enabled }}{{ $out = append $out "nfs-controller" }}{{ end }}
{{- end }}
{{- toJson $out }}
{{- end }}

{{/*
The node plugin DaemonSets, as a JSON list: the main one (name "") with the node-local
pools of `pools`, then one per node.groups entry. A node belongs to the first group whose
label it carries: each DaemonSet keeps off the nodes of the groups before it (the main
one off every group's), with NotIn terms added to its node affinity.
*/}}
{{- define "berth.node.groups" -}}
{{- $fullname := include "berth.fullname" . }}
{{- $node := .Values.node }}
{{- $groups := ternary $node.groups list .Values.local.enabled }}
{{- $out := list }}
{{- $excluded := list }}
{{- range $groups }}
{{- range $key, $value := .nodeSelector }}
{{- $excluded = append $excluded (dict "key" $key "operator" "NotIn" "values" (list $value)) }}
{{- end }}
{{- end }}
{{- $main := dict "name" "" "config" (printf "%s-local-config" $fullname) "nodeSelector" $node.nodeSelector "tolerations" $node.tolerations }}
{{- $_ := set $main "pools" (include "berth.localPools" . | fromYaml).pools }}
{{- $_ = set $main "affinity" (include "berth.node.excludeGroups" (dict "affinity" $node.affinity "terms" $excluded) | fromYaml) }}
{{- $out = append $out $main }}
{{- $before := list }}
{{- range $groups }}
{{- $g := dict "name" .name "config" (printf "%s-local-config-%s" $fullname .name) "pools" .pools }}
{{- $_ := set $g "nodeSelector" (merge (deepCopy .nodeSelector) $node.nodeSelector) }}
{{- $_ = set $g "tolerations" (.tolerations | default $node.tolerations) }}
{{- $_ = set $g "affinity" (include "berth.node.excludeGroups" (dict "affinity" (.affinity | default $node.affinity) "terms" $before) | fromYaml) }}
{{- $out = append $out $g }}
{{- range $key, $value := .nodeSelector }}
{{- $before = append $before (dict "key" $key "operator" "NotIn" "values" (list $value)) }}
{{- end }}
{{- end }}
{{- toJson $out }}
{{- end }}

{{/*
An affinity with NotIn expressions added to every required node selector term: call with
(dict "affinity" AFFINITY "terms" EXPRESSIONS). Output is YAML.
*/}}
{{- define "berth.node.excludeGroups" -}}
{{- $affinity := deepCopy (.affinity | default dict) }}
{{- if .terms }}
{{- $nodeAffinity := $affinity.nodeAffinity | default dict }}
{{- $required := $nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution | default dict }}
{{- $terms := $required.nodeSelectorTerms | default (list dict) }}
{{- $newTerms := list }}
{{- range $terms }}
{{- $term := deepCopy . }}
{{- $_ := set $term "matchExpressions" (concat ($term.matchExpressions | default list) $.terms) }}
{{- $newTerms = append $newTerms $term }}
{{- end }}
{{- $_ := set $required "nodeSelectorTerms" $newTerms }}
{{- $_ = set $nodeAffinity "requiredDuringSchedulingIgnoredDuringExecution" $required }}
{{- $_ = set $affinity "nodeAffinity" $nodeAffinity }}
{{- end }}
{{- toYaml $affinity }}
{{- end }}

{{/*
Every node-local pool of `pools` and of node.groups, each name once (the first
definition wins; the central controller only needs the names). Output is YAML: {pools: [...]}.
*/}}
{{- define "berth.allLocalPools" -}}
{{- $pools := (include "berth.localPools" . | fromYaml).pools }}
{{- $seen := dict }}
{{- range $pools }}{{ $_ := set $seen .name true }}{{ end }}
{{- range .Values.node.groups }}
{{- range .pools }}
{{- if not (hasKey $seen .name) }}
{{- $pools = append $pools . }}
{{- $_ := set $seen .name true }}
{{- end }}
{{- end }}
{{- end }}
{{- toYaml (dict "pools" $pools) }}
{{- end }}
