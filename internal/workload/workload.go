// Package workload reaches the workload clusters' API servers for the one kind the provider
// uses there: the machine's Node (found by name or address, its providerID set, its Ready
// condition read), and only while a machine waits for it.
//
// Why not Cluster API's ClusterCache: it keeps a connection to every workload cluster for
// the manager's whole life — a REST mapper filled from the cluster's aggregated discovery
// (every group and resource; ~400 KiB per cluster in the N=1000 benchmark, half of the
// manager's live heap), a Node informer, and a health probe every 10 s per cluster — while
// this provider needs a cluster's API for the minutes between a VM's start and its Node
// being Ready. Here a connection is built from the cluster's kubeconfig Secret (Cluster
// API's remote.RESTConfig) when a machine asks, with a REST mapper that knows Nodes only,
// and dropped when no machine has used it for a while. Steady state costs nothing: no
// memory per cluster, no request to any workload API server.
package workload

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"sigs.k8s.io/cluster-api/controllers/remote"
)

// Clients hands out clients of workload clusters' API servers.
type Clients interface {
	// Client returns a client for the cluster's Nodes. An error means the cluster cannot be
	// reached now (no kubeconfig yet, or its API server did not answer recently); it is
	// worth waiting on, not reporting as a failure.
	Client(ctx context.Context, cluster client.ObjectKey) (client.Client, error)
}

// Options tune Access. Zero values take the defaults.
type Options struct {
	// UserAgent of requests to workload API servers.
	UserAgent string
	// QPS and Burst limit requests per workload cluster. Default 20 and 30.
	QPS   float32
	Burst int
	// Timeout of one request. Default 10s.
	Timeout time.Duration
	// RetryAfter: after a request failed to reach a cluster's API server (refused, timed
	// out, TLS), Client fails at once for this long instead of dialing again, so machines
	// waiting on an unreachable cluster do not each hold a worker for a timeout. Default 10s.
	RetryAfter time.Duration
	// Refresh: a connection is rebuilt from the kubeconfig Secret when older than this,
	// so a rotated kubeconfig is picked up. Default 5m.
	Refresh time.Duration
	// IdleAfter: a connection no machine used for this long is dropped. Default 5m.
	IdleAfter time.Duration
}

func (o Options) withDefaults() Options {
	if o.QPS == 0 {
		o.QPS = 20
	}
	if o.Burst == 0 {
		o.Burst = 30
	}
	if o.Timeout <= 0 {
		o.Timeout = 10 * time.Second
	}
	if o.RetryAfter <= 0 {
		o.RetryAfter = 10 * time.Second
	}
	if o.Refresh <= 0 {
		o.Refresh = 5 * time.Minute
	}
	if o.IdleAfter <= 0 {
		o.IdleAfter = 5 * time.Minute
	}
	return o
}

// Access builds and keeps workload cluster connections on demand.
type Access struct {
	secrets client.Reader
	scheme  *runtime.Scheme
	opts    Options
	now     func() time.Time

	mu        sync.Mutex
	conns     map[client.ObjectKey]*conn
	lastSweep time.Time
}

type conn struct {
	client   client.Client
	built    time.Time
	lastUsed time.Time
	// unreachableUntil and lastErr: the last request that did not reach the API server.
	unreachableUntil time.Time
	lastErr          string
}

// New returns an Access that reads kubeconfig Secrets (`<cluster>-kubeconfig`, as Cluster
// API writes them) with secrets. scheme must know core/v1.
func New(secrets client.Reader, scheme *runtime.Scheme, opts Options) *Access {
	return &Access{secrets: secrets, scheme: scheme, opts: opts.withDefaults(), now: time.Now, conns: map[client.ObjectKey]*conn{}}
}

// ErrUnreachable is what every UnreachableError is (errors.Is).
var ErrUnreachable = errors.New("workload cluster API server not reachable")

// UnreachableError says why a workload cluster cannot be used now.
type UnreachableError struct{ Reason string }

func (e *UnreachableError) Error() string { return ErrUnreachable.Error() + ": " + e.Reason }

// Is makes errors.Is(err, ErrUnreachable) hold.
func (e *UnreachableError) Is(target error) bool { return target == ErrUnreachable }

