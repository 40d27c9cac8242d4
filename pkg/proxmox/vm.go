package proxmox

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Version implements Client. The answer is cached: it changes only on a PVE
// upgrade, and EnsureImage consults it on every call.
func (c *PVEClient) Version(ctx context.Context) (VersionInfo, error) {
	c.verMu.Lock()
	if c.version != nil {
		v := *c.version
		c.verMu.Unlock()
		return v, nil
	}
	c.verMu.Unlock()
	var v VersionInfo
	err := c.run(ctx, "Version", func(ctx context.Context) error {
		var w wireVersion
		if err := c.do(ctx, http.MethodGet, "/version", nil, nil, &w); err != nil {
			return err
		}
		v = VersionInfo{Version: w.Version, Release: w.Release, RepoID: w.RepoID}
		return nil
	})
	if err == nil {
		c.verMu.Lock()
		c.version = &v
		c.verMu.Unlock()
	}
	return v, err
}

// ClusterNodes implements Client. The nodes come from the same /cluster/resources
// snapshot as ClusterVMs: pve-manager builds both its node entries and /nodes with
// PVE::API2Tools::extract_node_stats from the same pvestatd round, so one read serves
// placement, preflight, VMID allocation and status checks.
func (c *PVEClient) ClusterNodes(ctx context.Context, maxAge time.Duration) ([]NodeInfo, error) {
	var out []NodeInfo
	err := c.run(ctx, "ClusterNodes", func(ctx context.Context) error {
		snap, err := c.clusterSnapshot(ctx, maxAge)
		out = snap.nodes
		return err
	})
	return out, err
}

// Nodes implements Client.
func (c *PVEClient) Nodes(ctx context.Context) ([]NodeInfo, error) {
	var out []NodeInfo
	err := c.run(ctx, "Nodes", func(ctx context.Context) error {
		var err error
		out, err = c.listNodes(ctx)
		return err
	})
	return out, err
}

