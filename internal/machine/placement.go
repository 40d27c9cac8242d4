package machine

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/google/uuid"

	"sigs.k8s.io/controller-runtime/pkg/client"

	clusterv1 "sigs.k8s.io/cluster-api/api/core/v1beta2"
	"sigs.k8s.io/cluster-api/util"

	infrav1 "github.com/proxmox-talos/cluster-api-provider-proxmox-talos/api/v1beta1"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/pkg/proxmox"
)

// placementNodesMaxAge is the oldest /nodes snapshot placement uses.
const placementNodesMaxAge = 5 * time.Second

// ErrNoNodeFits means no candidate node has room for the VM.
var ErrNoNodeFits = errors.New("no Proxmox node fits")

// place chooses the Proxmox node and records it in spec.node before anything is put on
// the node (ISO, VM), so a restart cannot scatter one machine's resources.
func (r *Reconciler) place(ctx context.Context, s *Scope) (result, error) {
	s.PTM.Status.FailureDomain = s.Machine.Spec.FailureDomain
	if s.PTM.Spec.Node != "" {
		r.setCondition(s, infrav1.PlacedCondition, true, infrav1.ReadyReason, "Placed on node "+s.PTM.Spec.Node)
		if s.PTM.Spec.SMBIOSUUID == "" && !vmCreated(s) {
			// Pinned by the user: the identity still has to be recorded first.
			s.PTM.Spec.SMBIOSUUID = uuid.NewString()
			return r.persistNow()
		}
		return next()
	}
	s.PTM.Status.Step = infrav1.StepPlacingVM

	// One placement at a time in this process, so parallel machines see each other.
	r.placeMu.Lock()
	defer r.placeMu.Unlock()

	in, err := r.placementInput(ctx, s)
	if err != nil {
		return result{}, err
	}
	// Node memory and CPU come from pvestatd's 10 s rounds, so a snapshot a few seconds
	// old, shared by every placement on the same Proxmox, is as good as a fresh read; the
	// placements this process made since are counted in Pending.
	if in.Nodes, err = s.PVE.ClusterNodes(ctx, placementNodesMaxAge); err != nil {
		r.setCondition(s, infrav1.PlacedCondition, false, infrav1.ProxmoxAPIErrorReason, err.Error())
		return result{}, err
	}
	node, err := ChooseNode(in)
	if errors.Is(err, ErrNoNodeFits) {
		r.setCondition(s, infrav1.PlacedCondition, false, infrav1.NoNodeFitsReason, err.Error())
		r.warn(s, infrav1.NoNodeFitsReason, "%s", err.Error())
		return r.waitOn(s, infrav1.PlacedCondition)
	}
	if err != nil {
		r.setCondition(s, infrav1.PlacedCondition, false, infrav1.InvalidConfigurationReason, err.Error())
		return stop(ctrlResultNone)
	}
	s.PTM.Spec.Node = node
	// The machine's identity is chosen with its place: the boot ISO's name, the NICs'
	// MAC addresses and the address claims' owner label derive from it, and it is
	// recorded in the spec so it survives `clusterctl move` (object UIDs do not).
	if s.PTM.Spec.SMBIOSUUID == "" {
		s.PTM.Spec.SMBIOSUUID = uuid.NewString()
	}
	r.placements.Store(s.PTM.UID, node)
	r.setCondition(s, infrav1.PlacedCondition, true, infrav1.ReadyReason, "Placed on node "+node)
	r.event(s, "Normal", "Placed", "Placed on Proxmox node %s", node)
	return r.persistNow()
}

