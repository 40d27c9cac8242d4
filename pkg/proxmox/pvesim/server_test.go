package pvesim

import (
	"fmt"
	"net/url"
	"strings"
	"testing"

	. "github.com/onsi/gomega"
)

func TestBasicShapesAndErrors(t *testing.T) {
	s := startSim(t, Config{})
	tests := []struct {
		name, method, path, token string
		form                      url.Values
		status                    int
		reason                    string
		check                     func(g *WithT, r resp)
	}{
		{name: "version", method: "GET", path: "/version", token: rootTok, status: 200, check: func(g *WithT, r resp) {
			g.Expect(r.body["data"]).To(HaveKeyWithValue("version", "9.1.2"))
		}},
		{name: "no auth", method: "GET", path: "/version", status: 401, reason: "No ticket"},
		{name: "bad secret", method: "GET", path: "/version", token: DefaultTokenID + "=wrong", status: 401, reason: "authentication failure"},
		{name: "nextid is a string", method: "GET", path: "/cluster/nextid", token: rootTok, status: 200, check: func(g *WithT, r resp) {
			g.Expect(r.body["data"]).To(Equal("100"))
		}},
		{name: "nodes", method: "GET", path: "/nodes", token: rootTok, status: 200, check: func(g *WithT, r resp) {
			n := r.body["data"].([]any)[0].(map[string]any)
			g.Expect(n["node"]).To(Equal("pve1"))
			g.Expect(n["maxmem"]).To(BeNumerically("==", 64*gib))
		}},
		{name: "missing vm", method: "GET", path: "/nodes/pve1/qemu/100/config", token: rootTok, status: 500,
			reason: "Configuration file 'nodes/pve1/qemu-server/100.conf' does not exist"},
		{name: "unknown node", method: "GET", path: "/nodes/nope/status", token: rootTok, status: 500,
			reason: "hostname lookup 'nope' failed - failed to get address info for: nope: Name or service not known"},
		{name: "unknown param", method: "GET", path: "/cluster/resources", token: rootTok, form: form("bogus", "1"), status: 400,
			check: func(g *WithT, r resp) {
				g.Expect(r.body).To(HaveKeyWithValue("data", BeNil()))
				g.Expect(r.body["errors"]).To(HaveKeyWithValue("bogus", ContainSubstring("not defined in schema")))
			}},
		{name: "enum", method: "GET", path: "/cluster/resources", token: rootTok, form: form("type", "lxc"), status: 400,
			check: func(g *WithT, r resp) {
				g.Expect(r.body["errors"]).To(HaveKeyWithValue("type", ContainSubstring("enumeration")))
			}},
		{name: "vmid minimum", method: "GET", path: "/nodes/pve1/qemu/99/config", token: rootTok, status: 400,
			check: func(g *WithT, r resp) {
				g.Expect(r.body["errors"]).To(HaveKeyWithValue("vmid", "value must have a minimum value of 100"))
			}},
		{name: "missing required", method: "POST", path: "/nodes/pve1/qemu", token: rootTok, form: form("name", "x"), status: 400,
			check: func(g *WithT, r resp) {
				g.Expect(r.body["errors"]).To(HaveKeyWithValue("vmid", "property is missing and it is not optional"))
			}},
		{name: "bad property string", method: "POST", path: "/nodes/pve1/qemu", token: rootTok,
			form: form("vmid", "100", "scsi0", "local-lvm:1,discard=maybe"), status: 400,
			check: func(g *WithT, r resp) {
				g.Expect(r.body["errors"]).To(HaveKeyWithValue("scsi0", ContainSubstring("scsi0.discard")))
			}},
		{name: "unknown property key", method: "POST", path: "/nodes/pve1/qemu", token: rootTok,
			form: form("vmid", "100", "net0", "virtio,bridge=vmbr0,colour=red"), status: 400,
			check: func(g *WithT, r resp) {
				g.Expect(r.body["errors"]).To(HaveKeyWithValue("net0", ContainSubstring("net0.colour")))
			}},
		{name: "index out of range", method: "POST", path: "/nodes/pve1/qemu", token: rootTok,
			form: form("vmid", "100", "scsi31", "local-lvm:1"), status: 400},
		{name: "not implemented", method: "GET", path: "/nodes/pve1/lxc", token: rootTok, status: 501},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			r := call(t, s, tc.token, tc.method, tc.path, tc.form)
			g.Expect(r.status).To(Equal(tc.status), "reason %q body %v", r.reason, r.body)
			if tc.reason != "" {
				g.Expect(r.reason).To(Equal(tc.reason))
			}
			if tc.check != nil {
				tc.check(g, r)
			}
		})
	}
}

