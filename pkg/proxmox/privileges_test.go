package proxmox

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"

	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/pkg/proxmox/pvesim"
)

// privilegeLifecycle runs every Client operation a machine's life needs, in the transfer
// mode given; it returns the first error.
func privilegeLifecycle(ctx context.Context, env *simEnv, transfer ImageTransfer, factoryURL string, image []byte) error {
	c := env.client
	if _, err := c.Version(ctx); err != nil {
		return err
	}
	nodes, err := c.Nodes(ctx)
	if err != nil {
		return err
	}
	if len(nodes) == 0 {
		return fmt.Errorf("no node visible")
	}
	// Placement needs the node's free memory and CPUs; PVE hides them without Sys.Audit.
	if nodes[0].FreeMemory <= 0 || nodes[0].CPUs <= 0 {
		return fmt.Errorf("node %s shows no free memory or CPUs", nodes[0].Name)
	}
	storages, err := c.Storages(ctx, "pve1")
	if err != nil {
		return err
	}
	var names []string
	for _, s := range storages {
		names = append(names, s.Name)
	}
	if !slices.Contains(names, "local") || !slices.Contains(names, "local-lvm") {
		return fmt.Errorf("storages not visible: %v", names)
	}
	if _, err := c.StorageContent(ctx, "pve1", "local", "import"); err != nil {
		return err
	}
	sum := sha256.Sum256(image)
	req := ImageRequest{Node: "pve1", Storage: "local", Content: "import", Filename: talosImage, Transfer: transfer,
		Checksum: hex.EncodeToString(sum[:]), ChecksumAlgorithm: "sha256"}
	if transfer == TransferDownload {
		req.URL = factoryURL
	} else {
		req.Source = func(context.Context) (io.ReadCloser, int64, error) {
			return io.NopCloser(strings.NewReader(string(image))), int64(len(image)), nil
		}
	}
	img, err := c.EnsureImage(ctx, req)
	if err != nil {
		return err
	}
	iso, err := c.UploadISO(ctx, "pve1", "local", "capi-cp-1-cidata.iso", []byte("cidata"))
	if err != nil {
		return err
	}
	vmid, err := c.AllocateVMID(ctx, VMIDRange{Min: 1000, Max: 1099})
	if err != nil {
		return err
	}
	spec := simSpec("pve1", "cp-1", img.VolID)
	spec.VMID = vmid
	spec.SMBIOSUUID = "5b0c7a3e-8a8e-4a0b-9d7e-1c2f3a4b5c6d"
	spec.NICs[0].MAC = "BC:24:11:00:00:01"
	spec.NICs[0].VLAN = 20
	spec.CDROM = iso
	if _, err := c.CreateVM(ctx, spec); err != nil {
		return err
	}
	steps := []func() error{
		func() error { return c.ResizeDisk(ctx, "pve1", vmid, "scsi0", "32G") },
		func() error { return c.SetTags(ctx, "pve1", vmid, []string{"capi", "cluster-sim", "cp"}) },
		func() error {
			found, err := c.FindVMs(ctx, VMFilter{Tags: []string{"cluster-sim"}})
			if err == nil && len(found) != 1 {
				err = fmt.Errorf("FindVMs found %d VMs", len(found))
			}
			return err
		},
		func() error { _, err := c.VMConfig(ctx, "pve1", vmid); return err },
		func() error { return c.StartVM(ctx, "pve1", vmid) },
		func() error { _, err := c.VMStatus(ctx, "pve1", vmid); return err },
		func() error {
			if err := env.sim.SetGuestInterfaces(vmid, []pvesim.GuestInterface{{Name: "eth0", MAC: "bc:24:11:00:00:01",
				Addresses: []pvesim.GuestAddress{{IP: "10.0.0.5", Prefix: 24}}}}); err != nil {
				return err
			}
			if err := env.sim.SetGuestAgentRunning(vmid, true); err != nil {
				return err
			}
			_, err := c.GuestNetworkInterfaces(ctx, "pve1", vmid)
			return err
		},
		func() error { return c.DetachISO(ctx, "pve1", vmid, "ide2") },
		func() error { return c.AttachISO(ctx, "pve1", vmid, "ide2", iso) },
		func() error { return c.StopVM(ctx, "pve1", vmid) },
		func() error { return c.DeleteVM(ctx, "pve1", vmid) },
		func() error { return c.DeleteVolume(ctx, "pve1", iso) },
	}
	for _, s := range steps {
		if err := s(); err != nil {
			return err
		}
	}
	if inv := env.sim.Inventory(); len(inv.VMs) != 0 || len(inv.VolumesByContent("iso")) != 0 {
		return fmt.Errorf("leftovers: %d VMs, %d ISOs", len(inv.VMs), len(inv.VolumesByContent("iso")))
	}
	return nil
}

// TestRequiredPrivilegesAreExact: with the table's privileges on "/" a machine's whole life
// succeeds against pvesim (which evaluates the official schemas' permission checks of PVE
// 8.4 and 9.1), and removing any single privilege makes it fail: the table is what the code
// needs, no more and no less.
func TestRequiredPrivilegesAreExact(t *testing.T) {
	image := fakeQCOW2(1246 << 20)
	factory := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write(image) }))
	defer factory.Close()
	const tokenID, secret = "capi@pve!provider", "6f1c2a34-1111-4222-8333-944455556666"

	run := func(version string, transfer ImageTransfer, privs []string) error {
		env := startSim(t, pvesim.Config{Version: version, Tokens: []pvesim.TokenConfig{{
			ID: tokenID, Secret: secret, ACLs: []pvesim.ACLConfig{{Path: "/", Privileges: privs}},
		}}})
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		return privilegeLifecycle(ctx, env, transfer, factory.URL+"/image/nocloud-amd64.qcow2", image)
	}
	for _, tc := range []struct {
		version string
		major   int
	}{{"8.4.1", 8}, {"9.1.2", 9}} {
		for _, transfer := range []ImageTransfer{TransferDownload, TransferUpload} {
			t.Run(fmt.Sprintf("pve-%s-%s", tc.version, transfer), func(t *testing.T) {
				g := NewWithT(t)
				privs := RequiredPrivileges(tc.major, transfer)
				g.Expect(run(tc.version, transfer, privs)).To(Succeed(), "the table's privileges suffice")
				for _, p := range privs {
					without := slices.DeleteFunc(slices.Clone(privs), func(s string) bool { return s == p })
					err := run(tc.version, transfer, without)
					g.Expect(err).To(HaveOccurred(), "%s is in the table but nothing failed without it", p)
				}
			})
		}
	}
}

func TestRequiredPrivilegesByModeAndVersion(t *testing.T) {
	g := NewWithT(t)
	g.Expect(RequiredPrivileges(8, TransferDownload)).To(ContainElements("Sys.AccessNetwork", "VM.Monitor"))
	g.Expect(RequiredPrivileges(8, TransferUpload)).NotTo(ContainElement("Sys.AccessNetwork"))
	g.Expect(RequiredPrivileges(9, TransferDownload)).To(ContainElement("VM.GuestAgent.Audit"))
	g.Expect(RequiredPrivileges(9, TransferDownload)).NotTo(ContainElement("VM.Monitor"))
	g.Expect(slices.IsSorted(RequiredPrivileges(9, TransferUpload))).To(BeTrue())
}
