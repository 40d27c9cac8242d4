package pvesim

import (
	"fmt"
	"strconv"
	"strings"
)

// configChange is a validated config update ready to apply under the VM
// lock.
type configChange struct {
	set    map[string]string
	del    []string
	plans  []*diskPlan
	digest string
}

// prepareConfig checks privileges, digest format and drives for POST/PUT
// config. Callers hold s.mu.
func (c *reqCtx) prepareConfig(vm *vmState) (*configChange, *apiError) {
	keys := configKeys(c.params)
	dels := splitList(c.params["delete"])
	if len(keys) == 0 && len(dels) == 0 {
		return nil, errServer("no options specified")
	}
	for _, d := range dels {
		if _, dup := c.params[d]; dup {
			return nil, errServer("unable to delete '%s' - option set in the same request", d)
		}
	}
	if e := c.checkConfigPerms(vm.vmid, append(append([]string{}, keys...), dels...)); e != nil {
		return nil, e
	}
	ch := &configChange{set: map[string]string{}, del: dels, digest: c.params["digest"]}
	for _, k := range keys {
		val := c.params[k]
		if e := c.checkSDN(k, val); e != nil {
			return nil, e
		}
		if isDriveKey(k) {
			p, e := c.planDrive(vm.vmid, k, val)
			if e != nil {
				return nil, e
			}
			if p != nil && !p.iso {
				ch.plans = append(ch.plans, p)
				continue
			}
		}
		if strings.HasPrefix(k, "net") && strings.Trim(k[3:], "0123456789") == "" {
			val = normalizeNet(val)
		}
		ch.set[k] = val
	}
	return ch, nil
}

// apply performs a config change. Callers hold s.mu.
func (s *Server) applyConfig(node string, vm *vmState, ch *configChange, t *task) error {
	if ch.digest != "" && ch.digest != vm.digest() {
		return fmt.Errorf("detected modified configuration - file changed by other user? Try again.")
	}
	if l := vm.conf["lock"]; l != "" {
		return fmt.Errorf("VM is locked (%s)", l)
	}
	for _, d := range ch.del {
		val, ok := vm.conf[d]
		if !ok {
			continue
		}
		delete(vm.conf, d)
		file := parsePropString(val, "file")["file"]
		switch {
		case strings.HasPrefix(d, "unused"):
			if v, _ := s.findVolume(file, node); v != nil {
				s.removeVolume(v)
			}
		case isDriveKey(d) && !strings.Contains(val, "media=cdrom"):
			// PVE keeps detached disks as unusedN.
			for i := 0; ; i++ {
				k := "unused" + strconv.Itoa(i)
				if _, used := vm.conf[k]; !used {
					vm.conf[k] = file
					break
				}
			}
		}
	}
	for _, p := range ch.plans {
		val, _, err := s.allocate(node, vm.vmid, p)
		if err != nil {
			return err
		}
		vm.conf[p.key] = val
		if t != nil {
			t.log = append(t.log, fmt.Sprintf("%s: successfully created disk '%s'", p.key, val))
		}
	}
	for k, v := range ch.set {
		vm.conf[k] = v
	}
	return nil
}

// loadAndPrepareConfig loads the VM and validates a config change under the state lock;
// both the sync (PUT) and async (POST) config calls start this way.
func (c *reqCtx) loadAndPrepareConfig() (*vmState, *configChange, *apiError) {
	c.s.mu.Lock()
	defer c.s.mu.Unlock()
	vm, e := c.loadVM()
	if e != nil {
		return nil, nil, e
	}
	ch, e := c.prepareConfig(vm)
	return vm, ch, e
}

func hVMConfigSync(c *reqCtx) (any, *apiError) {
	s := c.s
	vm, ch, e := c.loadAndPrepareConfig()
	if e != nil {
		return nil, e
	}
	return nil, s.withLocks("PUT /nodes/{node}/qemu/{vmid}/config", c.node(), []string{vmLock(vm.vmid)}, func() *apiError {
		s.mu.Lock()
		defer s.mu.Unlock()
		if err := s.applyConfig(c.node(), vm, ch, nil); err != nil {
			return errServer("%s", err.Error())
		}
		return nil
	})
}

func hVMConfigAsync(c *reqCtx) (any, *apiError) {
	s := c.s
	vm, ch, e := c.loadAndPrepareConfig()
	if e != nil {
		return nil, e
	}
	node := c.node()
	return s.startTask(taskSpec{node: node, typ: "qmconfig", id: strconv.Itoa(vm.vmid), user: c.token,
		locks: []string{vmLock(vm.vmid)}, routeKey: "POST /nodes/{node}/qemu/{vmid}/config",
		run: func(t *task) error {
			s.mu.Lock()
			defer s.mu.Unlock()
			return s.applyConfig(node, vm, ch, t)
		}}), nil
}

