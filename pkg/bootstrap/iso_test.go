package bootstrap

import (
	"os"
	"strings"
	"testing"

	. "github.com/onsi/gomega"
)

func TestCIDataISORoundTrip(t *testing.T) {
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp) // to prove the staging workspace is removed

	netcfg, err := NoCloudNetworkConfig(dualStackNetwork())
	NewWithT(t).Expect(err).NotTo(HaveOccurred())

	meta, err := NoCloudMetaData(MetaData{InstanceID: "cp-1", Hostname: "cp-1"})
	NewWithT(t).Expect(err).NotTo(HaveOccurred())

	for _, tc := range []struct {
		name string
		in   CIData
		want map[string][]byte
	}{
		{
			name: "with network-config",
			in:   CIData{UserData: []byte(machineConfig), MetaData: meta, NetworkConfig: netcfg},
			want: map[string][]byte{FileUserData: []byte(machineConfig), FileMetaData: meta, FileNetworkConfig: netcfg},
		},
		{
			name: "dhcp (no network-config)",
			in:   CIData{UserData: []byte(machineConfig), MetaData: meta},
			want: map[string][]byte{FileUserData: []byte(machineConfig), FileMetaData: meta},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)

			iso, err := CIDataISO(tc.in)
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(len(iso) % 2048).To(BeZero())

			label, files, err := ReadISO(iso)
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(label).To(Equal("cidata"))
			// ECMA-119: the identifier is space padded (NUL padding breaks label probes).
			g.Expect(string(iso[16*2048+40 : 16*2048+72])).To(Equal("cidata" + strings.Repeat(" ", 26)))
			g.Expect(files).To(Equal(tc.want))

			left, err := os.ReadDir(tmp)
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(left).To(BeEmpty(), "temporary workspace must be removed")
		})
	}
}

func TestMetalISORoundTrip(t *testing.T) {
	g := NewWithT(t)

	// A larger config (several ISO blocks) to exercise multi-block files.
	big := []byte(machineConfig)
	for len(big) < 10000 {
		big = append(big, "\n# padding line to cross 2 KiB ISO blocks"...)
	}

	iso, err := MetalISO(big)
	g.Expect(err).NotTo(HaveOccurred())

	label, files, err := ReadISO(iso)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(label).To(Equal("metal-iso"))
	g.Expect(files).To(Equal(map[string][]byte{"config.yaml": big}))
}

func TestISOErrors(t *testing.T) {
	g := NewWithT(t)

	_, err := CIDataISO(CIData{MetaData: []byte("x")})
	g.Expect(err).To(MatchError(ContainSubstring("required")))
	_, err = MetalISO(nil)
	g.Expect(err).To(HaveOccurred())
	_, _, err = ReadISO([]byte("not an iso"))
	g.Expect(err).To(HaveOccurred())
}
