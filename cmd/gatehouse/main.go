// Command gatehouse is Gatehouse's single binary: the gateway node, the
// cluster agent, the single-machine dev setup and the user CLI, as
// subcommands. Each subcommand only parses flags into its package's Config
// and runs it.
package main

import (
	"context"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/gatehouse-dev/gatehouse/control/api"
	"github.com/gatehouse-dev/gatehouse/control/ca"
	"github.com/gatehouse-dev/gatehouse/control/identity"
	"github.com/gatehouse-dev/gatehouse/control/store"
	"github.com/gatehouse-dev/gatehouse/internal/devsetup"
	"github.com/gatehouse-dev/gatehouse/internal/gateway"
	"github.com/gatehouse-dev/gatehouse/tunnel/agent"

	"github.com/KimMachineGun/automemlimit/memlimit"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/yaml"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

type command struct {
	name, summary string
	run           func(ctx context.Context, args []string, stdout, stderr io.Writer) error
}

func commands() []command {
	return []command{
		{"node", "run a gateway node", runNode},
		{"migrate", "apply the store's schema migrations", runMigrate},
		{"ca", "the certificate authority: create it (ca init), rotate it (ca rotate), show its generations (ca status)", runCA},
		{"audit", "the audit stream: check its hash chains and signed checkpoints (audit verify)", runAudit},
		{"agent", "run the cluster agent (inside the cluster; configured by the bootstrap manifest)", runAgent},
		{"dev", "run a whole Gatehouse on this machine: a local cluster behind a gateway, ready for kubectl", runDev},
		{"login", "sign in (password, invitation or SSO through Kratos) and keep a session for the other commands", runLogin},
		{"logout", "end the session", runLogout},
		{"passwd", "change your password", runPasswd},
		{"whoami", "show who you are signed in as", runWhoami},
		{"kubeconfig", "write a kubeconfig for a cluster whose credentials come from `gatehouse credential`", runKubeconfig},
		{"credential", "the kubectl exec credential plugin: prints a short-lived client certificate", runCredential},
		{"get", "list projects, users, groups, rolebindings, roles or tokens", runGet},
		{"create", "create a project, user, group or API token", runCreate},
		{"delete", "delete a project, user, group, rolebinding or token", runDelete},
		{"completion", "print a bash or zsh completion script", runCompletion},
		{"apply", "create or update projects, clusters, people, groups and role bindings from YAML, idempotently", runApply},
		{"invite", "issue an invitation with which a person sets the first (or a new) password of their local account", runInvite},
		{"revoke", "revoke a person (everything they hold) or one certificate, at once", runRevoke},
		{"cluster", "create, list, get, delete clusters, or print a new bootstrap manifest (through the API)", runCluster},
		{"loadtest", "simulated agents and clients against a gateway: connect time, request rate, latency and failures", runLoadtest},
		{"status", "the gateway cluster's members, and each cluster's owner node, agent connection, versions and heartbeat (admin)", runStatus},
		{"version", "print the version", func(_ context.Context, _ []string, stdout, _ io.Writer) error {
			_, err := fmt.Fprintln(stdout, "gatehouse", version)
			return err
		}},
	}
}

// errUsage marks a command-line mistake; the usage has been printed.
var errUsage = errors.New("usage")

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	switch {
	case err == nil:
	case errors.Is(err, errUsage):
		os.Exit(2)
	default:
		fmt.Fprintln(os.Stderr, "gatehouse:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stderr)
		if len(args) == 0 {
			return errUsage
		}
		return nil
	}
	for _, c := range commands() {
		if c.name == args[0] {
			return c.run(ctx, args[1:], stdout, stderr)
		}
	}
	fmt.Fprintf(stderr, "gatehouse: unknown command %q\n\n", args[0])
	usage(stderr)
	return errUsage
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "Usage: gatehouse COMMAND [flags]\n\nCommands:")
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-10s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w, "\nRun 'gatehouse COMMAND -h' for a command's flags.")
}

// storeFlags registers the store's flags; stateDir is where the embedded
// store lives by default.
func storeFlags(fs *flag.FlagSet, stateDir *string) func() store.Config {
	cfg := store.DefaultConfig()
	driver := fs.String("store-driver", cfg.Driver, "store: sqlite (embedded) or postgres (CockroachDB or PostgreSQL)")
	dsn := fs.String("store-dsn", "", "postgres:// URL, or the SQLite file (default STATE_DIR/gatehouse.db)")
	return func() store.Config {
		cfg.Driver, cfg.DSN = *driver, *dsn
		if cfg.DSN == "" && cfg.Driver == store.DriverSQLite {
			cfg.DSN = filepath.Join(*stateDir, "gatehouse.db")
		}
		return cfg
	}
}

