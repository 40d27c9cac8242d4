package proxmox

import "slices"

// Privilege is one Proxmox VE privilege the provider's API token needs, and why. The table
// is the source of docs/getting-started.md's role (a test compares them) and is proven
// against pvesim, which evaluates the official API schemas' permission checks: the whole
// Client lifecycle passes with exactly these privileges and fails without any one of them.
type Privilege struct {
	Name string
	// Why names the operations that need it.
	Why string
	// Transfer, when set, limits the privilege to one image transfer mode.
	Transfer ImageTransfer
	// PVEMajor, when set, limits the privilege to one Proxmox VE major version (the
	// guest-agent privileges were split in 9.0).
	PVEMajor int
}

// Privileges is every privilege the provider uses, granted on "/" (propagated).
var Privileges = []Privilege{
	{Name: "Sys.Audit", Why: "read nodes' free memory and CPUs (placement; /cluster/resources and /nodes omit them without it); see the token's tasks in /cluster/tasks"},
	{Name: "Sys.AccessNetwork", Transfer: TransferDownload, Why: "make a node fetch the Talos image from the Image Factory (download-url)"},
	// Datastore.Audit is not needed: every storage listing accepts Datastore.AllocateSpace
	// instead.
	{Name: "Datastore.AllocateSpace", Why: "allocate VM disks (create, resize); list storages and their content (preflight, image and ISO lookups)"},
	{Name: "Datastore.AllocateTemplate", Why: "upload the per-VM cidata ISO; upload or download the Talos image (import content)"},
	{Name: "Datastore.Allocate", Why: "delete the per-VM cidata ISO when the machine is deleted"},
	{Name: "SDN.Use", Why: "attach VM NICs to the bridge (/sdn/zones/localnetwork/<bridge>)"},
	{Name: "VM.Allocate", Why: "create and destroy VMs"},
	{Name: "VM.Audit", Why: "list VMs (adoption after a crash), read their status and configuration"},
	{Name: "VM.Config.CDROM", Why: "insert and eject the cidata ISO"},
	{Name: "VM.Config.CPU", Why: "set sockets, cores and CPU type at creation"},
	{Name: "VM.Config.Memory", Why: "set memory and balloon at creation"},
	{Name: "VM.Config.Disk", Why: "import the Talos image as the boot disk, resize it"},
	{Name: "VM.Config.Network", Why: "create the VM's NICs (MAC, bridge, VLAN)"},
	{Name: "VM.Config.HWType", Why: "set machine type, BIOS, serial console and RNG at creation"},
	{Name: "VM.Config.Options", Why: "set name, tags, SMBIOS uuid, guest agent and onboot"},
	{Name: "VM.PowerMgmt", Why: "start, shut down and stop VMs"},
	{Name: "VM.Monitor", PVEMajor: 8, Why: "read the VM's addresses from the QEMU guest agent (Proxmox VE 8)"},
	{Name: "VM.GuestAgent.Audit", PVEMajor: 9, Why: "read the VM's addresses from the QEMU guest agent (Proxmox VE 9 split VM.Monitor)"},
}

// RequiredPrivileges returns the privilege names a token needs on the given Proxmox VE major
// version with the given image transfer mode, sorted.
func RequiredPrivileges(pveMajor int, transfer ImageTransfer) []string {
	var out []string
	for _, p := range Privileges {
		if p.Transfer != "" && p.Transfer != transfer {
			continue
		}
		if p.PVEMajor != 0 && p.PVEMajor != pveMajor {
			continue
		}
		out = append(out, p.Name)
	}
	slices.Sort(out)
	return out
}
