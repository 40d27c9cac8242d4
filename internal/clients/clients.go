// Package clients builds and caches the Proxmox VE and Image Factory clients the
// controllers use. Building a Proxmox client is cheap but the client carries state worth
// keeping (the cached PVE version, VMID reservations, the single-flight image transfers),
// so one client is kept per cluster and credentials version.
package clients

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"

	infrav1 "github.com/proxmox-talos/cluster-api-provider-proxmox-talos/api/v1beta1"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/pkg/imagefactory"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/pkg/proxmox"
)

// ErrCredentialsInvalid means the credentials Secret lacks a required key. The message
// names the key, never its value.
var ErrCredentialsInvalid = errors.New("credentials Secret is invalid")

// ProxmoxFactory returns the Proxmox client for a cluster, given its credentials Secret.
type ProxmoxFactory interface {
	ClientFor(cluster *infrav1.ProxmoxTalosCluster, credentials *corev1.Secret) (proxmox.Client, error)
}

// ProxmoxFactoryFunc adapts a function to ProxmoxFactory (tests).
type ProxmoxFactoryFunc func(cluster *infrav1.ProxmoxTalosCluster, credentials *corev1.Secret) (proxmox.Client, error)

// ClientFor implements ProxmoxFactory.
func (f ProxmoxFactoryFunc) ClientFor(cluster *infrav1.ProxmoxTalosCluster, credentials *corev1.Secret) (proxmox.Client, error) {
	return f(cluster, credentials)
}

// ProxmoxOptions tune the clients a CachingProxmoxFactory builds.
type ProxmoxOptions struct {
	// Limiter is shared by every client so the limits hold per manager, not per cluster.
	// Nil gives each client its own limiter with Limits.
	Limiter *proxmox.Limiter
	Limits  proxmox.Limits
	Retry   proxmox.RetryPolicy
	Metrics *proxmox.Metrics
	Logger  logr.Logger
	// AllowInsecureHTTP permits http:// URLs (simulators only).
	AllowInsecureHTTP bool
	// Tune, when set, adjusts every Config before the client is built (tests shorten
	// timeouts with it).
	Tune func(*proxmox.Config)
}

type proxmoxKey struct {
	clusterUID      string
	secretUID       string
	secretVersion   string
	url             string
	insecureSkipTLS bool
}

// CachingProxmoxFactory keeps one client per (cluster UID, Secret resourceVersion, URL):
// a rotated token or a changed URL gives a fresh client, everything else reuses it.
type CachingProxmoxFactory struct {
	opts ProxmoxOptions

	mu      sync.Mutex
	clients map[string]cachedProxmox
}

type cachedProxmox struct {
	key    proxmoxKey
	client proxmox.Client
}

// NewProxmoxFactory returns a caching factory.
func NewProxmoxFactory(opts ProxmoxOptions) *CachingProxmoxFactory {
	return &CachingProxmoxFactory{opts: opts, clients: map[string]cachedProxmox{}}
}

