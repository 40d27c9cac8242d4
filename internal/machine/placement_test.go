package machine

import (
	"errors"
	"testing"

	. "github.com/onsi/gomega"

	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/pkg/proxmox"
)

const gib = uint64(1) << 30

func nodes(names ...string) []proxmox.NodeInfo {
	var out []proxmox.NodeInfo
	for _, n := range names {
		out = append(out, proxmox.NodeInfo{Name: n, Online: true, CPUs: 8, FreeMemory: 32 * gib})
	}
	return out
}

func TestChooseNode(t *testing.T) {
	tests := []struct {
		name    string
		in      PlacementInput
		want    string
		wantErr bool
	}{{
		name: "most free memory wins",
		in: PlacementInput{Nodes: []proxmox.NodeInfo{
			{Name: "a", Online: true, CPUs: 8, FreeMemory: 8 * gib},
			{Name: "b", Online: true, CPUs: 8, FreeMemory: 16 * gib},
		}, MemoryBytes: 4 * gib, CPUs: 2},
		want: "b",
	}, {
		name: "control planes spread before memory counts",
		in: PlacementInput{Nodes: nodes("a", "b", "c"), MemoryBytes: 4 * gib, CPUs: 2, IsControlPlane: true,
			Peers: map[string]int{"a": 1, "b": 1}},
		want: "c",
	}, {
		name: "failure domain restricts",
		in:   PlacementInput{Nodes: nodes("a", "b", "c"), FailureDomainNodes: []string{"b"}, MemoryBytes: gib, CPUs: 1},
		want: "b",
	}, {
		name: "failure domain and allowedNodes intersect",
		in: PlacementInput{Nodes: nodes("a", "b", "c"), FailureDomainNodes: []string{"a", "b"}, AllowedNodes: []string{"b", "c"},
			MemoryBytes: gib, CPUs: 1},
		want: "b",
	}, {
		name:    "empty intersection",
		in:      PlacementInput{Nodes: nodes("a", "b"), FailureDomainNodes: []string{"a"}, AllowedNodes: []string{"b"}, MemoryBytes: gib},
		wantErr: true,
	}, {
		name: "offline node skipped",
		in: PlacementInput{Nodes: []proxmox.NodeInfo{
			{Name: "a", Online: false, CPUs: 8, FreeMemory: 64 * gib},
			{Name: "b", Online: true, CPUs: 8, FreeMemory: 8 * gib},
		}, MemoryBytes: gib, CPUs: 1},
		want: "b",
	}, {
		name:    "not enough memory",
		in:      PlacementInput{Nodes: nodes("a"), MemoryBytes: 64 * gib, CPUs: 1},
		wantErr: true,
	}, {
		name:    "not enough CPUs",
		in:      PlacementInput{Nodes: nodes("a"), MemoryBytes: gib, CPUs: 16},
		wantErr: true,
	}, {
		name: "pending placements count as used memory",
		in: PlacementInput{Nodes: nodes("a", "b"), MemoryBytes: 4 * gib, CPUs: 1,
			Pending: map[string]uint64{"a": 30 * gib}},
		want: "b",
	}, {
		name: "ties broken by name",
		in:   PlacementInput{Nodes: nodes("c", "a", "b"), MemoryBytes: gib, CPUs: 1},
		want: "a",
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			got, err := ChooseNode(tt.in)
			if tt.wantErr {
				g.Expect(errors.Is(err, ErrNoNodeFits)).To(BeTrue(), "err = %v", err)
				return
			}
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(got).To(Equal(tt.want))
		})
	}
}

func TestChooseNodeExplainsRejections(t *testing.T) {
	g := NewWithT(t)
	_, err := ChooseNode(PlacementInput{Nodes: nodes("a"), MemoryBytes: 64 * gib, CPUs: 1})
	g.Expect(err).To(MatchError(ContainSubstring("a has 32768 MiB free, needs 65536 MiB")))
}
