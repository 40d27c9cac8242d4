package v1beta1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	clusterv1 "sigs.k8s.io/cluster-api/api/core/v1beta2"
)

// ProxmoxTalosClusterTemplateSpec is the desired state of a ProxmoxTalosClusterTemplate.
type ProxmoxTalosClusterTemplateSpec struct {
	// template is the ProxmoxTalosCluster a ClusterClass stamps out.
	// +required
	Template ProxmoxTalosClusterTemplateResource `json:"template"`
}

// ProxmoxTalosClusterTemplateResource is the object a template produces.
type ProxmoxTalosClusterTemplateResource struct {
	// metadata copied to the created ProxmoxTalosCluster.
	// +optional
	ObjectMeta clusterv1.ObjectMeta `json:"metadata,omitempty,omitzero"`

	// spec of the created ProxmoxTalosCluster.
	// +required
	Spec ProxmoxTalosClusterSpec `json:"spec"`
}

// +kubebuilder:object:root=true
// +kubebuilder:resource:path=proxmoxtalosclustertemplates,scope=Namespaced,categories=cluster-api,shortName=ptct
// +kubebuilder:storageversion
// +kubebuilder:printcolumn:name="Age",type="date",JSONPath=".metadata.creationTimestamp"

// ProxmoxTalosClusterTemplate is the template a ClusterClass uses to create
// ProxmoxTalosClusters.
type ProxmoxTalosClusterTemplate struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// spec is the template.
	// +required
	Spec ProxmoxTalosClusterTemplateSpec `json:"spec,omitempty,omitzero"`
}

// +kubebuilder:object:root=true

// ProxmoxTalosClusterTemplateList is a list of ProxmoxTalosClusterTemplate.
type ProxmoxTalosClusterTemplateList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []ProxmoxTalosClusterTemplate `json:"items"`
}

func init() {
	objectTypes = append(objectTypes, &ProxmoxTalosClusterTemplate{}, &ProxmoxTalosClusterTemplateList{})
}
