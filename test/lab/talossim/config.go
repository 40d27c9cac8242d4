package talossim

import (
	"bytes"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/siderolabs/image-factory/pkg/schematic"
	machineapi "github.com/siderolabs/talos/pkg/machinery/api/machine"
	"github.com/siderolabs/talos/pkg/machinery/compatibility"
	"github.com/siderolabs/talos/pkg/machinery/config"
	"github.com/siderolabs/talos/pkg/machinery/config/configloader"
	"github.com/siderolabs/talos/pkg/machinery/config/validation"
	yaml "go.yaml.in/yaml/v4"
)

// runtimeMode is the validation.RuntimeMode a Talos node runs in, chosen by its platform as
// Talos does: nocloud is a cloud platform (the image is already the system disk, nothing to
// install), metal boots an ISO and installs, so its install section is validated.
type runtimeMode struct {
	name    string
	install bool
}

func (m runtimeMode) String() string        { return m.name }
func (m runtimeMode) RequiresInstall() bool { return m.install }
func (m runtimeMode) InContainer() bool     { return false }

var (
	modeCloud = runtimeMode{name: "cloud"}
	modeMetal = runtimeMode{name: "metal", install: true}
)

// kindSince is the Talos minor release that introduced each machine-config document kind,
// read from the registered kinds of github.com/siderolabs/talos/pkg/machinery v1.8.0 through
// v1.14.1 (kinds of 1.8 and earlier are 8). The machinery the project uses (1.14) knows every
// kind, but a node runs the Talos release of its image and refuses kinds its own release does
// not register, so the lab refuses them too.
var kindSince = map[string]int{
	"EthernetConfig": 10, "PCIDriverRebindConfig": 10, "UserVolumeConfig": 10,

	"ExistingVolumeConfig": 11, "RawVolumeConfig": 11, "SwapVolumeConfig": 11, "ZswapConfig": 11,

	"BondConfig": 12, "BridgeConfig": 12, "DHCPv4Config": 12, "DHCPv6Config": 12, "DummyLinkConfig": 12,
	"HCloudVIPConfig": 12, "HostnameConfig": 12, "Layer2VIPConfig": 12, "LinkAliasConfig": 12, "LinkConfig": 12,
	"OOMConfig": 12, "RegistryAuthConfig": 12, "RegistryMirrorConfig": 12, "RegistryTLSConfig": 12,
	"ResolverConfig": 12, "StaticHostConfig": 12, "TimeSyncConfig": 12, "VLANConfig": 12, "WireguardConfig": 12,

	"BlackholeRouteConfig": 13, "EnvironmentConfig": 13, "ExternalVolumeConfig": 13, "ImageVerificationConfig": 13,
	"KubeSpanConfig": 13, "RoutingRuleConfig": 13, "TCPProbeConfig": 13, "VRFConfig": 13,

	"BGPInstanceConfig": 14, "CRIBaseRuntimeSpecConfig": 14, "CRICustomizationConfig": 14, "ContainerConfig": 14,
	"DiscoveryIdentityConfig": 14, "DiscoveryServiceConfig": 14, "EtcFileConfig": 14, "FilesystemScrubConfig": 14,
	"FilesystemTrimConfig": 14, "HTTPProbeConfig": 14, "ImageCacheConfig": 14, "KernelModuleConfig": 14,
	"KubeAPIServerCAConfig": 14, "KubeAPIServerConfig": 14, "KubeAdmissionControlConfig": 14,
	"KubeAggregatorCAConfig": 14, "KubeAuditPolicyConfig": 14, "KubeAuthenticationConfig": 14,
	"KubeAuthorizerConfig": 14, "KubeClusterConfig": 14, "KubeControllerManagerConfig": 14,
	"KubeCoreDNSConfig": 14, "KubeCredentialProviderConfig": 14, "KubeEtcdEncryptionConfig": 14,
	"KubeExternalManifestConfig": 14, "KubeFlannelCNIConfig": 14, "KubeInlineManifestConfig": 14,
	"KubeNetworkConfig": 14, "KubeNodeConfig": 14, "KubePrismConfig": 14, "KubeProxyConfig": 14,
	"KubeSchedulerConfig": 14, "KubeServiceAccountConfig": 14, "KubeStaticPodConfig": 14,
	"KubeTalosAPIAccessConfig": 14, "KubeletConfig": 14, "LVMLogicalVolumeConfig": 14, "LVMVolumeGroupConfig": 14,
	"RAIDArrayConfig": 14, "SecurityProfileConfig": 14, "SysctlConfig": 14, "SysfsConfig": 14,
	"UdevRulesConfig": 14, "UnattendedInstallConfig": 14, "VethConfig": 14,
}

