// Command livenessprobe serves /healthz for a CSI driver by calling its Probe RPC, in place
// of the livenessprobe sidecar, which the module proxy this project builds from does not
// serve (docs/kubernetes-e2e.md). It takes the flags the berth chart passes to livenessprobe.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net/http"
	"os"
	"time"

	csi "github.com/container-storage-interface/spec/lib/go/csi"

	"berth.local/e2e/standins/internal/csiconn"
)

var version = "unknown"

func main() {
	csiAddress := flag.String("csi-address", "/csi/csi.sock", "the driver's socket")
	httpEndpoint := flag.String("http-endpoint", ":9808", "address of /healthz")
	probeTimeout := flag.Duration("probe-timeout", time.Second, "deadline of each Probe call")
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
	identity := csi.NewIdentityClient(conn)
	http.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		resp, err := csiconn.Call(*probeTimeout, func(ctx context.Context) (*csi.ProbeResponse, error) {
			return identity.Probe(ctx, &csi.ProbeRequest{})
		})
		switch {
		case err != nil:
			http.Error(w, "Probe: "+err.Error(), http.StatusInternalServerError)
		// A driver that leaves `ready` unset is ready (CSI spec).
		case resp.GetReady() != nil && !resp.GetReady().GetValue():
			http.Error(w, "driver not ready", http.StatusInternalServerError)
		default:
			fmt.Fprintln(w, "ok")
		}
	})
	log.Printf("livenessprobe %s: %s -> /healthz on %s", version, *csiAddress, *httpEndpoint)
	log.Fatal(http.ListenAndServe(*httpEndpoint, nil))
}
