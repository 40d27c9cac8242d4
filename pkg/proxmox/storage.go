package proxmox

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
)

// ErrInsufficientSpace is returned when a storage has less free space than an
// upload needs.
var ErrInsufficientSpace = errors.New("insufficient storage space")

var (
	importFileRe = regexp.MustCompile(`^[a-zA-Z0-9\-.+=_]+\.(ova|qcow2|raw|vmdk)$`)
	isoFileRe    = regexp.MustCompile(`^[a-zA-Z0-9\-.+=_]+\.(iso|img)$`)
	checksumAlgs = map[string]bool{"md5": true, "sha1": true, "sha224": true, "sha256": true, "sha384": true, "sha512": true}
	compressions = map[string]bool{"gz": true, "lzo": true, "zst": true, "bz2": true}
)

// storagesMaxAge is how long one answer of a node's storage list serves every client of
// the same API and token: every cluster's preflight falls due after the same resync, and
// storage definitions are cluster-wide configuration that rarely changes.
const storagesMaxAge = 10 * time.Second

// Storages implements Client.
func (c *PVEClient) Storages(ctx context.Context, node string) ([]StorageInfo, error) {
	var out []StorageInfo
	err := c.run(ctx, "Storages", func(ctx context.Context) error {
		var err error
		out, err = sharedRead(ctx, c.ep, "storages|"+c.tokenID+"|"+node, storagesMaxAge, c.nowFn, func(ctx context.Context) ([]StorageInfo, error) {
			return c.storages(ctx, node)
		})
		return err
	})
	return out, err
}

func (c *PVEClient) storages(ctx context.Context, node string) ([]StorageInfo, error) {
	var ws []wireStorage
	if err := c.do(ctx, http.MethodGet, "/nodes/"+url.PathEscape(node)+"/storage", nil, nil, &ws); err != nil {
		return nil, fmt.Errorf("list storages of node %s: %w", node, err)
	}
	out := make([]StorageInfo, 0, len(ws))
	for _, w := range ws {
		var content []string
		for _, ct := range strings.Split(w.Content, ",") {
			if ct = strings.TrimSpace(ct); ct != "" {
				content = append(content, ct)
			}
		}
		out = append(out, StorageInfo{
			Name: w.Storage, Type: w.Type, Content: content,
			Active: bool(w.Active), Enabled: bool(w.Enabled), Shared: bool(w.Shared),
			Total: uint64(w.Total), Used: uint64(w.Used), Available: uint64(w.Avail),
		})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// StorageContent implements Client.
func (c *PVEClient) StorageContent(ctx context.Context, node, storage, content string) ([]Volume, error) {
	var out []Volume
	err := c.run(ctx, "StorageContent", func(ctx context.Context) error {
		var err error
		out, err = c.storageContent(ctx, node, storage, content)
		return err
	})
	return out, err
}

func (c *PVEClient) storageContent(ctx context.Context, node, storage, content string) ([]Volume, error) {
	var q url.Values
	if content != "" {
		q = url.Values{"content": {content}}
	}
	var ws []wireVolume
	path := "/nodes/" + url.PathEscape(node) + "/storage/" + url.PathEscape(storage) + "/content"
	if err := c.do(ctx, http.MethodGet, path, q, nil, &ws); err != nil {
		return nil, fmt.Errorf("list %s content of storage %s on %s: %w", content, storage, node, err)
	}
	out := make([]Volume, 0, len(ws))
	for _, w := range ws {
		out = append(out, Volume{VolID: w.VolID, Content: w.Content, Format: w.Format, Size: uint64(w.Size), CTime: int64(w.CTime), VMID: int(w.VMID)})
	}
	return out, nil
}

// volumeID is the id PVE gives an uploaded/downloaded file.
func volumeID(storage, content, filename string) string {
	return storage + ":" + content + "/" + filename
}

func (r *ImageRequest) validate() error {
	var errs []string
	add := func(f string, a ...any) { errs = append(errs, fmt.Sprintf(f, a...)) }
	if r.Node == "" {
		add("node is empty")
	}
	if r.Storage == "" {
		add("storage is empty")
	}
	switch r.Content {
	case "import":
		if !importFileRe.MatchString(r.Filename) {
			add("filename %q for content=import must match [a-zA-Z0-9-.+=_]+ and end in .qcow2, .raw, .vmdk or .ova (use the Image Factory's uncompressed nocloud-amd64.qcow2)", r.Filename)
		}
		if r.Compression != "" {
			add("PVE decompresses downloads only for iso content; download an uncompressed image (e.g. .qcow2) instead of %s", r.Compression)
		}
	case "iso":
		if !isoFileRe.MatchString(r.Filename) {
			add("filename %q for content=iso must match [a-zA-Z0-9-.+=_]+ and end in .iso or .img", r.Filename)
		}
		if r.Compression != "" && !compressions[r.Compression] {
			add("compression %q must be one of gz, lzo, zst, bz2 (PVE has no xz)", r.Compression)
		}
	default:
		add("content %q must be import or iso", r.Content)
	}
	if r.Checksum != "" && !checksumAlgs[r.ChecksumAlgorithm] {
		add("checksum algorithm %q must be one of md5, sha1, sha224, sha256, sha384, sha512", r.ChecksumAlgorithm)
	}
	switch r.transfer() {
	case TransferDownload:
		u, err := url.Parse(r.URL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			add("download URL %q must be http(s)://host/...", r.URL)
		}
	case TransferUpload:
		if r.Source == nil {
			add("upload needs a Source")
		}
		if r.Compression != "" {
			add("compression applies only to downloads")
		}
	default:
		add("transfer %q must be download or upload", r.Transfer)
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: image %s on %s/%s: %s", ErrInvalidConfig, r.Filename, r.Node, r.Storage, strings.Join(errs, "; "))
	}
	return nil
}

func (r *ImageRequest) transfer() ImageTransfer {
	if r.Transfer != "" {
		return r.Transfer
	}
	if r.URL != "" {
		return TransferDownload
	}
	return TransferUpload
}

// EnsureImage implements Client.
//
// Concurrent callers for the same (node, storage, filename) join one flight,
// so N machines waiting for the same Talos image cause one transfer. The
// flight runs detached from any single caller's context (a caller giving up
// must not abort the transfer for the others) and is bounded by
// ImageTaskTimeout; each caller still returns when its own context ends.
func (c *PVEClient) EnsureImage(ctx context.Context, req ImageRequest) (ImageResult, error) {
	var res ImageResult
	err := c.run(ctx, "EnsureImage", func(ctx context.Context) error {
		if err := req.validate(); err != nil {
			return err
		}
		key := req.Node + "/" + req.Storage + "/" + req.Filename
		ch := c.images.DoChan(key, func() (any, error) {
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.cfg.ImageTaskTimeout)
			defer cancel()
			return c.ensureImage(fctx, req)
		})
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for image %s on %s/%s: %w", req.Filename, req.Node, req.Storage, ctx.Err())
		case r := <-ch:
			if r.Err != nil {
				return r.Err
			}
			res = r.Val.(ImageResult)
			return nil
		}
	})
	return res, err
}

