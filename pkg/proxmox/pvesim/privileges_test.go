package pvesim

import (
	"testing"

	. "github.com/onsi/gomega"
)

// minimalRole is the provider's documented 9.x minimal role.
var minimalRole = []string{"VM.Allocate", "VM.Audit", "VM.Clone", "VM.Config.CDROM", "VM.Config.CPU", "VM.Config.Disk",
	"VM.Config.HWType", "VM.Config.Memory", "VM.Config.Network", "VM.Config.Options", "VM.PowerMgmt", "VM.GuestAgent.Audit",
	"Datastore.Allocate", "Datastore.AllocateSpace", "Datastore.AllocateTemplate", "Datastore.Audit", "SDN.Use", "Sys.Audit",
	"Sys.AccessNetwork"}

func TestPrivileges(t *testing.T) {
	f := false
	cfg := Config{
		Roles: map[string][]string{"CAPI": minimalRole, "NoAgent": {"VM.Allocate", "VM.Audit", "VM.PowerMgmt", "VM.Config.Options"}},
		Tokens: []TokenConfig{
			{ID: DefaultTokenID, Secret: DefaultTokenSecret, ACLs: []ACLConfig{{Path: "/", Role: "Administrator"}}},
			{ID: "capi@pve!capi", Secret: "s1", ACLs: []ACLConfig{{Path: "/", Role: "CAPI"}}},
			{ID: "audit@pve!ro", Secret: "s2", ACLs: []ACLConfig{{Path: "/", Role: "PVEAuditor"}}},
			{ID: "narrow@pve!n", Secret: "s3", ACLs: []ACLConfig{
				{Path: "/vms/100", Role: "NoAgent"},
				{Path: "/storage", Privileges: []string{"Datastore.Audit"}, Propagate: &f},
			}},
			{ID: "pool@pve!p", Secret: "s4", ACLs: []ACLConfig{{Path: "/pool/capi", Role: "PVEVMAdmin"}}},
		},
		Pools: map[string][]int{"capi": {100}},
	}
	s := startSim(t, cfg)
	g := NewWithT(t)
	g.Expect(waitTask(t, s, "pve1", root(t, s, "POST", "/nodes/pve1/qemu", form("vmid", "100", "agent", "1")))).To(Equal("OK"))
	g.Expect(waitTask(t, s, "pve1", root(t, s, "POST", "/nodes/pve1/qemu/100/status/start", nil))).To(Equal("OK"))

	tests := []struct {
		name, token, method, path string
		params                    []string
		status                    int
		reason                    string
	}{
		{"minimal role creates with disks and nic", "capi@pve!capi=s1", "POST", "/nodes/pve1/qemu",
			[]string{"vmid", "101", "scsi0", "local-lvm:1", "net0", "virtio,bridge=vmbr0", "memory", "1024"}, 200, ""},
		{"minimal role reads agent", "capi@pve!capi=s1", "GET", "/nodes/pve1/qemu/100/agent/network-get-interfaces", nil, 200, ""},
		{"minimal role download-url passes privilege check", "capi@pve!capi=s1", "POST", "/nodes/pve1/storage/local/download-url",
			[]string{"content", "iso", "filename", "x.iso", "url", "http://127.0.0.1:1/x.iso"}, 200, ""},
		{"auditor cannot create", "audit@pve!ro=s2", "POST", "/nodes/pve1/qemu", []string{"vmid", "102"}, 403,
			"Permission check failed (/vms/102, VM.Allocate)"},
		{"auditor cannot start", "audit@pve!ro=s2", "POST", "/nodes/pve1/qemu/100/status/stop", nil, 403,
			"Permission check failed (/vms/100, VM.PowerMgmt)"},
		{"auditor reads config", "audit@pve!ro=s2", "GET", "/nodes/pve1/qemu/100/config", nil, 200, ""},
		{"agent needs GuestAgent privilege", "narrow@pve!n=s3", "GET", "/nodes/pve1/qemu/100/agent/network-get-interfaces", nil, 403,
			"Permission check failed (/vms/100, VM.GuestAgent.Audit|VM.GuestAgent.Unrestricted)"},
		{"acl on other vm does not apply", "narrow@pve!n=s3", "GET", "/nodes/pve1/qemu/101/config", nil, 403,
			"Permission check failed (/vms/101, VM.Audit)"},
		{"non-propagating acl", "narrow@pve!n=s3", "GET", "/nodes/pve1/storage/local/content", nil, 403,
			"Permission check failed (/storage/local, Datastore.Audit|Datastore.AllocateSpace)"},
		{"config option needs its privilege", "narrow@pve!n=s3", "PUT", "/nodes/pve1/qemu/100/config", []string{"cores", "4"}, 403,
			"Permission check failed (/vms/100, VM.Config.CPU)"},
		{"download-url needs network privilege", "narrow@pve!n=s3", "POST", "/nodes/pve1/storage/local/download-url",
			[]string{"content", "iso", "filename", "x.iso", "url", "http://127.0.0.1:1/x.iso"}, 403, ""},
		{"pool acl grants pool member", "pool@pve!p=s4", "GET", "/nodes/pve1/qemu/100/status/current", nil, 200, ""},
		{"create needs storage space privilege", "pool@pve!p=s4", "POST", "/nodes/pve1/qemu",
			[]string{"vmid", "103", "pool", "capi", "scsi0", "local-lvm:1"}, 403, "Permission check failed (/storage/local-lvm, Datastore.AllocateSpace)"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			r := call(t, s, tc.token, tc.method, tc.path, form(tc.params...))
			g.Expect(r.status).To(Equal(tc.status), r.reason)
			if tc.reason != "" {
				g.Expect(r.reason).To(Equal(tc.reason))
			}
		})
	}
	// Resource lists are filtered by privileges.
	r := call(t, s, "narrow@pve!n=s3", "GET", "/cluster/resources", form("type", "vm"))
	g.Expect(r.body["data"]).To(HaveLen(1))
}

func TestPVE84AgentPrivilege(t *testing.T) {
	g := NewWithT(t)
	s := startSim(t, Config{Version: "8.4.1",
		Roles: map[string][]string{"R": {"VM.Audit", "VM.Monitor", "VM.Allocate"}},
		Tokens: []TokenConfig{
			{ID: DefaultTokenID, Secret: DefaultTokenSecret, ACLs: []ACLConfig{{Path: "/", Role: "Administrator"}}},
			{ID: "a@pve!t", Secret: "s", ACLs: []ACLConfig{{Path: "/", Role: "R"}}},
		}})
	g.Expect(waitTask(t, s, "pve1", root(t, s, "POST", "/nodes/pve1/qemu", form("vmid", "100", "agent", "1")))).To(Equal("OK"))
	r := call(t, s, "a@pve!t=s", "GET", "/nodes/pve1/qemu/100/agent/network-get-interfaces", nil)
	g.Expect(r.reason).To(Equal("VM 100 is not running")) // privilege passed (VM.Monitor)
	// 9.1-only parameters are unknown in 8.4 mode.
	r = root(t, s, "POST", "/nodes/pve1/qemu", form("vmid", "101", "allow-ksm", "1"))
	g.Expect(r.status).To(Equal(400))
}