func runMigrate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("gatehouse migrate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	stateDir := fs.String("state-dir", ".gatehouse/node", "directory of the embedded store")
	storeCfg := storeFlags(fs, stateDir)
	if ok, err := parseFlags(fs, args, stderr); !ok {
		return err
	}
	cfg := storeCfg()
	if cfg.Driver == store.DriverSQLite {
		if err := os.MkdirAll(filepath.Dir(cfg.DSN), 0o700); err != nil {
			return err
		}
	}
	st, err := store.Open(ctx, cfg)
	if err != nil {
		return err
	}
	defer st.Close()
	applied, err := st.Migrate(ctx)
	if err != nil {
		return err
	}
	v, err := st.SchemaVersion(ctx)
	if err != nil {
		return err
	}
	if len(applied) == 0 {
		fmt.Fprintf(stdout, "schema up to date at version %d\n", v)
		return nil
	}
	fmt.Fprintf(stdout, "applied migrations %v; schema at version %d\n", applied, v)
	return nil
}

// kekEnv is the environment variable that may hold the CA's
// key-encryption key (base64), when --ca-kek-file is not given.
const kekEnv = "GATEHOUSE_CA_KEK"

func runNode(ctx context.Context, args []string, _, stderr io.Writer) error {
	gcfg := gateway.DefaultConfig()
	cfg := &gcfg.Node
	fs := flag.NewFlagSet("gatehouse node", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&cfg.Addr, "addr", cfg.Addr, "listen address, host:port")
	fs.StringVar(&cfg.Name, "name", cfg.Name, "node name, in audit events and logs")
	fs.StringVar(&cfg.MetricsAddr, "metrics-addr", "", "serve Prometheus metrics at http://ADDR/metrics and Go profiles at /debug/pprof/ (an internal address); empty: off")
	fs.DurationVar(&cfg.ShutdownTimeout, "shutdown-timeout", cfg.ShutdownTimeout, "how long to wait for in-flight requests on shutdown")
	stateDir := fs.String("state-dir", ".gatehouse/node", "directory for the CA certificate, the audit log and the embedded store")
	storeCfg := storeFlags(fs, stateDir)
	migrate := fs.Bool("migrate", false, "apply store migrations at start (else run gatehouse migrate first)")
	kekFile := fs.String("ca-kek-file", "", "the CA's key-encryption key: 32 random bytes, base64 (openssl rand -base64 32); else $"+kekEnv+"; the same on every node")
	fs.BoolVar(&gcfg.InitCA, "init-ca", false, "create the certificate authority in the store if it holds none (else run gatehouse ca init first)")
	fs.StringVar(&gcfg.PublicURL, "public-url", "", "URL agents and people reach this gateway at, https://HOST:PORT (default from -addr)")
	kratosPublic := fs.String("kratos-public-url", "", "Kratos public URL; empty: API tokens only, no sign-in")
	kratosAdmin := fs.String("kratos-admin-url", "", "Kratos admin URL (ending a revoked person's sessions, reading SSO links)")
	ssoFile := fs.String("sso-providers", "", "YAML list of Kratos's OIDC providers whose groups are read at every login (id, preset, issuer, clientID, clientSecret, groupsClaim, provisionOrg)")
	tokenKeyFile := fs.String("token-key-file", "", "32 random bytes, base64 (openssl rand -base64 32): seals the SSO refresh tokens the store keeps; the same on every node")
	fs.DurationVar(&gcfg.FeedInterval, "feed-interval", 100*time.Millisecond, "how often the node polls the store's change feed (revocations, grants changed through other nodes; in a gateway cluster revocations also come through the Raft group at once)")
	fs.DurationVar(&gcfg.AccessCacheTTL, "access-cache-ttl", gcfg.AccessCacheTTL, "how long the node keeps an access decision (0: ask the store on every request); bounds how late a change made through another node is seen")
	gossipAddr := fs.String("gossip-addr", "", "join a gateway cluster: memberlist's address, host:port (empty: a node on its own)")
	seeds := fs.String("seeds", "", "other nodes' gossip addresses (or a DNS name resolving to them), comma-separated")
	gossipKeyFile := fs.String("gossip-key-file", "", "32 random bytes, base64 (openssl rand -base64 32): encrypts gossip; the same on every node")
	peerAddr := fs.String("peer-addr", "", "where other nodes forward requests to this one, host:port (node-to-node mutual TLS)")
	ringPublic := fs.String("node-addr", "", "this node's own address for agents, host:port, where other nodes redirect agents whose tunnel belongs here (default -addr)")
	zone := fs.String("zone", "", "this node's failure domain (zone), if known")
	fs.Float64Var(&cfg.UnauthenticatedRate, "unauthenticated-rate", cfg.UnauthenticatedRate, "requests per second each client address may make to the endpoints that need no credentials (agent registration); raise it for a mass enrolment or a load test")
	fs.IntVar(&cfg.UnauthenticatedBurst, "unauthenticated-burst", cfg.UnauthenticatedBurst, "burst of --unauthenticated-rate")
	voters := fs.Int("voters", 3, "with --gossip-addr: how many nodes vote in the Raft group that elects the certificate authority's leader (3 or 5; the others stand by)")
	bootstrapExpect := fs.Int("bootstrap-expect", 0, "with --gossip-addr: how many nodes, none with Raft state, must be seen before a new Raft group forms (default --voters)")
	drainTimeout := fs.Duration("drain-timeout", gateway.DefaultDrainTimeout, "on SIGTERM, how long to spend handing this node's agents over to other nodes before stopping (then --shutdown-timeout for requests in flight)")
	fs.StringVar(&cfg.ClusterDomain, "cluster-domain", "", "also route https://CLUSTER.DOMAIN/ to CLUSTER (DNS: a wildcard record for *.DOMAIN to the gateway); for clients that drop a server's path, such as kubectl proxy")
	logLevel := fs.String("log-level", "info", "log level: debug, info, warn, error")
	af := auditFlags(fs, stateDir)
	fs.Int64Var(&cfg.RecordMaxBytes, "record-max-bytes", 64<<20, "the most bytes of one exec or attach session's recording (asciicast v2); past it the recording is cut, marked, and the session goes on")
	fs.BoolVar(&cfg.AuditFailOpen, "audit-fail-open", false, "serve requests whose audit events the spool cannot take (full, or a failing disk), counting them in gatehouse_audit_unready_total; default: refuse them with 503 (fail closed)")
	if ok, err := parseFlags(fs, args, stderr); !ok {
		return err
	}
	if *gossipAddr != "" {
		if *gossipKeyFile == "" || *peerAddr == "" {
			return errors.New("--gossip-addr needs --gossip-key-file and --peer-addr")
		}
		key, err := readKeyFile(*gossipKeyFile, "--gossip-key-file")
		if err != nil {
			return err
		}
		gcfg.Ring = &gateway.RingConfig{GossipAddr: *gossipAddr, Key: key, PeerAddr: *peerAddr, PublicAddr: *ringPublic, Zone: *zone, DrainTimeout: *drainTimeout,
			RaftDir: filepath.Join(*stateDir, "raft"), Voters: *voters, BootstrapExpect: *bootstrapExpect}
		if *voters < 1 || *voters > 9 || *bootstrapExpect < 0 {
			return fmt.Errorf("--voters %d, --bootstrap-expect %d: voters from 1 to 9, expect not negative", *voters, *bootstrapExpect)
		}
		for _, s := range strings.Split(*seeds, ",") {
			if s = strings.TrimSpace(s); s != "" {
				gcfg.Ring.Seeds = append(gcfg.Ring.Seeds, s)
			}
		}
	}
	if gcfg.FeedInterval < 10*time.Millisecond || gcfg.FeedInterval > time.Minute {
		return fmt.Errorf("--feed-interval %s: from 10ms to 1m", gcfg.FeedInterval)
	}
	if gcfg.AccessCacheTTL < 0 || gcfg.AccessCacheTTL > time.Minute {
		return fmt.Errorf("--access-cache-ttl %s: from 0 to 1m", gcfg.AccessCacheTTL)
	}
	if _, _, err := net.SplitHostPort(cfg.Addr); err != nil {
		return fmt.Errorf("-addr %q: %w", cfg.Addr, err)
	}
	log, err := newLogger(*logLevel, stderr)
	if err != nil {
		return err
	}
	cfg.Logger, gcfg.Logger = log, log
	// A soft memory limit at 90% of the container's (cgroup) limit, unless
	// GOMEMLIMIT is set: without one the Go collector lets garbage grow to
	// the size of the live heap, and a node holding 20,000 idle tunnels
	// (half a gigabyte live) would pass a 1 GiB limit and be killed.
	if limit, err := memlimit.Set(memlimit.WithRatio(0.9), memlimit.WithLogger(log)); err != nil {
		log.Warn("no Go memory limit from the cgroup", "err", err)
	} else if limit < math.MaxInt64 {
		log.Info("Go memory limit", "bytes", limit)
	}
	if *ssoFile != "" {
		if *kratosPublic == "" || *kratosAdmin == "" || *tokenKeyFile == "" {
			return errors.New("--sso-providers needs --kratos-public-url, --kratos-admin-url and --token-key-file")
		}
		if gcfg.SSO, err = loadSSO(*ssoFile, *tokenKeyFile); err != nil {
			return err
		}
	}
	if gcfg.KEK, err = ca.LoadLocalKEK(*kekFile, kekEnv); err != nil {
		return err
	}
	if err := os.MkdirAll(*stateDir, 0o700); err != nil {
		return err
	}
	gcfg.CertDir = *stateDir
	st, err := openStore(ctx, storeCfg(), *migrate)
	if err != nil {
		return err
	}
	defer st.Close()
	gcfg.Store = st
	pipeline, err := af.open(cfg.Name, st, log)
	if err != nil {
		return err
	}
	defer pipeline.Close()
	gcfg.Audit = pipeline.sink
	cfg.Collectors = append(cfg.Collectors, pipeline.collectors()...)
	// The shipper outlives the node by a moment (Close): what is in the
	// spool at a graceful stop is shipped if Kafka takes it soon (else the
	// next start ships it).
	pipeline.start()
	if *kratosPublic != "" {
		icfg := identity.DefaultConfig()
		icfg.PublicURL, icfg.AdminURL = *kratosPublic, *kratosAdmin
		if gcfg.Identity, err = identity.New(icfg); err != nil {
			return err
		}
	}
	g, err := gateway.New(ctx, gcfg)
	if err != nil {
		return err
	}
	defer g.Close()
	pipeline.setKey(g.ServingCertificate)
	caPath := filepath.Join(*stateDir, "ca.crt")
	if err := os.WriteFile(caPath, g.CA.RootPEM(), 0o644); err != nil {
		return err
	}
	log.Info("gateway root certificate written", "path", caPath)
	return g.Run(ctx)
}

