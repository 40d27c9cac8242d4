package proxmox

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"
)

// maxErrorBody caps how much of an error answer is kept for classification.
const maxErrorBody = 64 << 10

// responseRecord is where the transport leaves the last answer of a request
// for the operation that issued it. go-proxmox turns 401/403 into a bare
// ErrNotAuthorized, 500 into its status line and ignores 404; the record
// keeps PVE's text so errors stay typed and actionable.
type responseRecord struct {
	method string
	path   string
	status int
	reason string
	body   []byte
}

type ctxKey int

const (
	recordKey ctxKey = iota
	idempotentKey
	longRequestKey
	opKey
)

func withRecord(ctx context.Context, r *responseRecord) context.Context {
	return context.WithValue(ctx, recordKey, r)
}

func recordFrom(ctx context.Context) *responseRecord {
	r, _ := ctx.Value(recordKey).(*responseRecord)
	return r
}

// withIdempotent marks a POST as safe to repeat on 5xx or connection errors
// (e.g. status/start: a repeat of a start that happened answers "already
// running", which the operation treats as success).
func withIdempotent(ctx context.Context) context.Context {
	return context.WithValue(ctx, idempotentKey, true)
}

// withLongRequest exempts a request from RequestTimeout (streamed uploads).
func withLongRequest(ctx context.Context) context.Context {
	return context.WithValue(ctx, longRequestKey, true)
}

func withOp(ctx context.Context, op string) context.Context {
	return context.WithValue(ctx, opKey, op)
}

func opFrom(ctx context.Context) string {
	s, _ := ctx.Value(opKey).(string)
	return s
}

// transport wraps the base RoundTripper with, from outside in: retry with
// backoff, the limiter (per attempt), per-request timeout and metrics, and
// records error answers for classification.
type transport struct {
	base           http.RoundTripper
	limiter        *Limiter
	metrics        *Metrics
	retry          RetryPolicy
	requestTimeout time.Duration
	basePath       string
	log            logr.Logger
	// sleep is replaceable in tests.
	sleep func(context.Context, time.Duration) error
}

func (t *transport) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx := req.Context()
	rec := recordFrom(ctx)
	apiPath := strings.TrimPrefix(req.URL.Path, t.basePath)
	if rec != nil {
		rec.method, rec.path = req.Method, apiPath
	}
	idempotent := isIdempotentMethod(req.Method) || ctx.Value(idempotentKey) == true
	rewindable := req.Body == nil || req.Body == http.NoBody || req.GetBody != nil
	long := ctx.Value(longRequestKey) == true
	node := nodeFromPath(apiPath)

	for attempt := 0; ; attempt++ {
		if attempt > 0 && req.GetBody != nil {
			body, err := req.GetBody()
			if err != nil {
				return nil, err
			}
			req.Body = body
		}
		lastAttempt := attempt >= t.retry.MaxAttempts-1

		res, err := t.attempt(req, node, long)
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			if idempotent && rewindable && !lastAttempt && !isPermanentTransportError(err) {
				t.metrics.retry("network")
				t.log.V(1).Info("retrying proxmox request after transport error", "method", req.Method, "path", apiPath, "attempt", attempt+1, "error", err.Error())
				if serr := t.backoff(ctx, attempt); serr != nil {
					return nil, serr
				}
				continue
			}
			return nil, err
		}

		if res.StatusCode < 300 {
			if rec != nil {
				rec.status, rec.reason, rec.body = res.StatusCode, "", nil
			}
			return res, nil
		}

		// Error answer: the body was buffered by attempt(), so the limiter
		// slot is already free and the response can be inspected.
		reason := reasonPhrase(res.Status, res.StatusCode)
		body, _ := io.ReadAll(res.Body)
		_ = res.Body.Close()
		res.Body = io.NopCloser(bytes.NewReader(body))
		if rec != nil {
			rec.status, rec.reason, rec.body = res.StatusCode, reason, body
		}
		msg, _ := parseErrorBody(body)
		kind := classifyMessage(res.StatusCode, reason+" "+msg)

		retryReason := ""
		switch {
		case kind == ErrLockTimeout:
			// PVE answers a lock timeout before it changes anything, so
			// this is safe for any method as long as the body can be sent
			// again.
			if rewindable {
				retryReason = "lock_timeout"
			}
		case res.StatusCode == http.StatusTooManyRequests || res.StatusCode >= 500:
			if idempotent && rewindable && !isPermanentKind(kind) {
				retryReason = "server_error"
			}
		}
		if retryReason == "" || lastAttempt {
			return res, nil
		}
		t.metrics.retry(retryReason)
		t.log.V(1).Info("retrying proxmox request", "method", req.Method, "path", apiPath, "attempt", attempt+1, "status", res.StatusCode, "reason", retryReason)
		if serr := t.backoff(ctx, attempt); serr != nil {
			return nil, serr
		}
	}
}

