package pvesim

import (
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
)

// TestCreateWindow: POST /nodes/{node}/qemu answers with a UPID after
// writing a config that holds only "lock: create"; the rest appears when the
// worker ends, and the worker's time grows with the import size
// (qemu-server create_vm, create_and_lock_config).
func TestCreateWindow(t *testing.T) {
	g := NewWithT(t)
	// 1 GiB at 100 MiB/s is 10.24 Proxmox seconds, 102 ms at TimeScale 0.01.
	s := startSim(t, Config{TimeScale: 0.01, ImportThroughput: 100 * mib})
	img, err := s.AddVolume("local", "pve1", "import", "talos.qcow2", qcow2Image(gib))
	g.Expect(err).NotTo(HaveOccurred())

	began := time.Now()
	r := root(t, s, "POST", "/nodes/pve1/qemu", form("vmid", "100", "name", "cp-1", "tags", "capi",
		"scsi0", "local-lvm:0,import-from="+img, "net0", "virtio,bridge=vmbr0", "smbios1", "serial=x"))
	g.Expect(r.status).To(Equal(200))

	cfg := root(t, s, "GET", "/nodes/pve1/qemu/100/config", nil).body["data"].(map[string]any)
	g.Expect(cfg).To(HaveLen(2))
	g.Expect(cfg).To(HaveKeyWithValue("lock", "create"))
	g.Expect(cfg).To(HaveKey("digest"))

	list := root(t, s, "GET", "/nodes/pve1/qemu", nil).body["data"].([]any)
	g.Expect(list).To(HaveLen(1))
	g.Expect(list[0]).To(HaveKeyWithValue("lock", "create"))
	// qemu-server vmstatus: a config without a name lists as "VM <vmid>".
	g.Expect(list[0]).To(HaveKeyWithValue("name", "VM 100"))
	g.Expect(list[0]).NotTo(HaveKey("tags"))

	res := root(t, s, "GET", "/cluster/resources", form("type", "vm")).body["data"].([]any)
	g.Expect(res).To(HaveLen(1))
	g.Expect(res[0]).To(HaveKeyWithValue("lock", "create"))
	// The name in /cluster/resources comes from pvestatd's broadcast of
	// vmstatus: absent before the first tick, "VM 100" after it.
	g.Expect(res[0]).To(Or(Not(HaveKey("name")), HaveKeyWithValue("name", "VM 100")))
	g.Expect(res[0]).NotTo(HaveKey("tags"))

	// The worker holds the config lock and the VMID is taken: a retried
	// create, an update or a destroy during the window all fail.
	g.Expect(root(t, s, "POST", "/nodes/pve1/qemu", form("vmid", "100")).reason).To(Equal("VM 100 already exists on node 'pve1'"))
	g.Expect(root(t, s, "PUT", "/nodes/pve1/qemu/100/config", form("name", "b")).reason).To(Equal("can't lock file '/var/lock/qemu-server/lock-100.conf' - got timeout"))
	// destroy_vm checks the lock inside its worker (PVE::QemuServer::destroy_vm), so the
	// request is accepted and the task fails.
	g.Expect(waitTask(t, s, "pve1", root(t, s, "DELETE", "/nodes/pve1/qemu/100", nil))).To(
		Or(Equal("VM is locked (create)"), ContainSubstring("got timeout")))

	g.Expect(waitTask(t, s, "pve1", r)).To(Equal("OK"))
	g.Expect(time.Since(began)).To(BeNumerically(">=", 100*time.Millisecond), "the import takes its time")
	cfg = root(t, s, "GET", "/nodes/pve1/qemu/100/config", nil).body["data"].(map[string]any)
	g.Expect(cfg).NotTo(HaveKey("lock"))
	g.Expect(cfg).To(HaveKeyWithValue("name", "cp-1"))
	g.Expect(cfg).To(HaveKeyWithValue("tags", "capi"))
	g.Expect(cfg["smbios1"]).To(MatchRegexp(`^serial=x,uuid=[0-9a-f-]{36}$`))
	g.Expect(cfg["scsi0"]).To(HavePrefix("local-lvm:vm-100-disk-0,"))
	g.Expect(cfg["net0"]).To(HavePrefix("virtio=BC:24:11:"))
}

