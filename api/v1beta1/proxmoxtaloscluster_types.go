package v1beta1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	clusterv1 "sigs.k8s.io/cluster-api/api/core/v1beta2"
	ipamv1 "sigs.k8s.io/cluster-api/api/ipam/v1beta2"
)

const (
	// ClusterFinalizer lets the controller release the cluster's resources (endpoint
	// address, credentials Secret finalizer) before the object goes away.
	ClusterFinalizer = "proxmoxtaloscluster.infrastructure.cluster.x-k8s.io"

	// CredentialsFinalizer keeps a credentials Secret while a ProxmoxTalosCluster uses it.
	CredentialsFinalizer = "proxmoxtaloscluster.infrastructure.cluster.x-k8s.io/credentials"

	// DefaultAPIServerPort is the control-plane endpoint port when none is given.
	DefaultAPIServerPort = 6443
)

// Keys of the credentials Secret referenced by spec.proxmox.credentialsRef.
const (
	// CredentialsTokenIDKey holds the API token id, `USER@REALM!TOKENNAME`.
	CredentialsTokenIDKey = "tokenID"
	// CredentialsTokenSecretKey holds the API token secret (a UUID).
	CredentialsTokenSecretKey = "tokenSecret"
	// CredentialsCABundleKey optionally holds PEM CA certificates that sign the Proxmox
	// API's TLS certificate (for self-signed Proxmox installations).
	CredentialsCABundleKey = "caBundle"
)

// ProxmoxAPI says how to reach the Proxmox VE API.
type ProxmoxAPI struct {
	// url of the Proxmox VE API, scheme, host and port only: https://pve.example.com:8006.
	// Do not append /api2/json; the provider adds it.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=512
	URL string `json:"url"`

	// credentialsRef names a Secret in the cluster's namespace with keys tokenID
	// (`USER@REALM!TOKENNAME`), tokenSecret and, optionally, caBundle (PEM). The provider
	// adds a finalizer and an owner reference so the Secret outlives the cluster's VMs and
	// moves with the cluster.
	// +required
	CredentialsRef SecretReference `json:"credentialsRef"`

	// insecureSkipTLSVerify turns off verification of the Proxmox API's TLS certificate.
	// Off by default; prefer caBundle in the credentials Secret.
	// +optional
	InsecureSkipTLSVerify bool `json:"insecureSkipTLSVerify,omitempty"`

	// insecureAllowHTTP permits an http:// url. The API token then travels unencrypted:
	// use it only for simulators and test setups on loopback, never for a real Proxmox VE
	// (which serves its API over HTTPS only). Off by default: url must be https.
	// +optional
	InsecureAllowHTTP bool `json:"insecureAllowHTTP,omitempty"`
}

// SecretReference names a Secret in the same namespace.
type SecretReference struct {
	// name of the Secret.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Name string `json:"name"`
}

// FailureDomain is a group of Proxmox nodes that fail together (one node, usually).
// Cluster API spreads control-plane machines across failure domains that allow them.
type FailureDomain struct {
	// name of the failure domain, as used in Machine.spec.failureDomain.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=256
	Name string `json:"name"`

	// nodes are the Proxmox node names in this failure domain; machines placed here land
	// on the one with the most free memory that fits.
	// +required
	// +listType=set
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=64
	// +kubebuilder:validation:items:MinLength=1
	// +kubebuilder:validation:items:MaxLength=64
	// +kubebuilder:validation:items:Pattern=`^[A-Za-z0-9]([A-Za-z0-9\-]*[A-Za-z0-9])?$`
	Nodes []string `json:"nodes"`

	// controlPlane says whether control-plane machines may be placed here. Defaults to true.
	// +optional
	ControlPlane *bool `json:"controlPlane,omitempty"`
}

