// Package devsetup is `gatehouse dev`: a whole Gatehouse on one machine for
// a newcomer's first contact. It starts (or fronts) a cluster, a gateway node
// with an embedded store and a CA kept in the state directory (so that a
// restart keeps every credential working), registers the cluster by applying the real
// bootstrap manifest, runs the agent with the manifest's least-privilege
// service account, creates an admin and writes their kubeconfig.
package devsetup

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/gatehouse-dev/gatehouse/audit"
	"github.com/gatehouse-dev/gatehouse/audit/pipeline"
	"github.com/gatehouse-dev/gatehouse/audit/ship"
	"github.com/gatehouse-dev/gatehouse/audit/spool"
	"github.com/gatehouse-dev/gatehouse/control/api"
	"github.com/gatehouse-dev/gatehouse/control/ca"
	"github.com/gatehouse-dev/gatehouse/control/identity"
	"github.com/gatehouse-dev/gatehouse/control/store"
	"github.com/gatehouse-dev/gatehouse/deploy/bootstrap"
	"github.com/gatehouse-dev/gatehouse/internal/gateway"
	"github.com/gatehouse-dev/gatehouse/internal/pki"
	"github.com/gatehouse-dev/gatehouse/internal/testenv"
	"github.com/gatehouse-dev/gatehouse/tunnel/agent"
)

// Config configures the dev setup.
type Config struct {
	// StateDir holds everything: the local cluster, the audit log, the
	// manifest and admin.kubeconfig.
	StateDir string
	// Kubeconfig, when set, fronts that existing cluster instead of
	// starting a local one. Its credentials must be able to apply the
	// bootstrap manifest (create a namespace and RBAC).
	Kubeconfig string
	// Addr is the gateway's listen address.
	Addr string
	// Cluster is the id the cluster gets in Gatehouse.
	Cluster string
	// Admin is the email of the admin whose kubeconfig is written.
	Admin string
	// Nodes is the number of kwok nodes in a local cluster.
	Nodes int
	// Out receives the human-readable progress and instructions.
	Out io.Writer
	// Logger receives the components' logs; nil discards them.
	Logger *slog.Logger
	// SSO are OpenID Connect providers people may sign in with (Kratos's
	// OIDC method, configured by SSOProvider.KratosConfig); Gatehouse reads
	// their groups at every login.
	SSO []identity.SSOProvider
	// KratosPort is Kratos's public port on 127.0.0.1; fixed (4433, Kratos's
	// usual one) so that SSO providers' redirect URLs and people's
	// --identity-url survive restarts. 0 picks a free port.
	KratosPort int
	// SSOCallbackAddr is where `gatehouse login --sso` waits for the
	// browser; Kratos allows http://SSOCallbackAddr/callback as a return
	// URL.
	SSOCallbackAddr string
	// Gateways is how many gateway nodes run. One runs in this process on
	// the embedded store. More run as `gatehouse node` processes (Binary)
	// on 127.0.0.2, 127.0.0.3, ..., one gateway cluster on a PostgreSQL
	// made at start, behind a TCP front on Addr; gateways.json lists them.
	Gateways int
	// Binary is the gatehouse binary that runs the gateway processes;
	// empty means this program.
	Binary string
}

// DefaultConfig returns the defaults of `gatehouse dev`.
func DefaultConfig() Config {
	return Config{StateDir: ".gatehouse/dev", Addr: "127.0.0.1:8443", Cluster: "dev", Admin: "admin@gatehouse.local", Nodes: 3, Out: os.Stdout,
		KratosPort: 4433, SSOCallbackAddr: identity.DefaultSSOCallbackAddr, Gateways: 1}
}

// Validate checks the configuration.
func (c Config) Validate() error {
	if c.StateDir == "" {
		return errors.New("dev: StateDir is required")
	}
	if _, _, err := net.SplitHostPort(c.Addr); err != nil {
		return fmt.Errorf("dev: Addr %q: %w", c.Addr, err)
	}
	if c.Cluster == "" || c.Admin == "" {
		return errors.New("dev: Cluster and Admin are required")
	}
	if c.Gateways < 1 || c.Gateways > 9 {
		return fmt.Errorf("dev: Gateways %d: from 1 to 9", c.Gateways)
	}
	if c.Gateways > 1 && len(c.SSO) > 0 {
		return errors.New("dev: SSO providers with more than one gateway are not supported yet")
	}
	if c.KratosPort < 0 || c.KratosPort > 65535 {
		return fmt.Errorf("dev: KratosPort %d is not a port", c.KratosPort)
	}
	for _, p := range c.SSO {
		if err := p.Validate(); err != nil {
			return fmt.Errorf("dev: %w", err)
		}
	}
	if _, _, err := net.SplitHostPort(c.SSOCallbackAddr); len(c.SSO) > 0 && err != nil {
		return fmt.Errorf("dev: SSOCallbackAddr %q: %w", c.SSOCallbackAddr, err)
	}
	return nil
}

