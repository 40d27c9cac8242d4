package proxmox

import (
	"sync"
	"time"
)

// taskTimings learns, per task type of one Proxmox VE API, how long after its start a task
// is best polled first. A fixed first poll is wrong both ways: on a quick Proxmox a start
// or an ISO upload ends within milliseconds and a 250 ms first poll is most of what a
// machine waits for, while on a loaded one a create with its disk import runs for seconds
// and the early polls are calls that only find it running.
//
// PVE's task status has no end time, so what is learned is a bracket: the last poll that
// found the task running and the one that found it ended. A task whose first poll found it
// ended shrinks the delay by a fifth; one that needed more polls grows it to half again,
// or to the middle of its bracket if that is more (one long import teaches the scale at
// once). That settles where most first polls find the task ended (with every task alike,
// at least ln 1.5 / (ln 1.5 − ln 0.8) ≈ 0.65 of them), so a task costs little more than
// one status read and is seen ended at most about one delay late. Later polls of a task
// still running back off with its age.
type taskTimings struct {
	mu    sync.Mutex
	delay map[string]time.Duration // task type -> first-poll delay
}

const (
	// taskPollFloor is the shortest first-poll delay: below it, the poll would often
	// arrive before pvedaemon has forked the worker.
	taskPollFloor = 20 * time.Millisecond
	// taskPollCeiling bounds what one slow task can teach.
	taskPollCeiling = 30 * time.Second
)

// firstPoll is the delay after the start of a task of type typ before its first status
// read; initial until a task of that type has been polled.
func (t *taskTimings) firstPoll(typ string, initial time.Duration) time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	if d, ok := t.delay[typ]; ok {
		return d
	}
	return clampPoll(initial)
}

// observe records how a task of type typ ended: runningAt is the age at which a poll last
// found it running (zero: the first poll found it ended), endedAt the age at which a poll
// found it ended.
func (t *taskTimings) observe(typ string, runningAt, endedAt, initial time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.delay == nil {
		t.delay = map[string]time.Duration{}
	}
	d, ok := t.delay[typ]
	if !ok {
		d = clampPoll(initial)
	}
	if runningAt <= 0 {
		d = d * 4 / 5
	} else {
		d = max(d*3/2, (runningAt+endedAt)/2)
	}
	t.delay[typ] = clampPoll(d)
}

func clampPoll(d time.Duration) time.Duration {
	return min(max(d, taskPollFloor), taskPollCeiling)
}

// nextPoll is the wait before polling again a task seen running at age: as long again as
// it has run (polls at d, 2d, 4d, ... of its age), within [floor, maxWait].
func nextPoll(age, maxWait time.Duration) time.Duration {
	return min(max(age, taskPollFloor), maxWait)
}
