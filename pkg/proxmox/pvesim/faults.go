package pvesim

import (
	"net/http"
	"path"
	"time"
)

// Fault injects failures. Empty Method/Path/Node match everything (global);
// Path is a route template ("/nodes/{node}/qemu/{vmid}/status/start") or a
// path.Match glob over templates ("/nodes/{node}/qemu/*").
type Fault struct {
	Method string
	Path   string
	Node   string
	// Latency is added before the request is handled.
	Latency time.Duration
	// ErrorRate (0..1) answers 500 with ErrorText (default a PVE-like
	// "got no worker upid - start worker failed").
	ErrorRate float64
	ErrorText string
	// TaskFailureRate (0..1) makes matching async tasks stop with
	// TaskErrorText (default "command failed (injected fault)").
	TaskFailureRate float64
	TaskErrorText   string
	// LockTimeoutRate (0..1) fails the operation with PVE's "can't lock file
	// ... got timeout" text (task error for async calls, 500 for sync ones).
	LockTimeoutRate float64
	// LockPath overrides the lock named in the injected error (default the
	// target VM's config lock when known, else a storage lock).
	LockPath string
	// ProxyErrorRate (0..1) fails calls that pveproxy forwards to another
	// node (routes with proxyto, node other than the first, which receives
	// every call) with 596, AnyEvent::HTTP's status for errors after the
	// connection was established (TLS, request sending, header processing).
	// ProxyErrorText is the reason (default "Connection timed out").
	ProxyErrorRate float64
	ProxyErrorText string
	// UnreapedTaskRate (0..1) makes matching tasks end without being reaped by the
	// daemon that forked them (recycled while they ran): the node's task list shows them
	// running until the next task starts on the node (fork_worker → active_workers);
	// their own status is exact.
	UnreapedTaskRate float64
}

// Kinds of injected faults, as counted by InjectedFaults.
const (
	// FaultHTTPError is a call answered 500 (Fault.ErrorRate).
	FaultHTTPError = "http-5xx"
	// FaultTaskFailure is a task whose worker stopped with an error (Fault.TaskFailureRate).
	FaultTaskFailure = "task-failure"
	// FaultLockTimeout is an operation that timed out on its lock (Fault.LockTimeoutRate).
	FaultLockTimeout = "lock-timeout"
	// FaultProxyError is a forwarded call answered 596 (Fault.ProxyErrorRate).
	FaultProxyError = "proxy-596"
	// FaultNodeUnreachable is a call answered 595 because its node is offline or its
	// pveproxy stopped (SetNodeOnline, SetPveproxyRunning).
	FaultNodeUnreachable = "node-unreachable-595"
	// FaultUnreapedTask is a task the node's task list kept showing running after it
	// ended (Fault.UnreapedTaskRate).
	FaultUnreapedTask = "task-unreaped"
)

// InjectedFaults counts the faults injected so far by kind (the Fault* constants), so a
// chaos run can report what the provider went through.
func (s *Server) InjectedFaults() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]int, len(s.injected))
	for k, v := range s.injected {
		out[k] = v
	}
	return out
}

// countFault records one injected fault; callers hold s.mu.
func (s *Server) countFault(kind string) {
	if s.injected == nil {
		s.injected = map[string]int{}
	}
	s.injected[kind]++
}

// AddFault registers a fault; faults apply in order, all matching ones
// count. The RNG is seeded from Config.Seed so outcomes are reproducible.
func (s *Server) AddFault(f Fault) {
	s.mu.Lock()
	s.faults = append(s.faults, f)
	s.mu.Unlock()
}

// ClearFaults removes all faults.
func (s *Server) ClearFaults() {
	s.mu.Lock()
	s.faults = nil
	s.mu.Unlock()
}

// SetNodeOnline marks a node up or down; calls routed to a down node answer
// 595 "No route to host" after Config.OfflineDelay, its guests' status
// becomes "unknown" in /cluster/resources at the next status tick, and
// migrations to it fail.
//
// A node that stays down longer than the HA fence delay is fenced: its
// HA-managed VMs are recovered to another online node (see haRecover).
func (s *Server) SetNodeOnline(node string, online bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n, ok := s.nodes[node]
	if !ok {
		return
	}
	wasOnline := n.online
	n.online = online
	if wasOnline && !online {
		n.downSince = time.Now()
		s.haFenceLater(node, n.downSince)
	}
}