// placementInput gathers the constraints and the cluster's other machines.
func (r *Reconciler) placementInput(ctx context.Context, s *Scope) (PlacementInput, error) {
	in := PlacementInput{
		AllowedNodes:   s.Spec.AllowedNodes,
		MemoryBytes:    uint64(s.Spec.MemoryMiB) << 20,
		CPUs:           int(s.Spec.Sockets * s.Spec.Cores),
		IsControlPlane: util.IsControlPlaneMachine(s.Machine),
		Peers:          map[string]int{},
		Pending:        map[string]uint64{},
	}
	if fd := s.Machine.Spec.FailureDomain; fd != "" {
		found := false
		for _, d := range s.ClusterSpec.FailureDomains {
			if d.Name == fd {
				in.FailureDomainNodes, found = d.Nodes, true
			}
		}
		if !found {
			return in, fmt.Errorf("machine's failure domain %q is not in the ProxmoxTalosCluster's spec.failureDomains", fd)
		}
	} else if len(s.ClusterSpec.FailureDomains) > 0 {
		for _, d := range s.ClusterSpec.FailureDomains {
			in.FailureDomainNodes = append(in.FailureDomainNodes, d.Nodes...)
		}
	}

	var peers infrav1.ProxmoxTalosMachineList
	if err := r.Client.List(ctx, &peers, client.InNamespace(s.PTM.Namespace),
		client.MatchingLabels{clusterv1.ClusterNameLabel: s.Cluster.Name}); err != nil {
		return in, err
	}
	for _, p := range peers.Items {
		if p.UID == s.PTM.UID {
			continue
		}
		node := p.Spec.Node
		if v, ok := r.placements.Load(p.UID); ok && node == "" {
			node = v.(string)
		} else if ok {
			r.placements.Delete(p.UID) // the cache caught up
		}
		if node == "" {
			continue
		}
		_, peerIsCP := p.Labels[clusterv1.MachineControlPlaneLabel]
		if peerIsCP == in.IsControlPlane {
			in.Peers[node]++
		}
		if p.Status.PowerState != "running" {
			// Placed but not yet running: Proxmox does not count its memory yet.
			spec := p.Spec
			spec.Default()
			in.Pending[node] += uint64(spec.MemoryMiB) << 20
		}
	}
	return in, nil
}

// PlacementInput is everything ChooseNode decides on.
type PlacementInput struct {
	Nodes []proxmox.NodeInfo
	// FailureDomainNodes restricts the candidates (nil: no restriction).
	FailureDomainNodes []string
	// AllowedNodes restricts the candidates (nil: no restriction).
	AllowedNodes []string
	MemoryBytes  uint64
	CPUs         int
	// IsControlPlane selects which peers count for spreading.
	IsControlPlane bool
	// Peers counts the cluster's machines of the same role per node.
	Peers map[string]int
	// Pending is memory promised to placed VMs that Proxmox does not count yet.
	Pending map[string]uint64
}

// ChooseNode picks the node for a VM: online, in the failure domain and the allowed
// nodes, with enough free memory and logical CPUs. Among those it prefers the node with
// the fewest machines of the same role of this cluster (so control planes spread), then
// the most free memory, then the name (deterministic).
func ChooseNode(in PlacementInput) (string, error) {
	type cand struct {
		name  string
		peers int
		free  uint64
	}
	var cands []cand
	var rejected []string
	for _, n := range in.Nodes {
		if in.FailureDomainNodes != nil && !slices.Contains(in.FailureDomainNodes, n.Name) {
			continue
		}
		if len(in.AllowedNodes) > 0 && !slices.Contains(in.AllowedNodes, n.Name) {
			continue
		}
		if !n.Online {
			rejected = append(rejected, n.Name+" is offline")
			continue
		}
		free := n.FreeMemory
		if p := in.Pending[n.Name]; p >= free {
			free = 0
		} else {
			free -= p
		}
		if free < in.MemoryBytes {
			rejected = append(rejected, fmt.Sprintf("%s has %d MiB free, needs %d MiB", n.Name, free>>20, in.MemoryBytes>>20))
			continue
		}
		if n.CPUs > 0 && n.CPUs < in.CPUs {
			rejected = append(rejected, fmt.Sprintf("%s has %d CPUs, needs %d", n.Name, n.CPUs, in.CPUs))
			continue
		}
		cands = append(cands, cand{n.Name, in.Peers[n.Name], free})
	}
	if len(cands) == 0 {
		if len(rejected) == 0 {
			return "", fmt.Errorf("%w: no Proxmox node is both in the failure domain and in allowedNodes", ErrNoNodeFits)
		}
		return "", fmt.Errorf("%w: %s", ErrNoNodeFits, strings.Join(rejected, "; "))
	}
	sort.Slice(cands, func(i, j int) bool {
		a, b := cands[i], cands[j]
		if a.peers != b.peers {
			return a.peers < b.peers
		}
		if a.free != b.free {
			return a.free > b.free
		}
		return a.name < b.name
	})
	return cands[0].name, nil
}
