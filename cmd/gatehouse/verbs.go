package main

import (
	"context"
	"fmt"
	"io"
	"net/url"
	"slices"
	"strings"

	"github.com/gatehouse-dev/gatehouse/control/api"
)

// kind describes a resource of the generic verbs get, create and delete.
type kind struct {
	names  []string // singular first
	path   string
	header string
	row    func(v map[string]any) string
	// key is the field that names an object in its path (delete).
	key string
}

// str returns field k of v for a table cell (see cell).
func str(v map[string]any, k string) string { return cell(rawStr(v, k)) }

func rawStr(v map[string]any, k string) string {
	switch x := v[k].(type) {
	case string:
		return x
	case nil:
		return ""
	case []any:
		parts := make([]string, len(x))
		for i, p := range x {
			parts[i] = fmt.Sprint(p)
		}
		return strings.Join(parts, ",")
	case map[string]any:
		return fmt.Sprintf("%s:%s", x["kind"], x["name"])
	default:
		return fmt.Sprint(x)
	}
}

var kinds = []kind{
	{names: []string{"project", "projects"}, path: "/api/v1/projects", header: "NAME\tDESCRIPTION", key: "name",
		row: func(v map[string]any) string { return str(v, "name") + "\t" + str(v, "description") }},
	{names: []string{"user", "users"}, path: "/api/v1/users", header: "ID\tEMAIL\tLINKED\tLAST LOGIN", key: "id",
		row: func(v map[string]any) string {
			return str(v, "id") + "\t" + str(v, "email") + "\t" + str(v, "linked") + "\t" + str(v, "lastLogin")
		}},
	{names: []string{"group", "groups"}, path: "/api/v1/groups", header: "NAME\tMEMBERS\tDESCRIPTION", key: "name",
		row: func(v map[string]any) string {
			return str(v, "name") + "\t" + str(v, "members") + "\t" + str(v, "description")
		}},
	{names: []string{"rolebinding", "rolebindings"}, path: "/api/v1/rolebindings", header: "ID\tSUBJECT\tROLE\tPROJECT\tNAMESPACE\tEXPIRES", key: "id",
		row: func(v map[string]any) string {
			return str(v, "id") + "\t" + str(v, "subject") + "\t" + str(v, "role") + "\t" + str(v, "project") + "\t" + str(v, "namespace") + "\t" + str(v, "expires")
		}},
	{names: []string{"role", "roles"}, path: "/api/v1/roles", header: "NAME\tSCOPE\tKUBERNETES", key: "name",
		row: func(v map[string]any) string { return str(v, "name") + "\t" + str(v, "scope") + "\t" + str(v, "kube") }},
	{names: []string{"token", "tokens"}, path: "/api/v1/tokens", header: "ID\tNAME\tROLES\tEXPIRES\tLAST USED\tREVOKED", key: "id",
		row: func(v map[string]any) string {
			return str(v, "id") + "\t" + str(v, "name") + "\t" + str(v, "roles") + "\t" + str(v, "expires") + "\t" + str(v, "lastUsed") + "\t" + str(v, "revoked")
		}},
}

func lookupKind(name string) (kind, error) {
	for _, k := range kinds {
		if slices.Contains(k.names, strings.ToLower(name)) {
			return k, nil
		}
	}
	var all []string
	for _, k := range kinds {
		all = append(all, k.names[1])
	}
	return kind{}, fmt.Errorf("unknown kind %q (one of %s; clusters: gatehouse cluster)", name, strings.Join(all, ", "))
}

// runGet lists a kind: gatehouse get KIND [-o table|json|yaml].
func runGet(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	pos, rest := leadingArgs(args)
	fs := newFlags("gatehouse get", stderr)
	var cf clientFlags
	cf.register(fs, "table")
	if ok, err := parseFlags(fs, rest, stderr); !ok {
		return err
	}
	if len(pos) != 1 {
		fmt.Fprintln(stderr, "Usage: gatehouse get KIND [flags]")
		return errUsage
	}
	k, err := lookupKind(pos[0])
	if err != nil {
		return err
	}
	c, err := cf.client()
	if err != nil {
		return err
	}
	defer c.Close()
	var items []map[string]any
	if err := c.List(ctx, k.path, &items); err != nil {
		return err
	}
	return cf.print(stdout, items, k.header, func(w io.Writer) {
		for _, it := range items {
			fmt.Fprintln(w, k.row(it))
		}
	})
}

