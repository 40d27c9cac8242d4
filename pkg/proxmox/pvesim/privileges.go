package pvesim

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
)

// privGroup is one category of pve-access-control's $privgroups: the
// built-in roles are derived from these lists (create_roles), so modelling
// the lists reproduces PVE*Admin, PVE*User and PVEAuditor exactly.
type privGroup struct {
	name                     string
	root, admin, user, audit []string
}

// privGroups returns AccessControl.pm's $privgroups for the PVE major
// version: 8.x has VM.Monitor; 9.x replaced it with the VM.GuestAgent.*
// family and added VM.Replicate.
func privGroups(is8 bool) []privGroup {
	vmAdmin := []string{"VM.Config.Disk", "VM.Config.CPU", "VM.Config.Memory", "VM.Config.Network",
		"VM.Config.HWType", "VM.Config.Options", "VM.Allocate", "VM.Clone", "VM.Migrate"}
	vmUser := []string{"VM.Config.CDROM", "VM.Config.Cloudinit", "VM.Console", "VM.Backup", "VM.PowerMgmt"}
	if is8 {
		vmAdmin = append(vmAdmin, "VM.Monitor", "VM.Snapshot", "VM.Snapshot.Rollback")
	} else {
		vmAdmin = append(vmAdmin, "VM.Replicate", "VM.Snapshot", "VM.Snapshot.Rollback",
			"VM.GuestAgent.FileRead", "VM.GuestAgent.FileWrite", "VM.GuestAgent.FileSystemMgmt",
			"VM.GuestAgent.Unrestricted")
		vmUser = append(vmUser, "VM.GuestAgent.Audit")
	}
	return []privGroup{
		{name: "VM", admin: vmAdmin, user: vmUser, audit: []string{"VM.Audit"}},
		{name: "Sys", root: []string{"Sys.PowerMgmt", "Sys.Modify", "Sys.Incoming", "Sys.AccessNetwork"},
			admin: []string{"Sys.Console", "Sys.Syslog"}, audit: []string{"Sys.Audit"}},
		{name: "Datastore", admin: []string{"Datastore.Allocate", "Datastore.AllocateTemplate"},
			user: []string{"Datastore.AllocateSpace"}, audit: []string{"Datastore.Audit"}},
		{name: "SDN", admin: []string{"SDN.Allocate", "SDN.Audit"}, user: []string{"SDN.Use"}, audit: []string{"SDN.Audit"}},
		{name: "User", root: []string{"Realm.Allocate"}, admin: []string{"User.Modify", "Group.Allocate", "Realm.AllocateUser"}},
		{name: "Pool", admin: []string{"Pool.Allocate"}, user: []string{"Pool.Audit"}, audit: []string{"Pool.Audit"}},
		{name: "Mapping", admin: []string{"Mapping.Modify"}, user: []string{"Mapping.Use"}, audit: []string{"Mapping.Audit"}},
	}
}

// allPrivileges lists every valid privilege of the version (Administrator's
// set): the groups plus Permissions.Modify, which belongs to no group.
func allPrivileges(is8 bool) []string {
	set := map[string]bool{"Permissions.Modify": true}
	for _, g := range privGroups(is8) {
		for _, l := range [][]string{g.root, g.admin, g.user, g.audit} {
			for _, p := range l {
				set[p] = true
			}
		}
	}
	return sortedKeys(set)
}

// builtinRoles mirrors create_roles: PVE<cat>Admin = admin+user+audit,
// PVE<cat>User = user+audit (only where the group has user privileges),
// PVEAdmin = every category's admin+user+audit without Mapping.Modify,
// PVEAuditor = every audit privilege, plus PVETemplateUser, NoAccess and
// Administrator.
func builtinRoles(is8 bool) map[string][]string {
	sets := map[string]map[string]bool{}
	add := func(role string, privs ...string) {
		if sets[role] == nil {
			sets[role] = map[string]bool{}
		}
		for _, p := range privs {
			sets[role][p] = true
		}
	}
	for _, g := range privGroups(is8) {
		all := append(append(append([]string{}, g.admin...), g.user...), g.audit...)
		add("PVE"+g.name+"Admin", all...)
		add("PVEAdmin", all...)
		if len(g.user) > 0 {
			add("PVE"+g.name+"User", append(append([]string{}, g.user...), g.audit...)...)
		}
		add("PVEAuditor", g.audit...)
	}
	delete(sets["PVEAdmin"], "Mapping.Modify")
	add("PVETemplateUser", "VM.Clone", "VM.Audit")
	out := map[string][]string{"NoAccess": {}, "Administrator": allPrivileges(is8)}
	for role, set := range sets {
		out[role] = sortedKeys(set)
	}
	return out
}

