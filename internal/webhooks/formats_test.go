package webhooks

import (
	"testing"

	. "github.com/onsi/gomega"
	"k8s.io/apimachinery/pkg/util/validation/field"

	clusterv1 "sigs.k8s.io/cluster-api/api/core/v1beta2"

	infrav1 "github.com/proxmox-talos/cluster-api-provider-proxmox-talos/api/v1beta1"
)

// TestFormatsNameTheField: each injected value is refused with the path of its field.
func TestFormatsNameTheField(t *testing.T) {
	machine := []struct {
		field  string
		mutate func(*infrav1.ProxmoxTalosMachineSpec)
	}{
		{"spec.node", func(s *infrav1.ProxmoxTalosMachineSpec) { s.Node = "pve1/../pve2" }},
		{"spec.allowedNodes[1]", func(s *infrav1.ProxmoxTalosMachineSpec) { s.AllowedNodes = []string{"pve1", "pve2,pve3"} }},
		{"spec.pool", func(s *infrav1.ProxmoxTalosMachineSpec) { s.Pool = "capi,onboot=1" }},
		{"spec.tags[0]", func(s *infrav1.ProxmoxTalosMachineSpec) { s.Tags = []string{"a;b"} }},
		{"spec.cpuType", func(s *infrav1.ProxmoxTalosMachineSpec) { s.CPUType = "host,flags=+pcid" }},
		{"spec.bootDisk.storage", func(s *infrav1.ProxmoxTalosMachineSpec) { s.BootDisk.Storage = "local-lvm,cache=unsafe" }},
		{"spec.extraDisks[0].storage", func(s *infrav1.ProxmoxTalosMachineSpec) {
			s.ExtraDisks = []infrav1.ExtraDisk{{Device: "scsi1", Disk: infrav1.Disk{Storage: "data=x", SizeGiB: 1}}}
		}},
		{"spec.networkDevices[0].bridge", func(s *infrav1.ProxmoxTalosMachineSpec) {
			s.NetworkDevices = []infrav1.NetworkDevice{{Name: "net0", Bridge: "vmbr0,tag=9"}}
		}},
	}
	for _, tc := range machine {
		t.Run(tc.field, func(t *testing.T) {
			g := NewWithT(t)
			spec := infrav1.ProxmoxTalosMachineSpec{}
			spec.Default()
			g.Expect(ValidateMachineSpec(&spec, false, field.NewPath("spec"))).To(BeEmpty())
			tc.mutate(&spec)
			errs := ValidateMachineSpec(&spec, false, field.NewPath("spec"))
			g.Expect(errs).To(HaveLen(1))
			g.Expect(errs[0].Field).To(Equal(tc.field))
		})
	}
	cluster := []struct {
		field  string
		mutate func(*infrav1.ProxmoxTalosClusterSpec)
	}{
		{"spec.imageStorage", func(s *infrav1.ProxmoxTalosClusterSpec) { s.ImageStorage = "local/../../etc" }},
		{"spec.isoStorage", func(s *infrav1.ProxmoxTalosClusterSpec) { s.ISOStorage = "local,content=iso" }},
		{"spec.failureDomains[0].nodes[0]", func(s *infrav1.ProxmoxTalosClusterSpec) {
			s.FailureDomains = []infrav1.FailureDomain{{Name: "a", Nodes: []string{"pve1;x"}}}
		}},
	}
	for _, tc := range cluster {
		t.Run(tc.field, func(t *testing.T) {
			g := NewWithT(t)
			spec := infrav1.ProxmoxTalosClusterSpec{
				Proxmox:              infrav1.ProxmoxAPI{URL: "https://pve.example.com:8006"},
				ControlPlaneEndpoint: clusterv1.APIEndpoint{Host: "127.10.3.1", Port: 6443},
				Talos:                infrav1.TalosImageSpec{Version: "v1.13.9"},
			}
			spec.Default()
			g.Expect(ValidateClusterSpec(&spec, field.NewPath("spec"))).To(BeEmpty())
			tc.mutate(&spec)
			errs := ValidateClusterSpec(&spec, field.NewPath("spec"))
			g.Expect(errs).To(HaveLen(1))
			g.Expect(errs[0].Field).To(Equal(tc.field))
		})
	}
}