// Env is a running dev setup.
type Env struct {
	// AdminKubeconfig works with stock kubectl through the gateway.
	AdminKubeconfig string
	// AdminID is the admin's id in the store: the user of their audit
	// events.
	AdminID string
	// AdminTokenFile holds an API token of the admin's, for the CLI.
	AdminTokenFile string
	// AdminPassword is the admin's Kratos password (also in
	// AdminPasswordFile, mode 0600), for `gatehouse login`.
	AdminPassword, AdminPasswordFile string
	// IdentityURL is Kratos's public URL.
	IdentityURL string
	// CAFile verifies the gateway.
	CAFile string
	// GatewayURL is the gateway's address.
	GatewayURL string

	cfg Config
	log *slog.Logger

	gateways []*Gateway // --gateways N > 1
	closers  []func()   // run in reverse by Close
	// KafkaBrokers are the embedded broker's addresses (EmbeddedKafka),
	// or nil.
	KafkaBrokers []string
	wg           sync.WaitGroup
	errc         chan error // first failure of a background component

	closeOnce sync.Once
}

// Start brings everything up and returns when the admin kubeconfig works.
func Start(ctx context.Context, cfg Config) (_ *Env, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Out == nil {
		cfg.Out = io.Discard
	}
	e := &Env{cfg: cfg, log: cfg.Logger, errc: make(chan error, 4)}
	if e.log == nil {
		e.log = slog.New(slog.DiscardHandler)
	}
	defer func() {
		if err != nil {
			e.Close()
		}
	}()
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, err
	}
	say := func(format string, a ...any) { fmt.Fprintf(cfg.Out, "gatehouse dev: "+format+"\n", a...) }

	// 1. The cluster.
	var kube *rest.Config
	kubeconfig := cfg.Kubeconfig
	if kubeconfig == "" {
		say("starting a local cluster (etcd, kube-apiserver, controllers, kwok with %d nodes)...", cfg.Nodes)
		kcfg := testenv.DefaultKubeConfig()
		kcfg.Dir, kcfg.Nodes, kcfg.Logger = filepath.Join(cfg.StateDir, "cluster"), cfg.Nodes, cfg.Logger
		os.RemoveAll(kcfg.Dir) // a fresh cluster every start
		k, err := testenv.StartKube(ctx, kcfg)
		if err != nil {
			return nil, err
		}
		e.closers = append(e.closers, func() { k.Close() })
		kube, kubeconfig = k.RESTConfig(), k.AdminKubeconfig
		if err := demoWorkload(ctx, kube); err != nil {
			return nil, err
		}
		say("local cluster up at %s (admin kubeconfig %s)", k.URL, k.AdminKubeconfig)
	} else {
		if kube, err = clientcmd.BuildConfigFromFlags("", kubeconfig); err != nil {
			return nil, fmt.Errorf("dev: --kubeconfig: %w", err)
		}
		say("fronting the cluster of %s", kubeconfig)
	}

	// 2. The gateway node. The store, the CA (sealed with a key kept in the
	// state directory) and Kratos persist across restarts, so the previous
	// run's kubeconfigs and sessions keep working.
	fileSink, err := audit.OpenFile(filepath.Join(cfg.StateDir, "audit.jsonl"))
	if err != nil {
		return nil, err
	}
	e.closers = append(e.closers, func() { fileSink.Close() })
	var sink audit.Sink = fileSink
	var pipe *pipeline.Pipeline
	if EmbeddedKafka != nil {
		if pipe, err = e.startKafka(cfg, say); err != nil {
			return nil, err
		}
		if pipe != nil {
			// Kafka first: the file's copy then has the event's id and
			// place in the chain.
			sink = audit.Tee{pipe.Sink, fileSink}
		}
	}
	dbPath := filepath.Join(cfg.StateDir, "gatehouse.db")
	scfg := store.DefaultConfig()
	scfg.DSN = dbPath
	if cfg.Gateways > 1 {
		// Several gateway processes share a PostgreSQL, made at start (the
		// embedded store is one process's).
		say("starting PostgreSQL for %d gateway nodes...", cfg.Gateways)
		pgcfg := testenv.DefaultPostgresConfig()
		pgcfg.Logger = cfg.Logger
		pg, err := testenv.StartPostgres(ctx, pgcfg)
		if err != nil {
			return nil, err
		}
		e.closers = append(e.closers, func() { pg.Close() })
		scfg.Driver, scfg.DSN, dbPath = store.DriverPostgres, pg.DSN, "PostgreSQL in "+pg.Dir
	}
	st, err := store.Open(ctx, scfg)
	if err != nil {
		return nil, err
	}
	e.closers = append(e.closers, func() { st.Close() })
	if _, err := st.Migrate(ctx); err != nil {
		return nil, err
	}
	kek, err := devKEK(filepath.Join(cfg.StateDir, "ca.kek"))
	if err != nil {
		return nil, err
	}
	// Kratos, on SQLite in the state directory: people sign in through it.
	say("starting Kratos (identity)...")
	kcfg := testenv.DefaultKratosConfig()
	if cfg.Gateways == 1 {
		kcfg.Dir = filepath.Join(cfg.StateDir, "kratos")
	} // else new, like the store
	for _, p := range cfg.SSO {
		kcfg.OIDC = append(kcfg.OIDC, p.KratosConfig())
	}
	if len(cfg.SSO) > 0 {
		kcfg.ReturnURLs = []string{"http://" + cfg.SSOCallbackAddr + "/callback"}
	}
	kcfg.PublicPort = cfg.KratosPort
	kr, err := testenv.StartKratos(ctx, kcfg)
	if err != nil {
		return nil, err
	}
	e.closers = append(e.closers, func() { kr.Close() })
	icfg := identity.DefaultConfig()
	icfg.PublicURL, icfg.AdminURL = kr.PublicURL, kr.AdminURL
	kratos, err := identity.New(icfg)
	if err != nil {
		return nil, err
	}
	e.IdentityURL = kr.PublicURL
	for _, p := range cfg.SSO {
		say("SSO provider %q: register the redirect URL %s at it; people sign in with gatehouse login --sso %s", p.ID, kr.CallbackURL(p.ID), p.ID)
	}
	org, project, cluster, seeded, err := seed(ctx, st, cfg)
	if err != nil {
		return nil, err
	}
	admin, err := e.admin(ctx, st, kratos, seeded)
	if err != nil {
		return nil, err
	}
	e.AdminID = admin.ID
	say("store: %s (organization %q, project %q, admin %s with ADMIN)", dbPath, org.Name, project.Name, admin.Email)

	var auth *ca.Authority
	var connected func() bool
	if cfg.Gateways == 1 {
		g, err := e.startGateway1(ctx, cfg, st, kek, sink, kratos)
		if err != nil {
			return nil, err
		}
		if pipe != nil {
			pipe.SetKey(g.ServingCertificate)
		}
		auth, connected = g.CA, func() bool { return g.Registry.Connected(cfg.Cluster) }
	} else {
		if auth, err = ca.Init(ctx, ca.DefaultConfig(), kek, st); err != nil {
			return nil, err
		}
		front, err := net.Listen("tcp", cfg.Addr)
		if err != nil {
			return nil, fmt.Errorf("dev: the front: %w", err)
		}
		e.GatewayURL = "https://" + front.Addr().String()
		bin := cfg.Binary
		if bin == "" {
			if bin, err = os.Executable(); err != nil {
				front.Close()
				return nil, err
			}
		}
		level := "warn"
		if cfg.Logger != nil && cfg.Logger.Enabled(ctx, slog.LevelInfo) {
			level = "info"
		}
		say("starting %d gateway nodes...", cfg.Gateways)
		if err := e.startGateways(ctx, cfg.Gateways, front, gatewaysConfig{bin: bin, dsn: scfg.DSN, kekFile: filepath.Join(cfg.StateDir, "ca.kek"),
			publicURL: e.GatewayURL, kratosPublic: kr.PublicURL, kratosAdmin: kr.AdminURL, logLevel: level, auditBrokers: e.KafkaBrokers}); err != nil {
			front.Close()
			return nil, err
		}
		for _, g := range e.gateways {
			say("gateway %s on %s (pid %d)", g.Name, g.Addr, g.PID)
		}
		say("a TCP front on %s spreads connections over them; %s lists them", front.Addr(), filepath.Join(cfg.StateDir, "gateways.json"))
		connected = func() bool { return e.clusterConnected(ctx, cfg.Cluster) }
	}
	say("gateway listening on %s", e.GatewayURL)

	apiToken, err := st.CreateAPIToken(ctx, &store.APIToken{UserID: admin.ID, Name: "gatehouse-dev-" + strings.ToLower(rand.Text()[:8]), Expires: time.Now().Add(7 * 24 * time.Hour)})
	if err != nil {
		return nil, err
	}
	e.AdminTokenFile, _ = filepath.Abs(filepath.Join(cfg.StateDir, "admin.token"))
	if err := os.WriteFile(e.AdminTokenFile, []byte(apiToken+"\n"), 0o600); err != nil {
		return nil, err
	}
	caFile, _ := filepath.Abs(filepath.Join(cfg.StateDir, "ca.crt"))
	e.CAFile = caFile
	if err := os.WriteFile(caFile, auth.RootPEM(), 0o644); err != nil {
		return nil, err
	}

	// 3. Register the cluster with the real bootstrap manifest. A local
	// cluster is new at every start (a new kube-system UID): the dev
	// setup, its admin, re-homes the Gatehouse cluster to it.
	if err := rehomeIfNew(ctx, st, kube, cluster, say); err != nil {
		return nil, err
	}
	token, err := st.CreateBootstrapToken(ctx, cluster.ID, store.DefaultBootstrapTTL)
	if err != nil {
		return nil, err
	}
	const ns = bootstrap.DefaultNamespace
	manifest, err := bootstrap.Manifest(bootstrap.Params{
		Cluster: cfg.Cluster, Namespace: ns, GatewayURL: e.GatewayURL, GatewayCA: string(auth.RootPEM()),
		Token: token, Expires: time.Now().Add(store.DefaultBootstrapTTL), Image: "gatehouse:dev",
		Replicas: 0, // the agent runs inside this process
	})
	if err != nil {
		return nil, err
	}
	manifestPath := filepath.Join(cfg.StateDir, "agent-manifest.yaml")
	if err := os.WriteFile(manifestPath, manifest, 0o600); err != nil {
		return nil, err
	}
	if err := kubectlApply(ctx, kubeconfig, manifestPath); err != nil {
		return nil, err
	}
	say("applied the bootstrap manifest (%s)", manifestPath)
	agentKube, err := agentCredentials(ctx, kube, ns)
	if err != nil {
		return nil, err
	}
	acfg := agent.DefaultConfig()
	acfg.Kube, acfg.Namespace, acfg.GatewayURL, acfg.GatewayCA, acfg.BootstrapToken, acfg.Logger = agentKube, ns, e.GatewayURL, auth.RootPEM(), token, cfg.Logger
	acfg.Version = "gatehouse-dev"
	ag, err := agent.New(acfg)
	if err != nil {
		return nil, err
	}
	e.run(ctx, "agent", ag.Run)
	if err := waitUntil(ctx, 60*time.Second, connected, e.errc); err != nil {
		return nil, fmt.Errorf("dev: agent did not connect: %w", err)
	}
	say("agent registered and connected; cluster %q is reachable through the gateway", cfg.Cluster)

	// 4. The admin's kubeconfig. The certificate names the person by their
	// store id; the store and policy decide their access.
	key, keyPEM, err := pki.NewKey()
	if err != nil {
		return nil, err
	}
	chain, err := auth.IssueUser(ctx, admin.ID, nil, key.Public(), 24*time.Hour)
	if err != nil {
		return nil, err
	}
	e.AdminKubeconfig, _ = filepath.Abs(filepath.Join(cfg.StateDir, "admin.kubeconfig"))
	if err := testenv.WriteKubeconfig(e.AdminKubeconfig, e.GatewayURL+"/k8s/"+cfg.Cluster, auth.RootPEM(), cfg.Admin, chain, keyPEM, ""); err != nil {
		return nil, err
	}
	say("ready. Try:\n\n    export KUBECONFIG=%s\n    kubectl get pods -A\n\nRegister another cluster (prints its bootstrap manifest):\n\n    export GATEHOUSE_SERVER=%s GATEHOUSE_TOKEN_FILE=%s GATEHOUSE_CA_FILE=%s\n    gatehouse cluster create NAME --project default | kubectl --context OTHER apply -f -\n\nSign in as the admin and get short-lived credentials instead of the static kubeconfig:\n\n    gatehouse login --server %s --identity-url %s --ca-file %s --email %s --password-stdin < %s\n    gatehouse kubeconfig --cluster %s --file dev.kubeconfig\n\naudit log: %s",
		e.AdminKubeconfig, e.GatewayURL, e.AdminTokenFile, caFile,
		e.GatewayURL, e.IdentityURL, caFile, cfg.Admin, e.AdminPasswordFile, cfg.Cluster, filepath.Join(cfg.StateDir, "audit.jsonl"))
	if len(e.KafkaBrokers) > 0 {
		say("search and follow the audit log (with the GATEHOUSE_* variables above), and record exec sessions:\n\n    gatehouse audit search --since 1h\n    gatehouse audit tail -f\n    gatehouse cluster update %s --record-sessions '*'\n    kubectl exec -it -n demo deploy/web -- sh\n    gatehouse audit play RECORDING    # its id: the RECORDING column of gatehouse audit search",
			cfg.Cluster)
	}
	return e, nil
}