// TestCreateWindowFailureRemovesConfigAndDisks: a worker that fails after
// allocating a disk frees it and removes the config (create_vm's error path:
// vdisk_free of every allocated volume, then unlink of the config).
func TestCreateWindowFailureRemovesConfigAndDisks(t *testing.T) {
	g := NewWithT(t)
	s := startSim(t, Config{Storages: []StorageConfig{
		{Name: "local", Type: "dir", Content: "iso,import"},
		{Name: "small", Type: "lvmthin", Content: "images", Size: 3 * gib},
	}})
	r := root(t, s, "POST", "/nodes/pve1/qemu", form("vmid", "100", "name", "x", "scsi0", "small:2", "scsi1", "small:2"))
	g.Expect(waitTask(t, s, "pve1", r)).To(ContainSubstring("not enough free space on storage 'small'"))
	inv := s.Inventory()
	g.Expect(inv.VMs).To(BeEmpty())
	g.Expect(inv.VolumesByContent("images")).To(BeEmpty())
	g.Expect(root(t, s, "GET", "/nodes/pve1/qemu/100/config", nil).status).To(Equal(500))
}

// TestNodeTaskList: GET /nodes/{node}/tasks as pve-manager's node_tasks:
// finished tasks by default (newest first), running ones with
// source=active|all as RUNNING, filters typefilter/vmid/userfilter/errors,
// start/limit paging, token tasks split into user and tokenid. A caller that
// lost its create's UPID finds it here.
func TestNodeTaskList(t *testing.T) {
	g := NewWithT(t)
	// Long enough that the second create is still running while a loaded CI machine lists.
	s := startSim(t, Config{TaskDuration: Duration(1500 * time.Millisecond)})
	g.Expect(waitTask(t, s, "pve1", root(t, s, "POST", "/nodes/pve1/qemu", form("vmid", "100")))).To(Equal("OK"))
	failed := root(t, s, "POST", "/nodes/pve1/qemu/100/status/reboot", nil)
	g.Expect(waitTask(t, s, "pve1", failed)).To(Equal("VM 100 not running"))
	running := root(t, s, "POST", "/nodes/pve1/qemu", form("vmid", "101"))
	runUPID := running.body["data"].(string)

	list := func(f url.Values) []map[string]any {
		r := root(t, s, "GET", "/nodes/pve1/tasks", f)
		g.Expect(r.status).To(Equal(200), r.reason)
		var out []map[string]any
		for _, e := range r.body["data"].([]any) {
			out = append(out, e.(map[string]any))
		}
		return out
	}
	tests := []struct {
		name  string
		query url.Values
		want  []string // type/id of the listed tasks, in order
	}{
		{"archive by default, newest first", nil, []string{"qmreboot/100", "qmcreate/100"}},
		{"active only", form("source", "active"), []string{"qmcreate/101"}},
		{"all", form("source", "all"), []string{"qmcreate/101", "qmreboot/100", "qmcreate/100"}},
		{"typefilter+vmid", form("source", "all", "typefilter", "qmcreate", "vmid", "101"), []string{"qmcreate/101"}},
		{"errors", form("errors", "1"), []string{"qmreboot/100"}},
		{"statusfilter ok", form("statusfilter", "ok"), []string{"qmcreate/100"}},
		{"paging", form("start", "1", "limit", "1"), []string{"qmcreate/100"}},
		{"userfilter other", form("userfilter", "alice"), nil},
		{"userfilter match", form("userfilter", "root@pam", "limit", "1"), []string{"qmreboot/100"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			var got []string
			for _, e := range list(tc.query) {
				got = append(got, e["type"].(string)+"/"+e["id"].(string))
			}
			g.Expect(got).To(Equal(tc.want))
		})
	}
	all := list(form("source", "all"))
	g.Expect(all[0]).To(HaveKeyWithValue("upid", runUPID))
	g.Expect(all[0]).To(HaveKeyWithValue("status", "RUNNING"))
	g.Expect(all[0]).NotTo(HaveKey("endtime"))
	g.Expect(all[0]).To(HaveKeyWithValue("user", "root@pam"))
	g.Expect(all[0]).To(HaveKeyWithValue("tokenid", "pvesim"))
	g.Expect(all[1]).To(HaveKeyWithValue("status", "VM 100 not running"))
	g.Expect(all[1]).To(HaveKey("endtime"))
	for _, k := range []string{"node", "pid", "pstart", "starttime"} {
		g.Expect(all[1]).To(HaveKey(k))
	}
	r := root(t, s, "GET", "/nodes/pve1/tasks", form("source", "bogus"))
	g.Expect(r.status).To(Equal(400))
	g.Expect(waitTask(t, s, "pve1", running)).To(Equal("OK"))
}

func threeNodes() []NodeConfig {
	return []NodeConfig{{Name: "pve1"}, {Name: "pve2"}, {Name: "pve3"}}
}

