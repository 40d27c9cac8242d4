package proxmox

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	. "github.com/onsi/gomega"
)

// TestFormatsRefuseInjection: real names pass; every value that could end a property
// (`,`), start another (`=`), add a list element (`;`) or name another path passes none.
func TestFormatsRefuseInjection(t *testing.T) {
	checks := map[string]struct {
		check func(string) error
		good  []string
	}{
		"storage": {CheckStorageID, []string{"local", "local-lvm", "ceph_pool.1", "NFS2"}},
		"node":    {CheckNodeName, []string{"pve1", "PVE-node-02", "a"}},
		"pool":    {CheckPoolID, []string{"capi", "team.a", "k8s_prod-1"}},
		"bridge":  {CheckBridge, []string{"vmbr0", "vmbr0.100", "ovs_br-1"}},
		"tag":     {CheckTag, []string{"team-a", "k8s", "_x+y.z"}},
		"cpu":     {CheckCPUType, []string{"host", "x86-64-v2-AES", "EPYC-Rome-v4", "Opteron_G5", "custom-fast", "kvm64"}},
	}
	bad := []string{
		"", "local,cache=unsafe", "vmbr0,tag=5", "host,flags=+pcid", "a;b", "x=y", "../etc", "..", ".",
		"a/b", "a b", "a\nb", "local:iso", "\x00", "ümlaut",
	}
	for name, c := range checks {
		t.Run(name, func(t *testing.T) {
			g := NewWithT(t)
			for _, v := range c.good {
				g.Expect(c.check(v)).To(Succeed(), "%s %q", name, v)
			}
			for _, v := range bad {
				g.Expect(c.check(v)).NotTo(Succeed(), "%s %q", name, v)
			}
		})
	}
}

// TestVMSpecRefusesInjection: VMSpec.Validate, the last check before a request, refuses the
// same values, so a caller that skipped the webhooks still cannot inject a property.
func TestVMSpecRefusesInjection(t *testing.T) {
	base := func() VMSpec {
		return VMSpec{Node: "pve1", VMID: 100, Name: "vm", BootDisk: Disk{Storage: "local-lvm", SizeGiB: 8},
			NICs: []NIC{{Bridge: "vmbr0"}}}
	}
	g := NewWithT(t)
	ok := base()
	g.Expect(ok.Validate()).To(Succeed())
	for name, mutate := range map[string]func(*VMSpec){
		"node":   func(s *VMSpec) { s.Node = "pve1/../x" },
		"pool":   func(s *VMSpec) { s.Pool = "p,onboot=1" },
		"cpu":    func(s *VMSpec) { s.CPUType = "host,hidden=1" },
		"disk":   func(s *VMSpec) { s.BootDisk.Storage = "local-lvm,cache=unsafe" },
		"bridge": func(s *VMSpec) { s.NICs[0].Bridge = "vmbr0,tag=5" },
		"cache":  func(s *VMSpec) { s.BootDisk.Cache = "none,aio=native" },
		"import": func(s *VMSpec) { s.BootDisk.ImportFrom = "local:import/a.raw,cache=unsafe" },
		"cdrom":  func(s *VMSpec) { s.CDROM = "local:iso/a.iso,media=disk" },
		"tag":    func(s *VMSpec) { s.Tags = []string{"a;b"} },
	} {
		s := base()
		mutate(&s)
		g.Expect(s.Validate()).To(MatchError(ContainSubstring(strings.SplitN(name, "-", 2)[0])), name)
	}
}

// TestFormatPatternsMatchCRDs keeps the kubebuilder Pattern markers in api/v1beta1 equal to
// the patterns here: the CRDs must refuse what the provider refuses.
func TestFormatPatternsMatchCRDs(t *testing.T) {
	g := NewWithT(t)
	read := func(kind string) string {
		b, err := os.ReadFile(filepath.Join("..", "..", "config", "crd", "bases", "infrastructure.cluster.x-k8s.io_"+kind+".yaml"))
		g.Expect(err).NotTo(HaveOccurred())
		return string(b)
	}
	for _, kind := range []string{"proxmoxtalosmachines", "proxmoxtalosmachinetemplates"} {
		crd := read(kind)
		for _, p := range []string{StorageIDPattern, NodeNamePattern, PoolIDPattern, BridgePattern, TagPattern, CPUTypePattern} {
			g.Expect(crd).To(ContainSubstring("pattern: "+p), "%s lacks %s", kind, p)
		}
	}
	for _, kind := range []string{"proxmoxtalosclusters", "proxmoxtalosclustertemplates"} {
		crd := read(kind)
		for _, p := range []string{StorageIDPattern, NodeNamePattern} {
			g.Expect(crd).To(ContainSubstring("pattern: "+p), "%s lacks %s", kind, p)
		}
	}
}
