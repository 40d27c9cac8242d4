package talossim

import (
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"net/netip"
	"net/url"
	"sort"
	"sync"

	"github.com/siderolabs/talos/pkg/machinery/api/machine"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// cluster is one workload cluster, keyed by its control-plane endpoint: the
// etcd membership model plus the workload API server lifecycle (workload.go).
// Membership fields are guarded by sim.mu.
type cluster struct {
	sim      *Sim
	name     string
	endpoint *url.URL

	// Learned from control-plane configs (workers carry certificates only).
	osCA     *ca
	k8sCA    *ca
	saKeyPEM []byte

	bootstrapped bool
	// manifests are the bootstrap node's inline and extra manifests, applied once the
	// workload API server answers (manifests.go).
	manifests *bootstrapManifests
	members   []*member
	leader    uint64
	left      map[string]bool // hostnames whose etcd left or was removed

	wmu sync.Mutex
	w   *workload // running (or starting) API server + etcd; nil when down
}

type member struct {
	id       uint64
	hostname string
	addr     netip.Addr
}

func newCluster(s *Sim, spec *nodeSpec) *cluster {
	return &cluster{sim: s, name: spec.clusterName, endpoint: spec.endpoint, left: map[string]bool{}}
}

// learn keeps the first CA keys seen. Callers hold sim.mu.
func (c *cluster) learn(spec *nodeSpec) {
	if spec.osCA != nil && spec.osCA.key != nil && (c.osCA == nil || c.osCA.key == nil) {
		c.osCA = spec.osCA
	}
	if spec.k8sCA != nil && spec.k8sCA.key != nil && (c.k8sCA == nil || c.k8sCA.key == nil) {
		c.k8sCA = spec.k8sCA
	}
	if len(spec.saKeyPEM) > 0 && len(c.saKeyPEM) == 0 {
		c.saKeyPEM = spec.saKeyPEM
	}
}

// memberByHost finds a member by hostname. Callers hold sim.mu.
func (c *cluster) memberByHost(hostname string) *member {
	for _, m := range c.members {
		if m.hostname == hostname {
			return m
		}
	}
	return nil
}

func (c *cluster) isMember(hostname string) bool {
	c.sim.mu.Lock()
	defer c.sim.mu.Unlock()
	return c.memberByHost(hostname) != nil
}

func (c *cluster) hasLeft(hostname string) bool {
	c.sim.mu.Lock()
	defer c.sim.mu.Unlock()
	return c.left[hostname]
}

// addMember adds an etcd member with a random non-zero ID, as etcd assigns.
// Callers hold sim.mu.
func (c *cluster) addMember(hostname string, addr netip.Addr) {
	var b [8]byte
	var id uint64
	for id == 0 {
		_, _ = rand.Read(b[:])
		id = binary.BigEndian.Uint64(b[:])
	}
	c.members = append(c.members, &member{id: id, hostname: hostname, addr: addr})
	delete(c.left, hostname)
	if c.leader == 0 {
		c.leader = id
	}
}

// removeMemberLocked drops a member and moves leadership if needed. Callers hold sim.mu.
func (c *cluster) removeMemberLocked(id uint64) bool {
	for i, m := range c.members {
		if m.id == id {
			c.members = append(c.members[:i], c.members[i+1:]...)
			c.left[m.hostname] = true
			if c.leader == id {
				c.leader = 0
				if len(c.members) > 0 {
					c.leader = c.members[0].id
				}
			}
			return true
		}
	}
	return false
}

// bootstrap creates etcd with n as its first member. Control planes already
// booted join right away (real ones keep retrying until etcd is up); the
// workload API server then starts in the background, as Bootstrap returns
// before Talos has etcd and the control-plane pods running.
func (c *cluster) bootstrap(n *node) error {
	c.sim.mu.Lock()
	if n.spec.role != RoleControlPlane {
		c.sim.mu.Unlock()
		return status.Error(codes.FailedPrecondition, "bootstrap is not available on worker nodes")
	}
	if c.bootstrapped {
		c.sim.mu.Unlock()
		return status.Error(codes.AlreadyExists, "etcd data directory is not empty")
	}
	c.bootstrapped = true
	c.manifests = n.spec.manifests
	c.addMember(n.spec.hostname, n.spec.addr)
	for _, other := range c.sim.nodes {
		if other != n && other.cluster == c && other.spec.role == RoleControlPlane && c.memberByHost(other.spec.hostname) == nil {
			c.addMember(other.spec.hostname, other.spec.addr)
		}
	}
	c.sim.mu.Unlock()
	c.sim.logf("cluster %s bootstrapped by %s", c.name, n.spec.hostname)
	c.ensureWorkload()
	return nil
}

// requireMember fails like Talos does when the node's etcd is not running.
// Callers hold sim.mu.
func (c *cluster) requireMember(n *node) (*member, error) {
	if n.spec.role != RoleControlPlane {
		return nil, status.Error(codes.FailedPrecondition, "etcd is not available on worker nodes")
	}
	m := c.memberByHost(n.spec.hostname)
	if !c.bootstrapped || m == nil {
		return nil, status.Error(codes.Unavailable, "etcd is not running on this node")
	}
	return m, nil
}

func (c *cluster) memberList(n *node) ([]*machine.EtcdMember, error) {
	c.sim.mu.Lock()
	defer c.sim.mu.Unlock()
	if _, err := c.requireMember(n); err != nil {
		return nil, err
	}
	out := make([]*machine.EtcdMember, 0, len(c.members))
	for _, m := range c.members {
		out = append(out, &machine.EtcdMember{
			Id: m.id, Hostname: m.hostname,
			PeerUrls:   []string{fmt.Sprintf("https://%s", netip.AddrPortFrom(m.addr, 2380))},
			ClientUrls: []string{fmt.Sprintf("https://%s", netip.AddrPortFrom(m.addr, 2379))},
		})
	}
	return out, nil
}

// forfeitLeadership returns the leader's hostname after moving leadership
// off n (when another member exists).
func (c *cluster) forfeitLeadership(n *node) (string, error) {
	c.sim.mu.Lock()
	defer c.sim.mu.Unlock()
	m, err := c.requireMember(n)
	if err != nil {
		return "", err
	}
	if c.leader == m.id {
		for _, other := range c.members {
			if other.id != m.id {
				c.leader = other.id
				break
			}
		}
	}
	for _, other := range c.members {
		if other.id == c.leader {
			return other.hostname, nil
		}
	}
	return "", nil
}

func (c *cluster) leave(n *node) error {
	c.sim.mu.Lock()
	defer c.sim.mu.Unlock()
	m, err := c.requireMember(n)
	if err != nil {
		return err
	}
	if len(c.members) == 1 {
		// etcd refuses to remove its last member.
		return status.Error(codes.FailedPrecondition, "etcdserver: re-configuration failed due to not enough started members")
	}
	c.removeMemberLocked(m.id)
	c.sim.logf("node %s left etcd of cluster %s", n.spec.hostname, c.name)
	return nil
}

func (c *cluster) removeMember(n *node, id uint64) error {
	c.sim.mu.Lock()
	defer c.sim.mu.Unlock()
	if _, err := c.requireMember(n); err != nil {
		return err
	}
	if !c.removeMemberLocked(id) {
		return status.Error(codes.NotFound, "etcdserver: member not found")
	}
	c.sim.logf("etcd member %x removed from cluster %s via %s", id, c.name, n.spec.hostname)
	return nil
}

// EtcdMembers lists the etcd member hostnames of the bootstrapped cluster named name that
// has running nodes, what `talosctl etcd members` shows through any of its control planes;
// nil when there is none.
func (s *Sim) EtcdMembers(name string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, n := range s.nodes {
		c := n.cluster
		if c.name != name || !c.bootstrapped {
			continue
		}
		out := make([]string, 0, len(c.members))
		for _, m := range c.members {
			out = append(out, m.hostname)
		}
		sort.Strings(out)
		return out
	}
	return nil
}
