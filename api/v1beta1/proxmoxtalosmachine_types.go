package v1beta1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	clusterv1 "sigs.k8s.io/cluster-api/api/core/v1beta2"
)

const (
	// MachineFinalizer lets the controller delete the VM, its boot ISO and its addresses
	// before the object goes away.
	MachineFinalizer = "proxmoxtalosmachine.infrastructure.cluster.x-k8s.io"

	// ProviderIDPrefix starts every providerID this provider sets: proxmox://<SMBIOS uuid>,
	// the form sergelogvinov's Proxmox cloud-controller-manager writes with
	// `features.provider: capmox`; its default form proxmox://<region>/<vmid> is adopted.
	ProviderIDPrefix = "proxmox://"

	// AbandonVMAnnotation, set to "true" on a ProxmoxTalosMachine that is being deleted,
	// tells the controller to stop trying to delete the machine's VM and the volumes
	// recorded on its node, and to finish the deletion without them. Use it only when the
	// Proxmox node is gone for good (hardware lost, node removed from the cluster): the VM,
	// its disks and its boot ISO (which holds the cluster's PKI) are left behind, and a
	// Warning event names them. Addresses are released as usual.
	AbandonVMAnnotation = "proxmoxtalosmachine.infrastructure.cluster.x-k8s.io/abandon-vm"

	// HandedOverFromAnnotation marks a ProxmoxTalosMachine the controller created to finish
	// another machine's deletion: that machine's VM sat on a Proxmox node that stayed
	// offline (manager flag --node-loss-handover-after), so its deletion was handed over
	// and Cluster API could replace the machine at once. The value is the original
	// machine's name, whose ownership tag the VM carries; the spec repeats the original's
	// identity (VMID, node, SMBIOS uuid, volumes, addresses, whose claims it now owns).
	// Such a machine is created already being deleted: it destroys the VM once its node
	// answers, then releases the addresses. Set only by the controller.
	HandedOverFromAnnotation = "proxmoxtalosmachine.infrastructure.cluster.x-k8s.io/handed-over-from"
)

// Talos' documented minimum memory, enforced by the validating webhooks.
const (
	// MinControlPlaneMemoryMiB is the least memory a control-plane VM may have (2 GiB).
	MinControlPlaneMemoryMiB = 2048
	// MinWorkerMemoryMiB is the least memory any VM may have (1 GiB).
	MinWorkerMemoryMiB = 1024
)

// Firmware selects the VM's firmware.
// +kubebuilder:validation:Enum=OVMF;SeaBIOS
type Firmware string

const (
	// FirmwareOVMF is UEFI firmware with an EFI vars disk (Talos' recommendation).
	FirmwareOVMF Firmware = "OVMF"
	// FirmwareSeaBIOS is legacy BIOS firmware.
	FirmwareSeaBIOS Firmware = "SeaBIOS"
)

// MachineType selects the emulated chipset.
// +kubebuilder:validation:Enum=q35;i440fx
type MachineType string

const (
	// MachineTypeQ35 is the modern PCIe chipset (Talos' recommendation).
	MachineTypeQ35 MachineType = "q35"
	// MachineTypeI440FX is the legacy PCI chipset (Proxmox's default `pc`).
	MachineTypeI440FX MachineType = "i440fx"
)

// VMIDRange bounds the VMIDs the provider may give new VMs.
// +kubebuilder:validation:XValidation:rule="self.start <= self.end",message="vmidRange.start must not be greater than vmidRange.end"
type VMIDRange struct {
	// start is the lowest VMID to use (100 to 999999999).
	// +required
	// +kubebuilder:validation:Minimum=100
	// +kubebuilder:validation:Maximum=999999999
	Start int32 `json:"start"`

	// end is the highest VMID to use, inclusive (100 to 999999999).
	// +required
	// +kubebuilder:validation:Minimum=100
	// +kubebuilder:validation:Maximum=999999999
	End int32 `json:"end"`
}

