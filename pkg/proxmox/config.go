package proxmox

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/url"
	"regexp"
	"strings"
	"time"

	"github.com/go-logr/logr"
)

// Config is everything needed to build a Client.
type Config struct {
	// URL of the PVE API endpoint, e.g. "https://pve.example.com:8006".
	// It must not end in /api2/json: the client appends it.
	URL string
	// TokenID is the API token id, "user@realm!name".
	TokenID string
	// TokenSecret is the token's UUID secret. It is only ever put into the
	// Authorization header, never into logs or errors.
	TokenSecret string
	// CABundle is an optional PEM bundle used instead of the system roots to
	// verify PVE's certificate (PVE installs a self-signed CA by default).
	CABundle []byte
	// InsecureSkipVerify disables TLS verification. Off unless explicitly
	// requested.
	InsecureSkipVerify bool
	// AllowInsecureHTTP permits an http:// URL (simulators, lab only).
	AllowInsecureHTTP bool

	// RequestTimeout bounds a single HTTP request (not uploads, whose length
	// depends on the image size). Default 30s.
	RequestTimeout time.Duration
	// TaskTimeout bounds waiting for an ordinary task (create, delete,
	// start...). Default 10m.
	TaskTimeout time.Duration
	// ImageTaskTimeout bounds download-url and upload tasks. Default 60m.
	ImageTaskTimeout time.Duration
	// TaskPollInitial and TaskPollMax bound the backoff between task status
	// polls. Defaults 250ms and 3s.
	TaskPollInitial time.Duration
	TaskPollMax     time.Duration
	// TaskListSpacing is the least time between two reads of the cluster's task list
	// while many VMs' tasks are followed; a read answers every task asked about meanwhile
	// (taskboard.go). Default 1s; negative reads each task's own status instead.
	TaskListSpacing time.Duration

	// Limits bound the load this client puts on the API. Ignored when
	// Limiter is set.
	Limits Limits
	// Limiter, when set, is shared with other clients talking to the same
	// PVE cluster (e.g. several ProxmoxTalosClusters with distinct tokens),
	// so the limits hold for the cluster as a whole.
	Limiter *Limiter
	// Retry configures retries of transient failures.
	Retry RetryPolicy

	// Metrics receives per-operation and per-request metrics. Create it once
	// with NewMetrics(registry) and share it; nil disables metrics.
	Metrics *Metrics
	// Logger receives debug logs (never secrets). Zero value discards.
	Logger logr.Logger
	// UserAgent is sent with every request.
	UserAgent string
	// VMIDReservationTTL is how long an allocated-but-unused VMID stays
	// reserved in-process. Default 10m. Ignored when Endpoint is set.
	VMIDReservationTTL time.Duration
	// Endpoint, when set, is the state shared with the other clients of the
	// same PVE API in this process (VMID reservations, the /cluster/resources
	// snapshot, images known present). Nil gives the client its own.
	Endpoint *Endpoint
}

// Limits configures client-side rate and concurrency limits.
type Limits struct {
	// MaxInFlight bounds concurrent HTTP requests to the API. Default 8.
	MaxInFlight int
	// MaxInFlightPerNode bounds concurrent requests addressed to one node
	// (/nodes/{node}/...). Lock timeouts on a node's storage are the most
	// common PVE failure under parallel creation, and they come from
	// concurrency per node. Default 4.
	MaxInFlightPerNode int
	// QPS is the sustained request rate; Burst the bucket size. Defaults
	// 20 and 40. QPS < 0 disables rate limiting.
	QPS   float64
	Burst int
	// MaxTasksPerNode bounds the storage-touching tasks (create, delete,
	// resize, volume delete) this client runs at once on one node. The
	// in-flight limits bound HTTP requests, but a task keeps running after
	// its POST returned, and it is concurrent tasks that collide on PVE's
	// storage lock ("can't lock file ... got timeout"). Default 4.
	MaxTasksPerNode int
}

// RetryPolicy configures retries with exponential backoff and jitter.
type RetryPolicy struct {
	// MaxAttempts per HTTP request and per task-level retry, including the
	// first attempt. Default 6.
	MaxAttempts int
	// InitialBackoff and MaxBackoff bound the backoff window. Defaults 250ms
	// and 8s.
	InitialBackoff time.Duration
	MaxBackoff     time.Duration
}

const apiSuffix = "/api2/json"

var tokenIDRe = regexp.MustCompile(`^[^@!\s]+@[^@!\s]+![A-Za-z][A-Za-z0-9._-]*$`)

