// Package kubeapi holds small helpers shared by the gateway and the agent for
// speaking the Kubernetes API's conventions: Status errors that kubectl
// prints, and what a request path means (verb, resource, namespace).
package kubeapi

import (
	"encoding/json"
	"net/http"
	"net/http/httputil"
	"strings"
	"sync"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/apiserver/pkg/endpoints/request"
)

// WriteStatus writes a Kubernetes Status failure; kubectl shows its message
// to the person.
func WriteStatus(w http.ResponseWriter, code int, reason metav1.StatusReason, msg string) {
	b, _ := json.Marshal(&metav1.Status{
		TypeMeta: metav1.TypeMeta{Kind: "Status", APIVersion: "v1"},
		Status:   metav1.StatusFailure,
		Message:  msg,
		Reason:   reason,
		Code:     int32(code),
	})
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	w.Write(append(b, '\n'))
}

var infoFactory = &request.RequestInfoFactory{
	APIPrefixes:          sets.NewString("api", "apis"),
	GrouplessAPIPrefixes: sets.NewString("api"),
}

// RequestInfo is what an API request is about, as the API server's own
// parser reads its path and method.
type RequestInfo = request.RequestInfo

// Info parses r (whose URL path is the API server path, without the
// gateway's /k8s/CLUSTER prefix).
func Info(r *http.Request) (*RequestInfo, error) {
	return infoFactory.NewRequestInfo(r)
}

// LongRunning reports whether a request holds its connection open: watches,
// streaming subresources and followed logs.
func LongRunning(r *http.Request, ri *RequestInfo) bool {
	if r.Header.Get("Upgrade") != "" || ri.Verb == "watch" {
		return true
	}
	switch ri.Subresource {
	case "exec", "attach", "portforward", "proxy":
		return true
	case "log":
		return r.URL.Query().Get("follow") == "true"
	}
	return false
}

// StripClientCredentials removes what a client could use to claim another
// identity: Authorization, Proxy-Authorization and every Impersonate-*
// header (REFERENCE.md security checklist, item 1).
func StripClientCredentials(h http.Header) {
	h.Del("Authorization")
	h.Del("Proxy-Authorization")
	for k := range h {
		if strings.HasPrefix(http.CanonicalHeaderKey(k), "Impersonate-") {
			delete(h, k)
		}
	}
}

// AllowedUpgrade reports whether a request's Upgrade header, if any, names
// a protocol Kubernetes streaming uses: SPDY/3.1 or WebSocket.
func AllowedUpgrade(h http.Header) bool {
	up := h.Values("Upgrade")
	if len(up) == 0 {
		return true
	}
	for _, v := range up {
		for _, p := range strings.Split(v, ",") {
			switch strings.ToLower(strings.TrimSpace(p)) {
			case "spdy/3.1", "websocket":
			default:
				return false
			}
		}
	}
	return true
}

// CopyBuffers lends the gateway's and the agent's reverse proxies their
// 32 KiB copy buffers: without a pool, httputil.ReverseProxy allocates one
// per request, the largest allocation of a small GET's path.
var CopyBuffers httputil.BufferPool = &bufferPool{}

type bufferPool struct{ p sync.Pool }

func (b *bufferPool) Get() []byte {
	if v, ok := b.p.Get().(*[]byte); ok {
		return *v
	}
	return make([]byte, 32<<10)
}

func (b *bufferPool) Put(buf []byte) { b.p.Put(&buf) }
