package proxmox

import (
	"context"
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	. "github.com/onsi/gomega"
)

func ptr[T any](v T) *T { return &v }

func testSpec(vmid int) VMSpec {
	return VMSpec{
		Node: "pve1", VMID: vmid, Name: fmt.Sprintf("cp-%d", vmid), Pool: "capi",
		Tags: []string{"capi", "cluster-foo"}, Sockets: 1, Cores: 2, CPUType: "host", MemoryMiB: 4096,
		BalloonMiB: ptr(0), Machine: "q35", BIOS: "ovmf",
		BootDisk: Disk{Storage: "local-lvm", ImportFrom: "local:import/talos-v1.13.9-nocloud-amd64.qcow2", Discard: true, SSD: true, Cache: "writethrough"},
		NICs:     []NIC{{Bridge: "vmbr0", VLAN: 20, MTU: 1500, MAC: "bc:24:11:00:00:01"}},
		CDROM:    "local:iso/capi-cp-1-cidata.iso", Agent: true, SerialConsole: true, RNG: true,
		SMBIOSUUID: "5b0c7a3e-8a8e-4a0b-9d7e-1c2f3a4b5c6d", OnBoot: true,
	}
}

func TestVMSpecParams(t *testing.T) {
	g := NewWithT(t)
	s := testSpec(123)
	s.ExtraDisks = []Disk{{Slot: "scsi1", Storage: "local-lvm", SizeGiB: 20, IOThread: true}}
	g.Expect(s.Validate()).To(Succeed())
	p := s.Params()
	g.Expect(p).To(HaveKeyWithValue("vmid", 123))
	g.Expect(p).To(HaveKeyWithValue("name", "cp-123"))
	g.Expect(p).To(HaveKeyWithValue("machine", "q35"))
	g.Expect(p).To(HaveKeyWithValue("bios", "ovmf"))
	g.Expect(p).To(HaveKeyWithValue("scsihw", "virtio-scsi-pci"))
	g.Expect(p).To(HaveKeyWithValue("balloon", 0))
	g.Expect(p).To(HaveKeyWithValue("efidisk0", "local-lvm:1,efitype=4m,pre-enrolled-keys=0"))
	g.Expect(p).To(HaveKeyWithValue("scsi0", "local-lvm:0,import-from=local:import/talos-v1.13.9-nocloud-amd64.qcow2,discard=on,ssd=1,cache=writethrough"))
	g.Expect(p).To(HaveKeyWithValue("scsi1", "local-lvm:20,iothread=1"))
	g.Expect(p).To(HaveKeyWithValue("net0", "virtio=BC:24:11:00:00:01,bridge=vmbr0,tag=20,mtu=1500"))
	g.Expect(p).To(HaveKeyWithValue("ide2", "local:iso/capi-cp-1-cidata.iso,media=cdrom"))
	g.Expect(p).To(HaveKeyWithValue("agent", "enabled=1"))
	g.Expect(p).To(HaveKeyWithValue("serial0", "socket"))
	g.Expect(p).To(HaveKeyWithValue("rng0", "source=/dev/urandom"))
	g.Expect(p).To(HaveKeyWithValue("smbios1", "uuid=5b0c7a3e-8a8e-4a0b-9d7e-1c2f3a4b5c6d"))
	g.Expect(p).To(HaveKeyWithValue("tags", "capi;cluster-foo"))
	g.Expect(p).To(HaveKeyWithValue("boot", "order=scsi0"))
	g.Expect(p).To(HaveKeyWithValue("onboot", 1))
	g.Expect(p).To(HaveKeyWithValue("pool", "capi"))

	s2 := testSpec(124)
	s2.Machine, s2.BIOS = "i440fx", "seabios"
	p2 := s2.Params()
	g.Expect(p2).To(HaveKeyWithValue("machine", "pc"))
	g.Expect(p2).NotTo(HaveKey("efidisk0"))

	// Named slots keep their names, gaps included.
	s3 := testSpec(125)
	s3.NICs = []NIC{{Slot: "net0", Bridge: "vmbr0"}, {Slot: "net2", Bridge: "vmbr1", VLAN: 30}}
	g.Expect(s3.Validate()).To(Succeed())
	p3 := s3.Params()
	g.Expect(p3).To(HaveKeyWithValue("net2", "virtio,bridge=vmbr1,tag=30"))
	g.Expect(p3).NotTo(HaveKey("net1"))
}