// talosMinor parses "v1.13.9" into 13; ok is false for anything else (an unknown image).
func talosMinor(version string) (int, bool) {
	parts := strings.SplitN(strings.TrimPrefix(version, "v"), ".", 3)
	if len(parts) < 2 || parts[0] != "1" {
		return 0, false
	}
	minor, err := strconv.Atoi(parts[1])
	return minor, err == nil
}

// checkKindsForVersion refuses the first document whose kind the node's Talos release does not
// register, with the message that release's config loader gives: before 1.13 the registry
// error alone, from 1.13 on wrapped with the document and its line. Documents that are not
// valid YAML stop the walk: the config loader reports those itself.
func checkKindsForVersion(data []byte, talosVersion string) error {
	minor, ok := talosMinor(talosVersion)
	if !ok {
		return nil // version unknown: the machinery's own set of kinds applies
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	for {
		var doc yaml.Node
		if err := dec.Decode(&doc); err != nil {
			// io.EOF ends the walk; a YAML error is the config loader's to report.
			return nil
		}
		for _, m := range doc.Content {
			if m.Kind != yaml.MappingNode {
				continue
			}
			apiVersion, kind, name := mapValue(m, "apiVersion"), mapValue(m, "kind"), mapValue(m, "name")
			since, known := kindSince[kind]
			if kind == "" || !known || since <= minor {
				continue
			}
			err := fmt.Errorf("%q %q: not registered", kind, apiVersion)
			if minor >= 13 {
				err = fmt.Errorf("error decoding document %s/%s/%s (line %d): %w", apiVersion, kind, name, m.Line, err)
			}
			return fmt.Errorf("%w (Talos %s has no %s; it arrived in Talos 1.%d)", err, talosVersion, kind, since)
		}
	}
}

func mapValue(m *yaml.Node, key string) string {
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key && m.Content[i+1].Kind == yaml.ScalarNode {
			return m.Content[i+1].Value
		}
	}
	return ""
}

// loadConfig loads and validates a machine config as a Talos node of talosVersion on platform
// does at boot: every document decoded strictly by Talos' config loader (unknown fields,
// duplicate documents and bad YAML anywhere refuse the whole config), kinds checked against
// the release, then Validate in the platform's runtime mode. Warnings go to warn. The error
// text is Talos' own; it never contains config values beyond what Talos prints.
func loadConfig(data []byte, talosVersion, platform string, warn func(string)) (config.Provider, error) {
	if err := checkKindsForVersion(data, talosVersion); err != nil {
		return nil, err
	}
	cfg, err := configloader.NewFromBytes(data)
	if err != nil {
		return nil, redactUnknownKeys(err)
	}
	mode := modeCloud
	if platform == "metal" {
		mode = modeMetal
	}
	// WithLocal skips only the Kubernetes version check, which Talos runs against its own
	// release (the machinery's here): checkKubernetesVersions runs it against the node's.
	warnings, err := cfg.ValidateAsClient(mode, validation.WithLocal())
	for _, w := range warnings {
		warn(w)
	}
	if err != nil {
		return nil, err
	}
	if err := checkKubernetesVersions(cfg, talosVersion); err != nil {
		return nil, err
	}
	return cfg, nil
}

