package ring

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the gateway cluster's Prometheus metrics. A nil *Metrics
// records nothing.
type Metrics struct {
	forwards    *prometheus.CounterVec
	forwardOpen prometheus.Histogram
	handovers   *prometheus.CounterVec
}

// NewMetrics returns the metrics; register Collectors in the node's
// registry.
func NewMetrics() *Metrics {
	return &Metrics{
		forwards: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gatehouse_forwards_total",
			Help: "Requests forwarded to the node holding their cluster's tunnel, by result (ok, no_tunnel, error).",
		}, []string{"result"}),
		forwardOpen: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "gatehouse_forward_open_seconds",
			Help: "Time to open a forwarded request's stream on the owner (the hop's own cost, before the request's bytes).",
			// From a tenth of a millisecond (a pooled session) to a second
			// (a new mTLS connection on a loaded node).
			Buckets: prometheus.ExponentialBuckets(0.0001, 2.5, 12),
		}),
		handovers: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gatehouse_handovers_total",
			Help: "Tunnels moved to their cluster's new owner, by result (ok, refused).",
		}, []string{"result"}),
	}
}

// Collectors returns the metrics to register.
func (m *Metrics) Collectors() []prometheus.Collector {
	return []prometheus.Collector{m.forwards, m.forwardOpen, m.handovers}
}

// MembersGauge reports the ring's live members.
func MembersGauge(r *Ring) prometheus.Collector {
	return prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "gatehouse_ring_members",
		Help: "Live members of the gateway cluster, as this node sees them (itself included).",
	}, func() float64 { return float64(len(r.Members())) })
}

func (m *Metrics) forwarded(result string, took time.Duration) {
	if m == nil {
		return
	}
	m.forwards.WithLabelValues(result).Inc()
	if result == "ok" {
		m.forwardOpen.Observe(took.Seconds())
	}
}

// HandedOver counts a hand-over and its result.
func (m *Metrics) HandedOver(ok bool) {
	if m == nil {
		return
	}
	result := "refused"
	if ok {
		result = "ok"
	}
	m.handovers.WithLabelValues(result).Inc()
}
