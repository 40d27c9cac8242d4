package proxmox

import (
	"context"
	"errors"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the Prometheus collectors of the Proxmox client. Create one per
// process with NewMetrics and share it between clients.
type Metrics struct {
	operations        *prometheus.CounterVec
	operationDuration *prometheus.HistogramVec
	requests          *prometheus.CounterVec
	requestDuration   *prometheus.HistogramVec
	inFlight          prometheus.Gauge
	retries           *prometheus.CounterVec
}

const metricsNamespace = "proxmox_talos_pve"

// NewMetrics creates the collectors and registers them on reg (the manager
// passes controller-runtime's metrics.Registry). If reg is nil the metrics
// are collected but not exported. Registering twice on the same registry
// reuses the collectors already there.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		operations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: metricsNamespace,
			Name:      "operations_total",
			Help:      "Proxmox client operations by operation and outcome (success, not_found, lock_timeout, permission_denied, ...).",
		}, []string{"operation", "outcome"}),
		operationDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: metricsNamespace,
			Name:      "operation_duration_seconds",
			Help:      "Duration of Proxmox client operations, including task waits and retries.",
			Buckets:   []float64{0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900},
		}, []string{"operation"}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: metricsNamespace,
			Name:      "http_requests_total",
			Help:      "HTTP requests sent to the Proxmox API by method and status code (\"error\" for transport failures).",
		}, []string{"method", "code"}),
		requestDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: metricsNamespace,
			Name:      "http_request_duration_seconds",
			Help:      "Latency of single HTTP requests to the Proxmox API.",
			Buckets:   prometheus.DefBuckets,
		}, []string{"method"}),
		inFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: metricsNamespace,
			Name:      "http_requests_in_flight",
			Help:      "HTTP requests to the Proxmox API currently in flight (after the client-side limiter).",
		}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: metricsNamespace,
			Name:      "retries_total",
			Help:      "Retries of Proxmox API calls by reason (lock_timeout, server_error, network, task_lock_timeout).",
		}, []string{"reason"}),
	}
	if reg == nil {
		return m, nil
	}
	var err error
	m.operations = register(reg, m.operations, &err)
	m.operationDuration = register(reg, m.operationDuration, &err)
	m.requests = register(reg, m.requests, &err)
	m.requestDuration = register(reg, m.requestDuration, &err)
	m.inFlight = register(reg, m.inFlight, &err)
	m.retries = register(reg, m.retries, &err)
	return m, err
}

// register registers c, or returns the collector already registered under
// the same descriptor (second client in the same process).
func register[T prometheus.Collector](reg prometheus.Registerer, c T, errp *error) T {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(T); ok {
				return existing
			}
		}
		if *errp == nil {
			*errp = err
		}
	}
	return c
}

func (m *Metrics) observeOperation(op string, err error, d time.Duration) {
	if m == nil {
		return
	}
	m.operations.WithLabelValues(op, outcome(err)).Inc()
	m.operationDuration.WithLabelValues(op).Observe(d.Seconds())
}

func (m *Metrics) observeRequest(method string, code int, d time.Duration) {
	if m == nil {
		return
	}
	c := "error"
	if code > 0 {
		c = strconv.Itoa(code)
	}
	m.requests.WithLabelValues(method, c).Inc()
	m.requestDuration.WithLabelValues(method).Observe(d.Seconds())
}

func (m *Metrics) addInFlight(d float64) {
	if m == nil {
		return
	}
	m.inFlight.Add(d)
}

func (m *Metrics) retry(reason string) {
	if m == nil {
		return
	}
	m.retries.WithLabelValues(reason).Inc()
}

// outcome is the label value for an operation result.
func outcome(err error) string {
	switch {
	case err == nil:
		return "success"
	case errors.Is(err, context.Canceled):
		return "canceled"
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, ErrTimeout):
		return "timeout"
	case errors.Is(err, ErrNotFound):
		return "not_found"
	case errors.Is(err, ErrLockTimeout):
		return "lock_timeout"
	case errors.Is(err, ErrPermissionDenied):
		return "permission_denied"
	case errors.Is(err, ErrUnauthorized):
		return "unauthorized"
	case errors.Is(err, ErrBadRequest):
		return "bad_request"
	case errors.Is(err, ErrAlreadyExists):
		return "already_exists"
	case errors.Is(err, ErrTaskFailed):
		return "task_failed"
	case errors.Is(err, ErrUnavailable):
		return "unavailable"
	default:
		return "error"
	}
}
