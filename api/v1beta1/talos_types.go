package v1beta1

// TalosPlatform selects the Talos platform image and, with it, how a VM receives its
// machine configuration and static network.
// +kubebuilder:validation:Enum=nocloud;metal
type TalosPlatform string

const (
	// TalosPlatformNoCloud boots one shared nocloud image per (schematic, Talos version,
	// storage); each VM gets a small `cidata` ISO with the machine config as user-data, its
	// hostname as meta-data and its static addresses as network-config. No node address is
	// ever sent to the Image Factory.
	TalosPlatformNoCloud TalosPlatform = "nocloud"

	// TalosPlatformMetal reproduces the hand-run pipeline: one metal image per node whose
	// schematic carries the node's static network in META key 10, and the machine config on a
	// `metal-iso` ISO read through the kernel argument talos.config=metal-iso. It sends every
	// node's addresses to the Image Factory and downloads one image per node.
	TalosPlatformMetal TalosPlatform = "metal"
)

// ImageTransferMode says how a Talos disk image reaches Proxmox storage.
// +kubebuilder:validation:Enum=Download;Upload
type ImageTransferMode string

const (
	// ImageTransferDownload asks Proxmox to fetch the image itself (`download-url`). The
	// Proxmox node needs HTTPS access to the Image Factory and the API token needs
	// Sys.AccessNetwork on the node (or Sys.Audit+Sys.Modify on /).
	ImageTransferDownload ImageTransferMode = "Download"

	// ImageTransferUpload makes the controller download the image and stream it to Proxmox
	// (`upload`). Only Datastore.AllocateTemplate is needed on the storage.
	ImageTransferUpload ImageTransferMode = "Upload"
)

// Defaults of the Talos image settings, applied by the defaulting webhooks.
const (
	// DefaultImageFactoryURL is Sidero Labs' public Image Factory.
	DefaultImageFactoryURL = "https://factory.talos.dev"
	// DefaultArchitecture is the CPU architecture of the images when none is given.
	DefaultArchitecture = "amd64"
)

// DefaultExtensions are the official system extensions baked into the image when the
// cluster names none: the guest agent (Proxmox shows addresses and shuts VMs down cleanly)
// and Tailscale, as in the hand-run pipeline this provider replaces.
var DefaultExtensions = []string{"siderolabs/qemu-guest-agent", "siderolabs/tailscale"}

// TalosImageSpec describes the Talos image every machine of a cluster boots from. On a
// ProxmoxTalosMachine(Template) the same struct overrides the cluster's values field by
// field: empty fields inherit.
type TalosImageSpec struct {
	// factoryURL is the base URL of the Talos Image Factory, without a trailing path.
	// Defaults to https://factory.talos.dev on the cluster.
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=512
	FactoryURL string `json:"factoryURL,omitempty"`

	// insecureAllowHTTP permits an http:// factoryURL on this object. Images and
	// schematics are then fetched without TLS, so nothing proves they come from the
	// factory: use it only for a factory simulator or a mirror on a trusted network. Off
	// by default: factoryURL must be https. It qualifies the factoryURL set next to it, so
	// a machine that overrides factoryURL sets its own.
	// +optional
	InsecureAllowHTTP bool `json:"insecureAllowHTTP,omitempty"`

	// version is the Talos version of the image, as `vMAJOR.MINOR.PATCH` (for example
	// v1.13.9). Required on the cluster; it should match the TalosConfig talosVersion.
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=64
	Version string `json:"version,omitempty"`

	// platform selects the image platform and the configuration delivery: nocloud
	// (default: shared image, per-VM cidata ISO) or metal (per-node image with META key 10,
	// config on a metal-iso ISO).
	// +optional
	Platform TalosPlatform `json:"platform,omitempty"`

	// architecture of the image: amd64 (default) or arm64.
	// +optional
	// +kubebuilder:validation:Enum=amd64;arm64
	Architecture string `json:"architecture,omitempty"`

	// extensions are official Talos system extensions baked into the image, such as
	// siderolabs/qemu-guest-agent. Defaults on the cluster to qemu-guest-agent and tailscale.
	// The order matters: it is part of the schematic ID. Set on a machine it replaces the
	// cluster's list.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=64
	// +kubebuilder:validation:items:MinLength=1
	// +kubebuilder:validation:items:MaxLength=256
	Extensions []string `json:"extensions,omitempty"`

	// extraKernelArgs are added to the kernel command line of the image (schematic
	// customization.extraKernelArgs). Set on a machine it replaces the cluster's list.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=64
	// +kubebuilder:validation:items:MinLength=1
	// +kubebuilder:validation:items:MaxLength=1024
	ExtraKernelArgs []string `json:"extraKernelArgs,omitempty"`
}

// ExtraConfigSource names a Secret key holding extra Talos configuration documents (for
// example a Tailscale ExtensionServiceConfig with its auth key). They are appended as
// separate YAML documents to the bootstrap data written on each VM's boot ISO, so secrets
// never sit in a TalosConfigTemplate; the bootstrap provider's document stays byte for byte
// intact.
type ExtraConfigSource struct {
	// name of a Secret in the cluster's namespace.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Name string `json:"name"`

	// key in the Secret's data. Defaults to `value`.
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Key string `json:"key,omitempty"`
}