// EmbeddedKafka, when set, starts a Kafka broker in this process for the
// audit pipeline, and returns its addresses: a build with the devkafka tag
// (make run) sets it. The release binary leaves it nil and does not link
// the broker (internal/archtest); gatehouse dev then writes the audit log
// to a file alone.
var EmbeddedKafka func(topic string) (brokers []string, stop func(), err error)

// AuditTopic is the dev setup's audit topic.
const AuditTopic = "gatehouse.audit"

// startKafka starts the embedded broker and writes DIR/kafka.json, where a
// consumer finds it; with one gateway it returns the pipeline that ships
// the gateway's events there (gateway processes run their own).
func (e *Env) startKafka(cfg Config, say func(string, ...any)) (*pipeline.Pipeline, error) {
	brokers, stop, err := EmbeddedKafka(AuditTopic)
	if err != nil {
		return nil, fmt.Errorf("dev: Kafka: %w", err)
	}
	e.closers = append(e.closers, stop)
	e.KafkaBrokers = brokers
	b, _ := json.MarshalIndent(map[string]any{"brokers": brokers, "topic": AuditTopic}, "", "  ")
	if err := os.WriteFile(filepath.Join(cfg.StateDir, "kafka.json"), append(b, '\n'), 0o600); err != nil {
		return nil, err
	}
	say("audit events go to Kafka (embedded): brokers %s, topic %s; %s says so for consumers", strings.Join(brokers, ","), AuditTopic, filepath.Join(cfg.StateDir, "kafka.json"))
	if cfg.Gateways > 1 {
		return nil, nil
	}
	scfg := spool.DefaultConfig()
	scfg.Dir, scfg.Logger = filepath.Join(cfg.StateDir, "audit-spool"), cfg.Logger
	kcfg := ship.DefaultConfig()
	kcfg.Brokers, kcfg.Topic = brokers, AuditTopic
	pipe, err := pipeline.Open("dev-node", scfg, kcfg, cfg.Logger)
	if err != nil {
		return nil, err
	}
	pipe.Start()
	e.closers = append(e.closers, func() { pipe.Close(2 * time.Second) })
	return pipe, nil
}

