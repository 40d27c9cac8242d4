// Command pvesim runs the Proxmox VE API simulator on a loopback address so
// the provider (or curl) can be developed without hardware.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/pkg/proxmox/pvesim"
)

func main() {
	if err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return
		}
		fmt.Fprintln(os.Stderr, "pvesim:", err)
		os.Exit(1)
	}
}

const usageHeader = `Usage: pvesim [flags]

Serves a simulated Proxmox VE cluster's /api2/json on a loopback address.

Profiles (--profile, or "profile:" in the --config file; the flag wins):
  fast       (default) for unit tests: every window exists, but is short.
             TimeScale 0.001: 10 s of Proxmox time take 10 ms.
  realistic  for the lab, "make demo" and the e2e suite: the order of events
             and every window as on Proxmox VE (create window with lock: create,
             pvestatd's status tick, guest shutdown, HA CRM/LRM cycle, 595 after
             ARP gives up, import at 40 MiB/s), with Proxmox time compressed by
             TimeScale 0.2: the 10 s status tick takes 2 s, a 1.2 GiB image
             import ~31 Proxmox s = ~6 s, a task's base time 1 s = 200 ms.
Explicit durations in the config file (taskDuration, statusInterval,
offlineDelay, importThroughput) override the profile's. See docs/pvesim.md.

Flags:
`

func run(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("pvesim", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), usageHeader)
		fs.PrintDefaults()
	}
	listen := fs.String("listen", "127.0.0.1:8006", "loopback address to listen on (non-loopback addresses are refused)")
	cfgPath := fs.String("config", "", "YAML config file (profile, nodes, storages, tokens, roles, timeScale, taskDuration, ...)")
	useTLS := fs.Bool("tls", false, "serve HTTPS with a generated self-signed certificate")
	certOut := fs.String("cert-out", "pvesim-ca.pem", "with --tls: where to write the certificate for clients to trust")
	profile := fs.String("profile", "", `timing profile: "fast" (default) or "realistic" (overrides the config file)`)
	timeScale := fs.Float64("time-scale", 0, "wall-clock seconds per simulated Proxmox second (default: the profile's, 0.001 fast, 0.2 realistic)")
	statusInterval := fs.Duration("status-interval", 0, "period of the simulated pvestatd status tick (default: 10s × time scale)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var cfg pvesim.Config
	if *cfgPath != "" {
		c, err := pvesim.LoadConfigFile(*cfgPath)
		if err != nil {
			return err
		}
		cfg = c
	}
	if *profile != "" {
		cfg.Profile = *profile
	}
	if *timeScale != 0 {
		cfg.TimeScale = *timeScale
	}
	if *statusInterval != 0 {
		cfg.StatusInterval = pvesim.Duration(*statusInterval)
	}
	s, err := pvesim.New(cfg)
	if err != nil {
		return err
	}
	if err := s.ListenAndServe(*listen, *useTLS); err != nil {
		s.Close()
		return err
	}
	defer s.Close()
	if *useTLS {
		if err := os.WriteFile(*certOut, s.CAPEM(), 0o644); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "CA certificate: %s\n", *certOut)
	}
	eff := s.Config()
	fmt.Fprintf(stdout, "URL:   %s\n", s.URL())
	fmt.Fprintf(stdout, "Profile: %s (time scale %g, task %s, status tick %s)\n", eff.Profile, eff.TimeScale,
		time.Duration(eff.TaskDuration), time.Duration(eff.StatusInterval))
	// The token secret is printed deliberately: it is the simulator's own
	// credential, needed to talk to it, and never a real one.
	for _, t := range eff.Tokens {
		fmt.Fprintf(stdout, "Token: PVEAPIToken=%s=%s\n", t.ID, t.Secret)
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	<-sig
	return nil
}
