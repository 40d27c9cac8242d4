package lab

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/controller-runtime/pkg/client"

	clusterv1 "sigs.k8s.io/cluster-api/api/core/v1beta2"
	ipamv1 "sigs.k8s.io/cluster-api/api/ipam/v1beta2"

	infrav1 "github.com/proxmox-talos/cluster-api-provider-proxmox-talos/api/v1beta1"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/internal/testenv"
)

// Provider names; also the names of the managers' log files.
const (
	ProviderCAPI   = "capi-core"
	ProviderCABPT  = "cabpt"
	ProviderCACPPT = "cacppt"
	ProviderOurs   = "capi-proxmox-talos"
)

// MgmtOptions configure the management plane.
type MgmtOptions struct {
	// ArtifactsDir receives logs, kubeconfigs, certificates and the built manager.
	ArtifactsDir string
	Logf         func(format string, args ...any)
	// Clusterctl, when set, installs the four providers with the real `clusterctl init`
	// from this local repository; otherwise the lab installs them by hand (CRDs and webhook
	// configurations from the providers' config/ trees).
	Clusterctl *ClusterctlRepo
	// ManagerBinary is this provider's manager already built (a second management cluster
	// reuses the first one's); empty builds it into <artifacts>/bin/manager.
	ManagerBinary string
	// ProviderArgs are extra flags for this provider's manager (e.g. a short
	// --node-loss-handover-after).
	ProviderArgs []string
}

// Management is a management cluster made of processes on loopback: etcd, kube-apiserver and
// the four managers (CAPI core, CABPT, CACPPT and ours), installed by `clusterctl init` or by
// hand the way clusterctl would. Either way the managers run as processes: the Deployments
// clusterctl creates never run (there are no kubelets), so the lab scales them to zero and
// points every webhook at the processes.
type Management struct {
	// Kubeconfig is the admin kubeconfig (client certificate in system:masters).
	Kubeconfig string
	RESTConfig *rest.Config
	Client     client.Client
	CA         *CA
	// Repo is the clusterctl repository the providers were installed from (nil: by hand).
	Repo *ClusterctlRepo
	// ManagerBinary is this provider's manager binary the management cluster runs.
	ManagerBinary string
	// ClusterctlLog collects the output of every clusterctl command run against this
	// management cluster.
	ClusterctlLog string

	artifacts string
	logf      func(string, ...any)
	procs     []*Process
	managers  map[string]*managerSpec
	mu        sync.Mutex
}

// managerSpec is one provider: its binary, its install material and its ports.
type managerSpec struct {
	name string
	// label is clusterctl's manifest label of the provider (cluster.x-k8s.io/provider).
	label       string
	bin         string
	crdDirs     []string
	crdLabels   map[string]string
	webhooks    string
	extraArgs   []string
	webhookPort int
	healthPort  int
	diagPort    int
	proc        *Process
}

// Scheme knows the kinds the lab reads typed.
func Scheme() *runtime.Scheme {
	s := runtime.NewScheme()
	_ = clientgoscheme.AddToScheme(s)
	_ = clusterv1.AddToScheme(s)
	_ = ipamv1.AddToScheme(s)
	_ = infrav1.AddToScheme(s)
	return s
}

// labBinaryDir asks hack/lab-binaries.sh for a provider's cache dir; it builds what is missing
// (cached afterwards), so the first run is slow and every later one instant.
func labBinaryDir(ctx context.Context, name string) (string, error) {
	root := testenv.RepoRoot()
	build := exec.CommandContext(ctx, filepath.Join(root, "hack", "lab-binaries.sh"), name)
	build.Dir = root
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		return "", fmt.Errorf("hack/lab-binaries.sh %s: %w", name, err)
	}
	out, err := exec.CommandContext(ctx, filepath.Join(root, "hack", "lab-binaries.sh"), "--dir", name).Output()
	if err != nil {
		return "", fmt.Errorf("hack/lab-binaries.sh --dir %s: %w", name, err)
	}
	return strings.TrimSpace(string(out)), nil
}