// waitFor polls cond until it holds or 5 s pass.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// TestMigrate: qemu-server migrate_vm's checks at request time, the
// qmigrate worker holding "lock: migrate", local disks moving with the VM,
// online migration of a running VM, and an offline target failing the task.
func TestMigrate(t *testing.T) {
	g := NewWithT(t)
	s := startSim(t, Config{Nodes: threeNodes(), TaskDuration: Duration(100 * time.Millisecond)})
	g.Expect(waitTask(t, s, "pve1", root(t, s, "POST", "/nodes/pve1/qemu", form("vmid", "100", "name", "a", "scsi0", "local-lvm:1")))).To(Equal("OK"))

	for _, tc := range []struct {
		name   string
		path   string
		params url.Values
		status int
		text   string
	}{
		{"target is local", "/nodes/pve1/qemu/100/migrate", form("target", "pve1"), 400, ""},
		{"unknown target", "/nodes/pve1/qemu/100/migrate", form("target", "pve9"), 500, "no such cluster node 'pve9'"},
		{"wrong node", "/nodes/pve2/qemu/100/migrate", form("target", "pve3"), 500, "does not exist"},
	} {
		r := root(t, s, "POST", tc.path, tc.params)
		g.Expect(r.status).To(Equal(tc.status), tc.name)
		g.Expect(r.reason).To(ContainSubstring(tc.text), tc.name)
	}
	r := root(t, s, "POST", "/nodes/pve1/qemu/100/migrate", form("target", "pve2"))
	g.Expect(r.status).To(Equal(200))
	waitFor(t, "lock: migrate", func() bool { vm, _ := s.VM(100); return vm.Lock == "migrate" })
	g.Expect(waitTask(t, s, "pve1", r)).To(Equal("OK"))
	vm, _ := s.VM(100)
	g.Expect(vm.Node).To(Equal("pve2"))
	g.Expect(vm.Lock).To(BeEmpty())
	for _, v := range s.Inventory().VolumesByContent("images") {
		g.Expect(v.Node).To(Equal("pve2"), "local disks move with the VM")
	}
	g.Expect(root(t, s, "GET", "/nodes/pve1/qemu/100/config", nil).status).To(Equal(500))
	g.Expect(root(t, s, "GET", "/nodes/pve2/qemu/100/config", nil).status).To(Equal(200))

	// Running: needs online=1, and with-local-disks for its local disk.
	g.Expect(waitTask(t, s, "pve2", root(t, s, "POST", "/nodes/pve2/qemu/100/status/start", nil))).To(Equal("OK"))
	r = root(t, s, "POST", "/nodes/pve2/qemu/100/migrate", form("target", "pve3"))
	g.Expect(r.reason).To(Equal("can't migrate running VM without --online"))
	r = root(t, s, "POST", "/nodes/pve2/qemu/100/migrate", form("target", "pve3", "online", "1"))
	g.Expect(r.reason).To(Equal("can't live migrate attached local disks without with-local-disks option"))
	g.Expect(waitTask(t, s, "pve2", root(t, s, "POST", "/nodes/pve2/qemu/100/migrate",
		form("target", "pve3", "online", "1", "with-local-disks", "1")))).To(Equal("OK"))
	vm, _ = s.VM(100)
	g.Expect(vm.Node).To(Equal("pve3"))
	g.Expect(vm.Status).To(Equal("running"))

	// An offline target fails the worker, and the lock is gone again.
	g.Expect(waitTask(t, s, "pve3", root(t, s, "POST", "/nodes/pve3/qemu/100/status/stop", nil))).To(Equal("OK"))
	s.SetNodeOnline("pve1", false)
	r = root(t, s, "POST", "/nodes/pve3/qemu/100/migrate", form("target", "pve1"))
	g.Expect(waitTask(t, s, "pve3", r)).To(MatchRegexp(`^migration aborted \(duration \d\d:\d\d:\d\d\): Can't connect to destination address using public key$`))
	vm, _ = s.VM(100)
	g.Expect(vm.Node).To(Equal("pve3"))
	g.Expect(vm.Lock).To(BeEmpty())
}

