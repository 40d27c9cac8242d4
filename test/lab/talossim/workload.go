package talossim

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// apiStartTimeout bounds etcd + kube-apiserver startup on a loaded 2-core CI box.
const apiStartTimeout = 90 * time.Second

// workload is a running workload control plane: one etcd and one
// kube-apiserver on the cluster's control-plane endpoint. It stands in for the
// static pods of all control-plane nodes (a single API server behind the VIP).
type workload struct {
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{} // closed when start finished (successfully or not)
	procs  []*proc
	client kubernetes.Interface // set before done closes, on success
	config *rest.Config         // admin config of client
}

type proc struct {
	cmd    *exec.Cmd
	exited chan struct{}
}

// ensureWorkload starts the API server in the background unless it runs.
func (c *cluster) ensureWorkload() {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.w != nil {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	w := &workload{ctx: ctx, cancel: cancel, done: make(chan struct{})}
	c.w = w
	go func() {
		defer close(w.done)
		start := time.Now()
		if err := w.start(c); err != nil {
			c.sim.logf("cluster %s: workload API server failed to start: %v", c.name, err)
			w.kill()
			return
		}
		c.sim.logf("cluster %s: workload API server ready on %s after %s", c.name, c.endpoint.Host, time.Since(start).Round(time.Millisecond))
		go c.monitorNodes(w.ctx, w.client)
		c.sim.mu.Lock()
		m := c.manifests
		c.sim.mu.Unlock()
		if m != nil {
			// In the background: kubelets register meanwhile, as on a real control plane.
			go func() {
				if err := c.applyBootstrapManifests(w.ctx, w.config, m); err != nil && w.ctx.Err() == nil {
					c.sim.logf("cluster %s: bootstrap manifests: %v", c.name, err)
				}
			}()
		}
	}()
}

// readyClient returns an admin client once the API server answers /readyz.
func (c *cluster) readyClient() kubernetes.Interface {
	c.wmu.Lock()
	w := c.w
	c.wmu.Unlock()
	if w == nil {
		return nil
	}
	select {
	case <-w.done:
		return w.client
	default:
		return nil
	}
}

func (c *cluster) apiReady() bool { return c.readyClient() != nil }

// stopWorkload stops the API server and etcd; etcd's data directory stays, so
// the cluster comes back with its objects when a member boots again.
func (c *cluster) stopWorkload() {
	c.wmu.Lock()
	w := c.w
	c.w = nil
	c.wmu.Unlock()
	if w == nil {
		return
	}
	w.cancel()
	<-w.done
	w.kill()
	c.sim.logf("cluster %s: workload API server stopped", c.name)
}

// dirs returns the log directory (under ArtifactsDir) and the private
// directory for keys and etcd data (under the simulator's temp dir, because
// artifacts may be uploaded and keys must not be).
func (c *cluster) dirs() (logDir, privDir string) {
	sum := sha256.Sum256([]byte(c.endpoint.String()))
	return filepath.Join(c.sim.opts.ArtifactsDir, c.name),
		filepath.Join(c.sim.tempDir, c.name+"-"+hex.EncodeToString(sum[:4]))
}

func (w *workload) start(c *cluster) error {
	c.sim.mu.Lock()
	k8sCA, saKey, ep := c.k8sCA, c.saKeyPEM, c.endpoint
	c.sim.mu.Unlock()
	if k8sCA == nil || k8sCA.key == nil || len(saKey) == 0 {
		return errors.New("no control-plane config with cluster.ca and service-account keys seen")
	}
	ip, err := netip.ParseAddr(ep.Hostname())
	if err != nil || !ip.IsLoopback() {
		return fmt.Errorf("endpoint host %q is not a loopback IP; the lab only binds 127.0.0.0/8", ep.Hostname())
	}
	port := ep.Port()
	if port == "" {
		port = "443"
	}
	assets := c.sim.opts.AssetsDir
	for _, b := range []string{"kube-apiserver", "etcd"} {
		if _, err := os.Stat(filepath.Join(assets, b)); err != nil {
			return fmt.Errorf("binary %s not found in AssetsDir", b)
		}
	}
	logDir, privDir := c.dirs()
	for _, d := range []string{logDir, filepath.Join(privDir, "pki"), filepath.Join(privDir, "etcd")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return err
		}
	}

	serving, err := k8sCA.issue("kube-apiserver", nil,
		[]net.IP{ip.AsSlice(), net.ParseIP("127.0.0.1"), net.ParseIP("10.96.0.1")},
		[]string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"})
	if err != nil {
		return err
	}
	admin, err := k8sCA.issue("talossim-admin", []string{"system:masters"}, nil, nil)
	if err != nil {
		return err
	}
	pki := filepath.Join(privDir, "pki")
	files := map[string][]byte{"ca.crt": k8sCA.certPEM, "apiserver.crt": serving.certPEM, "apiserver.key": serving.keyPEM, "sa.key": saKey}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(pki, name), data, 0o600); err != nil {
			return err
		}
	}

	clientPort, peerPort, err := freePorts()
	if err != nil {
		return err
	}
	etcdURL := "http://127.0.0.1:" + strconv.Itoa(clientPort)
	peerURL := "http://127.0.0.1:" + strconv.Itoa(peerPort)
	if err := w.run(filepath.Join(assets, "etcd"), filepath.Join(logDir, "etcd.log"),
		"--name=default", "--data-dir="+filepath.Join(privDir, "etcd"),
		"--listen-client-urls="+etcdURL, "--advertise-client-urls="+etcdURL,
		"--listen-peer-urls="+peerURL, "--initial-advertise-peer-urls="+peerURL,
		"--initial-cluster=default="+peerURL,
		// A lab etcd needs no durability; fsync dominates startup on shared CI disks.
		"--unsafe-no-fsync=true"); err != nil {
		return err
	}
	if err := waitHTTP(w.ctx, http.DefaultClient, etcdURL+"/health"); err != nil {
		return fmt.Errorf("etcd: %w (see %s)", err, filepath.Join(logDir, "etcd.log"))
	}

	if err := w.run(filepath.Join(assets, "kube-apiserver"), filepath.Join(logDir, "kube-apiserver.log"),
		"--etcd-servers="+etcdURL,
		"--bind-address="+ip.String(), "--secure-port="+port, "--advertise-address="+ip.String(),
		// Required with a loopback advertise address (see lab-wiring.md).
		"--endpoint-reconciler-type=none",
		"--tls-cert-file="+filepath.Join(pki, "apiserver.crt"), "--tls-private-key-file="+filepath.Join(pki, "apiserver.key"),
		// cluster.ca as client CA: the <cluster>-kubeconfig CACPPT mints works unchanged.
		"--client-ca-file="+filepath.Join(pki, "ca.crt"),
		"--authorization-mode=RBAC",
		"--service-account-issuer=https://"+ep.Host,
		"--service-account-key-file="+filepath.Join(pki, "sa.key"),
		"--service-account-signing-key-file="+filepath.Join(pki, "sa.key"),
		// Allocation range only: nothing routes service traffic in the lab.
		"--service-cluster-ip-range=10.96.0.0/12",
		"--allow-privileged=true",
		"--cert-dir="+pki,
	); err != nil {
		return err
	}

	cfg := &rest.Config{
		Host: "https://" + ep.Host,
		TLSClientConfig: rest.TLSClientConfig{
			CAData: k8sCA.certPEM, CertData: admin.certPEM, KeyData: admin.keyPEM,
		},
		QPS: 50, Burst: 100, Timeout: 10 * time.Second,
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	deadline := time.Now().Add(apiStartTimeout)
	for {
		ctx, cancel := context.WithTimeout(w.ctx, 5*time.Second)
		_, err = cs.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		cancel()
		if err == nil {
			w.client, w.config = cs, cfg
			return nil
		}
		if w.ctx.Err() != nil {
			return w.ctx.Err()
		}
		if time.Now().After(deadline) || w.anyExited() {
			return fmt.Errorf("kube-apiserver not ready: %v (see %s)", err, filepath.Join(logDir, "kube-apiserver.log"))
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// run starts a binary with its output in logPath.
func (w *workload) run(bin, logPath string, args ...string) error {
	if err := w.ctx.Err(); err != nil {
		return err
	}
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		_ = logFile.Close()
		return fmt.Errorf("starting %s: %w", filepath.Base(bin), err)
	}
	p := &proc{cmd: cmd, exited: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		_ = logFile.Close()
		close(p.exited)
	}()
	w.procs = append(w.procs, p)
	return nil
}

func (w *workload) anyExited() bool {
	for _, p := range w.procs {
		select {
		case <-p.exited:
			return true
		default:
		}
	}
	return false
}

// kill stops processes in reverse start order (API server before etcd):
// SIGTERM, then SIGKILL after a grace period.
func (w *workload) kill() {
	for i := len(w.procs) - 1; i >= 0; i-- {
		p := w.procs[i]
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.exited:
		case <-time.After(10 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.exited
		}
	}
	w.procs = nil
}

// freePorts picks two free TCP ports on 127.0.0.1 for etcd.
func freePorts() (int, int, error) {
	var ports []int
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			_ = l.Close()
		}
	}()
	for range 2 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, 0, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports[0], ports[1], nil
}

func waitHTTP(ctx context.Context, hc *http.Client, url string) error {
	deadline := time.Now().Add(apiStartTimeout)
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := hc.Do(req)
		if err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if time.Now().After(deadline) {
			return errors.New("not healthy in time")
		}
		time.Sleep(100 * time.Millisecond)
	}
}
