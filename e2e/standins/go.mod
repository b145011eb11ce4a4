// Stand-ins for csi-node-driver-registrar and livenessprobe, the two sidecars the Go module
// proxy does not serve at any version this project could find (docs/kubernetes-e2e.md).
// scripts/kube-cluster builds them and the cluster's chart install uses them in place of
// the images the chart pins.
module berth.local/e2e/standins

go 1.26.0

require (
	github.com/container-storage-interface/spec v1.12.0
	google.golang.org/grpc v1.82.1
	k8s.io/kubelet v0.37.2
)

require (
	golang.org/x/net v0.57.0 // indirect
	golang.org/x/sys v0.47.0 // indirect
	golang.org/x/text v0.40.0 // indirect
	google.golang.org/genproto/googleapis/rpc v0.0.0-20260526163538-3dc84a4a5aaa // indirect
	google.golang.org/protobuf v1.36.12-0.20260120151049-f2248ac996af // indirect
)
