package harness

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	toolscache "k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"
	ctrlcache "sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	clusterv1 "sigs.k8s.io/cluster-api/api/core/v1beta2"
	ipamv1 "sigs.k8s.io/cluster-api/api/ipam/v1beta2"
	"sigs.k8s.io/cluster-api/util/conditions"

	infrav1 "github.com/proxmox-talos/cluster-api-provider-proxmox-talos/api/v1beta1"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/internal/machine"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/internal/testenv"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/pkg/imagefactory"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/pkg/imagefactory/factorysim"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/pkg/proxmox/pvesim"
)

const (
	Namespace    = "bench"
	TalosVersion = "v1.13.9"
	// ClusterLabel marks each Node with its workload cluster; the per-cluster proxy shows a
	// cluster only its own Nodes.
	ClusterLabel = "bench.capi-proxmox-talos.test/cluster"
)

// Options are one run's parameters.
type Options struct {
	N, C int
	// Profile is pvesim's profile: fast or realistic.
	Profile string
	// Platforms run side by side, each against its own pvesim (own Counters): clusters are
	// assigned round-robin.
	Platforms []infrav1.TalosPlatform
	// Probe measures the calls of single VM creates (image not cached, then cached) per
	// platform before the scale phase, on its own cluster.
	Probe bool
	// NodeBoot is the time between "provisioned" and the Node registering Ready, standing
	// in for Talos booting; negative: 60 Proxmox seconds scaled by the profile's time scale.
	NodeBoot time.Duration
	// Window is the steady-state measuring window.
	Window time.Duration
	// ReleaseInterval > 0 releases the bootstrap data of the scale phase's machines one at
	// a time, this far apart, instead of all at once: the overhead is then the provider's
	// own latency per machine while it manages N, not the queue of a burst.
	ReleaseInterval time.Duration
	// SyncPeriod is passed to the manager (--sync-period).
	SyncPeriod time.Duration
	// Timeout bounds convergence and teardown, each.
	Timeout time.Duration
	// ManagerArgs are extra manager flags.
	ManagerArgs []string
	// ManagerEnv are extra NAME=value variables for the manager only (e.g. GOMEMLIMIT, which
	// the manager derives from its container's memory limit when deployed).
	ManagerEnv []string
	// Replicas > 1 runs that many managers behind one webhook forwarder (the scale-out
	// tests), with leader election when LeaderElect; ReplicaArgs[i] are replica i's extra
	// flags (e.g. --watch-filter).
	Replicas    int
	LeaderElect bool
	ReplicaArgs [][]string
	// ManagerBin is a prebuilt manager; empty: build the repository root into Out.
	ManagerBin string
	Out        string
	Logf       func(format string, args ...any)
	// Checkpoint receives the report once the figures are complete, before teardown.
	Checkpoint func(report any)

	// Hooks for other programs (make chaos); nil keeps the benchmark's defaults.
	// PVEConfig adjusts each pvesim's configuration before it starts.
	PVEConfig func(*pvesim.Config)
	// BootstrapData returns a machine's bootstrap data (default: a minimal worker config).
	BootstrapData func(machine string) []byte
	// ClusterSpec adjusts a ProxmoxTalosCluster's spec before it is created.
	ClusterSpec func(cluster string, spec *infrav1.ProxmoxTalosClusterSpec)
}

// Harness holds the processes and servers of one run.
type Harness struct {
	O       Options
	Env     *envtest.Environment
	Cfg     *rest.Config
	K8s     client.Client
	Cache   ctrlcache.Cache
	Factory *factorysim.Server
	PVEs    map[infrav1.TalosPlatform]*pvesim.Server
	Mgrs    []*Manager
	closers []func() error

	proxies []*workloadProxy
	apiHost string
	// Labels are extra labels of a cluster's objects (Cluster, ProxmoxTalosCluster,
	// Machines, ProxmoxTalosMachines), e.g. the watch-filter label of a shard.
	Labels map[string]map[string]string

	Mu       sync.Mutex
	Machines map[string]*MachineRecord // by name
	NodeErrs []error
	Scheme   *runtime.Scheme
	stopped  bool
}

type MachineRecord struct {
	Name, Cluster string
	Platform      infrav1.TalosPlatform
	Probe         bool
	DataReady     time.Time // bootstrap data set on the Machine
	Provisioned   time.Time // harness saw status.initialization.provisioned
	Running       time.Time // harness saw step Running with NodeReady
	// StepSeen is when the harness first saw each status.step (from the cache's watch).
	StepSeen      map[infrav1.MachineStep]time.Time
	nodeScheduled bool
	// TalosVersion overrides the cluster's Talos version on the ProxmoxTalosMachine (a
	// MachineDeployment rollout to a new version creates such machines).
	TalosVersion string
}

func NewScheme() *runtime.Scheme {
	s := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{clientgoscheme.AddToScheme, clusterv1.AddToScheme, ipamv1.AddToScheme, infrav1.AddToScheme} {
		if err := add(s); err != nil {
			panic(err) // static scheme registration cannot fail at run time
		}
	}
	return s
}

func (h *Harness) Logf(format string, args ...any) { h.O.Logf(format, args...) }

