// Package backoff computes requeue delays for objects waiting on something outside the
// controller's control, without keeping per-object state: the wait grows with the time
// the object has already spent in its current condition.
package backoff

import "time"

// Timing bounds the requeue delays of a step machine.
type Timing struct {
	// Min is the first requeue delay after a condition changed. Default 2s.
	Min time.Duration
	// Max caps the delay. Default 2m.
	Max time.Duration
}

// WithDefaults fills zero fields.
func (t Timing) WithDefaults() Timing {
	if t.Min <= 0 {
		t.Min = 2 * time.Second
	}
	if t.Max <= 0 {
		t.Max = 2 * time.Minute
	}
	if t.Max < t.Min {
		t.Max = t.Min
	}
	return t
}

// After returns how long to wait before checking again, for something that has been
// waiting since since: a quarter of the time waited so far, clamped to [Min, Max]. A wait
// of a few seconds is polled every few seconds, a wait of an hour every Max.
func (t Timing) After(since time.Time, now time.Time) time.Duration {
	t = t.WithDefaults()
	d := now.Sub(since) / 4
	if since.IsZero() || d < t.Min {
		return t.Min
	}
	if d > t.Max {
		return t.Max
	}
	return d
}