// Client implements Clients.
func (a *Access) Client(ctx context.Context, cluster client.ObjectKey) (client.Client, error) {
	now := a.now()
	a.mu.Lock()
	a.sweepLocked(now)
	c := a.conns[cluster]
	if c != nil && now.Before(c.unreachableUntil) {
		msg := c.lastErr
		a.mu.Unlock()
		// The same text as the failure itself, so a condition quoting it stays unchanged
		// (a changed status would wake the machine at once).
		return nil, &UnreachableError{Reason: msg}
	}
	if c != nil && c.client != nil && now.Sub(c.built) < a.opts.Refresh {
		c.lastUsed = now
		a.mu.Unlock()
		return &observed{Client: c.client, access: a, cluster: cluster}, nil
	}
	a.mu.Unlock()

	wc, err := a.build(ctx, cluster)
	if err != nil {
		return nil, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.conns[cluster] = &conn{client: wc, built: now, lastUsed: now}
	return &observed{Client: wc, access: a, cluster: cluster}, nil
}

func (a *Access) build(ctx context.Context, cluster client.ObjectKey) (client.Client, error) {
	cfg, err := remote.RESTConfig(ctx, a.opts.UserAgent, a.secrets, cluster)
	if err != nil {
		if apierrors.IsNotFound(err) {
			return nil, &UnreachableError{Reason: "its kubeconfig Secret " + cluster.Name + "-kubeconfig does not exist yet"}
		}
		return nil, fmt.Errorf("reading the kubeconfig of Cluster %s: %w", cluster, err)
	}
	if a.opts.UserAgent != "" {
		cfg.UserAgent = a.opts.UserAgent
	}
	cfg.QPS, cfg.Burst, cfg.Timeout = a.opts.QPS, a.opts.Burst, a.opts.Timeout
	httpClient, err := rest.HTTPClientFor(cfg)
	if err != nil {
		return nil, fmt.Errorf("building the HTTP client of Cluster %s: %w", cluster, err)
	}
	return client.New(cfg, client.Options{Scheme: a.scheme, Mapper: nodeMapper(), HTTPClient: httpClient})
}

// nodeMapper knows the one kind the provider reads in workload clusters, so no discovery
// request is ever made (the dynamic mapper would fetch and keep the whole API).
func nodeMapper() meta.RESTMapper {
	m := meta.NewDefaultRESTMapper([]schema.GroupVersion{corev1.SchemeGroupVersion})
	m.Add(corev1.SchemeGroupVersion.WithKind("Node"), meta.RESTScopeRoot)
	return m
}

// observe records the outcome of a request through a cluster's client: one that did not
// reach the API server makes Client fail fast for RetryAfter and is returned wrapping
// ErrUnreachable; after it, as after Unauthorized, the next connection is built from the
// kubeconfig Secret again.
func (a *Access) observe(cluster client.ObjectKey, err error) error {
	if err == nil || !(IsUnreachable(err) || apierrors.IsUnauthorized(err)) {
		return err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	c := a.conns[cluster]
	if c == nil {
		c = &conn{}
		a.conns[cluster] = c
	}
	// Either way the connection is rebuilt from the kubeconfig Secret at the next
	// attempt: a rotated credential or a moved endpoint is picked up.
	c.client = nil
	if apierrors.IsUnauthorized(err) {
		return err
	}
	now := a.now()
	c.unreachableUntil = now.Add(a.opts.RetryAfter)
	c.lastErr = err.Error()
	c.lastUsed = now
	return &UnreachableError{Reason: c.lastErr}
}

// sweepLocked drops connections unused for IdleAfter, at most once a minute.
func (a *Access) sweepLocked(now time.Time) {
	if now.Sub(a.lastSweep) < time.Minute {
		return
	}
	a.lastSweep = now
	for k, c := range a.conns {
		if now.Sub(c.lastUsed) >= a.opts.IdleAfter {
			delete(a.conns, k)
		}
	}
}

// Connections is how many workload clusters Access holds a connection or an
// unreachable mark for (metrics and tests).
func (a *Access) Connections() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.conns)
}

// Unreachable tells a request that did not get an answer from the API server
// (connection refused or reset, timeout, TLS failure, or an UnreachableError) from one the
// server answered (NotFound, Conflict, Forbidden, ...), which says something about the
// object instead; for the former it returns why.
func Unreachable(err error) (reason string, ok bool) {
	if err == nil || errors.Is(err, context.Canceled) {
		return "", false
	}
	if u, isU := errors.AsType[*UnreachableError](err); isU {
		return u.Reason, true
	}
	var status apierrors.APIStatus
	if errors.As(err, &status) {
		// Answers from something in front of the API server that is not it yet.
		switch status.Status().Code {
		case 502, 503, 504:
			return err.Error(), true
		}
		return "", false
	}
	if meta.IsNoMatchError(err) {
		return "", false
	}
	return err.Error(), true
}

// IsUnreachable is Unreachable without the reason.
func IsUnreachable(err error) bool {
	_, ok := Unreachable(err)
	return ok
}

// observed is a workload client whose request outcomes Access learns from.
type observed struct {
	client.Client
	access  *Access
	cluster client.ObjectKey
}

func (o *observed) Get(ctx context.Context, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
	return o.access.observe(o.cluster, o.Client.Get(ctx, key, obj, opts...))
}

func (o *observed) List(ctx context.Context, list client.ObjectList, opts ...client.ListOption) error {
	return o.access.observe(o.cluster, o.Client.List(ctx, list, opts...))
}

func (o *observed) Patch(ctx context.Context, obj client.Object, patch client.Patch, opts ...client.PatchOption) error {
	return o.access.observe(o.cluster, o.Client.Patch(ctx, obj, patch, opts...))
}