func (c *PVEClient) ensureImage(ctx context.Context, req ImageRequest) (ImageResult, error) {
	volid := volumeID(req.Storage, req.Content, req.Filename)
	vols, err := c.storageContent(ctx, req.Node, req.Storage, req.Content)
	if err != nil {
		return ImageResult{}, err
	}
	for _, v := range vols {
		if v.VolID == volid {
			return ImageResult{VolID: volid}, nil
		}
	}

	if req.Content == "import" {
		v, err := c.Version(ctx)
		if err != nil {
			return ImageResult{}, err
		}
		if !v.AtLeast(8, 4) {
			return ImageResult{}, fmt.Errorf("%w: content=import needs PVE >= 8.4, %s runs %s: upgrade PVE", ErrUnsupported, req.Node, v.Version)
		}
	}
	st, err := c.findStorage(ctx, req.Node, req.Storage)
	if err != nil {
		return ImageResult{}, err
	}
	if !st.Supports(req.Content) {
		return ImageResult{}, fmt.Errorf("%w: storage %s on %s allows content %q, not %q: add %q to its content types (Datacenter > Storage > Edit)",
			ErrUnsupported, req.Storage, req.Node, strings.Join(st.Content, ","), req.Content, req.Content)
	}

	var upid string
	switch req.transfer() {
	case TransferDownload:
		body := map[string]any{
			"url":      req.URL,
			"content":  req.Content,
			"filename": req.Filename,
		}
		if req.Checksum != "" {
			body["checksum"] = req.Checksum
			body["checksum-algorithm"] = req.ChecksumAlgorithm
		}
		if req.Compression != "" {
			body["compression"] = req.Compression
		}
		if req.SkipCertificateVerification {
			body["verify-certificates"] = 0
		}
		path := "/nodes/" + url.PathEscape(req.Node) + "/storage/" + url.PathEscape(req.Storage) + "/download-url"
		if err := c.do(ctx, http.MethodPost, path, nil, body, &upid); err != nil {
			return ImageResult{}, fmt.Errorf("download %s to %s on %s: %w", req.Filename, req.Storage, req.Node, err)
		}
	case TransferUpload:
		rc, size, err := req.Source(ctx)
		if err != nil {
			return ImageResult{}, fmt.Errorf("opening %s for upload: %w", req.Filename, err)
		}
		defer func() { _ = rc.Close() }()
		if size < 0 {
			// pveproxy refuses chunked bodies (501) and needs the exact
			// Content-Length of an upload: learn it by spooling to disk.
			f, n, err := spoolToTemp(rc)
			if err != nil {
				return ImageResult{}, fmt.Errorf("spooling %s of unknown size before upload: %w", req.Filename, err)
			}
			defer func() { _ = f.Close(); _ = os.Remove(f.Name()) }()
			rc, size = f, n
		}
		if size > 0 && st.Available > 0 && uint64(size) > st.Available {
			return ImageResult{}, fmt.Errorf("%w: %s needs %d bytes, storage %s on %s has %d free", ErrInsufficientSpace, req.Filename, size, req.Storage, req.Node, st.Available)
		}
		upid, err = c.upload(ctx, req.Node, req.Storage, req.Content, req.Filename, req.Checksum, req.ChecksumAlgorithm, rc, size)
		if err != nil {
			return ImageResult{}, fmt.Errorf("upload %s to %s on %s: %w", req.Filename, req.Storage, req.Node, err)
		}
	}
	if err := c.waitTask(ctx, upid, c.cfg.ImageTaskTimeout); err != nil {
		return ImageResult{}, fmt.Errorf("transfer of %s to %s on %s: %w", req.Filename, req.Storage, req.Node, err)
	}
	return ImageResult{VolID: volid, Transferred: true}, nil
}

