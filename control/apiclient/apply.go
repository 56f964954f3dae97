package apiclient

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"

	"sigs.k8s.io/yaml"

	"github.com/gatehouse-dev/gatehouse/control/apitypes"
)

// Document is one object of a `gatehouse apply` file: a kind and that
// kind's API fields.
type Document struct {
	Kind   string
	Source string // "FILE#N", for errors
	obj    any
}

// Kinds that apply takes, in the order they are applied (what a binding
// names exists before it).
var applyOrder = []string{"Project", "User", "Group", "Cluster", "RoleBinding"}

// ParseDocuments reads YAML documents separated by "---". Each has a kind
// and the fields of that kind; an unknown kind or field is an error naming
// the document and the field. Nothing is applied when any is invalid.
func ParseDocuments(r io.Reader, source string) ([]Document, error) {
	raw, err := io.ReadAll(r)
	if err != nil {
		return nil, err
	}
	var docs []Document
	for i, part := range splitYAML(raw) {
		src := fmt.Sprintf("%s#%d", source, i+1)
		js, err := yaml.YAMLToJSON(part)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", src, err)
		}
		if string(js) == "null" {
			continue
		}
		var head struct {
			Kind string `json:"kind"`
		}
		if err := json.Unmarshal(js, &head); err != nil {
			return nil, fmt.Errorf("%s: %w", src, err)
		}
		var obj any
		switch head.Kind {
		case "Project":
			obj = &apitypes.Project{}
		case "Cluster":
			obj = &apitypes.Cluster{}
		case "User":
			obj = &apitypes.User{}
		case "Group":
			obj = &apitypes.Group{}
		case "RoleBinding":
			obj = &apitypes.RoleBinding{}
		case "":
			return nil, fmt.Errorf("%s: no kind (one of %s)", src, strings.Join(applyOrder, ", "))
		default:
			return nil, fmt.Errorf("%s: unknown kind %q (want one of %s)", src, head.Kind, strings.Join(applyOrder, ", "))
		}
		// kind is the document's own field, not the object's.
		var m map[string]json.RawMessage
		if err := json.Unmarshal(js, &m); err != nil {
			return nil, fmt.Errorf("%s: %w", src, err)
		}
		delete(m, "kind")
		body, _ := json.Marshal(m)
		dec := json.NewDecoder(bytes.NewReader(body))
		dec.DisallowUnknownFields()
		if err := dec.Decode(obj); err != nil {
			return nil, fmt.Errorf("%s (%s): %w", src, head.Kind, err)
		}
		docs = append(docs, Document{Kind: head.Kind, Source: src, obj: obj})
	}
	slices.SortStableFunc(docs, func(a, b Document) int { return slices.Index(applyOrder, a.Kind) - slices.Index(applyOrder, b.Kind) })
	return docs, nil
}

func splitYAML(b []byte) [][]byte {
	var out [][]byte
	var cur bytes.Buffer
	for _, line := range bytes.SplitAfter(b, []byte("\n")) {
		if bytes.Equal(bytes.TrimRight(line, "\r\n"), []byte("---")) {
			out = append(out, bytes.Clone(cur.Bytes()))
			cur.Reset()
			continue
		}
		cur.Write(line)
	}
	return append(out, cur.Bytes())
}

// Result says what apply did with one document.
type Result struct {
	Object string // "project/web"
	Action string // created, updated, unchanged
	// Note carries what the person should know (a new cluster's
	// bootstrap).
	Note string
}

// Apply makes the server hold what docs say: it creates what is missing
// and updates what differs where the API allows it, so that applying the
// same documents again changes nothing. It stops at the first error, with
// the results so far.
func (c *Client) Apply(ctx context.Context, docs []Document) ([]Result, error) {
	var out []Result
	for _, d := range docs {
		r, err := c.apply(ctx, d)
		if err != nil {
			return out, fmt.Errorf("%s: %w", d.Source, err)
		}
		out = append(out, r)
	}
	return out, nil
}

func notFound(err error) bool {
	var p *Problem
	return errors.As(err, &p) && p.Status == http.StatusNotFound
}