func (c *Config) withDefaults() Config {
	o := *c
	if o.RequestTimeout <= 0 {
		o.RequestTimeout = 30 * time.Second
	}
	if o.TaskTimeout <= 0 {
		o.TaskTimeout = 10 * time.Minute
	}
	if o.ImageTaskTimeout <= 0 {
		o.ImageTaskTimeout = 60 * time.Minute
	}
	if o.TaskPollInitial <= 0 {
		o.TaskPollInitial = 250 * time.Millisecond
	}
	if o.TaskPollMax <= 0 {
		o.TaskPollMax = 3 * time.Second
	}
	if o.TaskPollMax < o.TaskPollInitial {
		o.TaskPollMax = o.TaskPollInitial
	}
	o.Limits = o.Limits.withDefaults()
	o.Retry = o.Retry.withDefaults()
	if o.UserAgent == "" {
		o.UserAgent = "cluster-api-provider-proxmox-talos"
	}
	if o.VMIDReservationTTL <= 0 {
		o.VMIDReservationTTL = 10 * time.Minute
	}
	return o
}

func (l Limits) withDefaults() Limits {
	if l.MaxInFlight <= 0 {
		l.MaxInFlight = 8
	}
	if l.MaxInFlightPerNode <= 0 {
		l.MaxInFlightPerNode = 4
	}
	if l.MaxInFlightPerNode > l.MaxInFlight {
		l.MaxInFlightPerNode = l.MaxInFlight
	}
	if l.QPS == 0 {
		l.QPS = 20
	}
	if l.Burst <= 0 {
		l.Burst = 40
	}
	if l.MaxTasksPerNode <= 0 {
		l.MaxTasksPerNode = 4
	}
	return l
}

func (r RetryPolicy) withDefaults() RetryPolicy {
	if r.MaxAttempts <= 0 {
		r.MaxAttempts = 6
	}
	if r.InitialBackoff <= 0 {
		r.InitialBackoff = 250 * time.Millisecond
	}
	if r.MaxBackoff <= 0 {
		r.MaxBackoff = 8 * time.Second
	}
	if r.MaxBackoff < r.InitialBackoff {
		r.MaxBackoff = r.InitialBackoff
	}
	return r
}

// Validate checks the configuration and returns an error that says how to
// fix it. It never includes the token secret.
func (c *Config) Validate() error {
	_, err := c.apiBase()
	if err != nil {
		return err
	}
	if !tokenIDRe.MatchString(c.TokenID) {
		return fmt.Errorf("%w: token id %q must look like user@realm!tokenname (e.g. capi@pve!provider)", ErrInvalidConfig, c.TokenID)
	}
	if strings.TrimSpace(c.TokenSecret) == "" {
		return fmt.Errorf("%w: token secret for %q is empty", ErrInvalidConfig, c.TokenID)
	}
	if len(c.CABundle) > 0 {
		if !x509.NewCertPool().AppendCertsFromPEM(c.CABundle) {
			return fmt.Errorf("%w: CA bundle contains no PEM certificate", ErrInvalidConfig)
		}
	}
	return nil
}

// apiBase returns URL + "/api2/json" after validation.
func (c *Config) apiBase() (string, error) {
	raw := strings.TrimSpace(c.URL)
	if raw == "" {
		return "", fmt.Errorf("%w: URL is empty: set it to the PVE endpoint, e.g. https://pve.example.com:8006", ErrInvalidConfig)
	}
	u, err := url.Parse(raw)
	if err != nil {
		return "", fmt.Errorf("%w: URL %q does not parse: %v", ErrInvalidConfig, raw, err)
	}
	switch u.Scheme {
	case "https":
	case "http":
		if !c.AllowInsecureHTTP {
			return "", fmt.Errorf("%w: URL %q uses http: use https://%s (PVE serves HTTPS on port 8006); plain http is only allowed when explicitly requested", ErrInvalidConfig, raw, u.Host)
		}
	default:
		return "", fmt.Errorf("%w: URL %q must start with https:// (e.g. https://pve.example.com:8006)", ErrInvalidConfig, raw)
	}
	if u.Host == "" {
		return "", fmt.Errorf("%w: URL %q has no host", ErrInvalidConfig, raw)
	}
	if u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return "", fmt.Errorf("%w: URL %q must not carry credentials, a query or a fragment", ErrInvalidConfig, raw)
	}
	p := strings.TrimRight(u.Path, "/")
	if strings.HasSuffix(p, apiSuffix) || strings.Contains(p, "/api2/") {
		return "", fmt.Errorf("%w: URL %q must not contain %s: the client adds it; use %s://%s%s", ErrInvalidConfig, raw, apiSuffix, u.Scheme, u.Host, strings.TrimSuffix(p, apiSuffix))
	}
	u.Path = p + apiSuffix
	return u.String(), nil
}

// transportKey identifies the TLS setting: clients of one API whose keys are equal can
// share connections (they trust the same certificates).
func (c *Config) transportKey() string {
	sum := sha256.Sum256(c.CABundle)
	return fmt.Sprintf("insecure=%t ca=%x", c.InsecureSkipVerify, sum)
}

func (c *Config) tlsConfig() *tls.Config {
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if len(c.CABundle) > 0 {
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(c.CABundle)
		tc.RootCAs = pool
	}
	if c.InsecureSkipVerify {
		tc.InsecureSkipVerify = true //nolint:gosec // explicitly requested by the user
	}
	return tc
}
