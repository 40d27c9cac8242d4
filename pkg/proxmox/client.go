package proxmox

import (
	"context"
	"io"
	"time"
)

// Client is every Proxmox VE operation the provider needs. Controllers use
// only this interface; New returns the go-proxmox implementation.
//
// Conventions:
//   - mutating operations wait for their PVE task and return *TaskError (which
//     unwraps to ErrTaskFailed and, when recognised, e.g. ErrLockTimeout) if
//     it fails;
//   - operations are idempotent where PVE allows it: creating a VM that
//     already exists with the same name/SMBIOS uuid, deleting a VM or volume
//     that is gone, starting a running VM and stopping a stopped one all
//     succeed;
//   - errors unwrap to the sentinels in errors.go (ErrNotFound, ...).
type Client interface {
	// Version returns the PVE version (cached after the first call).
	Version(ctx context.Context) (VersionInfo, error)
	// Nodes lists cluster nodes with free memory and CPU.
	Nodes(ctx context.Context) ([]NodeInfo, error)
	// ClusterNodes is Nodes from a snapshot at most maxAge old, shared like
	// ClusterVMs. Node memory and CPU come from pvestatd's 10 s rounds anyway.
	ClusterNodes(ctx context.Context, maxAge time.Duration) ([]NodeInfo, error)
	// VMs lists all VMs (and templates) of the cluster the token may see.
	VMs(ctx context.Context) ([]VMRef, error)
	// ClusterVMs is VMs from a /cluster/resources snapshot at most maxAge
	// old, shared by every client of the same API and token in this process
	// (one read serves all machines that ask within maxAge). The snapshot is
	// what pvestatd last broadcast: a VM's status lags up to its 10 s cycle,
	// and a VM created since shows status "unknown" and no name. Use it for
	// periodic checks, never to decide about a VM just created.
	ClusterVMs(ctx context.Context, maxAge time.Duration) ([]VMRef, error)
	// FindVMs returns the VMs matching the filter.
	FindVMs(ctx context.Context, f VMFilter) ([]VMRef, error)
	// AllocateVMID reserves a free VMID in r. The reservation is in-process
	// (PVE's /cluster/nextid is racy): concurrent callers of this client
	// never get the same id. Another process may still take it, in which
	// case CreateVM returns ErrAlreadyExists and the caller allocates again.
	AllocateVMID(ctx context.Context, r VMIDRange) (int, error)
	// ReleaseVMID drops an in-process reservation that will not be used.
	ReleaseVMID(vmid int)

	// Storages lists the storages visible on node; one answer serves every client of the
	// same API and token for 10 s.
	Storages(ctx context.Context, node string) ([]StorageInfo, error)
	// StorageContent lists volumes of one content type ("" = all).
	StorageContent(ctx context.Context, node, storage, content string) ([]Volume, error)
	// EnsureImage makes sure a disk image is present in a storage, by
	// download-url or by streaming an upload. It is a no-op when the file
	// exists; concurrent calls for the same (node, storage, filename) share
	// one transfer.
	EnsureImage(ctx context.Context, req ImageRequest) (ImageResult, error)
	// StartImage is EnsureImage without waiting: it returns the volume when
	// the file is present, else starts (or joins) the transfer in the
	// background and returns ErrInProgress; a later call returns the outcome.
	StartImage(ctx context.Context, req ImageRequest) (ImageResult, error)
	// UploadISO uploads a small ISO (e.g. a cidata image) as iso content and
	// returns its volume id. An existing file of the same size is kept;
	// one of a different size is replaced.
	UploadISO(ctx context.Context, node, storage, filename string, data []byte) (string, error)
	// DeleteVolume deletes a volume ("storage:iso/x.iso"); missing = success.
	DeleteVolume(ctx context.Context, node, volid string) error
	// StartDeleteVolume sends the delete and returns the task's UPID (imgdel) without
	// waiting; "" with a nil error when the volume is already gone.
	StartDeleteVolume(ctx context.Context, node, volid string) (string, error)

	// CreateVM creates a VM from spec and waits for the task. Reconcilers use
	// StartCreateVM instead; CreateVM is for tools and tests.
	CreateVM(ctx context.Context, spec VMSpec) (CreateResult, error)

	// StartCreateVM sends the create request and returns the task's UPID without
	// waiting. Until the task ends the VM's config holds only "lock: create"
	// (no name, tags or smbios1). ErrAlreadyExists: the VMID is taken.
	StartCreateVM(ctx context.Context, spec VMSpec) (string, error)
	// StartShutdownVM asks the guest to shut down within timeout and returns
	// the task's UPID; with forceStop PVE stops the VM when the timeout passes.
	StartShutdownVM(ctx context.Context, node string, vmid int, timeout time.Duration, forceStop bool) (string, error)
	// StartStopVM hard-stops the VM and returns the task's UPID. For an
	// HA-managed VM the task (hastop) ends before the VM has stopped.
	StartStopVM(ctx context.Context, node string, vmid int) (string, error)
	// StartDeleteVM destroys a stopped VM with purge=1 and
	// destroy-unreferenced-disks=1 and returns the task's UPID.
	StartDeleteVM(ctx context.Context, node string, vmid int) (string, error)
	// TaskStatus reads a task's state by UPID (ErrNotFound: PVE does not know it).
	TaskStatus(ctx context.Context, upid string) (TaskState, error)
	// TaskPollDelay is how long after its start a task of this type (PVE's type, e.g.
	// "qmcreate") is best read first, learned from earlier first polls on this API.
	TaskPollDelay(taskType string) time.Duration
	// ObserveTask teaches TaskPollDelay how a task of this type ended: runningAt is its
	// age when a read last found it running (zero: the first read found it ended),
	// endedAt its age when a read found it ended.
	ObserveTask(taskType string, runningAt, endedAt time.Duration)
	// ListTasks lists a node's tasks matching the filter.
	ListTasks(ctx context.Context, node string, f TaskFilter) ([]TaskState, error)
	// TaskUser is the user PVE records for this client's tasks.
	TaskUser() string
	// ResizeDisk grows disk (e.g. "scsi0") to size ("32G") or by "+NG".
	ResizeDisk(ctx context.Context, node string, vmid int, disk, size string) error
	// AttachISO inserts an ISO volume into a CD-ROM slot (e.g. "ide2").
	AttachISO(ctx context.Context, node string, vmid int, slot, volid string) error
	// DetachISO ejects the medium of a CD-ROM slot.
	DetachISO(ctx context.Context, node string, vmid int, slot string) error
	// StartVM starts a VM; a running VM is success.
	StartVM(ctx context.Context, node string, vmid int) error
	// ShutdownVM asks the guest to shut down within timeout (ACPI, no
	// forced stop); a stopped VM is success.
	ShutdownVM(ctx context.Context, node string, vmid int, timeout time.Duration) error
	// StopVM hard-stops a VM; a stopped VM is success.
	StopVM(ctx context.Context, node string, vmid int) error
	// DeleteVM stops the VM if needed (waiting for the stop task), then
	// destroys it with purge=1 and destroy-unreferenced-disks=1. A missing
	// VM is success.
	DeleteVM(ctx context.Context, node string, vmid int) error
	// SetTags replaces the VM's tags.
	SetTags(ctx context.Context, node string, vmid int, tags []string) error
	// GuestNetworkInterfaces asks the QEMU guest agent for interfaces and
	// addresses; ErrAgentNotRunning while the agent does not answer.
	GuestNetworkInterfaces(ctx context.Context, node string, vmid int) ([]GuestInterface, error)
	// VMStatus returns the VM's current status.
	VMStatus(ctx context.Context, node string, vmid int) (VMStatus, error)
	// VMConfig returns the VM's configuration.
	VMConfig(ctx context.Context, node string, vmid int) (VMConfig, error)
}

