package pvesim

import "sync"

// metrics counts calls per "METHOD /template" and tracks concurrency so
// tests can assert a client's limits.
type metrics struct {
	mu          sync.Mutex
	calls       map[string]int
	inflight    int
	maxInflight int
	nodeIn      map[string]int
	nodeMax     map[string]int
}

func newMetrics() *metrics {
	return &metrics{calls: map[string]int{}, nodeIn: map[string]int{}, nodeMax: map[string]int{}}
}

func (m *metrics) begin(key, node string) func() {
	m.mu.Lock()
	m.calls[key]++
	m.inflight++
	if m.inflight > m.maxInflight {
		m.maxInflight = m.inflight
	}
	if node != "" {
		m.nodeIn[node]++
		if m.nodeIn[node] > m.nodeMax[node] {
			m.nodeMax[node] = m.nodeIn[node]
		}
	}
	m.mu.Unlock()
	return func() {
		m.mu.Lock()
		m.inflight--
		if node != "" {
			m.nodeIn[node]--
		}
		m.mu.Unlock()
	}
}

// Stats is a snapshot of request counters.
type Stats struct {
	// Calls maps "METHOD /route/template" to the number of requests.
	Calls       map[string]int
	InFlight    int
	MaxInFlight int
	// NodeInFlight / NodeMaxInFlight count requests addressed to
	// /nodes/{node}/... per node.
	NodeInFlight    map[string]int
	NodeMaxInFlight map[string]int
}

// Stats returns a copy of the counters.
func (s *Server) Stats() Stats {
	m := s.metrics
	m.mu.Lock()
	defer m.mu.Unlock()
	st := Stats{Calls: map[string]int{}, InFlight: m.inflight, MaxInFlight: m.maxInflight,
		NodeInFlight: map[string]int{}, NodeMaxInFlight: map[string]int{}}
	for k, v := range m.calls {
		st.Calls[k] = v
	}
	for k, v := range m.nodeIn {
		st.NodeInFlight[k] = v
	}
	for k, v := range m.nodeMax {
		st.NodeMaxInFlight[k] = v
	}
	return st
}

// Calls returns the count for one "METHOD /template" key.
func (s *Server) Calls(key string) int {
	s.metrics.mu.Lock()
	defer s.metrics.mu.Unlock()
	return s.metrics.calls[key]
}

// ResetStats zeroes the counters and max gauges.
func (s *Server) ResetStats() {
	m := s.metrics
	m.mu.Lock()
	m.calls = map[string]int{}
	m.maxInflight = m.inflight
	m.nodeMax = map[string]int{}
	for k, v := range m.nodeIn {
		m.nodeMax[k] = v
	}
	m.mu.Unlock()
}