// TestHA: /cluster/ha/resources, HA-managed start/stop answered with
// hastart/hastop tasks that end OK before the VM changes state (the CRM/LRM
// act a cycle later), relocation by HA, destroy needing purge.
func TestHA(t *testing.T) {
	g := NewWithT(t)
	// The CRM delay is 10 Proxmox seconds: 200 ms at TimeScale 0.02.
	s := startSim(t, Config{Nodes: threeNodes(), TimeScale: 0.02})
	g.Expect(waitTask(t, s, "pve1", root(t, s, "POST", "/nodes/pve1/qemu", form("vmid", "100")))).To(Equal("OK"))

	r := root(t, s, "POST", "/cluster/ha/resources", form("sid", "vm:100", "state", "stopped"))
	g.Expect(r.status).To(Equal(200), r.reason)
	g.Expect(root(t, s, "POST", "/cluster/ha/resources", form("sid", "100")).reason).To(Equal("resource ID 'vm:100' already defined"))
	g.Expect(root(t, s, "POST", "/cluster/ha/resources", form("sid", "vm:101")).reason).To(Equal("resource 'vm:101' does not exist in cluster"))
	list := root(t, s, "GET", "/cluster/ha/resources", nil).body["data"].([]any)
	g.Expect(list).To(ConsistOf(And(HaveKeyWithValue("sid", "vm:100"), HaveKeyWithValue("state", "stopped"), HaveKeyWithValue("type", "vm"))))
	one := root(t, s, "GET", "/cluster/ha/resources/vm:100", nil).body["data"].(map[string]any)
	g.Expect(one).To(HaveKey("digest"))

	r = root(t, s, "POST", "/nodes/pve1/qemu/100/status/start", nil)
	g.Expect(waitTask(t, s, "pve1", r)).To(Equal("OK"))
	g.Expect(r.body["data"]).To(ContainSubstring(":hastart:100:"))
	vm, _ := s.VM(100)
	g.Expect(vm.Status).To(Equal("stopped"), "the hastart task ends before the VM starts")
	st := root(t, s, "GET", "/nodes/pve1/qemu/100/status/current", nil).body["data"].(map[string]any)
	g.Expect(st["ha"]).To(HaveKeyWithValue("managed", BeNumerically("==", 1)))
	waitFor(t, "the LRM to start VM 100", func() bool { vm, _ := s.VM(100); return vm.Status == "running" })
	g.Expect(s.Tasks()).To(ContainElement(And(HaveField("Type", "qmstart"), HaveField("User", "root@pam"))))

	r = root(t, s, "POST", "/nodes/pve1/qemu/100/status/stop", nil)
	g.Expect(waitTask(t, s, "pve1", r)).To(Equal("OK"))
	g.Expect(r.body["data"]).To(ContainSubstring(":hastop:100:"))
	vm, _ = s.VM(100)
	g.Expect(vm.Status).To(Equal("running"), "the hastop task ends before the VM stops")
	waitFor(t, "the LRM to stop VM 100", func() bool { vm, _ := s.VM(100); return vm.Status == "stopped" })

	// HA relocates the started VM: it comes back running on pve3.
	g.Expect(waitTask(t, s, "pve1", root(t, s, "POST", "/nodes/pve1/qemu/100/status/start", nil))).To(Equal("OK"))
	waitFor(t, "VM 100 running", func() bool { vm, _ := s.VM(100); return vm.Status == "running" })
	g.Expect(s.RelocateHA(100, "pve3")).To(Succeed())
	waitFor(t, "VM 100 running on pve3", func() bool { vm, _ := s.VM(100); return vm.Node == "pve3" && vm.Status == "running" })

	g.Expect(root(t, s, "DELETE", "/nodes/pve3/qemu/100", nil).reason).To(ContainSubstring("purge parameter not set"))
	g.Expect(root(t, s, "DELETE", "/cluster/ha/resources/vm:100", nil).status).To(Equal(200))
	g.Expect(root(t, s, "GET", "/cluster/ha/resources/vm:100", nil).reason).To(Equal("no such resource 'vm:100'"))
	g.Expect(s.RelocateHA(100, "pve1")).To(HaveOccurred())
	g.Expect(s.WaitTasks(5 * time.Second)).To(Succeed())
}

