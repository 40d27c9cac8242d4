// Package v1beta1 contains the API of the Proxmox VE + Talos infrastructure provider:
// ProxmoxTalosCluster, ProxmoxTalosMachine and their templates, in the group
// infrastructure.cluster.x-k8s.io. The kinds implement Cluster API's v1beta2 contract
// (status.initialization.provisioned, metav1.Condition conditions, failure domains as a list).
//
// +kubebuilder:object:generate=true
// +groupName=infrastructure.cluster.x-k8s.io
package v1beta1
