package controllers

import (
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	infrav1 "github.com/proxmox-talos/cluster-api-provider-proxmox-talos/api/v1beta1"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/pkg/imagefactory"
)

const uploadRoute = "POST /nodes/{node}/storage/{storage}/upload"
const downloadRoute = "POST /nodes/{node}/storage/{storage}/download-url"

// TestMetalPlatformWithUpload covers the hand-run pipeline's parity mode and the transfer
// mode for tokens without download privileges: each machine boots its own metal image
// (static network in META key 10) that the controller streams to Proxmox itself, and its
// config arrives on a metal-iso ISO.
func TestMetalPlatformWithUpload(t *testing.T) {
	f := newFixture(t, "metal")
	startManager(t)
	f.createCluster(func(s *infrav1.ProxmoxTalosClusterSpec) {
		s.Talos.Platform = infrav1.TalosPlatformMetal
		s.ImageTransfer = infrav1.ImageTransferUpload
	})
	f.markInfrastructureProvisioned()
	before := pve.Stats().Calls

	names := []string{"metal-w-0", "metal-w-1"}
	for _, n := range names {
		f.createMachine(n, machineOpts{})
	}
	f.waitProvisioned(60*time.Second, names...)

	after := pve.Stats().Calls
	if after[downloadRoute] != before[downloadRoute] {
		t.Errorf("Upload mode used download-url %d times", after[downloadRoute]-before[downloadRoute])
	}
	if after[uploadRoute]-before[uploadRoute] < 2 {
		t.Errorf("Upload mode uploaded %d times, want one image per node plus the ISOs", after[uploadRoute]-before[uploadRoute])
	}

	// One metal image per machine: the schematics differ by their META key 10 network.
	images := map[string]bool{}
	for _, v := range pve.Inventory().VolumesByContent("import") {
		name := v.VolID[strings.Index(v.VolID, "/")+1:]
		ref, err := imagefactory.ParseStorageName(name)
		if err == nil && ref.Platform == imagefactory.PlatformMetal {
			images[ref.SchematicID] = true
		}
	}
	if len(images) < len(names) {
		t.Errorf("%d metal images in storage, want one per machine (%d)", len(images), len(names))
	}
	for _, n := range names {
		m := f.ptm(n)
		if !strings.Contains(m.Status.BootISO, "talos-"+string(imagefactory.ISOKindMetalISO)+"-") {
			t.Errorf("%s: boot ISO %q is not a metal-iso", n, m.Status.BootISO)
		}
		if vms := f.vmsOf(n); len(vms) != 1 {
			t.Errorf("%s: %d VMs, want 1", n, len(vms))
		}
	}

	for _, n := range names {
		deleteObj(t, &infrav1.ProxmoxTalosMachine{ObjectMeta: metav1.ObjectMeta{Namespace: f.ns, Name: n}})
	}
	deleteObj(t, &infrav1.ProxmoxTalosCluster{ObjectMeta: metav1.ObjectMeta{Namespace: f.ns, Name: f.cluster}})
	f.waitAllGone()

	// Each machine's own metal image goes with it (nocloud images are shared and stay).
	for _, v := range pve.Inventory().VolumesByContent("import") {
		name := v.VolID[strings.Index(v.VolID, "/")+1:]
		if ref, err := imagefactory.ParseStorageName(name); err == nil && images[ref.SchematicID] {
			t.Errorf("metal image %s left behind", v.VolID)
		}
	}
}