// start brings up the API server, the simulators and the manager.
func (h *Harness) Start(ctx context.Context) error {
	h.Scheme = NewScheme()
	h.Machines = map[string]*MachineRecord{}
	if err := os.MkdirAll(h.O.Out, 0o755); err != nil {
		return err
	}
	bin := h.O.ManagerBin
	if bin == "" {
		bin = filepath.Join(h.O.Out, "manager")
		h.Logf("building the manager (go build -o %s .)", bin)
		abs, _ := filepath.Abs(bin)
		cmd := exec.CommandContext(ctx, "go", "build", "-o", abs, ".")
		cmd.Dir = testenv.RepoRoot()
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("building the manager: %w\n%s", err, out)
		}
		bin = abs
	}

	env, err := testenv.New(testenv.Options{Webhooks: true})
	if err != nil {
		return err
	}
	h.Env = env
	h.Logf("starting kube-apiserver and etcd (envtest)")
	if h.Cfg, err = env.Start(); err != nil {
		return fmt.Errorf("starting envtest: %w", err)
	}
	fast := rest.CopyConfig(h.Cfg)
	fast.QPS, fast.Burst = 2000, 4000
	if h.K8s, err = client.New(fast, client.Options{Scheme: h.Scheme}); err != nil {
		return err
	}
	u, err := url.Parse(h.Cfg.Host)
	if err != nil {
		return err
	}
	h.apiHost = u.Host

	h.Factory = factorysim.New(factorysim.Options{})
	if err := h.Factory.Start(); err != nil {
		return err
	}
	h.PVEs = map[infrav1.TalosPlatform]*pvesim.Server{}
	for _, p := range h.O.Platforms {
		cfg := pvesim.Config{
			Version: "9.1.2",
			Profile: h.O.Profile,
			Nodes: []pvesim.NodeConfig{
				// Big nodes: the benchmark measures the provider, not placement refusals.
				{Name: "pve1", Memory: 8 << 40, CPUs: 256}, {Name: "pve2", Memory: 8 << 40, CPUs: 256}, {Name: "pve3", Memory: 8 << 40, CPUs: 256},
			},
			Storages: []pvesim.StorageConfig{
				{Name: "local", Type: "dir", Content: "iso,import", Size: 64 << 40},
				{Name: "local-lvm", Type: "lvmthin", Content: "images", Size: 64 << 40},
				{Name: "images", Type: "dir", Content: "import", Shared: true, Size: 64 << 40},
			},
		}
		if h.O.Profile == pvesim.ProfileFast {
			// "Simulator latency zero": workers end at once; the status tick stays at its
			// 1 ms floor. What remains is the provider's own time.
			cfg.TaskDuration = pvesim.Duration(time.Microsecond)
		}
		if h.O.PVEConfig != nil {
			h.O.PVEConfig(&cfg)
		}
		s, err := pvesim.New(cfg)
		if err != nil {
			return fmt.Errorf("pvesim for %s: %w", p, err)
		}
		if err := s.StartTLS(); err != nil {
			return err
		}
		h.PVEs[p] = s
	}

	// The manager loads its kubeconfig the usual way.
	kubeconfig := filepath.Join(h.O.Out, "kubeconfig")
	if err := clientcmd.WriteToFile(clientcmdapi.Config{
		Clusters:       map[string]*clientcmdapi.Cluster{"env": {Server: h.Cfg.Host, CertificateAuthorityData: h.Cfg.CAData}},
		AuthInfos:      map[string]*clientcmdapi.AuthInfo{"env": {ClientCertificateData: h.Cfg.CertData, ClientKeyData: h.Cfg.KeyData}},
		Contexts:       map[string]*clientcmdapi.Context{"env": {Cluster: "env", AuthInfo: "env"}},
		CurrentContext: "env",
	}, kubeconfig); err != nil {
		return err
	}
	// The namespace comes first: with leader election it holds the Lease.
	if err := h.K8s.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: Namespace}}); err != nil {
		return err
	}
	wh := env.WebhookInstallOptions
	replicas := max(h.O.Replicas, 1)
	var webhookPorts []int
	for i := 0; i < replicas; i++ {
		// Picked together: two ports picked one after the other can be the same (the first
		// listener is closed before the second is opened), and a manager whose health and
		// metrics addresses collide exits at once.
		ports := FreePorts(3)
		m := &Manager{Name: fmt.Sprintf("manager-%d", i), health: ports[0], diag: ports[1], webhook: wh.LocalServingPort}
		args := []string{
			"--health-addr=127.0.0.1:" + strconv.Itoa(m.health),
			"--diagnostics-address=127.0.0.1:" + strconv.Itoa(m.diag), "--insecure-diagnostics",
			"--webhook-cert-dir=" + wh.LocalServingCertDir,
			"--sync-period=" + h.O.SyncPeriod.String(),
		}
		if replicas > 1 {
			// Each replica serves webhooks on its own port behind the forwarder, as pods do
			// behind the webhook Service.
			m.webhook = ports[2]
			webhookPorts = append(webhookPorts, m.webhook)
		}
		if h.O.LeaderElect {
			args = append(args, "--leader-elect", "--leader-election-namespace="+Namespace,
				"--leader-elect-lease-duration=4s", "--leader-elect-renew-deadline=3s", "--leader-elect-retry-period=1s")
		}
		args = append(args, "--webhook-port="+strconv.Itoa(m.webhook))
		args = append(args, h.O.ManagerArgs...)
		if i < len(h.O.ReplicaArgs) {
			args = append(args, h.O.ReplicaArgs[i]...)
		}
		m.bin, m.args, m.Env = bin, args, append(append(os.Environ(), "KUBECONFIG="+kubeconfig), h.O.ManagerEnv...)
		if m.Log, err = os.Create(filepath.Join(h.O.Out, m.Name+".log")); err != nil {
			return err
		}
		h.Logf("starting %s: %s %s", m.Name, bin, strings.Join(args, " "))
		if err := m.Start(); err != nil {
			return err
		}
		h.Mgrs = append(h.Mgrs, m)
	}
	if replicas > 1 {
		if err := h.forwardWebhooks(wh.LocalServingPort, webhookPorts); err != nil {
			return err
		}
	}
	for _, m := range h.Mgrs {
		if err := WaitHTTP(ctx, "http://127.0.0.1:"+strconv.Itoa(m.health)+"/readyz", 2*time.Minute); err != nil {
			return fmt.Errorf("%s not ready (see %s): %w", m.Name, m.Log.Name(), err)
		}
	}

	if h.Cache, err = ctrlcache.New(fast, ctrlcache.Options{Scheme: h.Scheme, DefaultNamespaces: map[string]ctrlcache.Config{Namespace: {}}}); err != nil {
		return err
	}
	inf, err := h.Cache.GetInformer(ctx, &infrav1.ProxmoxTalosMachine{})
	if err != nil {
		return err
	}
	if _, err := inf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { h.observe(ctx, obj) },
		UpdateFunc: func(_, obj any) { h.observe(ctx, obj) },
	}); err != nil {
		return err
	}
	go func() { _ = h.Cache.Start(ctx) }()
	if !h.Cache.WaitForCacheSync(ctx) {
		return errors.New("harness cache did not sync")
	}
	return nil
}

