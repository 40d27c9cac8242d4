package proxmox

import (
	"context"
	"errors"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	. "github.com/onsi/gomega"
)

func TestErrorClassification(t *testing.T) {
	tests := []struct {
		name     string
		status   int
		msg      string
		errs     map[string]string
		want     error
		contains []string
		check    func(g Gomega, err error)
	}{
		{
			name: "permission denied parsed", status: 403, msg: "Permission check failed (/vms/100, VM.Allocate)",
			want:     ErrPermissionDenied,
			contains: []string{"token capi@pve!test lacks VM.Allocate on /vms/100", "grant the provider role", "/vms or the pool"},
			check: func(g Gomega, err error) {
				var pe *PermissionError
				g.Expect(errors.As(err, &pe)).To(BeTrue())
				g.Expect(pe.Path).To(Equal("/vms/100"))
				g.Expect(pe.Privilege).To(Equal("VM.Allocate"))
				var ae *APIError
				g.Expect(errors.As(err, &ae)).To(BeTrue())
				g.Expect(ae.StatusCode).To(Equal(403))
			},
		},
		{
			name: "permission denied alternative privileges", status: 403, msg: "Permission check failed (/storage/local, Datastore.Audit|Datastore.AllocateSpace)",
			want:     ErrPermissionDenied,
			contains: []string{"lacks Datastore.Audit|Datastore.AllocateSpace on /storage/local"},
		},
		{
			name: "unauthorized", status: 401, msg: "authentication failure", want: ErrUnauthorized,
			contains: []string{"check the token id", "capi@pve!test"},
		},
		{
			name: "bad request params", status: 400, msg: "Parameter verification failed.",
			errs: map[string]string{"memory": "value must have a minimum value of 16", "scsihw": "value 'x' does not have a value in the enumeration"},
			want: ErrBadRequest, contains: []string{"memory: value must have a minimum value of 16", "scsihw: value 'x'"},
			check: func(g Gomega, err error) {
				var be *BadRequestError
				g.Expect(errors.As(err, &be)).To(BeTrue())
				g.Expect(be.Params).To(HaveKeyWithValue("memory", "value must have a minimum value of 16"))
			},
		},
		{name: "lock timeout", status: 500, msg: "can't lock file '/var/lock/qemu-server/lock-100.conf' - got timeout", want: ErrLockTimeout},
		{name: "vm locked", status: 500, msg: "VM 100 is locked (create)", want: ErrLockTimeout},
		{name: "config missing", status: 500, msg: "Configuration file 'nodes/pve1/qemu-server/100.conf' does not exist", want: ErrNotFound},
		{name: "agent", status: 500, msg: "QEMU guest agent is not running", want: ErrAgentNotRunning},
		{name: "already exists", status: 500, msg: "unable to create VM 100 - VM 100 already exists on node 'pve2'", want: ErrAlreadyExists},
		{name: "generic 500", status: 500, msg: "something broke", want: ErrUnavailable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			f := newFakePVE(t)
			f.handle("GET /version", func(w http.ResponseWriter, _ *http.Request) { pveError(w, tt.status, tt.msg, tt.errs) })
			c := f.client(func(c *Config) { c.Retry.MaxAttempts = 1 })
			_, err := c.Version(context.Background())
			g.Expect(err).To(MatchError(tt.want))
			for _, s := range tt.contains {
				g.Expect(err.Error()).To(ContainSubstring(s))
			}
			g.Expect(err.Error()).NotTo(ContainSubstring(testSecret))
			if tt.check != nil {
				tt.check(g, err)
			}
		})
	}
}