func (c *PVEClient) listNodes(ctx context.Context) ([]NodeInfo, error) {
	var ws []wireNode
	if err := c.do(ctx, http.MethodGet, "/nodes", nil, nil, &ws); err != nil {
		return nil, err
	}
	out := make([]NodeInfo, 0, len(ws))
	for _, w := range ws {
		out = append(out, nodeInfo(w.Node, w.Status, float64(w.CPU), int(w.MaxCPU), uint64(w.MaxMem), uint64(w.Mem)))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

func nodeInfo(name, status string, cpu float64, cpus int, maxMem, mem uint64) NodeInfo {
	n := NodeInfo{
		Name:       name,
		Online:     status == "online",
		CPUs:       cpus,
		CPUUsage:   cpu,
		MaxMemory:  maxMem,
		UsedMemory: mem,
	}
	if n.MaxMemory > n.UsedMemory {
		n.FreeMemory = n.MaxMemory - n.UsedMemory
	}
	if n.CPUUsage < 1 {
		n.FreeCPUs = float64(n.CPUs) * (1 - n.CPUUsage)
	}
	return n
}

// VMs implements Client.
func (c *PVEClient) VMs(ctx context.Context) ([]VMRef, error) {
	var out []VMRef
	err := c.run(ctx, "VMs", func(ctx context.Context) error {
		var err error
		out, err = c.listVMs(ctx)
		return err
	})
	return out, err
}

func (c *PVEClient) listVMs(ctx context.Context) ([]VMRef, error) {
	snap, err := c.listResources(ctx, "vm")
	return snap.vms, err
}

// resourceSnapshot is what one /cluster/resources read tells of VMs and nodes.
type resourceSnapshot struct {
	vms   []VMRef
	nodes []NodeInfo
}

// listResources reads /cluster/resources (typ "vm", or "" for VMs and nodes alike).
func (c *PVEClient) listResources(ctx context.Context, typ string) (resourceSnapshot, error) {
	var q url.Values
	if typ != "" {
		q = url.Values{"type": {typ}}
	}
	var ws []wireResource
	if err := c.do(ctx, http.MethodGet, "/cluster/resources", q, nil, &ws); err != nil {
		return resourceSnapshot{}, err
	}
	var snap resourceSnapshot
	for _, w := range ws {
		switch w.Type {
		case "node":
			snap.nodes = append(snap.nodes, nodeInfo(w.Node, w.Status, float64(w.CPU), int(w.MaxCPU), uint64(w.MaxMem), uint64(w.Mem)))
		case "", "qemu", "lxc":
			// type=vm also returns LXC containers; their VMIDs still count as used,
			// so they are returned and callers filter on Template/Name.
			snap.vms = append(snap.vms, VMRef{
				Node:     w.Node,
				VMID:     int(w.VMID),
				Name:     w.Name,
				Status:   w.Status,
				Tags:     splitTags(w.Tags),
				Pool:     w.Pool,
				Template: bool(w.Template),
				Lock:     w.Lock,
				HAState:  w.HAState,
			})
		}
	}
	if snap.vms == nil {
		snap.vms = []VMRef{}
	}
	sort.Slice(snap.vms, func(i, j int) bool { return snap.vms[i].VMID < snap.vms[j].VMID })
	sort.Slice(snap.nodes, func(i, j int) bool { return snap.nodes[i].Name < snap.nodes[j].Name })
	return snap, nil
}

// ClusterVMs implements Client.
func (c *PVEClient) ClusterVMs(ctx context.Context, maxAge time.Duration) ([]VMRef, error) {
	var out []VMRef
	err := c.run(ctx, "ClusterVMs", func(ctx context.Context) error {
		var err error
		out, err = c.clusterVMs(ctx, maxAge)
		return err
	})
	return out, err
}

// clusterVMs is the VMs of the /cluster/resources snapshot (ClusterVMs, VMID allocation).
func (c *PVEClient) clusterVMs(ctx context.Context, maxAge time.Duration) ([]VMRef, error) {
	snap, err := c.clusterSnapshot(ctx, maxAge)
	return snap.vms, err
}

// clusterSnapshot is the /cluster/resources snapshot of VMs and nodes shared by every
// client of the API and token.
func (c *PVEClient) clusterSnapshot(ctx context.Context, maxAge time.Duration) (resourceSnapshot, error) {
	return sharedRead(ctx, c.ep, "resources|"+c.tokenID, maxAge, c.nowFn, func(ctx context.Context) (resourceSnapshot, error) {
		return c.listResources(ctx, "")
	})
}

// FindVMs implements Client.
func (c *PVEClient) FindVMs(ctx context.Context, f VMFilter) ([]VMRef, error) {
	var out []VMRef
	err := c.run(ctx, "FindVMs", func(ctx context.Context) error {
		all, err := c.listVMs(ctx)
		if err != nil {
			return err
		}
		out = out[:0]
		for _, vm := range all {
			if vm.Template && !f.IncludeTemplates {
				continue
			}
			if f.Node != "" && vm.Node != f.Node {
				continue
			}
			if f.Name != "" && vm.Name != f.Name {
				continue
			}
			if !vm.HasTags(f.Tags...) {
				continue
			}
			if f.SMBIOSUUID != "" {
				cfg, err := c.vmConfig(ctx, vm.Node, vm.VMID)
				if errors.Is(err, ErrNotFound) {
					continue // deleted meanwhile
				}
				if err != nil {
					return err
				}
				if !strings.EqualFold(cfg.SMBIOSUUID(), f.SMBIOSUUID) {
					continue
				}
			}
			out = append(out, vm)
		}
		return nil
	})
	return out, err
}

func vmPath(node string, vmid int) string {
	return "/nodes/" + url.PathEscape(node) + "/qemu/" + strconv.Itoa(vmid)
}

func (c *PVEClient) vmConfig(ctx context.Context, node string, vmid int) (VMConfig, error) {
	var raw map[string]flexString
	if err := c.do(ctx, http.MethodGet, vmPath(node, vmid)+"/config", nil, nil, &raw); err != nil {
		return nil, err
	}
	cfg := make(VMConfig, len(raw))
	for k, v := range raw {
		cfg[k] = string(v)
	}
	return cfg, nil
}

// VMConfig implements Client.
func (c *PVEClient) VMConfig(ctx context.Context, node string, vmid int) (VMConfig, error) {
	var cfg VMConfig
	err := c.run(ctx, "VMConfig", func(ctx context.Context) error {
		var err error
		cfg, err = c.vmConfig(ctx, node, vmid)
		return err
	})
	return cfg, err
}

func (c *PVEClient) vmStatus(ctx context.Context, node string, vmid int) (VMStatus, error) {
	var w wireVMStatus
	if err := c.do(ctx, http.MethodGet, vmPath(node, vmid)+"/status/current", nil, nil, &w); err != nil {
		return VMStatus{}, err
	}
	id := int(w.VMID)
	if id == 0 {
		id = vmid
	}
	return VMStatus{
		Node: node, VMID: id, Name: w.Name, Status: w.Status, QMPStatus: w.QMPStatus,
		Lock: w.Lock, Tags: splitTags(w.Tags), Uptime: int64(w.Uptime), Agent: bool(w.Agent), HAState: w.HA.State,
	}, nil
}

// VMStatus implements Client.
func (c *PVEClient) VMStatus(ctx context.Context, node string, vmid int) (VMStatus, error) {
	var st VMStatus
	err := c.run(ctx, "VMStatus", func(ctx context.Context) error {
		var err error
		st, err = c.vmStatus(ctx, node, vmid)
		return err
	})
	return st, err
}

// CreateVM implements Client.
func (c *PVEClient) CreateVM(ctx context.Context, spec VMSpec) (CreateResult, error) {
	res := CreateResult{Node: spec.Node, VMID: spec.VMID}
	if err := spec.Validate(); err != nil {
		c.metrics.observeOperation("CreateVM", err, 0)
		return res, err
	}
	err := c.run(ctx, "CreateVM", func(ctx context.Context) error {
		// Idempotency: a retry after a lost answer or a controller restart
		// must not fail (or create a second VM).
		cfg, err := c.vmConfig(ctx, spec.Node, spec.VMID)
		switch {
		case err == nil:
			if err := sameVM(spec, spec.Node, cfg); err != nil {
				return err
			}
			if cfg["lock"] == "create" {
				// Another create of this VM is still running (or PVE has
				// not cleaned up a failed one yet): not usable yet.
				return fmt.Errorf("%w: VM %d (%s) on %s is still being created (lock create); retry later", ErrLockTimeout, spec.VMID, spec.Name, spec.Node)
			}
			res.AlreadyExisted = true
			return nil
		case !errors.Is(err, ErrNotFound):
			return fmt.Errorf("create VM %d (%s) on %s: checking for an existing VM: %w", spec.VMID, spec.Name, spec.Node, err)
		}

		err = c.storageTask(ctx, spec.Node, http.MethodPost, "/nodes/"+url.PathEscape(spec.Node)+"/qemu", nil, spec.Params(), c.cfg.TaskTimeout)
		if err == nil {
			return nil
		}
		if errors.Is(err, ErrAlreadyExists) {
			// Taken meanwhile, possibly on another node, possibly by our
			// own earlier attempt: find out by whom.
			return c.resolveExisting(ctx, spec, &res, err)
		}
		return fmt.Errorf("create VM %d (%s) on %s: %w", spec.VMID, spec.Name, spec.Node, err)
	})
	return res, err
}

// resolveExisting decides whether the VM occupying spec.VMID is ours.
func (c *PVEClient) resolveExisting(ctx context.Context, spec VMSpec, res *CreateResult, cause error) error {
	c.markVMIDTaken(spec.VMID)
	vms, err := c.listVMs(ctx)
	if err != nil {
		return fmt.Errorf("create VM %d (%s): %w (and listing VMs failed: %v)", spec.VMID, spec.Name, cause, err)
	}
	for _, vm := range vms {
		if vm.VMID != spec.VMID {
			continue
		}
		cfg, err := c.vmConfig(ctx, vm.Node, vm.VMID)
		if err != nil {
			return fmt.Errorf("create VM %d (%s): %w (and reading its config failed: %v)", spec.VMID, spec.Name, cause, err)
		}
		if err := sameVM(spec, vm.Node, cfg); err != nil {
			return err
		}
		res.Node = vm.Node
		res.AlreadyExisted = true
		return nil
	}
	return fmt.Errorf("create VM %d (%s) on %s: %w", spec.VMID, spec.Name, spec.Node, cause)
}

// sameVM checks that an existing config is the VM spec describes.
func sameVM(spec VMSpec, node string, cfg VMConfig) error {
	if cfg.Name() == spec.Name && (spec.SMBIOSUUID == "" || strings.EqualFold(cfg.SMBIOSUUID(), spec.SMBIOSUUID)) {
		return nil
	}
	return fmt.Errorf("VMID %d is already used by VM %q (smbios uuid %q) on node %s, not by %q (%w): allocate another VMID",
		spec.VMID, cfg.Name(), cfg.SMBIOSUUID(), node, spec.Name, ErrAlreadyExists)
}

// postTask issues an asynchronous call and waits for its task.
func (c *PVEClient) postTask(ctx context.Context, method, path string, query url.Values, body map[string]any, timeout time.Duration) error {
	var upid string
	if err := c.do(ctx, method, path, query, body, &upid); err != nil {
		return err
	}
	if upid == "" {
		// Calls that can wait for their worker (`delay`, `background_delay`) answer null
		// when it ended well within that time, and its error as their own.
		return nil
	}
	return c.waitTask(ctx, upid, timeout)
}

// storageTask is postTask for tasks that take storage locks: it holds one of
// the node's task slots until the task has finished.
func (c *PVEClient) storageTask(ctx context.Context, node, method, path string, query url.Values, body map[string]any, timeout time.Duration) error {
	release, err := c.limiter.acquireTask(ctx, node)
	if err != nil {
		return fmt.Errorf("waiting for a task slot on node %s: %w", node, err)
	}
	defer release()
	return c.postTask(ctx, method, path, query, body, timeout)
}

// StartVM implements Client.
func (c *PVEClient) StartVM(ctx context.Context, node string, vmid int) error {
	return c.run(ctx, "StartVM", func(ctx context.Context) error {
		err := c.postTask(withIdempotent(ctx), http.MethodPost, vmPath(node, vmid)+"/status/start", nil, nil, c.cfg.TaskTimeout)
		if err != nil && messageContains(err, "already running") {
			return nil
		}
		if err != nil {
			return fmt.Errorf("start VM %d on %s: %w", vmid, node, err)
		}
		return nil
	})
}

// ShutdownVM implements Client.
func (c *PVEClient) ShutdownVM(ctx context.Context, node string, vmid int, timeout time.Duration) error {
	if timeout <= 0 {
		timeout = 3 * time.Minute
	}
	return c.run(ctx, "ShutdownVM", func(ctx context.Context) error {
		body := map[string]any{
			"timeout":   int(timeout.Seconds()),
			"forceStop": 0,
		}
		// The task runs for up to timeout; allow some slack on top.
		err := c.postTask(withIdempotent(ctx), http.MethodPost, vmPath(node, vmid)+"/status/shutdown", nil, body, timeout+time.Minute)
		if err != nil && messageContains(err, "not running") {
			return nil
		}
		if err != nil {
			return fmt.Errorf("shut down VM %d on %s: %w", vmid, node, err)
		}
		return nil
	})
}

// StopVM implements Client.
func (c *PVEClient) StopVM(ctx context.Context, node string, vmid int) error {
	return c.run(ctx, "StopVM", func(ctx context.Context) error {
		return c.stopVM(ctx, node, vmid)
	})
}

func (c *PVEClient) stopVM(ctx context.Context, node string, vmid int) error {
	err := c.postTask(withIdempotent(ctx), http.MethodPost, vmPath(node, vmid)+"/status/stop", nil, nil, c.cfg.TaskTimeout)
	if err != nil && messageContains(err, "not running") {
		return nil
	}
	if err != nil {
		return fmt.Errorf("stop VM %d on %s: %w", vmid, node, err)
	}
	return nil
}

// DeleteVM implements Client.
func (c *PVEClient) DeleteVM(ctx context.Context, node string, vmid int) error {
	return c.run(ctx, "DeleteVM", func(ctx context.Context) error {
		st, err := c.vmStatus(ctx, node, vmid)
		if errors.Is(err, ErrNotFound) {
			return c.confirmGone(ctx, node, vmid)
		}
		if err != nil {
			return fmt.Errorf("delete VM %d on %s: %w", vmid, node, err)
		}
		if st.Status != "stopped" {
			// PVE refuses to destroy a running VM; the stop must have
			// finished (its task waited for) before the delete is sent.
			if err := c.stopVM(ctx, node, vmid); err != nil {
				if errors.Is(err, ErrNotFound) {
					return nil
				}
				return fmt.Errorf("delete VM %d on %s: %w", vmid, node, err)
			}
		}
		q := url.Values{"purge": {"1"}, "destroy-unreferenced-disks": {"1"}}
		err = c.storageTask(ctx, node, http.MethodDelete, vmPath(node, vmid), q, nil, c.cfg.TaskTimeout)
		if err == nil || errors.Is(err, ErrNotFound) {
			return nil
		}
		return fmt.Errorf("delete VM %d on %s: %w", vmid, node, err)
	})
}

// confirmGone double-checks a "does not exist" on node against the cluster
// inventory: a VM that HA or an admin migrated is not on the recorded node
// any more, and reporting it deleted would leak it.
func (c *PVEClient) confirmGone(ctx context.Context, node string, vmid int) error {
	vms, err := c.listVMs(ctx)
	if err != nil {
		return fmt.Errorf("delete VM %d: not found on %s, and listing the cluster failed: %w", vmid, node, err)
	}
	for _, vm := range vms {
		if vm.VMID == vmid && vm.Node != node {
			return fmt.Errorf("%w: VM %d (%s) is on node %s, not %s; update the recorded node and delete it there", ErrVMMoved, vmid, vm.Name, vm.Node, node)
		}
	}
	return nil
}

// ResizeDisk implements Client.
func (c *PVEClient) ResizeDisk(ctx context.Context, node string, vmid int, disk, size string) error {
	return c.run(ctx, "ResizeDisk", func(ctx context.Context) error {
		body := map[string]any{"disk": disk, "size": size}
		// PUT .../resize returns a UPID on 8.4 and 9.x, null on older
		// versions; postTask handles both.
		if err := c.storageTask(ctx, node, http.MethodPut, vmPath(node, vmid)+"/resize", nil, body, c.cfg.TaskTimeout); err != nil {
			return fmt.Errorf("resize %s of VM %d on %s to %s: %w", disk, vmid, node, size, err)
		}
		return nil
	})
}

// setConfig updates the config synchronously (PUT), which returns once the
// change is applied.
func (c *PVEClient) setConfig(ctx context.Context, node string, vmid int, body map[string]any) error {
	return c.do(ctx, http.MethodPut, vmPath(node, vmid)+"/config", nil, body, nil)
}

// AttachISO implements Client.
func (c *PVEClient) AttachISO(ctx context.Context, node string, vmid int, slot, volid string) error {
	return c.run(ctx, "AttachISO", func(ctx context.Context) error {
		if !volidRe.MatchString(volid) {
			return fmt.Errorf("%w: %q is not a volume id (storage:iso/file.iso)", ErrInvalidConfig, volid)
		}
		if err := c.setConfig(ctx, node, vmid, map[string]any{slot: volid + ",media=cdrom"}); err != nil {
			return fmt.Errorf("attach %s to %s of VM %d on %s: %w", volid, slot, vmid, node, err)
		}
		return nil
	})
}

// DetachISO implements Client. The drive stays (empty) so the change applies
// to a running VM without a pending hardware change.
func (c *PVEClient) DetachISO(ctx context.Context, node string, vmid int, slot string) error {
	return c.run(ctx, "DetachISO", func(ctx context.Context) error {
		if err := c.setConfig(ctx, node, vmid, map[string]any{slot: "none,media=cdrom"}); err != nil {
			return fmt.Errorf("eject %s of VM %d on %s: %w", slot, vmid, node, err)
		}
		return nil
	})
}

// SetTags implements Client.
func (c *PVEClient) SetTags(ctx context.Context, node string, vmid int, tags []string) error {
	return c.run(ctx, "SetTags", func(ctx context.Context) error {
		for _, t := range tags {
			if !tagRe.MatchString(t) {
				return fmt.Errorf("%w: tag %q may contain only letters, digits, _ - + .", ErrInvalidConfig, t)
			}
		}
		body := map[string]any{"tags": strings.Join(tags, ";")}
		if len(tags) == 0 {
			body = map[string]any{"delete": "tags"}
		}
		if err := c.setConfig(ctx, node, vmid, body); err != nil {
			return fmt.Errorf("set tags of VM %d on %s: %w", vmid, node, err)
		}
		return nil
	})
}

// GuestNetworkInterfaces implements Client.
func (c *PVEClient) GuestNetworkInterfaces(ctx context.Context, node string, vmid int) ([]GuestInterface, error) {
	var out []GuestInterface
	err := c.run(ctx, "GuestNetworkInterfaces", func(ctx context.Context) error {
		var w wireAgentInterfaces
		if err := c.do(ctx, http.MethodGet, vmPath(node, vmid)+"/agent/network-get-interfaces", nil, nil, &w); err != nil {
			return fmt.Errorf("guest agent interfaces of VM %d on %s: %w", vmid, node, err)
		}
		out = make([]GuestInterface, 0, len(w.Result))
		for _, r := range w.Result {
			gi := GuestInterface{Name: r.Name, MAC: strings.ToLower(r.HWAddr)}
			for _, a := range r.IPAddresses {
				gi.IPs = append(gi.IPs, GuestIP{Address: a.Address, Type: a.Type, Prefix: int(a.Prefix)})
			}
			out = append(out, gi)
		}
		return nil
	})
	return out, err
}
