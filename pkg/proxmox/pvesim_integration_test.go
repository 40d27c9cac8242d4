package proxmox

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/pkg/proxmox/pvesim"
)

// fakeQCOW2 is a minimal qcow2 header with the given virtual size; pvesim
// reads the size from it when importing.
func fakeQCOW2(virtualSize uint64) []byte {
	b := make([]byte, 512)
	copy(b, "QFI\xfb")
	for i := 0; i < 8; i++ {
		b[24+i] = byte(virtualSize >> (56 - 8*i))
	}
	return b
}

type simEnv struct {
	sim    *pvesim.Server
	client *PVEClient
	cfg    Config
}

// startSim runs pvesim over TLS on 127.0.0.1 and returns a client that
// trusts its CA (verification on, as in production).
func startSim(t testing.TB, simCfg pvesim.Config, mods ...func(*Config)) *simEnv {
	t.Helper()
	sim, err := pvesim.New(simCfg)
	if err != nil {
		t.Fatalf("pvesim.New: %v", err)
	}
	if err := sim.StartTLS(); err != nil {
		t.Fatalf("StartTLS: %v", err)
	}
	t.Cleanup(sim.Close)
	tokenID, secret := pvesim.DefaultTokenID, pvesim.DefaultTokenSecret
	if len(simCfg.Tokens) > 0 {
		tokenID, secret = simCfg.Tokens[0].ID, simCfg.Tokens[0].Secret
	}
	cfg := Config{
		URL:             strings.TrimSuffix(sim.URL(), "/api2/json"),
		TokenID:         tokenID,
		TokenSecret:     secret,
		CABundle:        sim.CAPEM(),
		TaskPollInitial: 2 * time.Millisecond,
		TaskPollMax:     10 * time.Millisecond,
		TaskTimeout:     10 * time.Second,
		Retry:           RetryPolicy{MaxAttempts: 8, InitialBackoff: 2 * time.Millisecond, MaxBackoff: 40 * time.Millisecond},
		Limits:          Limits{MaxInFlight: 8, MaxInFlightPerNode: 4, QPS: -1},
	}
	for _, m := range mods {
		m(&cfg)
	}
	c, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return &simEnv{sim: sim, client: c, cfg: cfg}
}

func simSpec(node, name, image string) VMSpec {
	return VMSpec{
		Node: node, Name: name, Tags: []string{"capi", "cluster-sim"},
		Sockets: 1, Cores: 2, CPUType: "host", MemoryMiB: 2048, BalloonMiB: ptr(0),
		Machine: "q35", BIOS: "ovmf",
		BootDisk: Disk{Storage: "local-lvm", ImportFrom: image, Discard: true, SSD: true, Cache: "writethrough"},
		NICs:     []NIC{{Bridge: "vmbr0"}},
		// No RNG: rng0 is root@pam's alone (see VMSpec.RNG).
		Agent: true, SerialConsole: true, OnBoot: true,
	}
}

