// Package archtest holds the test that keeps Gatehouse's import directions:
// which package may depend on which (see arch_test.go and
// docs/design/0001-architecture.md). It has no code of its own.
package archtest
