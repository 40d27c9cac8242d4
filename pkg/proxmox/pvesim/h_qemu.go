package pvesim

import (
	"crypto/rand"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/pkg/proxmox/pvesim/internal/apischema"
)

// Param names that steer the API call rather than being config keys.
var nonConfigParams = map[string]bool{"node": true, "vmid": true, "delete": true, "digest": true, "revert": true,
	"force": true, "skiplock": true, "background_delay": true, "pool": true, "storage": true, "start": true,
	"unique": true, "archive": true, "bwlimit": true, "live-restore": true, "import-working-storage": true}

func (c *reqCtx) vmid() int { return c.intParam("vmid") }

// loadVM returns the VM on the request's node or PVE's "does not exist".
// Callers hold s.mu.
func (c *reqCtx) loadVM() (*vmState, *apiError) {
	v, ok := c.s.vms[c.vmid()]
	if !ok || v.node != c.node() {
		return nil, errNoVM(c.node(), c.vmid())
	}
	return v, nil
}

func sortedVMIDs(m map[int]*vmState) []int {
	ids := make([]int, 0, len(m))
	for id := range m {
		ids = append(ids, id)
	}
	sort.Ints(ids)
	return ids
}

func hVMList(c *reqCtx) (any, *apiError) {
	s := c.s
	s.mu.Lock()
	defer s.mu.Unlock()
	out := []map[string]any{}
	for _, id := range sortedVMIDs(s.vms) {
		v := s.vms[id]
		if v.node != c.node() || !c.has(fmt.Sprintf("/vms/%d", id), "VM.Audit") {
			continue
		}
		e := map[string]any{"vmid": id, "name": v.displayName(), "status": statusText(v), "maxmem": v.memBytes(),
			"maxdisk": s.vmMaxDisk(v), "cpus": vmCPUs(v), "mem": 0, "cpu": 0, "uptime": 0, "disk": 0,
			"netin": 0, "netout": 0, "diskread": 0, "diskwrite": 0}
		if t := v.conf["tags"]; t != "" {
			e["tags"] = t
		}
		if l := v.conf["lock"]; l != "" {
			e["lock"] = l
		}
		if v.running {
			e["pid"] = v.pid
			e["uptime"] = int64(time.Since(v.startedAt).Seconds())
			e["mem"] = s.vmRSS(v, time.Now())
		}
		out = append(out, e)
	}
	return out, nil
}

// vmMaxDisk is the size of the boot disk (first disk), like PVE's maxdisk.
func (s *Server) vmMaxDisk(v *vmState) uint64 {
	for _, k := range driveKeys() {
		val, ok := v.conf[k]
		if !ok || strings.Contains(val, "media=cdrom") {
			continue
		}
		if sz, ok := parseSize(parsePropString(val, "file")["size"]); ok {
			return sz
		}
	}
	return 0
}

func randomMAC() string {
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	return fmt.Sprintf("BC:24:11:%02X:%02X:%02X", b[0], b[1], b[2])
}

// normalizeNet fills in a generated MAC like PVE ("virtio,bridge=vmbr0" →
// "virtio=BC:24:11:..,bridge=vmbr0").
func normalizeNet(value string) string {
	parts := strings.Split(value, ",")
	models := map[string]bool{"e1000": true, "e1000-82540em": true, "e1000-82544gc": true, "e1000-82545em": true,
		"e1000e": true, "i82551": true, "i82557b": true, "i82559er": true, "ne2k_isa": true, "ne2k_pci": true,
		"pcnet": true, "rtl8139": true, "virtio": true, "vmxnet3": true}
	model, mac := "", ""
	var rest []string
	for _, p := range parts {
		k, v, hasEq := strings.Cut(p, "=")
		switch {
		case !hasEq && models[k]:
			model = k
		case hasEq && models[k]:
			model, mac = k, v
		case k == "model":
			model = v
		case k == "macaddr":
			mac = v
		default:
			rest = append(rest, p)
		}
	}
	if mac == "" {
		mac = randomMAC()
	}
	return strings.Join(append([]string{model + "=" + strings.ToUpper(mac)}, rest...), ",")
}