func TestVMSpecValidate(t *testing.T) {
	tests := []struct {
		name string
		mod  func(*VMSpec)
		want string
	}{
		{"no node", func(s *VMSpec) { s.Node = "" }, "node is empty"},
		{"vmid low", func(s *VMSpec) { s.VMID = 99 }, "vmid 99"},
		{"bad name", func(s *VMSpec) { s.Name = "cp_1" }, "not a valid DNS name"},
		{"bad tag", func(s *VMSpec) { s.Tags = []string{"-x"} }, `tag "-x"`},
		{"bad mac", func(s *VMSpec) { s.NICs[0].MAC = "zz" }, "net0 MAC"},
		{"no bridge", func(s *VMSpec) { s.NICs[0].Bridge = "" }, "net0 has no bridge"},
		{"bad NIC slot", func(s *VMSpec) { s.NICs[0].Slot = "eth0" }, `NIC slot "eth0" is not net0..net31`},
		{"NIC slot twice", func(s *VMSpec) { s.NICs = append(s.NICs, NIC{Slot: "net0", Bridge: "vmbr1"}) }, "NIC slot net0 is used twice"},
		{"bad machine", func(s *VMSpec) { s.Machine = "virt" }, "machine \"virt\""},
		{"disk without source", func(s *VMSpec) { s.BootDisk.ImportFrom = "" }, "needs import-from or a size"},
		{"bad uuid", func(s *VMSpec) { s.SMBIOSUUID = "nope" }, "smbios uuid"},
		{"balloon above memory", func(s *VMSpec) { s.BalloonMiB = ptr(9000) }, "balloon 9000"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			s := testSpec(100)
			tt.mod(&s)
			err := s.Validate()
			g.Expect(err).To(MatchError(ErrInvalidConfig))
			g.Expect(err).To(MatchError(ContainSubstring(tt.want)))
		})
	}
}

// vmFake adds a tiny VM store to fakePVE.
type vmFake struct {
	*fakePVE
	mu      sync.Mutex
	vms     map[int]map[string]string // vmid -> config (incl. "node", "status")
	hidden  map[int]bool              // not (yet) listed in /cluster/resources
	created []map[string]string
}

func newVMFake(t *testing.T) *vmFake {
	v := &vmFake{fakePVE: newFakePVE(t), vms: map[int]map[string]string{}}
	v.handle("GET /nodes/{node}/qemu/{vmid}/config", func(w http.ResponseWriter, r *http.Request) {
		cfg, ok := v.get(r)
		if !ok {
			pveError(w, 500, fmt.Sprintf("Configuration file 'nodes/%s/qemu-server/%s.conf' does not exist", r.PathValue("node"), r.PathValue("vmid")), nil)
			return
		}
		writeJSON(w, cfg)
	})
	v.handle("GET /nodes/{node}/qemu/{vmid}/status/current", func(w http.ResponseWriter, r *http.Request) {
		cfg, ok := v.get(r)
		if !ok {
			pveError(w, 500, fmt.Sprintf("Configuration file 'nodes/%s/qemu-server/%s.conf' does not exist", r.PathValue("node"), r.PathValue("vmid")), nil)
			return
		}
		writeJSON(w, map[string]any{"vmid": r.PathValue("vmid"), "name": cfg["name"], "status": cfg["status"], "tags": cfg["tags"]})
	})
	v.handle("POST /nodes/{node}/qemu", func(w http.ResponseWriter, r *http.Request) {
		p := readParams(r)
		id, _ := strconv.Atoi(p["vmid"])
		v.mu.Lock()
		if old, ok := v.vms[id]; ok {
			v.mu.Unlock()
			pveError(w, 500, fmt.Sprintf("unable to create VM %d - VM %d already exists on node '%s'", id, id, old["node"]), nil)
			return
		}
		p["node"], p["status"] = r.PathValue("node"), "stopped"
		v.vms[id] = p
		v.created = append(v.created, p)
		v.mu.Unlock()
		writeJSON(w, v.newTask(r.PathValue("node"), "qmcreate", 1, "OK", nil))
	})
	v.handle("GET /cluster/resources", func(w http.ResponseWriter, r *http.Request) {
		v.mu.Lock()
		defer v.mu.Unlock()
		var out []map[string]any
		for id, cfg := range v.vms {
			if v.hidden[id] {
				continue
			}
			out = append(out, map[string]any{"id": fmt.Sprintf("qemu/%d", id), "type": "qemu", "vmid": id, "node": cfg["node"], "name": cfg["name"], "status": cfg["status"], "tags": cfg["tags"], "template": 0})
		}
		writeJSON(w, out)
	})
	return v
}

