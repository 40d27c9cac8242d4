package v1beta1

import (
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	clusterv1 "sigs.k8s.io/cluster-api/api/core/v1beta2"
)

// ProxmoxTalosMachineTemplateSpec is the desired state of a ProxmoxTalosMachineTemplate.
type ProxmoxTalosMachineTemplateSpec struct {
	// template is the ProxmoxTalosMachine each Machine gets a copy of.
	// +required
	Template ProxmoxTalosMachineTemplateResource `json:"template"`
}

// ProxmoxTalosMachineTemplateResource is the object a template produces.
type ProxmoxTalosMachineTemplateResource struct {
	// metadata copied to each created ProxmoxTalosMachine.
	// +optional
	ObjectMeta clusterv1.ObjectMeta `json:"metadata,omitempty,omitzero"`

	// spec of each created ProxmoxTalosMachine.
	// +required
	Spec ProxmoxTalosMachineSpec `json:"spec"`
}

// NodeInfo describes the nodes a template produces, for the cluster autoscaler when it
// scales from zero.
type NodeInfo struct {
	// architecture of the nodes: amd64, arm64, s390x or ppc64le.
	// +optional
	// +kubebuilder:validation:Enum=amd64;arm64;s390x;ppc64le
	Architecture string `json:"architecture,omitempty"`

	// operatingSystem of the nodes; always linux for Talos.
	// +optional
	// +kubebuilder:validation:MaxLength=32
	OperatingSystem string `json:"operatingSystem,omitempty"`
}

// ProxmoxTalosMachineTemplateStatus is the observed state of a ProxmoxTalosMachineTemplate.
// +kubebuilder:validation:MinProperties=1
type ProxmoxTalosMachineTemplateStatus struct {
	// capacity is what one machine of this template offers (cpu: sockets × cores; memory;
	// ephemeral-storage: the boot disk less the Talos system partitions), so the cluster
	// autoscaler can scale a MachineDeployment up from zero. Set by the controller.
	// +optional
	Capacity corev1.ResourceList `json:"capacity,omitempty"`

	// nodeInfo describes the nodes of this template for the autoscaler (architecture of the
	// Talos image, operatingSystem linux). Set by the controller.
	// +optional
	NodeInfo NodeInfo `json:"nodeInfo,omitempty,omitzero"`
}

// +kubebuilder:object:root=true
// +kubebuilder:resource:path=proxmoxtalosmachinetemplates,scope=Namespaced,categories=cluster-api,shortName=ptmt
// +kubebuilder:storageversion
// +kubebuilder:subresource:status
// +kubebuilder:printcolumn:name="Cores",type="integer",JSONPath=".spec.template.spec.cores",description="Cores per socket"
// +kubebuilder:printcolumn:name="Memory",type="integer",JSONPath=".spec.template.spec.memoryMiB",description="Memory (MiB)"
// +kubebuilder:printcolumn:name="Age",type="date",JSONPath=".metadata.creationTimestamp"

// ProxmoxTalosMachineTemplate is the template Machines, MachineDeployments and control
// planes use to create ProxmoxTalosMachines. Its spec is immutable: to change machines,
// create a new template and point the owner at it (a rollout follows).
type ProxmoxTalosMachineTemplate struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// spec is the template.
	// +required
	Spec ProxmoxTalosMachineTemplateSpec `json:"spec,omitempty,omitzero"`

	// status reports capacity for autoscaling from zero.
	// +optional
	Status ProxmoxTalosMachineTemplateStatus `json:"status,omitempty,omitzero"`
}

// +kubebuilder:object:root=true

// ProxmoxTalosMachineTemplateList is a list of ProxmoxTalosMachineTemplate.
type ProxmoxTalosMachineTemplateList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []ProxmoxTalosMachineTemplate `json:"items"`
}

func init() {
	objectTypes = append(objectTypes, &ProxmoxTalosMachineTemplate{}, &ProxmoxTalosMachineTemplateList{})
}
