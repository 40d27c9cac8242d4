package talossim

import (
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"sort"
	"strings"

	"github.com/siderolabs/talos/pkg/machinery/config"
	"github.com/siderolabs/talos/pkg/machinery/config/machine"
	"sigs.k8s.io/yaml"

	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/pkg/bootstrap"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/pkg/imagefactory"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/pkg/proxmox/pvesim"
)

// Roles of a node, as Talos names machine types.
const (
	RoleControlPlane = "controlplane"
	RoleWorker       = "worker"
)

// nodeSpec is what a node learns at boot from its ISO and machine config.
type nodeSpec struct {
	hostname    string
	addr        netip.Addr
	role        string
	clusterName string
	endpoint    *url.URL
	osCA        *ca // Talos OS CA (machine.ca); key only on control planes
	k8sCA       *ca // Kubernetes CA (cluster.ca); key only on control planes
	saKeyPEM    []byte
	// kubeletVersion is the tag of the kubelet image the config asks for (what a real
	// kubelet would report), talosVersion the version of the image the VM boots from.
	kubeletVersion string
	talosVersion   string
	// platform is "nocloud" or "metal", from the boot medium (cidata or metal-iso).
	platform string
	// manifests are cluster.inlineManifests and the local cluster.extraManifests: a
	// control plane that bootstraps the cluster applies them (manifests.go).
	manifests *bootstrapManifests
}

// readBootMedia finds the Talos boot medium among the VM's ISOs and returns
// the machine config, meta-data and network-config (the last two only for
// nocloud).
func readBootMedia(isos []pvesim.AttachedISO) (cfg, metaData, netConfig []byte, platform string, err error) {
	for _, iso := range isos {
		label, files, rerr := bootstrap.ReadISO(iso.Data)
		if rerr != nil {
			continue // an installer or other ISO: not ours
		}
		switch strings.ToLower(label) {
		case bootstrap.CIDataLabel:
			return files[bootstrap.FileUserData], files[bootstrap.FileMetaData], files[bootstrap.FileNetworkConfig], "nocloud", nil
		case bootstrap.MetalISOLabel:
			return files[bootstrap.FileMetalConfig], nil, nil, "metal", nil
		}
	}
	return nil, nil, nil, "", errors.New("no cidata or metal-iso boot ISO attached")
}

// errConfigRefused marks a machine config a real node would refuse: it stays in maintenance
// mode with Talos' error, which the simulator records for the lab (Sim.Refusals).
var errConfigRefused = errors.New("machine config refused; node stays in maintenance mode")

// parseSpec turns boot media into a nodeSpec, refusing what a Talos node of the image's
// release would refuse (config.go) and anything the lab cannot host (addresses outside
// loopback, unknown machine types).
func (s *Sim) parseSpec(ev pvesim.PowerEvent) (*nodeSpec, error) {
	raw, metaData, netConfig, platform, err := readBootMedia(ev.ISOs)
	if err != nil {
		return nil, err
	}
	if len(raw) == 0 {
		return nil, errors.New("boot ISO carries no machine config")
	}
	spec := &nodeSpec{platform: platform}
	var schematicID string
	if ref, err := imagefactory.ParseStorageName(ev.DiskSource[strings.Index(ev.DiskSource, "/")+1:]); err == nil {
		spec.talosVersion, schematicID = ref.TalosVersion, ref.SchematicID
	}
	cfg, err := loadConfig(raw, spec.talosVersion, platform, func(w string) {
		s.logf("VM %d (%s): machine config warning: %s", ev.VMID, ev.Name, w)
	})
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errConfigRefused, err)
	}
	installed, err := s.installedExtensions(schematicID)
	if err != nil {
		return nil, err
	}
	if err := checkExtensionServices(cfg, installed); err != nil {
		return nil, fmt.Errorf("%w: %w", errConfigRefused, err)
	}
	if cfg.Machine() == nil || cfg.Cluster() == nil {
		return nil, errors.New("machine config has no v1alpha1 machine/cluster sections")
	}
	switch cfg.Machine().Type() {
	case machine.TypeControlPlane, machine.TypeInit:
		spec.role = RoleControlPlane
	case machine.TypeWorker:
		spec.role = RoleWorker
	default:
		return nil, fmt.Errorf("unsupported machine type %q", cfg.Machine().Type())
	}

	if k := cfg.K8sClusterConfig(); k != nil {
		spec.clusterName, spec.endpoint = k.ClusterName(), k.ClusterEndpoint()
	}
	if spec.endpoint == nil || spec.endpoint.Host == "" {
		return nil, errors.New("machine config has no cluster.controlPlane.endpoint")
	}
	if spec.clusterName == "" {
		spec.clusterName = spec.endpoint.Hostname()
	}

	if spec.osCA, err = parseCA(cfg.Machine().Security().IssuingCA()); err != nil {
		return nil, fmt.Errorf("machine.ca: %w", err)
	}
	// Workers carry cluster.ca only as an accepted certificate; they need no CA here.
	if c := cfg.K8sAPIServerCAConfig(); c != nil && c.IssuingCA() != nil && len(c.IssuingCA().Crt) > 0 {
		if spec.k8sCA, err = parseCA(c.IssuingCA()); err != nil {
			return nil, fmt.Errorf("cluster.ca: %w", err)
		}
	}
	if spec.role == RoleControlPlane {
		if spec.k8sCA == nil || spec.k8sCA.key == nil || spec.osCA.key == nil {
			return nil, errors.New("control-plane config lacks machine.ca or cluster.ca keys")
		}
		if sa := cfg.K8sServiceAccountConfig(); sa != nil && sa.IssuingKey() != nil {
			spec.saKeyPEM = sa.IssuingKey().Key
		}
		if len(spec.saKeyPEM) == 0 {
			return nil, errors.New("control-plane config lacks cluster.serviceAccount.key")
		}
	}

	spec.hostname = hostnameFrom(metaData, cfg, ev.Name)
	if k := cfg.K8sKubeletConfig(); k != nil {
		spec.kubeletVersion = imageTag(k.Image())
	}
	if spec.role == RoleControlPlane {
		spec.manifests = manifestsFrom(cfg)
	}

	addrs, err := addressesFrom(netConfig, cfg)
	if err != nil {
		return nil, err
	}
	if len(addrs) == 0 {
		return nil, errors.New("no static IPv4 address in network-config or machine config (DHCP cannot be simulated)")
	}
	if !addrs[0].IsLoopback() {
		return nil, fmt.Errorf("address %s is outside 127.0.0.0/8; the lab only binds loopback", addrs[0])
	}
	spec.addr = addrs[0]
	return spec, nil
}

