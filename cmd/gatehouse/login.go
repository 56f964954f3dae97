package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"time"

	"golang.org/x/term"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clientauthv1 "k8s.io/client-go/pkg/apis/clientauthentication/v1"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/gatehouse-dev/gatehouse/control/apiclient"
	"github.com/gatehouse-dev/gatehouse/control/identity"
)

// newFlags returns a flag set that prints to stderr.
func newFlags(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

func runLogin(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("gatehouse login", stderr)
	server := fs.String("server", os.Getenv("GATEHOUSE_SERVER"), "gateway URL, https://HOST:PORT (env GATEHOUSE_SERVER)")
	identityURL := fs.String("identity-url", os.Getenv("GATEHOUSE_IDENTITY_URL"), "Kratos public URL (env GATEHOUSE_IDENTITY_URL)")
	caFile := fs.String("ca-file", os.Getenv("GATEHOUSE_CA_FILE"), "CA certificate that verifies the gateway (env GATEHOUSE_CA_FILE)")
	email := fs.String("email", "", "your email (password login)")
	passwordStdin := fs.Bool("password-stdin", false, "read the password from standard input (for scripts)")
	invitation := fs.String("invitation", "", "an invitation from an admin: choose the first password of your local account")
	sso := fs.String("sso", "", "sign in through this SSO provider in the browser instead of with a password")
	callback := fs.String("callback-addr", identity.DefaultSSOCallbackAddr, "loopback address where the browser returns after SSO (Kratos must allow http://ADDR/callback)")
	noBrowser := fs.Bool("no-browser", false, "print the SSO sign-in URL instead of opening a browser")
	if ok, err := parseFlags(fs, args, stderr); !ok {
		return err
	}
	ways := 0
	for _, set := range []bool{*email != "", *sso != "", *invitation != ""} {
		if set {
			ways++
		}
	}
	if *server == "" || *identityURL == "" || ways != 1 {
		fmt.Fprintln(stderr, "gatehouse login: --server, --identity-url and one of --email, --invitation or --sso are required")
		return errUsage
	}
	var ca []byte
	if *caFile != "" {
		var err error
		if ca, err = os.ReadFile(*caFile); err != nil {
			return fmt.Errorf("--ca-file: %w", err)
		}
	}
	icfg := identity.DefaultConfig()
	icfg.PublicURL = *identityURL
	kr, err := identity.New(icfg)
	if err != nil {
		return err
	}
	var token string
	switch {
	case *sso != "":
		token, err = ssoLogin(ctx, kr, *sso, *callback, !*noBrowser, stderr)
	case *invitation != "":
		var password string
		if password, err = readPassword("Choose a password: ", *passwordStdin, stderr); err != nil {
			return err
		}
		if !*passwordStdin {
			again, err := readPassword("The same again: ", false, stderr)
			if err != nil {
				return err
			}
			if again != password {
				return errors.New("the two passwords differ")
			}
		}
		token, err = kr.AcceptInvitation(ctx, *invitation, password)
	default:
		var password string
		if password, err = readPassword("Password: ", *passwordStdin, stderr); err != nil {
			return err
		}
		token, err = kr.Login(ctx, *email, password)
	}
	if err != nil {
		return err
	}
	p := &apiclient.Profile{Server: *server, IdentityURL: *identityURL, CA: string(ca), Email: *email, SessionToken: token}
	c, err := p.Client()
	if err != nil {
		return err
	}
	defer c.Close()
	who, err := c.Login(ctx)
	if err != nil {
		kr.Logout(ctx, token)
		return err
	}
	p.Email = who.Email
	if who.TrustBundle != "" && p.CA != "" && p.CA != who.TrustBundle {
		// A rotation of the gateway's root: the bundle holds the new root
		// (and the old, during the overlap); the old alone stops working
		// when it retires.
		p.CA = who.TrustBundle
		fmt.Fprintln(stderr, "the gateway's trust bundle changed (a rotation of its root): this profile now keeps it; run gatehouse kubeconfig again for each cluster")
	}
	dir, err := apiclient.Dir()
	if err != nil {
		return err
	}
	if err := apiclient.Remove(dir); err != nil { // a new login drops the old credential
		return err
	}
	if err := p.Save(dir); err != nil {
		return err
	}
	if who.Warning != "" {
		fmt.Fprintln(stderr, "warning:", who.Warning)
	}
	fmt.Fprintf(stdout, "logged in as %s (organization %s)\n", cell(who.Email), cell(who.Org))
	return nil
}

// ssoWait bounds how long the CLI waits for the person to sign in.
const ssoWait = 5 * time.Minute

// ssoLogin runs Kratos's native SSO flow with a loopback callback: the
// person signs in at the provider in their browser, which Kratos then
// sends to http://ADDR/callback?code=...; that code and the one this
// process kept make the session token.
func ssoLogin(ctx context.Context, kr *identity.Kratos, provider, addr string, openBrowser bool, stderr io.Writer) (string, error) {
	host, _, err := net.SplitHostPort(addr)
	if ip := net.ParseIP(host); err != nil || ip == nil || !ip.IsLoopback() {
		return "", fmt.Errorf("--callback-addr %q must be a loopback IP and port", addr)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", fmt.Errorf("SSO callback: %w", err)
	}
	// The browser comes back with ?code= after a sign-in, or with only
	// ?flow= when Kratos ended the flow otherwise (refused, or the account
	// exists another way); either ends the wait, once.
	type answer struct{ code, flow string }
	answers := make(chan answer, 1)
	srv := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a := answer{code: r.URL.Query().Get("code"), flow: r.URL.Query().Get("flow")}
		if r.URL.Path != "/callback" || (a.code == "" && a.flow == "") {
			http.Error(w, "Gatehouse: this is not a sign-in answer.", http.StatusBadRequest)
			return
		}
		select {
		case answers <- a:
			if a.code != "" {
				fmt.Fprintln(w, "Signed in to Gatehouse. You can close this window and return to the terminal.")
			} else {
				fmt.Fprintln(w, "Gatehouse: the sign-in did not complete; the terminal says why.")
			}
		default:
			http.Error(w, "Gatehouse: this sign-in has already completed.", http.StatusConflict)
		}
	})}
	served := make(chan struct{})
	go func() {
		defer close(served)
		srv.Serve(ln)
	}()
	defer func() {
		srv.Close()
		<-served
	}()
	flow, err := kr.StartSSO(ctx, provider, "http://"+addr+"/callback")
	if err != nil {
		return "", err
	}
	fmt.Fprintf(stderr, "Sign in through %s in your browser:\n  %s\nWaiting for the browser to return (Ctrl-C stops)...\n", provider, flow.BrowserURL)
	if openBrowser {
		if cmd := browserCommand(flow.BrowserURL); cmd != nil && cmd.Start() == nil {
			defer cmd.Wait()
		}
	}
	wait, cancel := context.WithTimeout(ctx, ssoWait)
	defer cancel()
	select {
	case a := <-answers:
		if a.code == "" {
			return "", fmt.Errorf("the sign-in through %s did not complete: %s", provider, kr.FlowMessages(ctx, a.flow))
		}
		return kr.FinishSSO(ctx, flow, a.code)
	case <-wait.Done():
		return "", fmt.Errorf("no sign-in within %s: %w", ssoWait, wait.Err())
	}
}

