package cluster

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrl "sigs.k8s.io/controller-runtime/pkg/reconcile"

	clusterv1 "sigs.k8s.io/cluster-api/api/core/v1beta2"

	infrav1 "github.com/proxmox-talos/cluster-api-provider-proxmox-talos/api/v1beta1"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/pkg/imagefactory"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/pkg/proxmox"
)

// Talos image garbage collection.
//
// A nocloud image is shared by every machine with the same (schematic, Talos version,
// platform, architecture) on one Proxmox installation and image storage, across clusters.
// After a Talos upgrade (or an extension change) no machine uses the old image any more;
// without collection it would stay in storage until the last cluster on that storage is
// deleted (deleteImages). The collector deletes such images while the clusters live:
//
//   - identity first: only import volumes whose names parse as this provider's image
//     names (imagefactory.ParseStorageName) are ever candidates; nothing else in the
//     storage is touched;
//   - "in use" is what any ProxmoxTalosMachine of any cluster on the same Proxmox URL and
//     image storage would import: its effective Talos settings (cluster's, overridden by
//     the machine's) for shared images, and every import volume in spec.ownedVolumes
//     (metal images). Deleting machines count until they are gone. A machine whose
//     cluster cannot be resolved, or whose schematic cannot be computed, blocks every
//     deletion on that pass: an unknown user might be using any image;
//   - never racing a create: an image must be seen unused for Grace (default 30 s) on
//     two passes; right before a deletion the machines are listed again uncached
//     (APIReader), and no deletion starts on a node with a running qmcreate task (a
//     machine that picked the image a moment ago imports it in that task);
//   - never waiting: each deletion is a Proxmox task (imgdel) whose UPID is recorded and
//     polled on later passes; the pass requeues instead of blocking.
//
// An idle cluster makes no Proxmox call for this: the storage is listed only when the set
// of images in use changed since the last listing (a machine came or went with other
// settings), when candidates wait out their grace, or while deletions run.

// DefaultImageGCGrace is how long an image must stay unused before it is deleted.
const DefaultImageGCGrace = 30 * time.Second

// ImageGC is the collector's state, shared by every pass of the manager process (the
// Reconciler is built per pass). The zero value is ready; a restart forgets it, which only
// delays collection (grace starts again; running deletion tasks end on their own).
type ImageGC struct {
	// Grace is how long an image must be unused before it is deleted (DefaultImageGCGrace).
	Grace time.Duration
	// Reader lists machines uncached right before a deletion starts (the manager's API
	// reader); nil falls back to the Reconciler's client.
	Reader client.Reader

	mu     sync.Mutex
	stores map[string]*gcStore
}

// gcStore is what the collector knows of one (Proxmox URL, image storage).
type gcStore struct {
	// busy serialises passes over the same storage (clusters sharing it reconcile in
	// parallel); a pass that finds it busy leaves the work to the one holding it.
	busy sync.Mutex
	// inUse is the set of image file names in use when the storage was last listed.
	inUse map[string]bool
	// listed: the storage was listed with inUse as it is.
	listed bool
	// unused remembers when each candidate (volid@node) was first seen unused.
	unused map[string]time.Time
	// tasks are running deletions, volid@node -> UPID.
	tasks map[string]gcTask
}

type gcTask struct {
	node, volid, upid string
}

func (g *ImageGC) store(key string) *gcStore {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.stores == nil {
		g.stores = map[string]*gcStore{}
	}
	st, ok := g.stores[key]
	if !ok {
		st = &gcStore{unused: map[string]time.Time{}, tasks: map[string]gcTask{}}
		g.stores[key] = st
	}
	return st
}

func (g *ImageGC) grace() time.Duration {
	if g.Grace > 0 {
		return g.Grace
	}
	return DefaultImageGCGrace
}

// storageKey identifies one image storage of one Proxmox installation.
func storageKey(spec infrav1.ProxmoxTalosClusterSpec) string {
	return strings.TrimRight(spec.Proxmox.URL, "/") + "|" + spec.ImageStorage
}

// reconcileImageGC runs one collection pass for the cluster's image storage. It never
// stops the cluster's pass: a Proxmox error is reported as an event and retried later.
func (r *Reconciler) reconcileImageGC(ctx context.Context, s *Scope) ctrl.Result {
	if r.ImageGC == nil || s.pve == nil {
		return ctrl.Result{}
	}
	st := r.ImageGC.store(storageKey(s.Spec))
	if !st.busy.TryLock() {
		return ctrl.Result{}
	}
	defer st.busy.Unlock()
	after, err := r.collectImages(ctx, s, st, time.Now())
	if err != nil {
		reason, msg := ClassifyError(err)
		r.event(s, corev1.EventTypeWarning, reason, "Collecting unused Talos images in storage %s: %s", s.Spec.ImageStorage, msg)
		return ctrl.Result{RequeueAfter: r.Timing.WithDefaults().Max}
	}
	return ctrl.Result{RequeueAfter: after}
}