// StartManagement starts etcd, kube-apiserver and the managers and returns once every manager
// is ready and its webhook server answers. On error everything already started is stopped.
func StartManagement(ctx context.Context, opts MgmtOptions) (_ *Management, err error) {
	if opts.Logf == nil {
		opts.Logf = func(string, ...any) {}
	}
	art, err := filepath.Abs(opts.ArtifactsDir)
	if err != nil {
		return nil, err
	}
	m := &Management{artifacts: art, logf: opts.Logf, managers: map[string]*managerSpec{},
		Repo: opts.Clusterctl, ClusterctlLog: filepath.Join(art, "clusterctl.log")}
	defer func() {
		if err != nil {
			m.Stop()
		}
	}()
	for _, d := range []string{"pki", "etcd", "bin", "webhook-certs"} {
		if err := os.MkdirAll(filepath.Join(art, d), 0o700); err != nil {
			return nil, err
		}
	}

	// Our manager builds while etcd and the API server start.
	buildErr := make(chan error, 1)
	ourBin := opts.ManagerBinary
	if ourBin == "" {
		ourBin = filepath.Join(art, "bin", "manager")
		go func() {
			cmd := exec.CommandContext(ctx, "go", "build", "-o", ourBin, ".")
			cmd.Dir = testenv.RepoRoot()
			out, err := cmd.CombinedOutput()
			if err != nil {
				err = fmt.Errorf("go build manager: %w\n%s", err, out)
			}
			buildErr <- err
		}()
	} else {
		buildErr <- nil
	}
	m.ManagerBinary = ourBin

	assets, err := testenv.AssetsDir()
	if err != nil {
		return nil, err
	}
	dirs := map[string]string{}
	for _, n := range []string{ProviderCAPI, ProviderCABPT, ProviderCACPPT} {
		if dirs[n], err = labBinaryDir(ctx, n); err != nil {
			return nil, err
		}
	}

	if m.CA, err = NewCA("proxmox-talos-lab"); err != nil {
		return nil, err
	}
	pki := filepath.Join(art, "pki")
	if err := os.WriteFile(filepath.Join(pki, "ca.crt"), m.CA.CertPEM, 0o600); err != nil {
		return nil, err
	}

	ports, err := freePorts(3 + 4*4)
	if err != nil {
		return nil, err
	}
	etcdClient, etcdPeer, apiPort := ports[0], ports[1], ports[2]
	next := 3
	nextPort := func() int { p := ports[next]; next++; return p }

	capiDir, cabptDir, cacpptDir := dirs[ProviderCAPI], dirs[ProviderCABPT], dirs[ProviderCACPPT]
	// The raw CABPT/CACPPT CRD bases lack the contract labels their kustomization adds; without
	// them CAPI cannot resolve which of their versions implements its contract.
	talosLabels := map[string]string{
		"cluster.x-k8s.io/v1alpha3": "v1alpha3",
		"cluster.x-k8s.io/v1alpha4": "v1alpha3",
		"cluster.x-k8s.io/v1beta1":  "v1alpha3",
	}
	root := testenv.RepoRoot()
	specs := []*managerSpec{
		{name: ProviderCAPI, label: "cluster-api", bin: filepath.Join(capiDir, "manager"),
			crdDirs:  []string{filepath.Join(capiDir, "core", "config", "crd", "bases")},
			webhooks: filepath.Join(capiDir, "core", "config", "webhook", "manifests.yaml"),
			// ClusterResourceSet is on by default; ClusterTopology is asked for explicitly.
			extraArgs: []string{"--feature-gates=ClusterTopology=true"}},
		{name: ProviderCABPT, label: "bootstrap-talos", bin: filepath.Join(cabptDir, "manager"),
			crdDirs: []string{filepath.Join(cabptDir, "config", "crd", "bases")}, crdLabels: talosLabels,
			webhooks: filepath.Join(cabptDir, "config", "webhook", "manifests.yaml")},
		{name: ProviderCACPPT, label: "control-plane-talos", bin: filepath.Join(cacpptDir, "manager"),
			crdDirs: []string{filepath.Join(cacpptDir, "config", "crd", "bases")}, crdLabels: talosLabels,
			webhooks: filepath.Join(cacpptDir, "config", "webhook", "manifests.yaml")},
		{name: ProviderOurs, label: "infrastructure-proxmox-talos", bin: ourBin,
			crdDirs:   []string{filepath.Join(root, "config", "crd", "bases")},
			crdLabels: map[string]string{"cluster.x-k8s.io/v1beta2": "v1beta1"},
			webhooks:  filepath.Join(root, "config", "webhook", "manifests.yaml"),
			extraArgs: opts.ProviderArgs},
	}
	for _, s := range specs {
		s.webhookPort, s.healthPort, s.diagPort = nextPort(), nextPort(), nextPort()
		_ = nextPort() // spare, keeps the port plan simple to extend
		m.managers[s.name] = s
	}

	if err := m.startEtcd(ctx, assets, etcdClient, etcdPeer); err != nil {
		return nil, err
	}
	if err := m.startAPIServer(ctx, assets, apiPort, etcdClient); err != nil {
		return nil, err
	}

	// CRDs, conversion and admission webhooks go in before any manager starts, as clusterctl
	// init does; webhooks that point at a manager not yet up are harmless because nothing
	// is created until every manager answers.
	if m.Repo != nil {
		if err := m.clusterctlInit(ctx, specs); err != nil {
			return nil, err
		}
	} else {
		for _, s := range specs {
			if err := m.installCRDs(ctx, s); err != nil {
				return nil, err
			}
			if err := m.installWebhooks(ctx, s); err != nil {
				return nil, err
			}
		}
	}
	if err := <-buildErr; err != nil {
		return nil, err
	}
	for _, s := range specs {
		if err := m.startManager(s); err != nil {
			return nil, err
		}
	}
	for _, s := range specs {
		if err := m.waitManager(ctx, s); err != nil {
			return nil, err
		}
	}
	return m, nil
}

