// Package pvesim is an in-process Proxmox VE API simulator: a stateful HTTP
// server speaking /api2/json with PVE's shapes, errors, privileges, schema
// validation, async tasks and locks, plus fault injection, counters and hooks
// so tests (and developers without hardware) can drive a real PVE client.
package pvesim

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math/rand"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/pkg/proxmox/pvesim/internal/apischema"
)

// Server is one simulated PVE cluster.
type Server struct {
	cfg    Config
	table  *apischema.Table
	routes []*route

	mu           sync.Mutex
	nodes        map[string]*nodeState
	nodeOrder    []string
	storages     map[string]*storageState
	storageOrder []string
	// vols: storage → node scope ("" for shared) → volid → volume.
	vols map[string]map[string]map[string]*volume
	vms  map[int]*vmState
	// snap is the last pvestatd round (see status.go).
	snap    *statusSnapshot
	started time.Time
	// ha is /etc/pve/ha/resources.cfg (VMs only).
	ha     map[int]*haResource
	tasks  map[string]*task
	tokens map[string]TokenConfig
	users  map[string]UserConfig
	roles  map[string][]string
	pid    int
	rng    *rand.Rand
	faults []Fault
	// injected counts injected faults by kind (InjectedFaults).
	injected map[string]int

	lockMu sync.Mutex
	locks  map[string]string

	metrics *metrics

	hookMu     sync.Mutex
	onPowerOn  []func(PowerEvent)
	onPowerOff []func(PowerEvent)
	onResponse []func(ResponseRecord)

	downloadClient *http.Client

	httpSrv  *http.Server
	listener net.Listener
	baseURL  string
	caPEM    []byte
	tasksWG  sync.WaitGroup
	closing  chan struct{}
	closeMu  sync.Once
}

// New builds a simulator from cfg (see Config for defaults). It does not
// listen yet: call Start or StartTLS, or use Handler directly.
func New(cfg Config) (*Server, error) {
	c, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	table, err := apischema.Load()
	if err != nil {
		return nil, err
	}
	s := &Server{
		cfg:      c,
		table:    table,
		nodes:    map[string]*nodeState{},
		storages: map[string]*storageState{},
		vols:     map[string]map[string]map[string]*volume{},
		vms:      map[int]*vmState{},
		ha:       map[int]*haResource{},
		tasks:    map[string]*task{},
		tokens:   map[string]TokenConfig{},
		users:    map[string]UserConfig{},
		roles:    builtinRoles(c.is8()),
		pid:      0x1000,
		rng:      rand.New(rand.NewSource(c.Seed)),
		locks:    map[string]string{},
		metrics:  newMetrics(),
		closing:  make(chan struct{}),
	}
	for _, n := range c.Nodes {
		s.nodes[n.Name] = &nodeState{cfg: n, online: !n.Offline}
		s.nodeOrder = append(s.nodeOrder, n.Name)
	}
	for _, st := range c.Storages {
		if _, dup := s.storages[st.Name]; dup {
			return nil, fmt.Errorf("pvesim: duplicate storage %q", st.Name)
		}
		ss := &storageState{cfg: st, content: map[string]bool{}}
		for _, ct := range splitList(st.Content) {
			ss.content[ct] = true
		}
		s.storages[st.Name] = ss
		s.storageOrder = append(s.storageOrder, st.Name)
		s.vols[st.Name] = map[string]map[string]*volume{}
	}
	for _, t := range c.Tokens {
		s.tokens[t.ID] = t
	}
	for _, u := range c.Users {
		s.users[u.ID] = u
	}
	for name, privs := range c.Roles {
		s.roles[name] = privs
	}
	for _, t := range c.Tokens {
		for _, a := range t.ACLs {
			if a.Role != "" {
				if _, ok := s.roles[a.Role]; !ok {
					return nil, fmt.Errorf("pvesim: token %s: unknown role %q", t.ID, a.Role)
				}
			}
		}
	}
	for _, u := range c.Users {
		for _, a := range u.ACLs {
			if a.Role != "" {
				if _, ok := s.roles[a.Role]; !ok {
					return nil, fmt.Errorf("pvesim: user %s: unknown role %q", u.ID, a.Role)
				}
			}
		}
	}
	dc, err := newDownloadClient(c.DownloadCAPEM, false)
	if err != nil {
		return nil, err
	}
	s.downloadClient = dc
	if err := s.buildRoutes(); err != nil {
		return nil, err
	}
	// pvestatd has been running on every node before the first request.
	s.started = time.Now()
	s.statusTick()
	s.tasksWG.Add(1)
	go s.runStatusDaemon()
	return s, nil
}

// Handler returns the http.Handler serving /api2/json (useful with
// httptest). Start/StartTLS use it.
func (s *Server) Handler() http.Handler { return http.HandlerFunc(s.serveHTTP) }

// Start listens on 127.0.0.1:0 over plain HTTP.
func (s *Server) Start() error { return s.listen("127.0.0.1:0", false) }

// StartTLS listens on 127.0.0.1:0 with a generated self-signed certificate;
// CAPEM returns it for client trust.
func (s *Server) StartTLS() error { return s.listen("127.0.0.1:0", true) }

// ListenAndServe starts on addr, which must be a loopback address.
func (s *Server) ListenAndServe(addr string, useTLS bool) error { return s.listen(addr, useTLS) }

func (s *Server) listen(addr string, useTLS bool) error {
	if err := requireLoopback(addr); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	scheme := "http"
	s.httpSrv = &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 10 * time.Second,
		// HTTP/2 has no reason phrases; PVE speaks HTTP/1.1 only.
		TLSNextProto: map[string]func(*http.Server, *tls.Conn, http.Handler){}}
	if useTLS {
		certPEM, keyPEM, err := selfSignedCert()
		if err != nil {
			ln.Close()
			return err
		}
		cert, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			ln.Close()
			return err
		}
		s.caPEM = certPEM
		ln = tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12, NextProtos: []string{"http/1.1"}})
		scheme = "https"
	}
	s.listener = ln
	s.baseURL = fmt.Sprintf("%s://%s/api2/json", scheme, ln.Addr().String())
	go func() { _ = s.httpSrv.Serve(ln) }()
	return nil
}

// requireLoopback refuses anything but loopback listen addresses: the
// simulator is a development tool and never exposed on a network.
func requireLoopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("pvesim: listen address %q: %w", addr, err)
	}
	if host == "localhost" {
		return nil
	}
	ip := net.ParseIP(host)
	if ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("pvesim: refusing non-loopback listen address %q", addr)
	}
	return nil
}

// URL is the base URL including /api2/json (what go-proxmox's NewClient
// takes).
func (s *Server) URL() string { return s.baseURL }

// CAPEM is the PEM certificate to trust after StartTLS (nil otherwise).
func (s *Server) CAPEM() []byte { return s.caPEM }

// Close stops the listener and waits for running tasks.
func (s *Server) Close() {
	s.closeMu.Do(func() {
		close(s.closing)
		if s.httpSrv != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			if err := s.httpSrv.Shutdown(ctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
				_ = s.httpSrv.Close()
			}
			_ = s.httpSrv.Close()
		}
		s.tasksWG.Wait()
	})
}

// Config returns the effective configuration (defaults applied).
func (s *Server) Config() Config { return s.cfg }