func TestCreateImportStartAgentDelete(t *testing.T) {
	g := NewWithT(t)
	s := startSim(t, Config{})
	img := qcow2Image(1246 * mib)
	volid, err := s.AddVolume("local", "pve1", "import", "talos.qcow2", img)
	g.Expect(err).NotTo(HaveOccurred())
	iso, err := s.AddVolume("local", "pve1", "iso", "cidata.iso", []byte("ISO-BYTES"))
	g.Expect(err).NotTo(HaveOccurred())

	var events []PowerEvent
	s.OnPowerOn(func(ev PowerEvent) { events = append(events, ev) })

	r := root(t, s, "POST", "/nodes/pve1/qemu", form("vmid", "123", "name", "cp-1", "memory", "4096", "cores", "2",
		"scsihw", "virtio-scsi-pci", "bios", "ovmf", "machine", "q35",
		"scsi0", "local-lvm:0,import-from="+volid+",discard=on,ssd=1",
		"efidisk0", "local-lvm:1,efitype=4m,pre-enrolled-keys=0",
		"ide2", iso+",media=cdrom", "net0", "virtio,bridge=vmbr0", "agent", "enabled=1",
		"ipconfig0", "ip=10.0.0.5/24,gw=10.0.0.1", "tags", "capi;cluster-foo"))
	g.Expect(waitTask(t, s, "pve1", r)).To(Equal("OK"))

	cfg := root(t, s, "GET", "/nodes/pve1/qemu/123/config", nil).body["data"].(map[string]any)
	g.Expect(cfg["scsi0"]).To(Equal("local-lvm:vm-123-disk-0,discard=on,size=1246M,ssd=1"))
	g.Expect(cfg["efidisk0"]).To(Equal("local-lvm:vm-123-disk-1,efitype=4m,pre-enrolled-keys=0,size=4M"))
	g.Expect(cfg["net0"]).To(MatchRegexp(`^virtio=BC:24:11:[0-9A-F:]{8},bridge=vmbr0$`))
	g.Expect(cfg["smbios1"]).To(MatchRegexp(`^uuid=[0-9a-f-]{36}$`))
	g.Expect(cfg["cores"]).To(BeNumerically("==", 2))
	g.Expect(cfg).NotTo(HaveKey("lock"))

	// resize grow, refuse shrink
	g.Expect(waitTask(t, s, "pve1", root(t, s, "PUT", "/nodes/pve1/qemu/123/resize", form("disk", "scsi0", "size", "32G")))).To(Equal("OK"))
	g.Expect(waitTask(t, s, "pve1", root(t, s, "PUT", "/nodes/pve1/qemu/123/resize", form("disk", "scsi0", "size", "10G")))).
		To(Equal("shrinking disks is not supported"))

	// agent before start
	r = root(t, s, "GET", "/nodes/pve1/qemu/123/agent/network-get-interfaces", nil)
	g.Expect(r.status).To(Equal(500))
	g.Expect(r.reason).To(Equal("VM 123 is not running"))

	g.Expect(waitTask(t, s, "pve1", root(t, s, "POST", "/nodes/pve1/qemu/123/status/start", nil))).To(Equal("OK"))
	g.Expect(events).To(HaveLen(1))
	g.Expect(events[0].ISOs[0].Data).To(Equal([]byte("ISO-BYTES")))
	g.Expect(events[0].DiskSource).To(Equal(volid))
	g.Expect(events[0].Tags).To(Equal([]string{"capi", "cluster-foo"}))
	g.Expect(events[0].UUID).NotTo(BeEmpty())
	// Resident memory right after start is a fraction of the configured 4 GiB.
	g.Expect(s.NodeMemoryUsed("pve1")).To(And(BeNumerically(">", 2*gib), BeNumerically("<", 2*gib+4096*mib)))

	r = root(t, s, "GET", "/nodes/pve1/qemu/123/agent/network-get-interfaces", nil)
	g.Expect(r.status).To(Equal(200))
	res := r.body["data"].(map[string]any)["result"].([]any)
	g.Expect(res).To(HaveLen(2))
	eth0 := res[1].(map[string]any)
	g.Expect(eth0["ip-addresses"]).To(ContainElement(HaveKeyWithValue("ip-address", "10.0.0.5")))

	g.Expect(s.SetGuestAgentRunning(123, false)).To(Succeed())
	r = root(t, s, "POST", "/nodes/pve1/qemu/123/agent/ping", nil)
	g.Expect(r.reason).To(Equal("QEMU guest agent is not running"))

	r = root(t, s, "DELETE", "/nodes/pve1/qemu/123", nil)
	g.Expect(r.status).To(Equal(500))
	g.Expect(r.reason).To(Equal("VM 123 is running - destroy failed"))

	g.Expect(waitTask(t, s, "pve1", root(t, s, "POST", "/nodes/pve1/qemu/123/status/stop", nil))).To(Equal("OK"))
	g.Expect(waitTask(t, s, "pve1", root(t, s, "DELETE", "/nodes/pve1/qemu/123", form("purge", "1", "destroy-unreferenced-disks", "1")))).To(Equal("OK"))

	inv := s.Inventory()
	g.Expect(inv.VMs).To(BeEmpty())
	g.Expect(inv.VolumesByContent("images")).To(BeEmpty())
	g.Expect(inv.VolumesByContent("import")).To(HaveLen(1))
}