func (v *vmFake) get(r *http.Request) (map[string]string, bool) {
	id, _ := strconv.Atoi(r.PathValue("vmid"))
	v.mu.Lock()
	defer v.mu.Unlock()
	cfg, ok := v.vms[id]
	if !ok || cfg["node"] != r.PathValue("node") {
		return nil, false
	}
	cp := map[string]string{}
	for k, val := range cfg {
		cp[k] = val
	}
	return cp, true
}

func (v *vmFake) put(id int, node, name, status, extra string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.vms[id] = map[string]string{"node": node, "name": name, "status": status, "smbios1": extra}
}

func TestCreateVM(t *testing.T) {
	g := NewWithT(t)
	v := newVMFake(t)
	c := v.client()
	ctx := context.Background()

	res, err := c.CreateVM(ctx, testSpec(100))
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(res).To(Equal(CreateResult{Node: "pve1", VMID: 100}))
	g.Expect(v.created).To(HaveLen(1))
	g.Expect(v.created[0]).To(HaveKeyWithValue("scsi0", "local-lvm:0,import-from=local:import/talos-v1.13.9-nocloud-amd64.qcow2,discard=on,ssd=1,cache=writethrough"))
	g.Expect(v.created[0]).To(HaveKeyWithValue("balloon", "0"))
	g.Expect(v.count("GET /nodes/{node}/tasks/{upid}/status")).To(Equal(2), "waited for the create task")

	// Same spec again: found by the pre-check, nothing posted.
	res, err = c.CreateVM(ctx, testSpec(100))
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(res.AlreadyExisted).To(BeTrue())
	g.Expect(v.count("POST /nodes/{node}/qemu")).To(Equal(1))

	// Same VMID, different VM: conflict.
	other := testSpec(100)
	other.Name = "worker-7"
	_, err = c.CreateVM(ctx, other)
	g.Expect(err).To(MatchError(ErrAlreadyExists))
	g.Expect(err.Error()).To(ContainSubstring(`VMID 100 is already used by VM "cp-100"`))

	// VMID taken on another node by the same VM (lost answer): success.
	v.put(200, "pve2", "cp-200", "stopped", "uuid=5b0c7a3e-8a8e-4a0b-9d7e-1c2f3a4b5c6d")
	res, err = c.CreateVM(ctx, testSpec(200))
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(res).To(Equal(CreateResult{Node: "pve2", VMID: 200, AlreadyExisted: true}))

	// VMID taken on another node by someone else: conflict.
	v.put(300, "pve2", "foreign", "stopped", "")
	_, err = c.CreateVM(ctx, testSpec(300))
	g.Expect(err).To(MatchError(ErrAlreadyExists))

	// Same VM still being created elsewhere: retryable, not "existed".
	v.put(500, "pve1", "cp-500", "stopped", "uuid=5b0c7a3e-8a8e-4a0b-9d7e-1c2f3a4b5c6d")
	v.mu.Lock()
	v.vms[500]["lock"] = "create"
	v.mu.Unlock()
	_, err = c.CreateVM(ctx, testSpec(500))
	g.Expect(err).To(MatchError(ErrLockTimeout))

	// Invalid spec: no call at all.
	before := v.count("POST /nodes/{node}/qemu")
	bad := testSpec(400)
	bad.Name = ""
	_, err = c.CreateVM(ctx, bad)
	g.Expect(err).To(MatchError(ErrInvalidConfig))
	g.Expect(v.count("POST /nodes/{node}/qemu")).To(Equal(before))
}