// TestNodeReachability: calls routed to a node that is down answer 595 "No
// route to host" after OfflineDelay, a stopped pveproxy refuses at once, and
// a ProxyErrorRate fault gives 596 for forwarded calls only.
func TestNodeReachability(t *testing.T) {
	g := NewWithT(t)
	s := startSim(t, Config{Nodes: threeNodes(), OfflineDelay: Duration(150 * time.Millisecond)})
	g.Expect(waitTask(t, s, "pve2", root(t, s, "POST", "/nodes/pve2/qemu", form("vmid", "100")))).To(Equal("OK"))
	waitTick(t, s)
	g.Expect(vmResourceOf(t, s, 100)).To(HaveKeyWithValue("status", "stopped"))
	s.SetNodeOnline("pve2", false)
	waitTick(t, s)
	g.Expect(vmResourceOf(t, s, 100)).To(HaveKeyWithValue("status", "unknown"), "no status from a node that is down")
	began := time.Now()
	r := root(t, s, "GET", "/nodes/pve2/qemu", nil)
	g.Expect(r.status).To(Equal(595))
	g.Expect(r.reason).To(Equal("No route to host"))
	g.Expect(time.Since(began)).To(BeNumerically(">=", 150*time.Millisecond))
	s.SetNodeOnline("pve2", true)
	g.Expect(root(t, s, "GET", "/nodes/pve2/qemu", nil).status).To(Equal(200))

	s.SetPveproxyRunning("pve3", false)
	r = root(t, s, "GET", "/nodes/pve3/qemu", nil)
	g.Expect(r.status).To(Equal(595))
	g.Expect(r.reason).To(Equal("Connection refused"))
	s.SetPveproxyRunning("pve3", true)

	s.AddFault(Fault{ProxyErrorRate: 1})
	r = root(t, s, "GET", "/nodes/pve2/qemu", nil)
	g.Expect(r.status).To(Equal(596))
	g.Expect(r.reason).To(Equal("Connection timed out"))
	g.Expect(root(t, s, "GET", "/nodes/pve1/qemu", nil).status).To(Equal(200), "pve1 serves its own calls")
	g.Expect(root(t, s, "GET", "/cluster/resources", nil).status).To(Equal(200), "not forwarded")
}

// waitTick returns right after the next simulated pvestatd round.
func waitTick(t *testing.T, s *Server) {
	t.Helper()
	s.mu.Lock()
	prev := s.snap
	s.mu.Unlock()
	waitFor(t, "a status tick", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.snap != prev
	})
}

func vmResourceOf(t *testing.T, s *Server, vmid float64) map[string]any {
	t.Helper()
	for _, e := range root(t, s, "GET", "/cluster/resources", form("type", "vm")).body["data"].([]any) {
		if m := e.(map[string]any); m["vmid"] == vmid {
			return m
		}
	}
	t.Fatalf("VM %v not in /cluster/resources", vmid)
	return nil
}

// TestStatusSnapshot: /cluster/resources and /nodes report pvestatd's last
// round (extract_vm_stats/extract_node_stats over the RRD dump): a new VM is
// "unknown" without a name until the next tick, start shows late, lock and
// tags are live; status/current and /nodes/{node}/status are live. Node mem
// is the host share plus guests' resident memory, which grows after start.
func TestStatusSnapshot(t *testing.T) {
	g := NewWithT(t)
	// Ticks every 400 ms; guest memory ramps up over 60 Proxmox s = 300 ms.
	s := startSim(t, Config{TimeScale: 0.005, TaskDuration: Duration(5 * time.Millisecond),
		StatusInterval: Duration(400 * time.Millisecond),
		Nodes:          []NodeConfig{{Name: "pve1", Memory: 16 * gib, HostMemory: 3 * gib}}})
	nodeMem := func() float64 {
		for _, e := range root(t, s, "GET", "/cluster/resources", form("type", "node")).body["data"].([]any) {
			return e.(map[string]any)["mem"].(float64)
		}
		return 0
	}
	waitTick(t, s)
	g.Expect(nodeMem()).To(BeNumerically("==", 3*gib), "host share only")
	g.Expect(waitTask(t, s, "pve1", root(t, s, "POST", "/nodes/pve1/qemu", form("vmid", "100", "name", "a", "memory", "8192")))).To(Equal("OK"))
	e := vmResourceOf(t, s, 100)
	g.Expect(e).To(HaveKeyWithValue("status", "unknown"))
	g.Expect(e).NotTo(HaveKey("name"))
	g.Expect(e).To(HaveKeyWithValue("node", "pve1"), "placement comes from the live vmlist")
	live := root(t, s, "GET", "/nodes/pve1/qemu", nil).body["data"].([]any)[0].(map[string]any)
	g.Expect(live).To(HaveKeyWithValue("status", "stopped"))
	g.Expect(live).To(HaveKeyWithValue("name", "a"))

	waitTick(t, s)
	e = vmResourceOf(t, s, 100)
	g.Expect(e).To(HaveKeyWithValue("status", "stopped"))
	g.Expect(e).To(HaveKeyWithValue("name", "a"))

	g.Expect(waitTask(t, s, "pve1", root(t, s, "POST", "/nodes/pve1/qemu/100/status/start", nil))).To(Equal("OK"))
	g.Expect(root(t, s, "GET", "/nodes/pve1/qemu/100/status/current", nil).body["data"]).To(HaveKeyWithValue("status", "running"))
	g.Expect(vmResourceOf(t, s, 100)).To(HaveKeyWithValue("status", "stopped"), "start shows late")
	// Tags are live.
	g.Expect(root(t, s, "PUT", "/nodes/pve1/qemu/100/config", form("tags", "late")).status).To(Equal(200))
	g.Expect(vmResourceOf(t, s, 100)).To(HaveKeyWithValue("tags", "late"))

	nodeLive := func() float64 {
		return root(t, s, "GET", "/nodes/pve1/status", nil).body["data"].(map[string]any)["memory"].(map[string]any)["used"].(float64)
	}
	early := nodeLive()
	g.Expect(early).To(BeNumerically("<", 3*gib+4*gib), "resident memory right after start is far below 8 GiB")
	waitTick(t, s)
	g.Expect(vmResourceOf(t, s, 100)).To(HaveKeyWithValue("status", "running"))
	time.Sleep(300 * time.Millisecond)
	g.Expect(nodeLive()).To(BeNumerically(">", early), "resident memory grows after start")
	waitTick(t, s)
	g.Expect(nodeMem()).To(BeNumerically("~", 3*gib+8*gib*9/10, 8*mib))
}

