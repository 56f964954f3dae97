// Package auditschema compiles the documented schema of audit events
// (docs/audit/event-v1.schema.json) for tests that check events as a
// consumer would, knowing nothing of Gatehouse's Go types.
package auditschema

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"runtime"

	"github.com/santhosh-tekuri/jsonschema/v6"
)

// Path returns the schema file's path in this checkout.
func Path() string {
	_, here, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(here), "..", "..", "docs", "audit", "event-v1.schema.json")
}

// Compile reads and compiles the schema, asserting formats (date-time).
func Compile() (*jsonschema.Schema, error) {
	b, err := os.ReadFile(Path())
	if err != nil {
		return nil, fmt.Errorf("auditschema: %w", err)
	}
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(b))
	if err != nil {
		return nil, fmt.Errorf("auditschema: %w", err)
	}
	c := jsonschema.NewCompiler()
	c.AssertFormat()
	if err := c.AddResource("event.json", doc); err != nil {
		return nil, fmt.Errorf("auditschema: %w", err)
	}
	return c.Compile("event.json")
}