// TestSimLifecycle drives a machine's whole life against pvesim.
func TestSimLifecycle(t *testing.T) {
	g := NewWithT(t)
	env := startSim(t, pvesim.Config{Version: "8.4.1"})
	c := env.client
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	v, err := c.Version(ctx)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(v.AtLeast(8, 4)).To(BeTrue())
	nodes, err := c.Nodes(ctx)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(nodes).To(HaveLen(1))
	g.Expect(nodes[0].FreeMemory).To(BeNumerically(">", 0))
	g.Expect(nodes[0].CPUs).To(Equal(16))

	// Image by download-url from a loopback "Image Factory", with checksum.
	image := fakeQCOW2(1246 << 20)
	sum := sha256.Sum256(image)
	factory := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write(image) }))
	defer factory.Close()
	res, err := c.EnsureImage(ctx, ImageRequest{
		Node: "pve1", Storage: "local", Content: "import", Filename: talosImage,
		URL: factory.URL + "/image/nocloud-amd64.qcow2", Checksum: hex.EncodeToString(sum[:]), ChecksumAlgorithm: "sha256",
	})
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(res).To(Equal(ImageResult{VolID: "local:import/" + talosImage, Transferred: true}))
	res, err = c.EnsureImage(ctx, ImageRequest{Node: "pve1", Storage: "local", Content: "import", Filename: talosImage, URL: factory.URL + "/x"})
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(res.Transferred).To(BeFalse())

	// Wrong checksum: the task fails with PVE's text.
	_, err = c.EnsureImage(ctx, ImageRequest{
		Node: "pve1", Storage: "local", Content: "import", Filename: "other.qcow2",
		URL: factory.URL + "/x", Checksum: strings.Repeat("0", 64), ChecksumAlgorithm: "sha256",
	})
	g.Expect(err).To(MatchError(ErrTaskFailed))

	// Image by streamed upload.
	res, err = c.EnsureImage(ctx, ImageRequest{
		Node: "pve1", Storage: "local", Content: "import", Filename: "uploaded.qcow2",
		Source: func(context.Context) (io.ReadCloser, int64, error) {
			return io.NopCloser(strings.NewReader(string(image))), int64(len(image)), nil
		},
	})
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(res.Transferred).To(BeTrue())
	vols, err := c.StorageContent(ctx, "pve1", "local", "import")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(vols).To(HaveLen(2))

	// cidata ISO.
	isoVol, err := c.UploadISO(ctx, "pve1", "local", "capi-cp-1-cidata.iso", []byte("cidata"))
	g.Expect(err).NotTo(HaveOccurred())

	vmid, err := c.AllocateVMID(ctx, VMIDRange{Min: 1000, Max: 1099})
	g.Expect(err).NotTo(HaveOccurred())
	spec := simSpec("pve1", "cp-1", res.VolID)
	spec.VMID = vmid
	spec.SMBIOSUUID = "5b0c7a3e-8a8e-4a0b-9d7e-1c2f3a4b5c6d"
	spec.NICs[0].MAC = "BC:24:11:00:00:01"
	spec.NICs[0].VLAN = 20
	spec.CDROM = isoVol
	cr, err := c.CreateVM(ctx, spec)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(cr.AlreadyExisted).To(BeFalse())
	cr, err = c.CreateVM(ctx, spec)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(cr.AlreadyExisted).To(BeTrue())

	g.Expect(c.ResizeDisk(ctx, "pve1", vmid, "scsi0", "32G")).To(Succeed())
	g.Expect(c.ResizeDisk(ctx, "pve1", vmid, "scsi0", "32G")).To(Succeed(), "resize to the current size is a no-op")
	g.Expect(c.SetTags(ctx, "pve1", vmid, []string{"capi", "cluster-sim", "cp"})).To(Succeed())
	found, err := c.FindVMs(ctx, VMFilter{Tags: []string{"cluster-sim"}, SMBIOSUUID: strings.ToUpper(spec.SMBIOSUUID)})
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(found).To(HaveLen(1))
	g.Expect(found[0].VMID).To(Equal(vmid))

	cfg, err := c.VMConfig(ctx, "pve1", vmid)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(cfg.SMBIOSUUID()).To(Equal(spec.SMBIOSUUID))
	g.Expect(cfg["scsi0"]).To(ContainSubstring("size=32G"))

	g.Expect(c.StartVM(ctx, "pve1", vmid)).To(Succeed())
	g.Expect(c.StartVM(ctx, "pve1", vmid)).To(Succeed(), "start of a running VM is success")
	st, err := c.VMStatus(ctx, "pve1", vmid)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(st.Running()).To(BeTrue())

	g.Expect(env.sim.SetGuestAgentRunning(vmid, false)).To(Succeed())
	_, err = c.GuestNetworkInterfaces(ctx, "pve1", vmid)
	g.Expect(err).To(MatchError(ErrAgentNotRunning))
	g.Expect(env.sim.SetGuestInterfaces(vmid, []pvesim.GuestInterface{{Name: "eth0", MAC: "bc:24:11:00:00:01", Addresses: []pvesim.GuestAddress{{IP: "10.0.0.5", Prefix: 24}}}})).To(Succeed())
	g.Expect(env.sim.SetGuestAgentRunning(vmid, true)).To(Succeed())
	ifs, err := c.GuestNetworkInterfaces(ctx, "pve1", vmid)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(ifs).To(ContainElement(HaveField("IPs", ContainElement(HaveField("Address", "10.0.0.5")))))

	// A node that is down: 595 from pveproxy, retried, then ErrUnavailable.
	env.sim.SetNodeOnline("pve1", false)
	_, err = c.VMStatus(ctx, "pve1", vmid)
	g.Expect(err).To(MatchError(ErrUnavailable))
	env.sim.SetNodeOnline("pve1", true)

	g.Expect(c.DetachISO(ctx, "pve1", vmid, "ide2")).To(Succeed())
	g.Expect(c.AttachISO(ctx, "pve1", vmid, "ide2", isoVol)).To(Succeed())
	g.Expect(c.DetachISO(ctx, "pve1", vmid, "ide2")).To(Succeed())

	// Delete while running: stop (waited for) then destroy.
	g.Expect(c.DeleteVM(ctx, "pve1", vmid)).To(Succeed())
	g.Expect(c.DeleteVM(ctx, "pve1", vmid)).To(Succeed(), "delete of a missing VM is success")
	_, err = c.VMStatus(ctx, "pve1", vmid)
	g.Expect(err).To(MatchError(ErrNotFound))
	g.Expect(c.DeleteVolume(ctx, "pve1", isoVol)).To(Succeed())
	g.Expect(c.DeleteVolume(ctx, "pve1", isoVol)).To(Succeed())

	inv := env.sim.Inventory()
	g.Expect(inv.VMs).To(BeEmpty())
	g.Expect(inv.VolumesByContent("images")).To(BeEmpty(), "no disk leaked")
	g.Expect(inv.VolumesByContent("iso")).To(BeEmpty(), "no cidata ISO leaked")
}

