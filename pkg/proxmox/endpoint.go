package proxmox

import (
	"context"
	"net/http"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"
)

// Endpoint is the state every client of one Proxmox VE API shares within a process. A
// manager builds one client per ProxmoxTalosCluster (each may use its own token), but
// clusters usually share one Proxmox installation, and what makes a burst of creates
// cheap and race-free is known per installation, not per cluster:
//
//   - VMID reservations: two reconciles of this process never try the same VMID, whichever
//     cluster they belong to (without this, every cluster's client picked the same lowest
//     free id, and all but one create failed with "VM already exists");
//   - the /cluster/resources snapshot, read once and shared by every machine for a few
//     seconds (per token: what a token may see depends on its privileges);
//   - images known to be present in a storage, so that machines waiting for the same Talos
//     image do not each list the storage's content on every pass;
//   - when tasks of each type are best polled first (tasktiming.go), learned from every
//     client's polls;
//   - the node task lists that answer many clients' task questions at once (taskboard.go);
//   - the connections: one pool per TLS setting (transports), so 200 clusters on one
//     Proxmox keep at most the limiter's in-flight count of idle connections to its
//     pveproxy instead of that many each (tokens are per request, not per connection).
//
// Correctness never depends on it: another tool may still take a VMID (the create then
// fails with ErrAlreadyExists and the caller allocates again), and a restarted process
// starts empty and reads Proxmox afresh.
type Endpoint struct {
	vmids vmidReservations

	mu     sync.Mutex
	reads  map[string]*readSnapshot // kind|token[|node] -> last answer of a shared read (/cluster/resources, /nodes, a node's storages)
	images map[string]time.Time     // token|volid (node-qualified unless shared) -> seen present until
	fetch  singleflight.Group
	tasks  taskTimings
	board  taskBoard
	// transports are the connection pools, by TLS setting (transportKey).
	transports map[string]*http.Transport
}

// transport returns the connection pool of the clients whose TLS setting is key, built
// by build for the first of them.
func (e *Endpoint) transport(key string, build func() *http.Transport) *http.Transport {
	e.mu.Lock()
	defer e.mu.Unlock()
	if t, ok := e.transports[key]; ok {
		return t
	}
	if e.transports == nil {
		e.transports = map[string]*http.Transport{}
	}
	t := build()
	e.transports[key] = t
	return t
}

type readSnapshot struct {
	at  time.Time
	val any
}

// NewEndpoint returns empty shared state. ttl is how long an allocated but unused VMID
// stays reserved (0: 10m).
func NewEndpoint(ttl time.Duration) *Endpoint {
	if ttl <= 0 {
		ttl = 10 * time.Minute
	}
	return &Endpoint{
		vmids:  vmidReservations{reserved: map[int]time.Time{}, ttl: ttl},
		reads:  map[string]*readSnapshot{},
		images: map[string]time.Time{},
	}
}

// Endpoints hands out one Endpoint per Proxmox API URL.
type Endpoints struct {
	mu sync.Mutex
	m  map[string]*Endpoint
}

// For returns the shared state of the API at url (normalised: scheme and host are
// case-insensitive, a trailing slash or /api2/json does not make another endpoint).
func (e *Endpoints) For(url string, ttl time.Duration) *Endpoint {
	key := strings.TrimSuffix(strings.TrimSuffix(strings.ToLower(strings.TrimSpace(url)), "/"), apiSuffix)
	key = strings.TrimSuffix(key, "/")
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.m == nil {
		e.m = map[string]*Endpoint{}
	}
	ep, ok := e.m[key]
	if !ok {
		ep = NewEndpoint(ttl)
		e.m[key] = ep
	}
	return ep
}

// sharedRead returns the answer of the last read under key if it is at most maxAge old,
// else reads it (one read for all concurrent callers of the key). Keys include the token:
// what a token may see is its own.
func sharedRead[T any](ctx context.Context, ep *Endpoint, key string, maxAge time.Duration, now func() time.Time, read func(context.Context) (T, error)) (T, error) {
	var zero T
	ep.mu.Lock()
	if s, ok := ep.reads[key]; ok && maxAge > 0 && now().Sub(s.at) <= maxAge {
		v := s.val.(T)
		ep.mu.Unlock()
		return v, nil
	}
	ep.mu.Unlock()
	ch := ep.fetch.DoChan("read|"+key, func() (any, error) {
		at := now()
		v, err := read(context.WithoutCancel(ctx))
		if err != nil {
			return nil, err
		}
		ep.mu.Lock()
		ep.reads[key] = &readSnapshot{at: at, val: v}
		ep.mu.Unlock()
		return v, nil
	})
	select {
	case <-ctx.Done():
		return zero, ctx.Err()
	case r := <-ch:
		if r.Err != nil {
			return zero, r.Err
		}
		return r.Val.(T), nil
	}
}

// imageKnownFor is how long an image seen in a storage is taken to be there without
// listing the storage again. An image deleted behind the provider's back within this
// time makes one create fail (its task reports the missing volume); the next attempt
// after the memo expired transfers it again.
const imageKnownFor = time.Minute

func imageKey(token, node, volid string, shared bool) string {
	if shared {
		node = "*"
	}
	return token + "|" + node + "|" + volid
}

// imagePresent reports whether volid was seen on node (or on the shared storage) lately.
func (ep *Endpoint) imagePresent(token, node, volid string, now time.Time) bool {
	ep.mu.Lock()
	defer ep.mu.Unlock()
	for _, shared := range []bool{false, true} {
		if until, ok := ep.images[imageKey(token, node, volid, shared)]; ok {
			if now.Before(until) {
				return true
			}
			delete(ep.images, imageKey(token, node, volid, shared))
		}
	}
	return false
}

func (ep *Endpoint) rememberImage(token, node, volid string, shared bool, now time.Time) {
	ep.mu.Lock()
	defer ep.mu.Unlock()
	ep.images[imageKey(token, node, volid, shared)] = now.Add(imageKnownFor)
}

// forgetVolume drops what is remembered of volid (it was deleted).
func (ep *Endpoint) forgetVolume(volid string) {
	ep.mu.Lock()
	defer ep.mu.Unlock()
	for k := range ep.images {
		if strings.HasSuffix(k, "|"+volid) {
			delete(ep.images, k)
		}
	}
}