func TestDeleteVM(t *testing.T) {
	t.Run("missing VM is done", func(t *testing.T) {
		g := NewWithT(t)
		v := newVMFake(t)
		g.Expect(v.client().DeleteVM(context.Background(), "pve1", 100)).To(Succeed())
		g.Expect(v.count("GET /nodes/{node}/qemu/{vmid}/status/current")).To(Equal(1))
	})
	t.Run("running VM: waits for the stop task before deleting", func(t *testing.T) {
		g := NewWithT(t)
		v := newVMFake(t)
		v.put(100, "pve1", "cp-100", "running", "")
		var stopped atomic.Bool
		var deleteParams map[string]string
		v.handle("POST /nodes/{node}/qemu/{vmid}/status/stop", func(w http.ResponseWriter, r *http.Request) {
			writeJSON(w, v.newTask("pve1", "qmstop", 3, "OK", func() {
				stopped.Store(true)
				v.mu.Lock()
				v.vms[100]["status"] = "stopped"
				v.mu.Unlock()
			}))
		})
		v.handle("DELETE /nodes/{node}/qemu/{vmid}", func(w http.ResponseWriter, r *http.Request) {
			if !stopped.Load() {
				pveError(w, 500, "VM 100 is running - destroy failed", nil)
				return
			}
			deleteParams = readParams(r)
			writeJSON(w, v.newTask("pve1", "qmdestroy", 1, "OK", func() {
				v.mu.Lock()
				delete(v.vms, 100)
				v.mu.Unlock()
			}))
		})
		c := v.client()
		g.Expect(c.DeleteVM(context.Background(), "pve1", 100)).To(Succeed())
		g.Expect(deleteParams).To(HaveKeyWithValue("purge", "1"))
		g.Expect(deleteParams).To(HaveKeyWithValue("destroy-unreferenced-disks", "1"))
		g.Expect(v.count("DELETE /nodes/{node}/qemu/{vmid}")).To(Equal(1))
		// Second delete: gone already.
		g.Expect(c.DeleteVM(context.Background(), "pve1", 100)).To(Succeed())
		g.Expect(v.count("DELETE /nodes/{node}/qemu/{vmid}")).To(Equal(1))
	})
	t.Run("VM migrated to another node is not reported deleted", func(t *testing.T) {
		g := NewWithT(t)
		v := newVMFake(t)
		v.put(100, "pve2", "cp-100", "running", "")
		err := v.client().DeleteVM(context.Background(), "pve1", 100)
		g.Expect(err).To(MatchError(ErrVMMoved))
		g.Expect(err.Error()).To(ContainSubstring("is on node pve2, not pve1"))
	})
	t.Run("delete task reports does-not-exist", func(t *testing.T) {
		g := NewWithT(t)
		v := newVMFake(t)
		v.put(100, "pve1", "cp-100", "stopped", "")
		v.handle("DELETE /nodes/{node}/qemu/{vmid}", func(w http.ResponseWriter, r *http.Request) {
			writeJSON(w, v.newTask("pve1", "qmdestroy", 0, "Configuration file 'nodes/pve1/qemu-server/100.conf' does not exist", nil))
		})
		g.Expect(v.client().DeleteVM(context.Background(), "pve1", 100)).To(Succeed())
	})
}