// Manager is one manager process.
type Manager struct {
	Name                  string
	bin                   string
	args, Env             []string
	Cmd                   *exec.Cmd
	Log                   *os.File
	Exited                chan struct{}
	health, diag, webhook int
}

// start (re)starts the process with its arguments, appending to its log.
func (m *Manager) Start() error {
	m.Cmd = exec.Command(m.bin, m.args...)
	m.Cmd.Env = m.Env
	m.Cmd.Stdout, m.Cmd.Stderr = m.Log, m.Log
	if err := m.Cmd.Start(); err != nil {
		return fmt.Errorf("starting %s: %w", m.Name, err)
	}
	exited := make(chan struct{})
	m.Exited = exited
	cmd := m.Cmd
	go func() { _ = cmd.Wait(); close(exited) }()
	return nil
}

// Ready tells whether the process answers its readiness probe.
func (m *Manager) Ready() bool {
	resp, err := http.Get("http://127.0.0.1:" + strconv.Itoa(m.health) + "/readyz") //nolint:noctx // loopback probe
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// Alive tells whether the process is running.
func (m *Manager) Alive() bool {
	select {
	case <-m.Exited:
		return false
	default:
		return true
	}
}

func (m *Manager) MetricsURL() string {
	return "http://127.0.0.1:" + strconv.Itoa(m.diag) + "/metrics"
}

// stop ends the process: gracefully (SIGINT), or at once with kill (SIGKILL, a crash).
func (m *Manager) Stop(kill bool) {
	select {
	case <-m.Exited:
		return
	default:
	}
	if kill {
		_ = m.Cmd.Process.Kill()
	} else {
		_ = m.Cmd.Process.Signal(os.Interrupt)
	}
	select {
	case <-m.Exited:
	case <-time.After(30 * time.Second):
		_ = m.Cmd.Process.Kill()
		<-m.Exited
	}
}

// Leader returns the index of the replica that reports leader_election_master_status 1,
// -1 when none does (a dead replica reports nothing).
func (h *Harness) Leader() (int, error) {
	leader := -1
	for i, m := range h.Mgrs {
		select {
		case <-m.Exited:
			continue
		default:
		}
		resp, err := http.Get(m.MetricsURL()) //nolint:noctx // loopback diagnostics
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			if name, _, v, ok := ParseMetric(sc.Text()); ok && name == "leader_election_master_status" && v == 1 {
				if leader >= 0 {
					resp.Body.Close()
					return -1, fmt.Errorf("two leaders: %s and %s", h.Mgrs[leader].Name, m.Name)
				}
				leader = i
			}
		}
		resp.Body.Close()
	}
	return leader, nil
}

// forwardWebhooks listens on the port the API server calls webhooks on and forwards each
// TCP connection (TLS passes through) to the first replica that accepts it: a Service in
// front of the manager pods.
func (h *Harness) forwardWebhooks(port int, backends []int) error {
	ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port))
	if err != nil {
		return fmt.Errorf("webhook forwarder: %w", err)
	}
	h.closers = append(h.closers, ln.Close)
	go func() {
		for {
			in, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer in.Close()
				var out net.Conn
				for _, b := range backends {
					if out, err = net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(b), time.Second); err == nil {
						break
					}
				}
				if out == nil {
					return
				}
				defer out.Close()
				done := make(chan struct{}, 2)
				go func() { _, _ = io.Copy(out, in); done <- struct{}{} }()
				go func() { _, _ = io.Copy(in, out); done <- struct{}{} }()
				<-done
			}()
		}
	}()
	return nil
}

