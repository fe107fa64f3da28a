// Command controlplane runs a Kubernetes control plane on loopback for Chaperone's tests and demo:
// embedded etcd and kube-apiserver in this process, kube-controller-manager in a child process of the
// same binary (the two components keep process-wide state that must not be shared). There is no
// scheduler and no kubelet here: pods are stored and stay Pending, which is all most tests need. The
// local node (e2e/harness/node.ts: containerd, kubelet, kube-proxy, kube-scheduler, CoreDNS) joins this
// control plane when a test or the demo needs pods to run; the controllers it relies on (node lifecycle,
// EndpointSlices, pod garbage collection) run here, idle while there is no node.
//
// It generates a CA, serving and client certificates and service-account signing keys under
// --data-dir, waits for /readyz, then writes an admin kubeconfig to --kubeconfig (atomically, so a
// reader that sees the file can use it) and prints one JSON line describing the endpoints.
// SIGTERM or SIGINT (or stdin closing, with --exit-on-stdin-close) stops everything cleanly.
package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
)

const controllerManagerSubcommand = "__controller-manager"

type options struct {
	dataDir          string
	kubeconfig       string
	port             int
	controllers      bool
	exitOnStdinClose bool
	verbosity        int
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == controllerManagerSubcommand {
		runControllerManager(os.Args[2:])
		return
	}
	var o options
	fs := flag.NewFlagSet("controlplane", flag.ExitOnError)
	fs.StringVar(&o.dataDir, "data-dir", "", "directory for etcd data, certificates and keys (default: a new temporary directory, removed on exit)")
	fs.StringVar(&o.kubeconfig, "kubeconfig", "", "where to write the admin kubeconfig (required)")
	fs.IntVar(&o.port, "port", 0, "kube-apiserver secure port on 127.0.0.1 (default: a free port)")
	fs.BoolVar(&o.controllers, "controllers", true, "also run kube-controller-manager (service accounts, namespaces, Deployments, Jobs, garbage collection)")
	fs.BoolVar(&o.exitOnStdinClose, "exit-on-stdin-close", false, "stop when standard input closes, so the control plane never outlives the process that started it")
	fs.IntVar(&o.verbosity, "v", 0, "log verbosity of kube-apiserver and kube-controller-manager")
	_ = fs.Parse(os.Args[1:])
	if o.kubeconfig == "" {
		fmt.Fprintln(os.Stderr, "controlplane: --kubeconfig is required")
		os.Exit(2)
	}
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "controlplane:", err)
		os.Exit(1)
	}
}