// TestPower: qemu-server's vm_stop/_do_vm_stop and vm_start: shutdown via
// the agent when it answers, else ACPI; the timeout and forceStop; a stopped
// VM stops OK; a locked VM is refused; a guest powers itself off; start fails
// in the task when a volume is missing.
func TestPower(t *testing.T) {
	// Guest shutdown takes 5 Proxmox s = 50 ms, the default timeout 60 s = 600 ms.
	s := startSim(t, Config{TimeScale: 0.01, TaskDuration: Duration(time.Millisecond)})
	g := NewWithT(t)
	iso, err := s.AddVolume("local", "pve1", "iso", "boot.iso", []byte("iso"))
	g.Expect(err).NotTo(HaveOccurred())
	var offs []int
	s.OnPowerOff(func(ev PowerEvent) { offs = append(offs, ev.VMID) })
	create := func(id string, kv ...string) {
		t.Helper()
		g.Expect(waitTask(t, s, "pve1", root(t, s, "POST", "/nodes/pve1/qemu", form(append([]string{"vmid", id}, kv...)...)))).To(Equal("OK"))
	}
	start := func(id string) string {
		return waitTask(t, s, "pve1", root(t, s, "POST", "/nodes/pve1/qemu/"+id+"/status/start", nil))
	}
	power := func(id, action string, kv ...string) string {
		return waitTask(t, s, "pve1", root(t, s, "POST", "/nodes/pve1/qemu/"+id+"/status/"+action, form(kv...)))
	}
	status := func(id int) string { vm, _ := s.VM(id); return vm.Status }
	lastLog := func() []string { ts := s.Tasks(); return ts[len(ts)-1].Log }

	create("100")
	create("101", "agent", "enabled=1")
	create("102", "scsi0", "local-lvm:1", "ide2", iso+",media=cdrom")

	tests := []struct {
		name   string
		run    func() string
		want   string
		status string
		log    string
	}{
		{"shutdown of a stopped VM ends OK", func() string { return power("100", "shutdown") }, "OK", "stopped", ""},
		{"ACPI shutdown", func() string { start("100"); return power("100", "shutdown") }, "OK", "stopped", ""},
		{"agent shutdown", func() string { start("101"); return power("101", "shutdown") }, "OK", "stopped", ""},
		{"agent not answering falls back to ACPI with a warning", func() string {
			start("101")
			g.Expect(s.SetGuestAgentRunning(101, false)).To(Succeed())
			return power("101", "shutdown")
		}, "WARNINGS: 1", "stopped", "WARN: QEMU Guest Agent is not running - VM 101 qga command 'guest-ping' failed - got timeout"},
		{"guest ignoring ACPI times out", func() string {
			start("100")
			g.Expect(s.SetGuestACPI(100, false)).To(Succeed())
			return power("100", "shutdown", "timeout", "10")
		}, "VM quit/powerdown failed - got timeout", "running", ""},
		{"forceStop terminates after the timeout", func() string { return power("100", "shutdown", "timeout", "10", "forceStop", "1") },
			"WARNINGS: 1", "stopped", "WARN: VM still running - terminating now with SIGTERM"},
		{"locked running VM refuses stop", func() string {
			g.Expect(s.SetGuestACPI(100, true)).To(Succeed())
			start("100")
			s.mu.Lock()
			s.vms[100].conf["lock"] = "backup"
			s.mu.Unlock()
			return power("100", "stop")
		}, "VM is locked (backup)", "running", ""},
		{"locked running VM refuses shutdown", func() string { return power("100", "shutdown") }, "VM is locked (backup)", "running", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			g.Expect(tc.run()).To(Equal(tc.want))
			id := 100
			if strings.Contains(tc.name, "agent") {
				id = 101
			}
			g.Expect(status(id)).To(Equal(tc.status))
			if tc.log != "" {
				g.Expect(lastLog()).To(ContainElement(tc.log))
			}
		})
	}

	// A guest powering itself off.
	s.mu.Lock()
	delete(s.vms[100].conf, "lock")
	s.mu.Unlock()
	g.Expect(s.GuestPowerOff(100)).To(Succeed())
	g.Expect(status(100)).To(Equal("stopped"))
	g.Expect(offs).To(ContainElement(100))
	// A stopped but locked VM: stop ends OK before the lock check.
	s.mu.Lock()
	s.vms[100].conf["lock"] = "backup"
	s.mu.Unlock()
	g.Expect(power("100", "stop")).To(Equal("OK"))

	// Start fails in the task when the ISO or the disk is gone.
	g.Expect(waitTask(t, s, "pve1", root(t, s, "DELETE", "/nodes/pve1/storage/local/content/"+iso, nil))).To(Equal("OK"))
	r := root(t, s, "POST", "/nodes/pve1/qemu/102/status/start", nil)
	g.Expect(r.status).To(Equal(200))
	g.Expect(waitTask(t, s, "pve1", r)).To(Equal("volume '" + iso + "' does not exist"))
	g.Expect(root(t, s, "PUT", "/nodes/pve1/qemu/102/config", form("ide2", "none,media=cdrom")).status).To(Equal(200))
	s.mu.Lock()
	for _, scope := range s.vols["local-lvm"] {
		for _, v := range scope {
			s.removeVolume(v)
		}
	}
	s.mu.Unlock()
	g.Expect(start("102")).To(Equal(`can't activate LV '/dev/pve/vm-102-disk-0':   Failed to find logical volume "pve/vm-102-disk-0"`))
}

