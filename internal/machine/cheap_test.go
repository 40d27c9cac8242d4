package machine

import (
	"context"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/cluster-api/util/conditions"

	infrav1 "github.com/proxmox-talos/cluster-api-provider-proxmox-talos/api/v1beta1"
)

// TestRunningVMReadCheaply: a machine whose VM was seen running reads nothing from
// Proxmox while it waits for its Node (only the workload cluster can tell that), and once
// Running its passes share one /cluster/resources snapshot instead of reading each VM; a
// VM the snapshot does not show running is read directly and reported.
func TestRunningVMReadCheaply(t *testing.T) {
	for _, tc := range []struct {
		name      string
		nodeReady bool
		stopOne   bool
		// want: calls by route for the second round of passes over three machines.
		want map[string]int
	}{
		{name: "waiting for the Node", nodeReady: false, want: map[string]int{}},
		{name: "running", nodeReady: true, want: map[string]int{"GET /cluster/resources": 1}},
		{name: "one VM stopped behind our back", nodeReady: true, stopOne: true,
			want: map[string]int{"GET /cluster/resources": 1, "GET /nodes/{node}/qemu/{vmid}/status/current": 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			e := newSimEnv(t, 5*time.Millisecond)
			ctx := context.Background()
			var scopes []*Scope
			for i, vmid := range []int{4900, 4901, 4902} {
				e.createVM("pve1", vmid, "w-0", true, true)
				s := e.scope("pve1", vmid)
				s.PTM.UID = types.UID(string(rune('a' + i)))
				s.PTM.Status.Initialization.Provisioned = ptr.To(true)
				out, err := e.r.startVM(ctx, s)
				g.Expect(err).NotTo(HaveOccurred())
				g.Expect(out.done).To(BeTrue())
				g.Expect(conditions.IsTrue(s.PTM, infrav1.VMRunningCondition)).To(BeTrue())
				if tc.nodeReady {
					conditions.Set(s.PTM, metav1.Condition{Type: infrav1.NodeReadyCondition, Status: metav1.ConditionTrue, Reason: infrav1.ReadyReason})
				}
				scopes = append(scopes, s)
			}
			want := map[int]string{4900: "running", 4901: "running", 4902: "running"}
			if tc.stopOne {
				g.Expect(e.pve.StopVM(ctx, "pve1", 4901)).To(Succeed())
				want[4901] = "stopped"
			}
			// The snapshot is pvestatd's: wait for a round that saw every start (and the stop).
			g.Eventually(func() map[int]string {
				vms, _ := e.pve.VMs(ctx)
				got := map[int]string{}
				for _, vm := range vms {
					got[vm.VMID] = vm.Status
				}
				return got
			}).Should(Equal(want))
			before := e.sim.Stats().Calls
			for _, s := range scopes {
				out, err := e.r.startVM(ctx, s)
				g.Expect(err).NotTo(HaveOccurred())
				g.Expect(out.done).To(BeTrue())
			}
			got := map[string]int{}
			for k, v := range e.sim.Stats().Calls {
				if d := v - before[k]; d > 0 {
					got[k] = d
				}
			}
			g.Expect(got).To(Equal(tc.want))
			if tc.stopOne {
				c := conditions.Get(scopes[1].PTM, infrav1.VMRunningCondition)
				g.Expect(c.Status).To(Equal(metav1.ConditionFalse))
				g.Expect(c.Reason).To(Equal(infrav1.PoweredOffReason))
			}
		})
	}
}
