package pvesim

import (
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// allPrivileges lists PVE 9's privileges; 8.x has VM.Monitor instead of the
// VM.GuestAgent.* family.
func allPrivileges(is8 bool) []string {
	p := []string{
		"Datastore.Allocate", "Datastore.AllocateSpace", "Datastore.AllocateTemplate", "Datastore.Audit",
		"Group.Allocate", "Mapping.Audit", "Mapping.Modify", "Mapping.Use", "Permissions.Modify",
		"Pool.Allocate", "Pool.Audit", "Realm.Allocate", "Realm.AllocateUser",
		"SDN.Allocate", "SDN.Audit", "SDN.Use",
		"Sys.AccessNetwork", "Sys.Audit", "Sys.Console", "Sys.Incoming", "Sys.Modify", "Sys.PowerMgmt", "Sys.Syslog",
		"User.Modify",
		"VM.Allocate", "VM.Audit", "VM.Backup", "VM.Clone",
		"VM.Config.CDROM", "VM.Config.CPU", "VM.Config.Cloudinit", "VM.Config.Disk", "VM.Config.HWType",
		"VM.Config.Memory", "VM.Config.Network", "VM.Config.Options",
		"VM.Console", "VM.Migrate", "VM.PowerMgmt", "VM.Snapshot", "VM.Snapshot.Rollback",
	}
	if is8 {
		p = append(p, "VM.Monitor")
	} else {
		p = append(p, "VM.GuestAgent.Audit", "VM.GuestAgent.FileRead", "VM.GuestAgent.FileWrite",
			"VM.GuestAgent.FileSystemMgmt", "VM.GuestAgent.Unrestricted")
	}
	sort.Strings(p)
	return p
}

func builtinRoles(is8 bool) map[string][]string {
	all := allPrivileges(is8)
	var vmPrivs []string
	for _, p := range all {
		if strings.HasPrefix(p, "VM.") {
			vmPrivs = append(vmPrivs, p)
		}
	}
	return map[string][]string{
		"Administrator":     all,
		"NoAccess":          {},
		"PVEAuditor":        {"Datastore.Audit", "Mapping.Audit", "Pool.Audit", "SDN.Audit", "Sys.Audit", "VM.Audit"},
		"PVEVMAdmin":        append(vmPrivs, "Datastore.AllocateSpace", "SDN.Use"),
		"PVEDatastoreAdmin": {"Datastore.Allocate", "Datastore.AllocateSpace", "Datastore.AllocateTemplate", "Datastore.Audit"},
		"PVESDNUser":        {"SDN.Audit", "SDN.Use"},
	}
}

// privileges computes the token's privileges on path like PVE: walking from
// "/" down, entries on a more specific path replace inherited ones; entries
// with propagate=0 apply only to their exact path. VMs in a pool also get the
// pool's privileges.
func (s *Server) privileges(tokenID, path string) map[string]bool {
	out := s.pathPrivileges(tokenID, path)
	if rest, ok := strings.CutPrefix(path, "/vms/"); ok {
		if id, err := strconv.Atoi(rest); err == nil {
			if pool := s.poolOf(id); pool != "" {
				for p := range s.pathPrivileges(tokenID, "/pool/"+pool) {
					out[p] = true
				}
			}
		}
	}
	return out
}

func (s *Server) pathPrivileges(tokenID, path string) map[string]bool {
	tok := s.tokens[tokenID]
	levels := []string{"/"}
	cur := ""
	for _, seg := range strings.Split(strings.Trim(path, "/"), "/") {
		if seg == "" {
			continue
		}
		cur += "/" + seg
		levels = append(levels, cur)
	}
	result := map[string]bool{}
	for _, lvl := range levels {
		var entries []ACLConfig
		for _, a := range tok.ACLs {
			if normPath(a.Path) != lvl {
				continue
			}
			propagate := a.Propagate == nil || *a.Propagate
			if !propagate && lvl != normPath(path) {
				continue
			}
			entries = append(entries, a)
		}
		if len(entries) == 0 {
			continue
		}
		result = map[string]bool{}
		for _, a := range entries {
			for _, p := range s.roles[a.Role] {
				result[p] = true
			}
			for _, p := range a.Privileges {
				result[p] = true
			}
		}
	}
	return result
}

func normPath(p string) string {
	p = "/" + strings.Trim(p, "/")
	return p
}

func (s *Server) poolOf(vmid int) string {
	for pool, ids := range s.cfg.Pools {
		for _, id := range ids {
			if id == vmid {
				return pool
			}
		}
	}
	return ""
}

// checkAll requires every priv on path (PVE names the first missing one).
func (c *reqCtx) checkAll(path string, privs ...string) *apiError {
	have := c.s.privileges(c.token, path)
	for _, p := range privs {
		if !have[p] {
			return errPerm(path, p)
		}
	}
	return nil
}

// checkAny requires one of privs on path.
func (c *reqCtx) checkAny(path string, privs ...string) *apiError {
	have := c.s.privileges(c.token, path)
	for _, p := range privs {
		if have[p] {
			return nil
		}
	}
	return errPerm(path, strings.Join(privs, "|"))
}

func (c *reqCtx) has(path string, privs ...string) bool { return c.checkAny(path, privs...) == nil }

// checkRoutePermissions evaluates the schema's permissions.check (8.x uses
// the 8.4 expression where it differs).
func (c *reqCtx) checkRoutePermissions() *apiError {
	chk := c.route.schema.Check
	if c.s.cfg.is8() && len(c.route.schema.Check84) > 0 {
		chk = c.route.schema.Check84
	}
	if len(chk) == 0 {
		return nil
	}
	var expr []any
	if err := json.Unmarshal(chk, &expr); err != nil {
		return errServer("internal error: bad permission check: %v", err)
	}
	return c.evalCheck(expr)
}

// evalCheck implements the check grammar: ["perm", path, [privs], "any", 1],
// ["and", ...], ["or", ...].
func (c *reqCtx) evalCheck(expr []any) *apiError {
	if len(expr) == 0 {
		return errPerm("", "")
	}
	op, _ := expr[0].(string)
	switch op {
	case "perm":
		if len(expr) < 3 {
			return errPerm("", "")
		}
		path := c.substitute(fmt.Sprint(expr[1]))
		var privs []string
		if list, ok := expr[2].([]any); ok {
			for _, p := range list {
				privs = append(privs, fmt.Sprint(p))
			}
		}
		any := false
		for i := 3; i+1 < len(expr); i += 2 {
			if expr[i] == "any" {
				any = fmt.Sprint(expr[i+1]) == "1"
			}
		}
		if any {
			return c.checkAny(path, privs...)
		}
		return c.checkAll(path, privs...)
	case "and":
		for _, sub := range expr[1:] {
			l, _ := sub.([]any)
			if e := c.evalCheck(l); e != nil {
				return e
			}
		}
		return nil
	case "or":
		for _, sub := range expr[1:] {
			l, _ := sub.([]any)
			if c.evalCheck(l) == nil {
				return nil
			}
		}
		return errPerm("", "")
	}
	// Grammar elements pvesim's routes never use (userid-param, ...) deny.
	return errPerm("", "")
}

// substitute fills {vmid}, {node}, {storage} from the request.
func (c *reqCtx) substitute(path string) string {
	for k, v := range c.params {
		path = strings.ReplaceAll(path, "{"+k+"}", v)
	}
	return path
}

// checkConfigPerms mirrors qemu-server's check_vm_modify_config_perm: each
// changed option needs its VM.Config.* privilege on /vms/{vmid}.
func (c *reqCtx) checkConfigPerms(vmid int, keys []string) *apiError {
	path := fmt.Sprintf("/vms/%d", vmid)
	for _, k := range keys {
		priv := configPrivilege(k, c.params[k])
		if priv == "" {
			continue
		}
		// Like check_vm_perm, a pool given in the request also grants.
		if pool := c.params["pool"]; pool != "" && c.s.privileges(c.token, "/pool/"+pool)[priv] {
			continue
		}
		if e := c.checkAll(path, priv); e != nil {
			return e
		}
	}
	return nil
}

func configPrivilege(key, value string) string {
	base := strings.TrimRight(key, "0123456789")
	switch {
	case isDriveKey(key):
		if strings.Contains(value, "media=cdrom") {
			return "VM.Config.CDROM"
		}
		return "VM.Config.Disk"
	case key == "cdrom":
		return "VM.Config.CDROM"
	case key == "tags":
		return "VM.Config.Options"
	}
	switch base {
	case "cores", "cpu", "cpulimit", "cpuunits", "numa", "smp", "sockets", "vcpus", "affinity":
		return "VM.Config.CPU"
	case "memory", "balloon", "shares":
		return "VM.Config.Memory"
	case "acpi", "hotplug", "kvm", "machine", "scsihw", "smbios", "tablet", "vga", "watchdog", "audio",
		"rng", "serial", "usb", "parallel", "hostpci":
		return "VM.Config.HWType"
	case "net":
		return "VM.Config.Network"
	case "ipconfig", "ciuser", "cipassword", "citype", "sshkeys", "nameserver", "searchdomain", "cicustom", "ciupgrade":
		return "VM.Config.Cloudinit"
	case "boot", "bootdisk", "vmstatestorage":
		return "VM.Config.Disk"
	case "vmid", "node", "delete", "digest", "revert", "force", "skiplock", "background_delay", "pool",
		"storage", "start", "unique", "archive", "bwlimit", "live-restore", "import-working-storage":
		return ""
	}
	return "VM.Config.Options"
}