// stop ends everything start began; safe to call more than once.
func (h *Harness) Stop() {
	h.Mu.Lock()
	if h.stopped {
		h.Mu.Unlock()
		return
	}
	h.stopped = true
	h.Mu.Unlock()
	for _, m := range h.Mgrs {
		m.Stop(false)
		_ = m.Log.Close()
	}
	for _, c := range h.closers {
		_ = c()
	}
	for _, p := range h.proxies {
		_ = p.srv.Close()
	}
	for _, s := range h.PVEs {
		s.Close()
	}
	if h.Factory != nil {
		_ = h.Factory.Close()
	}
	if h.Env != nil {
		_ = h.Env.Stop()
	}
}

// observe records a machine's milestones and registers its Node once it is provisioned,
// after the boot delay, the way Talos's kubelet would.
func (h *Harness) observe(ctx context.Context, obj any) {
	ptm, ok := obj.(*infrav1.ProxmoxTalosMachine)
	if !ok {
		return
	}
	now := time.Now()
	h.Mu.Lock()
	defer h.Mu.Unlock()
	rec := h.Machines[ptm.Name]
	if rec == nil {
		return
	}
	if ptr.Deref(ptm.Status.Initialization.Provisioned, false) && rec.Provisioned.IsZero() {
		rec.Provisioned = now
	}
	if st := ptm.Status.Step; st != "" {
		if rec.StepSeen == nil {
			rec.StepSeen = map[infrav1.MachineStep]time.Time{}
		}
		if _, seen := rec.StepSeen[st]; !seen {
			rec.StepSeen[st] = now
		}
	}
	if ptm.Status.Step == infrav1.StepRunning && conditions.IsTrue(ptm, infrav1.NodeReadyCondition) && rec.Running.IsZero() {
		rec.Running = now
	}
	if !rec.Provisioned.IsZero() && !rec.nodeScheduled {
		rec.nodeScheduled = true
		var ip string
		for _, a := range ptm.Status.Addresses {
			if a.Type == clusterv1.MachineInternalIP {
				ip = a.Address
			}
		}
		name, cluster := rec.Name, rec.Cluster
		time.AfterFunc(h.NodeBoot(), func() {
			if err := h.RegisterNode(ctx, name, cluster, ip); err != nil && ctx.Err() == nil {
				h.Mu.Lock()
				h.NodeErrs = append(h.NodeErrs, err)
				h.Mu.Unlock()
			}
		})
	}
}

func (h *Harness) NodeBoot() time.Duration {
	if h.O.NodeBoot >= 0 {
		return h.O.NodeBoot
	}
	scale := 0.001
	if h.O.Profile == pvesim.ProfileRealistic {
		scale = 0.2
	}
	return time.Duration(60 * scale * float64(time.Second))
}

// registerNode creates the machine's Node, Ready, named like the Machine (the Talos
// hostname), without a providerID (Talos sets none: the provider does).
func (h *Harness) RegisterNode(ctx context.Context, name, cluster, ip string) error {
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{ClusterLabel: cluster}}}
	if err := h.K8s.Create(ctx, n); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating Node %s: %w", name, err)
	}
	// The provider may write the Node (its providerID) between the create and this update;
	// like the kubelet, try again on the fresh object.
	err := retry.RetryOnConflict(retry.DefaultBackoff, func() error {
		if err := h.K8s.Get(ctx, client.ObjectKeyFromObject(n), n); err != nil {
			return err
		}
		n.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady", LastTransitionTime: metav1.Now(), LastHeartbeatTime: metav1.Now()}}
		if ip != "" {
			n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: ip}}
		}
		return h.K8s.Status().Update(ctx, n)
	})
	if err != nil {
		return fmt.Errorf("marking Node %s Ready: %w", name, err)
	}
	return nil
}

// --- workload clusters ---

// workloadProxy is one workload cluster's API server: a reverse proxy to the shared
// envtest API server that shows the cluster only its own Nodes (lists and watches get the
// cluster's label selector). One API server with C filtered views costs one process
// instead of C, and keeps each workload cache as small as a real cluster's.
type workloadProxy struct {
	cluster  string
	srv      *http.Server
	url      string
	requests atomic.Int64
}

func (h *Harness) newWorkloadProxy(cluster string) (*workloadProxy, error) {
	upstream, err := url.Parse(h.Cfg.Host)
	if err != nil {
		return nil, err
	}
	transport, err := rest.TransportFor(h.Cfg)
	if err != nil {
		return nil, err
	}
	p := &workloadProxy{cluster: cluster}
	rp := &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(upstream)
			if r.In.Method == http.MethodGet && r.In.URL.Path == "/api/v1/nodes" {
				q := r.Out.URL.Query()
				sel := ClusterLabel + "=" + cluster
				if s := q.Get("labelSelector"); s != "" {
					sel = s + "," + sel
				}
				q.Set("labelSelector", sel)
				r.Out.URL.RawQuery = q.Encode()
			}
		},
		Transport:     transport,
		FlushInterval: -1, // watches stream
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p.url = "http://" + ln.Addr().String()
	p.srv = &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.requests.Add(1)
		rp.ServeHTTP(w, r)
	})}
	go func() { _ = p.srv.Serve(ln) }()
	h.proxies = append(h.proxies, p)
	return p, nil
}

// --- fixtures: what Cluster API and the bootstrap provider would create ---

