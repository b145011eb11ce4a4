// Command healthmonitor reports the condition a CSI driver gives its volumes as events on
// their claims, in place of csi-external-health-monitor-controller, which the module proxy
// this project builds from does not serve (docs/kubernetes-e2e.md). It takes the flags the
// berth chart passes to that sidecar and keeps to the behaviour they promise:
//
//   - every --list-volumes-interval, when the driver offers LIST_VOLUMES, it pages through
//     ListVolumes; otherwise every --monitor-interval it calls ControllerGetVolume for each
//     volume. Either way each round of calls has --timeout.
//   - for each bound PersistentVolume of the driver that the driver reported, a Warning
//     event VolumeConditionAbnormal with the driver's message goes to the bound claim;
//     when a volume it warned about is normal again, a Normal event VolumeConditionNormal.
//     Volumes the driver did not list are skipped, so a copy running beside each node's
//     driver reports only that node's volumes.
//   - --http-endpoint serves /healthz (the driver's socket answers) and, with
//     --leader-election, /healthz/leader-election; only the leader checks volumes.
//
// It lists PersistentVolumes and claims at each round rather than keeping informers, and
// remembers the claims it warned about in memory only: after a restart it sends no
// recovery event for a warning of its previous life.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net/http"
	"os"
	"os/signal"
	"regexp"
	"syscall"
	"time"

	csi "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	"k8s.io/client-go/tools/record"

	"berth.local/e2e/standins/internal/csiconn"
)

var version = "unknown"

const (
	reasonAbnormal  = "VolumeConditionAbnormal"
	reasonNormal    = "VolumeConditionNormal"
	recoveryMessage = "The Volume returns to the healthy state"
)

// condition is what the driver said about one volume.
type condition struct {
	abnormal bool
	message  string
}

type monitor struct {
	driver     string
	controller csi.ControllerClient
	list       bool
	timeout    time.Duration
	client     kubernetes.Interface
	recorder   record.EventRecorder
	// Claims warned about and not yet seen normal again.
	warned map[types.UID]bool
}

func main() {
	csiAddress := flag.String("csi-address", "/csi/csi.sock", "the driver's socket")
	timeout := flag.Duration("timeout", 15*time.Second, "deadline of each round of CSI calls")
	monitorInterval := flag.Duration("monitor-interval", time.Minute, "interval of ControllerGetVolume rounds (drivers without LIST_VOLUMES)")
	listInterval := flag.Duration("list-volumes-interval", 5*time.Minute, "interval of ListVolumes rounds")
	httpEndpoint := flag.String("http-endpoint", "", "address of /healthz and /healthz/leader-election (empty: none)")
	leaderElection := flag.Bool("leader-election", false, "check volumes only while holding the lease")
	leaseNamespace := flag.String("leader-election-namespace", "", "namespace of the lease (default: this pod's)")
	showVersion := flag.Bool("version", false, "print the version and exit")
	flag.Parse()
	if *showVersion {
		fmt.Println(os.Args[0], version)
		return
	}

	conn, err := csiconn.Dial(*csiAddress)
	if err != nil {
		log.Fatalf("dial %s: %v", *csiAddress, err)
	}
	driver, caps := driverInfo(conn)
	if !caps[csi.ControllerServiceCapability_RPC_VOLUME_CONDITION] ||
		!(caps[csi.ControllerServiceCapability_RPC_LIST_VOLUMES] || caps[csi.ControllerServiceCapability_RPC_GET_VOLUME]) {
		log.Fatalf("driver %s offers no VOLUME_CONDITION with LIST_VOLUMES or GET_VOLUME: nothing to monitor", driver)
	}

	config, err := rest.InClusterConfig()
	if err != nil {
		log.Fatalf("in-cluster config: %v", err)
	}
	client := kubernetes.NewForConfigOrDie(config)
	broadcaster := record.NewBroadcaster()
	broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: client.CoreV1().Events("")})
	defer broadcaster.Shutdown()
	m := &monitor{
		driver:     driver,
		controller: csi.NewControllerClient(conn),
		list:       caps[csi.ControllerServiceCapability_RPC_LIST_VOLUMES],
		timeout:    *timeout,
		client:     client,
		recorder: broadcaster.NewRecorder(scheme.Scheme,
			corev1.EventSource{Component: "csi-pv-monitor-controller-" + driver}),
		warned: map[types.UID]bool{},
	}
	interval := *monitorInterval
	if m.list {
		interval = *listInterval
	}

	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer cancel()
	identity := csi.NewIdentityClient(conn)
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		if _, err := csiconn.Call(time.Second, func(ctx context.Context) (*csi.ProbeResponse, error) {
			return identity.Probe(ctx, &csi.ProbeRequest{})
		}); err != nil {
			http.Error(w, "Probe: "+err.Error(), http.StatusInternalServerError)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	watchdog := leaderelection.NewLeaderHealthzAdaptor(20 * time.Second)
	if *leaderElection {
		mux.HandleFunc("/healthz/leader-election", func(w http.ResponseWriter, r *http.Request) {
			if err := watchdog.Check(r); err != nil {
				http.Error(w, err.Error(), http.StatusInternalServerError)
				return
			}
			fmt.Fprintln(w, "ok")
		})
	}
	if *httpEndpoint != "" {
		go func() { log.Fatal(http.ListenAndServe(*httpEndpoint, mux)) }()
	}

	how := "ControllerGetVolume"
	if m.list {
		how = "ListVolumes"
	}
	log.Printf("healthmonitor %s: driver %s, %s every %s (timeout %s), leader election %v",
		version, driver, how, interval, *timeout, *leaderElection)
	run := func(ctx context.Context) {
		for {
			m.round(ctx)
			select {
			case <-ctx.Done():
				return
			case <-time.After(interval):
			}
		}
	}
	if !*leaderElection {
		run(ctx)
		return
	}
	electLeader(ctx, client, *leaseNamespace, driver, watchdog, run)
}

