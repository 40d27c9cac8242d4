package chaos

import (
	"testing"

	. "github.com/onsi/gomega"

	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/pkg/proxmox/pvesim"
)

// TestDuplicates proves the duplicate detector can fail: two VMs with one SMBIOS uuid, or
// two VMs tagged for one machine, are reported; distinct VMs are not.
func TestDuplicates(t *testing.T) {
	vm := func(id int, uuid string, tags ...string) pvesim.VMInfo {
		return pvesim.VMInfo{VMID: id, Tags: tags, Config: map[string]string{"smbios1": "base64=0,uuid=" + uuid}}
	}
	for _, tc := range []struct {
		name        string
		vms         []pvesim.VMInfo
		uuids, tags []string
	}{
		{"distinct", []pvesim.VMInfo{vm(100, "a1", "cluster-k00", "machine-k00-m00"), vm(101, "b2", "cluster-k00", "machine-k00-m01")}, nil, nil},
		{"same uuid", []pvesim.VMInfo{vm(100, "A1", "machine-k00-m00"), vm(101, "a1", "machine-k00-m01")}, []string{"a1"}, nil},
		{"same machine tag", []pvesim.VMInfo{vm(100, "a1", "machine-k00-m00"), vm(101, "b2", "Machine-K00-M00")}, nil, []string{"machine-k00-m00"}},
		{"cluster tags are shared by design", []pvesim.VMInfo{vm(100, "a1", "cluster-k00"), vm(101, "b2", "cluster-k00")}, nil, nil},
		{"no smbios", []pvesim.VMInfo{{VMID: 100}, {VMID: 101}}, nil, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			uuids, tags := duplicates(pvesim.Inventory{VMs: tc.vms})
			g.Expect(uuids).To(Equal(tc.uuids))
			g.Expect(tags).To(Equal(tc.tags))
		})
	}
}
