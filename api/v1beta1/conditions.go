package v1beta1

// Condition types and reasons. Every step of the step machines sets one condition whose
// reason a person understands; Ready summarises them and Paused follows the contract.
const (
	// ReadyCondition summarises the object's other conditions.
	ReadyCondition = "Ready"
	// PausedCondition is True while the cluster or the object is paused.
	PausedCondition = "Paused"
)

// ProxmoxTalosCluster conditions.
const (
	// CredentialsReadyCondition: the credentials Secret exists and holds a token.
	CredentialsReadyCondition = "CredentialsReady"
	// PreflightChecksPassedCondition: the API answers, the token is valid and privileged
	// enough, and the storages have the content types the provider needs.
	PreflightChecksPassedCondition = "PreflightChecksPassed"
	// ControlPlaneEndpointReadyCondition: spec.controlPlaneEndpoint is set (fixed, or
	// allocated from a pool).
	ControlPlaneEndpointReadyCondition = "ControlPlaneEndpointReady"
)

// ProxmoxTalosMachine conditions, one per step.
const (
	// BootstrapDataReadyCondition: the bootstrap provider's data Secret exists.
	BootstrapDataReadyCondition = "BootstrapDataReady"
	// PlacedCondition: a Proxmox node was chosen.
	PlacedCondition = "Placed"
	// AddressesClaimedCondition: every static address the machine needs is allocated.
	AddressesClaimedCondition = "AddressesClaimed"
	// ImageReadyCondition: the Talos disk image is present in the image storage.
	ImageReadyCondition = "ImageReady"
	// BootISOReadyCondition: the VM's boot ISO is uploaded (False with reason Deleted once
	// it has been removed after the node joined).
	BootISOReadyCondition = "BootISOReady"
	// VMProvisionedCondition: the VM exists with the requested hardware.
	VMProvisionedCondition = "VMProvisioned"
	// VMRunningCondition: the VM is powered on.
	VMRunningCondition = "VMRunning"
	// NodeReadyCondition: the workload Node carries this machine's providerID and is Ready.
	NodeReadyCondition = "NodeReady"
)

// Condition reasons.
const (
	// Generic reasons.
	ReadyReason                = "Ready"
	NotReadyReason             = "NotReady"
	WaitingReason              = "Waiting"
	InProgressReason           = "InProgress"
	DeletingReason             = "Deleting"
	ProxmoxAPIErrorReason      = "ProxmoxAPIError"
	PermissionDeniedReason     = "PermissionDenied"
	InvalidConfigurationReason = "InvalidConfiguration"

	// Cluster reasons.
	CredentialsSecretNotFoundReason = "CredentialsSecretNotFound"
	CredentialsInvalidReason        = "CredentialsInvalid"
	ProxmoxUnreachableReason        = "ProxmoxUnreachable"
	AuthenticationFailedReason      = "AuthenticationFailed"
	StorageContentMissingReason     = "StorageContentMissing"
	ProxmoxVersionTooOldReason      = "ProxmoxVersionTooOld"
	PoolExhaustedReason             = "PoolExhausted"
	// CABundleInvalidReason: the credentials Secret's caBundle holds something that is
	// not a PEM certificate.
	CABundleInvalidReason = "CABundleInvalid"
	// InsecureURLReason: an http:// URL without the matching insecureAllowHTTP opt-in.
	InsecureURLReason = "InsecureURL"
	// EndpointAddressInUseReason: the fixed control-plane endpoint lies in a node pool and
	// a machine already holds that address.
	EndpointAddressInUseReason = "EndpointAddressInUse"

	// Machine reasons.
	WaitingForClusterInfrastructureReason = "WaitingForClusterInfrastructure"
	WaitingForBootstrapDataReason         = "WaitingForBootstrapData"
	NoNodeFitsReason                      = "NoNodeFits"
	WaitingForIPAMReason                  = "WaitingForIPAM"
	ImageDownloadingReason                = "ImageDownloading"
	ImageFactoryErrorReason               = "ImageFactoryError"
	VMNotFoundReason                      = "VMNotFound"
	PoweredOffReason                      = "PoweredOff"
	WaitingForNodeReason                  = "WaitingForNode"
	// WaitingForCloudControllerManagerReason: the Node carries the uninitialized taint
	// of an external cloud provider; its CCM sets the providerID.
	WaitingForCloudControllerManagerReason = "WaitingForCloudControllerManager"
	// ProviderIDMismatchReason: the Node's providerID names another VM.
	ProviderIDMismatchReason = "ProviderIDMismatch"
	BootISODeletedReason     = "Deleted"
	// ForeignVMReason: the VM at the recorded node and VMID does not carry this machine's
	// identity (SMBIOS uuid and ownership tags); the controller leaves it untouched.
	ForeignVMReason = "ForeignVM"
	// NodeOfflineReason: the Proxmox node the VM is recorded on does not answer.
	NodeOfflineReason = "NodeOffline"
	// VMAbandonedReason: deletion left the VM behind on request (AbandonVMAnnotation).
	VMAbandonedReason = "VMAbandoned"
	// VMHandedOverReason: the VM's Proxmox node stayed offline during deletion, so the
	// VM, its volumes and its addresses were handed over to a machine that deletes them
	// once the node answers (HandedOverFromAnnotation); this machine is released.
	VMHandedOverReason = "VMHandedOver"
	// OwnerMachineNotFoundReason: the owner Machine is gone while the machine is deleted.
	OwnerMachineNotFoundReason = "OwnerMachineNotFound"
	// TaskFailedReason: a Proxmox task the controller started failed.
	TaskFailedReason = "TaskFailed"
)
