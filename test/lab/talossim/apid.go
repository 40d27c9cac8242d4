package talossim

import (
	"cmp"
	"context"
	"strings"

	"github.com/siderolabs/talos/pkg/machinery/api/common"
	"github.com/siderolabs/talos/pkg/machinery/api/machine"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/emptypb"
)

// apiServer is one node's apid. With `nodes` (or `node`) gRPC metadata it
// answers for the listed nodes the way apid proxies to them — here by routing
// to their in-process state — and folds per-node failures into response
// metadata (Error + Status), which the Talos client turns back into errors
// with the original gRPC code (CACPPT checks codes.AlreadyExists on Bootstrap).
type apiServer struct {
	machine.UnimplementedMachineServiceServer
	sim  *Sim
	self *node
}

// targets returns the nodes a request is for and whether apid proxies
// (one-to-many), as Talos does whenever the nodes header is present.
func (a *apiServer) targets(ctx context.Context) ([]string, bool) {
	md, _ := metadata.FromIncomingContext(ctx)
	var names []string
	for _, key := range []string{"nodes", "node"} {
		for _, v := range md.Get(key) {
			for _, part := range strings.Split(v, ",") {
				if part = strings.TrimSpace(part); part != "" {
					names = append(names, part)
				}
			}
		}
	}
	if len(names) == 0 {
		return []string{a.self.target()}, false
	}
	return names, true
}

// resolve finds a proxied target; unknown or stopped nodes fail like a refused dial.
func (a *apiServer) resolve(target string) (*node, error) {
	if target == a.self.target() || target == a.self.spec.hostname {
		return a.self, nil
	}
	if n := a.sim.nodeByTarget(target); n != nil {
		return n, nil
	}
	return nil, status.Errorf(codes.Unavailable, "connection error: desc = \"transport: Error while dialing: dial tcp %s:%d: connect: connection refused\"", target, APIDPort)
}

// errMetadata is how apid reports a backend failure inside a response.
func errMetadata(target string, err error) *common.Metadata {
	return &common.Metadata{Hostname: target, Error: err.Error(), Status: status.Convert(err).Proto()}
}

// setMetadata sets the `metadata` field every Talos response message has.
func setMetadata(msg proto.Message, md *common.Metadata) {
	r := msg.ProtoReflect()
	fd := r.Descriptor().Fields().ByName("metadata")
	if fd != nil {
		r.Set(fd, protoreflect.ValueOfMessage(md.ProtoReflect()))
	}
}

// unary runs fn for every target and collects one message per target. T is the
// per-node message type (e.g. *machine.Bootstrap).
func unary[T proto.Message](ctx context.Context, a *apiServer, fn func(n *node) (T, error)) ([]T, error) {
	targets, proxied := a.targets(ctx)
	out := make([]T, 0, len(targets))
	for _, t := range targets {
		var msg T
		n, err := a.resolve(t)
		if err == nil {
			msg, err = fn(n)
		}
		if err != nil {
			if !proxied {
				return nil, err
			}
			var zero T
			msg = zero.ProtoReflect().New().Interface().(T)
			setMetadata(msg, errMetadata(t, err))
		} else {
			setMetadata(msg, &common.Metadata{Hostname: t})
		}
		out = append(out, msg)
	}
	return out, nil
}

// Version reports the Talos version of the image the node booted from (what a Talos
// upgrade changes) and its platform.
func (a *apiServer) Version(ctx context.Context, _ *emptypb.Empty) (*machine.VersionResponse, error) {
	msgs, err := unary(ctx, a, func(n *node) (*machine.Version, error) {
		mode := "cloud"
		if n.spec.platform == "metal" {
			mode = "metal"
		}
		return &machine.Version{
			Version:  &machine.VersionInfo{Tag: cmp.Or(n.spec.talosVersion, "unknown"), Arch: "amd64", Os: "linux", GoVersion: "go1.26"},
			Platform: &machine.PlatformInfo{Name: cmp.Or(n.spec.platform, "nocloud"), Mode: mode},
		}, nil
	})
	return &machine.VersionResponse{Messages: msgs}, err
}

// Bootstrap bootstraps etcd on a control plane; see cluster.bootstrap.
func (a *apiServer) Bootstrap(ctx context.Context, _ *machine.BootstrapRequest) (*machine.BootstrapResponse, error) {
	msgs, err := unary(ctx, a, func(n *node) (*machine.Bootstrap, error) {
		if err := n.cluster.bootstrap(n); err != nil {
			return nil, err
		}
		return &machine.Bootstrap{}, nil
	})
	return &machine.BootstrapResponse{Messages: msgs}, err
}

// ServiceList reports the node's services; see node.services.
func (a *apiServer) ServiceList(ctx context.Context, _ *emptypb.Empty) (*machine.ServiceListResponse, error) {
	msgs, err := unary(ctx, a, func(n *node) (*machine.ServiceList, error) {
		return &machine.ServiceList{Services: n.services()}, nil
	})
	return &machine.ServiceListResponse{Messages: msgs}, err
}

// EtcdMemberList lists the members of the node's etcd cluster.
func (a *apiServer) EtcdMemberList(ctx context.Context, _ *machine.EtcdMemberListRequest) (*machine.EtcdMemberListResponse, error) {
	msgs, err := unary(ctx, a, func(n *node) (*machine.EtcdMembers, error) {
		members, err := n.cluster.memberList(n)
		if err != nil {
			return nil, err
		}
		return &machine.EtcdMembers{Members: members}, nil
	})
	return &machine.EtcdMemberListResponse{Messages: msgs}, err
}

// EtcdForfeitLeadership moves etcd leadership away from the node.
func (a *apiServer) EtcdForfeitLeadership(ctx context.Context, _ *machine.EtcdForfeitLeadershipRequest) (*machine.EtcdForfeitLeadershipResponse, error) {
	msgs, err := unary(ctx, a, func(n *node) (*machine.EtcdForfeitLeadership, error) {
		leader, err := n.cluster.forfeitLeadership(n)
		if err != nil {
			return nil, err
		}
		return &machine.EtcdForfeitLeadership{Member: leader}, nil
	})
	return &machine.EtcdForfeitLeadershipResponse{Messages: msgs}, err
}

// EtcdLeaveCluster removes the node itself from etcd.
func (a *apiServer) EtcdLeaveCluster(ctx context.Context, _ *machine.EtcdLeaveClusterRequest) (*machine.EtcdLeaveClusterResponse, error) {
	msgs, err := unary(ctx, a, func(n *node) (*machine.EtcdLeaveCluster, error) {
		if err := n.cluster.leave(n); err != nil {
			return nil, err
		}
		return &machine.EtcdLeaveCluster{}, nil
	})
	return &machine.EtcdLeaveClusterResponse{Messages: msgs}, err
}

// EtcdRemoveMemberByID removes another member, as CACPPT does for members
// whose machine is gone.
func (a *apiServer) EtcdRemoveMemberByID(ctx context.Context, req *machine.EtcdRemoveMemberByIDRequest) (*machine.EtcdRemoveMemberByIDResponse, error) {
	msgs, err := unary(ctx, a, func(n *node) (*machine.EtcdRemoveMemberByID, error) {
		if err := n.cluster.removeMember(n, req.GetMemberId()); err != nil {
			return nil, err
		}
		return &machine.EtcdRemoveMemberByID{}, nil
	})
	return &machine.EtcdRemoveMemberByIDResponse{Messages: msgs}, err
}
