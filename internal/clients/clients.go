// Package clients builds and caches the Proxmox VE and Image Factory clients the
// controllers use. Building a Proxmox client is cheap but the client carries state worth
// keeping (the cached PVE version, VMID reservations, the single-flight image transfers),
// so one client is kept per cluster and credentials version.
package clients

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net/url"
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

// ErrCABundleInvalid means the credentials Secret's caBundle is not a list of PEM
// certificates. The message says which block is wrong, never what it holds.
var ErrCABundleInvalid = errors.New("caBundle is invalid")

// ErrInsecureURL means an http:// URL without the insecureAllowHTTP opt-in next to it.
var ErrInsecureURL = errors.New("URL is not https")

// CheckURLScheme refuses a URL that is not https unless allowHTTP is set. The webhooks
// refuse such objects already; the controllers check again before sending a token or
// fetching an image, since an object may predate the rule or bypass admission.
func CheckURLScheme(raw string, allowHTTP bool, field string) error {
	u, err := url.Parse(strings.TrimSpace(raw))
	switch {
	case err != nil:
		return fmt.Errorf("%w: %s %q does not parse", ErrInsecureURL, field, raw)
	case u.Scheme == "https", u.Scheme == "http" && allowHTTP:
		return nil
	case u.Scheme == "http":
		return fmt.Errorf("%w: %s %q uses http; use https, or set insecureAllowHTTP next to it for a simulator or test setup", ErrInsecureURL, field, raw)
	default:
		return fmt.Errorf("%w: %s %q must start with https://", ErrInsecureURL, field, raw)
	}
}

// ParseCABundle parses a PEM bundle strictly: every block must be a CERTIFICATE that
// parses, there must be at least one, and nothing but whitespace may lie outside the
// blocks. crypto/x509's AppendCertsFromPEM skips what it cannot read, which would turn a
// truncated paste into a TLS error against the wrong certificate much later.
func ParseCABundle(bundle []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	rest := bundle
	for n := 1; ; n++ {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("%w: PEM block %d is a %q block, want CERTIFICATE", ErrCABundleInvalid, n, block.Type)
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%w: PEM block %d is not a valid X.509 certificate", ErrCABundleInvalid, n)
		}
		certs = append(certs, c)
	}
	if len(bytes.TrimSpace(rest)) > 0 {
		if len(certs) == 0 {
			return nil, fmt.Errorf("%w: it holds no PEM block (want one or more -----BEGIN CERTIFICATE----- blocks)", ErrCABundleInvalid)
		}
		return nil, fmt.Errorf("%w: data after PEM block %d is not a PEM block (truncated or pasted incompletely?)", ErrCABundleInvalid, len(certs))
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("%w: it is empty apart from whitespace; remove the key or put PEM certificates in it", ErrCABundleInvalid)
	}
	return certs, nil
}

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
	allowHTTP       bool
}

// CachingProxmoxFactory keeps one client per (cluster UID, Secret resourceVersion, URL):
// a rotated token or a changed URL gives a fresh client, everything else reuses it.
type CachingProxmoxFactory struct {
	opts ProxmoxOptions

	mu      sync.Mutex
	clients map[string]cachedProxmox
	// endpoints is the state shared by the clients of one Proxmox API (VMID reservations,
	// the /cluster/resources snapshot, images known present): clusters usually share one
	// Proxmox installation, and two clusters' machines must not race for the same VMID.
	endpoints proxmox.Endpoints
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
		allowHTTP:       cluster.Spec.Proxmox.InsecureAllowHTTP,
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
	cfg.Endpoint = f.endpoints.For(cfg.URL, cfg.VMIDReservationTTL)
	cfg.Limits = f.opts.Limits
	cfg.Retry = f.opts.Retry
	cfg.Metrics = f.opts.Metrics
	cfg.Logger = f.opts.Logger
	// ConfigFromSecret refused http unless the cluster opted in; the manager-wide option
	// stays for simulators wired up in code.
	cfg.AllowInsecureHTTP = f.opts.AllowInsecureHTTP || cluster.Spec.Proxmox.InsecureAllowHTTP
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
	caBundle := secret.Data[infrav1.CredentialsCABundleKey]
	if _, present := secret.Data[infrav1.CredentialsCABundleKey]; present {
		if _, err := ParseCABundle(caBundle); err != nil {
			return proxmox.Config{}, fmt.Errorf("Secret %s/%s key %s: %w", secret.Namespace, secret.Name, infrav1.CredentialsCABundleKey, err)
		}
	}
	if err := CheckURLScheme(cluster.Spec.Proxmox.URL, cluster.Spec.Proxmox.InsecureAllowHTTP, "spec.proxmox.url"); err != nil {
		return proxmox.Config{}, err
	}
	// The API object holds the URL without /api2/json (users copy it from the browser);
	// the client appends the path itself, so strip it if someone added it anyway.
	apiURL := strings.TrimSuffix(strings.TrimSuffix(cluster.Spec.Proxmox.URL, "/"), "/api2/json")
	return proxmox.Config{
		URL:                apiURL,
		TokenID:            tokenID,
		TokenSecret:        tokenSecret,
		CABundle:           caBundle,
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
