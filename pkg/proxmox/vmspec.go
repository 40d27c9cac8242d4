package proxmox

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// VMSpec is a typed VM definition; CreateVM turns it into PVE's create
// parameters. Defaults follow the Talos recommendations for Proxmox.
type VMSpec struct {
	Node string
	VMID int
	// Name must be a valid DNS name (PVE requirement).
	Name string
	// Pool, if set, places the VM in a resource pool (VM.Allocate may be
	// granted on the pool instead of /vms).
	Pool string
	Tags []string

	Sockets int // default 1
	Cores   int // default 2
	// CPUType, e.g. "host" or "x86-64-v2-AES". Default "x86-64-v2-AES".
	CPUType   string
	MemoryMiB int // default 2048
	// BalloonMiB sets the balloon target; nil leaves PVE's default, a
	// pointer to 0 disables ballooning (what Talos needs).
	BalloonMiB *int
	// Machine is "q35" (default) or "i440fx".
	Machine string
	// BIOS is "ovmf" (default, adds efidisk0) or "seabios".
	BIOS string
	// EFIDiskStorage holds efidisk0; defaults to the boot disk storage.
	EFIDiskStorage string
	// SCSIHW defaults to "virtio-scsi-pci" (not virtio-scsi-single, which
	// hangs Talos bootstrap, siderolabs/talos#11173).
	SCSIHW string
	// OSType defaults to "l26".
	OSType string

	// BootDisk is the system disk, usually imported from an image.
	BootDisk Disk
	// ExtraDisks are additional empty disks.
	ExtraDisks []Disk
	NICs       []NIC
	// CDROM is an ISO volume id ("local:iso/x.iso") placed in CDROMSlot.
	CDROM string
	// CDROMSlot defaults to "ide2".
	CDROMSlot string
	// BootOrder lists devices; default is the boot disk slot.
	BootOrder []string

	// Agent enables the QEMU guest agent device (Talos needs the
	// siderolabs/qemu-guest-agent extension for it to answer).
	Agent bool
	// SerialConsole adds serial0=socket.
	SerialConsole bool
	// RNG adds rng0 from /dev/urandom. Only the user root@pam may set rng0
	// (qemu-server's check_vm_modify_config_perm); an API token, even
	// root@pam's, gets 500 "only root can set 'rng0' config".
	RNG bool
	// SMBIOSUUID sets smbios1 uuid, the source of the node's providerID.
	SMBIOSUUID string
	OnBoot     bool
	// Description is free text shown in the PVE UI.
	Description string
}

// Disk is a SCSI (or other bus) disk of a VM.
type Disk struct {
	// Slot, e.g. "scsi0" (default for the boot disk), "scsi1".
	Slot    string
	Storage string
	// ImportFrom is a volume id ("local:import/x.qcow2") to import the disk
	// from; the disk then takes the image size (resize afterwards).
	ImportFrom string
	// SizeGiB is the size of a new empty disk (ignored with ImportFrom).
	SizeGiB  int
	Discard  bool
	SSD      bool
	IOThread bool
	// Cache, e.g. "writethrough" or "none".
	Cache string
	// Format, e.g. "raw" or "qcow2" (storage default if empty).
	Format string
}

// NIC is a network interface.
type NIC struct {
	// Slot is the PVE device name, net0 to net31. Empty takes the NIC's position in
	// VMSpec.NICs, so a spec may leave gaps (net0, net2) only by naming every slot.
	Slot string
	// Model defaults to "virtio".
	Model  string
	Bridge string
	// VLAN tag, 0 = untagged.
	VLAN int
	// MTU, 0 = bridge MTU.
	MTU int
	// MAC, empty = PVE generates one.
	MAC      string
	Firewall bool
}