// hostnameFrom prefers nocloud local-hostname (what Talos' nocloud platform
// uses), then the machine config's hostname (NetworkHostnameConfig covers
// both machine.network.hostname and the HostnameConfig document), then the VM name.
func hostnameFrom(metaData []byte, cfg config.Provider, vmName string) string {
	var md struct {
		LocalHostname string `json:"local-hostname"`
		Hostname      string `json:"hostname"`
	}
	if len(metaData) > 0 && yaml.Unmarshal(metaData, &md) == nil {
		if md.LocalHostname != "" {
			return md.LocalHostname
		}
		if md.Hostname != "" {
			return md.Hostname
		}
	}
	if h := cfg.NetworkHostnameConfig(); h != nil && h.Hostname() != "" {
		return h.Hostname()
	}
	return vmName
}

// addressesFrom lists static IPv4 addresses: nocloud network-config v2
// (ethernets then vlans, keys sorted so the choice is stable), else the
// machine config's interfaces.
func addressesFrom(netConfig []byte, cfg config.Provider) ([]netip.Addr, error) {
	var out []netip.Addr
	add := func(s string) {
		if p, err := netip.ParsePrefix(s); err == nil && p.Addr().Is4() {
			out = append(out, p.Addr())
		} else if a, err := netip.ParseAddr(s); err == nil && a.Is4() {
			out = append(out, a)
		}
	}
	if len(netConfig) > 0 {
		type link struct {
			Addresses []string `json:"addresses"`
		}
		var nc struct {
			Network *struct {
				Ethernets map[string]link `json:"ethernets"`
				VLANs     map[string]link `json:"vlans"`
			} `json:"network"`
			Ethernets map[string]link `json:"ethernets"`
			VLANs     map[string]link `json:"vlans"`
		}
		if err := yaml.Unmarshal(netConfig, &nc); err != nil {
			return nil, errors.New("network-config is not valid YAML")
		}
		eth, vl := nc.Ethernets, nc.VLANs
		if nc.Network != nil { // some writers nest v2 under "network:"
			eth, vl = nc.Network.Ethernets, nc.Network.VLANs
		}
		for _, m := range []map[string]link{eth, vl} {
			keys := make([]string, 0, len(m))
			for k := range m {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			for _, k := range keys {
				for _, a := range m[k].Addresses {
					add(a)
				}
			}
		}
	}
	if len(out) == 0 && cfg.Machine().Network() != nil {
		for _, dev := range cfg.Machine().Network().Devices() {
			for _, a := range dev.Addresses() {
				add(a)
			}
		}
	}
	return out, nil
}

// imageTag is the tag of a container image reference ("" when it has none).
func imageTag(image string) string {
	if i := strings.LastIndex(image, ":"); i > strings.LastIndex(image, "/") {
		return image[i+1:]
	}
	return ""
}