// browserCommand opens a URL in the desktop's browser, where there is one.
func browserCommand(url string) *exec.Cmd {
	switch runtime.GOOS {
	case "darwin":
		return exec.Command("open", url)
	case "windows":
		return exec.Command("rundll32", "url.dll,FileProtocolHandler", url)
	default:
		if _, err := exec.LookPath("xdg-open"); err != nil {
			return nil
		}
		return exec.Command("xdg-open", url)
	}
}

func profile() (*apiclient.Profile, string, error) {
	dir, err := apiclient.Dir()
	if err != nil {
		return nil, "", err
	}
	p, err := apiclient.LoadProfile(dir)
	return p, dir, err
}

// sessionClient returns an API client with the login profile's session.
func sessionClient() (*apiclient.Client, error) {
	p, _, err := profile()
	if err != nil {
		return nil, err
	}
	return p.Client()
}

func runLogout(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("gatehouse logout", stderr)
	if ok, err := parseFlags(fs, args, stderr); !ok {
		return err
	}
	p, dir, err := profile()
	if err != nil {
		return err
	}
	if c, err := p.Client(); err == nil {
		if err := c.Logout(ctx); err != nil {
			fmt.Fprintln(stderr, "gatehouse logout: the server did not end the session:", err)
		}
		c.Close()
	}
	if err := apiclient.Remove(dir); err != nil {
		return err
	}
	fmt.Fprintln(stdout, "logged out")
	return nil
}

func runWhoami(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("gatehouse whoami", stderr)
	output := fs.String("o", "table", "output: table, json or yaml")
	if ok, err := parseFlags(fs, args, stderr); !ok {
		return err
	}
	c, err := sessionClient()
	if err != nil {
		return err
	}
	defer c.Close()
	who, err := c.Whoami(ctx)
	if err != nil {
		return err
	}
	cf := clientFlags{output: *output}
	return cf.print(stdout, who, "ID\tEMAIL\tORG", func(w io.Writer) { fmt.Fprintf(w, "%s\t%s\t%s\n", cell(who.ID), cell(who.Email), cell(who.Org)) })
}