func TestSecretNeverInErrors(t *testing.T) {
	g := NewWithT(t)
	f := newFakePVE(t)
	// A misbehaving proxy echoes the Authorization header into its error.
	f.handle("GET /version", func(w http.ResponseWriter, r *http.Request) {
		pveError(w, http.StatusBadGateway, "upstream rejected "+r.Header.Get("Authorization"), nil)
	})
	f.handle("GET /nodes", func(w http.ResponseWriter, r *http.Request) {
		pveError(w, http.StatusForbidden, "Permission check failed (/nodes, Sys.Audit) for "+r.Header.Get("Authorization"), nil)
	})
	c := f.client(func(c *Config) { c.Retry.MaxAttempts = 2 })
	_, err := c.Version(context.Background())
	g.Expect(err).To(HaveOccurred())
	g.Expect(err.Error()).NotTo(ContainSubstring(testSecret))
	g.Expect(err.Error()).To(ContainSubstring("<redacted>"))
	g.Expect(err).To(MatchError(ErrUnavailable), "redaction keeps the error chain")

	_, err = c.Nodes(context.Background())
	g.Expect(err).To(MatchError(ErrPermissionDenied))
	g.Expect(err.Error()).NotTo(ContainSubstring(testSecret))

	// Wrong secret: 401 — the message is actionable and does not echo it.
	c2, err := New(f.config(func(c *Config) { c.TokenSecret = "wrong-secret-value" }))
	g.Expect(err).NotTo(HaveOccurred())
	_, err = c2.Nodes(context.Background())
	g.Expect(err).To(MatchError(ErrUnauthorized))
	g.Expect(err.Error()).NotTo(ContainSubstring("wrong-secret-value"))

	// Unreachable endpoint: closed loopback port.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	g.Expect(err).NotTo(HaveOccurred())
	addr := ln.Addr().String()
	g.Expect(ln.Close()).To(Succeed())
	c3, err := New(f.config(func(c *Config) { c.URL = "http://" + addr; c.Retry.MaxAttempts = 2 }))
	g.Expect(err).NotTo(HaveOccurred())
	_, err = c3.Nodes(context.Background())
	g.Expect(err).To(MatchError(ErrUnavailable))
	g.Expect(err.Error()).NotTo(ContainSubstring(testSecret))
}

func TestRetries(t *testing.T) {
	tests := []struct {
		name      string
		pattern   string
		failures  int
		fail      func(w http.ResponseWriter)
		call      func(c *PVEClient) error
		wantCalls int
		wantErr   error
	}{
		{
			name: "GET 503 retried", pattern: "GET /nodes", failures: 2,
			fail:      func(w http.ResponseWriter) { pveError(w, 503, "Service Unavailable", nil) },
			call:      func(c *PVEClient) error { _, err := c.Nodes(context.Background()); return err },
			wantCalls: 3,
		},
		{
			name: "GET connection reset retried", pattern: "GET /nodes", failures: 2,
			fail:      resetConn,
			call:      func(c *PVEClient) error { _, err := c.Nodes(context.Background()); return err },
			wantCalls: 3,
		},
		{
			name: "GET 500 does-not-exist is not retried", pattern: "GET /nodes/{node}/qemu/{vmid}/status/current", failures: 10,
			fail: func(w http.ResponseWriter) {
				pveError(w, 500, "Configuration file 'nodes/pve1/qemu-server/100.conf' does not exist", nil)
			},
			call:      func(c *PVEClient) error { _, err := c.VMStatus(context.Background(), "pve1", 100); return err },
			wantCalls: 1, wantErr: ErrNotFound,
		},
		{
			name: "POST create 502 is not retried (not idempotent)", pattern: "POST /nodes/{node}/qemu", failures: 10,
			fail: func(w http.ResponseWriter) { pveError(w, 502, "Bad Gateway", nil) },
			call: func(c *PVEClient) error {
				_, err := c.CreateVM(context.Background(), testSpec(100))
				return err
			},
			wantCalls: 1, wantErr: ErrUnavailable,
		},
		{
			name: "POST sync lock timeout retried", pattern: "POST /nodes/{node}/qemu/{vmid}/status/shutdown", failures: 2,
			fail: func(w http.ResponseWriter) {
				pveError(w, 500, "can't lock file '/var/lock/qemu-server/lock-100.conf' - got timeout", nil)
			},
			call:      func(c *PVEClient) error { return c.ShutdownVM(context.Background(), "pve1", 100, time.Second) },
			wantCalls: 3,
		},
		{
			name: "lock timeout retries are bounded", pattern: "POST /nodes/{node}/qemu/{vmid}/status/shutdown", failures: 100,
			fail: func(w http.ResponseWriter) {
				pveError(w, 500, "can't lock file '/var/lock/qemu-server/lock-100.conf' - got timeout", nil)
			},
			call:      func(c *PVEClient) error { return c.ShutdownVM(context.Background(), "pve1", 100, time.Second) },
			wantCalls: 5, wantErr: ErrLockTimeout,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			f := newFakePVE(t)
			var n atomic.Int32
			h := func(w http.ResponseWriter, r *http.Request) {
				cur := n.Add(1)
				if int(cur) <= tt.failures {
					tt.fail(w)
					return
				}
				switch {
				case strings.HasSuffix(tt.pattern, "/nodes"):
					writeJSON(w, []map[string]any{{"node": "pve1", "status": "online"}})
				case strings.Contains(tt.pattern, "status/shutdown"):
					writeJSON(w, f.newTask("pve1", "qmshutdown", 0, "OK", nil))
				default:
					writeJSON(w, map[string]any{"status": "running"})
				}
			}
			f.handle(tt.pattern, h)
			f.handle("GET /nodes/{node}/qemu/{vmid}/config", func(w http.ResponseWriter, r *http.Request) {
				pveError(w, 500, "Configuration file 'nodes/pve1/qemu-server/100.conf' does not exist", nil)
			})
			c := f.client()
			err := tt.call(c)
			if tt.wantErr != nil {
				g.Expect(err).To(MatchError(tt.wantErr))
			} else {
				g.Expect(err).NotTo(HaveOccurred())
			}
			g.Expect(f.count(tt.pattern)).To(Equal(tt.wantCalls))
		})
	}
}

