// Package bootstrap renders the manifest that registers a cluster with
// Gatehouse: the agent's namespace, service account and least-privilege RBAC,
// the one-time bootstrap token and the agent Deployment. The API serves it
// (gatehouse cluster create) and gatehouse dev applies it; it is a leaf
// package so that neither links the agent.
package bootstrap

import (
	"bytes"
	_ "embed"
	"errors"
	"strings"
	"text/template"
	"time"

	"k8s.io/apimachinery/pkg/util/validation"
)

// DefaultNamespace is where the manifest puts the agent unless told
// otherwise.
const DefaultNamespace = "gatehouse-system"

//go:embed manifest.yaml.tmpl
var manifestTemplate string

var manifestTmpl = template.Must(template.New("manifest").Funcs(template.FuncMap{
	"indent": func(n int, s string) string {
		pad := strings.Repeat(" ", n)
		return pad + strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n"+pad)
	},
}).Parse(manifestTemplate))

// Params fills in a cluster's bootstrap manifest.
type Params struct {
	Cluster    string
	Namespace  string
	GatewayURL string
	GatewayCA  string // PEM
	Token      string
	Expires    time.Time
	Image      string
	// Replicas of the agent Deployment; 1 normally, 0 when the agent runs
	// outside the cluster (gatehouse dev).
	Replicas int
}

// Manifest renders the bootstrap manifest: namespace, the agent's service
// account and least-privilege RBAC, the bootstrap Secret and the agent
// Deployment.
func Manifest(p Params) ([]byte, error) {
	if errs := validation.IsDNS1123Label(p.Namespace); len(errs) > 0 {
		return nil, errors.New("bootstrap: bad namespace: " + strings.Join(errs, "; "))
	}
	if p.Cluster == "" || p.GatewayURL == "" || p.GatewayCA == "" || p.Token == "" || p.Image == "" {
		return nil, errors.New("bootstrap: manifest needs cluster, gateway URL and CA, token and image")
	}
	var b bytes.Buffer
	if err := manifestTmpl.Execute(&b, p); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}