func TestCreateErrors(t *testing.T) {
	s := startSim(t, Config{Storages: []StorageConfig{
		{Name: "local", Type: "dir", Content: "iso,import"},
		{Name: "small", Type: "lvmthin", Content: "images", Size: 2 * gib},
	}})
	_, err := s.AddVolume("local", "pve1", "iso", "a.iso", []byte("x"))
	NewWithT(t).Expect(err).NotTo(HaveOccurred())
	tests := []struct {
		name   string
		params url.Values
		status int
		text   string
	}{
		{"storage full", form("vmid", "100", "scsi0", "small:5"), 200, "not enough free space on storage 'small'"},
		{"iso import refused", form("vmid", "101", "scsi0", "small:0,import-from=local:iso/a.iso"), 500, "has wrong type 'iso'"},
		{"missing import source", form("vmid", "102", "scsi0", "small:0,import-from=local:import/nope.qcow2"), 500, "does not exist"},
		{"storage without images", form("vmid", "103", "scsi0", "local:1"), 400, "Parameter verification failed."},
		{"missing iso", form("vmid", "104", "ide2", "local:iso/b.iso,media=cdrom"), 500, "volume 'local:iso/b.iso' does not exist"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			r := root(t, s, "POST", "/nodes/pve1/qemu", tc.params)
			g.Expect(r.status).To(Equal(tc.status), r.reason)
			if tc.status == 200 {
				g.Expect(waitTask(t, s, "pve1", r)).To(ContainSubstring(tc.text))
				// A failed create leaves nothing behind.
				g.Expect(s.Inventory().VMs).To(BeEmpty())
				return
			}
			g.Expect(r.reason).To(ContainSubstring(tc.text))
		})
	}
	g := NewWithT(t)
	g.Expect(waitTask(t, s, "pve1", root(t, s, "POST", "/nodes/pve1/qemu", form("vmid", "200")))).To(Equal("OK"))
	r := root(t, s, "POST", "/nodes/pve1/qemu", form("vmid", "200"))
	g.Expect(r.reason).To(Equal("VM 200 already exists on node 'pve1'"))
	r = root(t, s, "GET", "/cluster/nextid", form("vmid", "200"))
	g.Expect(r.status).To(Equal(400))
	g.Expect(r.body["errors"]).To(HaveKeyWithValue("vmid", "VM 200 already exists"))
	g.Expect(root(t, s, "GET", "/cluster/nextid", nil).body["data"]).To(Equal("100"))
}

