package cluster

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	ctrl "sigs.k8s.io/controller-runtime/pkg/reconcile"

	"sigs.k8s.io/cluster-api/util/conditions"

	infrav1 "github.com/proxmox-talos/cluster-api-provider-proxmox-talos/api/v1beta1"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/internal/clients"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/pkg/proxmox"
)

// reconcilePreflight checks, before any machine needs it, that Proxmox answers, the token
// is accepted and privileged enough for what the provider reads, Proxmox is recent enough
// for import content, and the storages accept the content the provider puts there.
// A pass is repeated only when the spec changed or PreflightInterval elapsed.
func (r *Reconciler) reconcilePreflight(ctx context.Context, s *Scope) (bool, ctrl.Result, error) {
	interval := r.PreflightInterval
	if interval <= 0 {
		interval = 10 * time.Minute
	}
	if c := conditions.Get(s.InfraCluster, infrav1.PreflightChecksPassedCondition); c != nil &&
		c.Status == "True" && c.ObservedGeneration == s.InfraCluster.Generation &&
		s.InfraCluster.Status.ProxmoxVersion != "" && time.Since(c.LastTransitionTime.Time) < interval {
		return true, ctrl.Result{}, nil
	}

	reason, msg := r.preflight(ctx, s)
	if reason != "" {
		r.setCondition(s, infrav1.PreflightChecksPassedCondition, false, reason, msg)
		r.event(s, "Warning", reason, "%s", msg)
		return false, r.requeue(s, infrav1.PreflightChecksPassedCondition), nil
	}
	// Re-set with a fresh transition time so the interval restarts; conditions.Set keeps
	// the old time when the status does not change, so drop the condition first.
	conditions.Delete(s.InfraCluster, infrav1.PreflightChecksPassedCondition)
	r.setCondition(s, infrav1.PreflightChecksPassedCondition, true, infrav1.ReadyReason, "")
	return true, ctrl.Result{}, nil
}

// preflight returns an empty reason when every check passed.
func (r *Reconciler) preflight(ctx context.Context, s *Scope) (reason, msg string) {
	// Machines fetch images from the factory; refuse plain http before any of them does.
	if err := clients.CheckURLScheme(s.Spec.Talos.FactoryURL, s.Spec.Talos.InsecureAllowHTTP, "spec.talos.factoryURL"); err != nil {
		return infrav1.InsecureURLReason, err.Error()
	}
	v, err := s.pve.Version(ctx)
	if err != nil {
		return ClassifyError(err)
	}
	s.InfraCluster.Status.ProxmoxVersion = v.Version
	if !v.AtLeast(8, 4) {
		return infrav1.ProxmoxVersionTooOldReason,
			fmt.Sprintf("Proxmox VE %s is too old: importing Talos disk images (content type import) needs 8.4 or later", v.Version)
	}

	// Clusters using the same Proxmox and token share one /nodes read for a few seconds:
	// their preflights fall due together after a resync, and the answer is the same.
	nodes, err := s.pve.ClusterNodes(ctx, 10*time.Second)
	if err != nil {
		return ClassifyError(err)
	}
	candidates := candidateNodes(s.Spec, nodes)
	if len(candidates) == 0 {
		return infrav1.InvalidConfigurationReason, "no online Proxmox node matches spec.failureDomains"
	}
	for _, node := range candidates {
		storages, err := s.pve.Storages(ctx, node)
		if err != nil {
			return ClassifyError(err)
		}
		if m := checkStorage(storages, node, s.Spec.ImageStorage, "import", "imageStorage"); m != "" {
			return infrav1.StorageContentMissingReason, m
		}
		if m := checkStorage(storages, node, s.Spec.ISOStorage, "iso", "isoStorage"); m != "" {
			return infrav1.StorageContentMissingReason, m
		}
	}
	return "", ""
}

// candidateNodes are the nodes machines may land on: the failure domains' nodes, or every
// online node. Offline nodes in a failure domain are skipped here (placement skips them
// too) rather than failing the whole cluster.
func candidateNodes(spec infrav1.ProxmoxTalosClusterSpec, nodes []proxmox.NodeInfo) []string {
	online := map[string]bool{}
	var all []string
	for _, n := range nodes {
		if n.Online {
			online[n.Name] = true
			all = append(all, n.Name)
		}
	}
	if len(spec.FailureDomains) == 0 {
		// One node is enough to verify the token and the storage definitions; storages
		// are configured cluster-wide in Proxmox.
		if len(all) > 0 {
			return all[:1]
		}
		return nil
	}
	var out []string
	for _, fd := range spec.FailureDomains {
		for _, n := range fd.Nodes {
			if online[n] && !slices.Contains(out, n) {
				out = append(out, n)
			}
		}
	}
	return out
}

func checkStorage(storages []proxmox.StorageInfo, node, name, content, field string) string {
	for _, st := range storages {
		if st.Name != name {
			continue
		}
		if !st.Supports(content) {
			return fmt.Sprintf("storage %q (spec.%s) on node %s does not have the %q content type; add it in Datacenter → Storage", name, field, node, content)
		}
		return ""
	}
	return fmt.Sprintf("storage %q (spec.%s) is not available on node %s", name, field, node)
}

// ClassifyError maps a Proxmox client error to a condition reason and a message that says
// what to fix. Messages carry PVE's text and the token id, never the secret.
func ClassifyError(err error) (reason, msg string) {
	var perm *proxmox.PermissionError
	switch {
	case errors.As(err, &perm):
		return infrav1.PermissionDeniedReason,
			fmt.Sprintf("API token %s lacks privilege %s on %s", perm.TokenID, perm.Privilege, perm.Path)
	case errors.Is(err, proxmox.ErrUnauthorized):
		return infrav1.AuthenticationFailedReason, "Proxmox rejected the API token (wrong token id or secret, expired or removed)"
	case errors.Is(err, proxmox.ErrUnavailable), errors.Is(err, context.DeadlineExceeded):
		return infrav1.ProxmoxUnreachableReason, err.Error()
	default:
		return infrav1.ProxmoxAPIErrorReason, err.Error()
	}
}
