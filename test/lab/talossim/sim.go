package talossim

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sort"
	"sync"
	"time"

	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/pkg/proxmox/pvesim"
)

// Options configures a Sim.
type Options struct {
	// AssetsDir holds the kube-apiserver and etcd binaries (internal/testenv.AssetsDir()).
	AssetsDir string
	// ArtifactsDir receives the logs of workload API servers and etcds, one
	// directory per cluster. Empty means a temporary directory.
	ArtifactsDir string
	// Logf receives progress messages; nil discards them. Secrets are never logged.
	Logf func(format string, args ...any)
	// KubeletReadyDelay is the delay between Node registration and Ready (default 1s).
	KubeletReadyDelay time.Duration
	// NodeMonitorGracePeriod is how long a Node may go without a kubelet heartbeat before
	// the node lifecycle controller marks it Ready=Unknown (kube-controller-manager's
	// --node-monitor-grace-period; default 50s as upstream, the lab uses seconds).
	NodeMonitorGracePeriod time.Duration
	// HeartbeatInterval is how often a kubelet renews its node Lease (upstream 10s;
	// default a quarter of NodeMonitorGracePeriod).
	HeartbeatInterval time.Duration
	// HostReachable reports whether a VM's Proxmox node can be reached: false while the
	// node is offline, when its guests can neither heartbeat nor answer apid. Nil means
	// always reachable. The lab asks pvesim.
	HostReachable func(vmid int) bool
	// Schematics resolves the schematic ID in a VM's disk image name to the schematic, so a
	// node knows its extensions (the lab asks factorysim). Required once images carry one.
	Schematics SchematicLookup
}

// NodeInfo is a snapshot of one simulated node.
type NodeInfo struct {
	VMID     int
	VMName   string
	Hostname string
	Address  netip.Addr
	Role     string // RoleControlPlane or RoleWorker
	Cluster  string // cluster.clusterName from the machine config
	Endpoint string // cluster.controlPlane.endpoint
	// Booted is true while the VM is powered on and its config was accepted.
	Booted bool
	// APIDListening is true while apid answers on Address:50000 (workers
	// wait for a control plane carrying the OS CA key, as they wait for trustd).
	APIDListening bool
	EtcdMember    bool
	// ClusterBootstrapped and APIReady describe the node's workload cluster.
	ClusterBootstrapped bool
	APIReady            bool
}

// Sim is the Talos node simulator. Its methods are safe for concurrent use.
type Sim struct {
	opts    Options
	tempDir string // private: workload keys and etcd data

	mu       sync.Mutex
	nodes    map[int]*node       // by VMID: PVE VMIDs are cluster-wide unique
	clusters map[string]*cluster // by control-plane endpoint URL
	refused  map[int]refusal     // by VMID: powered on, not booted
	closed   bool
}

// New returns a simulator; nothing listens until a VM powers on.
func New(opts Options) (*Sim, error) {
	if opts.KubeletReadyDelay <= 0 {
		opts.KubeletReadyDelay = time.Second
	}
	if opts.NodeMonitorGracePeriod <= 0 {
		opts.NodeMonitorGracePeriod = 50 * time.Second
	}
	if opts.HeartbeatInterval <= 0 {
		opts.HeartbeatInterval = opts.NodeMonitorGracePeriod / 4
	}
	if opts.Logf == nil {
		opts.Logf = func(string, ...any) {}
	}
	tmp, err := os.MkdirTemp("", "talossim-")
	if err != nil {
		return nil, err
	}
	if opts.ArtifactsDir == "" {
		opts.ArtifactsDir = tmp
	}
	return &Sim{opts: opts, tempDir: tmp, nodes: map[int]*node{}, clusters: map[string]*cluster{}, refused: map[int]refusal{}}, nil
}

func (s *Sim) logf(format string, args ...any) { s.opts.Logf("talossim: "+format, args...) }

