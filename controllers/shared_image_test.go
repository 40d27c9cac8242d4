package controllers

import (
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	infrav1 "github.com/proxmox-talos/cluster-api-provider-proxmox-talos/api/v1beta1"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/pkg/imagefactory"
)

// talosImages lists the provider's Talos images in the simulator.
func talosImages() []string {
	var out []string
	for _, v := range pve.Inventory().VolumesByContent("import") {
		if _, err := imagefactory.ParseStorageName(v.VolID[strings.Index(v.VolID, "/")+1:]); err == nil {
			out = append(out, v.VolID)
		}
	}
	return out
}

// TestSharedImagesOutliveOneCluster: two clusters share the image storage (and the image);
// deleting one keeps the image for the other, deleting the last removes it.
func TestSharedImagesOutliveOneCluster(t *testing.T) {
	startManager(t)
	a, b := newFixture(t, "share-a"), newFixture(t, "share-b")
	for _, f := range []*fixture{a, b} {
		f.createCluster(nil)
		f.markInfrastructureProvisioned()
		f.createMachine(f.cluster+"-w-0", machineOpts{})
	}
	a.waitProvisioned(60*time.Second, "share-a-w-0")
	b.waitProvisioned(60*time.Second, "share-b-w-0")
	if imgs := talosImages(); len(imgs) != 1 {
		t.Fatalf("want one shared Talos image, got %v", imgs)
	}

	deleteObj(t, &infrav1.ProxmoxTalosMachine{ObjectMeta: metav1.ObjectMeta{Namespace: a.ns, Name: "share-a-w-0"}})
	deleteObj(t, &infrav1.ProxmoxTalosCluster{ObjectMeta: metav1.ObjectMeta{Namespace: a.ns, Name: a.cluster}})
	eventually(t, 60*time.Second, a.anyLeft)
	if imgs := talosImages(); len(imgs) != 1 {
		t.Fatalf("the image of the remaining cluster went away with the other: %v", imgs)
	}

	deleteObj(t, &infrav1.ProxmoxTalosMachine{ObjectMeta: metav1.ObjectMeta{Namespace: b.ns, Name: "share-b-w-0"}})
	deleteObj(t, &infrav1.ProxmoxTalosCluster{ObjectMeta: metav1.ObjectMeta{Namespace: b.ns, Name: b.cluster}})
	b.waitAllGone() // includes: no Talos image left
}