func run(o options) error {
	removeDataDir := false
	if o.dataDir == "" {
		dir, err := os.MkdirTemp("", "chaperone-controlplane-")
		if err != nil {
			return err
		}
		o.dataDir, removeDataDir = dir, true
	}
	if removeDataDir {
		defer os.RemoveAll(o.dataDir)
	}
	if err := os.MkdirAll(o.dataDir, 0o700); err != nil {
		return err
	}
	if o.port == 0 {
		p, err := freePort()
		if err != nil {
			return err
		}
		o.port = p
	}
	pki, err := writePKI(filepath.Join(o.dataDir, "pki"))
	if err != nil {
		return fmt.Errorf("generating certificates: %w", err)
	}

	etcd, etcdURL, err := startEtcd(filepath.Join(o.dataDir, "etcd"))
	if err != nil {
		return fmt.Errorf("starting etcd: %w", err)
	}
	defer etcd.Close()

	serverURL := "https://127.0.0.1:" + strconv.Itoa(o.port)
	adminKubeconfig := filepath.Join(o.dataDir, "admin.kubeconfig")
	if err := os.WriteFile(adminKubeconfig, kubeconfigYAML(serverURL, pki), 0o600); err != nil {
		return err
	}

	if o.exitOnStdinClose {
		go func() {
			_, _ = io.Copy(io.Discard, os.Stdin)
			_ = syscall.Kill(os.Getpid(), syscall.SIGTERM)
		}()
	}

	cmd := apiserver.NewAPIServerCommand()
	cmd.SetArgs(apiserverArgs(o, etcdURL, serverURL, pki))
	apiserverDone := make(chan error, 1)
	go func() { apiserverDone <- cmd.Execute() }()

	readyCtx, cancelReady := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancelReady()
	if err := waitReady(readyCtx, serverURL, pki, apiserverDone); err != nil {
		return err
	}

	var kcm *exec.Cmd
	if o.controllers {
		kcm, err = startControllerManager(o, adminKubeconfig, pki)
		if err != nil {
			return fmt.Errorf("starting kube-controller-manager: %w", err)
		}
	}

	if err := writeFileAtomic(o.kubeconfig, kubeconfigYAML(serverURL, pki)); err != nil {
		return err
	}
	ready, _ := json.Marshal(map[string]any{
		"ready":      true,
		"server":     serverURL,
		"kubeconfig": o.kubeconfig,
		"issuer":     serverURL,
		"jwks":       serverURL + "/openid/v1/jwks",
		"etcd":       etcdURL,
		"dataDir":    o.dataDir,
	})
	fmt.Println(string(ready))

	// The API server's command owns the signal handling: the first SIGTERM/SIGINT starts its graceful
	// shutdown and Execute returns; the controller manager and etcd are stopped after it.
	apiErr := <-apiserverDone
	if kcm != nil && kcm.Process != nil {
		_ = kcm.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = kcm.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = kcm.Process.Kill()
			<-done
		}
	}
	_ = os.Remove(o.kubeconfig)
	return apiErr
}

func apiserverArgs(o options, etcdURL, serverURL string, p pkiFiles) []string {
	return []string{
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(o.port),
		"--etcd-servers=" + etcdURL,
		"--cert-dir=" + filepath.Join(o.dataDir, "apiserver"),
		"--tls-cert-file=" + p.servingCert,
		"--tls-private-key-file=" + p.servingKey,
		"--client-ca-file=" + p.caCert,
		"--service-account-issuer=" + serverURL,
		"--service-account-key-file=" + p.saPublic,
		"--service-account-signing-key-file=" + p.saPrivate,
		"--service-cluster-ip-range=10.96.0.0/16",
		"--authorization-mode=Node,RBAC",
		"--enable-admission-plugins=NamespaceLifecycle,ServiceAccount,NodeRestriction,MutatingAdmissionWebhook,ValidatingAdmissionWebhook,ValidatingAdmissionPolicy",
		// Webhooks behind a Service are dialled at the Service's endpoint (pod) addresses rather than its
		// ClusterIP: this process runs on the host, outside the node's network, where only pod addresses
		// are routed (e2e/harness/node.ts), as with API servers outside the pod network in managed clusters.
		"--enable-aggregator-routing=true",
		// Logs, exec and port-forward reach the kubelet with a client certificate it verifies against this CA.
		"--kubelet-client-certificate=" + p.kubeletClientCert,
		"--kubelet-client-key=" + p.kubeletClientKey,
		"--kubelet-preferred-address-types=InternalIP",
		"--allow-privileged=true",
		"--endpoint-reconciler-type=none",
		"--profiling=false",
		"--v=" + strconv.Itoa(o.verbosity),
	}
}

