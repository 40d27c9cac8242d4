package proxmox

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// Sentinel errors. Every error returned by Client supports errors.Is against
// these, so controllers can branch without parsing text.
var (
	// ErrNotFound: the VM, volume, storage, node or task does not exist.
	// PVE reports most of these as HTTP 500 "... does not exist"; they are
	// mapped here so callers never have to match text.
	ErrNotFound = errors.New("not found")
	// ErrLockTimeout: PVE could not take a config or storage lock in time
	// ("can't lock file ... got timeout") or the VM carries a lock
	// ("VM 100 is locked (create)"). The call was rejected before doing
	// anything, so it is safe to retry later.
	ErrLockTimeout = errors.New("lock timeout")
	// ErrPermissionDenied: HTTP 403, the token lacks a privilege. Use
	// errors.As with *PermissionError for the path and privilege.
	ErrPermissionDenied = errors.New("permission denied")
	// ErrBadRequest: HTTP 400, parameter verification failed. Use errors.As
	// with *BadRequestError for the per-parameter messages.
	ErrBadRequest = errors.New("bad request")
	// ErrUnauthorized: HTTP 401, the token id or secret is wrong, expired or
	// the token was removed.
	ErrUnauthorized = errors.New("unauthorized")
	// ErrAlreadyExists: the VMID (or volume) is already taken by something
	// else. Allocate another VMID.
	ErrAlreadyExists = errors.New("already exists")
	// ErrTaskFailed: an asynchronous PVE task ended with an exit status other
	// than OK. Use errors.As with *TaskError for details.
	ErrTaskFailed = errors.New("task failed")
	// ErrTimeout: a task did not finish within the allowed time.
	ErrTimeout = errors.New("timed out")
	// ErrUnsupported: the PVE version or storage configuration cannot do
	// what was asked (e.g. content=import before PVE 8.4).
	ErrUnsupported = errors.New("unsupported")
	// ErrAgentNotRunning: the QEMU guest agent is not (yet) answering.
	ErrAgentNotRunning = errors.New("guest agent not running")
	// ErrInvalidConfig: the client configuration or a request is invalid
	// before any call is made.
	ErrInvalidConfig = errors.New("invalid configuration")
	// ErrVMMoved: the VM exists, but on another node than the one given
	// (migrated); look it up again.
	ErrVMMoved = errors.New("VM is on another node")
	// ErrUnavailable: PVE answered 5xx or the connection failed, and
	// retries were exhausted or not allowed.
	ErrUnavailable = errors.New("proxmox API unavailable")
	// ErrNodeOffline: pveproxy could not reach the node the call was for
	// (HTTP 595: the node is down or cut off from the cluster). It also
	// matches ErrUnavailable.
	ErrNodeOffline = errors.New("proxmox node offline")
	// ErrNodeBusy: the node runs as many creates of this manager as
	// --proxmox-max-tasks-per-node allows; nothing was sent, try again later.
	ErrNodeBusy = errors.New("proxmox node busy")
)

// errNodeOfflineKind is the Kind of a 595 answer: offline, and unavailable.
var errNodeOfflineKind = errors.Join(ErrNodeOffline, ErrUnavailable)

// APIError is a non-2xx answer from the PVE API. It unwraps to the sentinel
// matching its class (ErrNotFound, ErrLockTimeout, ...).
type APIError struct {
	// Method and Path identify the request (path relative to /api2/json,
	// without query string).
	Method string
	Path   string
	// StatusCode is the HTTP status. PVE uses 500 for most failures.
	StatusCode int
	// Message is PVE's error text (HTTP reason phrase or body "message").
	Message string
	// Kind is the sentinel this error unwraps to; nil for unclassified.
	Kind error
}

func (e *APIError) Error() string {
	return fmt.Sprintf("proxmox %s %s: HTTP %d: %s", e.Method, e.Path, e.StatusCode, e.Message)
}

// Unwrap returns the classification sentinel.
func (e *APIError) Unwrap() error { return e.Kind }

// PermissionError is an HTTP 403: the token lacks Privilege on Path.
type PermissionError struct {
	// TokenID is the token that made the call (never the secret).
	TokenID string
	// Path is the ACL path PVE checked, e.g. "/vms/100".
	Path string
	// Privilege is the missing privilege (or "|"-separated alternatives),
	// e.g. "VM.Allocate".
	Privilege string
	// API is the raw answer.
	API *APIError
}

