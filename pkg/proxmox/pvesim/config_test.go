package pvesim

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	. "github.com/onsi/gomega"
)

func TestLoadConfigFile(t *testing.T) {
	g := NewWithT(t)
	p := filepath.Join(t.TempDir(), "c.yaml")
	g.Expect(os.WriteFile(p, []byte(`
version: "8.4.1"
taskDuration: 20ms
nodes:
  - name: pve1
    memory: 17179869184
  - name: pve2
storages:
  - name: local
    type: dir
    content: iso,import
  - name: ceph
    type: lvmthin
    content: images
    shared: true
roles:
  CAPI: [VM.Allocate, VM.Audit]
tokens:
  - id: capi@pve!capi
    secret: s
    acls:
      - path: /
        role: CAPI
`), 0o600)).To(Succeed())
	c, err := LoadConfigFile(p)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(time.Duration(c.TaskDuration)).To(Equal(20 * time.Millisecond))
	s, err := New(c)
	g.Expect(err).NotTo(HaveOccurred())
	defer s.Close()
	g.Expect(s.Nodes()).To(Equal([]string{"pve1", "pve2"}))

	_, err = New(Config{Tokens: []TokenConfig{{ID: "a@pve!t", Secret: "x", ACLs: []ACLConfig{{Path: "/", Role: "Nope"}}}}})
	g.Expect(err).To(MatchError(ContainSubstring("unknown role")))
	g.Expect((&Server{}).listen("192.0.2.1:0", false)).To(MatchError(ContainSubstring("non-loopback")))
}

func TestSharedStorageAndHooks(t *testing.T) {
	g := NewWithT(t)
	s := startSim(t, Config{Nodes: []NodeConfig{{Name: "pve1"}, {Name: "pve2"}}, Storages: []StorageConfig{
		{Name: "local", Content: "iso,import"}, {Name: "shared", Type: "lvmthin", Content: "images", Shared: true}}})
	// local storage is per node: an ISO on pve1 is not visible on pve2.
	_, err := s.AddVolume("local", "pve1", "iso", "x.iso", []byte("x"))
	g.Expect(err).NotTo(HaveOccurred())
	r := root(t, s, "POST", "/nodes/pve2/qemu", form("vmid", "100", "ide2", "local:iso/x.iso,media=cdrom"))
	g.Expect(r.reason).To(ContainSubstring("does not exist"))

	var off []PowerEvent
	s.OnPowerOff(func(ev PowerEvent) { off = append(off, ev) })
	g.Expect(waitTask(t, s, "pve2", root(t, s, "POST", "/nodes/pve2/qemu", form("vmid", "100", "scsi0", "shared:1", "net0", "virtio=BC:24:11:00:00:01,bridge=vmbr0")))).To(Equal("OK"))
	g.Expect(waitTask(t, s, "pve2", root(t, s, "POST", "/nodes/pve2/qemu/100/status/start", nil))).To(Equal("OK"))
	g.Expect(waitTask(t, s, "pve2", root(t, s, "POST", "/nodes/pve2/qemu/100/status/shutdown", nil))).To(Equal("OK"))
	g.Expect(off).To(HaveLen(1))
	g.Expect(off[0].MACs).To(Equal([]string{"BC:24:11:00:00:01"}))
	g.Expect(off[0].DiskVolume).To(Equal("shared:vm-100-disk-0"))
	// The VM lives on pve2; asking pve1 is "does not exist".
	g.Expect(root(t, s, "GET", "/nodes/pve1/qemu/100/status/current", nil).reason).To(ContainSubstring("nodes/pve1/qemu-server/100.conf"))
	inv := s.Inventory()
	g.Expect(inv.Volumes).To(ContainElement(VolumeInfo{Storage: "shared", Node: "", VolID: "shared:vm-100-disk-0", Content: "images", Size: gib, VMID: 100}))
}

// TestProfiles: "fast" (default) and "realistic" differ only in durations;
// realistic derives every window from Proxmox time × TimeScale (0.2), and
// explicit settings win. Both are settable in the config file.
func TestProfiles(t *testing.T) {
	p := filepath.Join(t.TempDir(), "c.yaml")
	NewWithT(t).Expect(os.WriteFile(p, []byte("profile: realistic\nnodes:\n  - name: pve1\n    hostMemory: 4294967296\n"), 0o600)).To(Succeed())
	fromFile, err := LoadConfigFile(p)
	NewWithT(t).Expect(err).NotTo(HaveOccurred())
	tests := []struct {
		name                            string
		cfg                             Config
		scale                           float64
		task, tick, offline, import1200 time.Duration
	}{
		{"fast default", Config{}, 0.001, 5 * time.Millisecond, 10 * time.Millisecond, 3 * time.Millisecond, 31 * time.Millisecond},
		{"realistic from file", fromFile, 0.2, 200 * time.Millisecond, 2 * time.Second, 600 * time.Millisecond, 6 * time.Second},
		{"realistic, own scale and tick", Config{Profile: ProfileRealistic, TimeScale: 0.1, StatusInterval: Duration(time.Second)},
			0.1, 100 * time.Millisecond, time.Second, 300 * time.Millisecond, 3 * time.Second},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			c, err := tc.cfg.withDefaults()
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(c.TimeScale).To(Equal(tc.scale))
			g.Expect(time.Duration(c.TaskDuration)).To(Equal(tc.task))
			g.Expect(time.Duration(c.StatusInterval)).To(Equal(tc.tick))
			g.Expect(time.Duration(c.OfflineDelay)).To(Equal(tc.offline))
			if c.Profile == ProfileRealistic {
				g.Expect(time.Duration(c.LockTimeout)).To(Equal(tc.task*10), "PVE waits 10 s for a config lock")
			} else {
				g.Expect(c.LockTimeout).To(BeZero())
			}
			// A 1.2 GiB Talos image at 40 MiB/s is ~31 Proxmox seconds.
			g.Expect(c.importDuration(1229 * mib)).To(BeNumerically("~", tc.import1200, tc.import1200/10))
		})
	}
	c, err := fromFile.withDefaults()
	NewWithT(t).Expect(err).NotTo(HaveOccurred())
	NewWithT(t).Expect(c.Nodes[0].HostMemory).To(Equal(4 * gib))
	_, err = (&Config{Profile: "turbo"}).withDefaults()
	NewWithT(t).Expect(err).To(MatchError(ContainSubstring(`unknown profile "turbo"`)))
}