func TestPowerIdempotent(t *testing.T) {
	g := NewWithT(t)
	f := newFakePVE(t)
	var shutdownParams map[string]string
	f.handle("POST /nodes/{node}/qemu/{vmid}/status/start", func(w http.ResponseWriter, r *http.Request) {
		pveError(w, 500, "VM 100 already running", nil)
	})
	f.handle("POST /nodes/{node}/qemu/{vmid}/status/stop", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, f.newTask("pve1", "qmstop", 0, "VM 100 not running", nil))
	})
	f.handle("POST /nodes/{node}/qemu/{vmid}/status/shutdown", func(w http.ResponseWriter, r *http.Request) {
		shutdownParams = readParams(r)
		writeJSON(w, f.newTask("pve1", "qmshutdown", 0, "OK", nil))
	})
	c := f.client()
	ctx := context.Background()
	g.Expect(c.StartVM(ctx, "pve1", 100)).To(Succeed())
	g.Expect(c.StopVM(ctx, "pve1", 100)).To(Succeed())
	g.Expect(c.ShutdownVM(ctx, "pve1", 100, 90*time.Second)).To(Succeed())
	g.Expect(shutdownParams).To(HaveKeyWithValue("timeout", "90"))
	g.Expect(shutdownParams).To(HaveKeyWithValue("forceStop", "0"))
}

func TestVMConfigOps(t *testing.T) {
	g := NewWithT(t)
	f := newFakePVE(t)
	var puts []map[string]string
	var resize map[string]string
	var mu sync.Mutex
	f.handle("PUT /nodes/{node}/qemu/{vmid}/config", func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		puts = append(puts, readParams(r))
		mu.Unlock()
		writeJSON(w, nil)
	})
	f.handle("PUT /nodes/{node}/qemu/{vmid}/resize", func(w http.ResponseWriter, r *http.Request) {
		resize = readParams(r)
		writeJSON(w, f.newTask("pve1", "resize", 1, "OK", nil))
	})
	f.handle("GET /nodes/{node}/qemu/{vmid}/agent/network-get-interfaces", func(w http.ResponseWriter, r *http.Request) {
		if r.PathValue("vmid") == "101" {
			pveError(w, 500, "QEMU guest agent is not running", nil)
			return
		}
		writeJSON(w, map[string]any{"result": []map[string]any{
			{"name": "lo", "hardware-address": "00:00:00:00:00:00", "ip-addresses": []map[string]any{{"ip-address": "127.0.0.1", "ip-address-type": "ipv4", "prefix": 8}}},
			{"name": "eth0", "hardware-address": "BC:24:11:00:00:01", "ip-addresses": []map[string]any{
				{"ip-address": "10.0.0.5", "ip-address-type": "ipv4", "prefix": 24},
				{"ip-address": "fd00::5", "ip-address-type": "ipv6", "prefix": "64"},
			}},
		}})
	})
	f.handle("GET /nodes/{node}/qemu/{vmid}/config", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, map[string]any{"name": "cp-1", "smbios1": "uuid=ABC,manufacturer=x", "memory": 4096, "tags": "capi;b", "digest": "d1"})
	})
	c := f.client()
	ctx := context.Background()
	g.Expect(c.AttachISO(ctx, "pve1", 100, "ide2", "local:iso/x.iso")).To(Succeed())
	g.Expect(c.DetachISO(ctx, "pve1", 100, "ide2")).To(Succeed())
	g.Expect(c.SetTags(ctx, "pve1", 100, []string{"capi", "cluster-foo"})).To(Succeed())
	g.Expect(c.SetTags(ctx, "pve1", 100, []string{"bad tag"})).To(MatchError(ErrInvalidConfig))
	g.Expect(puts).To(Equal([]map[string]string{
		{"ide2": "local:iso/x.iso,media=cdrom"},
		{"ide2": "none,media=cdrom"},
		{"tags": "capi;cluster-foo"},
	}))
	g.Expect(c.ResizeDisk(ctx, "pve1", 100, "scsi0", "32G")).To(Succeed())
	g.Expect(resize).To(Equal(map[string]string{"disk": "scsi0", "size": "32G"}))

	ifs, err := c.GuestNetworkInterfaces(ctx, "pve1", 100)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(ifs).To(HaveLen(2))
	g.Expect(ifs[1]).To(Equal(GuestInterface{Name: "eth0", MAC: "bc:24:11:00:00:01", IPs: []GuestIP{
		{Address: "10.0.0.5", Type: "ipv4", Prefix: 24}, {Address: "fd00::5", Type: "ipv6", Prefix: 64},
	}}))
	_, err = c.GuestNetworkInterfaces(ctx, "pve1", 101)
	g.Expect(err).To(MatchError(ErrAgentNotRunning))

	cfg, err := c.VMConfig(ctx, "pve1", 100)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(cfg.Name()).To(Equal("cp-1"))
	g.Expect(cfg.SMBIOSUUID()).To(Equal("ABC"))
	g.Expect(cfg["memory"]).To(Equal("4096"))
	g.Expect(cfg.Tags()).To(Equal([]string{"capi", "b"}))
}