func TestSimPermissionsAndAuth(t *testing.T) {
	g := NewWithT(t)
	const secret = "6f1c2a34-1111-4222-8333-944455556666"
	env := startSim(t, pvesim.Config{Tokens: []pvesim.TokenConfig{{
		ID: "capi@pve!provider", Secret: secret,
		ACLs: []pvesim.ACLConfig{{Path: "/", Privileges: []string{"VM.Audit", "Sys.Audit", "Datastore.Audit"}}},
	}}})
	ctx := context.Background()
	g.Expect(env.sim.AddVolume("local", "pve1", "import", talosImage, fakeQCOW2(1<<30))).Error().NotTo(HaveOccurred())
	spec := simSpec("pve1", "cp-1", "local:import/"+talosImage)
	spec.VMID = 100
	_, err := env.client.CreateVM(ctx, spec)
	g.Expect(err).To(MatchError(ErrPermissionDenied))
	var pe *PermissionError
	g.Expect(errors.As(err, &pe)).To(BeTrue())
	g.Expect(pe.Privilege).To(ContainSubstring("VM.Allocate"))
	g.Expect(pe.Path).To(HavePrefix("/vms"))
	g.Expect(err.Error()).To(ContainSubstring("token capi@pve!provider lacks"))
	g.Expect(err.Error()).NotTo(ContainSubstring(secret))

	bad, err := New(func() Config { c := env.cfg; c.TokenSecret = "aaaaaaaa-0000-0000-0000-000000000000"; return c }())
	g.Expect(err).NotTo(HaveOccurred())
	_, err = bad.Nodes(ctx)
	g.Expect(err).To(MatchError(ErrUnauthorized))
	g.Expect(err.Error()).NotTo(ContainSubstring("aaaaaaaa-0000"))
}

// TestSimParallelCreationsAcceptance: 50 parallel VM creations on 3 nodes with
// injected lock timeouts end with exactly 50 VMs, no duplicate VMIDs, and the
// in-flight calls pvesim measured never exceed the configured limits.
func TestSimParallelCreationsAcceptance(t *testing.T) {
	g := NewWithT(t)
	const (
		vms         = 50
		maxInFlight = 6
		perNode     = 3
	)
	env := startSim(t, pvesim.Config{
		Nodes: []pvesim.NodeConfig{{Name: "pve1"}, {Name: "pve2"}, {Name: "pve3"}},
		Seed:  42,
		// PVE waits up to 60s for a storage lock; the simulator compresses
		// that. With 0 it would fail every overlapping task at once.
		LockTimeout: pvesim.Duration(100 * time.Millisecond),
	}, func(c *Config) {
		c.Limits = Limits{MaxInFlight: maxInFlight, MaxInFlightPerNode: perNode, QPS: -1}
		c.Retry = RetryPolicy{MaxAttempts: 15, InitialBackoff: 2 * time.Millisecond, MaxBackoff: 50 * time.Millisecond}
	})
	nodes := env.sim.Nodes()
	for _, n := range nodes {
		_, err := env.sim.AddVolume("local", n, "import", talosImage, fakeQCOW2(1<<30))
		g.Expect(err).NotTo(HaveOccurred())
	}
	// Lock timeouts on the create task and on synchronous config/status calls.
	env.sim.AddFault(pvesim.Fault{Method: "POST", Path: "/nodes/{node}/qemu", LockTimeoutRate: 0.3})
	env.sim.AddFault(pvesim.Fault{Method: "GET", Path: "/nodes/{node}/qemu/{vmid}/config", LockTimeoutRate: 0.1})
	env.sim.ResetStats()

	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	errs := make([]error, vms)
	for i := range vms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			spec := simSpec(nodes[i%len(nodes)], fmt.Sprintf("m-%02d", i), "local:import/"+talosImage)
			_, errs[i] = AllocateAndCreateVM(ctx, env.client, spec, VMIDRange{Min: 100, Max: 999}, 5)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		g.Expect(err).NotTo(HaveOccurred(), "machine %d", i)
	}
	g.Expect(env.sim.WaitTasks(5 * time.Second)).To(Succeed())

	inv := env.sim.Inventory()
	g.Expect(inv.VMs).To(HaveLen(vms))
	ids := map[int]bool{}
	names := map[string]bool{}
	for _, vm := range inv.VMs {
		g.Expect(ids[vm.VMID]).To(BeFalse(), "duplicate VMID %d", vm.VMID)
		ids[vm.VMID] = true
		g.Expect(names[vm.Name]).To(BeFalse(), "duplicate VM %s", vm.Name)
		names[vm.Name] = true
	}
	st := env.sim.Stats()
	g.Expect(st.MaxInFlight).To(BeNumerically("<=", maxInFlight))
	g.Expect(st.MaxInFlight).To(BeNumerically(">", 1), "requests did run in parallel")
	for _, n := range nodes {
		g.Expect(st.NodeMaxInFlight[n]).To(BeNumerically("<=", perNode), "node %s", n)
	}
	failedCreates := 0
	for _, tk := range env.sim.Tasks() {
		if tk.Type == "qmcreate" && !tk.Running && tk.ExitStatus != "OK" {
			failedCreates++
		}
	}
	g.Expect(failedCreates).To(BeNumerically(">", 0), "faults were injected and retried")
	t.Logf("calls: %d create POSTs for %d VMs, %d failed create tasks, max in flight %d", st.Calls["POST /nodes/{node}/qemu"], vms, failedCreates, st.MaxInFlight)
}

