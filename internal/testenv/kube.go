package testenv

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// KubeConfig configures a test Kubernetes control plane.
type KubeConfig struct {
	// Dir holds the state (etcd data, certificates, kubeconfigs, logs). Empty
	// means a new temporary directory that Close removes.
	Dir string

	// Nodes is how many kwok fake nodes to create. Zero runs no kwok at all.
	// Three gives the scheduler a choice without slowing the start.
	Nodes int

	// StartTimeout bounds the whole start. kube-apiserver alone needs ~10 s
	// on 2 cores, the controllers a few more; two minutes leaves room for a
	// loaded CI machine.
	StartTimeout time.Duration

	// Logger receives progress lines; nil discards them.
	Logger *slog.Logger
}

// DefaultKubeConfig returns the defaults described on KubeConfig.
func DefaultKubeConfig() KubeConfig {
	return KubeConfig{Nodes: 3, StartTimeout: 2 * time.Minute}
}

// Validate checks the configuration.
func (c KubeConfig) Validate() error {
	switch {
	case c.Nodes < 0 || c.Nodes > 100:
		return fmt.Errorf("testenv: Nodes %d out of range 0..100", c.Nodes)
	case c.StartTimeout <= 0:
		return errors.New("testenv: StartTimeout must be positive")
	}
	return nil
}

// Kube is a running control plane: etcd, kube-apiserver with RBAC and a
// service-account token issuer, kube-controller-manager, kube-scheduler and,
// when nodes were asked for, kwok.
type Kube struct {
	// Dir is the state directory.
	Dir string
	// URL is the API server's address, https://127.0.0.1:PORT.
	URL string
	// CAFile is the PEM CA that signed the API server's certificate and the
	// client certificates it accepts.
	CAFile string
	// AdminKubeconfig is a kubeconfig for a system:masters client certificate.
	AdminKubeconfig string
	// Nodes are the names of the kwok nodes.
	Nodes []string
	// EchoAddr is where every fake pod's port-forward ends: a TCP server that
	// writes back what it reads.
	EchoAddr string
	// PodLogFile is what every fake pod's containers log; lines appended to
	// it reach `kubectl logs -f` and `kubectl attach`.
	PodLogFile string

	caPEM, adminCert, adminKey []byte

	log     *slog.Logger
	tempDir bool
	procs   []*process // started order; closed in reverse
	echo    *echoServer

	podLogMu sync.Mutex // serialises appends to PodLogFile

	closeOnce sync.Once
}

// PodLogBanner is the first line of every fake pod's log.
const PodLogBanner = "gatehouse testenv: fake container started"