func (c *Client) apply(ctx context.Context, d Document) (Result, error) {
	switch o := d.obj.(type) {
	case *apitypes.Project:
		res := Result{Object: "project/" + o.Name}
		var cur apitypes.Project
		err := c.call(ctx, http.MethodGet, "/api/v1/projects/"+url.PathEscape(o.Name), nil, &cur)
		switch {
		case notFound(err):
			res.Action = "created"
			return res, c.call(ctx, http.MethodPost, "/api/v1/projects", o, nil)
		case err != nil:
			return res, err
		case cur.Description == o.Description:
			res.Action = "unchanged"
			return res, nil
		}
		res.Action = "updated"
		upd := apitypes.Project{Name: o.Name, Description: o.Description, Version: cur.Version}
		return res, c.call(ctx, http.MethodPut, "/api/v1/projects/"+url.PathEscape(o.Name), upd, nil)
	case *apitypes.Cluster:
		res := Result{Object: "cluster/" + o.Name}
		cur, err := c.GetCluster(ctx, o.Name)
		switch {
		case notFound(err):
			created, err := c.CreateCluster(ctx, *o)
			if err != nil {
				return res, err
			}
			res.Action = "created"
			res.Note = fmt.Sprintf("bootstrap token valid until %s; get the manifest with: gatehouse cluster bootstrap %s", created.Bootstrap.Expires.Format("2006-01-02 15:04 MST"), o.Name)
			return res, nil
		case err != nil:
			return res, err
		case cur.Description == o.Description && slices.Equal(cur.SessionRecording, o.SessionRecording):
			res.Action = "unchanged"
			return res, nil
		}
		res.Action = "updated"
		_, err = c.UpdateCluster(ctx, apitypes.Cluster{Name: o.Name, Project: cur.Project, Description: o.Description,
			SessionRecording: o.SessionRecording, Version: cur.Version})
		return res, err
	case *apitypes.User:
		res := Result{Object: "user/" + o.Email}
		var l apitypes.List[apitypes.User]
		if err := c.listAll(ctx, "/api/v1/users", &l); err != nil {
			return res, err
		}
		if slices.ContainsFunc(l.Items, func(u apitypes.User) bool { return strings.EqualFold(u.Email, o.Email) }) {
			res.Action = "unchanged"
			return res, nil
		}
		res.Action = "created"
		return res, c.call(ctx, http.MethodPost, "/api/v1/users", o, nil)
	case *apitypes.Group:
		res := Result{Object: "group/" + o.Name}
		var l apitypes.List[apitypes.Group]
		if err := c.listAll(ctx, "/api/v1/groups", &l); err != nil {
			return res, err
		}
		if slices.ContainsFunc(l.Items, func(g apitypes.Group) bool { return g.Name == o.Name }) {
			res.Action = "unchanged"
			return res, nil
		}
		res.Action = "created"
		return res, c.call(ctx, http.MethodPost, "/api/v1/groups", o, nil)
	case *apitypes.RoleBinding:
		res := Result{Object: fmt.Sprintf("rolebinding/%s:%s:%s@%s/%s", o.Subject.Kind, o.Subject.Name, o.Role, o.Project, o.Namespace)}
		var l apitypes.List[apitypes.RoleBinding]
		if err := c.listAll(ctx, "/api/v1/rolebindings", &l); err != nil {
			return res, err
		}
		same := func(b apitypes.RoleBinding) bool {
			return b.Subject.Kind == o.Subject.Kind && strings.EqualFold(b.Subject.Name, o.Subject.Name) && b.Role == o.Role &&
				b.Project == o.Project && b.Namespace == o.Namespace && b.Expires.Equal(o.Expires)
		}
		if slices.ContainsFunc(l.Items, same) {
			res.Action = "unchanged"
			return res, nil
		}
		res.Action = "created"
		return res, c.call(ctx, http.MethodPost, "/api/v1/rolebindings", o, nil)
	}
	return Result{}, fmt.Errorf("unknown document kind %q", d.Kind)
}

// listAll reads every page of a list into l (a *apitypes.List[T]).
func (c *Client) listAll(ctx context.Context, path string, l any) error {
	type page struct {
		Items    []json.RawMessage `json:"items"`
		Continue string            `json:"continue"`
	}
	var all []json.RawMessage
	cont := ""
	for {
		var p page
		q := path
		if cont != "" {
			q += "?continue=" + url.QueryEscape(cont)
		}
		if err := c.call(ctx, http.MethodGet, q, nil, &p); err != nil {
			return err
		}
		all = append(all, p.Items...)
		if cont = p.Continue; cont == "" {
			break
		}
	}
	b, _ := json.Marshal(map[string]any{"items": all})
	return json.Unmarshal(b, l)
}