// privileges computes what a token may do on path like PVE's
// RPCEnvironment::permissions: root@pam's tokens without privilege
// separation hold everything; a token without privilege separation has
// exactly its user's privileges; a privilege-separated token has its own
// ACLs intersected with its user's. A token whose user is not configured
// (Config.Users) keeps exactly its own ACLs (backward compatibility).
func (s *Server) privileges(tokenID, path string) map[string]bool {
	tok := s.tokens[tokenID]
	user, _, _ := strings.Cut(tokenID, "!")
	privsep := tok.Privsep == nil || *tok.Privsep
	var userPrivs map[string]bool
	userKnown := true
	if user == "root@pam" {
		// root can do anything (AccessControl::roles returns Administrator).
		userPrivs = map[string]bool{}
		for _, p := range allPrivileges(s.cfg.is8()) {
			userPrivs[p] = true
		}
	} else if u, ok := s.users[user]; ok {
		userPrivs = s.aclPrivileges(u.ACLs, path)
	} else {
		userKnown = false
	}
	if !privsep {
		if userPrivs == nil {
			return map[string]bool{}
		}
		return userPrivs
	}
	own := s.aclPrivileges(tok.ACLs, path)
	if !userKnown {
		return own
	}
	for p := range own {
		if !userPrivs[p] {
			delete(own, p)
		}
	}
	return own
}

// aclPrivileges evaluates one ACL list on path; VMs in a pool also get the
// pool's privileges.
func (s *Server) aclPrivileges(acls []ACLConfig, path string) map[string]bool {
	out := s.pathPrivileges(acls, path)
	if rest, ok := strings.CutPrefix(path, "/vms/"); ok {
		if id, err := strconv.Atoi(rest); err == nil {
			if pool := s.poolOf(id); pool != "" {
				for p := range s.pathPrivileges(acls, "/pool/"+pool) {
					out[p] = true
				}
			}
		}
	}
	return out
}

