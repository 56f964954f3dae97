package control

import (
	"context"
	"testing"

	"github.com/gatehouse-dev/gatehouse/grant"
)

func TestStaticGrantsUnion(t *testing.T) {
	var s StaticGrants
	ctx := context.Background()
	if g, _ := s.Grants(ctx, "u", nil, "c"); len(g) != 0 {
		t.Fatalf("empty table granted %v", g)
	}
	view := grant.Grant{Role: "view", Namespace: "a"}
	edit := grant.Grant{Role: "edit", Namespace: "b"}
	s.Set("u", "c", view)
	s.Set(GroupSubject("ops"), "c", edit, view)
	g, _ := s.Grants(ctx, "u", []string{"ops"}, "c")
	if len(g) != 2 {
		t.Fatalf("union: %v", g)
	}
	if g, _ := s.Grants(ctx, "u", nil, "other"); len(g) != 0 {
		t.Fatalf("other cluster: %v", g)
	}
	s.Set("u", "c")
	if g, _ := s.Grants(ctx, "u", nil, "c"); len(g) != 0 {
		t.Fatalf("after removal: %v", g)
	}
}