func hVMResize(c *reqCtx) (any, *apiError) {
	s := c.s
	s.mu.Lock()
	vm, e := c.loadVM()
	s.mu.Unlock()
	if e != nil {
		return nil, e
	}
	node, disk, sizeArg, digest, token := c.node(), c.params["disk"], c.params["size"], c.params["digest"], c.token
	return s.startTask(taskSpec{node: node, typ: "qmresize", id: strconv.Itoa(vm.vmid), user: c.token,
		locks: []string{vmLock(vm.vmid)}, routeKey: "PUT /nodes/{node}/qemu/{vmid}/resize",
		run: func(t *task) error {
			s.mu.Lock()
			defer s.mu.Unlock()
			if digest != "" && digest != vm.digest() {
				return fmt.Errorf("detected modified configuration - file changed by other user? Try again.")
			}
			if l := vm.conf["lock"]; l != "" {
				return fmt.Errorf("VM is locked (%s)", l)
			}
			val, ok := vm.conf[disk]
			if !ok {
				return fmt.Errorf("disk '%s' does not exist", disk)
			}
			kv := parsePropString(val, "file")
			if kv["media"] == "cdrom" {
				return fmt.Errorf("you can't resize a cdrom")
			}
			// resize_vm checks the disk's storage inside the worker, after
			// loading the config: the request succeeds, the task fails.
			sid, _, _ := strings.Cut(kv["file"], ":")
			if !s.privileges(token, "/storage/"+sid)["Datastore.AllocateSpace"] {
				return fmt.Errorf("Permission check failed (/storage/%s, Datastore.AllocateSpace)", sid)
			}
			v, st := s.findVolume(kv["file"], node)
			if v == nil {
				return fmt.Errorf("volume '%s' does not exist", kv["file"])
			}
			rel := strings.HasPrefix(sizeArg, "+")
			n, ok := parseSize(strings.TrimPrefix(sizeArg, "+"))
			if !ok {
				return fmt.Errorf("invalid size '%s'", sizeArg)
			}
			newSize := n
			if rel {
				newSize = v.size + n
			}
			if newSize < v.size {
				return fmt.Errorf("shrinking disks is not supported")
			}
			if newSize-v.size > s.storageAvail(st, node) {
				return fmt.Errorf("unable to resize disk '%s' - not enough free space on storage '%s'", disk, st.cfg.Name)
			}
			v.size = newSize
			kv["size"] = formatSize(newSize)
			parts := []string{kv["file"]}
			for _, k := range sortedKeys(kv) {
				if k != "file" {
					parts = append(parts, k+"="+kv[k])
				}
			}
			vm.conf[disk] = strings.Join(parts, ",")
			t.log = append(t.log, fmt.Sprintf("Image resized to %s.", formatSize(newSize)))
			return nil
		}}), nil
}

func hVMDelete(c *reqCtx) (any, *apiError) {
	s := c.s
	s.mu.Lock()
	vm, e := c.loadVM()
	if e != nil {
		s.mu.Unlock()
		return nil, e
	}
	// destroy_vm (before its running check) refuses an HA resource unless purge removes it too.
	if _, ha := s.ha[vm.vmid]; ha && !c.boolParam("purge") {
		s.mu.Unlock()
		return nil, errServer("unable to remove VM %d - used in HA resources and purge parameter not set.", vm.vmid)
	}
	if vm.running {
		s.mu.Unlock()
		return nil, errServer("VM %d is running - destroy failed", vm.vmid)
	}
	s.mu.Unlock()
	node, vmid := c.node(), vm.vmid
	unreferenced := c.boolParam("destroy-unreferenced-disks")
	return s.startTask(taskSpec{node: node, typ: "qmdestroy", id: strconv.Itoa(vmid), user: c.token,
		locks: []string{vmLock(vmid)}, routeKey: "DELETE /nodes/{node}/qemu/{vmid}",
		run: func(t *task) error {
			s.mu.Lock()
			defer s.mu.Unlock()
			// destroy_vm checks the lock inside the worker, under the
			// config lock: a locked VM fails the task, not the request.
			if l := vm.conf["lock"]; l != "" {
				return fmt.Errorf("VM is locked (%s)", l)
			}
			if vm.running {
				return fmt.Errorf("VM %d is running - destroy failed", vmid)
			}
			for k, val := range vm.conf {
				if !isDriveKey(k) || strings.Contains(val, "media=cdrom") {
					continue
				}
				file := parsePropString(val, "file")["file"]
				if v, _ := s.findVolume(file, node); v != nil && v.vmid == vmid {
					s.removeVolume(v)
					t.log = append(t.log, fmt.Sprintf("Removed volume '%s'", file))
				}
			}
			if unreferenced {
				for _, sid := range s.storageOrder {
					st := s.storages[sid]
					if !st.availableOn(node) {
						continue
					}
					for _, v := range s.sortedVolumes(st, node) {
						if v.vmid == vmid && v.content == "images" {
							s.removeVolume(v)
							t.log = append(t.log, fmt.Sprintf("Removed unreferenced volume '%s'", v.volid))
						}
					}
				}
			}
			delete(s.vms, vmid)
			if _, ha := s.ha[vmid]; ha {
				delete(s.ha, vmid)
				t.log = append(t.log, fmt.Sprintf("Removed resource 'vm:%d' from HA configuration", vmid))
			}
			return nil
		}}), nil
}