// SetPveproxyRunning stops or starts pveproxy on a node that stays up:
// calls routed to it answer 595 "Connection refused" at once.
func (s *Server) SetPveproxyRunning(node string, running bool) {
	s.mu.Lock()
	if n, ok := s.nodes[node]; ok {
		n.proxyDown = !running
	}
	s.mu.Unlock()
}

// injectProxyFault answers 596 for a forwarded call when a ProxyErrorRate
// fault matches.
func (s *Server) injectProxyFault(method string, rt *route, node string) *apiError {
	if rt.schema == nil || rt.schema.Proxyto == "" || len(s.nodeOrder) == 0 || node == s.nodeOrder[0] {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := range s.faults {
		f := &s.faults[i]
		if f.matches(method, rt.template, node) && s.roll(f.ProxyErrorRate) {
			text := f.ProxyErrorText
			if text == "" {
				text = "Connection timed out"
			}
			s.countFault(FaultProxyError)
			return errStatus(596, "%s", text)
		}
	}
	return nil
}

func (f *Fault) matches(method, tmpl, node string) bool {
	if f.Method != "" && f.Method != method {
		return false
	}
	if f.Node != "" && f.Node != node {
		return false
	}
	if f.Path != "" && f.Path != tmpl {
		if ok, _ := path.Match(f.Path, tmpl); !ok {
			return false
		}
	}
	return true
}

// roll draws from the seeded RNG; callers hold s.mu.
func (s *Server) roll(rate float64) bool {
	if rate <= 0 {
		return false
	}
	return s.rng.Float64() < rate
}

func (s *Server) injectRequestFault(method, tmpl, node string) *apiError {
	s.mu.Lock()
	var latency time.Duration
	var fail *apiError
	for i := range s.faults {
		f := &s.faults[i]
		if !f.matches(method, tmpl, node) {
			continue
		}
		latency += f.Latency
		if fail == nil && s.roll(f.ErrorRate) {
			text := f.ErrorText
			if text == "" {
				text = "got no worker upid - start worker failed"
			}
			fail = errStatus(http.StatusInternalServerError, "%s", text)
			s.countFault(FaultHTTPError)
		}
	}
	s.mu.Unlock()
	if latency > 0 {
		select {
		case <-time.After(latency):
		case <-s.closing:
		}
	}
	return fail
}

func splitRouteKey(key string) (string, string) {
	for i := 0; i < len(key); i++ {
		if key[i] == ' ' {
			return key[:i], key[i+1:]
		}
	}
	return "", key
}

// taskFault returns an injected task error text, or "".
func (s *Server) taskFault(routeKey, node string) string {
	method, tmpl := splitRouteKey(routeKey)
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := range s.faults {
		f := &s.faults[i]
		if f.matches(method, tmpl, node) && s.roll(f.TaskFailureRate) {
			s.countFault(FaultTaskFailure)
			if f.TaskErrorText != "" {
				return f.TaskErrorText
			}
			return "command failed (injected fault)"
		}
	}
	return ""
}

// unreapedFault reports whether a task ending now stays unreaped.
func (s *Server) unreapedFault(routeKey, node string) bool {
	method, tmpl := splitRouteKey(routeKey)
	for i := range s.faults {
		f := &s.faults[i]
		if f.matches(method, tmpl, node) && s.roll(f.UnreapedTaskRate) {
			s.countFault(FaultUnreapedTask)
			return true
		}
	}
	return false
}

// lockFault returns the lock path to report as timed out, or "".
func (s *Server) lockFault(routeKey, node, def string) string {
	method, tmpl := splitRouteKey(routeKey)
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := range s.faults {
		f := &s.faults[i]
		if f.matches(method, tmpl, node) && s.roll(f.LockTimeoutRate) {
			s.countFault(FaultLockTimeout)
			if f.LockPath != "" {
				return f.LockPath
			}
			if def != "" {
				return def
			}
			return storageLock("local")
		}
	}
	return ""
}
