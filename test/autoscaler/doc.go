// Package autoscaler keeps testdata/workers.json, the input of the cluster autoscaler
// contract check (hack/autoscaler-contract.sh), equal to what this provider publishes for
// the default flavor's workers: the ProxmoxTalosMachineTemplate of templates/src/workers.yaml
// with its variables at their defaults, its status as internal/machinetemplate computes it,
// and the node-group annotations the flavor documents. The check itself runs the autoscaler's
// own Cluster API provider code inside a copy of its module (testdata/
// proxmoxtalos_contract_test.go), since that module cannot be a dependency of this one.
package autoscaler