func (h *Harness) Create(ctx context.Context, obj client.Object) error {
	obj.SetNamespace(Namespace)
	// The webhook server may still be starting.
	deadline := time.Now().Add(time.Minute)
	for {
		err := h.K8s.Create(ctx, obj)
		if err == nil || apierrors.IsAlreadyExists(err) {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil || !strings.Contains(err.Error(), "webhook") {
			return fmt.Errorf("creating %T %s: %w", obj, obj.GetName(), err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// createCluster creates the credentials Secret, the Cluster, its kubeconfig Secret (the
// workload proxy) and the ProxmoxTalosCluster owned by the Cluster. index picks the
// cluster's address range (127.x.y.0/24, loopback only).
func (h *Harness) CreateCluster(ctx context.Context, name string, index int, platform infrav1.TalosPlatform) error {
	pve := h.PVEs[platform]
	if err := h.Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: name + "-proxmox"},
		Data: map[string][]byte{
			// The simulator's first token (the default one unless PVEConfig set others).
			infrav1.CredentialsTokenIDKey:     []byte(pve.Config().Tokens[0].ID),
			infrav1.CredentialsTokenSecretKey: []byte(pve.Config().Tokens[0].Secret),
			infrav1.CredentialsCABundleKey:    pve.CAPEM(),
		},
	}); err != nil {
		return err
	}
	cl := &clusterv1.Cluster{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: h.labelsOf(name, nil)},
		Spec: clusterv1.ClusterSpec{InfrastructureRef: clusterv1.ContractVersionedObjectReference{
			APIGroup: infrav1.GroupVersion.Group, Kind: "ProxmoxTalosCluster", Name: name,
		}},
	}
	if err := h.Create(ctx, cl); err != nil {
		return err
	}
	proxy, err := h.newWorkloadProxy(name)
	if err != nil {
		return err
	}
	kc, err := clientcmd.Write(clientcmdapi.Config{
		Clusters:       map[string]*clientcmdapi.Cluster{name: {Server: proxy.url}},
		AuthInfos:      map[string]*clientcmdapi.AuthInfo{name: {}},
		Contexts:       map[string]*clientcmdapi.Context{name: {Cluster: name, AuthInfo: name}},
		CurrentContext: name,
	})
	if err != nil {
		return err
	}
	if err := h.Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: name + "-kubeconfig", Labels: map[string]string{clusterv1.ClusterNameLabel: name}},
		Type:       clusterv1.ClusterSecretType,
		Data:       map[string][]byte{"value": kc},
	}); err != nil {
		return err
	}
	a, b := 20+index/200, index%200+10
	spec := infrav1.ProxmoxTalosClusterSpec{
		Proxmox: infrav1.ProxmoxAPI{
			URL:            strings.TrimSuffix(pve.URL(), "/api2/json"),
			CredentialsRef: infrav1.SecretReference{Name: name + "-proxmox"},
		},
		ControlPlaneEndpointPool: "nodes",
		IPPools: []infrav1.IPPool{{
			Name: "nodes", Addresses: []string{fmt.Sprintf("127.%d.%d.10-127.%d.%d.250", a, b, a, b)}, Prefix: 24,
			Gateway: fmt.Sprintf("127.%d.%d.1", a, b), DNSServers: []string{fmt.Sprintf("127.%d.%d.2", a, b)},
		}},
		// factorysim serves plain http on loopback: the documented opt-in.
		Talos:        infrav1.TalosImageSpec{Version: TalosVersion, FactoryURL: h.Factory.URL(), InsecureAllowHTTP: true, Platform: platform},
		ImageStorage: "images",
		ISOStorage:   "local",
	}
	if h.O.ClusterSpec != nil {
		h.O.ClusterSpec(name, &spec)
	}
	return h.Create(ctx, &infrav1.ProxmoxTalosCluster{
		ObjectMeta: metav1.ObjectMeta{
			Name:            name,
			Labels:          h.labelsOf(name, map[string]string{clusterv1.ClusterNameLabel: name}),
			OwnerReferences: []metav1.OwnerReference{OwnerRef(cl, "Cluster")},
		},
		Spec: spec,
	})
}

// labelsOf adds the cluster's extra labels to base.
func (h *Harness) labelsOf(cluster string, base map[string]string) map[string]string {
	if base == nil {
		base = map[string]string{}
	}
	for k, v := range h.Labels[cluster] {
		base[k] = v
	}
	return base
}

func OwnerRef(obj client.Object, kind string) metav1.OwnerReference {
	return metav1.OwnerReference{APIVersion: clusterv1.GroupVersion.String(), Kind: kind, Name: obj.GetName(), UID: obj.GetUID()}
}

