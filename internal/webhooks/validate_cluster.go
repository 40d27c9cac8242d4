package webhooks

import (
	"fmt"
	"net/netip"
	"net/url"
	"regexp"
	"strings"

	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"

	infrav1 "github.com/proxmox-talos/cluster-api-provider-proxmox-talos/api/v1beta1"
)

var (
	// talosVersionRE accepts Talos release tags such as v1.13.9 or v1.14.0-beta.1.
	talosVersionRE = regexp.MustCompile(`^v[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.-]+)?$`)
	// extensionRE accepts official extension names such as siderolabs/qemu-guest-agent.
	extensionRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]*/[a-z0-9][a-z0-9._-]*$`)
	// tokenIDRE is Proxmox's API token id shape, USER@REALM!TOKENNAME.
	tokenIDRE = regexp.MustCompile(`^[^\s@!]+@[A-Za-z][A-Za-z0-9._-]*![A-Za-z][A-Za-z0-9._-]*$`)
)

// ValidateTokenID checks a Proxmox API token id (from the credentials Secret).
func ValidateTokenID(id string) error {
	if !tokenIDRE.MatchString(id) {
		return fmt.Errorf("token id %q is not of the form USER@REALM!TOKENNAME (for example capi@pve!provider)", id)
	}
	return nil
}

// ValidateClusterSpec checks everything about a cluster spec that the CRD schema cannot:
// address arithmetic, cross-field rules and formats. It returns every problem at once.
func ValidateClusterSpec(spec *infrav1.ProxmoxTalosClusterSpec, path *field.Path) field.ErrorList {
	var errs field.ErrorList
	errs = append(errs, validateProxmoxURL(spec.Proxmox.URL, spec.Proxmox.InsecureAllowHTTP, path.Child("proxmox", "url"))...)

	pools, poolErrs := validatePools(spec.IPPools, path.Child("ipPools"))
	errs = append(errs, poolErrs...)
	errs = append(errs, validateEndpoint(spec, pools, path)...)
	errs = append(errs, validateFailureDomains(spec.FailureDomains, path.Child("failureDomains"))...)
	errs = append(errs, validateTalos(&spec.Talos, true, path.Child("talos"))...)
	errs = append(errs, validateClusterFormats(spec, path)...)
	return errs
}

func validateProxmoxURL(raw string, allowHTTP bool, path *field.Path) field.ErrorList {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return field.ErrorList{field.Invalid(path, raw, "must be an absolute URL such as https://pve.example.com:8006")}
	}
	var errs field.ErrorList
	switch {
	case u.Scheme == "https":
	case u.Scheme == "http" && allowHTTP:
	case u.Scheme == "http":
		errs = append(errs, field.Invalid(path, raw, "must use https: the Proxmox VE API is only served over TLS, and over http the API token would travel unencrypted (set spec.proxmox.insecureAllowHTTP: true only for a simulator on loopback)"))
	default:
		errs = append(errs, field.Invalid(path, raw, "must use https, for example https://pve.example.com:8006"))
	}
	trimmed := strings.TrimRight(u.Path, "/")
	if strings.HasSuffix(trimmed, "/api2/json") {
		errs = append(errs, field.Invalid(path, raw, "must not end in /api2/json: give only scheme, host and port (for example https://pve.example.com:8006); the provider appends /api2/json"))
	} else if trimmed != "" {
		errs = append(errs, field.Invalid(path, raw, "must not have a path: give only scheme, host and port (for example https://pve.example.com:8006)"))
	}
	if u.RawQuery != "" || u.User != nil {
		errs = append(errs, field.Invalid(path, raw, "must not carry a query or user information; credentials belong in the credentials Secret"))
	}
	return errs
}

// parsedPool is a pool after validation, kept for cross-pool and endpoint checks.
type parsedPool struct {
	index  int // in spec.ipPools
	name   string
	set    addressSet
	is4    bool
	prefix netip.Prefix // network of the first address with the pool's prefix length
}

func validatePools(pools []infrav1.IPPool, path *field.Path) ([]parsedPool, field.ErrorList) {
	var errs field.ErrorList
	var parsed []parsedPool
	for i, pool := range pools {
		p := path.Index(i)
		pp := parsedPool{index: i, name: pool.Name}
		for j, entry := range pool.Addresses {
			r, err := parseAddressEntry(entry)
			if err != nil {
				errs = append(errs, field.Invalid(p.Child("addresses").Index(j), entry, err.Error()))
				continue
			}
			if len(pp.set) > 0 && pp.set[0].first.Is4() != r.first.Is4() {
				errs = append(errs, field.Invalid(p.Child("addresses").Index(j), entry, "mixes IPv4 and IPv6 in one pool: use one pool per family"))
				continue
			}
			pp.set = append(pp.set, r)
		}
		if len(pp.set) == 0 {
			continue
		}
		pp.is4 = pp.set[0].first.Is4()
		maxBits := 128
		if pp.is4 {
			maxBits = 32
		}
		if int(pool.Prefix) > maxBits {
			errs = append(errs, field.Invalid(p.Child("prefix"), pool.Prefix, fmt.Sprintf("must be at most %d for this pool's address family", maxBits)))
			continue
		}
		pp.prefix = netip.PrefixFrom(pp.set[0].first, int(pool.Prefix)).Masked()
		for j, r := range pp.set {
			if !pp.prefix.Contains(r.first) || !pp.prefix.Contains(r.last) {
				errs = append(errs, field.Invalid(p.Child("addresses").Index(j), pool.Addresses[j],
					fmt.Sprintf("lies outside %s, the network given by the first address and prefix %d", pp.prefix, pool.Prefix)))
			}
		}
		if pool.Gateway != "" {
			gw, err := netip.ParseAddr(pool.Gateway)
			switch {
			case err != nil:
				errs = append(errs, field.Invalid(p.Child("gateway"), pool.Gateway, "is not an IP address"))
			case gw.Is4() != pp.is4:
				errs = append(errs, field.Invalid(p.Child("gateway"), pool.Gateway, "is not of the pool's address family"))
			case !pp.prefix.Contains(gw):
				errs = append(errs, field.Invalid(p.Child("gateway"), pool.Gateway, fmt.Sprintf("is outside the pool's network %s: nodes could not reach it", pp.prefix)))
			case pp.set.contains(gw):
				errs = append(errs, field.Invalid(p.Child("gateway"), pool.Gateway, "is one of the pool's own addresses: a node would be given the gateway's address"))
			}
		}
		for j, dns := range pool.DNSServers {
			if _, err := netip.ParseAddr(dns); err != nil {
				errs = append(errs, field.Invalid(p.Child("dnsServers").Index(j), dns, "is not an IP address"))
			}
		}
		for _, other := range parsed {
			if other.set.overlaps(pp.set) {
				errs = append(errs, field.Invalid(p.Child("addresses"), pool.Addresses,
					fmt.Sprintf("overlaps pool %q: one address could be given to two machines", other.name)))
			}
		}
		parsed = append(parsed, pp)
	}
	return parsed, errs
}

func validateEndpoint(spec *infrav1.ProxmoxTalosClusterSpec, pools []parsedPool, path *field.Path) field.ErrorList {
	var errs field.ErrorList
	host := spec.ControlPlaneEndpoint.Host
	hostPath := path.Child("controlPlaneEndpoint", "host")
	poolName := spec.ControlPlaneEndpointPool

	if poolName != "" && !poolNamed(spec.IPPools, poolName) {
		errs = append(errs, field.Invalid(path.Child("controlPlaneEndpointPool"), poolName, "names no entry of spec.ipPools"))
	}
	if ref := spec.ControlPlaneEndpointIPAMPoolRef; ref != nil {
		refPath := path.Child("controlPlaneEndpointIPAMPoolRef")
		if poolName != "" {
			errs = append(errs, field.Invalid(refPath, ref.Name, "set either controlPlaneEndpointPool or controlPlaneEndpointIPAMPoolRef, not both"))
		}
		if ref.APIGroup == "" {
			errs = append(errs, field.Required(refPath.Child("apiGroup"), "the IPAM pool's API group, for example ipam.cluster.x-k8s.io"))
		}
		if ref.Kind == "" {
			errs = append(errs, field.Required(refPath.Child("kind"), "the IPAM pool's kind, for example InClusterIPPool"))
		}
		if ref.Name == "" {
			errs = append(errs, field.Required(refPath.Child("name"), "the IPAM pool's name"))
		}
	}
	if host == "" {
		if poolName == "" && spec.ControlPlaneEndpointIPAMPoolRef == nil {
			errs = append(errs, field.Required(hostPath, "set the control-plane endpoint (the VIP), or controlPlaneEndpointPool or controlPlaneEndpointIPAMPoolRef to allocate it from a pool"))
		}
		return errs
	}
	addr, err := netip.ParseAddr(host)
	if err != nil {
		if msgs := validation.IsDNS1123Subdomain(host); len(msgs) > 0 {
			errs = append(errs, field.Invalid(hostPath, host, "must be an IP address or a DNS name: "+strings.Join(msgs, "; ")))
		}
		return errs
	}
	// A fixed host inside one of the cluster's pools is allowed: the controller reserves
	// it in that pool (an IPAddress held by the cluster) before any machine is created,
	// so no machine is given the VIP.
	if poolName != "" && len(errs) == 0 {
		for _, pool := range pools {
			if pool.name == poolName && !pool.set.contains(addr) {
				errs = append(errs, field.Invalid(hostPath, host, fmt.Sprintf("is not in controlPlaneEndpointPool %q", poolName)))
			}
		}
	}
	return errs
}

func poolNamed(pools []infrav1.IPPool, name string) bool {
	for _, p := range pools {
		if p.Name == name {
			return true
		}
	}
	return false
}

func validateFailureDomains(fds []infrav1.FailureDomain, path *field.Path) field.ErrorList {
	var errs field.ErrorList
	owner := map[string]string{}
	for i, fd := range fds {
		for j, node := range fd.Nodes {
			if other, ok := owner[node]; ok && other != fd.Name {
				errs = append(errs, field.Invalid(path.Index(i).Child("nodes").Index(j), node,
					fmt.Sprintf("is already in failure domain %q: a node belongs to one failure domain", other)))
				continue
			}
			owner[node] = fd.Name
		}
	}
	return errs
}

// validateTalos checks image settings; on the cluster the version is required.
func validateTalos(t *infrav1.TalosImageSpec, requireVersion bool, path *field.Path) field.ErrorList {
	var errs field.ErrorList
	switch {
	case t.Version == "" && requireVersion:
		errs = append(errs, field.Required(path.Child("version"), "set the Talos version of the image, for example v1.13.9"))
	case t.Version != "" && !talosVersionRE.MatchString(t.Version):
		errs = append(errs, field.Invalid(path.Child("version"), t.Version, "must be a Talos release such as v1.13.9 (with the leading v)"))
	}
	if t.FactoryURL != "" {
		u, err := url.Parse(t.FactoryURL)
		switch {
		case err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "":
			errs = append(errs, field.Invalid(path.Child("factoryURL"), t.FactoryURL, "must be an https URL such as https://factory.talos.dev"))
		case u.Scheme == "http" && !t.InsecureAllowHTTP:
			errs = append(errs, field.Invalid(path.Child("factoryURL"), t.FactoryURL,
				"must use https: over http nothing proves the images and schematics come from the factory (set insecureAllowHTTP: true next to factoryURL only for a simulator or a mirror on a trusted network)"))
		case strings.Trim(u.Path, "/") != "":
			errs = append(errs, field.Invalid(path.Child("factoryURL"), t.FactoryURL, "must be the factory's base URL without a path"))
		}
	}
	seen := map[string]bool{}
	for i, ext := range t.Extensions {
		if !extensionRE.MatchString(ext) {
			errs = append(errs, field.Invalid(path.Child("extensions").Index(i), ext, "must be an official extension name such as siderolabs/qemu-guest-agent"))
		}
		if seen[ext] {
			errs = append(errs, field.Duplicate(path.Child("extensions").Index(i), ext))
		}
		seen[ext] = true
	}
	for i, arg := range t.ExtraKernelArgs {
		if strings.ContainsAny(arg, " \t\n") {
			errs = append(errs, field.Invalid(path.Child("extraKernelArgs").Index(i), arg, "must be a single kernel argument without whitespace; give each argument its own entry"))
		}
	}
	return errs
}

// ValidateAgainstOtherClusters refuses addresses that another ProxmoxTalosCluster on the
// same Proxmox API could hand out too: overlapping static pools, this cluster's endpoint
// inside another cluster's pool, another cluster's endpoint inside one of this cluster's
// pools, or the same endpoint twice.
//
// Why a check at admission rather than allocation across clusters: a pool's addresses are
// claimed by IPAddress objects named after the cluster and pool, and those live in the
// cluster's namespace, so no name can lock an address across namespaces; an allocator
// that listed every cluster's addresses before claiming would still race. Overlap is a
// configuration mistake best shown to the person making it, with both clusters named.
//
// Clusters are compared when they use the same Proxmox API host (and port): their VMs sit
// on the same bridges. Clusters on other Proxmox installations may reuse private ranges
// on separate networks, which is legitimate. The check is as good as the list it reads:
// two clusters created in the same instant can both pass (docs/addresses.md).
func ValidateAgainstOtherClusters(c *infrav1.ProxmoxTalosCluster, others []infrav1.ProxmoxTalosCluster, path *field.Path) field.ErrorList {
	host := proxmoxAPIHost(c.Spec.Proxmox.URL)
	if host == "" {
		return nil
	}
	mine, _ := validatePools(c.Spec.IPPools, path.Child("ipPools"))
	myVIP, _ := netip.ParseAddr(c.Spec.ControlPlaneEndpoint.Host)
	hostPath := path.Child("controlPlaneEndpoint", "host")
	var errs field.ErrorList
	for i := range others {
		o := &others[i]
		if (o.Namespace == c.Namespace && o.Name == c.Name) || !o.DeletionTimestamp.IsZero() || proxmoxAPIHost(o.Spec.Proxmox.URL) != host {
			continue
		}
		who := fmt.Sprintf("ProxmoxTalosCluster %s/%s", o.Namespace, o.Name)
		theirs, _ := validatePools(o.Spec.IPPools, field.NewPath("spec", "ipPools"))
		theirVIP, _ := netip.ParseAddr(o.Spec.ControlPlaneEndpoint.Host)
		for _, p := range mine {
			addrPath := path.Child("ipPools").Index(p.index).Child("addresses")
			for _, q := range theirs {
				if p.set.overlaps(q.set) {
					errs = append(errs, field.Invalid(addrPath, c.Spec.IPPools[p.index].Addresses,
						fmt.Sprintf("overlaps pool %q of %s, which uses the same Proxmox API (%s): both clusters could give one address to two machines; use disjoint ranges, or let both take addresses from one Cluster API IPAM pool (ipamPoolRef)", q.name, who, host)))
				}
			}
			if theirVIP.IsValid() && p.set.contains(theirVIP) {
				errs = append(errs, field.Invalid(addrPath, c.Spec.IPPools[p.index].Addresses,
					fmt.Sprintf("contains %s, the control-plane endpoint of %s (same Proxmox API %s): a machine of this cluster could be given that VIP", theirVIP, who, host)))
			}
		}
		if !myVIP.IsValid() {
			continue
		}
		if theirVIP == myVIP {
			errs = append(errs, field.Invalid(hostPath, c.Spec.ControlPlaneEndpoint.Host, fmt.Sprintf("is already the control-plane endpoint of %s", who)))
		}
		for _, q := range theirs {
			if q.set.contains(myVIP) {
				errs = append(errs, field.Invalid(hostPath, c.Spec.ControlPlaneEndpoint.Host,
					fmt.Sprintf("lies inside pool %q of %s (same Proxmox API %s): a machine of that cluster could be given this VIP", q.name, who, host)))
			}
		}
	}
	return errs
}

// addressesChanged reports whether an update touches what ValidateAgainstOtherClusters
// looks at, so unrelated updates of clusters that predate the check keep working.
func addressesChanged(old, c *infrav1.ProxmoxTalosCluster) bool {
	return !equality.Semantic.DeepEqual(old.Spec.IPPools, c.Spec.IPPools) ||
		old.Spec.ControlPlaneEndpoint.Host != c.Spec.ControlPlaneEndpoint.Host ||
		proxmoxAPIHost(old.Spec.Proxmox.URL) != proxmoxAPIHost(c.Spec.Proxmox.URL)
}

// proxmoxAPIHost is the host:port of a Proxmox API URL, lower-cased, with the default
// port made explicit, so spellings of one endpoint compare equal.
func proxmoxAPIHost(raw string) string {
	u, err := url.Parse(strings.TrimSpace(raw))
	if err != nil || u.Hostname() == "" {
		return ""
	}
	port := u.Port()
	if port == "" {
		port = "443"
		if u.Scheme == "http" {
			port = "80"
		}
	}
	return strings.ToLower(u.Hostname()) + ":" + port
}
