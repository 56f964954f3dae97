package node

import (
	"bufio"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"path"
	"strings"
	"sync/atomic"

	"github.com/google/uuid"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/gatehouse-dev/gatehouse/audit"
	"github.com/gatehouse-dev/gatehouse/audit/record"
	"github.com/gatehouse-dev/gatehouse/grant"
	"github.com/gatehouse-dev/gatehouse/internal/kubeapi"
	"github.com/gatehouse-dev/gatehouse/tunnel"
)

// kubeHandler serves /k8s/CLUSTER/...: a person's request to a cluster.
type kubeHandler struct{ n *Node }

// SplitClusterPath splits an escaped request path /k8s/CLUSTER/REST into the
// cluster id and the API server path /REST. It refuses anything that could
// reach outside the cluster's API: dot segments, encoded slashes or dots,
// empty segments, and cluster ids that are not DNS labels.
func SplitClusterPath(escaped string) (cluster, rest string, err error) {
	const prefix = "/k8s/"
	if !strings.HasPrefix(escaped, prefix) {
		return "", "", errors.New("path must start with /k8s/CLUSTER/")
	}
	lower := strings.ToLower(escaped)
	if strings.Contains(lower, "%2f") || strings.Contains(lower, "%2e") || strings.Contains(lower, "%5c") || strings.Contains(escaped, `\`) {
		return "", "", errors.New("encoded slashes, dots and backslashes are not allowed in the path")
	}
	tail := escaped[len(prefix):]
	cluster, rest, _ = strings.Cut(tail, "/")
	rest = "/" + rest
	if errs := validation.IsDNS1123Label(cluster); len(errs) > 0 {
		return "", "", fmt.Errorf("bad cluster id %q: %s", cluster, strings.Join(errs, "; "))
	}
	clean := path.Clean(rest)
	if strings.HasSuffix(rest, "/") && clean != "/" {
		clean += "/"
	}
	if clean != rest {
		return "", "", errors.New("path must not contain empty, . or .. segments")
	}
	return cluster, rest, nil
}

type targetKey struct{}

func newRequestID() string { return rand.Text() }

func (k *kubeHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	n := k.n
	start := n.cfg.Now()
	ev := &audit.Event{
		Kind: audit.KindKube, Time: start, Phase: audit.PhaseComplete, RequestID: newRequestID(), Node: n.cfg.Name,
		Path: r.URL.EscapedPath(), ClientAddr: r.RemoteAddr, UserAgent: r.UserAgent(), Verb: r.Method,
	}
	refuse := func(code int, reason metav1.StatusReason, msg string) {
		ev.Status, ev.Error, ev.Duration = code, msg, n.cfg.Now().Sub(start)
		n.writeAudit(r.Context(), ev)
		n.metrics.observe(ev.Verb, code, ev.Duration, false)
		kubeapi.WriteStatus(w, code, reason, msg)
	}

	// A request the audit log cannot record is refused (fail closed),
	// unless the node is configured to serve it unaudited.
	if gate, ok := n.cfg.Audit.(audit.Gate); ok {
		if err := gate.Ready(); err != nil {
			if !n.cfg.AuditFailOpen {
				n.metrics.auditUnready.WithLabelValues("refused").Inc()
				w.Header().Set("Retry-After", "5")
				kubeapi.WriteStatus(w, http.StatusServiceUnavailable, metav1.StatusReasonServiceUnavailable,
					"gatehouse: the audit log cannot take this request's event ("+err.Error()+"); the gateway refuses what it cannot audit; retry")
				return
			}
			n.metrics.auditUnready.WithLabelValues("served").Inc()
		}
	}

	// Who: a person's certificate, valid, not revoked.
	var chain = r.TLS.PeerCertificates
	id, err := n.cfg.Verifier.VerifyUser(chain)
	if err != nil {
		refuse(http.StatusUnauthorized, metav1.StatusReasonUnauthorized, "gatehouse: client certificate refused: "+err.Error())
		return
	}
	ev.User, ev.Groups = id.User, id.Groups

	// Where: the cluster, and a path that stays inside its API.
	path := r.URL.EscapedPath()
	if c, ok := n.hostCluster(r); ok {
		// Host routing: the whole path is the API server's, checked as
		// the path form's is.
		path = "/k8s/" + c + path
	}
	cluster, rest, err := SplitClusterPath(path)
	if err != nil {
		refuse(http.StatusBadRequest, metav1.StatusReasonBadRequest, "gatehouse: "+err.Error())
		return
	}
	ev.Cluster = cluster
	// A shallow copy with its own URL: the parser reads, never writes.
	apiReq := new(http.Request)
	*apiReq = *r
	apiURL := *r.URL
	apiReq.URL = &apiURL
	apiReq.URL.RawPath = rest
	apiReq.URL.Path, _ = url.PathUnescape(rest)
	ri, err := kubeapi.Info(apiReq)
	if err != nil {
		// The API server's own parser refuses it too; refusing here keeps
		// the gateway's checks below from running on a request it cannot
		// read.
		refuse(http.StatusBadRequest, metav1.StatusReasonBadRequest, "gatehouse: "+err.Error())
		return
	}
	ev.Verb, ev.APIGroup, ev.Resource, ev.Subresource, ev.Namespace, ev.Name = ri.Verb, ri.APIGroup, ri.Resource, ri.Subresource, ri.Namespace, ri.Name
	if kubeapi.LongRunning(apiReq, ri) {
		ev.Phase = audit.PhaseOpen
	}

	// Impersonation is refused outright rather than stripped: a person who
	// sends it expects it to work, and should learn that it does not.
	for h := range r.Header {
		if strings.HasPrefix(http.CanonicalHeaderKey(h), "Impersonate-") {
			refuse(http.StatusForbidden, metav1.StatusReasonForbidden, "gatehouse: impersonation is not allowed through the gateway; requests run as you")
			return
		}
	}
	if !kubeapi.AllowedUpgrade(r.Header) {
		refuse(http.StatusBadRequest, metav1.StatusReasonBadRequest, "gatehouse: upgrade protocol not allowed: only SPDY/3.1 and websocket")
		return
	}

	// What: any grant at all on the cluster; the cluster's RBAC, made from
	// the grants, decides the rest, but for the checks below.
	grants, err := n.cfg.Grants.Grants(r.Context(), id.User, id.Groups, cluster)
	if err != nil {
		refuse(http.StatusServiceUnavailable, metav1.StatusReasonServiceUnavailable, "gatehouse: cannot read your access right now")
		return
	}
	if len(grants) == 0 {
		refuse(http.StatusForbidden, metav1.StatusReasonForbidden, fmt.Sprintf("gatehouse: you have no access to cluster %q", cluster))
		return
	}
	// Defence in depth (design 0001): what a read-only grant never gives
	// is refused here, before anything reaches the cluster, whatever the
	// cluster's RBAC says.
	req := grant.Request{Verb: ri.Verb, APIGroup: ri.APIGroup, Resource: ri.Resource, Subresource: ri.Subresource, Namespace: ri.Namespace}
	if !grant.Permits(grants, req) {
		what := ri.Resource
		if ri.Subresource != "" {
			what += "/" + ri.Subresource
		}
		refuse(http.StatusForbidden, metav1.StatusReasonForbidden, fmt.Sprintf("gatehouse: forbidden: your access to cluster %q does not include %s %s here (secrets, exec, attach, port-forward and proxy need edit, admin or a role that names them)", cluster, ri.Verb, what))
		return
	}

	hdr := &tunnel.Header{RequestID: ev.RequestID, User: id.User, Groups: id.Groups, Grants: grants, Deadline: id.NotAfter}
	target := &streamTarget{cluster: cluster, rest: rest, hdr: hdr}
	session := ri.Resource == "pods" && (ri.Subresource == "exec" || ri.Subresource == "attach")
	// The kubelet's API through the node proxy runs commands in pods too
	// (nodes/NAME/proxy/exec/...), past the recorder: refused to whoever
	// the cluster records.
	nodeProxy := ri.APIGroup == "" && ri.Resource == "nodes" && ri.Subresource == "proxy"
	if (session || nodeProxy) && n.cfg.Recording != nil {
		roles, err := n.cfg.Recording.RecordRoles(r.Context(), cluster)
		if err != nil {
			// Whether the session must be recorded is unknown: it is not
			// opened unrecorded.
			refuse(http.StatusServiceUnavailable, metav1.StatusReasonServiceUnavailable, "gatehouse: cannot read the cluster's session recording policy right now; retry")
			return
		}
		held := make([]string, len(grants))
		for i, g := range grants {
			held[i] = g.Role
		}
		switch {
		case !record.Applies(roles, held):
		case nodeProxy:
			refuse(http.StatusForbidden, metav1.StatusReasonForbidden, fmt.Sprintf("gatehouse: forbidden: cluster %q records your sessions, and the node proxy would run commands past the recorder; use kubectl exec or attach", cluster))
			return
		default:
			if target.rec, err = n.newRecorder(r, ev); err != nil {
				refuse(http.StatusInternalServerError, metav1.StatusReasonInternalError, "gatehouse: cannot record the session: "+err.Error())
				return
			}
			ev.Recording = target.rec.ID()
			// A compressed WebSocket could not be read: the recorder
			// asks for none.
			r.Header.Del("Sec-Websocket-Extensions")
		}
	}
	if ev.Phase == audit.PhaseOpen {
		n.writeAudit(r.Context(), ev)
	}
	cw := &countingWriter{ResponseWriter: w}
	var bodyIn atomic.Int64
	if r.Body != nil && r.Body != http.NoBody {
		r.Body = &countingBody{ReadCloser: r.Body, n: &bodyIn}
	}
	ctx := context.WithValue(r.Context(), targetKey{}, target)
	// The person's access ends with their certificate: long streams too.
	ctx, cancel := context.WithDeadline(ctx, id.NotAfter)
	defer cancel()
	// A revocation ends the request through cancel.
	defer n.sessions.add(Session{RequestID: ev.RequestID, User: id.User, Groups: id.Groups, Serial: id.Serial, Cluster: cluster, Request: req}, cancel)()
	// Deferred: ReverseProxy ends a stream whose client has gone by
	// panicking with http.ErrAbortHandler, and the event must be written
	// all the same (the panic then goes on to the server).
	defer func() {
		if target.rec != nil {
			target.rec.Close() // its last chunk before the close event
		}
		ev.Time = n.cfg.Now()
		if ev.Phase == audit.PhaseOpen {
			ev.Phase = audit.PhaseClose
		}
		ev.Status = cw.status()
		ev.Duration = ev.Time.Sub(start)
		ev.BytesIn = bodyIn.Load() + cw.hijackedIn.Load()
		ev.BytesOut = cw.written.Load() + cw.hijackedOut.Load()
		n.writeAudit(r.Context(), ev)
		n.metrics.observe(ev.Verb, ev.Status, ev.Duration, ev.Phase == audit.PhaseClose)
	}()
	n.kubeProxy().ServeHTTP(cw, r.WithContext(ctx))
}

// streamTarget is where a request goes down the tunnel: the cluster, the
// path inside its API, and the stream's header (who asks). It travels in
// the request's context to the node's one reverse proxy.
type streamTarget struct {
	cluster, rest string
	hdr           *tunnel.Header
	rec           *record.Recorder // when the session is recorded
}

// newRecorder starts the recording of an exec or attach session whose
// event is ev: its chunks go to the audit log as events of their own.
func (n *Node) newRecorder(r *http.Request, ev *audit.Event) (*record.Recorder, error) {
	id, err := uuid.NewV7()
	if err != nil {
		return nil, err
	}
	q := r.URL.Query()
	command := q["command"]
	tty := q.Get("tty") == "true" || q.Get("tty") == "1"
	title := fmt.Sprintf("%s on %s: %s %s/%s", ev.User, ev.Cluster, ev.Subresource, ev.Namespace, ev.Name)
	if c := q.Get("container"); c != "" {
		title += " -c " + c
	}
	if len(command) > 0 {
		title += " -- " + strings.Join(command, " ")
	}
	// The chunks' events describe the session as its open event does;
	// they are made from a copy, as ev changes while the session runs.
	tmpl := audit.Event{Kind: audit.KindSession, Action: audit.ActionSessionData, Phase: audit.PhaseComplete, RequestID: ev.RequestID,
		Node: ev.Node, User: ev.User, Groups: ev.Groups, Cluster: ev.Cluster, Namespace: ev.Namespace, Verb: ev.Verb,
		Resource: ev.Resource, Subresource: ev.Subresource, Name: ev.Name, Path: ev.Path, ClientAddr: ev.ClientAddr,
		UserAgent: ev.UserAgent, Recording: id.String(), Status: http.StatusOK}
	ctx := context.WithoutCancel(r.Context())
	return record.New(record.Config{ID: id.String(), Title: title, Command: command, TTY: tty, MaxBytes: n.cfg.RecordMaxBytes,
		Now: n.cfg.Now, Emit: func(c audit.Chunk) error {
			e := tmpl
			e.Time, e.Chunk = n.cfg.Now(), &c
			n.metrics.recordedBytes.Add(float64(len(c.Data)))
			err := n.cfg.Audit.Write(ctx, &e)
			if err == nil {
				return nil
			}
			n.metrics.auditErrors.Inc()
			if n.cfg.AuditFailOpen {
				n.log.Error("audit: a recorded session's output could not be written; the session goes on (--audit-fail-open)", "err", err, "requestId", e.RequestID, "recording", e.Recording)
				return nil
			}
			// Fail closed, as a request the audit log cannot take is
			// refused: the recorder ends the session.
			n.log.Error("audit: a recorded session's output could not be written; the session is ended (fail closed)", "err", err, "requestId", e.RequestID, "recording", e.Recording)
			return err
		}})
}

func targetOf(ctx context.Context) *streamTarget {
	t, _ := ctx.Value(targetKey{}).(*streamTarget)
	return t
}

// kubeProxy returns the node's reverse proxy, made once: every request
// goes down its cluster's tunnel, one stream per request (a stream is one
// person's, always).
func (n *Node) kubeProxy() *httputil.ReverseProxy {
	n.proxyOnce.Do(func() { n.rp = n.newKubeProxy() })
	return n.rp
}

func (n *Node) writeAudit(ctx context.Context, ev *audit.Event) {
	if err := n.cfg.Audit.Write(context.WithoutCancel(ctx), ev); err != nil {
		n.metrics.auditErrors.Inc()
		n.log.Error("audit write failed", "err", err, "requestId", ev.RequestID)
	}
}

func (n *Node) newKubeProxy() *httputil.ReverseProxy {
	return &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			t := targetOf(pr.In.Context())
			pr.Out.URL.Scheme = "http"
			pr.Out.URL.Host = t.cluster
			pr.Out.Host = t.cluster
			pr.Out.URL.RawPath = t.rest
			pr.Out.URL.Path, _ = url.PathUnescape(t.rest)
			kubeapi.StripClientCredentials(pr.Out.Header)
		},
		Transport: n.tunnelTransport(),
		// A recorded session's upgraded connection is tapped by its
		// recorder (package record), which reads both directions.
		ModifyResponse: func(res *http.Response) error {
			if t := targetOf(res.Request.Context()); t != nil && t.rec != nil && res.StatusCode == http.StatusSwitchingProtocols {
				if conn, ok := res.Body.(io.ReadWriteCloser); ok {
					res.Body = t.rec.Tap(res.Header, conn)
				}
			}
			return nil
		},
		FlushInterval: -1,
		BufferPool:    kubeapi.CopyBuffers,
		ErrorLog:      slog.NewLogLogger(n.log.Handler(), slog.LevelDebug),
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			cluster := targetOf(r.Context()).cluster
			switch {
			case errors.Is(err, tunnel.ErrNoTunnel):
				// In a gateway cluster the tunnel may be moving between
				// nodes: worth a retry in a moment (client-go honours
				// Retry-After). A node alone knows its agent is away.
				var r interface{ Retryable() bool }
				if errors.As(err, &r) && r.Retryable() {
					w.Header().Set("Retry-After", "2")
				}
				kubeapi.WriteStatus(w, http.StatusServiceUnavailable, metav1.StatusReasonServiceUnavailable,
					fmt.Sprintf("gatehouse: cluster %q is not connected (its agent is down, cannot reach the gateway, or is moving to another gateway node); retry in a moment", cluster))
			case errors.Is(err, context.Canceled):
			default:
				kubeapi.WriteStatus(w, http.StatusBadGateway, metav1.StatusReasonInternalError,
					fmt.Sprintf("gatehouse: tunnel to cluster %q failed: %v", cluster, err))
			}
		},
	}
}

func (n *Node) tunnelTransport() http.RoundTripper {
	return &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			t := targetOf(ctx)
			if t == nil || t.hdr == nil {
				return nil, errors.New("node: no identity for the stream")
			}
			return n.tunnels.Open(ctx, t.cluster, t.hdr)
		},
		// One stream per request: never reused for another person.
		DisableKeepAlives:     true,
		ResponseHeaderTimeout: 0, // watches may wait long for a first event
	}
}

// countingWriter counts response bytes, including after a protocol upgrade,
// and passes Flush and Hijack through.
type countingWriter struct {
	http.ResponseWriter
	code                    atomic.Int64
	written                 atomic.Int64
	hijackedIn, hijackedOut atomic.Int64
}

func (c *countingWriter) WriteHeader(code int) {
	c.code.CompareAndSwap(0, int64(code))
	c.ResponseWriter.WriteHeader(code)
}

func (c *countingWriter) Write(p []byte) (int, error) {
	c.code.CompareAndSwap(0, http.StatusOK)
	n, err := c.ResponseWriter.Write(p)
	c.written.Add(int64(n))
	return n, err
}

func (c *countingWriter) status() int {
	if v := c.code.Load(); v != 0 {
		return int(v)
	}
	return http.StatusOK
}

func (c *countingWriter) Flush() { http.NewResponseController(c.ResponseWriter).Flush() }

func (c *countingWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	conn, rw, err := http.NewResponseController(c.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	c.code.CompareAndSwap(0, http.StatusSwitchingProtocols)
	return &countingConn{Conn: conn, in: &c.hijackedIn, out: &c.hijackedOut}, rw, nil
}

func (c *countingWriter) Unwrap() http.ResponseWriter { return c.ResponseWriter }

type countingConn struct {
	net.Conn
	in, out *atomic.Int64
}

func (c *countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.in.Add(int64(n))
	return n, err
}

func (c *countingConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.out.Add(int64(n))
	return n, err
}

type countingBody struct {
	io.ReadCloser
	n *atomic.Int64
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n.Add(int64(n))
	return n, err
}