func netMAC(value string) string {
	for _, p := range strings.Split(value, ",") {
		k, v, ok := strings.Cut(p, "=")
		if ok && k != "bridge" && k != "tag" && k != "firewall" && k != "mtu" && k != "queues" && k != "rate" && k != "link_down" && k != "trunks" {
			return v
		}
	}
	return ""
}

// checkSDN follows check_bridge_access / check_vnet_access: SDN.Use on
// /sdn/zones/localnetwork/<bridge>, and with a VLAN tag (or trunks) also on
// /sdn/zones/localnetwork/<bridge>/<tag> for every tag.
func (c *reqCtx) checkSDN(key, value string) *apiError {
	if !strings.HasPrefix(key, "net") || strings.Trim(key[3:], "0123456789") != "" {
		return nil
	}
	kv := parsePropString(value, "model")
	br := kv["bridge"]
	if br == "" {
		return nil
	}
	path := "/sdn/zones/localnetwork/" + br
	if e := c.checkAll(path, "SDN.Use"); e != nil {
		return e
	}
	var tags []string
	if t := kv["tag"]; t != "" {
		tags = append(tags, t)
	}
	for _, tr := range strings.Split(kv["trunks"], ";") {
		if tr != "" {
			tags = append(tags, tr)
		}
	}
	for _, t := range tags {
		if e := c.checkAll(path+"/"+t, "SDN.Use"); e != nil {
			return e
		}
	}
	return nil
}

