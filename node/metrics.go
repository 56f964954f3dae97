package node

import (
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// metrics are the node's Prometheus metrics, in a registry of the node's own
// (never the global one, so that two nodes in one process, as in tests, do
// not collide). Cluster ids are not labels: thousands of clusters would
// make thousands of series per metric; per-cluster detail is in the audit
// stream.
type metrics struct {
	reg         *prometheus.Registry
	requests    *prometheus.CounterVec
	latency     *prometheus.HistogramVec
	auditErrors prometheus.Counter
	// auditUnready counts requests met while the audit sink could not
	// take events, by what the node did: refused (fail closed) or served
	// unaudited (fail open, an alarm).
	auditUnready *prometheus.CounterVec
	redirects    prometheus.Counter
	// recordedBytes counts the bytes of session recordings written.
	recordedBytes prometheus.Counter
}

func newMetrics(n *Node) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gatehouse_requests_total",
			Help: "Requests to clusters through this node, by Kubernetes verb and response code.",
		}, []string{"verb", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "gatehouse_request_duration_seconds",
			Help: "Duration of requests that are not long-running (watch, exec, attach, port-forward, logs -f are left out), by verb.",
			// From 1 ms (a cached GET) to 60 s (the API server's own timeout).
			Buckets: prometheus.ExponentialBucketsRange(0.001, 60, 16),
		}, []string{"verb"}),
		auditErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "gatehouse_audit_write_errors_total",
			Help: "Audit events that could not be written.",
		}),
		auditUnready: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gatehouse_audit_unready_total",
			Help: "Requests met while the audit log could not take events (the spool full or its disk failing), by what the node did: refused (fail closed, the default) or served (fail open: an alarm).",
		}, []string{"action"}),
		redirects: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "gatehouse_agent_redirects_total",
			Help: "Agents sent on to the node that should hold their tunnel.",
		}),
		recordedBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "gatehouse_session_recording_bytes_total",
			Help: "Bytes of exec and attach session recordings (asciicast v2) written to the audit log.",
		}),
	}
	m.reg.MustRegister(m.requests, m.latency, m.auditErrors, m.auditUnready, m.redirects, m.recordedBytes,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "gatehouse_tunnels_open",
			Help: "Agent tunnels held by this node.",
		}, func() float64 { return float64(n.cfg.Registry.Len()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "gatehouse_streams_open",
			Help: "Requests in flight through this node, long-running streams included.",
		}, func() float64 { return float64(n.sessions.len()) }),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	m.reg.MustRegister(n.cfg.Collectors...)
	return m
}

func (m *metrics) observe(verb string, code int, d time.Duration, longRunning bool) {
	if verb == "" {
		verb = "unknown"
	}
	m.requests.WithLabelValues(verb, strconv.Itoa(code)).Inc()
	if !longRunning {
		m.latency.WithLabelValues(verb).Observe(d.Seconds())
	}
}

// MetricsHandler serves the node's metrics in the Prometheus format.
func (n *Node) MetricsHandler() http.Handler {
	return promhttp.HandlerFor(n.metrics.reg, promhttp.HandlerOpts{})
}