// ClientFor implements ProxmoxFactory.
func (f *CachingProxmoxFactory) ClientFor(cluster *infrav1.ProxmoxTalosCluster, secret *corev1.Secret) (proxmox.Client, error) {
	key := proxmoxKey{
		clusterUID:      string(cluster.UID),
		secretUID:       string(secret.UID),
		secretVersion:   secret.ResourceVersion,
		url:             cluster.Spec.Proxmox.URL,
		insecureSkipTLS: cluster.Spec.Proxmox.InsecureSkipTLSVerify,
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if c, ok := f.clients[key.clusterUID]; ok && c.key == key {
		return c.client, nil
	}
	cfg, err := ConfigFromSecret(cluster, secret)
	if err != nil {
		return nil, err
	}
	cfg.Limiter = f.opts.Limiter
	cfg.Limits = f.opts.Limits
	cfg.Retry = f.opts.Retry
	cfg.Metrics = f.opts.Metrics
	cfg.Logger = f.opts.Logger
	cfg.AllowInsecureHTTP = f.opts.AllowInsecureHTTP
	cfg.UserAgent = "cluster-api-provider-proxmox-talos"
	if f.opts.Tune != nil {
		f.opts.Tune(&cfg)
	}
	c, err := proxmox.New(cfg)
	if err != nil {
		return nil, err
	}
	f.clients[key.clusterUID] = cachedProxmox{key: key, client: c}
	return c, nil
}

// Forget drops the cached client of a deleted cluster.
func (f *CachingProxmoxFactory) Forget(clusterUID string) {
	f.mu.Lock()
	delete(f.clients, clusterUID)
	f.mu.Unlock()
}

// ConfigFromSecret builds the client configuration from the cluster's spec.proxmox and
// its credentials Secret. Errors name missing keys only, never values.
func ConfigFromSecret(cluster *infrav1.ProxmoxTalosCluster, secret *corev1.Secret) (proxmox.Config, error) {
	tokenID := strings.TrimSpace(string(secret.Data[infrav1.CredentialsTokenIDKey]))
	tokenSecret := strings.TrimSpace(string(secret.Data[infrav1.CredentialsTokenSecretKey]))
	var missing []string
	if tokenID == "" {
		missing = append(missing, infrav1.CredentialsTokenIDKey)
	}
	if tokenSecret == "" {
		missing = append(missing, infrav1.CredentialsTokenSecretKey)
	}
	if len(missing) > 0 {
		return proxmox.Config{}, fmt.Errorf("%w: Secret %s/%s has no %s", ErrCredentialsInvalid, secret.Namespace, secret.Name, strings.Join(missing, " or "))
	}
	// The API object holds the URL without /api2/json (users copy it from the browser);
	// the client appends the path itself, so strip it if someone added it anyway.
	url := strings.TrimSuffix(strings.TrimSuffix(cluster.Spec.Proxmox.URL, "/"), "/api2/json")
	return proxmox.Config{
		URL:                url,
		TokenID:            tokenID,
		TokenSecret:        tokenSecret,
		CABundle:           secret.Data[infrav1.CredentialsCABundleKey],
		InsecureSkipVerify: cluster.Spec.Proxmox.InsecureSkipTLSVerify,
	}, nil
}

// ImageFactory is the subset of the Image Factory client the machine controller needs.
type ImageFactory interface {
	CreateSchematic(ctx context.Context, s *imagefactory.Schematic) (string, error)
	ImageURL(ref imagefactory.ImageRef) (string, error)
	ImageSize(ctx context.Context, ref imagefactory.ImageRef) (int64, error)
}

// ImageFactoryFactory returns the Image Factory client for a base URL.
type ImageFactoryFactory interface {
	ForURL(baseURL string) (ImageFactory, error)
}

// CachingImageFactoryFactory keeps one factory client per base URL, and remembers which
// schematics it already stored so a schematic is POSTed once per process, not once per
// machine reconcile.
type CachingImageFactoryFactory struct {
	Options []imagefactory.Option

	mu      sync.Mutex
	clients map[string]*rememberingFactory
}

// NewImageFactoryFactory returns a caching ImageFactoryFactory.
func NewImageFactoryFactory(opts ...imagefactory.Option) *CachingImageFactoryFactory {
	return &CachingImageFactoryFactory{Options: opts, clients: map[string]*rememberingFactory{}}
}

// ForURL implements ImageFactoryFactory.
func (f *CachingImageFactoryFactory) ForURL(baseURL string) (ImageFactory, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.clients == nil {
		f.clients = map[string]*rememberingFactory{}
	}
	if c, ok := f.clients[baseURL]; ok {
		return c, nil
	}
	c, err := imagefactory.New(baseURL, f.Options...)
	if err != nil {
		return nil, err
	}
	rc := &rememberingFactory{Client: c, stored: map[string]bool{}}
	f.clients[baseURL] = rc
	return rc, nil
}

type rememberingFactory struct {
	*imagefactory.Client

	mu     sync.Mutex
	stored map[string]bool
}

// CreateSchematic stores the schematic unless this process already did.
func (r *rememberingFactory) CreateSchematic(ctx context.Context, s *imagefactory.Schematic) (string, error) {
	id, err := imagefactory.SchematicID(s)
	if err != nil {
		return "", err
	}
	r.mu.Lock()
	done := r.stored[id]
	r.mu.Unlock()
	if done {
		return id, nil
	}
	id, err = r.Client.CreateSchematic(ctx, s)
	if err != nil {
		return "", err
	}
	r.mu.Lock()
	r.stored[id] = true
	r.mu.Unlock()
	return id, nil
}
