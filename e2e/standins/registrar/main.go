// Command registrar registers a CSI driver with the kubelet through the kubelet's plugin
// registration socket, in place of csi-node-driver-registrar, which the module proxy this
// project builds from does not serve (docs/kubernetes-e2e.md). It takes the flags the
// berth chart passes to node-driver-registrar.
//
// At start it asks the driver for its name (GetPluginInfo), then serves the kubelet's
// Registration service on <registration-dir>/<driver>-reg.sock: GetInfo answers with the
// driver's socket path as the kubelet sees it. /healthz answers 200 while that socket
// exists and the kubelet has not refused the driver.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"time"

	csi "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	registration "k8s.io/kubelet/pkg/apis/pluginregistration/v1"

	"berth.local/e2e/standins/internal/csiconn"
)

var version = "unknown"

type server struct {
	registration.UnimplementedRegistrationServer
	driver, endpoint string
	refused          atomic.Pointer[string]
}

func (s *server) GetInfo(context.Context, *registration.InfoRequest) (*registration.PluginInfo, error) {
	return &registration.PluginInfo{
		Type:              registration.CSIPlugin,
		Name:              s.driver,
		Endpoint:          s.endpoint,
		SupportedVersions: []string{"1.0.0"},
	}, nil
}

func (s *server) NotifyRegistrationStatus(_ context.Context, st *registration.RegistrationStatus) (*registration.RegistrationStatusResponse, error) {
	if st.PluginRegistered {
		log.Printf("kubelet registered driver %s", s.driver)
		s.refused.Store(nil)
	} else {
		log.Printf("kubelet refused driver %s: %s", s.driver, st.Error)
		s.refused.Store(&st.Error)
	}
	return &registration.RegistrationStatusResponse{}, nil
}

func main() {
	csiAddress := flag.String("csi-address", "/csi/csi.sock", "the driver's socket inside this container")
	kubeletPath := flag.String("kubelet-registration-path", "", "the driver's socket as the kubelet sees it")
	regDir := flag.String("plugin-registration-path", "/registration", "the kubelet's plugin registration directory as mounted here")
	httpEndpoint := flag.String("http-endpoint", "", "address of /healthz (empty: none)")
	showVersion := flag.Bool("version", false, "print the version and exit")
	flag.Parse()
	if *showVersion {
		fmt.Println(os.Args[0], version)
		return
	}
	if *kubeletPath == "" {
		log.Fatal("--kubelet-registration-path is required")
	}

	conn, err := csiconn.Dial(*csiAddress)
	if err != nil {
		log.Fatalf("dial %s: %v", *csiAddress, err)
	}
	// The driver may start after this container: ask until it answers.
	var info *csi.GetPluginInfoResponse
	for {
		info, err = csiconn.Call(10*time.Second, func(ctx context.Context) (*csi.GetPluginInfoResponse, error) {
			return csi.NewIdentityClient(conn).GetPluginInfo(ctx, &csi.GetPluginInfoRequest{})
		})
		if err == nil {
			break
		}
		log.Printf("GetPluginInfo on %s: %v (retrying)", *csiAddress, err)
		time.Sleep(2 * time.Second)
	}
	conn.Close()

	s := &server{driver: info.Name, endpoint: *kubeletPath}
	socket := filepath.Join(*regDir, info.Name+"-reg.sock")
	if err := os.Remove(socket); err != nil && !errors.Is(err, os.ErrNotExist) {
		log.Fatalf("remove stale %s: %v", socket, err)
	}
	lis, err := net.Listen("unix", socket)
	if err != nil {
		log.Fatalf("listen on %s: %v", socket, err)
	}
	g := grpc.NewServer()
	registration.RegisterRegistrationServer(g, s)
	log.Printf("registrar %s: driver %s, kubelet endpoint %s, registration socket %s", version, s.driver, s.endpoint, socket)

	if *httpEndpoint != "" {
		http.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
			if _, err := os.Stat(socket); err != nil {
				http.Error(w, err.Error(), http.StatusInternalServerError)
				return
			}
			if reason := s.refused.Load(); reason != nil {
				http.Error(w, "kubelet refused the driver: "+*reason, http.StatusInternalServerError)
				return
			}
			fmt.Fprintln(w, "ok")
		})
		go func() { log.Fatal(http.ListenAndServe(*httpEndpoint, nil)) }()
	}

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-stop
		// The kubelet unregisters a driver whose registration socket disappears.
		g.Stop()
		os.Remove(socket)
		os.Exit(0)
	}()
	if err := g.Serve(lis); err != nil {
		log.Fatalf("serve: %v", err)
	}
}