func (c *PVEClient) findStorage(ctx context.Context, node, storage string) (StorageInfo, error) {
	sts, err := c.storages(ctx, node)
	if err != nil {
		return StorageInfo{}, err
	}
	for _, s := range sts {
		if s.Name == storage {
			return s, nil
		}
	}
	return StorageInfo{}, fmt.Errorf("%w: storage %s is not available on node %s (or the token lacks Datastore.Audit on /storage/%s)", ErrNotFound, storage, node, storage)
}

// upload streams a multipart POST to .../upload without buffering the file:
// the multipart head and tail are built in memory, the file is read from src
// in between. go-proxmox's UploadReader does the same but takes no context,
// so this goes through the same *http.Client (limiter, metrics) directly.
func (c *PVEClient) upload(ctx context.Context, node, storage, content, filename, checksum, alg string, src io.Reader, size int64) (string, error) {
	var head bytes.Buffer
	mw := multipart.NewWriter(&head)
	// pveproxy (file_upload_multipart) reads exactly these fields before the
	// file part and only in this order: content, checksum-algorithm,
	// checksum. Any other order fails the upload with 501.
	fields := [][2]string{{"content", content}}
	if checksum != "" {
		fields = append(fields, [2]string{"checksum-algorithm", alg}, [2]string{"checksum", checksum})
	}
	for _, f := range fields {
		if err := mw.WriteField(f[0], f[1]); err != nil {
			return "", err
		}
	}
	if _, err := mw.CreateFormFile("filename", filename); err != nil {
		return "", err
	}
	headLen := head.Len()
	if err := mw.Close(); err != nil {
		return "", err
	}
	all := head.Bytes()
	body := io.MultiReader(bytes.NewReader(all[:headLen]), src, bytes.NewReader(all[headLen:]))

	path := "/nodes/" + url.PathEscape(node) + "/storage/" + url.PathEscape(storage) + "/upload"
	rec := &responseRecord{}
	rctx := withLongRequest(withRecord(ctx, rec))
	req, err := http.NewRequestWithContext(rctx, http.MethodPost, c.baseURL+path, body)
	if err != nil {
		return "", err
	}
	if size < 0 {
		return "", fmt.Errorf("%w: upload of %s needs its size: PVE refuses chunked uploads", ErrInvalidConfig, filename)
	}
	req.ContentLength = int64(len(all)) + size
	// The stream cannot be replayed: no GetBody, so the transport will not
	// retry it.
	req.GetBody = nil
	req.Header.Set("Content-Type", mw.FormDataContentType())
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", c.cfg.UserAgent)
	req.Header.Set("Authorization", "PVEAPIToken="+c.tokenID+"="+c.secret)

	res, err := c.http.Do(req)
	if err != nil {
		return "", c.callError(ctx, rec, http.MethodPost, path, err)
	}
	defer func() { _ = res.Body.Close() }()
	if rec.status >= 300 {
		return "", c.callError(ctx, rec, http.MethodPost, path, nil)
	}
	var out struct {
		Data *string `json:"data"`
	}
	if err := json.NewDecoder(res.Body).Decode(&out); err != nil {
		return "", fmt.Errorf("proxmox POST %s: decoding answer: %w", path, err)
	}
	if out.Data == nil {
		return "", nil
	}
	return *out.Data, nil
}