func TestInventory(t *testing.T) {
	g := NewWithT(t)
	f := newFakePVE(t)
	f.handle("GET /version", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, map[string]any{"version": "8.4.1", "release": "8.4", "repoid": "2a5fa54a"})
	})
	f.handle("GET /nodes", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, []map[string]any{
			{"node": "pve2", "status": "online", "cpu": 0.25, "maxcpu": 8, "mem": 4 << 30, "maxmem": 16 << 30},
			{"node": "pve1", "status": "offline", "cpu": "0.5", "maxcpu": "4", "mem": "1073741824", "maxmem": "8589934592"},
		})
	})
	f.handle("GET /cluster/resources", func(w http.ResponseWriter, r *http.Request) {
		g.Expect(r.URL.Query().Get("type")).To(Equal("vm"))
		writeJSON(w, []map[string]any{
			{"id": "qemu/101", "type": "qemu", "vmid": 101, "node": "pve1", "name": "cp-1", "status": "running", "tags": "capi;cluster-a", "template": 0},
			{"id": "qemu/102", "type": "qemu", "vmid": "102", "node": "pve2", "name": "cp-2", "status": "stopped", "tags": "capi;cluster-b"},
			{"id": "qemu/9000", "type": "qemu", "vmid": 9000, "node": "pve1", "name": "tmpl", "template": 1, "tags": "capi"},
		})
	})
	f.handle("GET /nodes/{node}/qemu/{vmid}/config", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, map[string]any{"name": "x", "smbios1": "uuid=uuid-" + r.PathValue("vmid")})
	})
	c := f.client()
	ctx := context.Background()

	v, err := c.Version(ctx)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(v.AtLeast(8, 4)).To(BeTrue())
	g.Expect(v.AtLeast(9, 0)).To(BeFalse())
	_, _ = c.Version(ctx)
	g.Expect(f.count("GET /version")).To(Equal(1), "version is cached")

	nodes, err := c.Nodes(ctx)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(nodes).To(Equal([]NodeInfo{
		{Name: "pve1", Online: false, CPUs: 4, CPUUsage: 0.5, FreeCPUs: 2, MaxMemory: 8 << 30, UsedMemory: 1 << 30, FreeMemory: 7 << 30},
		{Name: "pve2", Online: true, CPUs: 8, CPUUsage: 0.25, FreeCPUs: 6, MaxMemory: 16 << 30, UsedMemory: 4 << 30, FreeMemory: 12 << 30},
	}))

	tests := []struct {
		name   string
		filter VMFilter
		want   []int
	}{
		{"all but templates", VMFilter{}, []int{101, 102}},
		{"with templates", VMFilter{IncludeTemplates: true}, []int{101, 102, 9000}},
		{"by tag", VMFilter{Tags: []string{"capi", "cluster-b"}}, []int{102}},
		{"by tag case-insensitive", VMFilter{Tags: []string{"CLUSTER-A"}}, []int{101}},
		{"by name", VMFilter{Name: "cp-1"}, []int{101}},
		{"by node", VMFilter{Node: "pve2"}, []int{102}},
		{"by uuid", VMFilter{Tags: []string{"capi"}, SMBIOSUUID: "UUID-102"}, []int{102}},
		{"no match", VMFilter{Name: "nope"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			vms, err := c.FindVMs(ctx, tt.filter)
			g.Expect(err).NotTo(HaveOccurred())
			var ids []int
			for _, vm := range vms {
				ids = append(ids, vm.VMID)
			}
			g.Expect(ids).To(Equal(tt.want))
		})
	}
}

