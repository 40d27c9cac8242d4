package proxmox

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

// Limiter bounds the requests a provider sends to one PVE cluster: a token
// bucket for the rate and two semaphores for concurrency, one global and one
// per node. It is acquired for every HTTP request (every attempt of every
// retry), not per high-level operation, so the number of requests in flight
// at pveproxy never exceeds the limits however many operations run.
//
// A Limiter is safe for concurrent use and may be shared by several clients.
type Limiter struct {
	limits Limits
	rate   *rate.Limiter
	global chan struct{}

	mu    sync.Mutex
	nodes map[string]chan struct{}
	tasks map[string]chan struct{}
	// creates are the VM creates started (StartCreateVM) and not yet seen ended, per
	// node: their tasks outlive the request, so they are counted until a status read
	// shows them ended (or their deadline passes: nobody followed them).
	creates map[string]*nodeCreates

	inFlight    atomic.Int64
	maxInFlight atomic.Int64
}

// NewLimiter returns a Limiter; zero fields of l take the defaults
// (8 in flight, 4 per node, 20 QPS, burst 40).
func NewLimiter(l Limits) *Limiter {
	l = l.withDefaults()
	lim := &Limiter{
		limits:  l,
		global:  make(chan struct{}, l.MaxInFlight),
		nodes:   map[string]chan struct{}{},
		tasks:   map[string]chan struct{}{},
		creates: map[string]*nodeCreates{},
	}
	if l.QPS > 0 {
		lim.rate = rate.NewLimiter(rate.Limit(l.QPS), l.Burst)
	}
	return lim
}

// Limits returns the effective limits.
func (l *Limiter) Limits() Limits { return l.limits }

// MaxObservedInFlight is the highest number of concurrent requests seen by
// this limiter since it was created (observability and tests).
func (l *Limiter) MaxObservedInFlight() int64 { return l.maxInFlight.Load() }

func (l *Limiter) nodeSem(node string) chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	s, ok := l.nodes[node]
	if !ok {
		s = make(chan struct{}, l.limits.MaxInFlightPerNode)
		l.nodes[node] = s
	}
	return s
}

// acquireTask blocks until a task slot on node is free. The slot is held
// from the request that starts a task until the task has finished.
func (l *Limiter) acquireTask(ctx context.Context, node string) (func(), error) {
	l.mu.Lock()
	s, ok := l.tasks[node]
	if !ok {
		s = make(chan struct{}, l.limits.MaxTasksPerNode)
		l.tasks[node] = s
	}
	l.mu.Unlock()
	select {
	case s <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	var once sync.Once
	return func() { once.Do(func() { <-s }) }, nil
}

// acquire blocks until the request may be sent. node is "" for requests
// that are not addressed to a node. The node slot is taken before the global
// one: a request waiting for a busy node must not hold a global slot that
// requests to idle nodes could use.
func (l *Limiter) acquire(ctx context.Context, node string) (func(), error) {
	if l.rate != nil {
		if err := l.rate.Wait(ctx); err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			return nil, err
		}
	}
	var ns chan struct{}
	if node != "" {
		ns = l.nodeSem(node)
		select {
		case ns <- struct{}{}:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	select {
	case l.global <- struct{}{}:
	case <-ctx.Done():
		if ns != nil {
			<-ns
		}
		return nil, ctx.Err()
	}
	n := l.inFlight.Add(1)
	for {
		m := l.maxInFlight.Load()
		if n <= m || l.maxInFlight.CompareAndSwap(m, n) {
			break
		}
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			l.inFlight.Add(-1)
			<-l.global
			if ns != nil {
				<-ns
			}
		})
	}, nil
}

// nodeCreates counts one node's creates: requests being sent, and tasks by UPID with the
// time after which they no longer count.
type nodeCreates struct {
	sending int
	running map[string]time.Time
}

// reserveCreate takes one of node's MaxTasksPerNode create slots for a create about to be
// sent, unless they are all taken (false: the caller tries again later instead of
// queueing its create on PVE's storage lock).
func (l *Limiter) reserveCreate(node string, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := l.creates[node]
	if n == nil {
		n = &nodeCreates{running: map[string]time.Time{}}
		l.creates[node] = n
	}
	for upid, until := range n.running {
		if now.After(until) {
			delete(n.running, upid)
		}
	}
	if n.sending+len(n.running) >= l.limits.MaxTasksPerNode {
		return false
	}
	n.sending++
	return true
}

// createSent turns a reservation into a running create (upid "" when the request failed:
// the slot is free again); it counts until createEnded or until.
func (l *Limiter) createSent(node, upid string, until time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := l.creates[node]
	if n == nil || n.sending == 0 {
		return
	}
	n.sending--
	if upid != "" {
		n.running[upid] = until
	}
}

// createEnded frees the slot of create task upid, if it holds one.
func (l *Limiter) createEnded(upid string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, n := range l.creates {
		delete(n.running, upid)
	}
}
