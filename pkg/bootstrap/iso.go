package bootstrap

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/diskfs/go-diskfs/backend"
	"github.com/diskfs/go-diskfs/filesystem/iso9660"
)

// Volume labels Talos looks for.
const (
	// CIDataLabel is the nocloud volume label (Talos also accepts "CIDATA").
	CIDataLabel = "cidata"
	// MetalISOLabel is constants.MetalConfigISOLabel, read with talos.config=metal-iso.
	MetalISOLabel = "metal-iso"
)

// Well-known file names on the ISOs.
const (
	FileUserData      = "user-data"
	FileMetaData      = "meta-data"
	FileNetworkConfig = "network-config"
	FileMetalConfig   = "config.yaml"
)

const isoBlockSize = 2048

// CIData is the content of a nocloud cidata volume.
type CIData struct {
	// UserData is the Talos machine config (see UserData). Required.
	UserData []byte
	// MetaData is the meta-data file (see NoCloudMetaData). Required.
	MetaData []byte
	// NetworkConfig is the network-config file (see NoCloudNetworkConfig); omitted when nil,
	// which leaves Talos on DHCP.
	NetworkConfig []byte
}

// CIDataISO builds an ISO9660 image labelled "cidata" with user-data, meta-data and, when
// given, network-config. Rock Ridge and Joliet keep the lowercase, dashed names intact.
func CIDataISO(c CIData) ([]byte, error) {
	if len(c.UserData) == 0 || len(c.MetaData) == 0 {
		return nil, errors.New("cidata: user-data and meta-data are required")
	}

	files := map[string][]byte{FileUserData: c.UserData, FileMetaData: c.MetaData}
	if c.NetworkConfig != nil {
		files[FileNetworkConfig] = c.NetworkConfig
	}

	return buildISO(CIDataLabel, files)
}

// MetalISO builds an ISO9660 image labelled "metal-iso" holding config.yaml, for the metal
// platform booted with talos.config=metal-iso.
func MetalISO(config []byte) ([]byte, error) {
	if len(config) == 0 {
		return nil, errors.New("metal-iso: config is empty")
	}

	return buildISO(MetalISOLabel, map[string][]byte{FileMetalConfig: config})
}

func buildISO(label string, files map[string][]byte) (_ []byte, err error) {
	// go-diskfs stages files in a workspace directory; keep it private (0700 via MkdirTemp)
	// because the files hold secrets, and remove it whatever happens.
	ws, err := os.MkdirTemp("", "bootstrap-iso-")
	if err != nil {
		return nil, fmt.Errorf("iso: workspace: %w", err)
	}

	defer func() {
		if rerr := os.RemoveAll(ws); rerr != nil && err == nil {
			err = fmt.Errorf("iso: cleanup: %w", rerr)
		}
	}()

	mem := &memStorage{}

	fsys, err := iso9660.Create(mem, 0, 0, isoBlockSize, ws)
	if err != nil {
		return nil, fmt.Errorf("iso: create: %w", err)
	}

	names := slices.Sorted(func(yield func(string) bool) {
		for n := range files {
			if !yield(n) {
				return
			}
		}
	})

	for _, name := range names {
		f, err := fsys.OpenFile("/"+name, os.O_CREATE|os.O_RDWR)
		if err != nil {
			return nil, fmt.Errorf("iso: create %s: %w", name, err)
		}

		if _, err := f.Write(files[name]); err != nil {
			_ = f.Close()

			return nil, fmt.Errorf("iso: write %s: %w", name, err)
		}

		if err := f.Close(); err != nil {
			return nil, fmt.Errorf("iso: close %s: %w", name, err)
		}
	}

	if err := fsys.Finalize(iso9660.FinalizeOptions{RockRidge: true, Joliet: true, VolumeIdentifier: label}); err != nil {
		return nil, fmt.Errorf("iso: finalize: %w", err)
	}

	padVolumeDescriptors(mem.buf)

	// go-diskfs leaves the last file block short; CD-ROM images must be whole 2 KiB sectors
	// (QEMU and Proxmox' ISO upload assume it), so pad with zeros.
	if rem := len(mem.buf) % isoBlockSize; rem != 0 {
		mem.buf = append(mem.buf, make([]byte, isoBlockSize-rem)...)
	}

	return mem.buf, nil
}

