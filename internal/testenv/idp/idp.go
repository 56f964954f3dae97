// Package idp runs a real OpenID Connect provider for tests: zitadel/oidc's
// OP library with its example storage and login page, on loopback, with
// people whose groups a test can change between logins (the claim that
// Gatehouse maps to its own groups). It is not a hand-written fake: the
// discovery document, authorization code flow with PKCE, token, refresh
// and userinfo endpoints, signing and key set are the library's.
package idp

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/zitadel/oidc/v3/example/server/exampleop"
	"github.com/zitadel/oidc/v3/example/server/storage"
	"github.com/zitadel/oidc/v3/pkg/oidc"
	"github.com/zitadel/oidc/v3/pkg/op"
	"golang.org/x/text/language"
)

// GroupsScope asks for the groups claim (in userinfo and ID tokens).
const GroupsScope = "groups"

// Provider is a running OpenID provider. Add people and clients before
// anyone signs in; groups may change at any time.
type Provider struct {
	// Issuer is the provider's URL (http://127.0.0.1:PORT).
	Issuer string

	srv   *http.Server
	ln    net.Listener
	users *users
	store *groupStorage
	done  chan struct{}
	once  sync.Once
}

// Start listens on a free loopback port and serves the provider until
// Close.
func Start() (*Provider, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &Provider{Issuer: "http://" + ln.Addr().String(), ln: ln, users: &users{m: map[string]*person{}}, done: make(chan struct{})}
	p.store = &groupStorage{Storage: storage.NewStorageWithClients(p.users, map[string]*storage.Client{}), users: p.users, clients: map[string]client{}}
	// A nil logger keeps the example from replacing the process's default.
	router := exampleop.SetupServer(p.Issuer, p.store, nil, false)
	p.srv = &http.Server{Handler: router, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		defer close(p.done)
		p.srv.Serve(ln)
	}()
	return p, nil
}

// AddClient registers a confidential web client (client_secret_basic,
// authorization code and refresh token grants).
func (p *Provider) AddClient(id, secret string, redirectURIs ...string) {
	p.store.mu.Lock()
	defer p.store.mu.Unlock()
	p.store.clients[id] = client{Client: storage.WebClient(id, secret, redirectURIs...), secret: secret}
}

// AddPerson adds someone who signs in with username and password.
func (p *Provider) AddPerson(username, password, email, name string, groups ...string) {
	first, last, _ := strings.Cut(name, " ")
	p.users.mu.Lock()
	defer p.users.mu.Unlock()
	p.users.m[username] = &person{
		User: storage.User{ID: "sub-" + username, Username: username, Password: password, FirstName: first, LastName: last,
			Email: email, EmailVerified: true, PreferredLanguage: language.English},
		groups: slices.Clone(groups),
	}
}

// SetGroups replaces a person's groups; the next token or userinfo answer
// carries them.
func (p *Provider) SetGroups(username string, groups ...string) error {
	p.users.mu.Lock()
	defer p.users.mu.Unlock()
	u, ok := p.users.m[username]
	if !ok {
		return fmt.Errorf("idp: no person %q", username)
	}
	u.groups = slices.Clone(groups)
	return nil
}

// Subject returns the "sub" claim of a person.
func Subject(username string) string { return "sub-" + username }

// Close stops the server. It is idempotent.
func (p *Provider) Close() error {
	p.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		p.srv.Shutdown(ctx)
		<-p.done
	})
	return nil
}

var idField = regexp.MustCompile(`name="id" value="([^"]+)"`)

