package imagefactory

import (
	"context"
	"errors"
	"io"
	"net/http"
	"testing"
	"time"

	. "github.com/onsi/gomega"

	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/pkg/imagefactory/factorysim"
)

// fastRetry keeps tests quick while still exercising the backoff loop.
var fastRetry = RetryPolicy{Attempts: 4, BaseDelay: time.Millisecond, MaxDelay: 4 * time.Millisecond}

func newSimClient(t *testing.T, opts ...Option) (*Client, *factorysim.Server) {
	t.Helper()

	sim := factorysim.New(factorysim.Options{Seed: 1})
	if err := sim.Start(); err != nil {
		t.Fatal(err)
	}

	t.Cleanup(func() { _ = sim.Close() })

	c, err := New(sim.URL(), append([]Option{WithRetryPolicy(fastRetry), WithHTTPClient(&http.Client{Timeout: 5 * time.Second})}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}

	return c, sim
}

func TestClientCreateAndGetSchematic(t *testing.T) {
	for _, tc := range []struct {
		name   string
		opts   SchematicOptions
		wantID string
	}{
		{name: "empty", opts: SchematicOptions{Extensions: []string{}}, wantID: "376567988ad370138ad8b2698212367b8edcb69b5fd68c80be1f2ec7d603b4ba"},
		{name: "qemu-guest-agent", opts: SchematicOptions{Extensions: []string{ExtensionQEMUGuestAgent}}, wantID: qgaID},
		{name: "defaults with META 10", opts: SchematicOptions{
			ExtraKernelArgs: []string{"talos.config=metal-iso"},
			Meta:            []MetaValue{{Key: 10, Value: "addresses:\n  - address: 10.0.1.11/24\n"}},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			c, sim := newSimClient(t)
			ctx := context.Background()

			s, err := NewSchematic(tc.opts)
			g.Expect(err).NotTo(HaveOccurred())

			offline, err := SchematicID(s)
			g.Expect(err).NotTo(HaveOccurred())

			if tc.wantID != "" {
				g.Expect(offline).To(Equal(tc.wantID))
			}

			id, err := c.CreateSchematic(ctx, s)
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(id).To(Equal(offline), "factory ID must equal the offline ID")
			g.Expect(sim.HasSchematic(id)).To(BeTrue())

			got, err := c.GetSchematic(ctx, id)
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(SchematicID(got)).To(Equal(offline))
		})
	}
}

func TestClientErrors(t *testing.T) {
	ctx := context.Background()

	t.Run("invalid schematic rejected by the factory", func(t *testing.T) {
		g := NewWithT(t)
		c, sim := newSimClient(t)

		// owner is Enterprise-only: the community factory answers 400.
		_, err := c.CreateSchematic(ctx, &Schematic{Owner: "someone"})
		g.Expect(err).To(MatchError(ErrInvalidSchematic))
		g.Expect(err).To(MatchError(ContainSubstring("owner")))
		g.Expect(sim.Requests(http.MethodPost, "/schematics")).To(Equal(1), "4xx must not be retried")
	})

	t.Run("unknown schematic", func(t *testing.T) {
		g := NewWithT(t)
		c, _ := newSimClient(t)

		_, err := c.GetSchematic(ctx, qgaID)
		g.Expect(err).To(MatchError(ErrSchematicNotFound))
	})

	t.Run("unknown version", func(t *testing.T) {
		g := NewWithT(t)
		c, _ := newSimClient(t)

		_, err := c.OfficialExtensions(ctx, "v0.0.1")
		g.Expect(err).To(MatchError(ErrUnknownVersion))
		g.Expect(err).To(MatchError(ContainSubstring("v0.0.1")))
	})

	t.Run("malformed version is refused without a request", func(t *testing.T) {
		g := NewWithT(t)
		c, sim := newSimClient(t)

		_, err := c.OfficialExtensions(ctx, "latest")
		g.Expect(err).To(MatchError(ErrInvalidVersion))
		g.Expect(sim.Requests(http.MethodGet, "/version/latest/extensions/official")).To(BeZero())
	})

	t.Run("image of unknown version or schematic", func(t *testing.T) {
		g := NewWithT(t)
		c, sim := newSimClient(t)

		id, err := c.CreateSchematic(ctx, must(NewSchematic(SchematicOptions{})))
		g.Expect(err).NotTo(HaveOccurred())

		_, err = c.ImageSize(ctx, ImageRef{SchematicID: id, TalosVersion: "v0.0.1", Platform: PlatformNoCloud, Arch: ArchAMD64})
		g.Expect(err).To(MatchError(ErrImageNotFound))

		_, err = c.ImageSize(ctx, ImageRef{SchematicID: qgaID, TalosVersion: "v1.14.1", Platform: PlatformNoCloud, Arch: ArchAMD64})
		g.Expect(err).To(MatchError(ErrImageNotFound))
		g.Expect(err).To(MatchError(ContainSubstring("was the schematic created?")))
		g.Expect(sim.Requests(http.MethodHead, "/image/"+qgaID+"/v1.14.1/nocloud-amd64.qcow2")).To(Equal(1))
	})
}

func TestClientRetries(t *testing.T) {
	ctx := context.Background()

	t.Run("5xx retried then success", func(t *testing.T) {
		g := NewWithT(t)
		c, sim := newSimClient(t)
		sim.SetFault("/schematics", factorysim.Fault{FailFirst: 2, Status: http.StatusBadGateway})

		id, err := c.CreateSchematic(ctx, must(NewSchematic(SchematicOptions{})))
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(sim.Requests(http.MethodPost, "/schematics")).To(Equal(3))
		g.Expect(sim.InjectedFailures()).To(Equal(2))
		g.Expect(sim.HasSchematic(id)).To(BeTrue())
	})

	t.Run("429 retried", func(t *testing.T) {
		g := NewWithT(t)
		c, sim := newSimClient(t)
		sim.SetFault("/versions", factorysim.Fault{FailFirst: 1, Status: http.StatusTooManyRequests})

		v, err := c.Versions(ctx)
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(v).To(Equal(factorysim.DefaultVersions))
		g.Expect(sim.Requests(http.MethodGet, "/versions")).To(Equal(2))
	})

	t.Run("retries exhausted gives a clear error", func(t *testing.T) {
		g := NewWithT(t)
		c, sim := newSimClient(t)
		sim.SetFault("/", factorysim.Fault{FailFirst: 1000})

		_, err := c.Versions(ctx)
		g.Expect(err).To(MatchError(ErrRetriesExhausted))
		g.Expect(err).To(MatchError(ContainSubstring("GET /versions, 4 attempts")))
		g.Expect(err).To(MatchError(ContainSubstring("503")))

		var he *HTTPError
		g.Expect(errors.As(err, &he)).To(BeTrue())
		g.Expect(he.Code).To(Equal(http.StatusServiceUnavailable))
		g.Expect(sim.Requests(http.MethodGet, "/versions")).To(Equal(fastRetry.Attempts))
	})

	t.Run("HEAD retried", func(t *testing.T) {
		g := NewWithT(t)
		c, sim := newSimClient(t)

		id, err := c.CreateSchematic(ctx, must(NewSchematic(SchematicOptions{})))
		g.Expect(err).NotTo(HaveOccurred())

		ref := ImageRef{SchematicID: id, TalosVersion: "v1.14.1", Platform: PlatformNoCloud, Arch: ArchAMD64}
		sim.SetFault("/image/", factorysim.Fault{FailFirst: 1, Status: http.StatusInternalServerError})

		size, err := c.ImageSize(ctx, ref)
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(size).To(BeEquivalentTo(len(factorysim.ImagePayload(ref.FactoryPath()))))
		g.Expect(sim.Requests(http.MethodHead, ref.FactoryPath())).To(Equal(2))
	})

	t.Run("transport errors retried", func(t *testing.T) {
		g := NewWithT(t)
		c, sim := newSimClient(t)
		g.Expect(sim.Close()).To(Succeed()) // port on 127.0.0.1 now refuses connections

		_, err := c.Versions(ctx)
		g.Expect(err).To(MatchError(ErrRetriesExhausted))
	})

	t.Run("cancellation stops retrying", func(t *testing.T) {
		g := NewWithT(t)
		c, sim := newSimClient(t, WithRetryPolicy(RetryPolicy{Attempts: 10, BaseDelay: time.Hour, MaxDelay: time.Hour}))
		sim.SetFault("/", factorysim.Fault{FailFirst: 1000})

		cctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
		defer cancel()

		start := time.Now()
		_, err := c.Versions(cctx)
		g.Expect(err).To(MatchError(context.DeadlineExceeded))
		g.Expect(time.Since(start)).To(BeNumerically("<", 5*time.Second))
		g.Expect(sim.Requests(http.MethodGet, "/versions")).To(Equal(1))
	})
}

func TestClientVersionsExtensionsAndImages(t *testing.T) {
	g := NewWithT(t)
	c, sim := newSimClient(t)
	ctx := context.Background()

	versions, err := c.Versions(ctx)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(versions).To(ContainElement("v1.14.1"))

	exts, err := c.OfficialExtensions(ctx, "v1.14.1")
	g.Expect(err).NotTo(HaveOccurred())

	var names []string
	for _, e := range exts {
		names = append(names, e.Name)
	}

	g.Expect(names).To(ContainElements(DefaultExtensions()))

	id, err := c.CreateSchematic(ctx, must(NewSchematic(SchematicOptions{})))
	g.Expect(err).NotTo(HaveOccurred())

	ref := ImageRef{SchematicID: id, TalosVersion: "v1.14.1", Platform: PlatformNoCloud, Arch: ArchAMD64}

	u, err := c.ImageURL(ref)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(u).To(Equal(sim.URL() + "/image/" + id + "/v1.14.1/nocloud-amd64.qcow2"))

	size, err := c.ImageSize(ctx, ref)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(sim.Downloads(ref.FactoryPath())).To(BeZero(), "HEAD is not a download")

	// What Proxmox' download-url would do.
	resp, err := http.Get(u) //nolint:noctx // loopback test server
	g.Expect(err).NotTo(HaveOccurred())

	body, err := io.ReadAll(resp.Body)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(resp.Body.Close()).To(Succeed())
	g.Expect(int64(len(body))).To(Equal(size))
	g.Expect(body).To(Equal(factorysim.ImagePayload(ref.FactoryPath())))
	g.Expect(sim.Downloads(ref.FactoryPath())).To(Equal(1))
}

func TestNewRejectsBadURL(t *testing.T) {
	for _, u := range []string{"", "factory.talos.dev", "ftp://x", "http://"} {
		_, err := New(u)
		NewWithT(t).Expect(err).To(HaveOccurred(), u)
	}
}