func configKeys(params map[string]string) []string {
	var keys []string
	for k := range params {
		if !nonConfigParams[k] {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	return keys
}

func hVMCreate(c *reqCtx) (any, *apiError) {
	s := c.s
	vmid, node := c.vmid(), c.node()
	if pool := c.params["pool"]; pool != "" {
		if e := c.checkAll("/pool/"+pool, "VM.Allocate"); e != nil {
			return nil, e
		}
	} else if e := c.checkAll(fmt.Sprintf("/vms/%d", vmid), "VM.Allocate"); e != nil {
		return nil, e
	}
	keys := configKeys(c.params)
	if e := c.checkConfigPerms(vmid, keys); e != nil {
		return nil, e
	}
	for _, k := range keys {
		if e := c.checkSDN(k, c.params[k]); e != nil {
			return nil, e
		}
	}
	s.mu.Lock()
	if old, ok := s.vms[vmid]; ok {
		s.mu.Unlock()
		return nil, errServer("VM %d already exists on node '%s'", vmid, old.node)
	}
	var plans []*diskPlan
	conf := map[string]string{}
	for _, k := range keys {
		val := c.params[k]
		if isDriveKey(k) || k == "cdrom" {
			p, e := c.planDrive(vmid, k, val)
			if e != nil {
				s.mu.Unlock()
				return nil, e
			}
			if p != nil && !p.iso {
				plans = append(plans, p)
			}
		}
		if strings.HasPrefix(k, "net") && strings.Trim(k[3:], "0123456789") == "" {
			val = normalizeNet(val)
		}
		if k == "cdrom" {
			k, val = "ide2", val+",media=cdrom"
		}
		conf[k] = val
	}
	// qemu-server's create_vm writes a config holding only "lock: create"
	// (create_and_lock_config) before forking the worker; everything else
	// (name, tags, smbios1, disks, nets) is written when the worker ends.
	vm := &vmState{vmid: vmid, node: node, conf: map[string]string{"lock": "create"}, pool: c.params["pool"]}
	if vm.pool == "" {
		vm.pool = s.poolOf(vmid)
	}
	s.vms[vmid] = vm
	s.mu.Unlock()

	sort.SliceStable(plans, func(i, j int) bool { return driveOrder(plans[i].key) < driveOrder(plans[j].key) })
	locks := []string{vmLock(vmid)}
	var storageLocks []string
	seen := map[string]bool{}
	for _, p := range plans {
		if !seen[p.storage] {
			seen[p.storage] = true
			storageLocks = append(storageLocks, storageLock(p.storage))
		}
	}
	locks = append(locks, storageLocks...)
	startAfter := c.boolParam("start")
	var created []*volume
	// The worker's time grows with its work: the base, then a short
	// allocation per new volume (lvcreate), then the import.
	duration := time.Duration(s.cfg.TaskDuration) + time.Duration(len(plans))*s.cfg.scale(500*time.Millisecond)
	return s.startTask(taskSpec{node: node, typ: "qmcreate", id: strconv.Itoa(vmid), user: c.token, locks: locks,
		routeKey: "POST /nodes/{node}/qemu", duration: duration,
		run: func(t *task) error {
			var imports []*volume
			s.mu.Lock()
			for _, p := range plans {
				val, v, err := s.allocate(node, vmid, p)
				if err != nil {
					s.mu.Unlock()
					return err
				}
				created = append(created, v)
				conf[p.key] = val
				if p.importOf != "" {
					t.log = append(t.log, fmt.Sprintf("importing disk '%s' to VM %d ...", p.importOf, vmid))
					imports = append(imports, v)
				}
				t.log = append(t.log, fmt.Sprintf("%s: successfully created disk '%s'", p.key, val))
			}
			s.mu.Unlock()
			// vdisk_alloc holds the storage lock only while allocating;
			// qemu-img convert runs without it.
			s.releaseLocks(storageLocks, t.upid)
			for _, v := range imports {
				s.sleep(s.cfg.importDuration(v.size))
				s.logf(t, "transferred %s of %s (100.00%%)", humanSize(v.size), humanSize(v.size))
			}
			s.mu.Lock()
			if s.vms[vmid] != vm {
				s.mu.Unlock()
				return fmt.Errorf("unable to create VM %d - Configuration file 'nodes/%s/qemu-server/%d.conf' does not exist", vmid, node, vmid)
			}
			sm := parsePropString(conf["smbios1"], "")
			if sm["uuid"] == "" {
				sm["uuid"] = uuid.NewString()
				parts := []string{}
				for _, k := range sortedKeys(sm) {
					if k != "" {
						parts = append(parts, k+"="+sm[k])
					}
				}
				conf["smbios1"] = strings.Join(parts, ",")
			}
			if conf["vmgenid"] == "" || conf["vmgenid"] == "1" {
				conf["vmgenid"] = uuid.NewString()
			}
			conf["meta"] = fmt.Sprintf("creation-qemu=9.2.0,ctime=%d", time.Now().Unix())
			// write_config replaces the lock-only config: the lock is gone
			// with it.
			vm.conf = conf
			s.mu.Unlock()
			if startAfter {
				return s.powerOn(t, vm)
			}
			return nil
		},
		onFail: func() {
			s.mu.Lock()
			defer s.mu.Unlock()
			for _, v := range created {
				s.removeVolume(v)
			}
			if s.vms[vmid] == vm {
				delete(s.vms, vmid)
			}
		}}), nil
}

// humanSize renders bytes like qemu-img's progress lines (e.g. "1.2 GiB").
func humanSize(b uint64) string {
	switch {
	case b >= gib:
		return fmt.Sprintf("%.1f GiB", float64(b)/float64(gib))
	case b >= mib:
		return fmt.Sprintf("%.1f MiB", float64(b)/float64(mib))
	}
	return fmt.Sprintf("%d B", b)
}

func driveOrder(key string) int {
	for i, k := range driveKeys() {
		if k == key {
			return i
		}
	}
	return 1 << 20
}

func hVMConfigGet(c *reqCtx) (any, *apiError) {
	s := c.s
	if c.params["snapshot"] != "" {
		return nil, errServer("snapshot '%s' does not exist", c.params["snapshot"])
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	v, e := c.loadVM()
	if e != nil {
		return nil, e
	}
	out := map[string]any{"digest": v.digest()}
	createRoute := s.table.Find("POST", "/nodes/{node}/qemu")
	for k, val := range v.conf {
		out[k] = typedValue(createRoute, k, val)
	}
	return out, nil
}

// typedValue renders a config value with the schema's JSON type: integers
// and booleans as numbers, everything else (incl. property strings) as
// strings, which is what clients such as go-proxmox decode.
func typedValue(rt *apischema.Route, key, val string) any {
	if rt == nil {
		return val
	}
	p, ok := rt.Param(key)
	if !ok {
		return val
	}
	switch p.Type {
	case "integer":
		if n, err := strconv.ParseInt(val, 10, 64); err == nil {
			return n
		}
	case "number":
		if f, err := strconv.ParseFloat(val, 64); err == nil {
			return f
		}
	case "boolean":
		if isTrue(val) {
			return 1
		}
		return 0
	}
	return val
}