// checkKubernetesVersions is Talos' ValidateKubernetesVersions for a node of talosVersion: the
// kubelet image (and on control planes the control-plane images) must carry a Kubernetes
// version that Talos release supports, with Talos' error text. Unknown releases are skipped.
func checkKubernetesVersions(cfg config.Provider, talosVersion string) error {
	minor, ok := talosMinor(talosVersion)
	if !ok || minor < 2 || minor > 14 {
		return nil // outside the compatibility tables of this machinery
	}
	tv, err := compatibility.ParseTalosVersion(&machineapi.VersionInfo{Tag: talosVersion})
	if err != nil {
		return nil
	}
	type image struct{ name, ref string }
	var images []image
	if k := cfg.K8sKubeletConfig(); k != nil {
		images = append(images, image{"kubelet", k.Image()})
	}
	if cfg.Machine() != nil && cfg.Machine().Type().IsControlPlane() {
		if a := cfg.K8sAPIServerConfig(); a != nil {
			images = append(images, image{"kube-apiserver", a.Image()})
		}
		if c := cfg.K8sControllerManagerConfig(); c != nil {
			images = append(images, image{"kube-controller-manager", c.Image()})
		}
		if sc := cfg.K8sSchedulerConfig(); sc != nil {
			images = append(images, image{"kube-scheduler", sc.Image()})
		}
	}
	var errs []error
	for _, im := range images {
		kv, err := compatibility.KubernetesVersionFromImageRef(im.ref)
		if err == nil {
			err = kv.SupportedWith(tv)
		} else {
			err = fmt.Errorf("failed to parse Kubernetes version from image reference %q: %w", im.ref, err)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("%s image is not valid: %w", im.name, err))
		}
	}
	return errors.Join(errs...)
}

// unknownKeyValue matches "key: value" lines of the unknown-keys dump.
var unknownKeyValue = regexp.MustCompile(`(?m)^(\s*-?\s*[^:\n]+):[ \t]+\S.*$`)

// redactUnknownKeys keeps Talos' "unknown keys found during decoding" error but drops the
// values it quotes: a misplaced key can hold a secret (an auth key, a CA key), and the
// refusal is logged. The key paths, which say what is wrong, stay.
func redactUnknownKeys(err error) error {
	const marker = "unknown keys found during decoding:"
	msg := err.Error()
	i := strings.Index(msg, marker)
	if i < 0 {
		return err
	}
	head, tail := msg[:i+len(marker)], msg[i+len(marker):]
	return errors.New(head + unknownKeyValue.ReplaceAllString(tail, "$1: <value not shown>"))
}

// SchematicLookup returns the schematic an Image Factory knows under id (factorysim's
// GET /schematics/{id}); the simulator uses it to learn which extensions an image has.
type SchematicLookup func(id string) (*schematic.Schematic, error)

// extensionServiceName is the service an official extension runs: the last path element of
// its name (siderolabs/tailscale runs ext-tailscale, configured by an ExtensionServiceConfig
// named tailscale).
func extensionServiceName(ext string) string {
	return ext[strings.LastIndex(ext, "/")+1:]
}

// checkExtensionServices refuses ExtensionServiceConfig documents a node with these installed
// extensions cannot use: a service that is not on the image (Talos has nothing to start with
// that config), and the Tailscale extension without TS_AUTHKEY (containerboot would wait for an
// interactive login that never comes on an unattended node).
func checkExtensionServices(cfg config.Provider, installed []string) error {
	services := make([]string, 0, len(installed))
	for _, ext := range installed {
		services = append(services, extensionServiceName(ext))
	}
	var errs []error
	for _, esc := range cfg.ExtensionServiceConfigs() {
		name := esc.Name()
		if !slices.Contains(services, name) {
			have := "none"
			if len(installed) > 0 {
				have = strings.Join(installed, ", ")
			}
			errs = append(errs, fmt.Errorf("ExtensionServiceConfig %q: extension service %q is not installed on this image (extensions: %s)", name, name, have))
			continue
		}
		if name == "tailscale" && !hasEnv(esc.Environment(), "TS_AUTHKEY") {
			errs = append(errs, errors.New(`ExtensionServiceConfig "tailscale": environment has no TS_AUTHKEY: the tailscale extension cannot join the tailnet unattended`))
		}
	}
	return errors.Join(errs...)
}

// hasEnv reports whether KEY=<non-empty value> is in env.
func hasEnv(env []string, key string) bool {
	for _, kv := range env {
		k, v, ok := strings.Cut(kv, "=")
		if ok && k == key && strings.TrimSpace(v) != "" {
			return true
		}
	}
	return false
}
