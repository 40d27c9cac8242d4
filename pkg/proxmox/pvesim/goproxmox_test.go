package pvesim

import (
	"context"
	"crypto/x509"
	"strings"
	"testing"
	"time"

	proxmox "github.com/luthermonson/go-proxmox"
	. "github.com/onsi/gomega"
)

// TestGoProxmoxCompatibility drives the main provider flow with the real
// client library over TLS.
func TestGoProxmoxCompatibility(t *testing.T) {
	g := NewWithT(t)
	s, err := New(Config{})
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(s.StartTLS()).To(Succeed())
	t.Cleanup(s.Close)
	pool := x509.NewCertPool()
	g.Expect(pool.AppendCertsFromPEM(s.CAPEM())).To(BeTrue())
	c := proxmox.NewClient(s.URL(), proxmox.WithAPIToken(DefaultTokenID, DefaultTokenSecret), proxmox.WithRootCAs(pool))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	proxmox.DefaultWaitInterval = 5 * time.Millisecond

	v, err := c.Version(ctx)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(v.Release).To(Equal("9.1"))

	cl, err := c.Cluster(ctx)
	g.Expect(err).NotTo(HaveOccurred())
	id, err := cl.NextID(ctx)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(id).To(Equal(100))

	node, err := c.Node(ctx, "pve1")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(node.Memory.Total).To(Equal(64 * gib))

	storages, err := node.Storages(ctx)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(storages).To(HaveLen(2))
	local, err := node.Storage(ctx, "local")
	g.Expect(err).NotTo(HaveOccurred())

	task, err := local.UploadString("import", "talos.qcow2", string(qcow2Image(2*gib)))
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(task.WaitFor(ctx, 5)).To(Succeed())
	g.Expect(task.IsSuccessful).To(BeTrue())
	task, err = local.UploadString("iso", "cidata.iso", "ISO")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(task.WaitFor(ctx, 5)).To(Succeed())
	content, err := local.GetContent(ctx)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(content).To(HaveLen(2))

	task, err = node.NewVirtualMachine(ctx, id,
		proxmox.VirtualMachineOption{Name: "name", Value: "cp-1"},
		proxmox.VirtualMachineOption{Name: "memory", Value: 2048},
		proxmox.VirtualMachineOption{Name: "cores", Value: 2},
		proxmox.VirtualMachineOption{Name: "scsi0", Value: "local-lvm:0,import-from=local:import/talos.qcow2"},
		proxmox.VirtualMachineOption{Name: "ide2", Value: "local:iso/cidata.iso,media=cdrom"},
		proxmox.VirtualMachineOption{Name: "net0", Value: "virtio,bridge=vmbr0"},
		proxmox.VirtualMachineOption{Name: "agent", Value: "enabled=1"},
		proxmox.VirtualMachineOption{Name: "tags", Value: "capi"},
	)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(task.WaitFor(ctx, 5)).To(Succeed())
	g.Expect(task.IsSuccessful).To(BeTrue(), task.ExitStatus)

	vm, err := node.VirtualMachine(ctx, id)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(vm.Name).To(Equal("cp-1"))
	g.Expect(vm.VirtualMachineConfig.SCSIs["scsi0"]).To(HavePrefix("local-lvm:vm-100-disk-0"))
	g.Expect(*vm.VirtualMachineConfig.Cores).To(Equal(2))
	g.Expect(vm.HasTag("capi")).To(BeTrue())

	task, err = vm.ResizeDisk(ctx, "scsi0", "+8G")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(task.WaitFor(ctx, 5)).To(Succeed())

	task, err = vm.Start(ctx)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(task.WaitFor(ctx, 5)).To(Succeed())
	g.Expect(vm.Ping(ctx)).To(Succeed())
	g.Expect(vm.IsRunning()).To(BeTrue())

	g.Expect(s.SetGuestInterfaces(id, []GuestInterface{{Name: "eth0", MAC: "BC:24:11:00:00:01",
		Addresses: []GuestAddress{{IP: "192.168.1.50", Prefix: 24}}}})).To(Succeed())
	ifaces, err := vm.AgentGetNetworkIFaces(ctx)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(ifaces).To(HaveLen(1))
	g.Expect(ifaces[0].IPAddresses[0].IPAddress).To(Equal("192.168.1.50"))
	g.Expect(vm.WaitForAgent(ctx, 2)).To(Succeed())

	// Delete while running: go-proxmox surfaces PVE's reason phrase.
	_, err = vm.Delete(ctx, nil)
	g.Expect(err).To(MatchError(ContainSubstring("is running - destroy failed")))

	task, err = vm.Stop(ctx)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(task.WaitFor(ctx, 5)).To(Succeed())
	task, err = vm.Delete(ctx, &proxmox.VirtualMachineDeleteOptions{Purge: true, DestroyUnreferencedDisks: true})
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(task.WaitFor(ctx, 5)).To(Succeed())

	_, err = node.VirtualMachine(ctx, id)
	g.Expect(err).To(HaveOccurred())
	g.Expect(strings.Contains(err.Error(), "does not exist")).To(BeTrue(), err.Error())

	iso, err := local.ISO(ctx, "cidata.iso")
	g.Expect(err).NotTo(HaveOccurred())
	task, err = iso.Delete(ctx)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(task.WaitFor(ctx, 5)).To(Succeed())

	inv := s.Inventory()
	g.Expect(inv.VMs).To(BeEmpty())
	g.Expect(inv.VolumesByContent("images")).To(BeEmpty())
	g.Expect(inv.VolumesByContent("iso")).To(BeEmpty())
	g.Expect(s.Calls("GET /nodes/{node}/tasks/{upid}/status")).To(BeNumerically(">", 0))
}