func (e *PermissionError) Error() string {
	who := "token"
	if e.TokenID != "" {
		who = "token " + e.TokenID
	}
	if e.Path == "" || e.Privilege == "" {
		return fmt.Sprintf("%s is not allowed to %s %s (%s): grant the provider role to the token on the needed path",
			who, e.API.Method, e.API.Path, e.API.Message)
	}
	return fmt.Sprintf("%s lacks %s on %s (%s %s): grant the provider role (with %s) on %s or a parent path such as %s or the pool",
		who, e.Privilege, e.Path, e.API.Method, e.API.Path, e.Privilege, e.Path, parentACLPath(e.Path))
}

// Unwrap lets errors.Is(err, ErrPermissionDenied) and errors.As(err, **APIError) work.
func (e *PermissionError) Unwrap() []error { return []error{ErrPermissionDenied, e.API} }

// BadRequestError is an HTTP 400: PVE's parameter verification failed.
type BadRequestError struct {
	// Params maps a parameter name to PVE's message for it.
	Params map[string]string
	API    *APIError
}

func (e *BadRequestError) Error() string {
	if len(e.Params) == 0 {
		return fmt.Sprintf("proxmox rejected %s %s: %s", e.API.Method, e.API.Path, e.API.Message)
	}
	keys := make([]string, 0, len(e.Params))
	for k := range e.Params {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s: %s", k, e.Params[k]))
	}
	return fmt.Sprintf("proxmox rejected %s %s: %s", e.API.Method, e.API.Path, strings.Join(parts, "; "))
}

// Unwrap lets errors.Is(err, ErrBadRequest) and errors.As(err, **APIError) work.
func (e *BadRequestError) Unwrap() []error { return []error{ErrBadRequest, e.API} }

// TaskError is an asynchronous task (UPID) that ended with an exit status
// other than OK. It unwraps to ErrTaskFailed and, when the exit status is
// recognised, to the matching sentinel (e.g. ErrLockTimeout).
type TaskError struct {
	UPID       string
	Node       string
	Type       string
	ExitStatus string
	Kind       error
}

func (e *TaskError) Error() string {
	return fmt.Sprintf("proxmox task %s on node %s failed: %s (UPID %s)", e.Type, e.Node, e.ExitStatus, e.UPID)
}

// Unwrap returns ErrTaskFailed and the classification sentinel.
func (e *TaskError) Unwrap() []error {
	if e.Kind != nil {
		return []error{ErrTaskFailed, e.Kind}
	}
	return []error{ErrTaskFailed}
}

// redactedError hides a secret in an error's text while keeping the chain
// for errors.Is/As.
type redactedError struct {
	err error
	msg string
}

func (r *redactedError) Error() string { return r.msg }
func (r *redactedError) Unwrap() error { return r.err }

var (
	permRe     = regexp.MustCompile(`Permission check failed \(([^,()]+),\s*([^()]+)\)`)
	lockRe     = regexp.MustCompile(`(?i)(can't lock file .*got timeout|got timeout.*lock|is locked \(|lock .*timeout)`)
	notFoundRe = regexp.MustCompile(`(?i)(does not exist|no such (vm|volume|storage|node|task|file|resource)|not found|unable to find|unknown task)`)
	existsRe   = regexp.MustCompile(`(?i)(already exists|vmid .* in use|volume .* already)`)
	agentRe    = regexp.MustCompile(`(?i)(guest agent is not running|agent .*not running|qemu guest agent .*not (enabled|running))`)
)

// classifyMessage maps PVE's error text to a sentinel. It is used for
// synchronous answers (with their HTTP status) and for task exit statuses
// (status 0).
func classifyMessage(status int, msg string) error {
	switch status {
	case http.StatusUnauthorized:
		return ErrUnauthorized
	case http.StatusForbidden:
		return ErrPermissionDenied
	case http.StatusBadRequest:
		// "VM 100 already exists" and nextid's conflict come back as 400.
		if existsRe.MatchString(msg) {
			return ErrAlreadyExists
		}
		return ErrBadRequest
	case http.StatusNotFound:
		return ErrNotFound
	case 595:
		return errNodeOfflineKind
	}
	switch {
	case lockRe.MatchString(msg):
		return ErrLockTimeout
	case agentRe.MatchString(msg):
		return ErrAgentNotRunning
	case existsRe.MatchString(msg):
		return ErrAlreadyExists
	case notFoundRe.MatchString(msg):
		return ErrNotFound
	}
	if status >= 500 {
		return ErrUnavailable
	}
	return nil
}