func TestAllocateVMIDConcurrent(t *testing.T) {
	g := NewWithT(t)
	v := newVMFake(t)
	for id := 100; id < 105; id++ {
		v.put(id, "pve1", fmt.Sprintf("old-%d", id), "stopped", "")
	}
	c := v.client()
	const n = 50
	ids := make([]int, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id, err := c.AllocateVMID(context.Background(), VMIDRange{Min: 100, Max: 199})
			g.Expect(err).NotTo(HaveOccurred())
			ids[i] = id
		}()
	}
	wg.Wait()
	sort.Ints(ids)
	seen := map[int]bool{}
	for _, id := range ids {
		g.Expect(seen[id]).To(BeFalse(), "duplicate VMID %d", id)
		seen[id] = true
		g.Expect(id).To(BeNumerically(">=", 105))
		g.Expect(id).To(BeNumerically("<=", 199))
	}
	// Range exhausted.
	_, err := c.AllocateVMID(context.Background(), VMIDRange{Min: 100, Max: 104})
	g.Expect(err).To(MatchError(ErrNoFreeVMID))
	// Release makes an id available again.
	c.ReleaseVMID(ids[0])
	id, err := c.AllocateVMID(context.Background(), VMIDRange{Min: 100, Max: 199})
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(id).To(Equal(ids[0]))
	// Invalid range.
	_, err = c.AllocateVMID(context.Background(), VMIDRange{Min: 5, Max: 10})
	g.Expect(err).To(MatchError(ErrInvalidConfig))
}

// TestAllocateVMIDSkipsRecorded: VMIDs recorded by machines whose VMs Proxmox does not
// show yet (recorded before a restart) are not handed out again.
func TestAllocateVMIDSkipsRecorded(t *testing.T) {
	g := NewWithT(t)
	v := newVMFake(t)
	v.put(100, "pve1", "old", "stopped", "")
	c := v.client()
	id, err := c.AllocateVMID(context.Background(), VMIDRange{Min: 100, Max: 199, Recorded: map[int]bool{101: true, 102: true}})
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(id).To(Equal(103))
	_, err = c.AllocateVMID(context.Background(), VMIDRange{Min: 100, Max: 102, Recorded: map[int]bool{101: true, 102: true}})
	g.Expect(err).To(MatchError(ErrNoFreeVMID))
}

func TestAllocateAndCreateAcrossProcesses(t *testing.T) {
	g := NewWithT(t)
	v := newVMFake(t)
	// Another process created VM 100 but /cluster/resources does not show it
	// yet: our allocation picks 100, the create answers "already exists",
	// and the helper allocates again.
	v.put(100, "pve2", "someone-else", "stopped", "")
	v.hidden = map[int]bool{100: true}
	c := v.client()
	spec := testSpec(0)
	res, err := AllocateAndCreateVM(context.Background(), c, spec, VMIDRange{Min: 100, Max: 110}, 3)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(res.VMID).To(Equal(101))
	g.Expect(res.AlreadyExisted).To(BeFalse())
}
