// Package proxmox is the single door through which the provider talks to the
// Proxmox VE API.
//
// Controllers depend on the Client interface only, so tests and the lab can
// swap the backend. New returns the production implementation, built on
// github.com/luthermonson/go-proxmox, with the cross-cutting concerns that the
// library does not offer hooked in at the HTTP layer:
//
//   - a client-side limiter (QPS via golang.org/x/time/rate, a global and a
//     per-node in-flight semaphore) acquired per HTTP request, so the number of
//     concurrent calls hitting pveproxy is bounded no matter how many
//     reconcilers run;
//   - retries with exponential backoff and jitter for lock timeouts ("can't
//     lock file ... got timeout"), 5xx answers and connection resets of
//     idempotent requests; go-proxmox's own WithRetry is deliberately not used
//     so a request is never retried by two layers;
//   - Prometheus metrics per operation and per HTTP request;
//   - error classification into typed errors (ErrNotFound, ErrLockTimeout,
//     ErrPermissionDenied, ErrBadRequest, ErrUnauthorized, ...) that carry the
//     text PVE returned, which go-proxmox otherwise drops;
//   - redaction: the token secret never appears in an error or log line.
//
// Asynchronous PVE calls return a UPID; every mutating operation of the Client
// waits for its task and reports a failed task as *TaskError.
package proxmox
