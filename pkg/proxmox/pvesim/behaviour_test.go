package pvesim

import (
	"net/url"
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
	s := startSim(t, Config{TaskDuration: Duration(150 * time.Millisecond)})
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