// ProxmoxTalosClusterSpec is the desired state of a ProxmoxTalosCluster.
// +kubebuilder:validation:XValidation:rule="!has(oldSelf.controlPlaneEndpoint) || !has(oldSelf.controlPlaneEndpoint.host) || size(oldSelf.controlPlaneEndpoint.host) == 0 || (has(self.controlPlaneEndpoint) && has(self.controlPlaneEndpoint.host) && self.controlPlaneEndpoint.host == oldSelf.controlPlaneEndpoint.host)",message="controlPlaneEndpoint.host cannot be changed once set: nodes and certificates use it"
type ProxmoxTalosClusterSpec struct {
	// proxmox says how to reach the Proxmox VE API.
	// +required
	Proxmox ProxmoxAPI `json:"proxmox"`

	// controlPlaneEndpoint is the address the workload cluster's API server is reached at
	// (a VIP held by kube-vip or Talos' VIP). Leave host empty to take it from the pool
	// named in controlPlaneEndpointPool; the provider then writes the address here before
	// it reports the cluster provisioned. Port defaults to 6443. Write-once.
	// +optional
	ControlPlaneEndpoint clusterv1.APIEndpoint `json:"controlPlaneEndpoint,omitempty,omitzero"`

	// controlPlaneEndpointPool names the ipPools entry the endpoint host is allocated from
	// when controlPlaneEndpoint.host is empty. A fixed host that lies inside one of
	// ipPools is reserved in that pool, so no machine is ever given the VIP.
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	ControlPlaneEndpointPool string `json:"controlPlaneEndpointPool,omitempty"`

	// controlPlaneEndpointIPAMPoolRef references a Cluster API IPAM pool (for example an
	// InClusterIPPool) the endpoint host is allocated from when controlPlaneEndpoint.host
	// is empty: the provider creates an IPAddressClaim and uses the address the IPAM
	// provider allocates. Mutually exclusive with controlPlaneEndpointPool.
	// +optional
	ControlPlaneEndpointIPAMPoolRef *ipamv1.IPPoolReference `json:"controlPlaneEndpointIPAMPoolRef,omitempty"`

	// failureDomains are the Proxmox nodes (or groups of nodes) machines may be placed on.
	// When empty, every online node of the Proxmox cluster is a candidate and the cluster
	// reports no failure domains.
	// +optional
	// +listType=map
	// +listMapKey=name
	// +kubebuilder:validation:MaxItems=100
	FailureDomains []FailureDomain `json:"failureDomains,omitempty"`

	// ipPools are static address pools that machines' network devices take addresses from.
	// +optional
	// +listType=map
	// +listMapKey=name
	// +kubebuilder:validation:MaxItems=16
	IPPools []IPPool `json:"ipPools,omitempty"`

	// talos describes the Talos image machines boot from.
	// +required
	Talos TalosImageSpec `json:"talos"`

	// imageStorage is the Proxmox storage the Talos disk images are placed in; it needs the
	// `import` content type (Proxmox VE 8.4 or later). Defaults to `local`.
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=64
	// +kubebuilder:validation:Pattern=`^[A-Za-z][A-Za-z0-9\-_.]*[A-Za-z0-9]$`
	ImageStorage string `json:"imageStorage,omitempty"`

	// isoStorage is the Proxmox storage the per-VM boot ISOs are uploaded to; it needs the
	// `iso` content type. Boot ISOs carry the cluster's PKI: prefer storage that is not
	// shared beyond the Proxmox cluster. Defaults to `local`.
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=64
	// +kubebuilder:validation:Pattern=`^[A-Za-z][A-Za-z0-9\-_.]*[A-Za-z0-9]$`
	ISOStorage string `json:"isoStorage,omitempty"`

	// imageTransfer says how images reach imageStorage: Download (Proxmox fetches from the
	// Image Factory; default) or Upload (the controller streams them, for tokens without
	// download privileges or nodes without internet).
	// +optional
	ImageTransfer ImageTransferMode `json:"imageTransfer,omitempty"`

	// extraConfig lists Secret keys whose Talos configuration documents are appended to
	// every machine's bootstrap data (for example a Tailscale ExtensionServiceConfig).
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=16
	ExtraConfig []ExtraConfigSource `json:"extraConfig,omitempty"`
}

