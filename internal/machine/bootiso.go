package machine

import (
	"context"
	"fmt"

	"sigs.k8s.io/cluster-api/util/conditions"

	infrav1 "github.com/proxmox-talos/cluster-api-provider-proxmox-talos/api/v1beta1"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/internal/cluster"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/pkg/bootstrap"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/pkg/imagefactory"
)

// BootISOSlot is the CD-ROM drive the boot ISO sits in.
const BootISOSlot = "ide2"

// BootISOName is the file name of the machine's boot ISO. It is derived from the
// machine's identity recorded in the spec (namespace, name, SMBIOS uuid), not from the
// object UID, which `clusterctl move` changes. It is recorded in spec.ownedVolumes before
// the upload; deletion uses that record.
func BootISOName(s *Scope) (string, error) {
	kind := imagefactory.ISOKindCIData
	if infrav1.EffectiveTalos(s.ClusterSpec.Talos, s.Spec.Talos).Platform == infrav1.TalosPlatformMetal {
		kind = imagefactory.ISOKindMetalISO
	}
	id := s.PTM.Spec.SMBIOSUUID
	if id == "" {
		id = string(s.PTM.UID) // not placed yet by this version
	}
	return imagefactory.ISOName(kind, s.PTM.Namespace, s.PTM.Name, id)
}

// BootISOVolID is the volume id of the boot ISO in isoStorage.
func BootISOVolID(s *Scope) (string, error) {
	name, err := BootISOName(s)
	if err != nil {
		return "", err
	}
	return s.ClusterSpec.ISOStorage + ":iso/" + name, nil
}

// buildBootISO renders the VM's boot medium and uploads it to isoStorage on the VM's
// node. nocloud: a cidata ISO with the machine config as user-data, the Machine name as
// hostname and the static network matched by the NICs' MACs. metal: a metal-iso ISO with
// the machine config (the network is in the image's META).
// The ISO holds the cluster's PKI; it is deleted once the Node is Ready.
func (r *Reconciler) buildBootISO(ctx context.Context, s *Scope) (result, error) {
	if vmCreated(s) || createInFlight(s) {
		return next()
	}
	s.PTM.Status.Step = infrav1.StepBuildingBootISO

	name, err := BootISOName(s)
	if err != nil {
		return result{}, err
	}
	volid := s.ClusterSpec.ISOStorage + ":iso/" + name
	if recordVolume(s, s.PTM.Spec.Node, volid) {
		return r.persistNow()
	}
	if s.PTM.Status.BootISO == volid && conditions.IsTrue(s.PTM, infrav1.BootISOReadyCondition) {
		// Uploaded on an earlier pass (the pass that allocates the VMID ends before the
		// create): nothing it is made of changes before the VM exists. Should it have
		// gone meanwhile, the create says so and startCreate forgets it.
		return next()
	}
	iso, err := r.renderBootISO(ctx, s)
	if err != nil {
		// Errors from the renderers and readers never quote the secret bytes.
		r.setCondition(s, infrav1.BootISOReadyCondition, false, infrav1.InvalidConfigurationReason, err.Error())
		r.warn(s, infrav1.InvalidConfigurationReason, "Building boot ISO: %s", err.Error())
		return r.waitOn(s, infrav1.BootISOReadyCondition)
	}
	volid, err = s.PVE.UploadISO(ctx, s.PTM.Spec.Node, s.ClusterSpec.ISOStorage, name, iso)
	if err != nil {
		reason, msg := cluster.ClassifyError(err)
		r.setCondition(s, infrav1.BootISOReadyCondition, false, reason, msg)
		return r.waitOn(s, infrav1.BootISOReadyCondition)
	}
	s.PTM.Status.BootISO = volid
	r.setCondition(s, infrav1.BootISOReadyCondition, true, infrav1.ReadyReason, "")
	return next()
}

func (r *Reconciler) renderBootISO(ctx context.Context, s *Scope) ([]byte, error) {
	data, err := r.bootstrapData(ctx, s)
	if err != nil {
		return nil, err
	}
	extra, err := r.extraConfig(ctx, s)
	if err != nil {
		return nil, err
	}
	userData, err := bootstrap.UserData(data, extra...)
	if err != nil {
		return nil, err
	}
	if infrav1.EffectiveTalos(s.ClusterSpec.Talos, s.Spec.Talos).Platform == infrav1.TalosPlatformMetal {
		return bootstrap.MetalISO(userData)
	}
	instanceID := s.PTM.Spec.SMBIOSUUID
	if instanceID == "" {
		instanceID = string(s.PTM.UID)
	}
	meta, err := bootstrap.NoCloudMetaData(bootstrap.MetaData{InstanceID: instanceID, Hostname: s.Machine.Name})
	if err != nil {
		return nil, err
	}
	var netcfg []byte
	if hasStaticNetwork(s) {
		network, err := networkFor(s, false)
		if err != nil {
			return nil, err
		}
		if netcfg, err = bootstrap.NoCloudNetworkConfig(network); err != nil {
			return nil, fmt.Errorf("rendering network-config: %w", err)
		}
	}
	return bootstrap.CIDataISO(bootstrap.CIData{UserData: userData, MetaData: meta, NetworkConfig: netcfg})
}

// deleteBootISO ejects and deletes the boot ISO once the Node is Ready (it holds the
// cluster's PKI). The ISO is the one recorded in spec.ownedVolumes; a machine created
// before volumes were recorded uses the name recorded in status or derived as it was.
// Ejecting and deleting are idempotent.
func (r *Reconciler) deleteBootISO(ctx context.Context, s *Scope) error {
	isos := ownedVolumes(s, "iso")
	legacy := len(isos) == 0
	if legacy && s.PTM.Spec.Node != "" {
		volid := s.PTM.Status.BootISO
		if volid == "" {
			var err error
			if volid, err = BootISOVolID(s); err != nil {
				return err
			}
		}
		isos = []infrav1.OwnedVolume{{Node: s.PTM.Spec.Node, VolID: volid}}
	}
	if s.PTM.Spec.VMID != nil && s.PTM.Spec.Node != "" {
		if err := s.PVE.DetachISO(ctx, s.PTM.Spec.Node, int(*s.PTM.Spec.VMID), BootISOSlot); err != nil && !isNotFound(err) {
			return err
		}
	}
	for _, v := range isos {
		if err := s.PVE.DeleteVolume(ctx, v.Node, v.VolID); err != nil {
			return err
		}
		if !legacy {
			forgetVolume(s, v)
		}
		if s.PTM.Status.BootISO != "" {
			r.event(s, "Normal", "BootISODeleted", "Deleted boot ISO %s", v.VolID)
		}
	}
	s.PTM.Status.BootISO = ""
	r.setCondition(s, infrav1.BootISOReadyCondition, false, infrav1.BootISODeletedReason,
		"The boot ISO holds the cluster's PKI and was deleted once the Node was Ready")
	return nil
}
