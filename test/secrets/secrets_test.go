package secrets

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
)

const credKey = "token_secret"

// fixture is a management API's Secrets with one value of every kind.
type fixture struct {
	token, machineToken, keyPEM, keyB64, tsKey string
	secrets                                    []corev1.Secret
}

func newFixture(t *testing.T) fixture {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM := string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
	f := fixture{
		token:        "0b7c1a58-8d1e-4bb2-9a57-" + randHex(t, 6),
		machineToken: "mtok." + randHex(t, 8),
		keyPEM:       keyPEM,
		keyB64:       base64.StdEncoding.EncodeToString([]byte(keyPEM)),
		tsKey:        "tskey-auth-" + randHex(t, 12),
	}
	bootstrap := fmt.Sprintf("version: v1alpha1\nmachine:\n  type: worker\n  token: %s\n  ca:\n    crt: LS0tLS1CRUdJTiBDRVJU\n    key: %s\ncluster:\n  secret: %s\n", f.machineToken, f.keyB64, randHex(t, 16))
	extra := fmt.Sprintf("apiVersion: v1alpha1\nkind: ExtensionServiceConfig\nname: tailscale\nenvironment:\n  - TS_AUTHKEY=%s\n", f.tsKey)
	f.secrets = []corev1.Secret{
		{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "c1-proxmox"}, Data: map[string][]byte{"token_id": []byte("capi@pve!capi"), credKey: []byte(f.token)}},
		{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "m1-bootstrap"}, Data: map[string][]byte{"value": []byte(bootstrap)}},
		{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "c1-tailscale"}, Data: map[string][]byte{"value": []byte(extra)}},
	}
	return f
}

func randHex(t *testing.T, n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", b)
}

func TestFromSecrets(t *testing.T) {
	g := NewWithT(t)
	f := newFixture(t)
	s := New(FromSecrets(f.secrets, credKey))
	kinds := s.Kinds()
	g.Expect(kinds[KindProxmoxToken]).To(Equal(1))
	g.Expect(kinds[KindBootstrapData]).To(BeNumerically(">=", 3), "machine token, CA key, cluster secret")
	g.Expect(kinds[KindPrivateKey]).To(BeNumerically(">=", 1))
	g.Expect(kinds[KindTailscaleKey]).To(Equal(1))
	// A token ID and a certificate are not secret.
	g.Expect(s.ScanBytes("x", []byte("capi@pve!capi LS0tLS1CRUdJTiBDRVJU"))).To(BeEmpty())
}

// TestScannerFindsPlantedSecrets plants each kind of secret in a log line, an event and a
// status and requires the scanner to report it by location and fingerprint, and never to
// print the value.
func TestScannerFindsPlantedSecrets(t *testing.T) {
	f := newFixture(t)
	pemBody := strings.Split(f.keyPEM, "\n")[1]
	for _, tc := range []struct {
		name  string
		value string
		kind  string
	}{
		{"proxmox token", f.token, KindProxmoxToken},
		{"talos machine token", f.machineToken, KindBootstrapData},
		{"talos CA key as in the config", f.keyB64, KindBootstrapData},
		{"talos CA key PEM logged", pemBody, KindPrivateKey},
		{"tailscale key", f.tsKey, KindTailscaleKey},
		{"proxmox token as base64", base64.StdEncoding.EncodeToString([]byte(f.token)), KindProxmoxToken},
	} {
		for _, place := range []string{"log", "event", "status"} {
			t.Run(tc.name+" in "+place, func(t *testing.T) {
				g := NewWithT(t)
				dir := t.TempDir()
				g.Expect(os.WriteFile(filepath.Join(dir, "manager.log"), []byte("I0101 first line\n"), 0o600)).To(Succeed())
				scheme := runtime.NewScheme()
				g.Expect(clientgoscheme.AddToScheme(scheme)).To(Succeed())
				objs := []runtime.Object{}
				for i := range f.secrets {
					objs = append(objs, &f.secrets[i])
				}
				pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "m1"}, Status: corev1.PodStatus{Message: "all good"}}
				switch place {
				case "log":
					g.Expect(os.WriteFile(filepath.Join(dir, "manager.log"), []byte("I0101 first line\nE0101 reconcile failed: request with token="+tc.value+" refused\n"), 0o600)).To(Succeed())
				case "event":
					objs = append(objs, &corev1.Event{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "m1.123"}, InvolvedObject: corev1.ObjectReference{Kind: "ProxmoxTalosMachine", Name: "m1"}, Reason: "Failed", Message: "creating VM: " + tc.value})
				case "status":
					pod.Status.Message = "boot ISO: " + tc.value
				}
				objs = append(objs, pod)
				c := fake.NewClientBuilder().WithScheme(scheme).WithRuntimeObjects(objs...).Build()
				rep, err := Scan(context.Background(), c, credKey, dir, nil, []schema.GroupVersionKind{{Version: "v1", Kind: "Pod"}})
				g.Expect(err).NotTo(HaveOccurred())
				g.Expect(rep.Findings).NotTo(BeEmpty(), "the planted %s was not found", tc.name)
				var kinds []string
				for _, fd := range rep.Findings {
					kinds = append(kinds, fd.Kind)
					g.Expect(fd.Fingerprint).To(HavePrefix("sha256:"))
					switch place {
					case "log":
						g.Expect(fd.Where).To(Equal("file manager.log:2"))
					case "event":
						g.Expect(fd.Where).To(HavePrefix("event ns/m1.123"))
					case "status":
						g.Expect(fd.Where).To(Equal("status Pod ns/m1"))
					}
				}
				g.Expect(kinds).To(ContainElement(tc.kind))
				// The report never repeats the value.
				out := rep.String()
				g.Expect(out).NotTo(ContainSubstring(tc.value))
				for _, n := range New(FromSecrets(f.secrets, credKey)).Needles() {
					g.Expect(out).NotTo(ContainSubstring(string(n.value)))
				}
			})
		}
	}
}

func TestCleanScan(t *testing.T) {
	g := NewWithT(t)
	f := newFixture(t)
	dir := t.TempDir()
	g.Expect(os.WriteFile(filepath.Join(dir, "manager.log"), []byte("I0101 created VM 100 for ns/m1\nuploaded boot ISO\n"), 0o600)).To(Succeed())
	// A file the caller skips (a kubeconfig, a manifest) may hold secrets on purpose.
	g.Expect(os.WriteFile(filepath.Join(dir, "cluster.yaml"), []byte(f.token), 0o600)).To(Succeed())
	scheme := runtime.NewScheme()
	g.Expect(clientgoscheme.AddToScheme(scheme)).To(Succeed())
	c := fake.NewClientBuilder().WithScheme(scheme).WithObjects(&f.secrets[0], &f.secrets[1], &f.secrets[2]).Build()
	rep, err := Scan(context.Background(), c, credKey, dir, func(rel string) bool { return strings.HasSuffix(rel, ".yaml") }, nil)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(rep.Findings).To(BeEmpty())
	g.Expect(rep.Files).To(Equal(1))
	g.Expect(rep.String()).To(ContainSubstring("0 findings"))
}