// markInfrastructureProvisioned waits for the ProxmoxTalosClusters to report provisioned
// and does what Cluster API then does.
func (h *Harness) MarkInfrastructureProvisioned(ctx context.Context, names []string) error {
	pending := map[string]bool{}
	for _, n := range names {
		pending[n] = true
	}
	var last string
	err := Poll(ctx, h.O.Timeout, func() (bool, error) {
		for n := range pending {
			var infra infrav1.ProxmoxTalosCluster
			if err := h.K8s.Get(ctx, client.ObjectKey{Namespace: Namespace, Name: n}, &infra); err != nil {
				return false, err
			}
			if !ptr.Deref(infra.Status.Initialization.Provisioned, false) {
				last = fmt.Sprintf("%s: %s", n, CondSummary(infra.Status.Conditions))
				continue
			}
			var cl clusterv1.Cluster
			if err := h.K8s.Get(ctx, client.ObjectKey{Namespace: Namespace, Name: n}, &cl); err != nil {
				return false, err
			}
			base := cl.DeepCopy()
			cl.Status.Initialization.InfrastructureProvisioned = ptr.To(true)
			if err := h.K8s.Status().Patch(ctx, &cl, client.MergeFrom(base)); err != nil {
				return false, err
			}
			delete(pending, n)
		}
		return len(pending) == 0, nil
	})
	if err != nil {
		return fmt.Errorf("%d cluster(s) not provisioned (%s): %w", len(pending), last, err)
	}
	return nil
}

// createMachine creates the bootstrap data Secret, the Machine (with or without its
// dataSecretName) and the ProxmoxTalosMachine owned by it.
func (h *Harness) CreateMachine(ctx context.Context, rec *MachineRecord, withData bool) error {
	h.Mu.Lock()
	h.Machines[rec.Name] = rec
	h.Mu.Unlock()
	labels := h.labelsOf(rec.Cluster, map[string]string{clusterv1.ClusterNameLabel: rec.Cluster})
	data := []byte("version: v1alpha1\nmachine:\n  type: worker\n  token: bench-not-a-secret\n")
	if h.O.BootstrapData != nil {
		data = h.O.BootstrapData(rec.Name)
	}
	if err := h.Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: rec.Name + "-bootstrap-data", Labels: map[string]string{clusterv1.ClusterNameLabel: rec.Cluster}},
		Data:       map[string][]byte{"value": data},
	}); err != nil {
		return err
	}
	m := &clusterv1.Machine{
		ObjectMeta: metav1.ObjectMeta{Name: rec.Name, Labels: labels},
		Spec: clusterv1.MachineSpec{
			ClusterName: rec.Cluster,
			InfrastructureRef: clusterv1.ContractVersionedObjectReference{
				APIGroup: infrav1.GroupVersion.Group, Kind: "ProxmoxTalosMachine", Name: rec.Name,
			},
		},
	}
	if withData {
		m.Spec.Bootstrap.DataSecretName = ptr.To(rec.Name + "-bootstrap-data")
		h.Mu.Lock()
		rec.DataReady = time.Now()
		h.Mu.Unlock()
	} else {
		m.Spec.Bootstrap.ConfigRef = clusterv1.ContractVersionedObjectReference{APIGroup: "bootstrap.cluster.x-k8s.io", Kind: "TalosConfig", Name: rec.Name}
	}
	if err := h.Create(ctx, m); err != nil {
		return err
	}
	var talos *infrav1.TalosImageSpec
	if rec.TalosVersion != "" {
		talos = &infrav1.TalosImageSpec{Version: rec.TalosVersion}
	}
	return h.Create(ctx, &infrav1.ProxmoxTalosMachine{
		ObjectMeta: metav1.ObjectMeta{
			Name: rec.Name, Labels: labels,
			OwnerReferences: []metav1.OwnerReference{OwnerRef(m, "Machine")},
		},
		Spec: infrav1.ProxmoxTalosMachineSpec{
			MemoryMiB:      2048,
			NetworkDevices: []infrav1.NetworkDevice{{Name: "net0", IPv4: &infrav1.AddressSource{FromPool: "nodes"}}},
			Talos:          talos,
		},
	})
}

// releaseBootstrapData does what the bootstrap provider does when its data is ready.
func (h *Harness) ReleaseBootstrapData(ctx context.Context, name string) error {
	var m clusterv1.Machine
	if err := h.K8s.Get(ctx, client.ObjectKey{Namespace: Namespace, Name: name}, &m); err != nil {
		return err
	}
	base := m.DeepCopy()
	m.Spec.Bootstrap.DataSecretName = ptr.To(name + "-bootstrap-data")
	h.Mu.Lock()
	h.Machines[name].DataReady = time.Now()
	h.Mu.Unlock()
	return h.K8s.Patch(ctx, &m, client.MergeFrom(base))
}

// waitMachines waits until every named machine satisfies done, as seen by the harness cache.
func (h *Harness) WaitMachines(ctx context.Context, names []string, what string, done func(*infrav1.ProxmoxTalosMachine, *MachineRecord) bool) error {
	var stuck []string
	lastLog := time.Now()
	err := Poll(ctx, h.O.Timeout, func() (bool, error) {
		var list infrav1.ProxmoxTalosMachineList
		if err := h.Cache.List(ctx, &list, client.InNamespace(Namespace)); err != nil {
			return false, err
		}
		if time.Since(lastLog) > 30*time.Second {
			// Progress of long runs: machines per step.
			lastLog = time.Now()
			steps := map[string]int{}
			for i := range list.Items {
				steps[string(list.Items[i].Status.Step)]++
			}
			h.Logf("waiting for %s: %v", what, steps)
		}
		byName := map[string]*infrav1.ProxmoxTalosMachine{}
		for i := range list.Items {
			byName[list.Items[i].Name] = &list.Items[i]
		}
		stuck = stuck[:0]
		h.Mu.Lock()
		defer h.Mu.Unlock()
		for _, n := range names {
			if p := byName[n]; p == nil || !done(p, h.Machines[n]) {
				stuck = append(stuck, n)
			}
		}
		return len(stuck) == 0, nil
	})
	if err != nil {
		return fmt.Errorf("%d of %d machines not %s: %s: %w", len(stuck), len(names), what, h.Describe(ctx, stuck), err)
	}
	return nil
}