// TestHARecoveryFromFailedNode: an HA-managed VM on a node that stays down
// past the fence delay is recovered to another node and started there; a
// non-HA VM stays on the dead node.
func TestHARecoveryFromFailedNode(t *testing.T) {
	g := NewWithT(t)
	// Fence delay 120 Proxmox s = 240 ms, CRM delay 20 ms at TimeScale 0.002.
	s := startSim(t, Config{Nodes: threeNodes(), TimeScale: 0.002})
	for _, id := range []string{"100", "101"} {
		g.Expect(waitTask(t, s, "pve2", root(t, s, "POST", "/nodes/pve2/qemu", form("vmid", id)))).To(Equal("OK"))
		g.Expect(waitTask(t, s, "pve2", root(t, s, "POST", "/nodes/pve2/qemu/"+id+"/status/start", nil))).To(Equal("OK"))
	}
	g.Expect(root(t, s, "POST", "/cluster/ha/resources", form("sid", "100")).status).To(Equal(200))
	s.SetNodeOnline("pve2", false)
	waitFor(t, "VM 100 recovered and running on pve1", func() bool {
		vm, _ := s.VM(100)
		return vm.Node == "pve1" && vm.Status == "running"
	})
	vm, _ := s.VM(101)
	g.Expect(vm.Node).To(Equal("pve2"), "a VM without HA stays with its node")
	g.Expect(root(t, s, "GET", "/nodes/pve1/qemu/100/status/current", nil).status).To(Equal(200))
}