// StartKube starts a control plane and waits until it is ready: the API
// server answers /readyz, the controller manager has created the default
// service account, the scheduler is healthy and every kwok node is Ready.
func StartKube(ctx context.Context, cfg KubeConfig) (_ *Kube, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.StartTimeout)
	defer cancel()
	k := &Kube{Dir: cfg.Dir, log: cfg.Logger}
	if k.log == nil {
		k.log = slog.New(slog.DiscardHandler)
	}
	if k.Dir == "" {
		if k.Dir, err = os.MkdirTemp("", "gatehouse-kube-"); err != nil {
			return nil, err
		}
		k.tempDir = true
	} else if err := os.MkdirAll(k.Dir, 0o700); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			k.Close()
		}
	}()
	bins := map[string]string{}
	names := []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"}
	if cfg.Nodes > 0 {
		names = append(names, "kwok")
	}
	for _, n := range names {
		if bins[n], err = Tool(n); err != nil {
			return nil, err
		}
	}
	ports, err := freePorts(6)
	if err != nil {
		return nil, err
	}
	etcdPort, peerPort, apiPort, kcmPort, schedPort, kwokPort := ports[0], ports[1], ports[2], ports[3], ports[4], ports[5]
	k.URL = "https://" + hostPort(apiPort)

	if err := k.writePKI(); err != nil {
		return nil, err
	}
	p := func(name string) string { return filepath.Join(k.Dir, name) }

	k.log.Info("starting etcd", "port", etcdPort)
	etcd, err := k.start("etcd", bins["etcd"], []string{
		"--name=gatehouse-test",
		"--data-dir=" + p("etcd"),
		"--listen-client-urls=http://" + hostPort(etcdPort),
		"--advertise-client-urls=http://" + hostPort(etcdPort),
		"--listen-peer-urls=http://" + hostPort(peerPort),
		"--initial-advertise-peer-urls=http://" + hostPort(peerPort),
		"--initial-cluster=gatehouse-test=http://" + hostPort(peerPort),
		// A test bed's data is disposable; skipping fsync saves seconds per test.
		"--unsafe-no-fsync=true",
		"--log-level=warn",
	}, procOptions{})
	if err != nil {
		return nil, err
	}
	if err := etcd.waitReady(ctx, httpOK(http.DefaultClient, "http://"+hostPort(etcdPort)+"/health")); err != nil {
		return nil, err
	}

	k.log.Info("starting kube-apiserver", "url", k.URL)
	api, err := k.start("kube-apiserver", bins["kube-apiserver"], []string{
		"--etcd-servers=http://" + hostPort(etcdPort),
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(apiPort),
		"--tls-cert-file=" + p("apiserver.crt"),
		"--tls-private-key-file=" + p("apiserver.key"),
		"--client-ca-file=" + p("ca.crt"),
		"--authorization-mode=RBAC",
		"--service-account-key-file=" + p("sa.pub"),
		"--service-account-signing-key-file=" + p("sa.key"),
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-cluster-ip-range=10.96.0.0/16",
		// Endpoints may not hold loopback addresses, and nothing here runs
		// in-cluster clients that would need the kubernetes Service.
		"--endpoint-reconciler-type=none",
		"--allow-privileged=true",
		// kwok's fake kubelets listen on 127.0.0.1; "localhost" could resolve
		// to ::1 first.
		"--kubelet-preferred-address-types=InternalIP",
		"--profiling=false",
	}, procOptions{})
	if err != nil {
		return nil, err
	}
	adminHTTP, err := k.adminHTTPClient()
	if err != nil {
		return nil, err
	}
	if err := api.waitReady(ctx, httpOK(adminHTTP, k.URL+"/readyz")); err != nil {
		return nil, err
	}

	kubeconfigArgs := []string{
		"--kubeconfig=" + k.AdminKubeconfig,
		"--authentication-kubeconfig=" + k.AdminKubeconfig,
		"--authorization-kubeconfig=" + k.AdminKubeconfig,
		"--bind-address=127.0.0.1",
		"--leader-elect=false",
	}
	k.log.Info("starting kube-controller-manager and kube-scheduler")
	kcm, err := k.start("kube-controller-manager", bins["kube-controller-manager"], append([]string{
		"--secure-port=" + strconv.Itoa(kcmPort),
		"--service-account-private-key-file=" + p("sa.key"),
		"--root-ca-file=" + p("ca.crt"),
		"--cluster-signing-cert-file=" + p("ca.crt"),
		"--cluster-signing-key-file=" + p("ca.key"),
		"--use-service-account-credentials=true",
		"--kube-api-qps=200",
		"--kube-api-burst=400",
	}, kubeconfigArgs...), procOptions{})
	if err != nil {
		return nil, err
	}
	sched, err := k.start("kube-scheduler", bins["kube-scheduler"], append([]string{
		"--secure-port=" + strconv.Itoa(schedPort),
		"--kube-api-qps=200",
		"--kube-api-burst=400",
	}, kubeconfigArgs...), procOptions{})
	if err != nil {
		return nil, err
	}
	// The components serve self-signed certificates; their health is all
	// that is read from them, on loopback.
	insecure := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	if err := sched.waitReady(ctx, httpOK(insecure, "https://"+hostPort(schedPort)+"/healthz")); err != nil {
		return nil, err
	}
	cs, err := k.Clientset()
	if err != nil {
		return nil, err
	}
	if err := kcm.waitReady(ctx, func(ctx context.Context) error {
		_, err := cs.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{})
		return err
	}); err != nil {
		return nil, err
	}

	if cfg.Nodes > 0 {
		if err := k.startKwok(ctx, bins["kwok"], kwokPort, cfg.Nodes, cs); err != nil {
			return nil, err
		}
	}
	k.log.Info("kubernetes ready", "url", k.URL, "kubeconfig", k.AdminKubeconfig)
	return k, nil
}

