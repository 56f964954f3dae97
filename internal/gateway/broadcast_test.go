package gateway

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/control/store"
)

// Commands of the Raft log come from other nodes, and are checked all the
// same: a known version, a revocation or CA kind, bounded sizes.
func TestCommandValidate(t *testing.T) {
	good := command{V: commandVersion, Origin: "node-1", Stamp: time.Now(), Change: store.Change{Kind: store.ChangeRevokeUser, Subject: "u1", Before: time.Now()}}
	if err := good.validate(); err != nil {
		t.Fatal(err)
	}
	for name, change := range map[string]func(c *command){
		"version":      func(c *command) { c.V = 2 },
		"kind":         func(c *command) { c.Change.Kind = store.ChangeAccess },
		"subject":      func(c *command) { c.Change.Subject = "" },
		"long subject": func(c *command) { c.Change.Subject = strings.Repeat("x", 257) },
		"origin":       func(c *command) { c.Origin = "" },
	} {
		c := good
		change(&c)
		if c.validate() == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func FuzzCommand(f *testing.F) {
	b, _ := json.Marshal(command{V: 1, Origin: "n", Change: store.Change{Kind: store.ChangeCA, Subject: "2"}})
	f.Add(b)
	f.Add([]byte(`{"v":1,"origin":"n","change":{"Kind":"revoke.serial","Subject":"ab"}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var c command
		if json.Unmarshal(b, &c) != nil || c.validate() != nil {
			return
		}
		switch c.Change.Kind {
		case store.ChangeRevokeSerial, store.ChangeRevokeUser, store.ChangeRevokeCluster, store.ChangeCA:
		default:
			t.Fatalf("validated a command of kind %q", c.Change.Kind)
		}
		if c.Change.Subject == "" || len(c.Change.Subject) > 256 || c.Origin == "" {
			t.Fatalf("validated %+v", c)
		}
	})
}
