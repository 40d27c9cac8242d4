package machine

import (
	"testing"

	. "github.com/onsi/gomega"
	"k8s.io/utils/ptr"

	infrav1 "github.com/proxmox-talos/cluster-api-provider-proxmox-talos/api/v1beta1"
)

// TestIdentifiesVM: the providerID forms a Proxmox CCM writes are recognised as this
// machine's VM only when their uuid or VMID is the machine's; anything else is refused
// with a message that names what the providerID points at.
func TestIdentifiesVM(t *testing.T) {
	ptm := &infrav1.ProxmoxTalosMachine{Spec: infrav1.ProxmoxTalosMachineSpec{
		SMBIOSUUID: "6f1c2d3e-4a5b-4c6d-8e7f-0a1b2c3d4e5f",
		VMID:       ptr.To[int32](123),
	}}
	tests := []struct {
		providerID string
		wantErr    string
	}{
		{"proxmox://6f1c2d3e-4a5b-4c6d-8e7f-0a1b2c3d4e5f", ""},
		{"proxmox://6F1C2D3E-4A5B-4C6D-8E7F-0A1B2C3D4E5F", ""},
		{"proxmox://cluster-1/123", ""},
		{"proxmox:///123", ""}, // the CCM allows an empty region
		{"proxmox://cluster-1/124", `it names VMID 124 in region "cluster-1", this machine's VM is VMID 123`},
		{"proxmox://00000000-0000-0000-0000-000000000001", "it names SMBIOS uuid 00000000-0000-0000-0000-000000000001"},
		{"proxmox://cluster-1/abc", "neither proxmox://<uuid> nor proxmox://<region>/<vmid>"},
		{"proxmox://a/b/123", "neither proxmox://<uuid> nor proxmox://<region>/<vmid>"},
		{"aws:///eu-west-1a/i-0123", "not a Proxmox providerID"},
	}
	for _, tt := range tests {
		t.Run(tt.providerID, func(t *testing.T) {
			g := NewWithT(t)
			err := IdentifiesVM(tt.providerID, ptm)
			if tt.wantErr == "" {
				g.Expect(err).NotTo(HaveOccurred())
				return
			}
			g.Expect(err).To(MatchError(ContainSubstring(tt.wantErr)))
		})
	}

	// A machine whose VMID is not recorded yet matches no regional providerID.
	g := NewWithT(t)
	g.Expect(IdentifiesVM("proxmox://cluster-1/123", &infrav1.ProxmoxTalosMachine{})).To(MatchError(ContainSubstring("VMID none yet")))
}
