package talossim

import (
	"time"

	"github.com/siderolabs/talos/pkg/machinery/api/machine"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// services reports what Talos' ServiceList shows. CACPPT requires every
// service healthy or unknown, and etcd "Running" + healthy on members; after
// EtcdLeaveCluster etcd is "Finished" (gracefulEtcdLeave checks that), and a
// control plane waiting for bootstrap shows etcd "Preparing" with unknown health.
func (n *node) services() []*machine.ServiceInfo {
	ts := timestamppb.New(n.booted)
	running := func(id string) *machine.ServiceInfo {
		return &machine.ServiceInfo{
			Id: id, State: "Running",
			Events: &machine.ServiceEvents{Events: []*machine.ServiceEvent{{Msg: "Health check successful", State: "Running", Ts: ts}}},
			Health: &machine.ServiceHealth{Healthy: true, LastMessage: "", LastChange: ts},
		}
	}
	out := []*machine.ServiceInfo{running("apid"), running("containerd"), running("cri"), running("kubelet"), running("machined")}
	if n.spec.role != RoleControlPlane {
		return out
	}
	out = append(out, running("trustd"))
	now := timestamppb.New(time.Now())
	switch {
	case n.cluster.isMember(n.spec.hostname):
		out = append(out, running("etcd"))
	case n.cluster.hasLeft(n.spec.hostname):
		out = append(out, &machine.ServiceInfo{Id: "etcd", State: "Finished",
			Events: &machine.ServiceEvents{Events: []*machine.ServiceEvent{{Msg: "Service finished successfully", State: "Finished", Ts: now}}},
			Health: &machine.ServiceHealth{Unknown: true, LastChange: now}})
	default:
		out = append(out, &machine.ServiceInfo{Id: "etcd", State: "Preparing",
			Events: &machine.ServiceEvents{Events: []*machine.ServiceEvent{{Msg: "Running pre state", State: "Preparing", Ts: ts}}},
			Health: &machine.ServiceHealth{Unknown: true, LastChange: ts}})
	}
	return out
}