// Disk is a virtual disk of a VM.
type Disk struct {
	// storage is the Proxmox storage the disk is allocated on (for example local-lvm).
	// Defaults to local-lvm for the boot disk.
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=64
	// +kubebuilder:validation:Pattern=`^[A-Za-z][A-Za-z0-9\-_.]*[A-Za-z0-9]$`
	Storage string `json:"storage,omitempty"`

	// sizeGiB is the disk size in GiB. The boot disk is grown to this size after the Talos
	// image is imported (Talos grows its EPHEMERAL partition to fill it). Defaults to 20
	// for the boot disk.
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=65536
	SizeGiB int32 `json:"sizeGiB,omitempty"`

	// cache mode of the disk: none, writethrough (default, Talos' recommendation for
	// single-node storage), writeback, unsafe or directsync.
	// +optional
	// +kubebuilder:validation:Enum=none;writethrough;writeback;unsafe;directsync
	Cache string `json:"cache,omitempty"`

	// discard passes TRIM to the storage. Defaults to true.
	// +optional
	Discard *bool `json:"discard,omitempty"`

	// ssd presents the disk as a solid-state drive. Defaults to true.
	// +optional
	SSD *bool `json:"ssd,omitempty"`
}

// ExtraDisk is an additional data disk, attached after the boot disk.
type ExtraDisk struct {
	// device is the Proxmox disk slot, scsi1 to scsi30 (scsi0 is the boot disk).
	// +required
	// +kubebuilder:validation:Pattern=`^scsi([1-9]|[12][0-9]|30)$`
	Device string `json:"device"`

	// Disk settings; storage and sizeGiB are required for extra disks.
	Disk `json:",inline"`
}

