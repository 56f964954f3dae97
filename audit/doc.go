// Package audit owns the audit stream: one event per API request (two for
// long-lived streams: open and close) and one per system change, written
// through a Sink interface to a local file or to Kafka for consumers.
//
// Nothing lives here yet; see docs/design/0001-architecture.md.
package audit
