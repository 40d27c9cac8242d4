package proxmox

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// ErrNoFreeVMID is returned by AllocateVMID when the range is exhausted.
var ErrNoFreeVMID = errors.New("no free VMID")

// allocationSnapshotAge is the oldest /cluster/resources snapshot AllocateVMID uses.
const allocationSnapshotAge = 2 * time.Second

// vmidReservations are VMIDs handed out but possibly not yet visible in
// /cluster/resources. They are what makes allocation race-free within one
// process.
type vmidReservations struct {
	mu       sync.Mutex
	reserved map[int]time.Time // vmid -> expiry
	ttl      time.Duration
}

// AllocateVMID implements Client.
func (c *PVEClient) AllocateVMID(ctx context.Context, r VMIDRange) (int, error) {
	if r.Min == 0 {
		r.Min = 100
	}
	if r.Max == 0 {
		r.Max = 999999999
	}
	var id int
	err := c.run(ctx, "AllocateVMID", func(ctx context.Context) error {
		if r.Min < 100 || r.Max < r.Min || r.Max > 999999999 {
			return fmt.Errorf("%w: VMID range [%d,%d] must lie within 100..999999999 with min <= max", ErrInvalidConfig, r.Min, r.Max)
		}
		// A snapshot a few seconds old is enough: this process's own recent
		// creates are reserved below, and a VMID another tool took meanwhile
		// makes the create fail with ErrAlreadyExists, which the caller
		// handles by allocating again. Sharing it spares a burst of N
		// allocations N reads of /cluster/resources.
		vms, err := c.clusterVMs(ctx, allocationSnapshotAge)
		if err != nil {
			return fmt.Errorf("allocating VMID: %w", err)
		}
		used := make(map[int]bool, len(vms))
		for _, vm := range vms {
			used[vm.VMID] = true
		}
		// The used set is read outside the lock (it is an API call); the
		// pick-and-reserve happens under it, so two callers that read the
		// same snapshot still get different ids.
		c.ep.vmids.mu.Lock()
		defer c.ep.vmids.mu.Unlock()
		now := c.nowFn()
		for vmid, exp := range c.ep.vmids.reserved {
			if now.After(exp) {
				delete(c.ep.vmids.reserved, vmid)
			}
		}
		for cand := r.Min; cand <= r.Max; cand++ {
			if used[cand] || r.Recorded[cand] {
				continue
			}
			if _, taken := c.ep.vmids.reserved[cand]; taken {
				continue
			}
			c.ep.vmids.reserved[cand] = now.Add(c.ep.vmids.ttl)
			id = cand
			return nil
		}
		return fmt.Errorf("%w in [%d,%d]: all ids are used or reserved; widen the range or delete VMs", ErrNoFreeVMID, r.Min, r.Max)
	})
	return id, err
}

// ReleaseVMID implements Client.
func (c *PVEClient) ReleaseVMID(vmid int) {
	c.ep.vmids.mu.Lock()
	defer c.ep.vmids.mu.Unlock()
	delete(c.ep.vmids.reserved, vmid)
}

// markVMIDTaken keeps a VMID that PVE reported as taken out of the pool for
// the reservation TTL, so the next allocation does not pick it again before
// /cluster/resources shows it.
func (c *PVEClient) markVMIDTaken(vmid int) {
	c.ep.vmids.mu.Lock()
	defer c.ep.vmids.mu.Unlock()
	c.ep.vmids.reserved[vmid] = c.nowFn().Add(c.ep.vmids.ttl)
}

// AllocateAndCreateVM allocates a VMID in r, creates spec with it and, when
// another process took the id first (ErrAlreadyExists), allocates again. It is
// a convenience for the lab and tests: controllers should persist the VMID
// between AllocateVMID and CreateVM so a crash cannot create a second VM.
func AllocateAndCreateVM(ctx context.Context, c Client, spec VMSpec, r VMIDRange, maxAttempts int) (CreateResult, error) {
	if maxAttempts <= 0 {
		maxAttempts = 5
	}
	var lastErr error
	for i := 0; i < maxAttempts; i++ {
		id, err := c.AllocateVMID(ctx, r)
		if err != nil {
			return CreateResult{}, err
		}
		spec.VMID = id
		res, err := c.CreateVM(ctx, spec)
		if err == nil {
			return res, nil
		}
		if !errors.Is(err, ErrAlreadyExists) {
			c.ReleaseVMID(id)
			return CreateResult{}, err
		}
		lastErr = err
	}
	return CreateResult{}, lastErr
}
