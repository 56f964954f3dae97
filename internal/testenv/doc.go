// Package testenv is Gatehouse's test bed: it starts the real components that
// integration tests run against, each on free loopback ports in its own
// temporary directory, and tears them down again.
//
//   - Kubernetes: etcd, kube-apiserver (RBAC, TokenRequest), kube-controller-manager
//     and kube-scheduler, run from binaries built from their Go modules, plus kwok
//     with a few fake nodes whose pods stream logs, exec, attach and port-forward.
//   - PostgreSQL from the machine's server binaries, standing in for CockroachDB.
//   - Kafka: franz-go's kfake, in process, reached over the real wire protocol
//     (package internal/kafkatest, apart so that gatehouse dev does not link it).
//   - Ory Kratos, built from its module, on SQLite.
//
// Every component has a constructor that takes a context and returns a value
// with an idempotent Close, so that long-running programs (gatehouse dev) can
// use the same code; the T-suffixed helpers wrap them for tests and register
// the cleanup. Binaries come from the repository's bin/ directory, built by
// `make tools` (see tools/build.sh); GATEHOUSE_BIN overrides the location.
package testenv
