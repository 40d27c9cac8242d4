package apischema

import (
	"os"
	"path/filepath"
	"testing"

	. "github.com/onsi/gomega"

	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/internal/testenv"
)

// TestEmbeddedTableUpToDate regenerates the table from the schema files and
// compares it with the committed one (run `go generate` to fix).
func TestEmbeddedTableUpToDate(t *testing.T) {
	g := NewWithT(t)
	dir, ok, err := SchemaDir()
	g.Expect(err).NotTo(HaveOccurred())
	if !ok {
		testenv.SkipOrFail(t, "PVE schema files not found at %s; skipping (they live beside the repo in ../shared/pve-api)", dir)
	}
	b84, err := os.ReadFile(filepath.Join(dir, "pve-8.4-apidata.json"))
	g.Expect(err).NotTo(HaveOccurred())
	b91, err := os.ReadFile(filepath.Join(dir, "pve-9.1-apidata.json"))
	g.Expect(err).NotTo(HaveOccurred())
	want, err := Build(b84, b91)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(string(Embedded())).To(Equal(string(want)), "table.json is stale: run go generate ./pkg/proxmox/pvesim/...")
}

func TestIndexedParams(t *testing.T) {
	g := NewWithT(t)
	tbl, err := Load()
	g.Expect(err).NotTo(HaveOccurred())
	r := tbl.Find("POST", "/nodes/{node}/qemu")
	for _, tc := range []struct {
		name string
		ok   bool
	}{{"scsi0", true}, {"scsi30", true}, {"scsi31", false}, {"scsi01", false}, {"net3", true}, {"ide4", false}, {"memory", true}, {"bogus", false}} {
		_, ok := r.Param(tc.name)
		g.Expect(ok).To(Equal(tc.ok), tc.name)
	}
}