func (k *Kube) start(name, bin string, args []string, o procOptions) (*process, error) {
	pr, err := startProcess(name, filepath.Join(k.Dir, name+".log"), bin, args, o)
	if err != nil {
		return nil, err
	}
	k.procs = append(k.procs, pr)
	return pr, nil
}

func (k *Kube) writePKI() error {
	ca, err := newCA("gatehouse-testenv-ca")
	if err != nil {
		return err
	}
	api, err := ca.issue(certSpec{
		cn:     "kube-apiserver",
		dns:    []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"},
		ips:    []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback, net.IPv4(10, 96, 0, 1)},
		server: true,
	})
	if err != nil {
		return err
	}
	admin, err := ca.issue(certSpec{cn: "kubernetes-admin", orgs: []string{"system:masters"}, client: true})
	if err != nil {
		return err
	}
	caKey, err := keyToPEM(ca.key)
	if err != nil {
		return err
	}
	sa, err := newCA("service-accounts") // only its key pair is used
	if err != nil {
		return err
	}
	saKey, err := keyToPEM(sa.key)
	if err != nil {
		return err
	}
	saPub, err := x509.MarshalPKIXPublicKey(sa.key.Public())
	if err != nil {
		return err
	}
	p := func(name string) string { return filepath.Join(k.Dir, name) }
	k.CAFile = p("ca.crt")
	k.AdminKubeconfig = p("admin.kubeconfig")
	k.caPEM, k.adminCert, k.adminKey = ca.pem, admin.certPEM, admin.keyPEM
	if err := writeFiles(map[string][]byte{
		p("ca.crt"): ca.pem, p("ca.key"): caKey,
		p("apiserver.crt"): api.certPEM, p("apiserver.key"): api.keyPEM,
		p("admin.crt"): admin.certPEM, p("admin.key"): admin.keyPEM,
		p("sa.key"): saKey, p("sa.pub"): pemBlock("PUBLIC KEY", saPub),
	}); err != nil {
		return err
	}
	return WriteKubeconfig(k.AdminKubeconfig, k.URL, ca.pem, "kubernetes-admin", admin.certPEM, admin.keyPEM, "")
}

// WriteKubeconfig writes a kubeconfig with one cluster, one user and one
// context. Either a client certificate and key or a bearer token is used.
func WriteKubeconfig(path, server string, caPEM []byte, user string, certPEM, keyPEM []byte, token string) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["testenv"] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: caPEM}
	cfg.AuthInfos[user] = &clientcmdapi.AuthInfo{ClientCertificateData: certPEM, ClientKeyData: keyPEM, Token: token}
	cfg.Contexts["testenv"] = &clientcmdapi.Context{Cluster: "testenv", AuthInfo: user}
	cfg.CurrentContext = "testenv"
	return clientcmd.WriteToFile(*cfg, path)
}

// AdminCertificate returns the admin's client certificate and key.
func (k *Kube) AdminCertificate() tls.Certificate {
	c, err := tls.X509KeyPair(k.adminCert, k.adminKey)
	if err != nil {
		panic(fmt.Sprintf("testenv: admin certificate: %v", err))
	}
	return c
}

// CAPEM returns the cluster CA certificate in PEM.
func (k *Kube) CAPEM() []byte { return bytes.Clone(k.caPEM) }

// RESTConfig returns a client configuration for the admin.
func (k *Kube) RESTConfig() *rest.Config {
	return &rest.Config{
		Host: k.URL,
		TLSClientConfig: rest.TLSClientConfig{
			CAData: k.caPEM, CertData: k.adminCert, KeyData: k.adminKey,
		},
		QPS: 200, Burst: 400,
	}
}

