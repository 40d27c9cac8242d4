package proxmox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	gp "github.com/luthermonson/go-proxmox"
	"golang.org/x/sync/singleflight"
)

// PVEClient implements Client on top of go-proxmox.
type PVEClient struct {
	cfg      Config
	baseURL  string
	pc       *gp.Client
	http     *http.Client
	tr       *transport
	limiter  *Limiter
	metrics  *Metrics
	tokenID  string
	secret   string
	images   singleflight.Group
	flights  imageFlights
	ep       *Endpoint
	verMu    sync.Mutex
	version  *VersionInfo
	nowFn    func() time.Time
	sleepFn  func(context.Context, time.Duration) error
	pollInit time.Duration
}

var _ Client = (*PVEClient)(nil)

// New validates cfg and returns a client. It makes no API call.
func New(cfg Config) (*PVEClient, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	c := cfg.withDefaults()
	base, _ := c.apiBase()
	u, _ := url.Parse(base)

	ep := c.Endpoint
	if ep == nil {
		ep = NewEndpoint(c.VMIDReservationTTL)
	}
	lim := c.Limiter
	if lim == nil {
		lim = NewLimiter(c.Limits)
	}
	// The clients of one API with the same TLS setting share their connections
	// (the Endpoint's pool): a manager with many clusters on one Proxmox keeps one
	// pool to it, not one per cluster.
	baseTransport := ep.transport(c.transportKey(), func() *http.Transport {
		return &http.Transport{
			Proxy: http.ProxyFromEnvironment,
			DialContext: (&net.Dialer{
				Timeout:   10 * time.Second,
				KeepAlive: 30 * time.Second,
			}).DialContext,
			TLSClientConfig:     c.tlsConfig(),
			TLSHandshakeTimeout: 10 * time.Second,
			MaxIdleConns:        64,
			// Keep as many idle connections as requests may be in flight so
			// the limiter, not connection setup, shapes the load.
			MaxIdleConnsPerHost: lim.Limits().MaxInFlight,
			IdleConnTimeout:     90 * time.Second,
		}
	})
	tr := &transport{
		base:           baseTransport,
		limiter:        lim,
		metrics:        c.Metrics,
		retry:          c.Retry,
		requestTimeout: c.RequestTimeout,
		basePath:       u.Path,
		log:            c.Logger,
		sleep:          sleepCtx,
	}
	// No http.Client.Timeout: it would cut streamed uploads; the transport
	// applies RequestTimeout per request instead.
	hc := &http.Client{Transport: tr}
	pc := gp.NewClient(base,
		gp.WithHTTPClient(hc),
		gp.WithAPIToken(c.TokenID, c.TokenSecret),
		gp.WithUserAgent(c.UserAgent),
	)
	return &PVEClient{
		cfg:      c,
		baseURL:  base,
		pc:       pc,
		http:     hc,
		tr:       tr,
		limiter:  lim,
		metrics:  c.Metrics,
		tokenID:  c.TokenID,
		secret:   c.TokenSecret,
		ep:       ep,
		nowFn:    time.Now,
		sleepFn:  sleepCtx,
		pollInit: c.TaskPollInitial,
	}, nil
}

// Limiter returns the limiter in use (shared or owned).
func (c *PVEClient) Limiter() *Limiter { return c.limiter }

// run executes one Client operation: it labels the context for metrics,
// retries the whole operation when its PVE task failed on a lock timeout
// (synchronous lock timeouts are already retried per request by the
// transport, so they are not retried again here), records metrics and
// redacts the secret from the error.
func (c *PVEClient) run(ctx context.Context, op string, fn func(ctx context.Context) error) error {
	start := time.Now()
	ctx = withOp(ctx, op)
	var err error
	for attempt := 0; ; attempt++ {
		err = fn(ctx)
		var te *TaskError
		if err == nil || !errors.As(err, &te) || !errors.Is(te, ErrLockTimeout) || attempt >= c.cfg.Retry.MaxAttempts-1 {
			break
		}
		c.metrics.retry("task_lock_timeout")
		c.cfg.Logger.V(1).Info("retrying proxmox operation after task lock timeout", "operation", op, "attempt", attempt+1, "upid", te.UPID)
		if serr := c.sleepFn(ctx, backoffDelay(c.cfg.Retry, attempt)); serr != nil {
			err = fmt.Errorf("%s: giving up after lock timeout: %w", op, serr)
			break
		}
	}
	err = c.redact(err)
	c.metrics.observeOperation(op, err, time.Since(start))
	return err
}