func (m *Management) track(p *Process) {
	m.mu.Lock()
	m.procs = append(m.procs, p)
	m.mu.Unlock()
}

func (m *Management) startEtcd(ctx context.Context, assets string, clientPort, peerPort int) error {
	clientURL := fmt.Sprintf("http://127.0.0.1:%d", clientPort)
	peerURL := fmt.Sprintf("http://127.0.0.1:%d", peerPort)
	p, err := startProcess("etcd", m.artifacts, filepath.Join(assets, "etcd"), []string{
		"--name=lab", "--data-dir=" + filepath.Join(m.artifacts, "etcd"),
		"--listen-client-urls=" + clientURL, "--advertise-client-urls=" + clientURL,
		"--listen-peer-urls=" + peerURL, "--initial-advertise-peer-urls=" + peerURL,
		"--initial-cluster=lab=" + peerURL,
		// A lab's data is thrown away: fsync only slows the shared cores down.
		"--unsafe-no-fsync=true",
	}, nil)
	if err != nil {
		return err
	}
	m.track(p)
	return poll(ctx, 200*time.Millisecond, "etcd health", func() (bool, error) {
		if err := exitedErr(p); err != nil {
			return false, permanentError{err}
		}
		resp, err := http.Get(clientURL + "/health")
		if err != nil {
			return false, err
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, nil
	})
}

func exitedErr(p *Process) error {
	if exited, err := p.Exited(); exited {
		return fmt.Errorf("%s exited (%v); see %s:\n%s", p.Name, err, p.LogPath, tail(p.LogPath, 15))
	}
	return nil
}

// tail returns the last n lines of a log, to make a failure readable without opening files.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func (m *Management) startAPIServer(ctx context.Context, assets string, port, etcdPort int) error {
	pki := filepath.Join(m.artifacts, "pki")
	serving, err := m.CA.Serving("kube-apiserver")
	if err != nil {
		return err
	}
	certFile, keyFile, err := serving.WriteTo(filepath.Join(pki, "apiserver"))
	if err != nil {
		return err
	}
	saKey, err := newServiceAccountKey()
	if err != nil {
		return err
	}
	saFile := filepath.Join(pki, "sa.key")
	if err := os.WriteFile(saFile, saKey, 0o600); err != nil {
		return err
	}
	caFile := filepath.Join(pki, "ca.crt")
	p, err := startProcess("kube-apiserver", m.artifacts, filepath.Join(assets, "kube-apiserver"), []string{
		fmt.Sprintf("--etcd-servers=http://127.0.0.1:%d", etcdPort),
		fmt.Sprintf("--secure-port=%d", port),
		"--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
		// 1.37 refuses a loopback advertise address with the default endpoint reconciler.
		"--endpoint-reconciler-type=none",
		"--tls-cert-file=" + certFile, "--tls-private-key-file=" + keyFile,
		"--client-ca-file=" + caFile,
		"--authorization-mode=RBAC",
		"--service-account-issuer=https://127.0.0.1/lab",
		"--service-account-key-file=" + saFile, "--service-account-signing-key-file=" + saFile,
		// Allocation only: nothing ever dials a Service IP of the management cluster.
		"--service-cluster-ip-range=10.0.0.0/24",
		"--allow-privileged=true",
	}, nil)
	if err != nil {
		return err
	}
	m.track(p)

	admin, err := m.CA.Client("lab-admin", "system:masters")
	if err != nil {
		return err
	}
	host := fmt.Sprintf("https://127.0.0.1:%d", port)
	m.Kubeconfig = filepath.Join(m.artifacts, "management.kubeconfig")
	if err := writeKubeconfig(m.Kubeconfig, "lab-management", host, m.CA.CertPEM, admin.CertPEM, admin.KeyPEM); err != nil {
		return err
	}
	m.RESTConfig = &rest.Config{Host: host, TLSClientConfig: rest.TLSClientConfig{
		CAData: m.CA.CertPEM, CertData: admin.CertPEM, KeyData: admin.KeyPEM}, QPS: 50, Burst: 100}
	if m.Client, err = client.New(m.RESTConfig, client.Options{Scheme: Scheme()}); err != nil {
		return err
	}
	hc, err := rest.HTTPClientFor(m.RESTConfig)
	if err != nil {
		return err
	}
	return poll(ctx, 250*time.Millisecond, "kube-apiserver /readyz", func() (bool, error) {
		if err := exitedErr(p); err != nil {
			return false, permanentError{err}
		}
		resp, err := hc.Get(host + "/readyz")
		if err != nil {
			return false, err
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, nil
	})
}

// writeKubeconfig writes a kubeconfig with one cluster, user and context.
func writeKubeconfig(path, name, server string, caPEM, certPEM, keyPEM []byte) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters[name] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: caPEM}
	cfg.AuthInfos[name] = &clientcmdapi.AuthInfo{ClientCertificateData: certPEM, ClientKeyData: keyPEM}
	cfg.Contexts[name] = &clientcmdapi.Context{Cluster: name, AuthInfo: name}
	cfg.CurrentContext = name
	return clientcmd.WriteToFile(*cfg, path)
}

