package talossim

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	stdx509 "crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"time"

	"github.com/siderolabs/crypto/x509"
)

// ca is a certificate authority taken from a machine config.
type ca struct {
	cert    *stdx509.Certificate
	certPEM []byte
	key     crypto.Signer // nil when the config only carries the certificate (workers)
}

// parseCA reads a PEM cert (+ optional key) pair from a machine config. The
// key may be Ed25519 (Talos OS CA, in Talos' own PEM type), ECDSA or RSA;
// siderolabs/crypto knows all of Talos' encodings.
func parseCA(p *x509.PEMEncodedCertificateAndKey) (*ca, error) {
	if p == nil || len(p.Crt) == 0 {
		return nil, errors.New("no CA certificate")
	}
	block, _ := pem.Decode(p.Crt)
	if block == nil {
		return nil, errors.New("CA certificate is not PEM")
	}
	cert, err := stdx509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parsing CA certificate: %w", err)
	}
	c := &ca{cert: cert, certPEM: p.Crt}
	if len(p.Key) == 0 {
		return c, nil
	}
	authority, err := x509.NewCertificateAuthorityFromCertificateAndKey(p)
	if err != nil {
		// The error of this library never quotes key bytes, but keep our own wording anyway.
		return nil, errors.New("parsing CA key failed")
	}
	signer, ok := authority.Key.(crypto.Signer)
	if !ok {
		return nil, errors.New("CA key is not a signer")
	}
	c.key = signer
	return c, nil
}

// leaf is a freshly minted certificate with its key, PEM encoded.
type leaf struct {
	certPEM, keyPEM []byte
}

// issue signs an ECDSA P-256 leaf certificate; server and client usages are
// both set because Talos and Kubernetes check them separately.
func (c *ca) issue(cn string, orgs []string, ips []net.IP, dns []string) (*leaf, error) {
	if c.key == nil {
		return nil, errors.New("CA key unavailable")
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, err
	}
	tmpl := &stdx509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: cn, Organization: orgs},
		// Backdated so that clock skew between simulator and clients never matters.
		NotBefore:   time.Now().Add(-time.Hour),
		NotAfter:    time.Now().Add(24 * time.Hour),
		KeyUsage:    stdx509.KeyUsageDigitalSignature,
		ExtKeyUsage: []stdx509.ExtKeyUsage{stdx509.ExtKeyUsageServerAuth, stdx509.ExtKeyUsageClientAuth},
		IPAddresses: ips,
		DNSNames:    dns,
	}
	der, err := stdx509.CreateCertificate(rand.Reader, tmpl, c.cert, &key.PublicKey, c.key)
	if err != nil {
		return nil, fmt.Errorf("signing certificate: %w", err)
	}
	keyDER, err := stdx509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, err
	}
	return &leaf{
		certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		keyPEM:  pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}),
	}, nil
}