// describe summarizes up to 5 machines' steps and conditions for an error.
func (h *Harness) Describe(ctx context.Context, names []string) string {
	var parts []string
	for i, n := range names {
		if i == 5 {
			parts = append(parts, fmt.Sprintf("… and %d more", len(names)-5))
			break
		}
		var p infrav1.ProxmoxTalosMachine
		if err := h.K8s.Get(ctx, client.ObjectKey{Namespace: Namespace, Name: n}, &p); err != nil {
			parts = append(parts, n+": "+err.Error())
			continue
		}
		parts = append(parts, fmt.Sprintf("%s step %s [%s]", n, p.Status.Step, CondSummary(p.Status.Conditions)))
	}
	return strings.Join(parts, "; ")
}

func Running(p *infrav1.ProxmoxTalosMachine, _ *MachineRecord) bool {
	return p.Status.Step == infrav1.StepRunning && conditions.IsTrue(p, infrav1.NodeReadyCondition)
}

func CondSummary(cs []metav1.Condition) string {
	var parts []string
	for _, c := range cs {
		if c.Status != metav1.ConditionTrue {
			parts = append(parts, fmt.Sprintf("%s=%s(%s: %s)", c.Type, c.Status, c.Reason, c.Message))
		}
	}
	return strings.Join(parts, "; ")
}

// --- Counters ---

// Counters is a snapshot of everything the run counts.
type Counters struct {
	PVE        map[infrav1.TalosPlatform]map[string]int
	MgmtAPI    float64 // manager requests to the management API server
	MgmtByVerb map[string]float64
	Workload   int64 // requests through the workload proxies
	Reconcile  map[string]float64
}

func (h *Harness) Snapshot() (Counters, error) {
	c := Counters{PVE: map[infrav1.TalosPlatform]map[string]int{}, Reconcile: map[string]float64{}, MgmtByVerb: map[string]float64{}}
	for p, s := range h.PVEs {
		c.PVE[p] = s.Stats().Calls
	}
	for _, p := range h.proxies {
		c.Workload += p.requests.Load()
	}
	resp, err := http.Get(h.Mgrs[0].MetricsURL()) //nolint:noctx // loopback diagnostics
	if err != nil {
		return c, fmt.Errorf("reading manager metrics: %w", err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		name, labels, v, ok := ParseMetric(line)
		if !ok {
			continue
		}
		switch name {
		case "rest_client_requests_total":
			if labels["host"] == h.apiHost {
				c.MgmtAPI += v
				c.MgmtByVerb[labels["method"]+" "+labels["code"]] += v
			}
		case "controller_runtime_reconcile_total":
			c.Reconcile[labels["controller"]] += v
		}
	}
	return c, sc.Err()
}

var reMetric = regexp.MustCompile(`^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? ([0-9.eE+-]+|NaN|\+Inf|-Inf)$`)
var reLabel = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"`)

// ParseMetric reads one sample line of the Prometheus text format.
func ParseMetric(line string) (string, map[string]string, float64, bool) {
	m := reMetric.FindStringSubmatch(line)
	if m == nil {
		return "", nil, 0, false
	}
	v, err := strconv.ParseFloat(m[3], 64)
	if err != nil {
		return "", nil, 0, false
	}
	labels := map[string]string{}
	for _, l := range reLabel.FindAllStringSubmatch(m[2], -1) {
		labels[l[1]] = l[2]
	}
	return m[1], labels, v, true
}

func DiffCalls(after, before map[string]int) map[string]int {
	out := map[string]int{}
	for k, v := range after {
		if d := v - before[k]; d > 0 {
			out[k] = d
		}
	}
	return out
}

func Total(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

// ProcStats reads the manager's peak RSS (VmHWM) and CPU seconds (utime+stime).
func ProcStats(pid int) (peakRSS uint64, cpu float64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmHWM:" {
			kb, _ := strconv.ParseUint(f[1], 10, 64)
			peakRSS = kb << 10
		}
	}
	b, err = os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, err
	}
	// Fields after the command name (which may hold spaces) start at field 3 (state);
	// utime and stime are fields 14 and 15, in clock ticks (USER_HZ, 100 on Linux).
	rest := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	if len(rest) < 13 {
		return 0, 0, errors.New("short /proc stat")
	}
	ut, _ := strconv.ParseFloat(rest[11], 64)
	st, _ := strconv.ParseFloat(rest[12], 64)
	return peakRSS, (ut + st) / 100, nil
}

// --- leaks ---