// TestNodeTaskListOwnTasksOnly: without Sys.Audit on the node a caller lists
// only its own tasks (node_tasks' $check_task_user).
func TestNodeTaskListOwnTasksOnly(t *testing.T) {
	g := NewWithT(t)
	alice := "alice@pve!t=s"
	s := startSim(t, Config{Tokens: []TokenConfig{
		{ID: DefaultTokenID, Secret: DefaultTokenSecret, ACLs: []ACLConfig{{Path: "/", Role: "Administrator"}}},
		{ID: "alice@pve!t", Secret: "s", ACLs: []ACLConfig{{Path: "/vms", Role: "PVEVMAdmin"}}},
	}})
	g.Expect(waitTask(t, s, "pve1", root(t, s, "POST", "/nodes/pve1/qemu", form("vmid", "100")))).To(Equal("OK"))
	r := call(t, s, alice, "POST", "/nodes/pve1/qemu/100/status/start", nil)
	g.Expect(r.status).To(Equal(200), r.reason)
	g.Expect(s.WaitTasks(5 * time.Second)).To(Succeed())
	mine := call(t, s, alice, "GET", "/nodes/pve1/tasks", nil).body["data"].([]any)
	g.Expect(mine).To(HaveLen(1))
	g.Expect(mine[0]).To(HaveKeyWithValue("type", "qmstart"))
	g.Expect(mine[0]).To(HaveKeyWithValue("user", "alice@pve"))
	g.Expect(root(t, s, "GET", "/nodes/pve1/tasks", nil).body["data"]).To(HaveLen(2), "an auditor sees all")
}

// TestClusterTasks: GET /cluster/tasks lists what every online node broadcast: its running
// tasks (an unreaped one among them) and its most recent finished ones up to 25 entries,
// token tasks split into user and tokenid. A token without Sys.Audit on "/" sees none of its
// own tasks (the list compares the split user to the caller's token id), an auditor all.
func TestClusterTasks(t *testing.T) {
	g := NewWithT(t)
	alice := "alice@pve!t=s"
	s := startSim(t, Config{Nodes: []NodeConfig{{Name: "pve1"}, {Name: "pve2"}}, Tokens: []TokenConfig{
		{ID: DefaultTokenID, Secret: DefaultTokenSecret, ACLs: []ACLConfig{{Path: "/", Role: "Administrator"}}},
		{ID: "alice@pve!t", Secret: "s", ACLs: []ACLConfig{{Path: "/vms", Role: "PVEVMAdmin"}}},
	}})
	for i := range 30 {
		g.Expect(waitTask(t, s, "pve1", root(t, s, "POST", "/nodes/pve1/qemu", form("vmid", strconv.Itoa(100+i))))).To(Equal("OK"))
	}
	g.Expect(waitTask(t, s, "pve2", root(t, s, "POST", "/nodes/pve2/qemu", form("vmid", "200")))).To(Equal("OK"))
	r := call(t, s, alice, "POST", "/nodes/pve1/qemu/100/status/start", nil)
	g.Expect(r.status).To(Equal(200), r.reason)
	g.Expect(s.WaitTasks(5 * time.Second)).To(Succeed())

	byNode := map[string]int{}
	var start map[string]any
	for _, e := range root(t, s, "GET", "/cluster/tasks", nil).body["data"].([]any) {
		e := e.(map[string]any)
		byNode[e["node"].(string)]++
		if e["type"] == "qmstart" {
			start = e
		}
	}
	g.Expect(byNode).To(Equal(map[string]int{"pve1": 25, "pve2": 1}), "25 entries per node at most")
	g.Expect(start).To(HaveKeyWithValue("user", "alice@pve"))
	g.Expect(start).To(HaveKeyWithValue("tokenid", "t"))
	g.Expect(start).To(HaveKeyWithValue("status", "OK"))
	g.Expect(start).To(HaveKey("endtime"))
	g.Expect(call(t, s, alice, "GET", "/cluster/tasks", nil).body["data"]).To(BeEmpty(), "no Sys.Audit on /: not even its own")

	// An unreaped task is listed running until the next task starts on its node.
	s.AddFault(Fault{Method: "POST", Path: "/nodes/{node}/qemu/{vmid}/status/stop", UnreapedTaskRate: 1})
	stop := root(t, s, "POST", "/nodes/pve2/qemu/200/status/stop", nil)
	g.Expect(waitTask(t, s, "pve2", stop)).To(Equal("OK"))
	listed := func() map[string]any {
		for _, e := range root(t, s, "GET", "/cluster/tasks", nil).body["data"].([]any) {
			if e.(map[string]any)["upid"] == stop.body["data"] {
				return e.(map[string]any)
			}
		}
		return nil
	}
	g.Expect(listed()).NotTo(HaveKey("status"))
	g.Expect(listed()).To(HaveKey("pid"))
	s.ClearFaults()
	g.Expect(waitTask(t, s, "pve2", root(t, s, "POST", "/nodes/pve2/qemu/200/status/start", nil))).To(Equal("OK"))
	g.Expect(listed()).To(HaveKeyWithValue("status", "OK"))
}