// spoolToTemp copies a stream of unknown length to a temporary file and
// returns it rewound with its size.
func spoolToTemp(r io.Reader) (*os.File, int64, error) {
	f, err := os.CreateTemp("", "capmox-upload-*")
	if err != nil {
		return nil, 0, err
	}
	n, err := io.Copy(f, r)
	if err == nil {
		_, err = f.Seek(0, io.SeekStart)
	}
	if err != nil {
		_ = f.Close()
		_ = os.Remove(f.Name())
		return nil, 0, err
	}
	return f, n, nil
}

// UploadISO implements Client. The ISO is uploaded without looking first: PVE's upload
// worker copies over an existing file of the same name (Status.pm: "we simply overwrite
// the destination file if it already exists"), so a re-upload after a crash replaces what
// an earlier attempt left, content and all.
func (c *PVEClient) UploadISO(ctx context.Context, node, storage, filename string, data []byte) (string, error) {
	volid := volumeID(storage, "iso", filename)
	err := c.run(ctx, "UploadISO", func(ctx context.Context) error {
		if !isoFileRe.MatchString(filename) {
			return fmt.Errorf("%w: ISO filename %q must match [a-zA-Z0-9-.+=_]+ and end in .iso or .img", ErrInvalidConfig, filename)
		}
		upid, err := c.upload(ctx, node, storage, "iso", filename, "", "", bytes.NewReader(data), int64(len(data)))
		if err != nil {
			return fmt.Errorf("upload %s to %s on %s: %w", filename, storage, node, err)
		}
		if err := c.waitTask(ctx, upid, c.cfg.TaskTimeout); err != nil {
			return fmt.Errorf("upload %s to %s on %s: %w", filename, storage, node, err)
		}
		return nil
	})
	if err != nil {
		return "", err
	}
	return volid, nil
}

// DeleteVolume implements Client.
func (c *PVEClient) DeleteVolume(ctx context.Context, node, volid string) error {
	return c.run(ctx, "DeleteVolume", func(ctx context.Context) error {
		return c.deleteVolume(ctx, node, volid)
	})
}

// StartDeleteVolume implements Client. A reconciler records the UPID and polls it with
// TaskStatus instead of holding a worker for the task.
func (c *PVEClient) StartDeleteVolume(ctx context.Context, node, volid string) (string, error) {
	// Forgotten before the delete starts: a machine must not trust an image that is going.
	c.ep.forgetVolume(volid)
	storage, _, ok := strings.Cut(volid, ":")
	if !ok || storage == "" {
		return "", fmt.Errorf("%w: %q is not a volume id (storage:content/file)", ErrInvalidConfig, volid)
	}
	path := "/nodes/" + url.PathEscape(node) + "/storage/" + url.PathEscape(storage) + "/content/" + url.PathEscape(volid)
	var upid string
	err := c.run(ctx, "StartDeleteVolume", func(ctx context.Context) error {
		return c.do(ctx, http.MethodDelete, path, nil, nil, &upid)
	})
	if errors.Is(err, ErrNotFound) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("delete volume %s on %s: %w", volid, node, err)
	}
	return upid, nil
}

// deleteVolumeDelay is how many seconds PVE waits for a volume deletion before answering
// with the task instead (it checks every second, so a quick one answers after about 1 s).
const deleteVolumeDelay = 5

func (c *PVEClient) deleteVolume(ctx context.Context, node, volid string) error {
	c.ep.forgetVolume(volid)
	storage, _, ok := strings.Cut(volid, ":")
	if !ok || storage == "" {
		return fmt.Errorf("%w: %q is not a volume id (storage:content/file)", ErrInvalidConfig, volid)
	}
	path := "/nodes/" + url.PathEscape(node) + "/storage/" + url.PathEscape(storage) + "/content/" + url.PathEscape(volid)
	// PVE waits up to `delay` seconds for the deletion itself and answers null once it is
	// done, so deleting a file (the boot ISO) is one call instead of a call and a task read.
	err := c.storageTask(ctx, node, http.MethodDelete, path, url.Values{"delay": {strconv.Itoa(deleteVolumeDelay)}}, nil, c.cfg.TaskTimeout)
	if err == nil || errors.Is(err, ErrNotFound) {
		return nil
	}
	return fmt.Errorf("delete volume %s on %s: %w", volid, node, err)
}
