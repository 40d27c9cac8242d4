package imagefactory

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	factoryclient "github.com/siderolabs/image-factory/pkg/client"
)

// DefaultBaseURL is the public community Image Factory.
const DefaultBaseURL = "https://factory.talos.dev"

// ExtensionInfo is one entry of /version/{v}/extensions/official.
type ExtensionInfo = factoryclient.ExtensionInfo

// HTTPError is the upstream error carrying the HTTP status code and (truncated) body.
type HTTPError = factoryclient.HTTPError

// RetryPolicy bounds retries of transient failures (HTTP 5xx, 429 and transport errors).
// Backoff doubles from BaseDelay up to MaxDelay, with up to 25% random jitter so that many
// machines reconciling at once do not retry in lockstep.
type RetryPolicy struct {
	// Attempts is the total number of tries, including the first (minimum 1).
	Attempts int
	// BaseDelay is the wait after the first failure.
	BaseDelay time.Duration
	// MaxDelay caps each wait.
	MaxDelay time.Duration
}

// DefaultRetryPolicy keeps a worst case of about 7.5s of waiting per call, short enough to stay
// inside one reconcile; longer outages surface as ErrRetriesExhausted and a requeue.
var DefaultRetryPolicy = RetryPolicy{Attempts: 5, BaseDelay: 500 * time.Millisecond, MaxDelay: 4 * time.Second}

// Option configures a Client.
type Option func(*Client)

// WithHTTPClient sets the HTTP client (timeouts, proxy, TLS). The default has a 60s timeout.
func WithHTTPClient(hc *http.Client) Option {
	return func(c *Client) { c.http = hc }
}

// WithRetryPolicy replaces DefaultRetryPolicy.
func WithRetryPolicy(p RetryPolicy) Option {
	return func(c *Client) { c.retry = p }
}

// Client talks to an Image Factory. Schematic and version calls go through the upstream
// github.com/siderolabs/image-factory/pkg/client (so request/response shapes track the factory);
// this type adds retries, typed errors, offline-ID verification, image URLs and HEAD sizes,
// which upstream does not provide. It is safe for concurrent use.
type Client struct {
	base     *url.URL
	http     *http.Client
	retry    RetryPolicy
	upstream *factoryclient.Client
	sleep    func(context.Context, time.Duration) error
}

// New returns a client for the factory at baseURL (e.g. DefaultBaseURL).
func New(baseURL string, opts ...Option) (*Client, error) {
	u, err := url.Parse(baseURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("image factory URL %q must be an absolute http(s) URL", baseURL)
	}

	c := &Client{
		base:  u,
		http:  &http.Client{Timeout: 60 * time.Second},
		retry: DefaultRetryPolicy,
		sleep: sleepCtx,
	}

	for _, o := range opts {
		o(c)
	}

	if c.retry.Attempts < 1 {
		c.retry.Attempts = 1
	}

	c.upstream, err = factoryclient.New(baseURL, factoryclient.WithClient(*c.http))
	if err != nil {
		return nil, err
	}

	return c, nil
}

// BaseURL returns the factory base URL.
func (c *Client) BaseURL() string { return c.base.String() }

// CreateSchematic stores the schematic on the factory and returns its ID. POST is idempotent
// (the ID is a content hash), so it is retried like a GET. The returned ID is checked against
// the offline SchematicID: a mismatch returns ErrSchematicIDMismatch because image names in
// Proxmox storage are derived from the offline ID.
func (c *Client) CreateSchematic(ctx context.Context, s *Schematic) (string, error) {
	want, err := SchematicID(s)
	if err != nil {
		return "", err
	}

	var id string

	err = c.do(ctx, "POST /schematics", func(ctx context.Context) error {
		var e error

		id, _, e = c.upstream.SchematicCreate(ctx, *s)

		return e
	})
	if err != nil {
		if factoryclient.IsInvalidSchematicError(err) {
			return "", fmt.Errorf("%w: factory rejected it: %w", ErrInvalidSchematic, err)
		}

		return "", fmt.Errorf("create schematic: %w", err)
	}

	if id != want {
		return "", fmt.Errorf("%w: factory %s, offline %s", ErrSchematicIDMismatch, id, want)
	}

	return id, nil
}

// GetSchematic fetches a stored schematic; ErrSchematicNotFound if the factory does not know it.
func (c *Client) GetSchematic(ctx context.Context, id string) (*Schematic, error) {
	if !schematicIDRe.MatchString(id) {
		return nil, fmt.Errorf("schematic ID %q is not 64 lowercase hex characters", id)
	}

	var s *Schematic

	err := c.do(ctx, "GET /schematics/"+id, func(ctx context.Context) error {
		var e error

		s, e = c.upstream.SchematicGet(ctx, id)

		return e
	})
	if factoryclient.IsHTTPErrorCode(err, http.StatusNotFound) {
		return nil, fmt.Errorf("%w: %s: %w", ErrSchematicNotFound, id, err)
	}

	if err != nil {
		return nil, fmt.Errorf("get schematic %s: %w", id, err)
	}

	return s, nil
}