// ProxmoxTalosMachineSpec is the desired state of one Talos VM. The fields marked
// "set by the controller" record the VM's identity so that it survives `clusterctl move`;
// once set they are immutable.
// +kubebuilder:validation:XValidation:rule="!has(oldSelf.providerID) || size(oldSelf.providerID) == 0 || (has(self.providerID) && (self.providerID == oldSelf.providerID || (oldSelf.providerID.matches('^proxmox://[0-9a-fA-F-]{36}$') && (self.providerID.matches('^proxmox://[^/]*/[0-9]+$') || self.providerID.lowerAscii() == oldSelf.providerID.lowerAscii()))))",message="providerID is immutable once set (except that the controller adopts a Proxmox cloud-controller-manager's proxmox://<region>/<vmid>, or its spelling of the uuid, for its proxmox://<uuid>)"
// +kubebuilder:validation:XValidation:rule="!has(oldSelf.vmID) || !has(oldSelf.providerID) || size(oldSelf.providerID) == 0 || (has(self.vmID) && self.vmID == oldSelf.vmID)",message="vmID is immutable once the VM is provisioned (providerID set)"
// The node is where the VM is, not who it is: live migration, HA relocation and
// maintenance moves change it, and the controller follows the VM by its identity (SMBIOS
// uuid and tags) and records the new node. So node is write-once only until a VMID is
// recorded (it is then a placement decision that the boot ISO and the VM follow); after
// that the controller may update it.
// +kubebuilder:validation:XValidation:rule="!has(oldSelf.node) || size(oldSelf.node) == 0 || (has(oldSelf.vmID) && has(self.node)) || (has(self.node) && self.node == oldSelf.node)",message="node is immutable until a vmID is recorded"
// +kubebuilder:validation:XValidation:rule="!has(oldSelf.smbiosUUID) || size(oldSelf.smbiosUUID) == 0 || (has(self.smbiosUUID) && self.smbiosUUID == oldSelf.smbiosUUID)",message="smbiosUUID is immutable once set"
type ProxmoxTalosMachineSpec struct {
	// providerID is `proxmox://<SMBIOS uuid>`, set by the controller once the VM exists.
	// When a Proxmox cloud-controller-manager gave the workload Node its own providerID
	// for this VM (`proxmox://<region>/<vmid>`), the controller adopts that value so Cluster
	// API matches Machine and Node (see docs/ccm.md).
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=512
	ProviderID string `json:"providerID,omitempty"`

	// node is the Proxmox node the VM is on. Set by the controller when it places the VM;
	// set it yourself to pin the VM to a node. It records where the VM is, not its
	// identity: when the VM moves (live migration, HA relocation, maintenance), the
	// controller finds it cluster-wide by its SMBIOS uuid and tags and updates node. It
	// cannot be changed before a vmID is recorded.
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=64
	// +kubebuilder:validation:Pattern=`^[A-Za-z0-9]([A-Za-z0-9\-]*[A-Za-z0-9])?$`
	Node string `json:"node,omitempty"`

	// vmID is the Proxmox VMID of the VM, set by the controller before it creates the VM.
	// It may still change until providerID is set: when another tool takes the id first,
	// the controller allocates another.
	// +optional
	// +kubebuilder:validation:Minimum=100
	// +kubebuilder:validation:Maximum=999999999
	VMID *int32 `json:"vmID,omitempty"`

	// smbiosUUID is the VM's SMBIOS type-1 UUID, chosen by the controller before it creates
	// the VM; it is the stable identity behind providerID.
	// +optional
	// +kubebuilder:validation:Pattern=`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`
	SMBIOSUUID string `json:"smbiosUUID,omitempty"`

	// allowedNodes restricts the Proxmox nodes this VM may be placed on. Combined with the
	// Machine's failure domain, the node must be in both. Empty means any node.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=64
	// +kubebuilder:validation:items:MinLength=1
	// +kubebuilder:validation:items:MaxLength=64
	// +kubebuilder:validation:items:Pattern=`^[A-Za-z0-9]([A-Za-z0-9\-]*[A-Za-z0-9])?$`
	AllowedNodes []string `json:"allowedNodes,omitempty"`

	// vmIDRange bounds the VMID of the new VM. Unset uses Proxmox's next free id.
	// +optional
	VMIDRange *VMIDRange `json:"vmIDRange,omitempty"`

	// pool is the Proxmox resource pool the VM joins (it must exist).
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=64
	// +kubebuilder:validation:Pattern=`^[A-Za-z0-9.\-_]+$`
	Pool string `json:"pool,omitempty"`

	// tags are extra Proxmox tags for the VM. The provider always adds tags naming the
	// cluster and the machine, which it uses to find the VM again after a crash.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=16
	// +kubebuilder:validation:items:Pattern=`^[a-zA-Z0-9_][a-zA-Z0-9_\-+.]*$`
	// +kubebuilder:validation:items:MaxLength=64
	Tags []string `json:"tags,omitempty"`

	// sockets is the number of CPU sockets. Defaults to 1.
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=4
	Sockets int32 `json:"sockets,omitempty"`

	// cores is the number of CPU cores per socket. Defaults to 2.
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=128
	Cores int32 `json:"cores,omitempty"`

	// cpuType is the emulated CPU model (Proxmox `cpu`), for example host or
	// x86-64-v2-AES. Defaults to x86-64-v2-AES, which Talos needs at least and which keeps
	// live migration possible.
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=64
	// +kubebuilder:validation:Pattern=`^(custom-)?[A-Za-z0-9][A-Za-z0-9_.\-]*$`
	CPUType string `json:"cpuType,omitempty"`

	// memoryMiB is the VM's memory in MiB. Defaults to 4096. Talos needs at least 2048 on
	// control planes and 1024 on workers.
	// +optional
	// +kubebuilder:validation:Minimum=1024
	// +kubebuilder:validation:Maximum=4194304
	MemoryMiB int32 `json:"memoryMiB,omitempty"`

	// balloonMiB is the memory balloon target in MiB; 0 (default) turns ballooning off,
	// as Talos recommends (it has no memory hotplug).
	// +optional
	// +kubebuilder:validation:Minimum=0
	BalloonMiB *int32 `json:"balloonMiB,omitempty"`

	// machineType is the emulated chipset: q35 (default) or i440fx.
	// +optional
	MachineType MachineType `json:"machineType,omitempty"`

	// firmware is OVMF (UEFI with an EFI disk on the boot disk's storage; default) or
	// SeaBIOS.
	// +optional
	Firmware Firmware `json:"firmware,omitempty"`

	// bootDisk is the disk the Talos image is imported into.
	// +optional
	BootDisk Disk `json:"bootDisk,omitempty,omitzero"`

	// extraDisks are additional data disks.
	// +optional
	// +listType=map
	// +listMapKey=device
	// +kubebuilder:validation:MaxItems=29
	ExtraDisks []ExtraDisk `json:"extraDisks,omitempty"`

	// networkDevices are the VM's NICs. Defaults to one virtio NIC net0 on vmbr0.
	// +optional
	// +listType=map
	// +listMapKey=name
	// +kubebuilder:validation:MaxItems=32
	NetworkDevices []NetworkDevice `json:"networkDevices,omitempty"`

	// talos overrides the cluster's Talos image settings for this machine, field by field.
	// +optional
	Talos *TalosImageSpec `json:"talos,omitempty"`

	// ipAddresses are the static addresses the controller allocated to this machine's
	// devices. Set by the controller; recorded here so they survive `clusterctl move`.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=64
	IPAddresses []AllocatedAddress `json:"ipAddresses,omitempty"`

	// ownedVolumes are the Proxmox volumes the controller created for this machine outside
	// its VM (the boot ISO; for the metal platform the machine's own disk image). Set by the
	// controller before it creates each volume, so deletion removes exactly these, named
	// from what was recorded rather than recomputed from a spec that may have changed, and
	// so they survive `clusterctl move`.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=8
	OwnedVolumes []OwnedVolume `json:"ownedVolumes,omitempty"`
}

