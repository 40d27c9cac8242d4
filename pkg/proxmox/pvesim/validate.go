package pvesim

import (
	"fmt"
	"math"
	"net"
	"regexp"
	"strconv"
	"strings"
	"sync"

	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/pkg/proxmox/pvesim/internal/apischema"
)

// validate checks c.params against the route's schema with PVE's
// JSONSchema messages, collecting all errors like PVE does.
func (c *reqCtx) validate() *apiError {
	errs := map[string]string{}
	rt := c.route.schema
	for name, val := range c.params {
		p, ok := rt.Param(name)
		if !ok || (p.Only91 && c.s.cfg.is8()) {
			errs[name] = "property is not defined in schema and the schema does not allow additional properties"
			continue
		}
		if msg := checkValue(name, p, val); msg != "" {
			errs[name] = msg
		}
	}
	for _, p := range rt.Params {
		if p.Optional || strings.HasSuffix(p.Name, "[n]") || (p.Only91 && c.s.cfg.is8()) {
			continue
		}
		if _, ok := c.params[p.Name]; !ok {
			errs[p.Name] = "property is missing and it is not optional"
		}
	}
	for name := range c.params {
		if p, ok := rt.Param(name); ok && p.Requires != "" {
			if _, ok := c.params[p.Requires]; !ok {
				errs[p.Requires] = fmt.Sprintf("parameter '%s' requires parameter '%s'", name, p.Requires)
			}
		}
	}
	if len(errs) > 0 {
		return errParams(errs)
	}
	return nil
}

func checkValue(name string, p *apischema.Param, val string) string {
	if msg := checkScalar(p.Type, p.Enum, p.Pattern, p.Minimum, p.Maximum, val); msg != "" {
		return msg
	}
	if p.MaxLength != nil && len(val) > *p.MaxLength {
		return fmt.Sprintf("value may only be %d characters long", *p.MaxLength)
	}
	if p.Keys != nil {
		return checkPropString(name, p.Keys, val)
	}
	if p.Format != "" {
		return checkNamedFormat(p.Format, val)
	}
	return ""
}

func checkScalar(typ string, enum []string, pattern string, min, max *float64, val string) string {
	switch typ {
	case "integer":
		n, err := strconv.ParseInt(val, 10, 64)
		if err != nil {
			return fmt.Sprintf("type check ('integer') failed - got '%s'", val)
		}
		if min != nil && float64(n) < *min {
			return fmt.Sprintf("value must have a minimum value of %s", fmtNum(*min))
		}
		if max != nil && float64(n) > *max {
			return fmt.Sprintf("value must have a maximum value of %s", fmtNum(*max))
		}
	case "number":
		f, err := strconv.ParseFloat(val, 64)
		if err != nil || math.IsNaN(f) {
			return fmt.Sprintf("type check ('number') failed - got '%s'", val)
		}
		if min != nil && f < *min {
			return fmt.Sprintf("value must have a minimum value of %s", fmtNum(*min))
		}
		if max != nil && f > *max {
			return fmt.Sprintf("value must have a maximum value of %s", fmtNum(*max))
		}
	case "boolean":
		switch strings.ToLower(val) {
		case "0", "1", "true", "false", "yes", "no", "on", "off":
		default:
			return fmt.Sprintf("type check ('boolean') failed - got '%s'", val)
		}
	}
	if len(enum) > 0 {
		found := false
		for _, e := range enum {
			if e == val {
				found = true
			}
		}
		if !found {
			return fmt.Sprintf("value '%s' does not have a value in the enumeration '%s'", val, strings.Join(enum, ", "))
		}
	}
	if pattern != "" {
		if re := compilePattern(pattern); re != nil && !re.MatchString(val) {
			return "value does not match the regex pattern"
		}
	}
	return ""
}

func fmtNum(f float64) string { return strconv.FormatFloat(f, 'f', -1, 64) }

var (
	patMu    sync.Mutex
	patCache = map[string]*regexp.Regexp{}
)

// compilePattern anchors a Perl pattern like PVE (^...$); patterns Go's RE2
// cannot compile are skipped rather than rejecting valid input.
func compilePattern(p string) *regexp.Regexp {
	patMu.Lock()
	defer patMu.Unlock()
	if re, ok := patCache[p]; ok {
		return re
	}
	re, err := regexp.Compile("^(?:" + p + ")$")
	if err != nil {
		re = nil
	}
	patCache[p] = re
	return re
}

