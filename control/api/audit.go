package api

import (
	"encoding/base64"
	"encoding/csv"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/gatehouse-dev/gatehouse/audit"
	"github.com/gatehouse-dev/gatehouse/control/policy"
	"github.com/gatehouse-dev/gatehouse/control/store"
)

// searchAudit serves GET /api/v1/audit: the organization's indexed audit
// events, newest first, filtered by the query's parameters, a page at a
// time (keyset: continue), as JSON or CSV (format=csv). Who sees what
// follows the roles, as in Paralus: the organization's admins and
// read-only admins every event of it; a project's admins and read-only
// members those of its clusters; anyone else is refused.
func (a *API) searchAudit(w http.ResponseWriter, r *http.Request, c *Caller) error {
	q := store.AuditQuery{OrgID: c.User.OrgID}
	if !c.decider.Allowed(c.scope(""), policy.AuditRead) {
		q.Projects = []string{}
		for pg := (store.Page{Limit: store.MaxLimit}); ; {
			ps, next, err := a.cfg.Store.ListProjects(r.Context(), c.User.OrgID, pg)
			if err != nil {
				return err
			}
			for _, p := range ps {
				if c.decider.Allowed(c.scope(p.ID), policy.AuditRead) {
					q.Projects = append(q.Projects, p.ID)
				}
			}
			if next == "" {
				break
			}
			pg.Continue = next
		}
		if len(q.Projects) == 0 {
			return forbidden(policy.AuditRead)
		}
	}
	v := r.URL.Query()
	for _, f := range []struct {
		name string
		dst  *time.Time
	}{{"from", &q.From}, {"to", &q.To}} {
		if s := v.Get(f.name); s != "" {
			t, err := time.Parse(time.RFC3339Nano, s)
			if err != nil {
				return badField(f.name, "%s: a time in RFC 3339", f.name)
			}
			*f.dst = t
		}
	}
	q.User, q.Group, q.Cluster, q.Namespace = v.Get("user"), v.Get("group"), v.Get("cluster"), v.Get("namespace")
	q.Verb, q.Resource, q.Name, q.Node, q.Kind = v.Get("verb"), v.Get("resource"), v.Get("name"), v.Get("node"), v.Get("kind")
	if s := v.Get("status"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 100 || n > 999 {
			return badField("status", "status: an HTTP status")
		}
		q.Status = n
	}
	q.Limit = 100
	if s := v.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > store.MaxAuditPage {
			return badField("limit", "limit: from 1 to %d", store.MaxAuditPage)
		}
		q.Limit = n
	}
	if s := v.Get("continue"); s != "" {
		cur, err := decodeAuditCursor(s)
		if err != nil {
			return badField("continue", "continue: not a cursor this API gave")
		}
		q.After = cur
	}
	format := v.Get("format")
	if format != "" && format != "json" && format != "csv" {
		return badField("format", "format: json or csv")
	}
	evs, next, err := a.cfg.Store.QueryAudit(r.Context(), q)
	if err != nil {
		return err
	}
	cont := ""
	if next != nil {
		cont = encodeAuditCursor(next)
	}
	if format == "csv" {
		w.Header().Set("Content-Type", "text/csv; charset=utf-8")
		if cont != "" {
			w.Header().Set("X-Continue", cont)
		}
		cw := csv.NewWriter(w)
		cw.Write([]string{"time", "id", "kind", "node", "user", "groups", "cluster", "namespace", "verb", "resource", "name", "status"})
		for _, e := range evs {
			cw.Write([]string{e.At.UTC().Format(time.RFC3339Nano), e.ID, e.Kind, csvCell(e.Node), csvCell(e.User), csvCell(strings.Join(e.Groups, " ")),
				csvCell(e.Cluster), csvCell(e.Namespace), csvCell(e.Verb), csvCell(e.Resource), csvCell(e.Name), strconv.Itoa(e.Status)})
		}
		cw.Flush()
		return cw.Error()
	}
	out := AuditPage{Items: []json.RawMessage{}, Continue: cont}
	for _, e := range evs {
		out.Items = append(out.Items, json.RawMessage(e.Body))
	}
	return writeJSON(w, http.StatusOK, out)
}

// csvCell returns s for a CSV export that a spreadsheet may open. The
// fields are anybody's input (a request's name is the path its sender
// wrote; denied requests are audited too), and a spreadsheet reads a cell
// that begins with =, +, -, @, a tab or a carriage return as a formula
// (CSV injection, as OWASP calls it): such a value is written with a
// leading apostrophe, which spreadsheets show as text. JSON is unchanged.
func csvCell(s string) string {
	if r, _ := utf8.DecodeRuneInString(s); s != "" && strings.ContainsRune("=+-@\t\r＝＋－＠", r) {
		return "'" + s
	}
	return s
}

// getRecording serves GET /api/v1/audit/recordings/{id}: a recorded exec
// or attach session, as asciicast v2 (application/x-asciicast). Who may
// read it is who may search its cluster's events; anyone else is answered
// 404, as if it did not exist. X-Recording-Complete says whether the whole
// recording is there (false while the session runs, or until the indexer
// has read all of it).
func (a *API) getRecording(w http.ResponseWriter, r *http.Request, c *Caller) error {
	id := r.PathValue("id")
	if len(id) > 64 {
		return badField("id", "not a recording id")
	}
	rec, err := a.cfg.Store.GetRecording(r.Context(), c.User.OrgID, id)
	if err != nil {
		return err
	}
	if !c.decider.Allowed(c.scope(""), policy.AuditRead) && (rec.ProjectID == "" || !c.decider.Allowed(c.scope(rec.ProjectID), policy.AuditRead)) {
		return store.ErrNotFound
	}
	a.auditEvent(r.Context(), r, c, &audit.Event{Action: "audit.recording.read", Object: "recording/" + id, Status: http.StatusOK, Cluster: rec.Cluster})
	w.Header().Set("Content-Type", "application/x-asciicast")
	w.Header().Set("X-Recording-Complete", strconv.FormatBool(rec.Complete))
	w.Header().Set("Content-Disposition", `attachment; filename="`+id+`.cast"`)
	_, err = io.WriteString(w, rec.Data)
	return err
}

// AuditPage is a page of GET /api/v1/audit: the events as written (see
// docs/audit/event-v1.schema.json), and where the next page starts.
type AuditPage struct {
	Items    []json.RawMessage `json:"items"`
	Continue string            `json:"continue,omitempty"`
}

func encodeAuditCursor(c *store.AuditCursor) string {
	return base64.RawURLEncoding.EncodeToString([]byte(strconv.FormatInt(c.At.UnixMicro(), 10) + ":" + c.ID))
}

func decodeAuditCursor(s string) (*store.AuditCursor, error) {
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		return nil, err
	}
	at, id, ok := strings.Cut(string(b), ":")
	us, err := strconv.ParseInt(at, 10, 64)
	if !ok || err != nil || id == "" || len(id) > 128 {
		return nil, errors.New("api: a bad cursor")
	}
	return &store.AuditCursor{At: time.UnixMicro(us), ID: id}, nil
}
