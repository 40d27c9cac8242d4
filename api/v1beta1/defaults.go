package v1beta1

import "k8s.io/utils/ptr"

// Defaults of a machine's hardware, applied by the defaulting webhooks and relied on by the
// controllers (which call the same functions, so an object created while webhooks were off
// behaves the same).
const (
	DefaultSockets         = 1
	DefaultCores           = 2
	DefaultCPUType         = "x86-64-v2-AES"
	DefaultMemoryMiB       = 4096
	DefaultBootDiskStorage = "local-lvm"
	DefaultBootDiskSizeGiB = 20
	DefaultDiskCache       = "writethrough"
	DefaultBridge          = "vmbr0"
	DefaultNICModel        = "virtio"
	DefaultStorage         = "local"
)

// Default fills the cluster spec's unset fields with their documented defaults.
func (s *ProxmoxTalosClusterSpec) Default() {
	if s.ControlPlaneEndpoint.Port == 0 {
		s.ControlPlaneEndpoint.Port = DefaultAPIServerPort
	}
	if s.Talos.FactoryURL == "" {
		s.Talos.FactoryURL = DefaultImageFactoryURL
	}
	if s.Talos.Platform == "" {
		s.Talos.Platform = TalosPlatformNoCloud
	}
	if s.Talos.Architecture == "" {
		s.Talos.Architecture = DefaultArchitecture
	}
	if s.Talos.Extensions == nil {
		s.Talos.Extensions = append([]string(nil), DefaultExtensions...)
	}
	if s.ImageStorage == "" {
		s.ImageStorage = DefaultStorage
	}
	if s.ISOStorage == "" {
		s.ISOStorage = DefaultStorage
	}
	if s.ImageTransfer == "" {
		s.ImageTransfer = ImageTransferDownload
	}
	for i := range s.FailureDomains {
		if s.FailureDomains[i].ControlPlane == nil {
			s.FailureDomains[i].ControlPlane = ptr.To(true)
		}
	}
	for i := range s.ExtraConfig {
		if s.ExtraConfig[i].Key == "" {
			s.ExtraConfig[i].Key = "value"
		}
	}
}

// Default fills the machine spec's unset fields with their documented defaults.
func (s *ProxmoxTalosMachineSpec) Default() {
	if s.Sockets == 0 {
		s.Sockets = DefaultSockets
	}
	if s.Cores == 0 {
		s.Cores = DefaultCores
	}
	if s.CPUType == "" {
		s.CPUType = DefaultCPUType
	}
	if s.MemoryMiB == 0 {
		s.MemoryMiB = DefaultMemoryMiB
	}
	if s.BalloonMiB == nil {
		s.BalloonMiB = ptr.To[int32](0)
	}
	if s.MachineType == "" {
		s.MachineType = MachineTypeQ35
	}
	if s.Firmware == "" {
		s.Firmware = FirmwareOVMF
	}
	if s.BootDisk.Storage == "" {
		s.BootDisk.Storage = DefaultBootDiskStorage
	}
	if s.BootDisk.SizeGiB == 0 {
		s.BootDisk.SizeGiB = DefaultBootDiskSizeGiB
	}
	s.BootDisk.defaultFlags()
	for i := range s.ExtraDisks {
		s.ExtraDisks[i].defaultFlags()
	}
	if len(s.NetworkDevices) == 0 {
		s.NetworkDevices = []NetworkDevice{{Name: "net0"}}
	}
	for i := range s.NetworkDevices {
		if s.NetworkDevices[i].Bridge == "" {
			s.NetworkDevices[i].Bridge = DefaultBridge
		}
		if s.NetworkDevices[i].Model == "" {
			s.NetworkDevices[i].Model = DefaultNICModel
		}
	}
}

func (d *Disk) defaultFlags() {
	if d.Cache == "" {
		d.Cache = DefaultDiskCache
	}
	if d.Discard == nil {
		d.Discard = ptr.To(true)
	}
	if d.SSD == nil {
		d.SSD = ptr.To(true)
	}
}

// EffectiveTalos merges a machine's Talos overrides over the cluster's settings: every
// field the machine sets wins, the rest comes from the cluster.
func EffectiveTalos(cluster TalosImageSpec, machine *TalosImageSpec) TalosImageSpec {
	out := cluster
	if machine == nil {
		return out
	}
	if machine.FactoryURL != "" {
		// The opt-in for http belongs to the URL it was given with.
		out.FactoryURL = machine.FactoryURL
		out.InsecureAllowHTTP = machine.InsecureAllowHTTP
	}
	if machine.Version != "" {
		out.Version = machine.Version
	}
	if machine.Platform != "" {
		out.Platform = machine.Platform
	}
	if machine.Architecture != "" {
		out.Architecture = machine.Architecture
	}
	if machine.Extensions != nil {
		out.Extensions = machine.Extensions
	}
	if machine.ExtraKernelArgs != nil {
		out.ExtraKernelArgs = machine.ExtraKernelArgs
	}
	return out
}
