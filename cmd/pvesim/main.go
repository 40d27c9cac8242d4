// Command pvesim runs the Proxmox VE API simulator on a loopback address so
// the provider (or curl) can be developed without hardware.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/pkg/proxmox/pvesim"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "pvesim:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("pvesim", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:8006", "loopback address to listen on (non-loopback addresses are refused)")
	cfgPath := fs.String("config", "", "YAML config file (nodes, storages, tokens, roles, taskDuration, ...)")
	useTLS := fs.Bool("tls", false, "serve HTTPS with a generated self-signed certificate")
	certOut := fs.String("cert-out", "pvesim-ca.pem", "with --tls: where to write the certificate for clients to trust")
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
	s, err := pvesim.New(cfg)
	if err != nil {
		return err
	}
	if err := s.ListenAndServe(*listen, *useTLS); err != nil {
		return err
	}
	defer s.Close()
	if *useTLS {
		if err := os.WriteFile(*certOut, s.CAPEM(), 0o644); err != nil {
			return err
		}
		fmt.Printf("CA certificate: %s\n", *certOut)
	}
	fmt.Printf("URL:   %s\n", s.URL())
	// The token secret is printed deliberately: it is the simulator's own
	// credential, needed to talk to it, and never a real one.
	for _, t := range s.Config().Tokens {
		fmt.Printf("Token: PVEAPIToken=%s=%s\n", t.ID, t.Secret)
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	<-sig
	return nil
}