// TokenRESTConfig returns a client configuration that authenticates with a
// bearer token, for example a service account's.
func (k *Kube) TokenRESTConfig(token string) *rest.Config {
	return &rest.Config{Host: k.URL, BearerToken: token, TLSClientConfig: rest.TLSClientConfig{CAData: k.caPEM}}
}

// Clientset returns an admin clientset.
func (k *Kube) Clientset() (*kubernetes.Clientset, error) {
	return kubernetes.NewForConfig(k.RESTConfig())
}

func (k *Kube) adminHTTPClient() (*http.Client, error) {
	cert, err := tls.X509KeyPair(k.adminCert, k.adminKey)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(k.caPEM)
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{
		RootCAs: pool, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12,
	}}}, nil
}

// Kubectl returns a command that runs the built kubectl with kubeconfig
// (the admin's when empty). Output is left for the caller to collect.
func (k *Kube) Kubectl(ctx context.Context, kubeconfig string, args ...string) (*exec.Cmd, error) {
	bin, err := Tool("kubectl")
	if err != nil {
		return nil, err
	}
	if kubeconfig == "" {
		kubeconfig = k.AdminKubeconfig
	}
	cmd := exec.CommandContext(ctx, bin, append([]string{"--kubeconfig=" + kubeconfig}, args...)...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+kubeconfig, "HOME="+k.Dir)
	cmd.WaitDelay = 5 * time.Second
	return cmd, nil
}

// Pids returns the process ids of the running components.
func (k *Kube) Pids() []int {
	pids := make([]int, 0, len(k.procs))
	for _, p := range k.procs {
		pids = append(pids, p.Pid())
	}
	return pids
}

// Close stops every component, newest first, and removes a temporary state
// directory. It is idempotent.
func (k *Kube) Close() error {
	k.closeOnce.Do(func() {
		for i := len(k.procs) - 1; i >= 0; i-- {
			k.procs[i].Close()
		}
		if k.echo != nil {
			k.echo.Close()
		}
		if k.tempDir {
			os.RemoveAll(k.Dir)
		}
	})
	return nil
}

func httpOK(c *http.Client, url string) func(context.Context) error {
	return func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		resp, err := c.Do(req)
		if err != nil {
			return err
		}
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%s: %s: %s", url, resp.Status, body)
		}
		return nil
	}
}

func fakeNode(name string) *corev1.Node {
	return &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name:        name,
			Annotations: map[string]string{"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
			Labels: map[string]string{
				"type": "kwok", "kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
			},
		},
		Status: corev1.NodeStatus{
			Allocatable: corev1.ResourceList{
				corev1.ResourceCPU: resource.MustParse("32"), corev1.ResourceMemory: resource.MustParse("256Gi"), corev1.ResourcePods: resource.MustParse("110"),
			},
			Capacity: corev1.ResourceList{
				corev1.ResourceCPU: resource.MustParse("32"), corev1.ResourceMemory: resource.MustParse("256Gi"), corev1.ResourcePods: resource.MustParse("110"),
			},
		},
	}
}

func (k *Kube) createNodes(ctx context.Context, cs kubernetes.Interface, n int) error {
	for i := range n {
		name := fmt.Sprintf("kwok-node-%d", i)
		if _, err := cs.CoreV1().Nodes().Create(ctx, fakeNode(name), metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("testenv: create node %s: %w", name, err)
		}
		k.Nodes = append(k.Nodes, name)
	}
	return nil
}

func nodesReady(cs kubernetes.Interface, names []string) func(context.Context) error {
	return func(ctx context.Context) error {
		for _, name := range names {
			n, err := cs.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			ready := false
			for _, c := range n.Status.Conditions {
				if c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue {
					ready = true
				}
			}
			if !ready {
				return fmt.Errorf("node %s not ready", name)
			}
		}
		return nil
	}
}