// seed creates what a first contact needs: an organization, a project, the
// cluster, and an admin bound to ADMIN. On a later start it finds them.
func seed(ctx context.Context, st *store.Store, cfg Config) (*store.Org, *store.Project, *store.Cluster, *store.User, error) {
	if org, err := st.GetOrg(ctx, "default"); err == nil {
		project, err := st.GetProject(ctx, org.ID, "default")
		if err != nil {
			return nil, nil, nil, nil, err
		}
		cluster, err := st.GetCluster(ctx, cfg.Cluster)
		if err != nil {
			return nil, nil, nil, nil, err
		}
		admin, err := st.GetUser(ctx, cfg.Admin)
		if err != nil {
			return nil, nil, nil, nil, err
		}
		return org, project, cluster, admin, nil
	} else if !errors.Is(err, store.ErrNotFound) {
		return nil, nil, nil, nil, err
	}
	org := &store.Org{Name: "default"}
	if err := st.CreateOrg(ctx, org); err != nil {
		return nil, nil, nil, nil, err
	}
	project := &store.Project{OrgID: org.ID, Name: "default"}
	if err := st.CreateProject(ctx, project); err != nil {
		return nil, nil, nil, nil, err
	}
	cluster := &store.Cluster{ProjectID: project.ID, Name: cfg.Cluster}
	if err := st.CreateCluster(ctx, cluster); err != nil {
		return nil, nil, nil, nil, err
	}
	admin := &store.User{OrgID: org.ID, Email: cfg.Admin, Display: "Admin"}
	if err := st.CreateUser(ctx, admin); err != nil {
		return nil, nil, nil, nil, err
	}
	if err := st.CreateBinding(ctx, &store.Binding{OrgID: org.ID, SubjectKind: store.SubjectUser, SubjectID: admin.ID, Role: "ADMIN", CreatedBy: "gatehouse dev"}); err != nil {
		return nil, nil, nil, nil, err
	}
	return org, project, cluster, admin, nil
}

