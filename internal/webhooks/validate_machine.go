package webhooks

import (
	"fmt"
	"slices"

	"k8s.io/apimachinery/pkg/util/validation/field"

	infrav1 "github.com/proxmox-talos/cluster-api-provider-proxmox-talos/api/v1beta1"
)

// ValidateMachineSpec checks a machine spec (of a ProxmoxTalosMachine or a template).
// controlPlane raises the memory minimum to Talos' control-plane minimum.
func ValidateMachineSpec(spec *infrav1.ProxmoxTalosMachineSpec, controlPlane bool, path *field.Path) field.ErrorList {
	var errs field.ErrorList

	minMemory := int32(infrav1.MinWorkerMemoryMiB)
	role := "a Talos node"
	if controlPlane {
		minMemory, role = infrav1.MinControlPlaneMemoryMiB, "a Talos control-plane node"
	}
	if spec.MemoryMiB != 0 && spec.MemoryMiB < minMemory {
		errs = append(errs, field.Invalid(path.Child("memoryMiB"), spec.MemoryMiB,
			fmt.Sprintf("%s needs at least %d MiB", role, minMemory)))
	}
	if spec.BalloonMiB != nil && *spec.BalloonMiB != 0 && spec.MemoryMiB != 0 && *spec.BalloonMiB > spec.MemoryMiB {
		errs = append(errs, field.Invalid(path.Child("balloonMiB"), *spec.BalloonMiB, "must not exceed memoryMiB"))
	}

	if spec.VMIDRange != nil && spec.VMIDRange.Start > spec.VMIDRange.End {
		errs = append(errs, field.Invalid(path.Child("vmIDRange"), fmt.Sprintf("%d-%d", spec.VMIDRange.Start, spec.VMIDRange.End),
			"start must not be greater than end"))
	}
	if spec.VMID != nil && spec.VMIDRange != nil && (*spec.VMID < spec.VMIDRange.Start || *spec.VMID > spec.VMIDRange.End) {
		errs = append(errs, field.Invalid(path.Child("vmID"), *spec.VMID,
			fmt.Sprintf("is outside vmIDRange %d-%d", spec.VMIDRange.Start, spec.VMIDRange.End)))
	}
	if spec.Node != "" && len(spec.AllowedNodes) > 0 && !slices.Contains(spec.AllowedNodes, spec.Node) {
		errs = append(errs, field.Invalid(path.Child("node"), spec.Node, "is not one of allowedNodes"))
	}

	for i, d := range spec.ExtraDisks {
		p := path.Child("extraDisks").Index(i)
		if d.Storage == "" {
			errs = append(errs, field.Required(p.Child("storage"), "name the Proxmox storage for the extra disk"))
		}
		if d.SizeGiB == 0 {
			errs = append(errs, field.Required(p.Child("sizeGiB"), "give the extra disk's size in GiB"))
		}
	}

	seen := map[string]bool{}
	for i, nic := range spec.NetworkDevices {
		p := path.Child("networkDevices").Index(i)
		if seen[nic.Name] {
			errs = append(errs, field.Duplicate(p.Child("name"), nic.Name))
		}
		seen[nic.Name] = true
		errs = append(errs, validateAddressSource(nic.IPv4, p.Child("ipv4"))...)
		errs = append(errs, validateAddressSource(nic.IPv6, p.Child("ipv6"))...)
	}

	for i, a := range spec.IPAddresses {
		if _, err := parsePrefixAddr(a.Address); err != nil {
			errs = append(errs, field.Invalid(path.Child("ipAddresses").Index(i).Child("address"), a.Address, err.Error()))
		}
	}

	if spec.Talos != nil {
		errs = append(errs, validateTalos(spec.Talos, false, path.Child("talos"))...)
	}
	errs = append(errs, validateMachineFormats(spec, path)...)
	return errs
}

func validateAddressSource(src *infrav1.AddressSource, path *field.Path) field.ErrorList {
	if src == nil {
		return nil
	}
	set := 0
	if src.FromPool != "" {
		set++
	}
	if src.IPAMPoolRef != nil {
		set++
	}
	if src.DHCP != nil && *src.DHCP {
		set++
	}
	if set != 1 {
		return field.ErrorList{field.Invalid(path, "", "set exactly one of fromPool, ipamPoolRef or dhcp: true")}
	}
	return nil
}

// immutableMachineSpec is the part of a machine spec that may not change after creation:
// everything but the identity the controller records.
func immutableMachineSpec(spec infrav1.ProxmoxTalosMachineSpec) infrav1.ProxmoxTalosMachineSpec {
	spec.ProviderID, spec.Node, spec.VMID, spec.SMBIOSUUID, spec.IPAddresses, spec.OwnedVolumes = "", "", nil, "", nil, nil
	return spec
}