// isPermanentKind says whether a 5xx classification describes a state that a
// retry of the same request cannot change.
func isPermanentKind(kind error) bool {
	switch kind {
	case ErrNotFound, ErrAlreadyExists, ErrAgentNotRunning:
		return true
	}
	return false
}

// pveErrorBody is the JSON body PVE sends with errors.
type pveErrorBody struct {
	Message string            `json:"message"`
	Errors  map[string]string `json:"errors"`
}

// parseErrorBody extracts "message" and "errors" from a PVE error body.
// "errors" values are sometimes not strings; they are stringified.
func parseErrorBody(body []byte) (string, map[string]string) {
	if len(body) == 0 {
		return "", nil
	}
	var raw struct {
		Message json.RawMessage            `json:"message"`
		Errors  map[string]json.RawMessage `json:"errors"`
	}
	if err := json.Unmarshal(body, &raw); err != nil {
		return "", nil
	}
	var msg string
	if len(raw.Message) > 0 {
		if err := json.Unmarshal(raw.Message, &msg); err != nil {
			msg = string(raw.Message)
		}
	}
	var params map[string]string
	if len(raw.Errors) > 0 {
		params = make(map[string]string, len(raw.Errors))
		for k, v := range raw.Errors {
			var s string
			if err := json.Unmarshal(v, &s); err != nil {
				s = string(v)
			}
			params[k] = strings.TrimSpace(s)
		}
	}
	return strings.TrimSpace(msg), params
}

// reasonPhrase returns the text after the status code in res.Status. PVE puts
// its error message there ("500 can't lock file ...").
func reasonPhrase(status string, code int) string {
	s := strings.TrimSpace(status)
	s = strings.TrimPrefix(s, strconv.Itoa(code))
	return strings.TrimSpace(s)
}

// newAPIError builds the typed error for a recorded non-2xx answer.
func newAPIError(tokenID string, rec *responseRecord) error {
	bodyMsg, params := parseErrorBody(rec.body)
	msg := rec.reason
	if bodyMsg != "" && (msg == "" || msg == http.StatusText(rec.status) || len(bodyMsg) > len(msg)) {
		msg = bodyMsg
	}
	if msg == "" {
		msg = http.StatusText(rec.status)
	}
	api := &APIError{
		Method:     rec.method,
		Path:       rec.path,
		StatusCode: rec.status,
		Message:    msg,
	}
	api.Kind = classifyMessage(rec.status, msg)
	switch api.Kind {
	case ErrPermissionDenied:
		pe := &PermissionError{TokenID: tokenID, API: api}
		if m := permRe.FindStringSubmatch(msg); m != nil {
			pe.Path = strings.TrimSpace(m[1])
			pe.Privilege = strings.TrimSpace(m[2])
		}
		return pe
	case ErrBadRequest:
		return &BadRequestError{Params: params, API: api}
	case ErrUnauthorized:
		return &unauthorizedError{tokenID: tokenID, api: api}
	}
	return api
}

// unauthorizedError gives an actionable message for HTTP 401.
type unauthorizedError struct {
	tokenID string
	api     *APIError
}

func (e *unauthorizedError) Error() string {
	return fmt.Sprintf("proxmox rejected the credentials of token %q (HTTP 401 on %s %s): check the token id (user@realm!name), the secret (not shown), that the token exists and is not expired",
		e.tokenID, e.api.Method, e.api.Path)
}

func (e *unauthorizedError) Unwrap() []error { return []error{ErrUnauthorized, e.api} }

// parentACLPath suggests the ACL path one level up ("/vms/100" -> "/vms").
func parentACLPath(p string) string {
	p = strings.TrimRight(p, "/")
	i := strings.LastIndex(p, "/")
	if i <= 0 {
		return "/"
	}
	return p[:i]
}

// taskErrorFor builds the error for a finished task whose exit status is not OK.
func taskErrorFor(upid, node, typ, exit string) error {
	return &TaskError{UPID: upid, Node: node, Type: typ, ExitStatus: exit, Kind: classifyMessage(0, exit)}
}
