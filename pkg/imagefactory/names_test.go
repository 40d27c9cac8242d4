package imagefactory

import (
	"strings"
	"testing"

	. "github.com/onsi/gomega"
)

const qgaID = "ce4c980550dd2ab1b17bbf2b08801c7eb59418eafe8f279833297925d67c7515"

func TestImageNames(t *testing.T) {
	for _, tc := range []struct {
		name        string
		ref         ImageRef
		wantFile    string
		wantStorage string
		wantErr     string
	}{
		{
			name:        "nocloud amd64",
			ref:         ImageRef{SchematicID: qgaID, TalosVersion: "v1.14.1", Platform: PlatformNoCloud, Arch: ArchAMD64},
			wantFile:    "nocloud-amd64.qcow2",
			wantStorage: "talos-v1.14.1-nocloud-amd64-" + qgaID + ".qcow2",
		},
		{
			name:        "metal arm64 secureboot prerelease",
			ref:         ImageRef{SchematicID: qgaID, TalosVersion: "v1.15.0-alpha.1", Platform: PlatformMetal, Arch: ArchARM64, SecureBoot: true},
			wantFile:    "metal-arm64-secureboot.qcow2",
			wantStorage: "talos-v1.15.0-alpha.1-metal-arm64-secureboot-" + qgaID + ".qcow2",
		},
		{name: "short schematic", ref: ImageRef{SchematicID: "abc", TalosVersion: "v1.14.1", Platform: "nocloud", Arch: "amd64"}, wantErr: "64 lowercase hex"},
		{name: "version without v", ref: ImageRef{SchematicID: qgaID, TalosVersion: "1.14.1", Platform: "nocloud", Arch: "amd64"}, wantErr: "not a Talos version"},
		{name: "version with slash", ref: ImageRef{SchematicID: qgaID, TalosVersion: "v1.14.1/../x", Platform: "nocloud", Arch: "amd64"}, wantErr: "not a Talos version"},
		{name: "platform with dash", ref: ImageRef{SchematicID: qgaID, TalosVersion: "v1.14.1", Platform: "no-cloud", Arch: "amd64"}, wantErr: "platform"},
		{name: "bad arch", ref: ImageRef{SchematicID: qgaID, TalosVersion: "v1.14.1", Platform: "nocloud", Arch: "x86_64"}, wantErr: "arch"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)

			got, err := tc.ref.StorageName()
			if tc.wantErr != "" {
				g.Expect(err).To(MatchError(ContainSubstring(tc.wantErr)))

				return
			}

			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(tc.ref.FactoryFile()).To(Equal(tc.wantFile))
			g.Expect(got).To(Equal(tc.wantStorage))
			g.Expect(got).To(MatchRegexp(PVEImportNameRe.String()))
			g.Expect(len(got)).To(BeNumerically("<=", MaxPVEVolumeNameLength))
			g.Expect(ParseStorageName(got)).To(Equal(tc.ref))
		})
	}
}

func TestStorageNamesAreCollisionFree(t *testing.T) {
	g := NewWithT(t)

	other := strings.Repeat("0", 64)
	seen := map[string]ImageRef{}

	for _, id := range []string{qgaID, other} {
		for _, v := range []string{"v1.14.1", "v1.14.10", "v1.14.1-beta.0", "v1.14.1-secureboot"} {
			for _, p := range []string{"nocloud", "metal"} {
				for _, a := range []string{"amd64", "arm64"} {
					for _, sb := range []bool{false, true} {
						ref := ImageRef{SchematicID: id, TalosVersion: v, Platform: p, Arch: a, SecureBoot: sb}
						n, err := ref.StorageName()
						g.Expect(err).NotTo(HaveOccurred())
						g.Expect(seen).NotTo(HaveKey(n), "collision between %+v and %+v", ref, seen[n])
						seen[n] = ref
						// Even a version that ends in "-secureboot" parses back unambiguously.
						g.Expect(ParseStorageName(n)).To(Equal(ref))
					}
				}
			}
		}
	}
}

func TestParseStorageNameRejectsForeignNames(t *testing.T) {
	for _, n := range []string{
		"debian-12.qcow2",
		"talos-v1.14.1-nocloud-amd64.qcow2",
		"talos-v1.14.1-nocloud-amd64-" + qgaID + ".raw",
		"talos-nocloud-amd64-" + qgaID + ".qcow2",
		"talos-v1.14.1-nocloud-x86-" + qgaID + ".qcow2",
	} {
		t.Run(n, func(t *testing.T) {
			_, err := ParseStorageName(n)
			NewWithT(t).Expect(err).To(HaveOccurred())
		})
	}
}

func TestISONames(t *testing.T) {
	g := NewWithT(t)

	a, err := ISOName(ISOKindCIData, "default", "cp-1", "uid-1")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(a).To(MatchRegexp(`^talos-cidata-default-cp-1-[0-9a-f]{16}\.iso$`))
	g.Expect(a).To(MatchRegexp(PVEISONameRe.String()))

	// Deterministic.
	g.Expect(ISOName(ISOKindCIData, "default", "cp-1", "uid-1")).To(Equal(a))

	names := map[string]bool{a: true}
	for _, in := range [][4]string{
		{"metal-iso", "default", "cp-1", "uid-1"}, // other kind
		{"cidata", "default", "cp-1", "uid-2"},    // re-created machine
		{"cidata", "default-cp", "1", "uid-1"},    // same readable part
		{"cidata", "default", "cp-1", "uid-1x"},
	} {
		n, err := ISOName(ISOKind(in[0]), in[1], in[2], in[3])
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(names).NotTo(HaveKey(n))
		names[n] = true
	}

	long, err := ISOName(ISOKindMetalISO, strings.Repeat("n", 63), strings.Repeat("m", 253), "u")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(len(long)).To(Equal(MaxPVEVolumeNameLength))
	g.Expect(long).To(MatchRegexp(PVEISONameRe.String()))

	odd, err := ISOName(ISOKindCIData, "ns", "we ird/näme", "u")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(odd).To(MatchRegexp(PVEISONameRe.String()))

	_, err = ISOName("floppy", "ns", "n", "u")
	g.Expect(err).To(HaveOccurred())
	_, err = ISOName(ISOKindCIData, "ns", "n", "")
	g.Expect(err).To(HaveOccurred())
}