// checkPropString validates "k=v,k2=v2" against an inline format: unknown
// keys, duplicate keys, key types/enums and missing required keys.
func checkPropString(param string, keys map[string]*apischema.Key, val string) string {
	var defaultKey string
	for kn, k := range keys {
		if k.DefaultKey {
			defaultKey = kn
		}
	}
	seen := map[string]bool{}
	var problems []string
	for _, part := range strings.Split(val, ",") {
		if part == "" {
			continue
		}
		kn, kv, hasEq := strings.Cut(part, "=")
		if !hasEq {
			if defaultKey == "" || seen[defaultKey] {
				return fmt.Sprintf("invalid format - value without key, but schema does not define a default key\n")
			}
			kn, kv = defaultKey, part
		}
		k, ok := keys[kn]
		if !ok {
			return fmt.Sprintf("invalid format - format error\n%s.%s: property is not defined in schema and the schema does not allow additional properties\n", param, kn)
		}
		if k.KeyAlias != "" {
			// net0: "virtio=MAC" sets model=virtio and macaddr=MAC.
			seen[k.KeyAlias] = true
			kn, k = k.Alias, keys[k.Alias]
			if k == nil {
				continue
			}
		} else if k.Alias != "" {
			kn, k = k.Alias, keys[k.Alias]
			if k == nil {
				continue
			}
		}
		if seen[kn] {
			return fmt.Sprintf("invalid format - duplicate key in comma-separated list property: %s\n", kn)
		}
		seen[kn] = true
		if msg := checkScalar(k.Type, k.Enum, k.Pattern, k.Minimum, k.Maximum, kv); msg != "" {
			problems = append(problems, fmt.Sprintf("%s.%s: %s", param, kn, msg))
			continue
		}
		if k.Format != "" {
			if msg := checkNamedFormat(k.Format, kv); msg != "" {
				problems = append(problems, fmt.Sprintf("%s.%s: %s", param, kn, msg))
			}
		}
	}
	for kn, k := range keys {
		if !k.Optional && k.Alias == "" && k.KeyAlias == "" && !seen[kn] {
			problems = append(problems, fmt.Sprintf("%s.%s: property is missing and it is not optional", param, kn))
		}
	}
	if len(problems) > 0 {
		return "invalid format - format error\n" + strings.Join(problems, "\n") + "\n"
	}
	return ""
}

var (
	reNode      = regexp.MustCompile(`^(?i)[a-z0-9]([a-z0-9\-]*[a-z0-9])?$`)
	reStorageID = regexp.MustCompile(`^(?i)[a-z][a-z0-9\-_.]*[a-z0-9]$`)
	reTag       = regexp.MustCompile(`^(?i)[a-z0-9_][a-z0-9_\-+.]*$`)
	reMAC       = regexp.MustCompile(`^(?i)[0-9a-f]{2}(:[0-9a-f]{2}){5}$`)
	reConfigID  = regexp.MustCompile(`^[a-z][a-z_\-]*\d*$`)
	reVolID     = regexp.MustCompile(`^(?i)[a-z][a-z0-9\-_.]*[a-z0-9]:.+$`)
	reBridge    = regexp.MustCompile(`^[-_.\w\d]+$`)
	reUUID      = regexp.MustCompile(`^(?i)[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)
)

// checkNamedFormat covers the named formats of the served parameters that
// matter for correctness; others are accepted.
func checkNamedFormat(format, val string) string {
	switch format {
	case "pve-node":
		if !reNode.MatchString(val) {
			return fmt.Sprintf("value does not look like a valid node name")
		}
	case "pve-storage-id":
		if !reStorageID.MatchString(val) {
			return fmt.Sprintf("storage ID '%s' contains illegal characters", val)
		}
	case "pve-vmid":
		if n, err := strconv.Atoi(val); err != nil || n < 100 || n > 999999999 {
			return "value does not look like a valid VM ID"
		}
	case "pve-tag-list":
		for _, t := range strings.FieldsFunc(val, func(r rune) bool { return r == ';' || r == ',' || r == ' ' }) {
			if !reTag.MatchString(t) {
				return fmt.Sprintf("invalid tag '%s'", t)
			}
		}
	case "mac-addr":
		hw, err := net.ParseMAC(val)
		if err != nil || !reMAC.MatchString(val) || hw[0]&1 == 1 {
			return fmt.Sprintf("value does not look like a valid unicast MAC address")
		}
	case "pve-configid-list":
		for _, id := range splitList(val) {
			if !reConfigID.MatchString(id) {
				return fmt.Sprintf("invalid configuration ID '%s'", id)
			}
		}
	case "pve-volume-id":
		if !reVolID.MatchString(val) {
			return fmt.Sprintf("unable to parse volume ID '%s'", val)
		}
	case "pve-bridge-id":
		if !reBridge.MatchString(val) {
			return fmt.Sprintf("invalid bridge ID '%s'", val)
		}
	case "pve-qm-smbios1":
		kv := parsePropString(val, "")
		if u, ok := kv["uuid"]; ok && !reUUID.MatchString(u) {
			return "invalid format - format error\nsmbios1.uuid: value does not match the regex pattern\n"
		}
	}
	return ""
}