// collectImages is one pass: it follows running deletions, lists the storage if anything
// may have changed, starts the deletions that are due and returns when to look again (0:
// nothing pending).
func (r *Reconciler) collectImages(ctx context.Context, s *Scope, st *gcStore, now time.Time) (time.Duration, error) {
	inUse, resolved, err := imagesInUse(ctx, r.Client, s.Spec)
	if err != nil {
		return 0, err
	}
	if st.listed && resolved && maps.Equal(inUse, st.inUse) && len(st.unused) == 0 && len(st.tasks) == 0 {
		return 0, nil // nothing changed since the last listing: no Proxmox call
	}
	var requeue time.Duration
	soon := func(d time.Duration) {
		if d > 0 && (requeue == 0 || d < requeue) {
			requeue = d
		}
	}

	// Deletions under way: polled, never waited for.
	for id, t := range st.tasks {
		ts, err := s.pve.TaskStatus(ctx, t.upid)
		switch {
		case errors.Is(err, proxmox.ErrNotFound) || errors.Is(err, proxmox.ErrBadRequest):
			delete(st.tasks, id) // PVE forgot the task; the listing below tells what is left
		case err != nil:
			return 0, err
		case ts.Running:
			soon(r.Timing.WithDefaults().Min)
		default:
			delete(st.tasks, id)
			if terr := ts.Err(); terr != nil {
				r.event(s, corev1.EventTypeWarning, "ImageDeleteFailed", "Deleting unused Talos image %s on %s: %s", t.volid, t.node, terr.Error())
			} else {
				r.event(s, corev1.EventTypeNormal, "ImageDeleted", "Deleted unused Talos image %s on %s", t.volid, t.node)
			}
		}
	}

	nodes, err := s.pve.Nodes(ctx)
	if err != nil {
		return 0, err
	}
	present := map[string]bool{}
	var live map[string]bool // the uncached re-check, made at most once per pass
	for _, node := range nodes {
		if !node.Online {
			soon(r.Timing.WithDefaults().Max) // its images are collected once it is back
			continue
		}
		vols, err := s.pve.StorageContent(ctx, node.Name, s.Spec.ImageStorage, "import")
		if errors.Is(err, proxmox.ErrNotFound) {
			continue // this node does not have the storage
		}
		if err != nil {
			return 0, err
		}
		var due []proxmox.Volume
		for _, v := range vols {
			name := v.VolID[strings.Index(v.VolID, "/")+1:]
			if _, err := imagefactory.ParseStorageName(name); err != nil {
				continue // not an image this provider placed
			}
			id := v.VolID + "@" + node.Name
			present[id] = true
			if inUse[name] {
				delete(st.unused, id)
				continue
			}
			if _, running := st.tasks[id]; running {
				continue
			}
			since, seen := st.unused[id]
			if !seen {
				st.unused[id] = now
				soon(r.ImageGC.grace())
				continue
			}
			if wait := since.Add(r.ImageGC.grace()).Sub(now); wait > 0 {
				soon(wait)
				continue
			}
			if resolved {
				due = append(due, v)
			} else {
				soon(r.Timing.WithDefaults().Max)
			}
		}
		if len(due) == 0 {
			continue
		}
		if live == nil {
			var ok bool
			if live, ok, err = imagesInUse(ctx, r.ImageGC.reader(r.Client), s.Spec); err != nil {
				return 0, err
			}
			if !ok {
				soon(r.Timing.WithDefaults().Max)
				break
			}
		}
		// A machine that picked an image a moment ago imports it in its create task.
		creating, err := s.pve.ListTasks(ctx, node.Name, proxmox.TaskFilter{Type: "qmcreate", Source: "active"})
		if err != nil {
			return 0, err
		}
		if len(creating) > 0 {
			soon(r.Timing.WithDefaults().Max)
			continue
		}
		for _, v := range due {
			name := v.VolID[strings.Index(v.VolID, "/")+1:]
			id := v.VolID + "@" + node.Name
			if live[name] {
				// A machine the cache does not show yet uses it: look again after another
				// grace period (its creation does not trigger a pass of this cluster).
				st.unused[id] = now
				soon(r.ImageGC.grace())
				continue
			}
			upid, err := s.pve.StartDeleteVolume(ctx, node.Name, v.VolID)
			if err != nil {
				return 0, err
			}
			delete(st.unused, id)
			if upid != "" {
				st.tasks[id] = gcTask{node: node.Name, volid: v.VolID, upid: upid}
				soon(r.Timing.WithDefaults().Min)
			}
			r.event(s, corev1.EventTypeNormal, "ImageDeleting", "Deleting Talos image %s on %s: no machine on storage %s uses it any more", v.VolID, node.Name, s.Spec.ImageStorage)
		}
	}
	for id := range st.unused {
		if !present[id] {
			delete(st.unused, id)
		}
	}
	st.inUse, st.listed = inUse, resolved
	return requeue, nil
}

