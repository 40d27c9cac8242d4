package webhooks

import (
	"k8s.io/apimachinery/pkg/util/validation/field"

	infrav1 "github.com/proxmox-talos/cluster-api-provider-proxmox-talos/api/v1beta1"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/pkg/proxmox"
)

// Values that the provider writes into Proxmox property strings or URL paths are checked
// against Proxmox's own formats (pkg/proxmox/formats.go), so that none can smuggle in
// another property (`,` `=`), list element (`;`) or path segment. The CRD carries the same
// patterns; these checks give the message that says what a valid value looks like.

// validateClusterFormats checks the Proxmox identifiers of a cluster spec.
func validateClusterFormats(spec *infrav1.ProxmoxTalosClusterSpec, path *field.Path) field.ErrorList {
	var errs field.ErrorList
	errs = append(errs, checkFormat(path.Child("imageStorage"), spec.ImageStorage, proxmox.CheckStorageID)...)
	errs = append(errs, checkFormat(path.Child("isoStorage"), spec.ISOStorage, proxmox.CheckStorageID)...)
	for i, fd := range spec.FailureDomains {
		for j, node := range fd.Nodes {
			errs = append(errs, checkFormat(path.Child("failureDomains").Index(i).Child("nodes").Index(j), node, proxmox.CheckNodeName)...)
		}
	}
	return errs
}

// validateMachineFormats checks the Proxmox identifiers of a machine spec.
func validateMachineFormats(spec *infrav1.ProxmoxTalosMachineSpec, path *field.Path) field.ErrorList {
	var errs field.ErrorList
	errs = append(errs, checkFormat(path.Child("node"), spec.Node, proxmox.CheckNodeName)...)
	for i, node := range spec.AllowedNodes {
		errs = append(errs, checkFormat(path.Child("allowedNodes").Index(i), node, proxmox.CheckNodeName)...)
	}
	errs = append(errs, checkFormat(path.Child("pool"), spec.Pool, proxmox.CheckPoolID)...)
	for i, tag := range spec.Tags {
		errs = append(errs, checkFormat(path.Child("tags").Index(i), tag, proxmox.CheckTag)...)
	}
	errs = append(errs, checkFormat(path.Child("cpuType"), spec.CPUType, proxmox.CheckCPUType)...)
	errs = append(errs, checkFormat(path.Child("bootDisk", "storage"), spec.BootDisk.Storage, proxmox.CheckStorageID)...)
	for i, d := range spec.ExtraDisks {
		errs = append(errs, checkFormat(path.Child("extraDisks").Index(i).Child("storage"), d.Storage, proxmox.CheckStorageID)...)
	}
	for i, nic := range spec.NetworkDevices {
		errs = append(errs, checkFormat(path.Child("networkDevices").Index(i).Child("bridge"), nic.Bridge, proxmox.CheckBridge)...)
	}
	return errs
}

// checkFormat validates an optional value: empty means "use the default" and passes.
func checkFormat(path *field.Path, value string, check func(string) error) field.ErrorList {
	if value == "" {
		return nil
	}
	if err := check(value); err != nil {
		return field.ErrorList{field.Invalid(path, value, err.Error())}
	}
	return nil
}
