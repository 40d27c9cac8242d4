package talossim

import (
	"path"
	"sync"
	"time"

	"github.com/siderolabs/talos/pkg/machinery/api/common"
	"github.com/siderolabs/talos/pkg/machinery/api/machine"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// etcdMemberDir is what CACPPT lists to detect an already bootstrapped etcd.
const etcdMemberDir = "/var/lib/etcd/member"

// List models the only directories anyone asks the lab about: etcd's data
// directory exists once the node is an etcd member. A missing root fails like
// Talos' lstat error (inside response metadata when proxied, so CACPPT's
// "any node without Metadata.Error" check works).
func (a *apiServer) List(req *machine.ListRequest, srv machine.MachineService_ListServer) error {
	targets, proxied := a.targets(srv.Context())
	root := path.Clean(req.GetRoot())
	for _, t := range targets {
		n, err := a.resolve(t)
		var entries []*machine.FileInfo
		if err == nil {
			entries, err = n.list(root)
		}
		if err != nil {
			if !proxied {
				return err
			}
			if err := srv.Send(&machine.FileInfo{Metadata: errMetadata(t, err)}); err != nil {
				return err
			}
			continue
		}
		for _, e := range entries {
			e.Metadata = &common.Metadata{Hostname: t}
			if err := srv.Send(e); err != nil {
				return err
			}
		}
	}
	return nil
}

func (n *node) list(root string) ([]*machine.FileInfo, error) {
	isMember := n.cluster.isMember(n.spec.hostname)
	if isMember && (root == etcdMemberDir || root == path.Dir(etcdMemberDir)) {
		now := time.Now().Unix()
		return []*machine.FileInfo{{Name: root, RelativeName: ".", IsDir: true, Mode: 0o20000000700, Modified: now}}, nil
	}
	return nil, status.Errorf(codes.Unknown, "lstat %s: no such file or directory", root)
}

// Events streams the node's machine events: first an empty event (the Talos
// client's EventsWatchV2 discards it as the "watch started" marker), then the
// requested tail of history, then new events until the client goes away or
// the node stops.
func (a *apiServer) Events(req *machine.EventsRequest, srv machine.MachineService_EventsServer) error {
	targets, _ := a.targets(srv.Context())
	var sendMu sync.Mutex
	send := func(ev *machine.Event) error {
		sendMu.Lock()
		defer sendMu.Unlock()
		return srv.Send(ev)
	}
	if err := send(&machine.Event{}); err != nil {
		return err
	}
	errCh := make(chan error, len(targets))
	for _, t := range targets {
		n, err := a.resolve(t)
		if err != nil {
			if err := send(&machine.Event{Metadata: errMetadata(t, err)}); err != nil {
				return err
			}
			continue
		}
		go func() { errCh <- n.streamEvents(req, t, send, srv.Context().Done()) }()
	}
	select {
	case err := <-errCh:
		return err
	case <-srv.Context().Done():
		return nil
	case <-a.self.done:
		return status.Error(codes.Unavailable, "node is shutting down")
	}
}

func (n *node) streamEvents(req *machine.EventsRequest, target string, send func(*machine.Event) error, done <-chan struct{}) error {
	history, next, notify := n.eventsSince(0)
	start := tailStart(history, req)
	for {
		for _, ev := range history[start:] {
			out := &machine.Event{Data: ev.Data, Id: ev.Id, ActorId: ev.ActorId, Metadata: &common.Metadata{Hostname: target}}
			if err := send(out); err != nil {
				return err
			}
		}
		select {
		case <-notify:
		case <-done:
			return nil
		case <-n.done:
			return status.Error(codes.Unavailable, "node is shutting down")
		}
		history, next, notify = n.eventsSince(next)
		start = 0
	}
}

// tailStart applies Talos' tail options: TailEvents (-1 = all), TailId (events
// after that ID), TailSeconds (events of the last N seconds, approximated by
// the node's boot time since events carry no timestamps here).
func tailStart(history []*machine.Event, req *machine.EventsRequest) int {
	switch {
	case req.GetTailId() != "":
		for i, ev := range history {
			if ev.Id == req.GetTailId() {
				return i + 1
			}
		}
		return 0
	case req.GetTailEvents() < 0, req.GetTailSeconds() > 0:
		return 0
	case int(req.GetTailEvents()) < len(history):
		return len(history) - int(req.GetTailEvents())
	}
	return 0
}
