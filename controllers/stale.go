package controllers

import (
	"context"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/resourceversion"
	"sigs.k8s.io/controller-runtime/pkg/client"

	infrav1 "github.com/proxmox-talos/cluster-api-provider-proxmox-talos/api/v1beta1"
)

// A machine pass ends by writing what it did (the patch helper: conditions, then spec,
// then status, each its own request and its own watch event), and the next pass starts as
// soon as the first of those events arrives, reading the machine from the manager's
// cache. If the cache has not yet seen the last write, that pass would act on an object
// without the record of what the previous pass did: the boot ISO it uploaded
// (status.bootISO), the create it sent (status.task), the VM it started
// (status.powerState). It would repeat the work or look for it on Proxmox. So the
// controller remembers the resourceVersion of its last write of each machine, and a pass
// that reads an older one ends at once: the pending event brings the machine back.

// staleWriteTTL bounds how long a recorded write holds passes back. The cache normally
// shows a write within milliseconds; a record this old means something else happened (the
// API server's storage was restored, resource versions changed meaning) and the machine
// is reconciled from what the cache shows, as before.
const staleWriteTTL = 30 * time.Second

// writeRecord is this process's last write of one machine.
type writeRecord struct {
	uid types.UID
	rv  string
	at  time.Time
}

// stale reports whether ptm, read from the cache, is older than this process's last write
// of it. A record the cache has caught up with (or that no longer applies) is dropped.
func (r *ProxmoxTalosMachineReconciler) stale(ptm *infrav1.ProxmoxTalosMachine) bool {
	key := client.ObjectKeyFromObject(ptm)
	v, ok := r.written.Load(key)
	if !ok {
		return false
	}
	w := v.(writeRecord)
	if w.uid == ptm.UID && time.Since(w.at) < staleWriteTTL {
		if cmp, err := resourceversion.CompareResourceVersion(w.rv, ptm.ResourceVersion); err == nil && cmp > 0 {
			return true
		}
	}
	r.written.Delete(key)
	return false
}

// wrote records the last write made through writes, if any.
func (r *ProxmoxTalosMachineReconciler) wrote(ptm *infrav1.ProxmoxTalosMachine, writes *versionRecorder) {
	if rv := writes.last(); rv != "" {
		r.written.Store(client.ObjectKeyFromObject(ptm), writeRecord{uid: ptm.UID, rv: rv, at: time.Now()})
	}
}

// versionRecorder is the client a pass writes its machine through: it remembers the newest
// resourceVersion the API server returned for a write (a write's object is updated from
// the response).
type versionRecorder struct {
	client.Client
	mu sync.Mutex
	rv string
}

func (c *versionRecorder) note(obj client.Object) {
	rv := obj.GetResourceVersion()
	if rv == "" {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.rv == "" {
		c.rv = rv
		return
	}
	if cmp, err := resourceversion.CompareResourceVersion(c.rv, rv); err != nil || cmp < 0 {
		c.rv = rv
	}
}

func (c *versionRecorder) last() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.rv
}

func (c *versionRecorder) Update(ctx context.Context, obj client.Object, opts ...client.UpdateOption) error {
	err := c.Client.Update(ctx, obj, opts...)
	if err == nil {
		c.note(obj)
	}
	return err
}

func (c *versionRecorder) Patch(ctx context.Context, obj client.Object, patch client.Patch, opts ...client.PatchOption) error {
	err := c.Client.Patch(ctx, obj, patch, opts...)
	if err == nil {
		c.note(obj)
	}
	return err
}

func (c *versionRecorder) Status() client.SubResourceWriter {
	return statusRecorder{SubResourceWriter: c.Client.Status(), c: c}
}

type statusRecorder struct {
	client.SubResourceWriter
	c *versionRecorder
}

func (s statusRecorder) Update(ctx context.Context, obj client.Object, opts ...client.SubResourceUpdateOption) error {
	err := s.SubResourceWriter.Update(ctx, obj, opts...)
	if err == nil {
		s.c.note(obj)
	}
	return err
}

func (s statusRecorder) Patch(ctx context.Context, obj client.Object, patch client.Patch, opts ...client.SubResourcePatchOption) error {
	err := s.SubResourceWriter.Patch(ctx, obj, patch, opts...)
	if err == nil {
		s.c.note(obj)
	}
	return err
}
