// Command factorysim runs the Talos Image Factory simulator (pkg/imagefactory/factorysim) as a
// standalone process for the lab and manual testing. It only listens on loopback addresses.
//
//	factorysim --listen 127.0.0.1:8095 --versions v1.14.0,v1.14.1 --error-rate 0.1 --seed 7
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/pkg/imagefactory/factorysim"
)

// defaultListen is a fixed loopback port so lab scripts can find the simulator without
// passing URLs around.
const defaultListen = "127.0.0.1:8095"

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "factorysim:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("factorysim", flag.ContinueOnError)
	listen := fs.String("listen", defaultListen, "loopback address to listen on (non-loopback addresses are refused)")
	versions := fs.String("versions", strings.Join(factorysim.DefaultVersions, ","), "comma-separated Talos versions the factory knows")
	seed := fs.Uint64("seed", 1, "seed of the fault-injection RNG")
	errorRate := fs.Float64("error-rate", 0, "fraction (0..1) of requests failed with --error-status")
	errorStatus := fs.Int("error-status", 503, "HTTP status of injected failures")
	latency := fs.Duration("latency", 0, "latency added to every request")
	faultPath := fs.String("fault-path", "/", "path prefix the injected faults apply to")

	if err := fs.Parse(args); err != nil {
		return err
	}

	if *errorRate < 0 || *errorRate > 1 {
		return errors.New("--error-rate must be between 0 and 1")
	}

	sim := factorysim.New(factorysim.Options{Versions: strings.Split(*versions, ","), Seed: *seed})

	if *errorRate > 0 || *latency > 0 {
		sim.SetFault(*faultPath, factorysim.Fault{Latency: *latency, ErrorRate: *errorRate, Status: *errorStatus})
	}

	if err := sim.StartOn(*listen); err != nil {
		return err
	}

	log.Printf("image factory simulator listening on %s", sim.URL())

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	<-ctx.Done()

	log.Printf("shutting down")

	done := make(chan error, 1)
	go func() { done <- sim.Close() }()

	select {
	case err := <-done:
		return err
	case <-time.After(5 * time.Second):
		return errors.New("shutdown timed out")
	}
}