var crdGVK = schema.GroupVersionKind{Group: "apiextensions.k8s.io", Version: "v1", Kind: "CustomResourceDefinition"}

// installCRDs applies a provider's CRDs with its contract labels; a CRD serving more than one
// version converts through the provider's webhook server (/convert), as clusterctl's
// kustomize patches would configure it.
func (m *Management) installCRDs(ctx context.Context, s *managerSpec) error {
	var names []string
	for _, dir := range s.crdDirs {
		objs, err := readYAMLDir(dir)
		if err != nil {
			return err
		}
		for _, o := range objs {
			if o.GroupVersionKind() != crdGVK {
				continue
			}
			labels := o.GetLabels()
			if labels == nil {
				labels = map[string]string{}
			}
			for k, v := range s.crdLabels {
				labels[k] = v
			}
			o.SetLabels(labels)
			versions, _, _ := unstructured.NestedSlice(o.Object, "spec", "versions")
			if len(versions) > 1 {
				conv := map[string]any{
					"strategy": "Webhook",
					"webhook": map[string]any{
						"conversionReviewVersions": []any{"v1", "v1beta1"},
						"clientConfig":             m.clientConfig(s, "/convert"),
					},
				}
				if err := unstructured.SetNestedField(o.Object, conv, "spec", "conversion"); err != nil {
					return err
				}
			}
			if err := m.apply(ctx, o); err != nil {
				return fmt.Errorf("CRD %s: %w", o.GetName(), err)
			}
			names = append(names, o.GetName())
		}
	}
	if err := m.waitEstablished(ctx, names); err != nil {
		return err
	}
	m.logf("installed %d CRDs of %s", len(names), s.name)
	return nil
}