// driverInfo asks the driver for its name and controller capabilities, until it answers.
func driverInfo(conn *grpc.ClientConn) (string, map[csi.ControllerServiceCapability_RPC_Type]bool) {
	for {
		info, err := csiconn.Call(10*time.Second, func(ctx context.Context) (*csi.GetPluginInfoResponse, error) {
			return csi.NewIdentityClient(conn).GetPluginInfo(ctx, &csi.GetPluginInfoRequest{})
		})
		if err == nil {
			var resp *csi.ControllerGetCapabilitiesResponse
			resp, err = csiconn.Call(10*time.Second, func(ctx context.Context) (*csi.ControllerGetCapabilitiesResponse, error) {
				return csi.NewControllerClient(conn).ControllerGetCapabilities(ctx, &csi.ControllerGetCapabilitiesRequest{})
			})
			if err == nil {
				caps := map[csi.ControllerServiceCapability_RPC_Type]bool{}
				for _, c := range resp.GetCapabilities() {
					caps[c.GetRpc().GetType()] = true
				}
				return info.GetName(), caps
			}
		}
		log.Printf("driver not answering: %v (retrying)", err)
		time.Sleep(2 * time.Second)
	}
}

// electLeader runs `run` while this pod holds the lease external-health-monitor-leader-<driver>
// and exits when it loses it, so that a restart competes again.
func electLeader(ctx context.Context, client kubernetes.Interface, namespace, driver string,
	watchdog *leaderelection.HealthzAdaptor, run func(context.Context)) {
	if namespace == "" {
		ns, err := os.ReadFile("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
		if err != nil {
			log.Fatalf("--leader-election-namespace not set and no service account namespace: %v", err)
		}
		namespace = string(ns)
	}
	id, err := os.Hostname()
	if err != nil {
		log.Fatalf("hostname: %v", err)
	}
	lease := "external-health-monitor-leader-" + regexp.MustCompile(`[^a-zA-Z0-9-]`).ReplaceAllString(driver, "-")
	leaderelection.RunOrDie(ctx, leaderelection.LeaderElectionConfig{
		Lock: &resourcelock.LeaseLock{
			LeaseMeta:  metav1.ObjectMeta{Namespace: namespace, Name: lease},
			Client:     client.CoordinationV1(),
			LockConfig: resourcelock.ResourceLockConfig{Identity: id},
		},
		LeaseDuration:   15 * time.Second,
		RenewDeadline:   10 * time.Second,
		RetryPeriod:     5 * time.Second,
		ReleaseOnCancel: true,
		WatchDog:        watchdog,
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: run,
			OnStoppedLeading: func() {
				if ctx.Err() == nil {
					log.Fatalf("lost lease %s/%s", namespace, lease)
				}
			},
		},
	})
}