// attempt sends one request through the limiter. For 2xx answers the slot is
// held until the body is closed (reading the body is part of the request);
// for error answers the body is read here, bounded, and the slot released.
func (t *transport) attempt(req *http.Request, node string, long bool) (*http.Response, error) {
	ctx := req.Context()
	release, err := t.limiter.acquire(ctx, node)
	if err != nil {
		return nil, err
	}
	actx, cancel := ctx, context.CancelFunc(func() {})
	if !long && t.requestTimeout > 0 {
		actx, cancel = context.WithTimeout(ctx, t.requestTimeout)
	}
	t.metrics.addInFlight(1)
	start := time.Now()
	done := func() {
		t.metrics.addInFlight(-1)
		cancel()
		release()
	}
	res, err := t.base.RoundTrip(req.WithContext(actx))
	if err != nil {
		t.metrics.observeRequest(req.Method, 0, time.Since(start))
		done()
		return nil, err
	}
	t.metrics.observeRequest(req.Method, res.StatusCode, time.Since(start))
	if res.StatusCode >= 300 {
		body, rerr := io.ReadAll(io.LimitReader(res.Body, maxErrorBody))
		_ = res.Body.Close()
		done()
		if rerr != nil && len(body) == 0 {
			body = nil
		}
		res.Body = io.NopCloser(bytes.NewReader(body))
		return res, nil
	}
	res.Body = &releasingBody{ReadCloser: res.Body, release: done}
	return res, nil
}

// releasingBody frees the limiter slot when the body is fully read or closed.
type releasingBody struct {
	io.ReadCloser
	once    sync.Once
	release func()
}

func (b *releasingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if errors.Is(err, io.EOF) {
		b.once.Do(b.release)
	}
	return n, err
}

func (b *releasingBody) Close() error {
	err := b.ReadCloser.Close()
	b.once.Do(b.release)
	return err
}

// backoff sleeps for an exponentially growing window with equal jitter: half
// the window fixed, half random. The fixed half guarantees real spacing under
// lock contention; the random half spreads callers that collided.
func (t *transport) backoff(ctx context.Context, attempt int) error {
	return t.sleep(ctx, backoffDelay(t.retry, attempt))
}

func backoffDelay(p RetryPolicy, attempt int) time.Duration {
	w := p.InitialBackoff
	for i := 0; i < attempt && w < p.MaxBackoff; i++ {
		w *= 2
	}
	if w > p.MaxBackoff {
		w = p.MaxBackoff
	}
	half := w / 2
	if half <= 0 {
		return w
	}
	return half + rand.N(half) //nolint:gosec // jitter, not security
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-tm.C:
		return nil
	}
}

// isPermanentTransportError: a certificate that does not verify will not
// verify on the next attempt either.
func isPermanentTransportError(err error) bool {
	var cv *tls.CertificateVerificationError
	var ua x509.UnknownAuthorityError
	var hn x509.HostnameError
	var ci x509.CertificateInvalidError
	return errors.As(err, &cv) || errors.As(err, &ua) || errors.As(err, &hn) || errors.As(err, &ci)
}

func isIdempotentMethod(m string) bool {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodPut, http.MethodDelete, http.MethodOptions:
		return true
	}
	return false
}

// nodeFromPath returns {node} for paths of the form /nodes/{node}/...
func nodeFromPath(p string) string {
	rest, ok := strings.CutPrefix(p, "/nodes/")
	if !ok {
		return ""
	}
	node, _, _ := strings.Cut(rest, "/")
	return node
}