// runCreate creates a project, user, group or token by name:
// gatehouse create project NAME | user EMAIL | group NAME | token NAME --ttl 720h [--roles R,...].
func runCreate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	pos, rest := leadingArgs(args)
	fs := newFlags("gatehouse create", stderr)
	description := fs.String("description", "", "description (project, group)")
	ttl := fs.String("ttl", "720h", "lifetime (token)")
	roles := fs.String("roles", "", "comma-separated roles the token is limited to (token)")
	passwordStdin := fs.Bool("password-stdin", false, "read a first password from standard input: the person becomes a local account (user)")
	inviteUser := fs.Bool("invite", false, "make the person a local account and print an invitation with which they set their own first password (user)")
	var cf clientFlags
	cf.register(fs, "table")
	if ok, err := parseFlags(fs, rest, stderr); !ok {
		return err
	}
	if len(pos) != 2 {
		fmt.Fprintln(stderr, "Usage: gatehouse create project|user|group|token NAME [flags]  (clusters: gatehouse cluster create; bindings: gatehouse apply)")
		return errUsage
	}
	k, err := lookupKind(pos[0])
	if err != nil {
		return err
	}
	var body any
	switch k.names[0] {
	case "project":
		body = api.Project{Name: pos[1], Description: *description}
	case "user":
		u := api.User{Email: pos[1]}
		if *passwordStdin {
			pw, err := readLine()
			if err != nil {
				return err
			}
			u.Password = pw
		}
		body = u
	case "group":
		body = api.Group{Name: pos[1], Description: *description}
	case "token":
		t := api.Token{Name: pos[1], TTL: *ttl}
		if *roles != "" {
			t.Roles = strings.Split(*roles, ",")
		}
		body = t
	default:
		return fmt.Errorf("gatehouse create does not make %s", k.names[1])
	}
	c, err := cf.client()
	if err != nil {
		return err
	}
	defer c.Close()
	var out map[string]any
	if err := c.Do(ctx, "POST", k.path, body, &out); err != nil {
		return err
	}
	if *inviteUser && k.names[0] == "user" {
		return invite(ctx, c, rawStr(out, "id"), pos[1], "", stdout, stderr)
	}
	if s := rawStr(out, "secret"); s != "" {
		fmt.Fprintln(stderr, "the token's secret is shown once; keep it now:")
		fmt.Fprintln(stdout, s)
		return nil
	}
	return cf.print(stdout, out, k.header, func(w io.Writer) { fmt.Fprintln(w, k.row(out)) })
}

// runDelete deletes by name or id: gatehouse delete KIND NAME.
func runDelete(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	pos, rest := leadingArgs(args)
	fs := newFlags("gatehouse delete", stderr)
	var cf clientFlags
	cf.register(fs, "table")
	if ok, err := parseFlags(fs, rest, stderr); !ok {
		return err
	}
	if len(pos) != 2 {
		fmt.Fprintln(stderr, "Usage: gatehouse delete KIND NAME")
		return errUsage
	}
	k, err := lookupKind(pos[0])
	if err != nil {
		return err
	}
	if k.names[0] == "role" {
		return fmt.Errorf("built-in roles cannot be deleted")
	}
	c, err := cf.client()
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.Do(ctx, "DELETE", k.path+"/"+url.PathEscape(pos[1]), nil, nil); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s %q deleted\n", k.names[0], pos[1])
	return nil
}

// runCompletion prints a shell completion script.
func runCompletion(_ context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) != 1 || (args[0] != "bash" && args[0] != "zsh") {
		fmt.Fprintln(stderr, "Usage: gatehouse completion bash|zsh   (then: source <(gatehouse completion bash))")
		return errUsage
	}
	var cmds, ks []string
	for _, c := range commands() {
		cmds = append(cmds, c.name)
	}
	for _, k := range kinds {
		ks = append(ks, k.names[1])
	}
	script := fmt.Sprintf(`_gatehouse() {
  local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[1]}
  if [ "$COMP_CWORD" -eq 1 ]; then COMPREPLY=($(compgen -W %q -- "$cur")); return; fi
  case "$prev" in
    get|create|delete) [ "$COMP_CWORD" -eq 2 ] && COMPREPLY=($(compgen -W %q -- "$cur")) ;;
    cluster) [ "$COMP_CWORD" -eq 2 ] && COMPREPLY=($(compgen -W "create list get delete bootstrap" -- "$cur")) ;;
    completion) COMPREPLY=($(compgen -W "bash zsh" -- "$cur")) ;;
  esac
}
`, strings.Join(cmds, " "), strings.Join(ks, " "))
	if args[0] == "zsh" {
		script = "autoload -U +X bashcompinit && bashcompinit\n" + script
	}
	_, err := io.WriteString(stdout, script+"complete -F _gatehouse gatehouse\n")
	return err
}