// BenchmarkCreateVM creates VMs against pvesim and reports API calls per VM
// (no timed assertions).
func BenchmarkCreateVM(b *testing.B) {
	env := startSim(b, pvesim.Config{
		Nodes: []pvesim.NodeConfig{{Name: "pve1"}, {Name: "pve2"}, {Name: "pve3"}},
		Storages: []pvesim.StorageConfig{
			{Name: "local", Type: "dir", Content: "iso,import"},
			{Name: "local-lvm", Type: "lvmthin", Content: "images", Size: 1 << 50}, // room for any b.N
		},
		TaskDuration: pvesim.Duration(time.Millisecond),
	},
		func(c *Config) { c.TaskPollInitial = time.Millisecond; c.TaskPollMax = 5 * time.Millisecond })
	nodes := env.sim.Nodes()
	for _, n := range nodes {
		if _, err := env.sim.AddVolume("local", n, "import", talosImage, fakeQCOW2(1<<30)); err != nil {
			b.Fatal(err)
		}
	}
	env.sim.ResetStats()
	ctx := context.Background()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		spec := simSpec(nodes[i%len(nodes)], fmt.Sprintf("bench-%d", i), "local:import/"+talosImage)
		if _, err := AllocateAndCreateVM(ctx, env.client, spec, VMIDRange{Min: 100, Max: 999999}, 5); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	total := 0
	for _, n := range env.sim.Stats().Calls {
		total += n
	}
	b.ReportMetric(float64(total)/float64(b.N), "calls/vm")
	calls := env.sim.Stats().Calls
	b.ReportMetric(float64(calls["GET /nodes/{node}/tasks/{upid}/status"]+calls["GET /cluster/tasks"])/float64(b.N), "taskpolls/vm")
}

func TestSimTLSVerification(t *testing.T) {
	g := NewWithT(t)
	env := startSim(t, pvesim.Config{})
	ctx := context.Background()
	_, err := env.client.Version(ctx)
	g.Expect(err).NotTo(HaveOccurred(), "trusted via CABundle")

	noCA := env.cfg
	noCA.CABundle = nil
	m, err := NewMetrics(nil)
	g.Expect(err).NotTo(HaveOccurred())
	noCA.Metrics = m
	c, err := New(noCA)
	g.Expect(err).NotTo(HaveOccurred())
	_, err = c.Nodes(ctx)
	g.Expect(err).To(MatchError(ErrUnavailable), "verification is on by default")
	g.Expect(err.Error()).To(ContainSubstring("certificate"))
	g.Expect(testutil.ToFloat64(m.retries.WithLabelValues("network"))).To(BeZero(), "TLS failures are not retried")
	g.Expect(testutil.ToFloat64(m.requests.WithLabelValues("GET", "error"))).To(Equal(1.0))

	insecure := noCA
	insecure.InsecureSkipVerify = true
	c, err = New(insecure)
	g.Expect(err).NotTo(HaveOccurred())
	_, err = c.Nodes(ctx)
	g.Expect(err).NotTo(HaveOccurred(), "explicitly insecure")
}

