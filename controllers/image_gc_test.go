package controllers

import (
	"fmt"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	infrav1 "github.com/proxmox-talos/cluster-api-provider-proxmox-talos/api/v1beta1"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/pkg/imagefactory"
)

// upgradeTalosVersion is the Talos version a machine of the "new template" asks for.
const upgradeTalosVersion = "v1.14.0"

// imagesOfVersion lists the provider's Talos images of one Talos version in the simulator.
func imagesOfVersion(version string) []string {
	var out []string
	for _, v := range talosImages() {
		if ref, err := imagefactory.ParseStorageName(v[strings.Index(v, "/")+1:]); err == nil && ref.TalosVersion == version {
			out = append(out, v)
		}
	}
	return out
}

// stays fails the test if the image set of version changes from want within d (d spans
// several grace periods and collection passes).
func stays(t *testing.T, d time.Duration, version string, want int, why string) {
	t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if got := imagesOfVersion(version); len(got) != want {
			t.Fatalf("%s: want %d image(s) of Talos %s, got %v", why, want, version, got)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func imgdelTasks() int {
	return pve.Stats().Calls["DELETE /nodes/{node}/storage/{storage}/content/{volume}"]
}

// TestImageGCDeletesTheOldImageAfterTheLastUser: a Talos upgrade of one cluster. The old
// image stays while one machine of the old version is left, and is deleted (an imgdel task)
// once the last one is gone; the new version's image stays.
func TestImageGCDeletesTheOldImageAfterTheLastUser(t *testing.T) {
	startManager(t)
	f := newFixture(t, "gc-upgrade")
	f.createCluster(nil)
	f.markInfrastructureProvisioned()
	f.createMachine("gc-upgrade-old-0", machineOpts{})
	f.createMachine("gc-upgrade-old-1", machineOpts{})
	f.waitProvisioned(60*time.Second, "gc-upgrade-old-0", "gc-upgrade-old-1")
	if imgs := imagesOfVersion(talosVersion); len(imgs) != 1 {
		t.Fatalf("want one image of %s, got %v", talosVersion, imgs)
	}

	// The rollout: a machine of the new version replaces one of the old.
	deleteObj(t, &infrav1.ProxmoxTalosMachine{ObjectMeta: metav1.ObjectMeta{Namespace: f.ns, Name: "gc-upgrade-old-0"}})
	f.createMachine("gc-upgrade-new-0", machineOpts{talos: &infrav1.TalosImageSpec{Version: upgradeTalosVersion}})
	f.waitProvisioned(60*time.Second, "gc-upgrade-new-0")
	if imgs := imagesOfVersion(upgradeTalosVersion); len(imgs) != 1 {
		t.Fatalf("want one image of %s, got %v", upgradeTalosVersion, imgs)
	}
	stays(t, 6*testImageGCGrace, talosVersion, 1, "gc-upgrade-old-1 still uses the old image")

	before := imgdelTasks()
	deleteObj(t, &infrav1.ProxmoxTalosMachine{ObjectMeta: metav1.ObjectMeta{Namespace: f.ns, Name: "gc-upgrade-old-1"}})
	eventually(t, 30*time.Second, func() error {
		if imgs := imagesOfVersion(talosVersion); len(imgs) > 0 {
			return fmt.Errorf("old image still in storage: %v", imgs)
		}
		return nil
	})
	if imgdelTasks() == before {
		t.Errorf("the old image went away without a delete of its volume")
	}
	stays(t, 4*testImageGCGrace, upgradeTalosVersion, 1, "gc-upgrade-new-0 uses the new image")

	deleteObj(t, &infrav1.ProxmoxTalosMachine{ObjectMeta: metav1.ObjectMeta{Namespace: f.ns, Name: "gc-upgrade-new-0"}})
	deleteObj(t, &infrav1.ProxmoxTalosCluster{ObjectMeta: metav1.ObjectMeta{Namespace: f.ns, Name: f.cluster}})
	f.waitAllGone()
}

// TestImageGCKeepsImagesInUse: an image no machine of one cluster uses any more stays while
// a machine of another cluster on the same storage uses it, and while a machine that will
// import it is still being created (here: waiting for its bootstrap data).
func TestImageGCKeepsImagesInUse(t *testing.T) {
	startManager(t)
	a, b := newFixture(t, "gc-keep-a"), newFixture(t, "gc-keep-b")
	for _, f := range []*fixture{a, b} {
		f.createCluster(nil)
		f.markInfrastructureProvisioned()
	}
	a.createMachine("gc-keep-a-0", machineOpts{})
	b.createMachine("gc-keep-b-0", machineOpts{})
	a.waitProvisioned(60*time.Second, "gc-keep-a-0")
	b.waitProvisioned(60*time.Second, "gc-keep-b-0")
	// Cluster a moves to the new version; b stays on the old one.
	a.createMachine("gc-keep-a-new", machineOpts{talos: &infrav1.TalosImageSpec{Version: upgradeTalosVersion}})
	a.waitProvisioned(60*time.Second, "gc-keep-a-new")
	deleteObj(t, &infrav1.ProxmoxTalosMachine{ObjectMeta: metav1.ObjectMeta{Namespace: a.ns, Name: "gc-keep-a-0"}})
	stays(t, 6*testImageGCGrace, talosVersion, 1, "cluster b's machine uses the old image")

	// b replaces its machine: the old one goes, a new one of the old version is created but
	// has not imported the image yet (no bootstrap data).
	b.createMachine("gc-keep-b-1", machineOpts{noBootstrap: true})
	deleteObj(t, &infrav1.ProxmoxTalosMachine{ObjectMeta: metav1.ObjectMeta{Namespace: b.ns, Name: "gc-keep-b-0"}})
	eventually(t, 30*time.Second, func() error {
		if vms := b.vmsOf("gc-keep-b-0"); len(vms) > 0 {
			return fmt.Errorf("VM of gc-keep-b-0 still there")
		}
		return nil
	})
	stays(t, 6*testImageGCGrace, talosVersion, 1, "gc-keep-b-1 is being created from the old image")
	deleteObj(t, &infrav1.ProxmoxTalosMachine{ObjectMeta: metav1.ObjectMeta{Namespace: b.ns, Name: "gc-keep-b-1"}})
	eventually(t, 30*time.Second, func() error {
		if imgs := imagesOfVersion(talosVersion); len(imgs) > 0 {
			return fmt.Errorf("old image still in storage: %v", imgs)
		}
		return nil
	})

	deleteObj(t, &infrav1.ProxmoxTalosMachine{ObjectMeta: metav1.ObjectMeta{Namespace: a.ns, Name: "gc-keep-a-new"}})
	for _, f := range []*fixture{a, b} {
		deleteObj(t, &infrav1.ProxmoxTalosCluster{ObjectMeta: metav1.ObjectMeta{Namespace: f.ns, Name: f.cluster}})
	}
	a.waitAllGone()
	b.waitAllGone()
}
