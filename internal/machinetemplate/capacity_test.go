package machinetemplate

import (
	"testing"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	infrav1 "github.com/proxmox-talos/cluster-api-provider-proxmox-talos/api/v1beta1"
)

func TestStatus(t *testing.T) {
	arm := &infrav1.TalosImageSpec{Architecture: "arm64"}
	tests := []struct {
		name    string
		spec    infrav1.ProxmoxTalosMachineSpec
		cluster *infrav1.TalosImageSpec
		// expected values, written as a user reads them
		cpu, memory, ephemeral string
		arch                   string
	}{
		{
			name: "defaults: 1 socket x 2 cores, 4096 MiB, 20 GiB boot disk, cluster without architecture",
			spec: infrav1.ProxmoxTalosMachineSpec{}, cluster: &infrav1.TalosImageSpec{},
			cpu: "2", memory: "4Gi", ephemeral: "19234Mi", arch: "amd64",
		},
		{
			name:    "sockets multiply cores",
			spec:    infrav1.ProxmoxTalosMachineSpec{Sockets: 2, Cores: 3, MemoryMiB: 6144, BootDisk: infrav1.Disk{SizeGiB: 50}},
			cluster: &infrav1.TalosImageSpec{Architecture: "amd64"},
			cpu:     "6", memory: "6Gi", ephemeral: "49954Mi", arch: "amd64",
		},
		{
			name:    "odd memory stays exact",
			spec:    infrav1.ProxmoxTalosMachineSpec{Cores: 1, MemoryMiB: 1500},
			cluster: arm,
			cpu:     "1", memory: "1500Mi", ephemeral: "19234Mi", arch: "arm64",
		},
		{
			name:    "the machine's Talos architecture overrides the cluster's",
			spec:    infrav1.ProxmoxTalosMachineSpec{Talos: &infrav1.TalosImageSpec{Architecture: "amd64"}},
			cluster: arm,
			cpu:     "2", memory: "4Gi", ephemeral: "19234Mi", arch: "amd64",
		},
		{
			name: "a machine override without architecture keeps the cluster's",
			spec: infrav1.ProxmoxTalosMachineSpec{Talos: &infrav1.TalosImageSpec{Version: "v1.13.9"}}, cluster: arm,
			cpu: "2", memory: "4Gi", ephemeral: "19234Mi", arch: "arm64",
		},
		{
			name: "no cluster yet: architecture left to the autoscaler's default",
			spec: infrav1.ProxmoxTalosMachineSpec{},
			cpu:  "2", memory: "4Gi", ephemeral: "19234Mi", arch: "",
		},
		{
			name: "a boot disk smaller than the Talos system partitions publishes no ephemeral storage",
			spec: infrav1.ProxmoxTalosMachineSpec{BootDisk: infrav1.Disk{SizeGiB: 1}}, cluster: arm,
			cpu: "2", memory: "4Gi", ephemeral: "", arch: "arm64",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			before := tt.spec.DeepCopy()
			got := Status(tt.spec, tt.cluster)

			g.Expect(tt.spec).To(Equal(*before), "Status must not default the caller's spec")
			g.Expect(got.Capacity.Cpu().String()).To(Equal(tt.cpu))
			g.Expect(got.Capacity.Memory().Equal(resource.MustParse(tt.memory))).To(BeTrue(), "memory %s, want %s", got.Capacity.Memory(), tt.memory)
			if tt.ephemeral == "" {
				g.Expect(got.Capacity).NotTo(HaveKey(corev1.ResourceEphemeralStorage))
				g.Expect(got.Capacity).To(HaveLen(2))
			} else {
				g.Expect(got.Capacity.StorageEphemeral().Equal(resource.MustParse(tt.ephemeral))).To(BeTrue(), "ephemeral-storage %s, want %s", got.Capacity.StorageEphemeral(), tt.ephemeral)
				g.Expect(got.Capacity).To(HaveLen(3))
			}
			g.Expect(got.NodeInfo.Architecture).To(Equal(tt.arch))
			g.Expect(got.NodeInfo.OperatingSystem).To(Equal("linux"))
		})
	}
}