// clientConfig is a webhook client configuration that reaches a manager's process on
// loopback, trusted through the lab CA.
func (m *Management) clientConfig(s *managerSpec, path string) map[string]any {
	return map[string]any{
		"url":      fmt.Sprintf("https://127.0.0.1:%d%s", s.webhookPort, path),
		"caBundle": base64.StdEncoding.EncodeToString(m.CA.CertPEM),
	}
}

// pointWebhooksAt replaces the service reference of every webhook of a Mutating- or
// ValidatingWebhookConfiguration with the manager's loopback URL, keeping each path.
func (m *Management) pointWebhooksAt(o *unstructured.Unstructured, s *managerSpec) error {
	hooks, _, _ := unstructured.NestedSlice(o.Object, "webhooks")
	for i, h := range hooks {
		hm, ok := h.(map[string]any)
		if !ok {
			return fmt.Errorf("%s %s: webhook %d is not an object", o.GetKind(), o.GetName(), i)
		}
		cc, _ := hm["clientConfig"].(map[string]any)
		path := "/"
		if svc, ok := cc["service"].(map[string]any); ok {
			if p, ok := svc["path"].(string); ok {
				path = p
			}
		}
		hm["clientConfig"] = m.clientConfig(s, path)
		hooks[i] = hm
	}
	return unstructured.SetNestedSlice(o.Object, hooks, "webhooks")
}