func TestTaskLockTimeoutRetriedThenSucceeds(t *testing.T) {
	g := NewWithT(t)
	f := newFakePVE(t)
	var attempts atomic.Int32
	f.handle("POST /nodes/{node}/qemu/{vmid}/status/start", func(w http.ResponseWriter, r *http.Request) {
		exit := "OK"
		if attempts.Add(1) <= 2 {
			exit = "can't lock file '/var/lock/pve-manager/pve-storage-local-lvm' - got timeout"
		}
		writeJSON(w, f.newTask("pve1", "qmstart", 1, exit, nil))
	})
	c := f.client()
	g.Expect(c.StartVM(context.Background(), "pve1", 100)).To(Succeed())
	g.Expect(attempts.Load()).To(Equal(int32(3)))
}

func TestTaskFailureAndTimeout(t *testing.T) {
	g := NewWithT(t)
	f := newFakePVE(t)
	f.handle("POST /nodes/{node}/qemu/{vmid}/status/start", func(w http.ResponseWriter, r *http.Request) {
		if r.PathValue("vmid") == "101" {
			writeJSON(w, f.newTask("pve1", "qmstart", 1_000_000, "", nil)) // never ends
			return
		}
		writeJSON(w, f.newTask("pve1", "qmstart", 2, "start failed: QEMU exited with code 1", nil))
	})
	c := f.client(func(c *Config) { c.TaskTimeout = 100 * time.Millisecond })
	err := c.StartVM(context.Background(), "pve1", 100)
	g.Expect(err).To(MatchError(ErrTaskFailed))
	var te *TaskError
	g.Expect(errors.As(err, &te)).To(BeTrue())
	g.Expect(te.ExitStatus).To(Equal("start failed: QEMU exited with code 1"))
	g.Expect(te.Type).To(Equal("qmstart"))
	g.Expect(err.Error()).To(ContainSubstring("start VM 100 on pve1"))

	err = c.StartVM(context.Background(), "pve1", 101)
	g.Expect(err).To(MatchError(ErrTimeout))
	g.Expect(err.Error()).To(ContainSubstring("still running"))

	// The caller's own cancellation is reported as such, not as a timeout.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	err = c.StartVM(ctx, "pve1", 101)
	g.Expect(err).To(MatchError(context.DeadlineExceeded))
	g.Expect(errors.Is(err, ErrTimeout)).To(BeFalse())
}
