package machine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"

	"sigs.k8s.io/cluster-api/util/conditions"

	infrav1 "github.com/proxmox-talos/cluster-api-provider-proxmox-talos/api/v1beta1"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/internal/cluster"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/pkg/bootstrap"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/pkg/imagefactory"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/pkg/proxmox"
)

// prepareImage makes sure the Talos disk image the VM imports is in imageStorage. For
// nocloud every machine with the same Talos settings shares one image (and one transfer,
// as EnsureImage is single-flight per file); for metal the image carries the machine's
// static network in META key 10 and is therefore per machine.
func (r *Reconciler) prepareImage(ctx context.Context, s *Scope) (result, error) {
	if vmCreated(s) || createInFlight(s) {
		return next()
	}
	s.PTM.Status.Step = infrav1.StepPreparingImage
	talos := infrav1.EffectiveTalos(s.ClusterSpec.Talos, s.Spec.Talos)

	sc, err := r.schematic(s, talos)
	if err != nil {
		r.setCondition(s, infrav1.ImageReadyCondition, false, infrav1.InvalidConfigurationReason, err.Error())
		return stop(ctrlResultNone)
	}
	factory, err := r.Images.ForURL(talos.FactoryURL)
	if err != nil {
		r.setCondition(s, infrav1.ImageReadyCondition, false, infrav1.InvalidConfigurationReason, err.Error())
		return stop(ctrlResultNone)
	}
	// The factory serves only schematics it stores, so POST before asking Proxmox to fetch.
	id, err := factory.CreateSchematic(ctx, sc)
	if err != nil {
		r.setCondition(s, infrav1.ImageReadyCondition, false, infrav1.ImageFactoryErrorReason, err.Error())
		r.warn(s, infrav1.ImageFactoryErrorReason, "Image Factory: %s", err.Error())
		return r.waitOn(s, infrav1.ImageReadyCondition)
	}
	ref := imagefactory.ImageRef{SchematicID: id, TalosVersion: talos.Version, Platform: string(talos.Platform), Arch: talos.Architecture}
	filename, err := ref.StorageName()
	if err != nil {
		r.setCondition(s, infrav1.ImageReadyCondition, false, infrav1.InvalidConfigurationReason, err.Error())
		return stop(ctrlResultNone)
	}
	url, err := factory.ImageURL(ref)
	if err != nil {
		r.setCondition(s, infrav1.ImageReadyCondition, false, infrav1.InvalidConfigurationReason, err.Error())
		return stop(ctrlResultNone)
	}

	req := proxmox.ImageRequest{
		Node: s.PTM.Spec.Node, Storage: s.ClusterSpec.ImageStorage, Filename: filename, Content: "import",
		URL: url, Transfer: proxmox.TransferDownload,
	}
	if s.ClusterSpec.ImageTransfer == infrav1.ImageTransferUpload {
		req.Transfer = proxmox.TransferUpload
		req.Source = r.imageSource(url)
	}
	if talos.Platform == infrav1.TalosPlatformMetal && recordVolume(s, req.Node, volumeID(req)) {
		// The metal image is this machine's own: recorded before it exists, so deletion
		// removes exactly it.
		return r.persistNow()
	}
	// The transfer runs in the background (download-url is a Proxmox task, an upload
	// streams through this process); the pass never waits for it.
	res, err := s.PVE.StartImage(ctx, req)
	if errors.Is(err, proxmox.ErrInProgress) {
		// Set only while the transfer runs: a pass that finds the image in storage leaves
		// a True condition untouched (the machine now passes here on every event while
		// it waits for its bootstrap data, and a flip would rewrite the status each time).
		if c := conditions.Get(s.PTM, infrav1.ImageReadyCondition); c == nil || c.Reason != infrav1.ImageDownloadingReason {
			r.setCondition(s, infrav1.ImageReadyCondition, false, infrav1.ImageDownloadingReason, "Transferring "+filename+" to storage "+s.ClusterSpec.ImageStorage)
		}
		return r.waitOn(s, infrav1.ImageReadyCondition)
	}
	if err != nil {
		reason, msg := cluster.ClassifyError(err)
		r.setCondition(s, infrav1.ImageReadyCondition, false, reason, msg)
		r.warn(s, reason, "Transferring image %s: %s", filename, msg)
		return r.waitOn(s, infrav1.ImageReadyCondition)
	}
	if res.Transferred {
		r.event(s, "Normal", "ImageTransferred", "Talos image %s is in storage %s", filename, s.ClusterSpec.ImageStorage)
	}
	s.imageVolID = res.VolID
	r.setCondition(s, infrav1.ImageReadyCondition, true, infrav1.ReadyReason, res.VolID)
	return next()
}

// schematic builds the image customisation. Metal images also carry the network (META
// key 10) and the kernel argument that makes Talos read its config from the metal-iso.
func (r *Reconciler) schematic(s *Scope, talos infrav1.TalosImageSpec) (*imagefactory.Schematic, error) {
	opts := imagefactory.SchematicOptions{
		Extensions:      talos.Extensions,
		ExtraKernelArgs: talos.ExtraKernelArgs,
	}
	if opts.Extensions == nil {
		opts.Extensions = []string{}
	}
	if talos.Platform == infrav1.TalosPlatformMetal {
		network, err := networkFor(s, true)
		if err != nil {
			return nil, err
		}
		meta, err := bootstrap.PlatformNetworkConfig(network, s.Machine.Name)
		if err != nil {
			return nil, fmt.Errorf("rendering META key 10: %w", err)
		}
		opts.Meta = []imagefactory.MetaValue{{Key: imagefactory.MetaKeyNetworkPlatformConfig, Value: string(meta)}}
		if !slices.Contains(opts.ExtraKernelArgs, "talos.config=metal-iso") {
			opts.ExtraKernelArgs = append(slices.Clone(opts.ExtraKernelArgs), "talos.config=metal-iso")
		}
	}
	return imagefactory.NewSchematic(opts)
}

// imageSource streams the image from the factory through the controller (Upload mode).
func (r *Reconciler) imageSource(url string) proxmox.ImageSource {
	return func(ctx context.Context) (io.ReadCloser, int64, error) {
		hc := r.HTTPClient
		if hc == nil {
			hc = http.DefaultClient
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return nil, 0, err
		}
		resp, err := hc.Do(req)
		if err != nil {
			return nil, 0, err
		}
		if resp.StatusCode != http.StatusOK {
			resp.Body.Close()
			return nil, 0, fmt.Errorf("downloading %s: HTTP %d", url, resp.StatusCode)
		}
		return resp.Body, resp.ContentLength, nil
	}
}

func volumeID(req proxmox.ImageRequest) string {
	return req.Storage + ":" + req.Content + "/" + req.Filename
}

// createInFlight reports whether a VM create task is recorded: the image and the boot
// ISO it uses are in place, and the passes that follow the task need not check them.
func createInFlight(s *Scope) bool {
	return s.PTM.Status.Task != nil && s.PTM.Status.Task.Type == taskCreate
}

// vmCreated reports whether the VM exists already, so the steps that prepare its
// creation have nothing left to do.
func vmCreated(s *Scope) bool {
	return conditions.IsTrue(s.PTM, infrav1.VMProvisionedCondition) || s.PTM.Spec.ProviderID != ""
}