// pathPrivileges walks from "/" down: entries on a more specific path
// replace inherited ones; entries with propagate=0 apply only to their
// exact path.
func (s *Server) pathPrivileges(acls []ACLConfig, path string) map[string]bool {
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
		for _, a := range acls {
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

// checkConfigPerms mirrors qemu-server's check_vm_modify_config_perm and
// the serial/usb/hostpci checks: each changed option needs its privilege on
// /vms/{vmid} (or the request's pool), and options outside qemu-server's
// tables are root@pam's alone. That check returns early only for the user
// root@pam; an API token is never that user (its id is root@pam!name), so
// root-only options are refused for every token.
func (c *reqCtx) checkConfigPerms(vmid int, keys []string) *apiError {
	path := fmt.Sprintf("/vms/%d", vmid)
	for _, k := range keys {
		req := configPrivileges(k, c.params[k])
		if req.rootOnly != "" {
			return errServer("%s", req.rootOnly)
		}
		if len(req.privs) == 0 {
			continue
		}
		// Like check_vm_perm, a pool given in the request also grants.
		if pool := c.params["pool"]; pool != "" {
			have := c.s.privileges(c.token, "/pool/"+pool)
			if req.satisfiedBy(have) {
				continue
			}
		}
		var e *apiError
		if req.anyOf {
			e = c.checkAny(path, req.privs...)
		} else {
			e = c.checkAll(path, req.privs...)
		}
		if e != nil {
			return e
		}
		if k == "startup" {
			// special case: it changes host behaviour.
			if e := c.checkAll("/", "Sys.Modify"); e != nil {
				return e
			}
		}
	}
	return nil
}

// optionRequirement is what one config option needs.
type optionRequirement struct {
	privs    []string
	anyOf    bool
	rootOnly string
}

func (r optionRequirement) satisfiedBy(have map[string]bool) bool {
	for _, p := range r.privs {
		if have[p] && r.anyOf {
			return true
		}
		if !have[p] && !r.anyOf {
			return false
		}
	}
	return !r.anyOf
}

func optionSet(keys ...string) map[string]bool {
	m := map[string]bool{}
	for _, k := range keys {
		m[k] = true
	}
	return m
}

// qemu-server's option tables (PVE/API2/Qemu.pm, 8.x): an option in none of
// them (args, lock, hookscript, rng0, vmgenid, affinity, ...) falls into
// check_vm_modify_config_perm's catch-all "only root can set '<opt>' config".
var (
	cpuOptions       = optionSet("cores", "cpu", "cpulimit", "cpuunits", "numa", "smp", "sockets", "vcpus")
	memoryOptions    = optionSet("memory", "balloon", "shares")
	hwtypeOptions    = optionSet("acpi", "hotplug", "kvm", "machine", "scsihw", "smbios1", "tablet", "vga", "watchdog", "audio0")
	generalOptions   = optionSet("agent", "autostart", "bios", "description", "keyboard", "localtime", "migrate_downtime", "migrate_speed", "name", "onboot", "ostype", "protection", "reboot", "startdate", "startup", "tdf", "template")
	vmpowerOptions   = optionSet("freeze")
	diskOptions      = optionSet("boot", "bootdisk", "vmstatestorage")
	cloudinitOptions = optionSet("cicustom", "cipassword", "citype", "ciuser", "ciupgrade", "nameserver", "searchdomain", "sshkeys")
)

func configPrivileges(key, value string) optionRequirement {
	need := func(p ...string) optionRequirement { return optionRequirement{privs: p} }
	root := func(format string) optionRequirement {
		return optionRequirement{rootOnly: fmt.Sprintf(format, key)}
	}
	base := strings.TrimRight(key, "0123456789")
	indexed := base != key
	switch {
	case nonConfigParams[key]:
		return optionRequirement{}
	case isDriveKey(key):
		if strings.Contains(value, "media=cdrom") {
			return need("VM.Config.CDROM")
		}
		return need("VM.Config.Disk")
	case key == "cdrom":
		return need("VM.Config.CDROM")
	case key == "tags":
		// Tags skip the table check; assert_tag_permissions wants Options.
		return need("VM.Config.Options")
	case indexed && base == "serial":
		if value != "" && value != "socket" {
			return root("only root can set '%s' config for real devices")
		}
		return need("VM.Config.HWType")
	case indexed && base == "usb":
		kv := parsePropString(value, "host")
		if value != "" && kv["mapping"] == "" && !strings.EqualFold(kv["host"], "spice") {
			return root("only root can set '%s' config for real devices")
		}
		return need("VM.Config.HWType")
	case indexed && base == "hostpci":
		if value != "" && parsePropString(value, "host")["mapping"] == "" {
			return root("only root can set '%s' config for non-mapped devices")
		}
		return need("VM.Config.HWType")
	case cpuOptions[key] || (indexed && base == "numa"):
		return need("VM.Config.CPU")
	case memoryOptions[key]:
		return need("VM.Config.Memory")
	case hwtypeOptions[key]:
		return need("VM.Config.HWType")
	case generalOptions[key]:
		return need("VM.Config.Options")
	case vmpowerOptions[key]:
		return need("VM.PowerMgmt")
	case diskOptions[key]:
		return need("VM.Config.Disk")
	case indexed && base == "net":
		return need("VM.Config.Network")
	case cloudinitOptions[key] || (indexed && base == "ipconfig"):
		return optionRequirement{privs: []string{"VM.Config.Cloudinit", "VM.Config.Network"}, anyOf: true}
	case key == "vmstate":
		return need("VM.Config.Disk", "VM.PowerMgmt")
	}
	return root("only root can set '%s' config")
}