// OwnedVolume is a Proxmox volume created for one machine.
type OwnedVolume struct {
	// node is the Proxmox node the volume was created through (its storage may be shared).
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=64
	Node string `json:"node"`

	// volID is the Proxmox volume id, for example local:iso/talos-cidata-....iso.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=512
	VolID string `json:"volID"`
}

// ProxmoxTask is a Proxmox task the controller started and follows on later passes
// instead of waiting for it (VM creation with its image import, graceful shutdown,
// destruction). It is recorded before the pass that started the task ends, so a
// restarted controller recognises the task as its own.
type ProxmoxTask struct {
	// upid is the task's Proxmox id (UPID:<node>:...).
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=256
	UPID string `json:"upid"`

	// type is the Proxmox task type (qmcreate, qmshutdown, qmstop, qmdestroy, ...).
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=64
	Type string `json:"type"`

	// node runs the task.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=64
	Node string `json:"node"`

	// vmID is the VM the task works on.
	// +optional
	// +kubebuilder:validation:Minimum=100
	// +kubebuilder:validation:Maximum=999999999
	VMID *int32 `json:"vmID,omitempty"`

	// startTime is when the controller started the task.
	// +optional
	StartTime metav1.Time `json:"startTime,omitempty,omitzero"`
}

// MachineStep is where a machine is in the provider's step machine.
// +kubebuilder:validation:Enum=WaitingForCluster;WaitingForBootstrapData;PlacingVM;ClaimingAddresses;PreparingImage;BuildingBootISO;CreatingVM;StartingVM;WaitingForNode;Running;Deleting
type MachineStep string

// The steps of a ProxmoxTalosMachine, in order.
const (
	StepWaitingForCluster       MachineStep = "WaitingForCluster"
	StepWaitingForBootstrapData MachineStep = "WaitingForBootstrapData"
	StepPlacingVM               MachineStep = "PlacingVM"
	StepClaimingAddresses       MachineStep = "ClaimingAddresses"
	StepPreparingImage          MachineStep = "PreparingImage"
	StepBuildingBootISO         MachineStep = "BuildingBootISO"
	StepCreatingVM              MachineStep = "CreatingVM"
	StepStartingVM              MachineStep = "StartingVM"
	StepWaitingForNode          MachineStep = "WaitingForNode"
	StepRunning                 MachineStep = "Running"
	StepDeleting                MachineStep = "Deleting"
)

// ProxmoxTalosMachineInitializationStatus reports the contract's initialization milestones.
// +kubebuilder:validation:MinProperties=1
type ProxmoxTalosMachineInitializationStatus struct {
	// provisioned is true once the VM runs and providerID and addresses are set. Cluster
	// API copies it to Machine.status.initialization.infrastructureProvisioned.
	// +optional
	Provisioned *bool `json:"provisioned,omitempty"`
}