// openStore opens the store, migrating it if asked, and checks it has a
// schema.
func openStore(ctx context.Context, cfg store.Config, migrate bool) (*store.Store, error) {
	if cfg.Driver == store.DriverSQLite {
		if err := os.MkdirAll(filepath.Dir(cfg.DSN), 0o700); err != nil {
			return nil, err
		}
	}
	st, err := store.Open(ctx, cfg)
	if err != nil {
		return nil, err
	}
	if migrate {
		if _, err := st.Migrate(ctx); err != nil {
			st.Close()
			return nil, err
		}
	}
	if v, err := st.SchemaVersion(ctx); err != nil || v == 0 {
		st.Close()
		return nil, errors.New("the store has no schema: run gatehouse migrate (or pass --migrate)")
	}
	return st, nil
}

// parseFlags parses args into fs, printing problems; it reports whether the
// command should go on (false with a nil error after -h).
func parseFlags(fs *flag.FlagSet, args []string, stderr io.Writer) (bool, error) {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return false, nil
		}
		return false, errUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "%s: unexpected arguments %q\n", fs.Name(), fs.Args())
		return false, errUsage
	}
	return true, nil
}

func newLogger(level string, stderr io.Writer) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		fmt.Fprintf(stderr, "-log-level: %v\n", err)
		return nil, errUsage
	}
	return slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: l})), nil
}