// admin makes sure the admin has a Kratos identity with the password in
// AdminPasswordFile: made at the first start, found at later ones.
func (e *Env) admin(ctx context.Context, st *store.Store, kratos *identity.Kratos, u *store.User) (*store.User, error) {
	e.AdminPasswordFile, _ = filepath.Abs(filepath.Join(e.cfg.StateDir, "admin.password"))
	if pw, err := os.ReadFile(e.AdminPasswordFile); err == nil && u.KratosID != "" {
		e.AdminPassword = strings.TrimSpace(string(pw))
		return u, nil
	}
	e.AdminPassword = rand.Text()
	kratosID, err := kratos.CreatePerson(ctx, u.Email, "Admin", e.AdminPassword)
	if err != nil {
		return nil, err
	}
	admin, err := st.RecordLogin(ctx, u.Email, kratosID, nil)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(e.AdminPasswordFile, []byte(e.AdminPassword+"\n"), 0o600); err != nil {
		return nil, err
	}
	return admin, nil
}

// rehomeIfNew re-homes the cluster when the API server behind kube is not
// the one it was registered from.
func rehomeIfNew(ctx context.Context, st *store.Store, kube *rest.Config, cluster *store.Cluster, say func(string, ...any)) error {
	if cluster.Fingerprint == "" {
		return nil
	}
	cs, err := kubernetes.NewForConfig(kube)
	if err != nil {
		return err
	}
	ns, err := cs.CoreV1().Namespaces().Get(ctx, "kube-system", metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("dev: the cluster's fingerprint: %w", err)
	}
	if string(ns.UID) == cluster.Fingerprint {
		return nil
	}
	if _, err := st.RehomeCluster(ctx, cluster.ID, time.Now().Add(api.MaxAgentCertTTL+time.Hour)); err != nil {
		return err
	}
	say("the local cluster is new (kube-system %s); re-homed cluster %q to it", ns.UID, cluster.Name)
	return nil
}

