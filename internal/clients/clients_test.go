package clients

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	infrav1 "github.com/proxmox-talos/cluster-api-provider-proxmox-talos/api/v1beta1"
)

func testCertPEM(t *testing.T) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// TestParseCABundle: only bundles made entirely of parseable certificates pass; the
// error says which block is wrong and never repeats the bundle's content.
func TestParseCABundle(t *testing.T) {
	cert := testCertPEM(t)
	secretish := "SECRET-LOOKING-CONTENT"
	tests := []struct {
		name    string
		bundle  string
		want    int
		wantErr string
	}{
		{"one certificate", string(cert), 1, ""},
		{"two with whitespace", "\n" + string(cert) + "\n\n" + string(cert) + "  \n", 2, ""},
		{"not PEM at all", secretish, 0, "it holds no PEM block"},
		{"only whitespace", " \n", 0, "empty apart from whitespace"},
		{"a private key", string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte(secretish)})), 0, `PEM block 1 is a "PRIVATE KEY" block, want CERTIFICATE`},
		{"a broken certificate", string(cert) + string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte(secretish)})), 0, "PEM block 2 is not a valid X.509 certificate"},
		{"truncated paste", string(cert) + string(cert[:len(cert)/2]), 0, "data after PEM block 1 is not a PEM block"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			certs, err := ParseCABundle([]byte(tt.bundle))
			if tt.wantErr == "" {
				g.Expect(err).NotTo(HaveOccurred())
				g.Expect(certs).To(HaveLen(tt.want))
				return
			}
			g.Expect(errors.Is(err, ErrCABundleInvalid)).To(BeTrue())
			g.Expect(err.Error()).To(ContainSubstring(tt.wantErr))
			g.Expect(err.Error()).NotTo(ContainSubstring(secretish))
		})
	}
}

// TestConfigFromSecretRefusesBadBundleAndHTTP: the client is never built from a caBundle
// that does not parse, nor for an http URL without the cluster's opt-in.
func TestConfigFromSecretRefusesBadBundleAndHTTP(t *testing.T) {
	secret := func(ca string) *corev1.Secret {
		s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "pve"}, Data: map[string][]byte{
			infrav1.CredentialsTokenIDKey: []byte("capi@pve!provider"), infrav1.CredentialsTokenSecretKey: []byte("00000000-0000-0000-0000-000000000000"),
		}}
		if ca != "\x00" {
			s.Data[infrav1.CredentialsCABundleKey] = []byte(ca)
		}
		return s
	}
	cluster := func(url string, allowHTTP bool) *infrav1.ProxmoxTalosCluster {
		return &infrav1.ProxmoxTalosCluster{Spec: infrav1.ProxmoxTalosClusterSpec{Proxmox: infrav1.ProxmoxAPI{URL: url, InsecureAllowHTTP: allowHTTP}}}
	}
	cert := string(testCertPEM(t))
	tests := []struct {
		name    string
		cluster *infrav1.ProxmoxTalosCluster
		secret  *corev1.Secret
		wantErr error
		wantMsg string
	}{
		{"https without bundle", cluster("https://127.0.0.1:8006", false), secret("\x00"), nil, ""},
		{"https with bundle", cluster("https://127.0.0.1:8006", false), secret(cert), nil, ""},
		{"garbage bundle", cluster("https://127.0.0.1:8006", false), secret("garbage"), ErrCABundleInvalid, "Secret ns/pve key caBundle: caBundle is invalid: it holds no PEM block"},
		{"empty bundle key", cluster("https://127.0.0.1:8006", false), secret(""), ErrCABundleInvalid, "empty apart from whitespace"},
		{"http without opt-in", cluster("http://127.0.0.1:8006", false), secret("\x00"), ErrInsecureURL, `spec.proxmox.url "http://127.0.0.1:8006" uses http`},
		{"http with opt-in", cluster("http://127.0.0.1:8006", true), secret("\x00"), nil, ""},
		{"ftp even with opt-in", cluster("ftp://127.0.0.1", true), secret("\x00"), ErrInsecureURL, "must start with https://"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			cfg, err := ConfigFromSecret(tt.cluster, tt.secret)
			if tt.wantErr == nil {
				g.Expect(err).NotTo(HaveOccurred())
				g.Expect(cfg.URL).To(Equal(strings.TrimSuffix(tt.cluster.Spec.Proxmox.URL, "/")))
				return
			}
			g.Expect(errors.Is(err, tt.wantErr)).To(BeTrue(), "%v", err)
			g.Expect(err.Error()).To(ContainSubstring(tt.wantMsg))
		})
	}
}
