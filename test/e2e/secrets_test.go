//go:build e2e

package e2e

import (
	"context"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"sigs.k8s.io/controller-runtime/pkg/client"

	infrav1 "github.com/proxmox-talos/cluster-api-provider-proxmox-talos/api/v1beta1"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/test/secrets"
)

// secretWatch collects a lab's secret values (the Proxmox token secret, bootstrap data with
// its Talos machine token and PKI, Talos PKI Secrets, the Tailscale auth key) while the
// clusters exist — bootstrap and PKI Secrets go with their cluster — and scans what the run
// produced: every status and event while the objects exist, and at the end every log under
// the artifacts dir and every event. Any finding fails the spec; findings name the place
// and a fingerprint, never the value.
type secretWatch struct {
	needles []secrets.Needle
}

// collect reads the management API's Secrets and scans every provider and Cluster API
// object's status and every event now.
func (w *secretWatch) collect(ctx context.Context, c client.Client) {
	GinkgoHelper()
	n, err := secrets.ReadNeedles(ctx, c, infrav1.CredentialsTokenSecretKey)
	Expect(err).NotTo(HaveOccurred())
	w.needles = append(w.needles, n...)
	rep, err := secrets.Scan(ctx, c, infrav1.CredentialsTokenSecretKey, "", nil, secrets.StatusKinds, w.needles...)
	Expect(err).NotTo(HaveOccurred())
	GinkgoWriter.Println(rep.String())
	Expect(rep.Findings).To(BeEmpty(), rep.String())
}

// scanAll scans every *.log under artifacts and every event and remaining status of each
// management API for every secret value collected so far and still present.
func (w *secretWatch) scanAll(ctx context.Context, artifacts string, clients ...client.Client) {
	GinkgoHelper()
	for _, c := range clients {
		n, err := secrets.ReadNeedles(ctx, c, infrav1.CredentialsTokenSecretKey)
		Expect(err).NotTo(HaveOccurred())
		w.needles = append(w.needles, n...)
	}
	for i, c := range clients {
		// The logs are scanned once, with every management cluster's values.
		dir := ""
		if i == 0 {
			dir = artifacts
		}
		rep, err := secrets.Scan(ctx, c, infrav1.CredentialsTokenSecretKey, dir, secrets.OnlyLogs, secrets.StatusKinds, w.needles...)
		Expect(err).NotTo(HaveOccurred())
		if i == 0 {
			Expect(rep.Files).To(BeNumerically(">", 0), "no log found under %s", artifacts)
		}
		AddReportEntry("secret scan", rep.String())
		Expect(rep.Findings).To(BeEmpty(), rep.String())
	}
}