// InventoryProblems lists what a pvesim holds that it should not: more than one VM per
// machine during the run (wantVMs > 0), anything at all after teardown (wantVMs == 0).
func InventoryProblems(s *pvesim.Server, machines []string, clusterOf map[string]string) []string {
	inv := s.Inventory()
	var out []string
	if len(machines) > 0 {
		count := map[string]int{}
		for _, vm := range inv.VMs {
			for _, n := range machines {
				if HasTag(vm.Tags, machine.MachineTag(n)) && HasTag(vm.Tags, machine.ClusterTag(clusterOf[n])) {
					count[n]++
				}
			}
		}
		for _, n := range machines {
			if count[n] != 1 {
				out = append(out, fmt.Sprintf("machine %s has %d VMs", n, count[n]))
			}
		}
		if len(inv.VMs) != len(machines) {
			out = append(out, fmt.Sprintf("%d VMs for %d machines", len(inv.VMs), len(machines)))
		}
		return out
	}
	for _, vm := range inv.VMs {
		out = append(out, fmt.Sprintf("VM %d (%s) left", vm.VMID, strings.Join(vm.Tags, ";")))
	}
	for _, content := range []string{"iso", "import", "images"} {
		for _, v := range inv.VolumesByContent(content) {
			out = append(out, "volume "+v.VolID+" left")
		}
	}
	return out
}

func HasTag(tags []string, tag string) bool {
	for _, t := range tags {
		if strings.EqualFold(t, tag) {
			return true
		}
	}
	return false
}

// teardown deletes what Cluster API would delete (machines, then clusters) and waits for
// the provider to remove its finalizers.
func (h *Harness) Teardown(ctx context.Context, clusters []string) error {
	var ptms infrav1.ProxmoxTalosMachineList
	if err := h.K8s.List(ctx, &ptms, client.InNamespace(Namespace)); err != nil {
		return err
	}
	if err := Parallel(ctx, len(ptms.Items), func(i int) error {
		return client.IgnoreNotFound(h.K8s.Delete(ctx, &ptms.Items[i]))
	}); err != nil {
		return err
	}
	for _, n := range clusters {
		if err := client.IgnoreNotFound(h.K8s.Delete(ctx, &infrav1.ProxmoxTalosCluster{ObjectMeta: metav1.ObjectMeta{Namespace: Namespace, Name: n}})); err != nil {
			return err
		}
	}
	var left int
	err := Poll(ctx, h.O.Timeout, func() (bool, error) {
		var m infrav1.ProxmoxTalosMachineList
		var c infrav1.ProxmoxTalosClusterList
		if err := h.K8s.List(ctx, &m, client.InNamespace(Namespace)); err != nil {
			return false, err
		}
		if err := h.K8s.List(ctx, &c, client.InNamespace(Namespace)); err != nil {
			return false, err
		}
		left = len(m.Items) + len(c.Items)
		return left == 0, nil
	})
	if err != nil {
		return fmt.Errorf("%d ProxmoxTalosMachines/Clusters still present after teardown: %w", left, err)
	}
	return nil
}

// --- helpers ---

func Poll(ctx context.Context, timeout time.Duration, cond func() (bool, error)) error {
	deadline := time.Now().Add(timeout)
	for {
		ok, err := cond()
		if err != nil && ctx.Err() != nil {
			return err
		}
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			if err != nil {
				return fmt.Errorf("timed out after %s (last error: %w)", timeout, err)
			}
			return fmt.Errorf("timed out after %s", timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// parallel runs f(0..n-1) on 16 workers and returns the first error.
func Parallel(ctx context.Context, n int, f func(int) error) error {
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
		next  atomic.Int64
	)
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n || ctx.Err() != nil {
					return
				}
				if err := f(i); err != nil {
					mu.Lock()
					if first == nil {
						first = err
					}
					mu.Unlock()
					return
				}
			}
		}()
	}
	wg.Wait()
	return first
}

// FreePorts returns n distinct free loopback ports (0 for a port it could not get): all
// listeners stay open until every port is picked.
func FreePorts(n int) []int {
	ports := make([]int, n)
	for i := range ports {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			continue
		}
		defer l.Close()
		ports[i] = l.Addr().(*net.TCPAddr).Port
	}
	return ports
}

func WaitHTTP(ctx context.Context, u string, timeout time.Duration) error {
	return Poll(ctx, timeout, func() (bool, error) {
		resp, err := http.Get(u) //nolint:noctx // loopback probe
		if err != nil {
			return false, err
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, fmt.Errorf("status %d", resp.StatusCode)
	})
}

// ImageDownload is one factory image's download count.
type ImageDownload struct {
	Platform  string `json:"platform"`
	Schematic string `json:"schematic"`
	Version   string `json:"talosVersion"`
	File      string `json:"file"`
	Storage   string `json:"storage"`
	Downloads int    `json:"downloads"`
}

// ImageDownloads maps "platform schematic(12) version storage" to factory downloads: each
// platform has its own pvesim with one image storage, so a factory path per platform is
// one (schematic, Talos version, storage).
func (h *Harness) ImageDownloads() []ImageDownload {
	var out []ImageDownload
	for path, n := range h.Factory.AllDownloads() {
		// /image/{schematic}/{version}/{file}
		parts := strings.Split(strings.TrimPrefix(path, "/image/"), "/")
		if len(parts) != 3 || !strings.HasSuffix(parts[2], "."+imagefactory.DiskImageFormat) {
			continue
		}
		platform := "nocloud"
		if strings.HasPrefix(parts[2], imagefactory.PlatformMetal) {
			platform = imagefactory.PlatformMetal
		}
		out = append(out, ImageDownload{Platform: platform, Schematic: parts[0], Version: parts[1], File: parts[2], Storage: "images", Downloads: n})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Platform != out[j].Platform {
			return out[i].Platform < out[j].Platform
		}
		return out[i].Schematic < out[j].Schematic
	})
	return out
}