// ImageTransfer selects how EnsureImage gets an image onto a storage.
type ImageTransfer string

const (
	// TransferDownload makes the PVE node fetch the URL (download-url).
	// Needs Sys.AccessNetwork on the node (or Sys.Audit+Sys.Modify on /)
	// and outbound HTTPS from the node.
	TransferDownload ImageTransfer = "download"
	// TransferUpload streams the image from the controller (upload). Needs
	// only Datastore.AllocateTemplate on the storage.
	TransferUpload ImageTransfer = "upload"
)

// ImageSource opens the image to upload. It returns the stream and its exact
// size in bytes (-1 if unknown: pveproxy refuses chunked uploads, so the
// stream is then spooled to a temporary file first to learn its size). The
// stream is read once, never buffered whole in memory.
type ImageSource func(ctx context.Context) (io.ReadCloser, int64, error)

// ImageRequest describes an image that must be present in a storage.
type ImageRequest struct {
	Node    string
	Storage string
	// Filename in the storage. content=import needs [A-Za-z0-9-.+=_]+ ending
	// in .qcow2, .raw, .vmdk or .ova; content=iso needs .iso or .img.
	Filename string
	// Content is "import" (disk images for import-from, PVE >= 8.4) or "iso".
	Content string
	// Transfer selects download or upload; empty means download when URL
	// is set, otherwise upload.
	Transfer ImageTransfer

	// URL for download-url (http or https).
	URL string
	// Checksum and ChecksumAlgorithm (md5, sha1, sha224, sha256, sha384,
	// sha512) are verified by PVE for both download and upload.
	Checksum          string
	ChecksumAlgorithm string
	// Compression (gz, lzo, zst, bz2) makes PVE decompress a download; PVE
	// supports it only for iso content.
	Compression string
	// SkipCertificateVerification sends verify-certificates=0 to PVE.
	SkipCertificateVerification bool

	// Source provides the bytes for an upload.
	Source ImageSource
}

// ImageResult is the outcome of EnsureImage.
type ImageResult struct {
	// VolID is the volume id, e.g. "local:import/talos-...qcow2".
	VolID string
	// Transferred is true when this call (or the flight it joined)
	// downloaded or uploaded the image.
	Transferred bool
}

// CreateResult is the outcome of CreateVM.
type CreateResult struct {
	Node string
	VMID int
	// AlreadyExisted is true when a VM with this VMID and the same name (and
	// SMBIOS uuid, if set) was found, so nothing was created.
	AlreadyExisted bool
}