// round checks every bound volume of the driver once.
func (m *monitor) round(ctx context.Context) {
	pvs, err := m.client.CoreV1().PersistentVolumes().List(ctx, metav1.ListOptions{})
	if err != nil {
		log.Printf("list PersistentVolumes: %v", err)
		return
	}
	var listed map[string]condition
	if m.list {
		if listed, err = m.listVolumes(ctx); err != nil {
			log.Printf("ListVolumes: %v", err)
			return
		}
	}
	for i := range pvs.Items {
		pv := &pvs.Items[i]
		if pv.Spec.CSI == nil || pv.Spec.CSI.Driver != m.driver || pv.Status.Phase != corev1.VolumeBound || pv.Spec.ClaimRef == nil {
			continue
		}
		var c condition
		if m.list {
			var ok bool
			if c, ok = listed[pv.Spec.CSI.VolumeHandle]; !ok {
				continue
			}
		} else if c, err = m.getVolume(ctx, pv.Spec.CSI.VolumeHandle); err != nil {
			log.Printf("ControllerGetVolume %s (PV %s): %v", pv.Spec.CSI.VolumeHandle, pv.Name, err)
			continue
		}
		ref := pv.Spec.ClaimRef
		pvc, err := m.client.CoreV1().PersistentVolumeClaims(ref.Namespace).Get(ctx, ref.Name, metav1.GetOptions{})
		if err != nil {
			log.Printf("claim %s/%s of PV %s: %v", ref.Namespace, ref.Name, pv.Name, err)
			continue
		}
		switch {
		case c.abnormal:
			log.Printf("PV %s (claim %s/%s) abnormal: %s", pv.Name, pvc.Namespace, pvc.Name, c.message)
			m.recorder.Event(pvc, corev1.EventTypeWarning, reasonAbnormal, c.message)
			m.warned[pvc.UID] = true
		case m.warned[pvc.UID]:
			log.Printf("PV %s (claim %s/%s) normal again", pv.Name, pvc.Namespace, pvc.Name)
			m.recorder.Event(pvc, corev1.EventTypeNormal, reasonNormal, recoveryMessage)
			delete(m.warned, pvc.UID)
		}
	}
}

// listVolumes pages through ListVolumes, all pages within one timeout.
func (m *monitor) listVolumes(ctx context.Context) (map[string]condition, error) {
	ctx, cancel := context.WithTimeout(ctx, m.timeout)
	defer cancel()
	found := map[string]condition{}
	token := ""
	for {
		resp, err := m.controller.ListVolumes(ctx, &csi.ListVolumesRequest{StartingToken: token})
		if err != nil {
			return nil, err
		}
		for _, e := range resp.GetEntries() {
			vc := e.GetStatus().GetVolumeCondition()
			found[e.GetVolume().GetVolumeId()] = condition{abnormal: vc.GetAbnormal(), message: vc.GetMessage()}
		}
		if token = resp.GetNextToken(); token == "" {
			return found, nil
		}
	}
}

func (m *monitor) getVolume(ctx context.Context, id string) (condition, error) {
	ctx, cancel := context.WithTimeout(ctx, m.timeout)
	defer cancel()
	resp, err := m.controller.ControllerGetVolume(ctx, &csi.ControllerGetVolumeRequest{VolumeId: id})
	if err != nil {
		return condition{}, err
	}
	vc := resp.GetStatus().GetVolumeCondition()
	return condition{abnormal: vc.GetAbnormal(), message: vc.GetMessage()}, nil
}
