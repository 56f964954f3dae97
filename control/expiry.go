package control

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/gatehouse-dev/gatehouse/audit"
	"github.com/gatehouse-dev/gatehouse/control/store"
)

// AccessNotifier is told when a person's access may have changed, so that
// their live sessions and their clusters' RBAC follow at once.
// *node.Node implements it (AccessChanged).
type AccessNotifier interface {
	AccessChanged(ctx context.Context, user string, groups []string) error
}

// DefaultExpiryInterval is how often an Expirer looks for expired
// bindings: with the change feed's 100 ms, an expired grant's open streams
// end within half a second. The look is one indexed read that finds
// nothing almost always.
const DefaultExpiryInterval = 250 * time.Millisecond

// Expirer removes time-bound role bindings when they expire and tells the
// gateway whose access changed, so that expired bindings leave the
// clusters' RBAC without waiting for the person's next request.
type Expirer struct {
	Store  *store.Store
	Notify AccessNotifier
	// Interval is how often expiry is checked (DefaultExpiryInterval when
	// zero). The gateway refuses the person's new requests from the moment
	// of expiry (bindings are read with their expiry); the check is what
	// ends their open streams and removes the bindings from the clusters.
	Interval time.Duration
	// Audit, if set, is told of each binding removed (once, by the node
	// that removed it), as Node.
	Audit  audit.Sink
	Node   string
	Logger *slog.Logger
}

// Run checks expiry every Interval until ctx ends.
func (x *Expirer) Run(ctx context.Context) error {
	log := x.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	interval := x.Interval
	if interval <= 0 {
		interval = DefaultExpiryInterval
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			if n, err := x.Once(ctx); err != nil && ctx.Err() == nil {
				log.Warn("expiring role bindings", "err", err)
			} else if n > 0 {
				log.Info("expired role bindings removed", "count", n)
			}
		}
	}
}

// Once removes the bindings expired by now, notifies (if Notify is set) each person they
// reached (a group binding reaches every member), and returns how many
// bindings it removed.
func (x *Expirer) Once(ctx context.Context) (int, error) {
	expired, err := x.Store.DeleteExpiredBindings(ctx)
	if err != nil {
		return 0, err
	}
	users := map[string]bool{}
	var errs []error
	for _, b := range expired {
		if x.Audit != nil {
			ev := &audit.Event{Kind: audit.KindSystem, Action: "rolebinding.expired", Object: "rolebinding/" + b.ID, Time: time.Now(),
				Phase: audit.PhaseComplete, Node: x.Node, Status: 200,
				Detail: fmt.Sprintf("%s %s lost role %s (project %q, namespace %q) at %s", b.SubjectKind, b.SubjectID, b.Role, b.ProjectID, b.Namespace, b.Expires.UTC().Format(time.RFC3339))}
			if b.SubjectKind == store.SubjectUser {
				ev.User = b.SubjectID
			}
			if err := x.Audit.Write(context.WithoutCancel(ctx), ev); err != nil {
				errs = append(errs, fmt.Errorf("control: audit the expiry of %s: %w", b.ID, err))
			}
		}
		if b.SubjectKind == store.SubjectUser {
			users[b.SubjectID] = true
			continue
		}
		members, err := x.Store.GroupMembers(ctx, b.SubjectID)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, m := range members {
			users[m] = true
		}
	}
	if x.Notify == nil {
		return len(expired), errors.Join(errs...) // the change feed tells every node
	}
	for u := range users {
		groups, err := x.Store.UserGroups(ctx, u)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if err := x.Notify.AccessChanged(ctx, u, groups); err != nil {
			errs = append(errs, fmt.Errorf("control: access of %s: %w", u, err))
		}
	}
	return len(expired), errors.Join(errs...)
}
