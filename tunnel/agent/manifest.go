package agent

import (
	"bytes"
	_ "embed"
	"errors"
	"strings"
	"text/template"
	"time"

	"k8s.io/apimachinery/pkg/util/validation"
)

//go:embed manifest.yaml.tmpl
var manifestTemplate string

var manifestTmpl = template.Must(template.New("manifest").Funcs(template.FuncMap{
	"indent": func(n int, s string) string {
		pad := strings.Repeat(" ", n)
		return pad + strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n"+pad)
	},
}).Parse(manifestTemplate))

// ManifestParams fills in a cluster's bootstrap manifest.
type ManifestParams struct {
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
func Manifest(p ManifestParams) ([]byte, error) {
	if errs := validation.IsDNS1123Label(p.Namespace); len(errs) > 0 {
		return nil, errors.New("agent: bad namespace: " + strings.Join(errs, "; "))
	}
	if p.Cluster == "" || p.GatewayURL == "" || p.GatewayCA == "" || p.Token == "" || p.Image == "" {
		return nil, errors.New("agent: manifest needs cluster, gateway URL and CA, token and image")
	}
	var b bytes.Buffer
	if err := manifestTmpl.Execute(&b, p); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}
