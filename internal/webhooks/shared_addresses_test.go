package webhooks

import (
	"context"
	"testing"

	. "github.com/onsi/gomega"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	clusterv1 "sigs.k8s.io/cluster-api/api/core/v1beta2"

	infrav1 "github.com/proxmox-talos/cluster-api-provider-proxmox-talos/api/v1beta1"
)

func sharedCluster(ns, name, url, vip string, pools ...string) infrav1.ProxmoxTalosCluster {
	c := infrav1.ProxmoxTalosCluster{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: infrav1.ProxmoxTalosClusterSpec{
			Proxmox:              infrav1.ProxmoxAPI{URL: url},
			ControlPlaneEndpoint: clusterv1.APIEndpoint{Host: vip},
		},
	}
	for i, p := range pools {
		c.Spec.IPPools = append(c.Spec.IPPools, infrav1.IPPool{Name: []string{"nodes", "workers"}[i], Addresses: []string{p}, Prefix: 16})
	}
	return c
}

// TestValidateAgainstOtherClusters: every way two clusters on one Proxmox API could hand
// out one address is refused with both clusters named; clusters on another Proxmox API,
// the object itself and clusters being deleted are not compared.
func TestValidateAgainstOtherClusters(t *testing.T) {
	const pve = "https://pve.example.com:8006"
	existing := sharedCluster("team-a", "a", pve, "127.10.3.1", "127.10.1.0/28")
	tests := []struct {
		name    string
		c       infrav1.ProxmoxTalosCluster
		others  []infrav1.ProxmoxTalosCluster
		wantErr []string
	}{
		{"disjoint", sharedCluster("team-b", "b", pve, "127.10.3.2", "127.10.1.16/28"), nil, nil},
		{"overlapping pools", sharedCluster("team-b", "b", pve, "127.10.3.2", "127.10.1.16/28", "127.10.1.10-127.10.1.20"), nil,
			[]string{`spec.ipPools[1].addresses`, `overlaps pool "nodes" of ProxmoxTalosCluster team-a/a, which uses the same Proxmox API (pve.example.com:8006)`}},
		{"same URL spelled differently", sharedCluster("team-b", "b", "https://PVE.example.com:8006/", "127.10.3.2", "127.10.1.5"), nil,
			[]string{`overlaps pool "nodes" of ProxmoxTalosCluster team-a/a`}},
		{"VIP inside the other's pool", sharedCluster("team-b", "b", pve, "127.10.1.7", "127.10.1.16/28"), nil,
			[]string{"spec.controlPlaneEndpoint.host", `lies inside pool "nodes" of ProxmoxTalosCluster team-a/a`}},
		{"pool containing the other's VIP", sharedCluster("team-b", "b", pve, "127.10.3.2", "127.10.3.0/30"), nil,
			[]string{"spec.ipPools[0].addresses", "contains 127.10.3.1, the control-plane endpoint of ProxmoxTalosCluster team-a/a"}},
		{"same VIP", sharedCluster("team-b", "b", pve, "127.10.3.1", "127.10.1.16/28"), nil,
			[]string{"is already the control-plane endpoint of ProxmoxTalosCluster team-a/a"}},
		{"another Proxmox API", sharedCluster("team-b", "b", "https://pve2.example.com:8006", "127.10.3.1", "127.10.1.0/28"), nil, nil},
		{"itself (an update)", sharedCluster("team-a", "a", pve, "127.10.3.1", "127.10.1.0/28"), nil, nil},
		{"a cluster being deleted", sharedCluster("team-b", "b", pve, "127.10.3.1", "127.10.1.0/28"), func() []infrav1.ProxmoxTalosCluster {
			d := existing.DeepCopy()
			d.DeletionTimestamp = &metav1.Time{}
			d.DeletionTimestamp.Time = d.CreationTimestamp.Time.Add(1)
			return []infrav1.ProxmoxTalosCluster{*d}
		}(), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			others := tt.others
			if others == nil {
				others = []infrav1.ProxmoxTalosCluster{existing}
			}
			errs := ValidateAgainstOtherClusters(&tt.c, others, field.NewPath("spec"))
			if tt.wantErr == nil {
				g.Expect(errs).To(BeEmpty())
				return
			}
			g.Expect(errs).NotTo(BeEmpty())
			for _, want := range tt.wantErr {
				g.Expect(errs.ToAggregate().Error()).To(ContainSubstring(want))
			}
		})
	}
}

func TestProxmoxAPIHost(t *testing.T) {
	g := NewWithT(t)
	g.Expect(proxmoxAPIHost("https://PVE.example.com:8006/")).To(Equal("pve.example.com:8006"))
	g.Expect(proxmoxAPIHost("https://pve.example.com")).To(Equal("pve.example.com:443"))
	g.Expect(proxmoxAPIHost("not a url")).To(BeEmpty())
}

// TestClusterWebhookComparesWithListedClusters: the webhook reads the other clusters on
// create, and on update only when addresses change.
func TestClusterWebhookComparesWithListedClusters(t *testing.T) {
	g := NewWithT(t)
	s := runtime.NewScheme()
	g.Expect(infrav1.AddToScheme(s)).To(Succeed())
	const pve = "https://pve.example.com:8006"
	existing := sharedCluster("team-a", "a", pve, "127.10.3.1", "127.10.1.0/28")
	w := &Cluster{Reader: fake.NewClientBuilder().WithScheme(s).WithObjects(&existing).Build()}
	ctx := context.Background()

	overlapping := sharedCluster("team-b", "b", pve, "127.10.3.2", "127.10.1.8/29")
	overlapping.Spec.Talos.Version = "v1.13.9"
	_, err := w.ValidateCreate(ctx, &overlapping)
	g.Expect(err).To(MatchError(ContainSubstring(`overlaps pool "nodes" of ProxmoxTalosCluster team-a/a`)))

	// An update that leaves the addresses alone is not compared (the cluster predates the rule).
	changed := overlapping.DeepCopy()
	changed.Spec.Talos.Version = "v1.13.10"
	_, err = w.ValidateUpdate(ctx, &overlapping, changed)
	g.Expect(err).NotTo(HaveOccurred())
	// One that moves the VIP is.
	changed.Spec.ControlPlaneEndpoint.Host = "127.10.3.1"
	_, err = w.ValidateUpdate(ctx, &overlapping, changed)
	g.Expect(err).To(MatchError(ContainSubstring("is already the control-plane endpoint of ProxmoxTalosCluster team-a/a")))
}