// ProxmoxTalosClusterInitializationStatus reports the contract's initialization milestones.
// +kubebuilder:validation:MinProperties=1
type ProxmoxTalosClusterInitializationStatus struct {
	// provisioned is true once the cluster's infrastructure (credentials checked, endpoint
	// known) is ready for machines. Cluster API copies it to
	// Cluster.status.initialization.infrastructureProvisioned.
	// +optional
	Provisioned *bool `json:"provisioned,omitempty"`
}

// ProxmoxTalosClusterStatus is the observed state of a ProxmoxTalosCluster.
// +kubebuilder:validation:MinProperties=1
type ProxmoxTalosClusterStatus struct {
	// conditions: Ready, Paused, CredentialsReady, PreflightChecksPassed,
	// ControlPlaneEndpointReady.
	// +optional
	// +listType=map
	// +listMapKey=type
	// +kubebuilder:validation:MaxItems=32
	Conditions []metav1.Condition `json:"conditions,omitempty"`

	// initialization reports the contract's provisioning milestone.
	// +optional
	Initialization ProxmoxTalosClusterInitializationStatus `json:"initialization,omitempty,omitzero"`

	// failureDomains mirrors spec.failureDomains for Cluster API.
	// +optional
	// +listType=map
	// +listMapKey=name
	// +kubebuilder:validation:MaxItems=100
	FailureDomains []clusterv1.FailureDomain `json:"failureDomains,omitempty"`

	// proxmoxVersion is the Proxmox VE version the API reported at the last preflight check.
	// +optional
	// +kubebuilder:validation:MaxLength=64
	ProxmoxVersion string `json:"proxmoxVersion,omitempty"`

	// observedGeneration is the generation the status reflects.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
}

// +kubebuilder:object:root=true
// +kubebuilder:resource:path=proxmoxtalosclusters,scope=Namespaced,categories=cluster-api,shortName=ptc
// +kubebuilder:storageversion
// +kubebuilder:subresource:status
// +kubebuilder:printcolumn:name="Cluster",type="string",JSONPath=".metadata.labels['cluster\\.x-k8s\\.io/cluster-name']",description="Cluster"
// +kubebuilder:printcolumn:name="Endpoint",type="string",JSONPath=".spec.controlPlaneEndpoint.host",description="Control-plane endpoint"
// +kubebuilder:printcolumn:name="Provisioned",type="boolean",JSONPath=".status.initialization.provisioned",description="Infrastructure provisioned"
// +kubebuilder:printcolumn:name="Ready",type="string",JSONPath=`.status.conditions[?(@.type=="Ready")].status`,description="Ready condition"
// +kubebuilder:printcolumn:name="Age",type="date",JSONPath=".metadata.creationTimestamp"

// ProxmoxTalosCluster is the infrastructure of one Talos Kubernetes cluster on Proxmox VE:
// where to reach Proxmox, which nodes and address pools to use, and which Talos image.
type ProxmoxTalosCluster struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// spec is the desired state.
	// +required
	Spec ProxmoxTalosClusterSpec `json:"spec,omitempty,omitzero"`

	// status is the observed state.
	// +optional
	Status ProxmoxTalosClusterStatus `json:"status,omitempty,omitzero"`
}

// GetConditions returns the cluster's conditions (for util/conditions).
func (c *ProxmoxTalosCluster) GetConditions() []metav1.Condition { return c.Status.Conditions }

// SetConditions sets the cluster's conditions (for util/conditions).
func (c *ProxmoxTalosCluster) SetConditions(conditions []metav1.Condition) {
	c.Status.Conditions = conditions
}

// +kubebuilder:object:root=true

// ProxmoxTalosClusterList is a list of ProxmoxTalosCluster.
type ProxmoxTalosClusterList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []ProxmoxTalosCluster `json:"items"`
}

func init() {
	objectTypes = append(objectTypes, &ProxmoxTalosCluster{}, &ProxmoxTalosClusterList{})
}