// TestSimStartDeleteVolume: the delete returns the imgdel task without waiting; the volume is
// gone once the task ended OK; a missing volume is "" and no error, a bad id is refused.
func TestSimStartDeleteVolume(t *testing.T) {
	g := NewWithT(t)
	env := startSim(t, pvesim.Config{})
	c, ctx := env.client, context.Background()
	vol, err := c.UploadISO(ctx, "pve1", "local", "talos-test.iso", make([]byte, 4096))
	g.Expect(err).NotTo(HaveOccurred())
	upid, err := c.StartDeleteVolume(ctx, "pve1", vol)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(upid).To(HavePrefix("UPID:pve1:"))
	g.Eventually(func(g Gomega) {
		st, err := c.TaskStatus(ctx, upid)
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(st.Running).To(BeFalse())
		g.Expect(st.Type).To(Equal("imgdel"))
		g.Expect(st.Err()).NotTo(HaveOccurred())
	}, 10*time.Second, 10*time.Millisecond).Should(Succeed())
	g.Expect(env.sim.Inventory().VolumesByContent("iso")).To(BeEmpty())

	upid, err = c.StartDeleteVolume(ctx, "pve1", vol)
	g.Expect(err).NotTo(HaveOccurred(), "a missing volume is already deleted")
	g.Expect(upid).To(BeEmpty())
	_, err = c.StartDeleteVolume(ctx, "pve1", "no-colon")
	g.Expect(err).To(MatchError(ErrInvalidConfig))
}

// TestSimDeleteVolumeWaitsServerSide: deleting a file asks PVE to wait for its own worker
// (`delay`), so a quick deletion is one call and no task read; a failed deletion is the
// call's error; one still running after the delay answers with its UPID, which the client
// follows like any task.
func TestSimDeleteVolumeWaitsServerSide(t *testing.T) {
	g := NewWithT(t)
	env := startSim(t, pvesim.Config{Profile: pvesim.ProfileRealistic, TimeScale: 0.01})
	c, ctx := env.client, context.Background()
	del := "DELETE /nodes/{node}/storage/{storage}/content/{volume}"
	status, list := "GET /nodes/{node}/tasks/{upid}/status", "GET /cluster/tasks"

	vol, err := c.UploadISO(ctx, "pve1", "local", "quick.iso", make([]byte, 4096))
	g.Expect(err).NotTo(HaveOccurred())
	before := env.sim.Stats().Calls
	g.Expect(c.DeleteVolume(ctx, "pve1", vol)).To(Succeed())
	after := env.sim.Stats().Calls
	g.Expect(after[del] - before[del]).To(Equal(1))
	g.Expect(after[status]-before[status]+after[list]-before[list]).To(Equal(0), "no task read: PVE answered null once the deletion was done")
	g.Expect(env.sim.Inventory().VolumesByContent("iso")).To(BeEmpty())

	vol, err = c.UploadISO(ctx, "pve1", "local", "fails.iso", make([]byte, 4096))
	g.Expect(err).NotTo(HaveOccurred())
	env.sim.AddFault(pvesim.Fault{Method: "DELETE", Path: "/nodes/{node}/storage/{storage}/content/{volume}", TaskFailureRate: 1, TaskErrorText: "unlink failed: Permission denied"})
	err = c.DeleteVolume(ctx, "pve1", vol)
	g.Expect(err).To(MatchError(ContainSubstring("unlink failed: Permission denied")))

	// A deletion still running after the delay (8 Proxmox seconds against 5) answers with
	// its UPID, which the client follows to the end.
	slow := startSim(t, pvesim.Config{Profile: pvesim.ProfileRealistic, TimeScale: 0.01, TaskDuration: pvesim.Duration(80 * time.Millisecond)})
	vol, err = slow.client.UploadISO(ctx, "pve1", "local", "slow.iso", make([]byte, 4096))
	g.Expect(err).NotTo(HaveOccurred())
	before = slow.sim.Stats().Calls
	g.Expect(slow.client.DeleteVolume(ctx, "pve1", vol)).To(Succeed())
	after = slow.sim.Stats().Calls
	g.Expect(after[del] - before[del]).To(Equal(1))
	g.Expect(after[status]-before[status]+after[list]-before[list]).To(BeNumerically(">=", 1), "the task is followed")
	g.Expect(slow.sim.Inventory().VolumesByContent("iso")).To(BeEmpty())
}