func runDev(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg := devsetup.DefaultConfig()
	fs := flag.NewFlagSet("gatehouse dev", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&cfg.StateDir, "state-dir", cfg.StateDir, "directory for the local cluster, audit log and admin.kubeconfig")
	fs.StringVar(&cfg.Kubeconfig, "kubeconfig", "", "front this existing cluster instead of starting a local one")
	fs.StringVar(&cfg.Addr, "addr", cfg.Addr, "gateway listen address, host:port")
	fs.IntVar(&cfg.Nodes, "nodes", cfg.Nodes, "kwok nodes in the local cluster")
	fs.IntVar(&cfg.Gateways, "gateways", cfg.Gateways, "gateway nodes: 1 runs in this process; more run as a gateway cluster of `gatehouse node` processes on 127.0.0.2... behind a TCP front on -addr (gateways.json lists them)")
	ssoFile := fs.String("sso-providers", "", "YAML list of OIDC providers to sign in with (id, preset, issuer, clientID, clientSecret, groupsClaim, provisionOrg); register http://KRATOS/self-service/methods/oidc/callback/ID at each")
	fs.IntVar(&cfg.KratosPort, "kratos-port", cfg.KratosPort, "Kratos's public port on 127.0.0.1 (0: any free port)")
	fs.StringVar(&cfg.SSOCallbackAddr, "sso-callback-addr", cfg.SSOCallbackAddr, "where `gatehouse login --sso` waits for the browser")
	logLevel := fs.String("log-level", "warn", "log level of the components: debug, info, warn, error")
	if ok, err := parseFlags(fs, args, stderr); !ok {
		return err
	}
	if *ssoFile != "" {
		var err error
		if cfg.SSO, err = readSSOProviders(*ssoFile); err != nil {
			return err
		}
	}
	log, err := newLogger(*logLevel, stderr)
	if err != nil {
		return err
	}
	cfg.Logger, cfg.Out = log, stdout
	env, err := devsetup.Start(ctx, cfg)
	if err != nil {
		return err
	}
	defer env.Close()
	fmt.Fprintln(stdout, "gatehouse dev: serving until interrupted (Ctrl-C)")
	select {
	case <-ctx.Done():
		fmt.Fprintln(stdout, "gatehouse dev: stopping")
		return nil
	case err := <-env.Err():
		return err
	}
}