var (
	dnsNameRe = regexp.MustCompile(`^[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?(\.[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?)*$`)
	tagRe     = regexp.MustCompile(`^(?i)[a-z0-9_][a-z0-9_\-+.]*$`)
	macRe     = regexp.MustCompile(`^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$`)
	slotRe    = regexp.MustCompile(`^(scsi|virtio|sata|ide)[0-9]+$`)
	nicSlotRe = regexp.MustCompile(`^net([0-9]|[12][0-9]|3[01])$`)
	uuidRe    = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)
	// volidRe: a volume id never holds `,` or `;` or whitespace, which would end the
	// property (import-from=..., ide2=...) and start another.
	volidRe = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9\-_.]*:[^,;\s]+$`)
)

func (s *VMSpec) withDefaults() VMSpec {
	o := *s
	if o.Sockets == 0 {
		o.Sockets = 1
	}
	if o.Cores == 0 {
		o.Cores = 2
	}
	if o.CPUType == "" {
		o.CPUType = "x86-64-v2-AES"
	}
	if o.MemoryMiB == 0 {
		o.MemoryMiB = 2048
	}
	if o.Machine == "" {
		o.Machine = "q35"
	}
	if o.BIOS == "" {
		o.BIOS = "ovmf"
	}
	if o.SCSIHW == "" {
		o.SCSIHW = "virtio-scsi-pci"
	}
	if o.OSType == "" {
		o.OSType = "l26"
	}
	if o.BootDisk.Slot == "" {
		o.BootDisk.Slot = "scsi0"
	}
	if o.EFIDiskStorage == "" {
		o.EFIDiskStorage = o.BootDisk.Storage
	}
	if o.CDROMSlot == "" {
		o.CDROMSlot = "ide2"
	}
	if len(o.BootOrder) == 0 {
		o.BootOrder = []string{o.BootDisk.Slot}
	}
	return o
}

// Validate checks the spec before any call so that errors name the field.
func (s *VMSpec) Validate() error {
	d := s.withDefaults()
	var errs []string
	add := func(f string, a ...any) { errs = append(errs, fmt.Sprintf(f, a...)) }
	if d.Node == "" {
		add("node is empty")
	} else if err := CheckNodeName(d.Node); err != nil {
		add("node %q %v", d.Node, err)
	}
	// Values that go into property strings or paths: refuse what could inject another
	// property, list element or path segment (see formats.go).
	if d.Pool != "" {
		if err := CheckPoolID(d.Pool); err != nil {
			add("pool %q %v", d.Pool, err)
		}
	}
	if err := CheckCPUType(d.CPUType); err != nil {
		add("cpu type %q %v", d.CPUType, err)
	}
	if d.VMID < 100 || d.VMID > 999999999 {
		add("vmid %d is outside 100..999999999", d.VMID)
	}
	if d.Name == "" || len(d.Name) > 63 || !dnsNameRe.MatchString(d.Name) {
		add("name %q is not a valid DNS name", d.Name)
	}
	for _, t := range d.Tags {
		if !tagRe.MatchString(t) {
			add("tag %q may contain only letters, digits, _ - + . and must not start with - + .", t)
		}
	}
	if d.Sockets < 1 || d.Cores < 1 {
		add("sockets and cores must be >= 1")
	}
	if d.MemoryMiB < 16 {
		add("memory %d MiB is below 16", d.MemoryMiB)
	}
	if d.BalloonMiB != nil && (*d.BalloonMiB < 0 || *d.BalloonMiB > d.MemoryMiB) {
		add("balloon %d MiB must be between 0 and memory", *d.BalloonMiB)
	}
	switch d.Machine {
	case "q35", "i440fx", "pc":
	default:
		add("machine %q must be q35 or i440fx", d.Machine)
	}
	switch d.BIOS {
	case "ovmf":
		if d.EFIDiskStorage == "" {
			add("bios ovmf needs an EFI disk storage")
		}
	case "seabios":
	default:
		add("bios %q must be ovmf or seabios", d.BIOS)
	}
	disks := append([]Disk{d.BootDisk}, d.ExtraDisks...)
	seen := map[string]bool{}
	for i, dk := range disks {
		if i > 0 && dk.Slot == "" {
			add("extra disk %d has no slot", i-1)
			continue
		}
		if !slotRe.MatchString(dk.Slot) {
			add("disk slot %q is not scsiN/virtioN/sataN/ideN", dk.Slot)
		}
		if seen[dk.Slot] || dk.Slot == d.CDROMSlot && d.CDROM != "" {
			add("disk slot %q is used twice", dk.Slot)
		}
		seen[dk.Slot] = true
		if dk.Storage == "" {
			add("disk %s has no storage", dk.Slot)
		} else if err := CheckStorageID(dk.Storage); err != nil {
			add("disk %s storage %q %v", dk.Slot, dk.Storage, err)
		}
		switch dk.Cache {
		case "", "none", "writethrough", "writeback", "unsafe", "directsync":
		default:
			add("disk %s cache %q must be none, writethrough, writeback, unsafe or directsync", dk.Slot, dk.Cache)
		}
		if dk.ImportFrom != "" && !volidRe.MatchString(dk.ImportFrom) {
			add("disk %s import-from %q is not a volume id (storage:import/file)", dk.Slot, dk.ImportFrom)
		}
		if dk.ImportFrom == "" && dk.SizeGiB <= 0 {
			add("disk %s needs import-from or a size", dk.Slot)
		}
	}
	nicSlots := map[string]bool{}
	for i, n := range d.NICs {
		slot := n.slot(i)
		if !nicSlotRe.MatchString(slot) {
			add("NIC slot %q is not net0..net31", slot)
		}
		if nicSlots[slot] {
			add("NIC slot %s is used twice", slot)
		}
		nicSlots[slot] = true
		if n.Bridge == "" {
			add("%s has no bridge", slot)
		} else if err := CheckBridge(n.Bridge); err != nil {
			add("%s bridge %q %v", slot, n.Bridge, err)
		}
		if n.MAC != "" && !macRe.MatchString(n.MAC) {
			add("%s MAC %q is not aa:bb:cc:dd:ee:ff", slot, n.MAC)
		}
		if n.VLAN < 0 || n.VLAN > 4094 {
			add("%s VLAN %d is outside 0..4094", slot, n.VLAN)
		}
		if n.MTU != 0 && (n.MTU < 576 || n.MTU > 65520) {
			add("%s MTU %d is outside 576..65520", slot, n.MTU)
		}
	}
	if d.CDROM != "" && !volidRe.MatchString(d.CDROM) {
		add("cdrom %q is not a volume id (storage:iso/file.iso)", d.CDROM)
	}
	if d.SMBIOSUUID != "" && !uuidRe.MatchString(d.SMBIOSUUID) {
		add("smbios uuid %q is not a UUID", d.SMBIOSUUID)
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: VM spec %q: %s", ErrInvalidConfig, s.Name, strings.Join(errs, "; "))
	}
	return nil
}

// Params returns PVE's create parameters for the spec (after defaults).
func (s *VMSpec) Params() map[string]any {
	d := s.withDefaults()
	p := map[string]any{
		"vmid":    d.VMID,
		"name":    d.Name,
		"ostype":  d.OSType,
		"sockets": d.Sockets,
		"cores":   d.Cores,
		"cpu":     d.CPUType,
		"memory":  strconv.Itoa(d.MemoryMiB),
		"scsihw":  d.SCSIHW,
		"bios":    d.BIOS,
		"boot":    "order=" + strings.Join(d.BootOrder, ";"),
	}
	if d.Machine == "i440fx" {
		p["machine"] = "pc"
	} else {
		p["machine"] = d.Machine
	}
	if d.Pool != "" {
		p["pool"] = d.Pool
	}
	if len(d.Tags) > 0 {
		p["tags"] = strings.Join(d.Tags, ";")
	}
	if d.BalloonMiB != nil {
		p["balloon"] = *d.BalloonMiB
	}
	if d.BIOS == "ovmf" {
		p["efidisk0"] = d.EFIDiskStorage + ":1,efitype=4m,pre-enrolled-keys=0"
	}
	p[d.BootDisk.Slot] = diskString(d.BootDisk)
	for _, dk := range d.ExtraDisks {
		p[dk.Slot] = diskString(dk)
	}
	for i, n := range d.NICs {
		p[n.slot(i)] = nicString(n)
	}
	if d.CDROM != "" {
		p[d.CDROMSlot] = d.CDROM + ",media=cdrom"
	}
	if d.Agent {
		p["agent"] = "enabled=1"
	}
	if d.SerialConsole {
		p["serial0"] = "socket"
	}
	if d.RNG {
		p["rng0"] = "source=/dev/urandom"
	}
	if d.SMBIOSUUID != "" {
		p["smbios1"] = "uuid=" + strings.ToLower(d.SMBIOSUUID)
	}
	if d.OnBoot {
		p["onboot"] = 1
	}
	if d.Description != "" {
		p["description"] = d.Description
	}
	return p
}

func diskString(d Disk) string {
	var b strings.Builder
	if d.ImportFrom != "" {
		// Size 0 with import-from: the new volume takes the image's size.
		fmt.Fprintf(&b, "%s:0,import-from=%s", d.Storage, d.ImportFrom)
	} else {
		fmt.Fprintf(&b, "%s:%d", d.Storage, d.SizeGiB)
	}
	if d.Format != "" {
		b.WriteString(",format=" + d.Format)
	}
	if d.Discard {
		b.WriteString(",discard=on")
	}
	if d.SSD {
		b.WriteString(",ssd=1")
	}
	if d.IOThread {
		b.WriteString(",iothread=1")
	}
	if d.Cache != "" {
		b.WriteString(",cache=" + d.Cache)
	}
	return b.String()
}

func nicString(n NIC) string {
	model := n.Model
	if model == "" {
		model = "virtio"
	}
	s := model
	if n.MAC != "" {
		s += "=" + strings.ToUpper(n.MAC)
	}
	s += ",bridge=" + n.Bridge
	if n.VLAN > 0 {
		s += ",tag=" + strconv.Itoa(n.VLAN)
	}
	if n.MTU > 0 {
		s += ",mtu=" + strconv.Itoa(n.MTU)
	}
	if n.Firewall {
		s += ",firewall=1"
	}
	return s
}

// slot is the NIC's PVE device name: its Slot, or net<position> when unset.
func (n NIC) slot(position int) string {
	if n.Slot != "" {
		return n.Slot
	}
	return "net" + strconv.Itoa(position)
}
