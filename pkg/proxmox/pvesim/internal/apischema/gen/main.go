// Command gen derives pvesim's compact route table from the official PVE API
// schemas (pve-docs apidata). Run via `go generate ./pkg/proxmox/pvesim/...`.
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/pkg/proxmox/pvesim/internal/apischema"
)

func main() {
	p84 := flag.String("pve84", "", "path to pve-8.4-apidata.json")
	p91 := flag.String("pve91", "", "path to pve-9.1-apidata.json")
	out := flag.String("out", "table.json", "output file")
	flag.Parse()
	if err := run(*p84, *p91, *out); err != nil {
		fmt.Fprintln(os.Stderr, "gen:", err)
		os.Exit(1)
	}
}

func run(p84, p91, out string) error {
	b84, err := os.ReadFile(p84)
	if err != nil {
		return err
	}
	b91, err := os.ReadFile(p91)
	if err != nil {
		return err
	}
	table, err := apischema.Build(b84, b91)
	if err != nil {
		return err
	}
	return os.WriteFile(out, table, 0o644)
}
