package cluster

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	clusterv1 "sigs.k8s.io/cluster-api/api/core/v1beta2"
	"sigs.k8s.io/cluster-api/util/conditions"

	infrav1 "github.com/proxmox-talos/cluster-api-provider-proxmox-talos/api/v1beta1"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/internal/clients"
)

// TestCredentialsRefuseBadBundleAndHTTP: what the user sees on the cluster for a caBundle
// that does not parse and for an http URL without the opt-in; never the content.
func TestCredentialsRefuseBadBundleAndHTTP(t *testing.T) {
	const tokenSecret = "5f2c7a1e-0000-4000-8000-00000000beef"
	tests := []struct {
		name       string
		url        string
		allowHTTP  bool
		caBundle   string
		wantReason string
		wantMsg    string
	}{
		{"garbage bundle", "https://127.0.0.1:8006", false, "PRIVATE-LOOKING-GARBAGE", infrav1.CABundleInvalidReason,
			"Secret ns/pve key caBundle: caBundle is invalid: it holds no PEM block"},
		{"http without opt-in", "http://127.0.0.1:8006", false, "", infrav1.InsecureURLReason,
			`spec.proxmox.url "http://127.0.0.1:8006" uses http; use https, or set insecureAllowHTTP`},
		{"http with opt-in", "http://127.0.0.1:8006", true, "", infrav1.ReadyReason, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			s := runtime.NewScheme()
			g.Expect(corev1.AddToScheme(s)).To(Succeed())
			g.Expect(infrav1.AddToScheme(s)).To(Succeed())
			secret := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "pve"}, Data: map[string][]byte{
				infrav1.CredentialsTokenIDKey: []byte("capi@pve!provider"), infrav1.CredentialsTokenSecretKey: []byte(tokenSecret),
			}}
			if tt.caBundle != "" {
				secret.Data[infrav1.CredentialsCABundleKey] = []byte(tt.caBundle)
			}
			c := fake.NewClientBuilder().WithScheme(s).WithObjects(secret).Build()
			r := &Reconciler{Client: c, Proxmox: clients.NewProxmoxFactory(clients.ProxmoxOptions{})}
			infra := &infrav1.ProxmoxTalosCluster{
				ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "c", UID: "uid-c"},
				Spec: infrav1.ProxmoxTalosClusterSpec{Proxmox: infrav1.ProxmoxAPI{
					URL: tt.url, InsecureAllowHTTP: tt.allowHTTP, CredentialsRef: infrav1.SecretReference{Name: "pve"},
				}},
			}
			sc := NewScope(&clusterv1.Cluster{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "c"}}, infra)
			done, _, err := r.reconcileCredentials(context.Background(), sc)
			g.Expect(err).NotTo(HaveOccurred())
			cond := conditions.Get(infra, infrav1.CredentialsReadyCondition)
			g.Expect(cond.Reason).To(Equal(tt.wantReason), cond.Message)
			g.Expect(done).To(Equal(tt.wantReason == infrav1.ReadyReason))
			g.Expect(cond.Message).To(ContainSubstring(tt.wantMsg))
			seen, _ := json.Marshal(infra.Status)
			g.Expect(strings.Contains(string(seen), tokenSecret)).To(BeFalse())
			g.Expect(strings.Contains(string(seen), "PRIVATE-LOOKING-GARBAGE")).To(BeFalse())
		})
	}
}