// redact hides the token secret should it ever appear in an error text
// (e.g. echoed back by a proxy). The error chain stays intact.
func (c *PVEClient) redact(err error) error {
	if err == nil || c.secret == "" {
		return err
	}
	msg := err.Error()
	if !strings.Contains(msg, c.secret) {
		return err
	}
	return &redactedError{err: err, msg: strings.ReplaceAll(msg, c.secret, "<redacted>")}
}

// do performs one API call through go-proxmox. query goes into the URL,
// body is sent as JSON, out receives the "data" member.
func (c *PVEClient) do(ctx context.Context, method, path string, query url.Values, body map[string]any, out any) error {
	rec := &responseRecord{}
	ctx = withRecord(ctx, rec)
	p := path
	if len(query) > 0 {
		p += "?" + query.Encode()
	}
	var data []byte
	if body != nil {
		var err error
		if data, err = json.Marshal(body); err != nil {
			return fmt.Errorf("encode %s %s: %w", method, path, err)
		}
	}
	err := c.pc.Req(ctx, method, p, data, out)
	return c.callError(ctx, rec, method, path, err)
}

// callError turns what the transport recorded and go-proxmox returned into a
// typed error.
func (c *PVEClient) callError(ctx context.Context, rec *responseRecord, method, path string, err error) error {
	if rec.status >= 300 {
		if rec.method == "" {
			rec.method, rec.path = method, path
		}
		return newAPIError(c.tokenID, rec)
	}
	if err == nil {
		return nil
	}
	if cerr := ctx.Err(); cerr != nil {
		return fmt.Errorf("proxmox %s %s: %w", method, path, cerr)
	}
	if rec.status == 0 {
		// No answer at all: connection refused/reset, TLS failure, timeout.
		return fmt.Errorf("proxmox %s %s: %w: %v", method, path, ErrUnavailable, err)
	}
	return fmt.Errorf("proxmox %s %s: decoding answer: %w", method, path, err)
}

// waitTask polls the task until it stops, with backoff between polls.
func (c *PVEClient) waitTask(ctx context.Context, upid string, timeout time.Duration) error {
	if upid == "" {
		return nil
	}
	node, typ := upidParts(upid)
	if node == "" {
		return fmt.Errorf("proxmox returned a malformed task id %q", upid)
	}
	tctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	// The task started just before its UPID came back: close enough to learn from.
	started := c.nowFn()
	delay := c.TaskPollDelay(typ)
	var runningAt time.Duration
	for {
		if err := c.sleepFn(tctx, delay); err != nil {
			return c.taskWaitError(ctx, upid, typ, node, timeout, err)
		}
		st, err := c.taskState(tctx, upid)
		if err != nil {
			if tctx.Err() != nil {
				return c.taskWaitError(ctx, upid, typ, node, timeout, err)
			}
			return fmt.Errorf("polling task %s: %w", upid, err)
		}
		age := c.nowFn().Sub(started)
		if !st.Running {
			c.ObserveTask(typ, runningAt, age)
			if taskOK(st.ExitStatus) {
				return nil
			}
			if st.Type != "" {
				typ = st.Type
			}
			return taskErrorFor(upid, node, typ, st.ExitStatus)
		}
		runningAt = age
		delay = nextPoll(age, c.cfg.TaskPollMax)
	}
}

func (c *PVEClient) taskWaitError(parent context.Context, upid, typ, node string, timeout time.Duration, err error) error {
	if perr := parent.Err(); perr != nil {
		return fmt.Errorf("waiting for task %s on %s: %w", typ, node, perr)
	}
	return fmt.Errorf("task %s on node %s still running after %s (it continues on PVE; UPID %s): %w", typ, node, timeout, upid, ErrTimeout)
}

// taskOK: "OK", or "WARNINGS: n" which PVE uses for a successful task that
// logged warnings.
func taskOK(exit string) bool {
	return exit == "OK" || strings.HasPrefix(exit, "WARNINGS")
}

// upidParts returns node and type from
// UPID:<node>:<pid>:<pstart>:<starttime>:<type>:<id>:<user>:
func upidParts(upid string) (string, string) {
	f := strings.Split(upid, ":")
	if len(f) < 7 || f[0] != "UPID" {
		return "", ""
	}
	return f[1], f[5]
}

// messageOf returns PVE's text of an API or task error ("" otherwise).
func messageOf(err error) string {
	var te *TaskError
	if errors.As(err, &te) {
		return te.ExitStatus
	}
	var ae *APIError
	if errors.As(err, &ae) {
		return ae.Message
	}
	return ""
}

func messageContains(err error, subs ...string) bool {
	m := strings.ToLower(messageOf(err))
	if m == "" {
		return false
	}
	for _, s := range subs {
		if strings.Contains(m, s) {
			return true
		}
	}
	return false
}
