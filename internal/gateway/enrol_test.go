package gateway

import (
	"bytes"
	"encoding/hex"
	"strings"
	"testing"
	"time"
)

// An enrolment's MAC covers every field, so that no part of a request can
// be changed or moved into another; a nonce is taken once.
func TestEnrolRequestMACAndReplay(t *testing.T) {
	secret := bytes.Repeat([]byte{1}, 32)
	base := enrolRequest{Name: "node-4", Hosts: []string{"10.0.0.4", "localhost"}, PublicKey: []byte{1, 2, 3}, Time: 1700000000000,
		Nonce: strings.Repeat("ab", 16)}
	base.MAC = hex.EncodeToString(base.mac(secret))
	if err := base.validate(); err != nil {
		t.Fatal(err)
	}
	changes := []func(r *enrolRequest){
		func(r *enrolRequest) { r.Name = "node-5" },
		func(r *enrolRequest) { r.Hosts = []string{"10.0.0.5", "localhost"} },
		func(r *enrolRequest) { r.Hosts = []string{"10.0.0.4\x00localhost"} },
		func(r *enrolRequest) { r.PublicKey = []byte{1, 2, 4} },
		func(r *enrolRequest) { r.Time++ },
		func(r *enrolRequest) { r.Nonce = strings.Repeat("cd", 16) },
		func(r *enrolRequest) { r.Name, r.Hosts = "node-410.0.0.4", []string{"localhost"} },
	}
	for i, change := range changes {
		r := base
		r.Hosts = append([]string(nil), base.Hosts...)
		change(&r)
		if bytes.Equal(r.mac(secret), base.mac(secret)) {
			t.Errorf("change %d keeps the MAC", i)
		}
	}
	if bytes.Equal(base.mac(bytes.Repeat([]byte{2}, 32)), base.mac(secret)) {
		t.Error("another secret, the same MAC")
	}
	for _, bad := range []enrolRequest{
		{Name: "", Hosts: base.Hosts, Nonce: base.Nonce, MAC: base.MAC},
		{Name: "n", Hosts: nil, Nonce: base.Nonce, MAC: base.MAC},
		{Name: "n", Hosts: []string{""}, Nonce: base.Nonce, MAC: base.MAC},
		{Name: "n", Hosts: base.Hosts, Nonce: "short", MAC: base.MAC},
		{Name: strings.Repeat("n", 129), Hosts: base.Hosts, Nonce: base.Nonce, MAC: base.MAC},
		{Name: "n", Hosts: make([]string, 17), Nonce: base.Nonce, MAC: base.MAC},
	} {
		if bad.validate() == nil {
			t.Errorf("accepted %+v", bad)
		}
	}
	guard := newEnrolGuard()
	now := time.Now()
	if !guard.fresh(base.Nonce, now) || guard.fresh(base.Nonce, now.Add(time.Minute)) {
		t.Fatal("a nonce taken twice")
	}
	if !guard.fresh(base.Nonce, now.Add(2*enrolSkew+time.Second)) {
		t.Fatal("a nonce older than the window is still remembered (the map grows)")
	}
}
