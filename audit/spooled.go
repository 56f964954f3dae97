package audit

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/google/uuid"

	"github.com/gatehouse-dev/gatehouse/audit/spool"
)

// SpoolSink writes events to the node's durable spool (package spool),
// from which a Shipper sends them to Kafka: an event is on disk before
// Write returns, so a request is not answered before its event is safe.
// Write fails (the gateway then refuses the request) when the spool cannot
// take it: full because Kafka has been down too long, or a failing disk.
type SpoolSink struct {
	Spool *spool.Spool
}

var (
	_ Sink = (*SpoolSink)(nil)
	_ Gate = (*SpoolSink)(nil)
)

// readyHeadroom is what the spool must have left for the sink to say it
// is ready: room for the events of the requests in flight.
const readyHeadroom = 1 << 20

// Ready implements Gate: the spool has room and its disk works.
func (s *SpoolSink) Ready() error {
	if err := s.Spool.Err(); err != nil {
		return err
	}
	if st := s.Spool.Stats(); st.Bytes+readyHeadroom > st.MaxBytes {
		return fmt.Errorf("audit: %w (Kafka has not taken its events for a while)", spool.ErrFull)
	}
	return nil
}

// Write gives ev an id (a UUIDv7) if it has none and the schema version,
// and appends it to the spool.
func (s *SpoolSink) Write(_ context.Context, ev *Event) error {
	if ev.ID == "" {
		id, err := uuid.NewV7()
		if err != nil {
			return fmt.Errorf("audit: event id: %w", err)
		}
		ev.ID = id.String()
	}
	ev.Schema = SchemaVersion
	bound(ev)
	b, err := json.Marshal(ev)
	if err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	if _, err := s.Spool.Append(b); err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	return nil
}

// MaxField bounds each text field of an event that the spooled sink
// writes: a client's path or user agent can be as long as the server takes
// headers, and an event that Kafka refuses as too large would stop the
// shipper and fill the spool. Longer values are cut and marked.
const MaxField = 4096

const cutMark = "...(cut)"

func bound(ev *Event) {
	for _, f := range []*string{&ev.Action, &ev.Object, &ev.User, &ev.Cluster, &ev.Namespace, &ev.Verb, &ev.APIGroup, &ev.Resource,
		&ev.Subresource, &ev.Name, &ev.Path, &ev.ClientAddr, &ev.UserAgent, &ev.Error, &ev.Detail, &ev.RequestID, &ev.Node} {
		if len(*f) > MaxField {
			*f = strings.ToValidUTF8((*f)[:MaxField-len(cutMark)], "") + cutMark
		}
	}
	if len(ev.Groups) > 256 {
		ev.Groups = append(ev.Groups[:255:255], cutMark)
	}
	for i, g := range ev.Groups {
		if len(g) > MaxField {
			ev.Groups[i] = strings.ToValidUTF8(g[:MaxField-len(cutMark)], "") + cutMark
		}
	}
}