// ProxmoxTalosMachineStatus is the observed state of a ProxmoxTalosMachine.
// +kubebuilder:validation:MinProperties=1
type ProxmoxTalosMachineStatus struct {
	// conditions: Ready, Paused and one per step (see the condition constants).
	// +optional
	// +listType=map
	// +listMapKey=type
	// +kubebuilder:validation:MaxItems=32
	Conditions []metav1.Condition `json:"conditions,omitempty"`

	// initialization reports the contract's provisioning milestone.
	// +optional
	Initialization ProxmoxTalosMachineInitializationStatus `json:"initialization,omitempty,omitzero"`

	// step is the step of the provider's step machine the machine is in.
	// +optional
	Step MachineStep `json:"step,omitempty"`

	// addresses of the VM: one InternalIP per static address, and a Hostname address equal
	// to the Talos hostname (the Machine name), because CACPPT evicts etcd members whose
	// hostname matches no address.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=32
	Addresses []clusterv1.MachineAddress `json:"addresses,omitempty"`

	// failureDomain the VM was placed in.
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=256
	FailureDomain string `json:"failureDomain,omitempty"`

	// powerState is the VM's power state as Proxmox last reported it (running, stopped).
	// +optional
	// +kubebuilder:validation:MaxLength=32
	PowerState string `json:"powerState,omitempty"`

	// bootISO is the Proxmox volume id of the VM's boot ISO while it exists; it is deleted
	// once the Node is Ready because it holds the cluster's PKI.
	// +optional
	// +kubebuilder:validation:MaxLength=512
	BootISO string `json:"bootISO,omitempty"`

	// task is the Proxmox task the controller started for this machine and follows until
	// it ends (see ProxmoxTask). Empty when none is in flight.
	// +optional
	Task *ProxmoxTask `json:"task,omitempty"`

	// observedGeneration is the generation the status reflects.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
}

// +kubebuilder:object:root=true
// +kubebuilder:resource:path=proxmoxtalosmachines,scope=Namespaced,categories=cluster-api,shortName=ptm
// +kubebuilder:storageversion
// +kubebuilder:subresource:status
// +kubebuilder:printcolumn:name="Cluster",type="string",JSONPath=".metadata.labels['cluster\\.x-k8s\\.io/cluster-name']",description="Cluster"
// +kubebuilder:printcolumn:name="Node",type="string",JSONPath=".spec.node",description="Proxmox node"
// +kubebuilder:printcolumn:name="VMID",type="integer",JSONPath=".spec.vmID",description="Proxmox VMID"
// +kubebuilder:printcolumn:name="Address",type="string",JSONPath=`.status.addresses[?(@.type=="InternalIP")].address`,description="Internal addresses"
// +kubebuilder:printcolumn:name="Step",type="string",JSONPath=".status.step",description="Step of the step machine"
// +kubebuilder:printcolumn:name="Ready",type="string",JSONPath=`.status.conditions[?(@.type=="Ready")].status`,description="Ready condition"
// +kubebuilder:printcolumn:name="Age",type="date",JSONPath=".metadata.creationTimestamp"

// ProxmoxTalosMachine is one Talos VM on Proxmox VE.
type ProxmoxTalosMachine struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// spec is the desired state.
	// +optional
	Spec ProxmoxTalosMachineSpec `json:"spec,omitempty,omitzero"`

	// status is the observed state.
	// +optional
	Status ProxmoxTalosMachineStatus `json:"status,omitempty,omitzero"`
}

// GetConditions returns the machine's conditions (for util/conditions).
func (m *ProxmoxTalosMachine) GetConditions() []metav1.Condition { return m.Status.Conditions }

// SetConditions sets the machine's conditions (for util/conditions).
func (m *ProxmoxTalosMachine) SetConditions(conditions []metav1.Condition) {
	m.Status.Conditions = conditions
}

// +kubebuilder:object:root=true

// ProxmoxTalosMachineList is a list of ProxmoxTalosMachine.
type ProxmoxTalosMachineList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []ProxmoxTalosMachine `json:"items"`
}

func init() {
	objectTypes = append(objectTypes, &ProxmoxTalosMachine{}, &ProxmoxTalosMachineList{})
}