// devKEK returns the dev setup's CA key-encryption key, kept in path (made
// at the first start). A production node takes it from a secret instead
// (--ca-kek-file or GATEHOUSE_CA_KEK), never beside the store.
func devKEK(path string) (*ca.LocalKEK, error) {
	key, err := devKey(path)
	if err != nil {
		return nil, err
	}
	return ca.NewLocalKEK(key)
}

// devKey reads 32 random bytes (base64) from path, making them first if
// the file does not exist.
func devKey(path string) ([]byte, error) {
	if b, err := os.ReadFile(path); err == nil {
		key, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(b)))
		if err != nil || len(key) != 32 {
			return nil, fmt.Errorf("dev: %s does not hold 32 bytes of base64", path)
		}
		return key, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	key := make([]byte, 32)
	rand.Read(key)
	if err := os.WriteFile(path, []byte(base64.StdEncoding.EncodeToString(key)+"\n"), 0o600); err != nil {
		return nil, err
	}
	return key, nil
}

// run starts fn in a goroutine owned by e; its failure is reported on errc.
func (e *Env) run(ctx context.Context, name string, fn func(context.Context) error) {
	ctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan struct{})
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		defer close(done)
		if err := fn(ctx); err != nil {
			select {
			case e.errc <- fmt.Errorf("%s: %w", name, err):
			default:
			}
		}
	}()
	e.closers = append(e.closers, func() { cancel(); <-done })
}