// runAgent runs inside the cluster with the pod's service account. Its
// settings come from the environment the bootstrap manifest sets.
func runAgent(ctx context.Context, args []string, _, stderr io.Writer) error {
	cfg := agent.DefaultConfig()
	fs := flag.NewFlagSet("gatehouse agent", flag.ContinueOnError)
	fs.SetOutput(stderr)
	logLevel := fs.String("log-level", "info", "log level: debug, info, warn, error")
	if ok, err := parseFlags(fs, args, stderr); !ok {
		return err
	}
	log, err := newLogger(*logLevel, stderr)
	if err != nil {
		return err
	}
	cfg.Logger, cfg.Version = log, version
	cfg.GatewayURL = os.Getenv("GATEHOUSE_GATEWAY_URL")
	cfg.GatewayCA = []byte(os.Getenv("GATEHOUSE_GATEWAY_CA"))
	cfg.BootstrapToken = os.Getenv("GATEHOUSE_BOOTSTRAP_TOKEN")
	if ns := os.Getenv("GATEHOUSE_NAMESPACE"); ns != "" {
		cfg.Namespace = ns
	}
	if cfg.Kube, err = rest.InClusterConfig(); err != nil {
		return fmt.Errorf("agent: not running in a cluster: %w", err)
	}
	a, err := agent.New(cfg)
	if err != nil {
		return err
	}
	return a.Run(ctx)
}

// loadSSO reads the SSO providers and the key that seals their refresh
// tokens.
func loadSSO(providersFile, keyFile string) (*api.SSOConfig, error) {
	providers, err := readSSOProviders(providersFile)
	if err != nil {
		return nil, err
	}
	reader, err := identity.NewSSOProviders(providers, nil)
	if err != nil {
		return nil, fmt.Errorf("--sso-providers %s: %w", providersFile, err)
	}
	key, err := readKeyFile(keyFile, "--token-key-file")
	if err != nil {
		return nil, err
	}
	sealer, err := identity.NewSealer(key)
	if err != nil {
		return nil, fmt.Errorf("--token-key-file: %w", err)
	}
	return &api.SSOConfig{Providers: reader, Sealer: sealer}, nil
}

// readKeyFile reads a base64 key from path.
func readKeyFile(path, flagName string) ([]byte, error) {
	text, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", flagName, err)
	}
	key, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(text)))
	if err != nil {
		return nil, fmt.Errorf("%s: not base64: %w", flagName, err)
	}
	return key, nil
}

// readSSOProviders reads a YAML list of identity.SSOProvider, strictly.
func readSSOProviders(path string) ([]identity.SSOProvider, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--sso-providers: %w", err)
	}
	var providers []identity.SSOProvider
	if err := yaml.UnmarshalStrict(raw, &providers); err != nil {
		return nil, fmt.Errorf("--sso-providers %s: %w", path, err)
	}
	return providers, nil
}