// SignIn plays the person's browser: it opens authURL (what a relying party
// sent them to), follows redirects, fills in the provider's login form
// and follows the redirects after it to wherever the relying party sends
// the browser last, whose response it returns (body read and closed).
func (p *Provider) SignIn(ctx context.Context, authURL, username, password string) (*http.Response, []byte, error) {
	jar, _ := cookiejar.New(nil)
	c := &http.Client{Jar: jar, Timeout: 30 * time.Second}
	get := func(u string) (*http.Response, []byte, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
		if err != nil {
			return nil, nil, err
		}
		return do(c, req)
	}
	resp, body, err := get(authURL)
	if err != nil {
		return nil, nil, err
	}
	if !strings.HasPrefix(resp.Request.URL.String(), p.Issuer+"/login/username") {
		return resp, body, fmt.Errorf("idp: expected the login page, landed on %s (%d): %s", resp.Request.URL, resp.StatusCode, body)
	}
	m := idField.FindSubmatch(body)
	if m == nil {
		return resp, body, errors.New("idp: login page without an auth request id")
	}
	form := url.Values{"id": {string(m[1])}, "username": {username}, "password": {password}}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.Issuer+"/login/username", strings.NewReader(form.Encode()))
	if err != nil {
		return nil, nil, err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, body, err = do(c, req)
	if err == nil && strings.HasPrefix(resp.Request.URL.String(), p.Issuer+"/login/username") {
		return resp, body, fmt.Errorf("idp: sign-in refused for %s", username)
	}
	return resp, body, err
}

func do(c *http.Client, req *http.Request) (*http.Response, []byte, error) {
	resp, err := c.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp, body, err
}

type person struct {
	storage.User
	groups []string
}

// users is the provider's directory. mu guards m and each person's groups.
type users struct {
	mu sync.Mutex
	m  map[string]*person
}

var _ storage.UserStore = (*users)(nil)

func (u *users) GetUserByID(id string) *storage.User {
	u.mu.Lock()
	defer u.mu.Unlock()
	for _, p := range u.m {
		if p.ID == id {
			c := p.User
			return &c
		}
	}
	return nil
}

func (u *users) GetUserByUsername(name string) *storage.User {
	u.mu.Lock()
	defer u.mu.Unlock()
	if p, ok := u.m[name]; ok {
		c := p.User
		return &c
	}
	return nil
}

// ExampleClientID names the example's JWT-profile service user; unused.
func (u *users) ExampleClientID() string { return "service" }

func (u *users) groups(id string) []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	for _, p := range u.m {
		if p.ID == id {
			return slices.Clone(p.groups)
		}
	}
	return nil
}

// groupStorage is the example storage with this package's clients (added
// after start, so kept under a lock the example's map lacks) and with the
// groups claim added wherever the example sets userinfo claims.
type groupStorage struct {
	*storage.Storage
	users *users

	mu      sync.Mutex // guards clients
	clients map[string]client
}

// client keeps the secret beside the example's Client, which hides it.
type client struct {
	*storage.Client
	secret string
}

func (s *groupStorage) GetClientByClientID(_ context.Context, id string) (op.Client, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.clients[id]
	if !ok {
		return nil, fmt.Errorf("client %q not found", id)
	}
	return storage.RedirectGlobsClient(c.Client), nil
}

func (s *groupStorage) AuthorizeClientIDSecret(_ context.Context, id, secret string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.clients[id]
	if !ok {
		return fmt.Errorf("client %q not found", id)
	}
	if subtle.ConstantTimeCompare([]byte(c.secret), []byte(secret)) != 1 {
		return errors.New("invalid client secret")
	}
	return nil
}

func (s *groupStorage) SetUserinfoFromRequest(ctx context.Context, ui *oidc.UserInfo, token op.IDTokenRequest, scopes []string) error {
	if err := s.Storage.SetUserinfoFromRequest(ctx, ui, token, scopes); err != nil {
		return err
	}
	s.addGroups(ui, token.GetSubject(), scopes)
	return nil
}

func (s *groupStorage) SetUserinfoFromToken(ctx context.Context, ui *oidc.UserInfo, tokenID, subject, origin string) error {
	if err := s.Storage.SetUserinfoFromToken(ctx, ui, tokenID, subject, origin); err != nil {
		return err
	}
	s.addGroups(ui, ui.Subject, []string{GroupsScope})
	return nil
}

func (s *groupStorage) addGroups(ui *oidc.UserInfo, subject string, scopes []string) {
	if subject != "" && slices.Contains(scopes, GroupsScope) {
		ui.AppendClaims("groups", s.users.groups(subject))
	}
}
