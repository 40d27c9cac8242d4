package imagefactory

import (
	"testing"

	. "github.com/onsi/gomega"
)

func TestSchematicIDKnownValues(t *testing.T) {
	for _, tc := range []struct {
		name     string
		opts     SchematicOptions
		wantID   string
		wantYAML string
	}{
		{
			name:     "empty customization",
			opts:     SchematicOptions{Extensions: []string{}},
			wantID:   "376567988ad370138ad8b2698212367b8edcb69b5fd68c80be1f2ec7d603b4ba",
			wantYAML: "customization: {}\n",
		},
		{
			name:     "qemu-guest-agent only (Talos Proxmox guide)",
			opts:     SchematicOptions{Extensions: []string{ExtensionQEMUGuestAgent}},
			wantID:   "ce4c980550dd2ab1b17bbf2b08801c7eb59418eafe8f279833297925d67c7515",
			wantYAML: "customization:\n    systemExtensions:\n        officialExtensions:\n            - siderolabs/qemu-guest-agent\n",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)

			s, err := NewSchematic(tc.opts)
			g.Expect(err).NotTo(HaveOccurred())

			y, err := CanonicalYAML(s)
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(string(y)).To(Equal(tc.wantYAML))

			id, err := SchematicID(s)
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(id).To(Equal(tc.wantID))

			// Parsing the canonical form back gives the same ID (what the factory does on POST).
			back, err := ParseSchematic(y)
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(SchematicID(back)).To(Equal(tc.wantID))
		})
	}
}

func TestNewSchematic(t *testing.T) {
	for _, tc := range []struct {
		name     string
		opts     SchematicOptions
		wantYAML string
		wantErr  string
	}{
		{
			name:     "defaults: qemu-guest-agent and tailscale",
			opts:     SchematicOptions{},
			wantYAML: "customization:\n    systemExtensions:\n        officialExtensions:\n            - siderolabs/qemu-guest-agent\n            - siderolabs/tailscale\n",
		},
		{
			name: "kernel args and META 10",
			opts: SchematicOptions{
				Extensions:      []string{ExtensionQEMUGuestAgent},
				ExtraKernelArgs: []string{"talos.config=metal-iso", "net.ifnames=0"},
				Meta:            []MetaValue{{Key: MetaKeyNetworkPlatformConfig, Value: "addresses: []\n"}},
			},
			wantYAML: "customization:\n    extraKernelArgs:\n        - talos.config=metal-iso\n        - net.ifnames=0\n    meta:\n        - key: 10\n          value: |\n            addresses: []\n    systemExtensions:\n        officialExtensions:\n            - siderolabs/qemu-guest-agent\n",
		},
		{name: "duplicate extension", opts: SchematicOptions{Extensions: []string{"siderolabs/a", "siderolabs/a"}}, wantErr: `extension "siderolabs/a" listed twice`},
		{name: "unqualified extension", opts: SchematicOptions{Extensions: []string{"tailscale"}}, wantErr: "must be qualified"},
		{name: "kernel arg with space", opts: SchematicOptions{ExtraKernelArgs: []string{"a=1 b=2"}}, wantErr: "one argument per entry"},
		{name: "duplicate META key", opts: SchematicOptions{Meta: []MetaValue{{Key: 10}, {Key: 10}}}, wantErr: "META key 0xa listed twice"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)

			s, err := NewSchematic(tc.opts)
			if tc.wantErr != "" {
				g.Expect(err).To(MatchError(ErrInvalidSchematic))
				g.Expect(err).To(MatchError(ContainSubstring(tc.wantErr)))

				return
			}

			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(CanonicalYAML(s)).To(BeEquivalentTo(tc.wantYAML))
		})
	}
}

func TestSchematicIDOrderMatters(t *testing.T) {
	g := NewWithT(t)

	a, err := NewSchematic(SchematicOptions{Extensions: []string{ExtensionQEMUGuestAgent, ExtensionTailscale}})
	g.Expect(err).NotTo(HaveOccurred())
	b, err := NewSchematic(SchematicOptions{Extensions: []string{ExtensionTailscale, ExtensionQEMUGuestAgent}})
	g.Expect(err).NotTo(HaveOccurred())

	// The factory does not sort, so neither do we: a different order is a different image.
	g.Expect(SchematicID(a)).NotTo(Equal(must(SchematicID(b))))
}

func TestDefaultExtensionsIsACopy(t *testing.T) {
	g := NewWithT(t)

	d := DefaultExtensions()
	d[0] = "mutated"
	g.Expect(DefaultExtensions()[0]).To(Equal(ExtensionQEMUGuestAgent))
}

func TestParseSchematicRejectsUnknownFields(t *testing.T) {
	g := NewWithT(t)

	_, err := ParseSchematic([]byte("customization:\n  systemExtension: {}\n"))
	g.Expect(err).To(MatchError(ErrInvalidSchematic))
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}

	return v
}

func TestRememberedIDsAreTheComputedOnes(t *testing.T) {
	network := func(addr string) []MetaValue {
		return []MetaValue{{Key: MetaKeyNetworkPlatformConfig, Value: "addresses:\n    - address: " + addr + "\n"}}
	}
	withOverlay := must(NewSchematic(SchematicOptions{}))
	withOverlay.Overlay.Name = "rpi_generic"
	withOverlay.Overlay.Image = "siderolabs/sbc-raspberrypi"

	schematics := []*Schematic{
		must(NewSchematic(SchematicOptions{})),
		must(NewSchematic(SchematicOptions{Extensions: []string{}})),
		must(NewSchematic(SchematicOptions{Extensions: []string{"a/b", "c/d"}})),
		// The same characters split differently are different schematics.
		must(NewSchematic(SchematicOptions{Extensions: []string{"a/bc/d"}})),
		must(NewSchematic(SchematicOptions{Extensions: []string{}, ExtraKernelArgs: []string{"a/b", "c/d"}})),
		// Two metal machines differ only in their META network config.
		must(NewSchematic(SchematicOptions{ExtraKernelArgs: []string{"talos.config=metal-iso"}, Meta: network("192.0.2.10/24")})),
		must(NewSchematic(SchematicOptions{ExtraKernelArgs: []string{"talos.config=metal-iso"}, Meta: network("192.0.2.11/24")})),
		// Fields this package never sets are not remembered, and must not share an entry.
		withOverlay,
	}
	seen := map[string]int{}
	for i, s := range schematics {
		want, err := s.ID()
		if err != nil {
			t.Fatal(err)
		}
		for range 2 { // computed, then remembered
			g := NewWithT(t)
			g.Expect(SchematicID(s)).To(Equal(want), "schematic %d", i)
		}
		if j, dup := seen[want]; dup {
			t.Fatalf("schematics %d and %d have the same ID", j, i)
		}
		seen[want] = i
	}
	_, remembered := idKey(withOverlay)
	NewWithT(t).Expect(remembered).To(BeFalse())
}