func startControllerManager(o options, kubeconfig string, p pkiFiles) (*exec.Cmd, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(self, controllerManagerSubcommand,
		"--kubeconfig="+kubeconfig,
		"--authentication-kubeconfig="+kubeconfig,
		"--authorization-kubeconfig="+kubeconfig,
		"--bind-address=127.0.0.1",
		"--secure-port=0",
		"--leader-elect=false",
		"--use-service-account-credentials=false",
		"--service-account-private-key-file="+p.saPrivate,
		"--root-ca-file="+p.caCert,
		"--cluster-signing-cert-file="+p.caCert,
		"--cluster-signing-key-file="+p.caKey,
		// Service accounts and their CA bundle, namespaces, garbage collection, workload controllers that
		// create Pods, RBAC aggregation, CSRs; and for the local node: node lifecycle (lifts the not-ready
		// taint once the kubelet reports Ready), taint eviction, pod garbage collection and EndpointSlices
		// (Services in front of pods: kube-proxy, CoreDNS and webhook routing read them).
		"--controllers=serviceaccount-controller,root-ca-certificate-publisher-controller,namespace-controller,"+
			"garbage-collector-controller,deployment-controller,replicaset-controller,replicationcontroller-controller,"+
			"statefulset-controller,job-controller,cronjob-controller,ttl-after-finished-controller,"+
			"clusterrole-aggregation-controller,resourcequota-controller,disruption-controller,"+
			"certificatesigningrequest-signing-controller,certificatesigningrequest-approving-controller,"+
			"certificatesigningrequest-cleaner-controller,node-lifecycle-controller,taint-eviction-controller,"+
			"pod-garbage-collector-controller,endpointslice-controller,endpoints-controller",
		"--v="+strconv.Itoa(o.verbosity),
	)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	// If this process dies without cleaning up, the kernel ends the child too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	return cmd, cmd.Start()
}

func runControllerManager(args []string) {
	cmd := controllermanager.NewControllerManagerCommand()
	cmd.SetArgs(args)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	go func() {
		<-ctx.Done()
		os.Exit(0)
	}()
	if err := cmd.Execute(); err != nil {
		os.Exit(1)
	}
}

func startEtcd(dir string) (*embed.Etcd, string, error) {
	clientPort, err := freePort()
	if err != nil {
		return nil, "", err
	}
	peerPort, err := freePort()
	if err != nil {
		return nil, "", err
	}
	cfg := embed.NewConfig()
	cfg.Dir = dir
	cfg.Name = "chaperone"
	cfg.LogLevel = "error"
	clientURL := url.URL{Scheme: "http", Host: "127.0.0.1:" + strconv.Itoa(clientPort)}
	peerURL := url.URL{Scheme: "http", Host: "127.0.0.1:" + strconv.Itoa(peerPort)}
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{clientURL}, []url.URL{clientURL}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{peerURL}, []url.URL{peerURL}
	cfg.InitialCluster = cfg.Name + "=" + peerURL.String()
	// Tests create and throw away clusters; fsync per write buys nothing there and costs seconds.
	cfg.UnsafeNoFsync = true
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, "", err
	}
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(60 * time.Second):
		e.Close()
		return nil, "", errors.New("etcd did not become ready in 60s")
	}
	return e, clientURL.String(), nil
}

func waitReady(ctx context.Context, serverURL string, p pkiFiles, apiserverDone <-chan error) error {
	client, err := adminHTTPClient(p)
	if err != nil {
		return err
	}
	for {
		select {
		case err := <-apiserverDone:
			return fmt.Errorf("kube-apiserver exited before it was ready: %v", err)
		case <-ctx.Done():
			return errors.New("kube-apiserver was not ready within 3 minutes")
		case <-time.After(200 * time.Millisecond):
		}
		resp, err := client.Get(serverURL + "/readyz")
		if err != nil {
			continue
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			return nil
		}
	}
}

func adminHTTPClient(p pkiFiles) (*http.Client, error) {
	cert, err := tls.LoadX509KeyPair(p.adminCert, p.adminKey)
	if err != nil {
		return nil, err
	}
	caPEM, err := os.ReadFile(p.caCert)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	return &http.Client{
		Timeout:   5 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}}},
	}, nil
}

type pkiFiles struct {
	caCert, caKey           string
	servingCert, servingKey string
	adminCert, adminKey     string
	saPublic, saPrivate     string
	// kube-apiserver's client identity towards kubelets (system:masters, like kubeadm's apiserver-kubelet-client).
	kubeletClientCert, kubeletClientKey string
}

