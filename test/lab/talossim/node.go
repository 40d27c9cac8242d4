package talossim

import (
	"context"
	"crypto/tls"
	stdx509 "crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/siderolabs/talos/pkg/machinery/api/machine"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/pkg/proxmox/pvesim"
)

// APIDPort is Talos apid's port; CACPPT dials it on every control-plane address.
const APIDPort = 50000

// bootDuration is how long the simulated boot sequence runs between its
// START and STOP events; CACPPT's ensureNodesBooted looks for both.
const bootDuration = 200 * time.Millisecond

var eventSeq atomic.Uint64

// node is one powered-on Talos machine.
type node struct {
	sim     *Sim
	vmid    int
	vmName  string
	spec    *nodeSpec
	cluster *cluster
	booted  time.Time

	apid *grpc.Server // guarded by sim.mu; nil until listening and after stop

	evMu   sync.Mutex
	events []*machine.Event
	notify chan struct{} // closed and replaced whenever an event is appended

	done    chan struct{} // closed on shutdown
	stopped sync.Once
	wg      sync.WaitGroup // kubelet and boot-sequence goroutines
}

func newNode(s *Sim, ev pvesim.PowerEvent, spec *nodeSpec, c *cluster) *node {
	return &node{sim: s, vmid: ev.VMID, vmName: ev.Name, spec: spec, cluster: c, booted: time.Now(),
		notify: make(chan struct{}), done: make(chan struct{})}
}

// target is how apid names this node in response metadata: the address CACPPT dialed.
func (n *node) target() string { return n.spec.addr.String() }

// startAPID listens on ADDRESS:50000 with a serving certificate from the OS CA
// and client certificates required against the same CA, like Talos apid.
// Without the CA key (a worker before any control plane booted) it stays down.
func (s *Sim) startAPID(n *node) error {
	s.mu.Lock()
	osCA := n.spec.osCA
	if osCA.key == nil {
		osCA = n.cluster.osCA
	}
	registered := s.nodes[n.vmid] == n && n.apid == nil
	s.mu.Unlock()
	if !registered {
		return nil
	}
	if osCA == nil || osCA.key == nil {
		s.logf("node %s: apid waits for a control plane carrying the OS CA key", n.spec.hostname)
		return nil
	}
	if !osCA.cert.Equal(n.spec.osCA.cert) {
		return errors.New("OS CA of the node differs from its cluster's control planes")
	}
	lf, err := osCA.issue(n.spec.hostname, nil, []net.IP{n.spec.addr.AsSlice()}, []string{n.spec.hostname})
	if err != nil {
		return err
	}
	cert, err := tls.X509KeyPair(lf.certPEM, lf.keyPEM)
	if err != nil {
		return err
	}
	pool := stdx509.NewCertPool()
	pool.AddCert(n.spec.osCA.cert)
	tlsCfg := &tls.Config{
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    pool,
		MinVersion:   tls.VersionTLS12,
	}
	addr := netip.AddrPortFrom(n.spec.addr, APIDPort).String()
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen %s: %w", addr, err)
	}
	// A node whose Proxmox node is offline cannot be reached: its apid times out.
	unreachable := status.Errorf(codes.Unavailable, "connection error: desc = \"transport: Error while dialing: dial tcp %s: i/o timeout\"", addr)
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(tlsCfg)),
		grpc.UnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			if !s.reachable(n.vmid) {
				return nil, unreachable
			}
			return h(ctx, req)
		}),
		grpc.StreamInterceptor(func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			if !s.reachable(n.vmid) {
				return unreachable
			}
			return h(srv, ss)
		}))
	machine.RegisterMachineServiceServer(srv, &apiServer{sim: s, self: n})

	s.mu.Lock()
	if s.nodes[n.vmid] != n || n.apid != nil {
		s.mu.Unlock()
		srv.Stop()
		_ = lis.Close()
		return nil
	}
	n.apid = srv
	s.mu.Unlock()
	go func() { _ = srv.Serve(lis) }()
	s.logf("node %s: apid listening on %s", n.spec.hostname, addr)
	return nil
}

// stop ends the node: apid is stopped hard (open streams end, the listener
// closes so dials are refused) and background goroutines finish.
func (n *node) stop() {
	n.stopped.Do(func() {
		close(n.done)
		n.sim.mu.Lock()
		srv := n.apid
		n.apid = nil
		n.sim.mu.Unlock()
		if srv != nil {
			srv.Stop()
		}
		n.wg.Wait()
	})
}

// recordBoot emits the boot sequence events Talos emits at startup.
func (n *node) recordBoot() {
	n.addEvent(&machine.SequenceEvent{Sequence: "boot", Action: machine.SequenceEvent_START})
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		select {
		case <-time.After(bootDuration):
			n.addEvent(&machine.SequenceEvent{Sequence: "boot", Action: machine.SequenceEvent_STOP})
		case <-n.done:
		}
	}()
}

// addEvent appends an event with the type URL the Talos client decodes.
func (n *node) addEvent(payload proto.Message) {
	data, err := proto.Marshal(payload)
	if err != nil {
		return
	}
	ev := &machine.Event{
		Data: &anypb.Any{TypeUrl: "talos/runtime/" + string(payload.ProtoReflect().Descriptor().FullName()), Value: data},
		Id:   strconv.FormatUint(eventSeq.Add(1), 10),
	}
	n.evMu.Lock()
	n.events = append(n.events, ev)
	close(n.notify)
	n.notify = make(chan struct{})
	n.evMu.Unlock()
}

// eventsSince returns events after index from and a channel closed on the next append.
func (n *node) eventsSince(from int) ([]*machine.Event, int, <-chan struct{}) {
	n.evMu.Lock()
	defer n.evMu.Unlock()
	if from > len(n.events) {
		from = len(n.events)
	}
	return append([]*machine.Event(nil), n.events[from:]...), len(n.events), n.notify
}
