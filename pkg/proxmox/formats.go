package proxmox

import (
	"fmt"
	"regexp"
)

// Proxmox VE's own formats for identifiers that end up inside property strings
// (`scsi0=STORAGE:SIZE,cache=...`, `net0=virtio,bridge=BRIDGE,tag=N`, `cpu=TYPE`,
// `tags=a;b`) or URL paths (`/nodes/NODE/storage/STORAGE`). A value outside them could
// smuggle another property (`,` `=`), another list element (`;`) or another path segment
// (`/`, `..`) into a request, so the provider refuses them before any call.
//
// The patterns follow pve-common's PVE::JSONSchema register_format definitions and the
// schemas in the API description (../shared/pve-api):
//   - pve-storage-id (parse_storage_id):   ^[a-z][a-z0-9\-\_\.]*[a-z0-9]$  case-insensitive
//   - pve-node (pve_verify_node_name):     ^([a-zA-Z0-9]([a-zA-Z0-9\-]*[a-zA-Z0-9])?)$
//   - pve-poolid (verify_poolname):        ^[A-Za-z0-9\.\-_]+$
//   - pve-bridge-id:                        ^[-_.\w\d]+$  (ASCII here)
//   - pve-tag (PVE_TAG_RE):                 ^[a-z0-9_][a-z0-9_\-\+\.]*$  case-insensitive
//   - cputype: the names of qemu-server's CPU model list (host, kvm64, x86-64-v2-AES,
//     EPYC-Rome-v4, Opteron_G5, ...) or `custom-NAME` for cluster-defined models.
//
// Each Pattern constant is also a kubebuilder Pattern marker in api/v1beta1 (a test keeps
// them equal), so the API server refuses such values even with the webhooks off.
const (
	StorageIDPattern = `^[A-Za-z][A-Za-z0-9\-_.]*[A-Za-z0-9]$`
	NodeNamePattern  = `^[A-Za-z0-9]([A-Za-z0-9\-]*[A-Za-z0-9])?$`
	PoolIDPattern    = `^[A-Za-z0-9.\-_]+$`
	BridgePattern    = `^[A-Za-z0-9_.\-]+$`
	TagPattern       = `^[a-zA-Z0-9_][a-zA-Z0-9_\-+.]*$`
	CPUTypePattern   = `^(custom-)?[A-Za-z0-9][A-Za-z0-9_.\-]*$`
)

var (
	storageIDRe = regexp.MustCompile(StorageIDPattern)
	nodeNameRe  = regexp.MustCompile(NodeNamePattern)
	poolIDRe    = regexp.MustCompile(PoolIDPattern)
	bridgeRe    = regexp.MustCompile(BridgePattern)
	cpuTypeRe   = regexp.MustCompile(CPUTypePattern)
)

// CheckStorageID reports why s is not a Proxmox storage id (pve-storage-id), or nil.
func CheckStorageID(s string) error {
	if !storageIDRe.MatchString(s) {
		return fmt.Errorf("is not a Proxmox storage ID: start with a letter, end with a letter or digit, and use only letters, digits, - _ . in between (for example local-lvm)")
	}
	return nil
}

// CheckNodeName reports why s is not a Proxmox node name (pve-node), or nil.
func CheckNodeName(s string) error {
	if !nodeNameRe.MatchString(s) {
		return fmt.Errorf("is not a Proxmox node name: letters, digits and inner hyphens only (for example pve1)")
	}
	return nil
}

// CheckPoolID reports why s is not a Proxmox resource pool id (pve-poolid), or nil. `.` and
// `..` match Proxmox's pattern but name no pool a user would create and are path segments,
// so they are refused too.
func CheckPoolID(s string) error {
	if !poolIDRe.MatchString(s) || s == "." || s == ".." {
		return fmt.Errorf("is not a Proxmox pool ID: letters, digits, - _ . only (for example capi)")
	}
	return nil
}

// CheckBridge reports why s is not a Proxmox bridge name (pve-bridge-id), or nil.
func CheckBridge(s string) error {
	if !bridgeRe.MatchString(s) || s == "." || s == ".." {
		return fmt.Errorf("is not a Proxmox bridge name: letters, digits, - _ . only (for example vmbr0)")
	}
	return nil
}

// CheckTag reports why s is not a Proxmox tag (pve-tag), or nil.
func CheckTag(s string) error {
	if !tagRe.MatchString(s) {
		return fmt.Errorf("is not a Proxmox tag: letters, digits, _ - + . only, not starting with - + . (for example team-a)")
	}
	return nil
}

// CheckCPUType reports why s is not a CPU model name Proxmox accepts in `cpu`, or nil.
func CheckCPUType(s string) error {
	if !cpuTypeRe.MatchString(s) {
		return fmt.Errorf("is not a CPU model name: a QEMU model such as host or x86-64-v2-AES, or custom-NAME for a cluster-defined model (letters, digits, - _ . only)")
	}
	return nil
}
