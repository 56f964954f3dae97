// Package loadtest measures Gatehouse against direct access to the same
// Kubernetes API server in the same run: request rate and latency at several
// concurrencies, stream throughput, and memory per idle agent tunnel. Results
// are reported as ratios to the direct baseline, never asserted as times.
//
// Nothing lives here yet; see docs/design/0001-architecture.md.
package loadtest