// Versions lists the Talos versions the factory can build.
func (c *Client) Versions(ctx context.Context) ([]string, error) {
	var v []string

	err := c.do(ctx, "GET /versions", func(ctx context.Context) error {
		var e error

		v, e = c.upstream.Versions(ctx)

		return e
	})
	if err != nil {
		return nil, fmt.Errorf("list Talos versions: %w", err)
	}

	return v, nil
}

// OfficialExtensions lists the official extensions available for a Talos version.
// An unknown version yields ErrUnknownVersion.
func (c *Client) OfficialExtensions(ctx context.Context, talosVersion string) ([]ExtensionInfo, error) {
	if err := ValidateTalosVersion(talosVersion); err != nil {
		return nil, err
	}

	var exts []ExtensionInfo

	err := c.do(ctx, "GET /version/"+talosVersion+"/extensions/official", func(ctx context.Context) error {
		var e error

		exts, e = c.upstream.ExtensionsVersions(ctx, talosVersion)

		return e
	})
	if factoryclient.IsHTTPErrorCode(err, http.StatusNotFound) || factoryclient.IsHTTPErrorCode(err, http.StatusBadRequest) {
		return nil, fmt.Errorf("%w: %s: %w", ErrUnknownVersion, talosVersion, err)
	}

	if err != nil {
		return nil, fmt.Errorf("list extensions for %s: %w", talosVersion, err)
	}

	return exts, nil
}

// ImageURL is the download URL of the image, suitable for Proxmox download-url.
func (c *Client) ImageURL(ref ImageRef) (string, error) {
	if err := ref.Validate(); err != nil {
		return "", err
	}

	return c.base.JoinPath(ref.FactoryPath()).String(), nil
}

// ImageSize asks the factory (HEAD) for the image size in bytes, so callers can check storage
// space before starting a download. The factory answers HEAD directly (GET may redirect to a
// CDN). Unknown schematic, version or file yields ErrImageNotFound.
func (c *Client) ImageSize(ctx context.Context, ref ImageRef) (int64, error) {
	u, err := c.ImageURL(ref)
	if err != nil {
		return 0, err
	}

	var size int64

	err = c.do(ctx, "HEAD "+ref.FactoryPath(), func(ctx context.Context) error {
		req, e := http.NewRequestWithContext(ctx, http.MethodHead, u, nil)
		if e != nil {
			return e
		}

		resp, e := c.http.Do(req)
		if e != nil {
			return e
		}

		_ = resp.Body.Close()

		if resp.StatusCode != http.StatusOK {
			return &HTTPError{Code: resp.StatusCode, Message: http.StatusText(resp.StatusCode)}
		}

		if resp.ContentLength < 0 {
			return fmt.Errorf("factory sent no Content-Length for %s", ref.FactoryPath())
		}

		size = resp.ContentLength

		return nil
	})
	if factoryclient.IsHTTPErrorCode(err, http.StatusNotFound) {
		return 0, fmt.Errorf("%w: %s (unknown schematic, Talos version or file; was the schematic created?): %w",
			ErrImageNotFound, ref.FactoryPath(), err)
	}

	if err != nil {
		return 0, fmt.Errorf("image size %s: %w", ref.FactoryPath(), err)
	}

	return size, nil
}

// do runs op with bounded retries of transient failures.
func (c *Client) do(ctx context.Context, what string, op func(context.Context) error) error {
	delay := c.retry.BaseDelay

	var err error

	for attempt := 1; ; attempt++ {
		err = op(ctx)
		if err == nil || !retryable(ctx, err) {
			return err
		}

		if attempt >= c.retry.Attempts {
			return fmt.Errorf("%w (%s, %d attempts): %w", ErrRetriesExhausted, what, attempt, err)
		}

		wait := delay + time.Duration(rand.Int64N(int64(delay/4)+1)) //nolint:gosec // jitter, not crypto

		if serr := c.sleep(ctx, wait); serr != nil {
			return fmt.Errorf("%s: %w (last error: %w)", what, serr, err)
		}

		delay = min(2*delay, c.retry.MaxDelay)
	}
}

// retryable reports whether err is worth another attempt: server-side errors, throttling and
// transport failures are; client errors (4xx) and our own cancellation are not.
func retryable(ctx context.Context, err error) bool {
	if ctx.Err() != nil {
		return false
	}

	var he *HTTPError
	if errors.As(err, &he) {
		return he.Code >= 500 || he.Code == http.StatusTooManyRequests
	}

	var ne net.Error
	if errors.As(err, &ne) {
		return true
	}

	var ue *url.Error
	if errors.As(err, &ue) {
		return true
	}

	// Truncated bodies surface as decode errors such as "unexpected EOF".
	return strings.Contains(err.Error(), "EOF")
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()

	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