func TestMemoryAccounting(t *testing.T) {
	g := NewWithT(t)
	s := startSim(t, Config{Nodes: []NodeConfig{{Name: "pve1", Memory: 8 * gib}}})
	for _, id := range []string{"100", "101"} {
		g.Expect(waitTask(t, s, "pve1", root(t, s, "POST", "/nodes/pve1/qemu", form("vmid", id, "memory", "6144")))).To(Equal("OK"))
	}
	g.Expect(waitTask(t, s, "pve1", root(t, s, "POST", "/nodes/pve1/qemu", form("vmid", "102", "memory", "16384")))).To(Equal("OK"))
	// KVM overcommits: 2 × 6 GiB configured on an 8 GiB node both start.
	g.Expect(waitTask(t, s, "pve1", root(t, s, "POST", "/nodes/pve1/qemu/100/status/start", nil))).To(Equal("OK"))
	g.Expect(waitTask(t, s, "pve1", root(t, s, "POST", "/nodes/pve1/qemu/101/status/start", nil))).To(Equal("OK"))
	// A guest larger than the host's RAM cannot allocate it.
	g.Expect(waitTask(t, s, "pve1", root(t, s, "POST", "/nodes/pve1/qemu/102/status/start", nil))).To(Equal("start failed: QEMU exited with code 1"))
	st := root(t, s, "GET", "/nodes/pve1/status", nil).body["data"].(map[string]any)["memory"].(map[string]any)
	// Used is the host share plus the guests' resident memory (at most 90 %
	// of configured), not 2 GiB + 12 GiB configured.
	g.Expect(st["used"]).To(And(BeNumerically(">", 2*gib), BeNumerically("<", 2*gib+12*gib*9/10+1)))
	g.Expect(waitTask(t, s, "pve1", root(t, s, "POST", "/nodes/pve1/qemu/100/status/start", nil))).To(Equal("VM 100 already running"))
}

func TestLocks(t *testing.T) {
	g := NewWithT(t)
	s := startSim(t, Config{TaskDuration: Duration(200 * 1e6)})
	g.Expect(waitTask(t, s, "pve1", root(t, s, "POST", "/nodes/pve1/qemu", form("vmid", "100")))).To(Equal("OK"))
	first := root(t, s, "POST", "/nodes/pve1/qemu/100/config", form("name", "a"))
	// While the async config task holds the lock, a sync PUT and a second
	// task fail like PVE.
	r := root(t, s, "PUT", "/nodes/pve1/qemu/100/config", form("name", "b"))
	g.Expect(r.status).To(Equal(500))
	g.Expect(r.reason).To(Equal("can't lock file '/var/lock/qemu-server/lock-100.conf' - got timeout"))
	second := root(t, s, "POST", "/nodes/pve1/qemu/100/status/start", nil)
	g.Expect(waitTask(t, s, "pve1", second)).To(Equal("can't lock file '/var/lock/qemu-server/lock-100.conf' - got timeout"))
	g.Expect(waitTask(t, s, "pve1", first)).To(Equal("OK"))

	// Storage lock: two creates allocating on one storage at once.
	a := root(t, s, "POST", "/nodes/pve1/qemu", form("vmid", "101", "scsi0", "local-lvm:1"))
	b := root(t, s, "POST", "/nodes/pve1/qemu", form("vmid", "102", "scsi0", "local-lvm:1"))
	g.Expect(waitTask(t, s, "pve1", a)).To(Equal("OK"))
	g.Expect(waitTask(t, s, "pve1", b)).To(Equal("can't lock file '/var/lock/pve-manager/pve-storage-local-lvm' - got timeout"))
	_, exists := s.VM(102)
	g.Expect(exists).To(BeFalse())

	// digest mismatch
	r = root(t, s, "PUT", "/nodes/pve1/qemu/100/config", form("name", "c", "digest", strings.Repeat("0", 40)))
	g.Expect(r.reason).To(ContainSubstring("detected modified configuration"))
	// task log
	log := root(t, s, "GET", fmt.Sprintf("/nodes/pve1/tasks/%s/log", url.PathEscape(b.body["data"].(string))), nil)
	g.Expect(log.body["data"]).To(ContainElement(HaveKeyWithValue("t", ContainSubstring("TASK ERROR"))))
}