// Err returns a channel that receives the first failure of a background
// component.
func (e *Env) Err() <-chan error { return e.errc }

// Close stops everything, newest first. It is idempotent.
func (e *Env) Close() error {
	e.closeOnce.Do(func() {
		for i := len(e.closers) - 1; i >= 0; i-- {
			e.closers[i]()
		}
		e.wg.Wait()
	})
	return nil
}

func waitUntil(ctx context.Context, timeout time.Duration, cond func() bool, errc <-chan error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for !cond() {
		select {
		case err := <-errc:
			return err
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
	return nil
}

// kubectlApply applies a file with the built kubectl (or one on PATH).
func kubectlApply(ctx context.Context, kubeconfig, path string) error {
	bin, err := testenv.Tool("kubectl")
	if err != nil {
		if bin, err = exec.LookPath("kubectl"); err != nil {
			return errors.New("dev: no kubectl (run `make tools`)")
		}
	}
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, bin, "--kubeconfig="+kubeconfig, "apply", "-f", path)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("dev: kubectl apply: %w\n%s", err, out.String())
	}
	return nil
}

// agentCredentials returns the agent's own service account credentials, as
// its pod would have them: nothing more than the manifest grants.
func agentCredentials(ctx context.Context, admin *rest.Config, ns string) (*rest.Config, error) {
	cs, err := kubernetes.NewForConfig(admin)
	if err != nil {
		return nil, err
	}
	var tok *authenticationv1.TokenRequest
	err = waitUntil(ctx, 30*time.Second, func() bool {
		// A week: the dev setup runs as long as someone works with it.
		tok, err = cs.CoreV1().ServiceAccounts(ns).CreateToken(ctx, "gatehouse-agent", &authenticationv1.TokenRequest{
			Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr(int64(7 * 24 * 3600))},
		}, metav1.CreateOptions{})
		return err == nil
	}, nil)
	if err != nil {
		return nil, fmt.Errorf("dev: agent token: %w", err)
	}
	cfg := rest.AnonymousClientConfig(admin)
	cfg.BearerToken = tok.Status.Token
	return cfg, nil
}

func ptr[T any](v T) *T { return &v }

// demoWorkload gives a new local cluster something to look at: a
// Deployment of three pods in namespace demo, running on kwok nodes.
func demoWorkload(ctx context.Context, kube *rest.Config) error {
	cs, err := kubernetes.NewForConfig(kube)
	if err != nil {
		return err
	}
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "demo"}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	labels := map[string]string{"app": "web"}
	_, err = cs.AppsV1().Deployments("demo").Create(ctx, &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr(int32(3)),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "web", Image: "nginx:stable"}}},
			},
		},
	}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	return nil
}

// startGateway1 runs the one gateway node in this process.
func (e *Env) startGateway1(ctx context.Context, cfg Config, st *store.Store, kek ca.KEK, sink audit.Sink, kratos *identity.Kratos) (*gateway.Gateway, error) {
	gcfg := gateway.DefaultConfig()
	gcfg.Node.Name, gcfg.Node.Addr, gcfg.Node.Logger, gcfg.Node.ShutdownTimeout = "dev-node", cfg.Addr, cfg.Logger, 5*time.Second
	gcfg.Store, gcfg.KEK, gcfg.InitCA, gcfg.Audit, gcfg.Identity, gcfg.Logger = st, kek, true, sink, kratos, cfg.Logger
	if len(cfg.SSO) > 0 {
		reader, err := identity.NewSSOProviders(cfg.SSO, nil)
		if err != nil {
			return nil, err
		}
		// The SSO refresh tokens the store keeps are sealed with a key that
		// lives beside it, like the CA's.
		tokenKey, err := devKey(filepath.Join(cfg.StateDir, "token.key"))
		if err != nil {
			return nil, err
		}
		sealer, err := identity.NewSealer(tokenKey)
		if err != nil {
			return nil, err
		}
		gcfg.SSO = &api.SSOConfig{Providers: reader, Sealer: sealer}
	}
	g, err := gateway.New(ctx, gcfg)
	if err != nil {
		return nil, err
	}
	e.closers = append(e.closers, func() { g.Close() })
	e.run(ctx, "gateway", g.Run)
	readyCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	e.GatewayURL, err = g.Ready(readyCtx)
	cancel()
	if err != nil {
		return nil, err
	}
	return g, nil
}
