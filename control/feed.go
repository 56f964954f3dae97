package control

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/gatehouse-dev/gatehouse/control/store"
)

// ChangeHandler applies one change of the feed on this node. *gateway's
// applier implements it: it updates the revocation set, forgets cached
// decisions, ends streams and tells the agents.
type ChangeHandler interface {
	ApplyChange(ctx context.Context, c store.Change) error
}

// Follower follows the store's change feed and hands every change to its
// handler once, so that a change made through any node reaches this one.
//
// The feed is polled (CockroachDB has no LISTEN/NOTIFY, and its changefeeds
// need an enterprise sink). A change is stamped with its writer's clock
// before its transaction commits, so a poll cannot simply ask for what came
// after the newest change it saw: a slow transaction may commit a change
// stamped earlier. Each poll therefore reads back Lookback before the newest
// stamp it has seen and skips the ids it has already applied. A change is
// missed only if its transaction commits more than Lookback after it took
// its stamp (or the writer's clock is that far behind this node's).
type Follower struct {
	Store   *store.Store
	Handler ChangeHandler
	// Interval is how often the feed is polled: the latency of a change
	// made through another node, plus its application. 100 ms keeps every
	// change within the 1 s the design promises with room to spare, for a
	// query that reads an index range of a few rows.
	Interval time.Duration
	// Lookback is how far back each poll reads (see above). 5 s is far
	// beyond a transaction's commit delay and CockroachDB's maximum clock
	// offset (500 ms).
	Lookback time.Duration
	Logger   *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time

	seen map[string]time.Time // change id -> stamp, within the window
	high time.Time            // newest stamp seen
}

// pageSize bounds one read of the feed.
const pageSize = 500

// Start positions the follower at the feed's present: changes stamped
// before now - Lookback are history (what they did is in the store, and
// the node loads it after Start); those of the last Lookback are applied
// again at the first poll, which does no harm.
func (f *Follower) Start() {
	f.defaults()
	f.high = f.now()
	f.seen = map[string]time.Time{}
}

func (f *Follower) defaults() {
	if f.Interval <= 0 {
		f.Interval = 100 * time.Millisecond
	}
	if f.Lookback <= 0 {
		f.Lookback = 5 * time.Second
	}
	if f.Logger == nil {
		f.Logger = slog.New(slog.DiscardHandler)
	}
}

func (f *Follower) now() time.Time {
	if f.Now != nil {
		return f.Now()
	}
	return time.Now()
}

// Run polls until ctx ends. Start must have been called (Run calls it if
// not). Every minute it also prunes changes past store.ChangeRetention.
func (f *Follower) Run(ctx context.Context) error {
	if f.seen == nil {
		f.Start()
	}
	t := time.NewTicker(f.Interval)
	defer t.Stop()
	lastPrune := f.now()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		if _, err := f.Poll(ctx); err != nil && ctx.Err() == nil {
			f.Logger.Warn("change feed", "err", err)
		}
		if f.now().Sub(lastPrune) > time.Minute {
			lastPrune = f.now()
			if _, err := f.Store.PruneChanges(ctx); err != nil && ctx.Err() == nil {
				f.Logger.Warn("change feed: prune", "err", err)
			}
		}
	}
}

// Poll reads the feed once and applies what it has not applied yet. It
// returns how many changes it applied.
func (f *Follower) Poll(ctx context.Context) (int, error) {
	if f.seen == nil {
		f.Start()
	}
	since := f.high.Add(-f.Lookback)
	applied := 0
	var errs []error
	var lastAt time.Time
	lastID := ""
	for {
		page, err := f.Store.Changes(ctx, since, lastAt, lastID, pageSize)
		if err != nil {
			return applied, err
		}
		for _, c := range page {
			if _, ok := f.seen[c.ID]; ok {
				continue
			}
			f.seen[c.ID] = c.At
			if c.At.After(f.high) {
				f.high = c.At
			}
			if err := f.Handler.ApplyChange(ctx, c); err != nil {
				errs = append(errs, err)
			}
			applied++
		}
		if len(page) < pageSize {
			break
		}
		lastAt, lastID = page[len(page)-1].At, page[len(page)-1].ID
	}
	for id, at := range f.seen {
		if at.Before(since) {
			delete(f.seen, id)
		}
	}
	return applied, errors.Join(errs...)
}