// OnPowerOn boots the VM as a Talos node. A power-on of a running VM (PVE
// reboot/reset) is a reboot: the old incarnation shuts down first. Errors are
// logged, not returned, because pvesim hooks cannot fail a start.
func (s *Sim) OnPowerOn(ev pvesim.PowerEvent) {
	s.shutdown(ev.VMID)
	spec, err := s.parseSpec(ev)
	if err == nil {
		err = s.boot(ev, spec)
	}
	s.mu.Lock()
	if err != nil {
		s.refused[ev.VMID] = refusal{vmName: ev.Name, err: err.Error()}
	} else {
		delete(s.refused, ev.VMID)
	}
	s.mu.Unlock()
	if err != nil {
		s.logf("VM %d (%s): not booting: %v", ev.VMID, ev.Name, err)
	}
}

// SetSchematics sets Options.Schematics after New (the lab creates its factory and its node
// simulator independently).
func (s *Sim) SetSchematics(lookup SchematicLookup) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.opts.Schematics = lookup
}

// refusal is why a powered-on VM did not boot as a node.
type refusal struct {
	vmName string
	err    string
}

// Refusals maps the name of every powered-on VM that did not boot to the reason: Talos'
// error for a refused machine config (the node sits in maintenance mode), or what the lab
// cannot host. The lab names them when a cluster does not turn Available.
func (s *Sim) Refusals() map[string]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]string, len(s.refused))
	for _, r := range s.refused {
		out[r.vmName] = r.err
	}
	return out
}

// installedExtensions lists the official extensions of the schematic an image was built from.
// No schematic (a disk that is not a factory image) means a stock Talos image: none.
func (s *Sim) installedExtensions(schematicID string) ([]string, error) {
	if schematicID == "" {
		return nil, nil
	}
	s.mu.Lock()
	lookup := s.opts.Schematics
	s.mu.Unlock()
	if lookup == nil {
		return nil, fmt.Errorf("image has schematic %s but the simulator has no schematic lookup (Options.Schematics)", schematicID)
	}
	sc, err := lookup(schematicID)
	if err != nil {
		return nil, fmt.Errorf("schematic %s of the boot image: %w", schematicID, err)
	}
	return sc.Customization.SystemExtensions.OfficialExtensions, nil
}

// OnPowerOff stops the node: apid stops answering and the kubelet stops heartbeating. The
// Node object stays, as in a real cluster: the node lifecycle controller turns it
// Ready=Unknown after NodeMonitorGracePeriod, and whoever deletes the machine (Cluster API,
// CACPPT) deletes the Node. An etcd member stays a member until it leaves or is removed. The
// last node of a cluster to stop takes the workload API server and etcd down with it.
func (s *Sim) OnPowerOff(ev pvesim.PowerEvent) {
	s.mu.Lock()
	delete(s.refused, ev.VMID)
	s.mu.Unlock()
	s.shutdown(ev.VMID)
}

// reachable is Options.HostReachable, true without it.
func (s *Sim) reachable(vmid int) bool {
	s.mu.Lock()
	f := s.opts.HostReachable
	s.mu.Unlock()
	return f == nil || f(vmid)
}

// SetHostReachable sets Options.HostReachable after New (the lab creates pvesim and the
// node simulator independently).
func (s *Sim) SetHostReachable(f func(vmid int) bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.opts.HostReachable = f
}

// Nodes lists the booted nodes, sorted by address.
func (s *Sim) Nodes() []NodeInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]NodeInfo, 0, len(s.nodes))
	for _, n := range s.nodes {
		c := n.cluster
		out = append(out, NodeInfo{
			VMID: n.vmid, VMName: n.vmName, Hostname: n.spec.hostname, Address: n.spec.addr,
			Role: n.spec.role, Cluster: c.name, Endpoint: c.endpoint.String(),
			Booted: true, APIDListening: n.apid != nil, EtcdMember: c.memberByHost(n.spec.hostname) != nil,
			ClusterBootstrapped: c.bootstrapped, APIReady: c.apiReady(),
		})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Address.Less(out[j].Address) })
	return out
}

// Close stops every apid, kubelet, API server and etcd the simulator started.
func (s *Sim) Close() error {
	s.mu.Lock()
	s.closed = true
	ids := make([]int, 0, len(s.nodes))
	for id := range s.nodes {
		ids = append(ids, id)
	}
	s.mu.Unlock()
	for _, id := range ids {
		s.shutdown(id)
	}
	s.mu.Lock()
	clusters := make([]*cluster, 0, len(s.clusters))
	for _, c := range s.clusters {
		clusters = append(clusters, c)
	}
	s.mu.Unlock()
	for _, c := range clusters {
		c.stopWorkload()
	}
	return os.RemoveAll(s.tempDir)
}