// waitEstablished waits for CRDs to be Established, so the managers' informers find their
// kinds at once.
func (m *Management) waitEstablished(ctx context.Context, names []string) error {
	for _, n := range names {
		err := poll(ctx, 100*time.Millisecond, "CRD "+n+" established", func() (bool, error) {
			u := &unstructured.Unstructured{}
			u.SetGroupVersionKind(crdGVK)
			if err := m.Client.Get(ctx, client.ObjectKey{Name: n}, u); err != nil {
				return false, err
			}
			conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
			for _, c := range conds {
				cm, _ := c.(map[string]any)
				if cm["type"] == "Established" && cm["status"] == "True" {
					return true, nil
				}
			}
			return false, nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// installWebhooks applies a provider's admission webhook configurations with each service
// reference replaced by the manager's loopback URL. Every provider names its configurations
// alike (mutating-webhook-configuration, ...), so the provider name is prefixed.
func (m *Management) installWebhooks(ctx context.Context, s *managerSpec) error {
	objs, err := readYAMLFile(s.webhooks)
	if err != nil {
		return err
	}
	for _, o := range objs {
		kind := o.GetKind()
		if kind != "MutatingWebhookConfiguration" && kind != "ValidatingWebhookConfiguration" {
			continue
		}
		o.SetName(s.name + "-" + o.GetName())
		o.SetNamespace("")
		if err := m.pointWebhooksAt(o, s); err != nil {
			return err
		}
		if err := m.apply(ctx, o); err != nil {
			return fmt.Errorf("%s %s: %w", kind, o.GetName(), err)
		}
	}
	return nil
}

func (m *Management) startManager(s *managerSpec) error {
	kp, err := m.CA.Serving(s.name + "-webhook")
	if err != nil {
		return err
	}
	certDir := filepath.Join(m.artifacts, "webhook-certs", s.name)
	if _, _, err := kp.WriteTo(certDir); err != nil {
		return err
	}
	args := append([]string{
		"--kubeconfig=" + m.Kubeconfig,
		fmt.Sprintf("--webhook-port=%d", s.webhookPort),
		"--webhook-cert-dir=" + certDir,
		// Defaults bind every interface and collide between managers.
		fmt.Sprintf("--health-addr=127.0.0.1:%d", s.healthPort),
		fmt.Sprintf("--diagnostics-address=127.0.0.1:%d", s.diagPort),
		"--insecure-diagnostics",
	}, s.extraArgs...)
	p, err := startProcess(s.name, m.artifacts, s.bin, args, nil)
	if err != nil {
		return err
	}
	s.proc = p
	m.track(p)
	return nil
}

func (m *Management) waitManager(ctx context.Context, s *managerSpec) error {
	start := time.Now()
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(m.CA.CertPEM)
	err := poll(ctx, 250*time.Millisecond, s.name+" ready", func() (bool, error) {
		if err := exitedErr(s.proc); err != nil {
			return false, permanentError{err}
		}
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/readyz", s.healthPort))
		if err != nil {
			return false, err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return false, fmt.Errorf("readyz: %s", resp.Status)
		}
		// The webhook server must present a certificate the API server trusts.
		conn, err := tls.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", s.webhookPort), &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"})
		if err != nil {
			return false, fmt.Errorf("webhook server: %w", err)
		}
		conn.Close()
		return true, nil
	})
	if err != nil {
		return err
	}
	m.logf("%s ready in %s (webhooks on 127.0.0.1:%d, log %s)", s.name, time.Since(start).Round(100*time.Millisecond), s.webhookPort, s.proc.LogPath)
	return nil
}

// apply server-side applies one object with the lab as field manager.
func (m *Management) apply(ctx context.Context, o *unstructured.Unstructured) error {
	o.SetManagedFields(nil)
	o.SetResourceVersion("")
	//nolint:staticcheck // client.Apply with unstructured objects is what clusterctl-like installers use.
	return m.Client.Patch(ctx, o, client.Apply, client.FieldOwner("proxmox-talos-lab"), client.ForceOwnership)
}

// Processes lists the lab's child processes.
func (m *Management) Processes() []*Process {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]*Process(nil), m.procs...)
}

// StopManagers ends the four managers and leaves the API server and etcd running: after
// `clusterctl move` the source management cluster stays readable while another set of
// managers reconciles the moved cluster elsewhere.
func (m *Management) StopManagers() {
	var wg sync.WaitGroup
	for _, s := range m.managers {
		if s.proc != nil {
			wg.Add(1)
			go func() { defer wg.Done(); s.proc.Stop(10 * time.Second) }()
		}
	}
	wg.Wait()
}

// Stop ends the managers first (so nothing reconciles against a vanishing API server), then
// the API server, then etcd.
func (m *Management) Stop() {
	procs := m.Processes()
	sort.SliceStable(procs, func(i, j int) bool { return stopRank(procs[i].Name) < stopRank(procs[j].Name) })
	var wg sync.WaitGroup
	for _, rank := range []int{0, 1, 2} {
		for _, p := range procs {
			if stopRank(p.Name) == rank {
				wg.Add(1)
				go func() { defer wg.Done(); p.Stop(10 * time.Second) }()
			}
		}
		wg.Wait()
	}
}

func stopRank(name string) int {
	switch name {
	case "kube-apiserver":
		return 1
	case "etcd":
		return 2
	}
	return 0
}

// ManagerLogs maps each manager to its log file.
func (m *Management) ManagerLogs() map[string]string {
	out := map[string]string{}
	for n, s := range m.managers {
		if s.proc != nil {
			out[n] = s.proc.LogPath
		}
	}
	return out
}

// CheckManagersAlive returns an error naming any manager that exited.
func (m *Management) CheckManagersAlive() error {
	var errs []error
	for _, s := range m.managers {
		if s.proc != nil {
			if err := exitedErr(s.proc); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}