// padVolumeDescriptors rewrites the NUL padding go-diskfs leaves after the system and volume
// identifiers into the space padding ECMA-119 (and Joliet, in UCS-2) require. mkisofs/xorriso,
// the tools Talos documents for cidata/metal-iso, pad with spaces, so label probes that only
// trim spaces would otherwise see "cidata\x00\x00..." and never find the volume.
func padVolumeDescriptors(img []byte) {
	for sector := 16; (sector+1)*isoBlockSize <= len(img); sector++ {
		vd := img[sector*isoBlockSize : (sector+1)*isoBlockSize]
		if string(vd[1:6]) != "CD001" || vd[0] == 255 {
			return
		}

		switch vd[0] {
		case 1: // primary: system identifier [8,40), volume identifier [40,72)
			for _, f := range [][2]int{{8, 40}, {40, 72}} {
				for i := f[1] - 1; i >= f[0] && vd[i] == 0; i-- {
					vd[i] = ' '
				}
			}
		case 2: // supplementary (Joliet): the same fields, UCS-2 big endian
			for _, f := range [][2]int{{8, 40}, {40, 72}} {
				for i := f[1] - 2; i >= f[0] && vd[i] == 0 && vd[i+1] == 0; i -= 2 {
					vd[i+1] = ' '
				}
			}
		}
	}
}

// ReadISO reads an ISO9660 image (as built by CIDataISO / MetalISO) and returns its volume
// label and the regular files of its root directory. Tests and simulators use it to inspect
// uploaded boot media.
func ReadISO(image []byte) (label string, files map[string][]byte, err error) {
	mem := &memStorage{buf: image}

	fsys, err := iso9660.Read(mem, int64(len(image)), 0, isoBlockSize)
	if err != nil {
		return "", nil, fmt.Errorf("iso: read: %w", err)
	}

	entries, err := fsys.ReadDir(".")
	if err != nil {
		return "", nil, fmt.Errorf("iso: read root: %w", err)
	}

	files = map[string][]byte{}

	for _, e := range entries {
		if e.IsDir() {
			continue
		}

		data, err := fsys.ReadFile(e.Name())
		if err != nil {
			return "", nil, fmt.Errorf("iso: read %s: %w", e.Name(), err)
		}

		files[e.Name()] = data
	}

	return strings.TrimRight(fsys.Label(), " "), files, nil
}

// memStorage is an in-memory go-diskfs backend, so the finished image never touches the disk.
type memStorage struct {
	buf []byte
	off int64
}

var _ backend.Storage = (*memStorage)(nil)

func (m *memStorage) Stat() (fs.FileInfo, error) { return memInfo{size: int64(len(m.buf))}, nil }
func (m *memStorage) Close() error               { return nil }
func (m *memStorage) Sys() (*os.File, error)     { return nil, errors.New("memory backend has no OS file") }
func (m *memStorage) Path() string               { return "" }

func (m *memStorage) Writable() (backend.WritableFile, error) { return m, nil }

func (m *memStorage) Read(p []byte) (int, error) {
	n, err := m.ReadAt(p, m.off)
	m.off += int64(n)

	return n, err
}

func (m *memStorage) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, errors.New("negative offset")
	}

	if off >= int64(len(m.buf)) {
		return 0, io.EOF
	}

	n := copy(p, m.buf[off:])
	if n < len(p) {
		return n, io.EOF
	}

	return n, nil
}

func (m *memStorage) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, errors.New("negative offset")
	}

	if end := off + int64(len(p)); end > int64(len(m.buf)) {
		m.buf = append(m.buf, make([]byte, end-int64(len(m.buf)))...)
	}

	return copy(m.buf[off:], p), nil
}

func (m *memStorage) Seek(offset int64, whence int) (int64, error) {
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		offset += m.off
	case io.SeekEnd:
		offset += int64(len(m.buf))
	default:
		return 0, errors.New("bad whence")
	}

	if offset < 0 {
		return 0, errors.New("negative position")
	}

	m.off = offset

	return offset, nil
}

type memInfo struct{ size int64 }

func (i memInfo) Name() string       { return "memory" }
func (i memInfo) Size() int64        { return i.size }
func (i memInfo) Mode() fs.FileMode  { return 0o600 }
func (i memInfo) ModTime() time.Time { return time.Time{} }
func (i memInfo) IsDir() bool        { return false }
func (i memInfo) Sys() any           { return nil }
