package machine

import (
	"context"
	"fmt"

	infrav1 "github.com/proxmox-talos/cluster-api-provider-proxmox-talos/api/v1beta1"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/internal/cluster"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/pkg/bootstrap"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/pkg/imagefactory"
)

// BootISOSlot is the CD-ROM drive the boot ISO sits in.
const BootISOSlot = "ide2"

// BootISOName is the file name of the machine's boot ISO. It is derived from the
// machine's identity only, so deletion finds it even if status was lost.
func BootISOName(s *Scope) (string, error) {
	kind := imagefactory.ISOKindCIData
	if infrav1.EffectiveTalos(s.ClusterSpec.Talos, s.Spec.Talos).Platform == infrav1.TalosPlatformMetal {
		kind = imagefactory.ISOKindMetalISO
	}
	return imagefactory.ISOName(kind, s.PTM.Namespace, s.PTM.Name, string(s.PTM.UID))
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
	if vmCreated(s) {
		return next()
	}
	s.PTM.Status.Step = infrav1.StepBuildingBootISO

	iso, err := r.renderBootISO(ctx, s)
	if err != nil {
		// Errors from the renderers and readers never quote the secret bytes.
		r.setCondition(s, infrav1.BootISOReadyCondition, false, infrav1.InvalidConfigurationReason, err.Error())
		r.warn(s, infrav1.InvalidConfigurationReason, "Building boot ISO: %s", err.Error())
		return r.waitOn(s, infrav1.BootISOReadyCondition)
	}
	name, err := BootISOName(s)
	if err != nil {
		return result{}, err
	}
	volid, err := s.PVE.UploadISO(ctx, s.PTM.Spec.Node, s.ClusterSpec.ISOStorage, name, iso)
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
	meta, err := bootstrap.NoCloudMetaData(bootstrap.MetaData{InstanceID: string(s.PTM.UID), Hostname: s.Machine.Name})
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