// boot registers the node, starts apid and the kubelet stand-in, and joins
// etcd when its cluster is already bootstrapped.
func (s *Sim) boot(ev pvesim.PowerEvent, spec *nodeSpec) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return errors.New("simulator closed")
	}
	for _, other := range s.nodes {
		if other.spec.addr == spec.addr {
			s.mu.Unlock()
			return fmt.Errorf("address %s already used by VM %d", spec.addr, other.vmid)
		}
	}
	c := s.clusterFor(spec)
	n := newNode(s, ev, spec, c)
	s.nodes[n.vmid] = n
	// Workers cannot mint an apid certificate without the OS CA key, which only
	// control-plane configs carry (real workers get theirs from trustd).
	pending := []*node{n}
	if spec.role == RoleControlPlane {
		for _, other := range s.nodes {
			if other != n && other.cluster == c && other.apid == nil {
				pending = append(pending, other)
			}
		}
	}
	join := spec.role == RoleControlPlane && c.bootstrapped && c.memberByHost(spec.hostname) == nil
	if join {
		c.addMember(spec.hostname, spec.addr)
	}
	needAPI := c.bootstrapped && c.memberByHost(spec.hostname) != nil
	s.mu.Unlock()

	for _, p := range pending {
		if err := s.startAPID(p); err != nil {
			s.logf("node %s: apid: %v", p.spec.hostname, err)
		}
	}
	if join {
		s.logf("node %s joined etcd of cluster %s", spec.hostname, c.name)
	}
	n.recordBoot()
	n.startKubelet()
	if needAPI {
		c.ensureWorkload()
	}
	s.logf("node %s (%s, %s) booted for cluster %s", spec.hostname, spec.addr, spec.role, c.name)
	return nil
}

// clusterFor finds or creates the cluster record. Callers hold s.mu.
func (s *Sim) clusterFor(spec *nodeSpec) *cluster {
	// A cluster is its endpoint and its Talos OS CA: a new cluster created later on the same
	// VIP (after the previous one was deleted) has a new CA and must not inherit the old
	// one's etcd membership or bootstrapped state.
	key := spec.endpoint.String()
	if spec.osCA != nil && spec.osCA.cert != nil {
		sum := sha256.Sum256(spec.osCA.cert.Raw)
		key += "#" + hex.EncodeToString(sum[:8])
	}
	c, ok := s.clusters[key]
	if !ok {
		c = newCluster(s, spec)
		s.clusters[key] = c
	}
	c.learn(spec)
	return c
}

// shutdown stops a node (power-off, reboot, simulator close). Its Node object stays: a
// rebooting kubelet updates the same Node, a stopped one leaves it to the node lifecycle
// controller.
func (s *Sim) shutdown(vmid int) {
	s.mu.Lock()
	n, ok := s.nodes[vmid]
	if ok {
		delete(s.nodes, vmid)
	}
	var last bool
	if ok {
		last = true
		for _, other := range s.nodes {
			if other.cluster == n.cluster {
				last = false
			}
		}
	}
	s.mu.Unlock()
	if !ok {
		return
	}
	n.stop()
	s.logf("node %s (%s) stopped", n.spec.hostname, n.spec.addr)
	if last {
		n.cluster.stopWorkload()
	}
}

// nodeByTarget resolves a `nodes` metadata entry (address or hostname) to a
// running node, as apid would by dialing it.
func (s *Sim) nodeByTarget(target string) *node {
	addr, _ := netip.ParseAddr(target)
	s.mu.Lock()
	var found *node
	for _, n := range s.nodes {
		if (addr.IsValid() && n.spec.addr == addr) || n.spec.hostname == target {
			if n.apid != nil {
				found = n
			}
			break
		}
	}
	s.mu.Unlock()
	// Asked outside s.mu: HostReachable asks pvesim.
	if found == nil || !s.reachable(found.vmid) {
		return nil
	}
	return found
}
