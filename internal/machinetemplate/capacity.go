// Package machinetemplate computes what one machine of a ProxmoxTalosMachineTemplate offers,
// for Cluster API's opt-in autoscaling from zero: the cluster autoscaler cannot look at a
// Node of a MachineDeployment that has none, so it reads the infrastructure template's
// status.capacity (and status.nodeInfo) to build a template node and decide whether a
// pending Pod would fit. Everything here follows from the template's spec (and the cluster's
// Talos settings); no Proxmox call is needed, because the provider creates exactly the
// hardware the spec asks for.
package machinetemplate

import (
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	infrav1 "github.com/proxmox-talos/cluster-api-provider-proxmox-talos/api/v1beta1"
)

const (
	mib = int64(1) << 20
	gib = int64(1) << 30

	// TalosSystemPartitionsMiB is the size of a Talos nocloud disk image before Talos grows
	// its EPHEMERAL partition (/var, where kubelet's ephemeral storage lives) to fill the
	// boot disk: the image's minimum raw size (Talos' MinRAWDiskSize for nocloud). What is
	// left of the boot disk after it is an upper bound of EPHEMERAL's extent, so reporting it
	// never promises more than the disk holds.
	TalosSystemPartitionsMiB = 1246

	// OperatingSystem is the only operating system Talos nodes run.
	OperatingSystem = "linux"
)

// Status returns the template status the autoscaling-from-zero contract asks for:
//
//   - capacity.cpu: sockets × cores (each is a vCPU the guest and kubelet see);
//   - capacity.memory: memoryMiB (ballooning is off by default, so the guest sees all of it);
//   - capacity.ephemeral-storage: the boot disk minus the Talos system partitions (the
//     contract names cpu, memory and GPUs; the cluster autoscaler's Cluster API provider
//     reads every resource in status.capacity, so the disk is published too);
//   - nodeInfo.architecture: the Talos image architecture (the machine's override, else
//     the cluster's), left empty when neither is known yet (the autoscaler then assumes
//     amd64 or its CAPI_SCALE_ZERO_DEFAULT_ARCH);
//   - nodeInfo.operatingSystem: linux.
//
// spec is the template's machine spec; its unset fields count with their documented
// defaults, as the webhooks and the machine controller apply them. clusterTalos is the
// owning cluster's Talos settings, nil when the template has no cluster yet.
func Status(spec infrav1.ProxmoxTalosMachineSpec, clusterTalos *infrav1.TalosImageSpec) infrav1.ProxmoxTalosMachineTemplateStatus {
	s := spec.DeepCopy()
	s.Default()

	capacity := corev1.ResourceList{
		corev1.ResourceCPU:    *resource.NewQuantity(int64(s.Sockets)*int64(s.Cores), resource.DecimalSI),
		corev1.ResourceMemory: *resource.NewQuantity(int64(s.MemoryMiB)*mib, resource.BinarySI),
	}
	if eph := int64(s.BootDisk.SizeGiB)*gib - TalosSystemPartitionsMiB*mib; eph > 0 {
		capacity[corev1.ResourceEphemeralStorage] = *resource.NewQuantity(eph, resource.BinarySI)
	}
	return infrav1.ProxmoxTalosMachineTemplateStatus{
		Capacity: capacity,
		NodeInfo: infrav1.NodeInfo{
			Architecture:    Architecture(s.Talos, clusterTalos),
			OperatingSystem: OperatingSystem,
		},
	}
}

// Architecture is the architecture of the Talos image a machine boots: the machine's
// override wins, else the cluster's setting (amd64 when the cluster leaves it unset, as its
// defaulting does). Empty when the machine sets none and the cluster is unknown.
func Architecture(machine, cluster *infrav1.TalosImageSpec) string {
	if machine != nil && machine.Architecture != "" {
		return machine.Architecture
	}
	if cluster == nil {
		return ""
	}
	if cluster.Architecture != "" {
		return cluster.Architecture
	}
	return infrav1.DefaultArchitecture
}