// writePKI creates a CA, an API server serving certificate for loopback, an admin client certificate in
// system:masters, and an RSA service-account signing key pair (RS256, like most clusters).
func writePKI(dir string) (pkiFiles, error) {
	p := pkiFiles{
		caCert: filepath.Join(dir, "ca.crt"), caKey: filepath.Join(dir, "ca.key"),
		servingCert: filepath.Join(dir, "apiserver.crt"), servingKey: filepath.Join(dir, "apiserver.key"),
		adminCert: filepath.Join(dir, "admin.crt"), adminKey: filepath.Join(dir, "admin.key"),
		saPublic: filepath.Join(dir, "sa.pub"), saPrivate: filepath.Join(dir, "sa.key"),
		kubeletClientCert: filepath.Join(dir, "apiserver-kubelet-client.crt"), kubeletClientKey: filepath.Join(dir, "apiserver-kubelet-client.key"),
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return p, err
	}
	if _, err := os.Stat(p.saPrivate); err == nil {
		return p, nil // reuse an existing data dir's PKI so restarts keep tokens and clients valid
	}
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return p, err
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "chaperone-test-ca"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return p, err
	}
	caCert, _ := x509.ParseCertificate(caDER)
	if err := writeCertAndKey(p.caCert, p.caKey, caDER, caKey); err != nil {
		return p, err
	}
	leaf := func(certPath, keyPath string, tmpl *x509.Certificate) error {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return err
		}
		tmpl.SerialNumber = serial()
		tmpl.NotBefore, tmpl.NotAfter = now.Add(-time.Hour), now.Add(365*24*time.Hour)
		tmpl.KeyUsage = x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
		if err != nil {
			return err
		}
		return writeCertAndKey(certPath, keyPath, der, key)
	}
	if err := leaf(p.servingCert, p.servingKey, &x509.Certificate{
		Subject:     pkix.Name{CommonName: "kube-apiserver"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback, net.IPv4(10, 96, 0, 1)},
		DNSNames:    []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"},
	}); err != nil {
		return p, err
	}
	if err := leaf(p.adminCert, p.adminKey, &x509.Certificate{
		Subject:     pkix.Name{CommonName: "chaperone-admin", Organization: []string{"system:masters"}},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}); err != nil {
		return p, err
	}
	if err := leaf(p.kubeletClientCert, p.kubeletClientKey, &x509.Certificate{
		Subject:     pkix.Name{CommonName: "kube-apiserver-kubelet-client", Organization: []string{"system:masters"}},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}); err != nil {
		return p, err
	}
	saKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return p, err
	}
	pubDER, err := x509.MarshalPKIXPublicKey(&saKey.PublicKey)
	if err != nil {
		return p, err
	}
	if err := os.WriteFile(p.saPublic, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER}), 0o600); err != nil {
		return p, err
	}
	return p, os.WriteFile(p.saPrivate, pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(saKey)}), 0o600)
}

func writeCertAndKey(certPath, keyPath string, der []byte, key *ecdsa.PrivateKey) error {
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	if err := os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		return err
	}
	return os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600)
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 126))
	return n
}

func kubeconfigYAML(serverURL string, p pkiFiles) []byte {
	read := func(path string) string {
		b, _ := os.ReadFile(path)
		return base64Std(b)
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, `apiVersion: v1
kind: Config
clusters:
- name: chaperone-local
  cluster:
    server: %s
    certificate-authority-data: %s
users:
- name: chaperone-admin
  user:
    client-certificate-data: %s
    client-key-data: %s
contexts:
- name: chaperone-local
  context:
    cluster: chaperone-local
    user: chaperone-admin
current-context: chaperone-local
`, serverURL, read(p.caCert), read(p.adminCert), read(p.adminKey))
	return b.Bytes()
}

func writeFileAtomic(path string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func base64Std(b []byte) string { return base64.StdEncoding.EncodeToString(b) }
