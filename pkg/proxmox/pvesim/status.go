package pvesim

import "time"

// guestRampUp is how long a booting guest takes to touch most of its
// memory: QEMU allocates guest RAM lazily, so a VM's resident memory (what
// node "mem" counts) grows after start instead of jumping to its configured
// size.
const guestRampUp = 60 * time.Second

// vmRSS is the resident memory of a running guest's QEMU process: 10 % of
// the configured memory right after start, growing to 90 % over
// guestRampUp. Callers hold s.mu.
func (s *Server) vmRSS(vm *vmState, now time.Time) uint64 {
	if !vm.running {
		return 0
	}
	frac := 1.0
	if ramp := s.cfg.scale(guestRampUp); ramp > 0 {
		frac = float64(now.Sub(vm.startedAt)) / float64(ramp)
	}
	if frac > 1 {
		frac = 1
	}
	if frac < 0 {
		frac = 0
	}
	return uint64(float64(vm.memBytes()) * (0.1 + 0.8*frac))
}
