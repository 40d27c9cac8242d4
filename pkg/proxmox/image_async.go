package proxmox

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
)

// ErrInProgress means the work was started (or joined) and continues in the
// background: ask again later.
var ErrInProgress = errors.New("in progress")

// imageFlights are the image transfers this client runs in the background for
// StartImage, keyed by node/storage/filename.
type imageFlights struct {
	mu sync.Mutex
	m  map[string]*imageFlight
}

type imageFlight struct {
	done bool
	res  ImageResult
	err  error
}

// StartImage implements Client.
//
// The transfer runs in the background (bounded by ImageTaskTimeout, detached from
// ctx); callers for the same (node, storage, filename) share it. The first call
// after it ended returns its outcome (a failure is reported once, then the next
// call starts afresh). Before starting a download it looks at the node's running
// download tasks of this token that no flight of this process started: a
// restarted controller then waits for its predecessor's download instead of
// starting a second one.
func (c *PVEClient) StartImage(ctx context.Context, req ImageRequest) (ImageResult, error) {
	var res ImageResult
	err := c.run(ctx, "StartImage", func(ctx context.Context) error {
		if err := req.validate(); err != nil {
			return err
		}
		// A shared storage holds one file for every node: its flight is keyed
		// without the node, so machines on different nodes share one transfer.
		key := req.Node + "/" + req.Storage + "/" + req.Filename
		sharedKey := "*/" + req.Storage + "/" + req.Filename
		c.flights.mu.Lock()
		if c.flights.m == nil {
			c.flights.m = map[string]*imageFlight{}
		}
		for _, k := range []string{key, sharedKey} {
			if f, ok := c.flights.m[k]; ok {
				if !f.done {
					c.flights.mu.Unlock()
					return fmt.Errorf("transfer of %s to %s on %s: %w", req.Filename, req.Storage, req.Node, ErrInProgress)
				}
				delete(c.flights.m, k)
				c.flights.mu.Unlock()
				res = f.res
				return f.err
			}
		}
		c.flights.mu.Unlock()

		// Present already: nothing to do. Seen lately (by any machine of this
		// process): no call at all; else one content listing.
		volid := volumeID(req.Storage, req.Content, req.Filename)
		if c.ep.imagePresent(c.tokenID, req.Node, volid, c.nowFn()) {
			res = ImageResult{VolID: volid}
			return nil
		}
		vols, err := c.storageContent(ctx, req.Node, req.Storage, req.Content)
		if err != nil {
			return err
		}
		for _, v := range vols {
			if v.VolID == volid {
				c.ep.rememberImage(c.tokenID, req.Node, volid, false, c.nowFn())
				res = ImageResult{VolID: volid}
				return nil
			}
		}
		if req.transfer() == TransferDownload && !c.ownsAFlightOn(req.Node) {
			// A download of a previous run of this controller may still be
			// running (PVE writes to a temporary file and renames it at the
			// end, so the file is not listed yet).
			active, err := c.ListTasks(ctx, req.Node, TaskFilter{Type: "download", Source: "active", User: "me"})
			if err == nil && len(active) > 0 {
				return fmt.Errorf("transfer of %s to %s on %s: a download of this token (%s) is still running: %w",
					req.Filename, req.Storage, req.Node, active[0].UPID, ErrInProgress)
			}
		}

		if st, err := c.findStorage(ctx, req.Node, req.Storage); err == nil && st.Shared {
			key = sharedKey
		}
		c.flights.mu.Lock()
		if _, ok := c.flights.m[key]; ok { // started meanwhile
			c.flights.mu.Unlock()
			return fmt.Errorf("transfer of %s to %s on %s: %w", req.Filename, req.Storage, req.Node, ErrInProgress)
		}
		f := &imageFlight{}
		c.flights.m[key] = f
		c.flights.mu.Unlock()
		go func() {
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.cfg.ImageTaskTimeout)
			defer cancel()
			r, err := c.ensureImage(fctx, req)
			if err == nil {
				c.ep.rememberImage(c.tokenID, req.Node, r.VolID, key == sharedKey, c.nowFn())
			}
			c.flights.mu.Lock()
			f.done, f.res, f.err = true, r, c.redact(err)
			c.flights.mu.Unlock()
		}()
		return fmt.Errorf("transfer of %s to %s on %s started: %w", req.Filename, req.Storage, req.Node, ErrInProgress)
	})
	return res, err
}

func (c *PVEClient) ownsAFlightOn(node string) bool {
	c.flights.mu.Lock()
	defer c.flights.mu.Unlock()
	for k, f := range c.flights.m {
		if !f.done && (strings.HasPrefix(k, node+"/") || strings.HasPrefix(k, "*/")) {
			return true
		}
	}
	return false
}