// runKubeconfig writes a kubeconfig whose user is this binary's credential
// plugin: kubectl asks it for a short-lived certificate when it needs one.
func runKubeconfig(_ context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("gatehouse kubeconfig", stderr)
	cluster := fs.String("cluster", "", "cluster name")
	file := fs.String("file", "-", "where to write the kubeconfig; - for standard output")
	domain := fs.String("cluster-domain", "", "address the cluster as https://CLUSTER.DOMAIN (the gateway's --cluster-domain) instead of https://GATEWAY/k8s/CLUSTER: for clients that drop a server's path (kubectl proxy)")
	if ok, err := parseFlags(fs, args, stderr); !ok {
		return err
	}
	if *cluster == "" {
		fmt.Fprintln(stderr, "gatehouse kubeconfig: --cluster is required")
		return errUsage
	}
	p, _, err := profile()
	if err != nil {
		return err
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	name := "gatehouse-" + *cluster
	cfg := clientcmdapi.NewConfig()
	server := strings.TrimSuffix(p.Server, "/") + "/k8s/" + *cluster
	if *domain != "" {
		u, err := url.Parse(p.Server)
		if err != nil {
			return fmt.Errorf("the profile's server %q: %w", p.Server, err)
		}
		host := *cluster + "." + *domain
		if port := u.Port(); port != "" {
			host += ":" + port
		}
		u.Host = host
		u.Path = ""
		server = u.String()
	}
	cfg.Clusters[name] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: []byte(p.CA)}
	cfg.AuthInfos[name] = &clientcmdapi.AuthInfo{Exec: &clientcmdapi.ExecConfig{
		APIVersion: clientauthv1.SchemeGroupVersion.String(), Command: exe, Args: []string{"credential"},
		InteractiveMode: clientcmdapi.NeverExecInteractiveMode,
		InstallHint:     "gatehouse is the Gatehouse CLI; log in with `gatehouse login`",
	}}
	cfg.Contexts[name] = &clientcmdapi.Context{Cluster: name, AuthInfo: name}
	cfg.CurrentContext = name
	if *file == "-" {
		b, err := clientcmd.Write(*cfg)
		if err != nil {
			return err
		}
		_, err = stdout.Write(b)
		return err
	}
	if err := clientcmd.WriteToFile(*cfg, *file); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "wrote %s (context %s)\n", *file, name)
	return nil
}

// runCredential is the exec credential plugin kubectl runs: it prints an
// ExecCredential with a client certificate (cached until near expiry).
func runCredential(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("gatehouse credential", stderr)
	if ok, err := parseFlags(fs, args, stderr); !ok {
		return err
	}
	p, dir, err := profile()
	if err != nil {
		return err
	}
	cred, err := p.Credential(ctx, dir, time.Now())
	if err != nil {
		return fmt.Errorf("credential: %w", err)
	}
	exp := metav1.NewTime(cred.Expires)
	out := clientauthv1.ExecCredential{Status: &clientauthv1.ExecCredentialStatus{
		ClientCertificateData: cred.Certificate, ClientKeyData: cred.Key, ExpirationTimestamp: &exp,
	}}
	out.APIVersion, out.Kind = clientauthv1.SchemeGroupVersion.String(), "ExecCredential"
	return json.NewEncoder(stdout).Encode(out)
}

// runPasswd changes the signed-in person's password (a first password an
// admin set, say).
func runPasswd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("gatehouse passwd", stderr)
	passwordStdin := fs.Bool("password-stdin", false, "read the new password from standard input (for scripts)")
	if ok, err := parseFlags(fs, args, stderr); !ok {
		return err
	}
	p, _, err := profile()
	if err != nil {
		return err
	}
	password, err := readPassword("New password: ", *passwordStdin, stderr)
	if err != nil {
		return err
	}
	icfg := identity.DefaultConfig()
	icfg.PublicURL = p.IdentityURL
	kr, err := identity.New(icfg)
	if err != nil {
		return err
	}
	if err := kr.ChangePassword(ctx, p.SessionToken, password); err != nil {
		return err
	}
	fmt.Fprintln(stdout, "password changed")
	return nil
}

// readPassword reads a password: the first line of standard input for
// scripts, else from the terminal without echo.
func readPassword(prompt string, fromStdin bool, stderr io.Writer) (string, error) {
	if fromStdin {
		return readLine()
	}
	if !term.IsTerminal(int(os.Stdin.Fd())) {
		return "", errors.New("no terminal to ask for the password: use --password-stdin")
	}
	fmt.Fprint(stderr, prompt)
	b, err := term.ReadPassword(int(os.Stdin.Fd()))
	fmt.Fprintln(stderr)
	return string(b), err
}

// readLine reads the first line of standard input.
func readLine() (string, error) {
	line, err := bufio.NewReader(os.Stdin).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return "", err
	}
	return strings.TrimRight(line, "\r\n"), nil
}