func (g *ImageGC) reader(fallback client.Reader) client.Reader {
	if g.Reader != nil {
		return g.Reader
	}
	return fallback
}

// imagesInUse returns the file names of the images that ProxmoxTalosMachines of every
// cluster on the same Proxmox URL and image storage as spec use or would import.
// resolved=false means some machine's image could not be determined (its cluster is not
// found, or its schematic is invalid): nothing may be deleted then.
func imagesInUse(ctx context.Context, c client.Reader, spec infrav1.ProxmoxTalosClusterSpec) (map[string]bool, bool, error) {
	// Read-only: every cluster's pass lists every machine, so copies of the cached objects
	// would cost clusters × machines copies per resync (and each pass holds its list while
	// it runs); what is defaulted below is copied first.
	var clusters infrav1.ProxmoxTalosClusterList
	if err := c.List(ctx, &clusters, client.UnsafeDisableDeepCopy); err != nil {
		return nil, false, fmt.Errorf("listing ProxmoxTalosClusters: %w", err)
	}
	var machines infrav1.ProxmoxTalosMachineList
	if err := c.List(ctx, &machines, client.UnsafeDisableDeepCopy); err != nil {
		return nil, false, fmt.Errorf("listing ProxmoxTalosMachines: %w", err)
	}
	key := storageKey(spec)
	// A machine finds its ProxmoxTalosCluster by its Cluster's name: the owner Cluster, or
	// the cluster-name label.
	byCluster := map[string]*infrav1.ProxmoxTalosClusterSpec{}
	for i := range clusters.Items {
		pc := &clusters.Items[i]
		cs := pc.Spec.DeepCopy()
		cs.Default()
		for _, ref := range pc.OwnerReferences {
			if ref.Kind == "Cluster" && strings.HasPrefix(ref.APIVersion, clusterv1.GroupVersion.Group+"/") {
				byCluster[pc.Namespace+"/"+ref.Name] = cs
			}
		}
		if name := pc.Labels[clusterv1.ClusterNameLabel]; name != "" {
			byCluster[pc.Namespace+"/"+name] = cs
		}
	}
	inUse := map[string]bool{}
	resolved := true
	for i := range machines.Items {
		m := &machines.Items[i]
		cs, ok := byCluster[m.Namespace+"/"+m.Labels[clusterv1.ClusterNameLabel]]
		if !ok {
			resolved = false
			continue
		}
		if storageKey(*cs) != key {
			continue
		}
		for _, v := range m.Spec.OwnedVolumes {
			if storage, rest, ok := strings.Cut(v.VolID, ":"); ok && storage == cs.ImageStorage && strings.HasPrefix(rest, "import/") {
				inUse[strings.TrimPrefix(rest, "import/")] = true
			}
		}
		ms := m.Spec.DeepCopy()
		ms.Default()
		talos := infrav1.EffectiveTalos(cs.Talos, ms.Talos)
		if talos.Platform == infrav1.TalosPlatformMetal {
			continue // a per-machine image, recorded in spec.ownedVolumes before it exists
		}
		name, err := sharedImageName(talos)
		if err != nil {
			resolved = false
			continue
		}
		inUse[name] = true
	}
	return inUse, resolved, nil
}

// sharedImageName is the storage name of the nocloud image for talos, computed offline
// the way the machine controller names it (internal/machine prepareImage).
func sharedImageName(talos infrav1.TalosImageSpec) (string, error) {
	opts := imagefactory.SchematicOptions{Extensions: talos.Extensions, ExtraKernelArgs: talos.ExtraKernelArgs}
	if opts.Extensions == nil {
		opts.Extensions = []string{}
	}
	sc, err := imagefactory.NewSchematic(opts)
	if err != nil {
		return "", err
	}
	id, err := imagefactory.SchematicID(sc)
	if err != nil {
		return "", err
	}
	return imagefactory.ImageRef{SchematicID: id, TalosVersion: talos.Version, Platform: string(talos.Platform), Arch: talos.Architecture}.StorageName()
}
