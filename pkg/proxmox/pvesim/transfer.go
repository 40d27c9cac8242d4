package pvesim

import (
	"bufio"
	"bytes"
	"crypto/md5"  //nolint:gosec // PVE offers md5 checksums
	"crypto/sha1" //nolint:gosec // PVE offers sha1 checksums
	"crypto/sha256"
	"crypto/sha512"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"hash"
	"io"
	"net/http"
	"regexp"
	"strings"
)

// This file models how pveproxy (pve-http-server AnyEvent.pm) receives an
// upload and how pve-storage checks a transferred file. File bodies are
// streamed through a sink (size, digests, header bytes) and never cut off at
// any size; only ISOs keep their bytes, because node simulators boot them.

var reUnsafeFilenameChar = regexp.MustCompile(`[^a-zA-Z0-9_.-]`)

// normalizeContentFilename is PVE::Storage::normalize_content_filename: strip
// a trailing newline and any directory part, then replace every character
// outside [a-zA-Z0-9_.-] with '_'.
func normalizeContentFilename(name string) string {
	name = strings.TrimSuffix(name, "\n")
	if i := strings.LastIndexAny(name, `/\`); i >= 0 {
		name = name[i+1:]
	}
	return reUnsafeFilenameChar.ReplaceAllString(name, "_")
}

// storagePath is a dir storage's path: "local" is /var/lib/vz as on every
// PVE node, other dir storages are modelled under /mnt/pve/<id>.
func storagePath(sid string) string {
	if sid == "local" {
		return "/var/lib/vz"
	}
	return "/mnt/pve/" + sid
}

// contentDir is pve-storage's get_iso_dir / get_import_dir.
func contentDir(sid, content string) string {
	switch content {
	case "iso":
		return storagePath(sid) + "/template/iso"
	case "import":
		return storagePath(sid) + "/import"
	}
	return storagePath(sid) + "/" + content
}

func newHash(algo string) (hash.Hash, error) {
	switch algo {
	case "md5":
		return md5.New(), nil //nolint:gosec
	case "sha1":
		return sha1.New(), nil //nolint:gosec
	case "sha224":
		return sha256.New224(), nil
	case "sha256":
		return sha256.New(), nil
	case "sha384":
		return sha512.New384(), nil
	case "sha512":
		return sha512.New(), nil
	}
	return nil, fmt.Errorf("unknown algorithm '%s'", algo)
}

// headBytes is how much of a file the format checks read (qcow2 and vmdk
// headers are far smaller).
const headBytes = 64 << 10

// checksumAlgorithms are the algorithms PVE's checksum-algorithm accepts.
var checksumAlgorithms = []string{"md5", "sha1", "sha224", "sha256", "sha384", "sha512"}

// fileSink receives a transferred file: its size, every checksum PVE can be
// asked for later (a download onto an existing file hashes that file with
// the request's algorithm), the first bytes for format checks and, if keep
// is set, all bytes.
type fileSink struct {
	size uint64
	sums map[string]hash.Hash
	head []byte
	keep bool
	data bytes.Buffer
}

func newFileSink(keep bool) *fileSink {
	fs := &fileSink{sums: map[string]hash.Hash{}, keep: keep}
	for _, a := range checksumAlgorithms {
		h, _ := newHash(a)
		fs.sums[a] = h
	}
	return fs
}

func (fs *fileSink) Write(p []byte) (int, error) {
	fs.size += uint64(len(p))
	for _, h := range fs.sums {
		h.Write(p)
	}
	if n := headBytes - len(fs.head); n > 0 {
		fs.head = append(fs.head, p[:min(n, len(p))]...)
	}
	if fs.keep {
		fs.data.Write(p)
	}
	return len(p), nil
}

// checksums returns the hex digests of all algorithms.
func (fs *fileSink) checksums() map[string]string {
	out := map[string]string{}
	for a, h := range fs.sums {
		out[a] = hex.EncodeToString(h.Sum(nil))
	}
	return out
}

func (fs *fileSink) digest() string { return hex.EncodeToString(fs.sums["sha256"].Sum(nil)) }

// checkImage is PVE::Storage::file_size_info($path, 10, $format, 1) for an
// untrusted file: qemu-img info -f <format> must accept it, and neither a
// backing file nor a qcow2 external data file is allowed. format "" is
// auto-detection (assert_iso_content). It returns the virtual size.
func checkImage(path, format string, head []byte, size uint64) (uint64, error) {
	isQcow2 := len(head) >= 4 && string(head[:4]) == "QFI\xfb"
	isVMDK := (len(head) >= 4 && string(head[:4]) == "KDMV") || bytes.HasPrefix(head, []byte("# Disk DescriptorFile"))
	if format == "" {
		switch {
		case isQcow2:
			format = "qcow2"
		case isVMDK:
			format = "vmdk"
		default:
			format = "raw"
		}
	}
	notFormat := fmt.Errorf("qemu-img: Could not open '%s': Image is not in %s format", path, format)
	switch format {
	case "raw":
		return size, nil
	case "vmdk":
		if !isVMDK {
			return 0, notFormat
		}
		return size, nil
	case "qcow2":
		if !isQcow2 || len(head) < 72 {
			return 0, notFormat
		}
		version := binary.BigEndian.Uint32(head[4:8])
		if version >= 3 && len(head) >= 80 && binary.BigEndian.Uint64(head[72:80])&(1<<2) != 0 {
			return 0, fmt.Errorf("%s: 'data-file' references are not allowed!", path)
		}
		if binary.BigEndian.Uint64(head[8:16]) != 0 {
			return 0, fmt.Errorf("backing file not allowed for untrusted image '%s'!", path)
		}
		return binary.BigEndian.Uint64(head[24:32]), nil
	}
	return size, nil
}

// limitMaxPost is pveproxy's $limit_max_post for non-upload bodies.
const limitMaxPost = 64 * 1024

// checkRequestBody applies pveproxy's rules before any handler runs:
// chunked bodies are refused (501) for every request, bodies are only for
// PUT/POST, non-upload bodies are at most 64 KiB of form or JSON data.
func checkRequestBody(r *http.Request, isUpload bool) *apiError {
	for _, te := range r.TransferEncoding {
		if strings.EqualFold(te, "chunked") {
			return errStatus(http.StatusNotImplemented, "chunked transfer encoding not supported")
		}
		return errStatus(http.StatusNotImplemented, "Unknown transfer encoding '%s'", te)
	}
	if r.ContentLength <= 0 {
		return nil
	}
	if r.Method != http.MethodPut && r.Method != http.MethodPost {
		return errStatus(http.StatusNotImplemented, "Unexpected content for method '%s'", r.Method)
	}
	ctype := r.Header.Get("Content-Type")
	ct, boundary := parseContentType(ctype)
	if isUpload {
		if boundary == "" || ct != "multipart/form-data" {
			// pveproxy dies here inside its header-reading eval, which only
			// warns: no response is sent and the connection ends at the idle
			// timeout. statusDrop makes pvesim close it without an answer.
			return errStatus(statusDrop, "upload 'Content-Type '%s' not implemented", ctype)
		}
		return nil
	}
	if r.ContentLength > limitMaxPost {
		return errStatus(http.StatusNotImplemented, "for data too large")
	}
	if ct != "" && ct != "application/x-www-form-urlencoded" && ct != "application/json" {
		return errStatus(506, "upload 'Content-Type '%s' not implemented", ctype)
	}
	return nil
}

// parseContentType is pve-http-server's parse_content_type.
func parseContentType(ctype string) (string, string) {
	parts := regexp.MustCompile(`\s*[;,]\s*`).Split(strings.TrimSpace(ctype), -1)
	ct := parts[0]
	for _, p := range parts[1:] {
		if m := reBoundary.FindStringSubmatch(p); m != nil {
			return ct, m[1]
		}
	}
	return ct, ""
}

var reBoundary = regexp.MustCompile(`^\s*boundary\s*=\s*(\S+?)\s*$`)

// maxUploadHead bounds how much of an upload body may precede the file
// data (the form fields and part headers).
const maxUploadHead = 1 << 20

// multipartUpload is the result of pveproxy's file_upload_multipart: the
// form fields it extracted, the file name and the file bytes in a sink.
type multipartUpload struct {
	params   map[string]string
	filename string
	sink     *fileSink
}

// readMultipartUpload follows file_upload_multipart (PVE 8.x/9.x): before
// the file part it extracts exactly the fields content, checksum-algorithm
// and checksum, each only where it is the next part and in that order; a
// field found out of order makes the lazy match span two parts and fails
// the Content-Disposition assertion. The next part must be the file part
// named "filename". The file data runs to the closing delimiter, so
// anything sent after the file part becomes file content. Errors are 501,
// like pveproxy's.
func readMultipartUpload(body io.Reader, boundary string) (*multipartUpload, *apiError) {
	fail := func(format string, args ...any) (*multipartUpload, *apiError) {
		return nil, errStatus(http.StatusNotImplemented, format, args...)
	}
	q := regexp.QuoteMeta(boundary)
	nl := `\r?\n`
	delim := `--` + q + nl
	reStart := regexp.MustCompile(`(?s)^.*?(` + delim + `)`)
	reFile := regexp.MustCompile(`(?s)^` + delim + `Content-Disposition: (.*?); name="(.*?)"; filename="([^"]+)"` + nl)
	reUntilData := regexp.MustCompile(`(?s)^.*?(?:` + nl + `){2}`)
	reValue := regexp.MustCompile(`(?s)^(.*?)(` + delim + `)`)

	br := bufio.NewReaderSize(body, 64<<10)
	var buf []byte
	eof := false
	fill := func() error {
		chunk := make([]byte, 32<<10)
		n, err := br.Read(chunk)
		buf = append(buf, chunk[:n]...)
		if err == io.EOF {
			eof = true
			return nil
		}
		return err
	}
	params := map[string]string{}
	phase := 0
	var filename string
	for phase < 2 {
		if err := fill(); err != nil {
			return fail("upload failed - %v", err)
		}
		if len(buf) > maxUploadHead {
			return fail("upload failed")
		}
		// Parse the head from scratch on what arrived so far: fields are
		// tiny, so pveproxy sees them together with the file part header.
		rbuf := string(buf)
		if m := reStart.FindStringSubmatchIndex(rbuf); m != nil {
			rbuf = rbuf[m[2]:]
		} else if !eof {
			continue
		} else {
			return fail("upload failed")
		}
		got := map[string]string{}
		for _, name := range []string{"content", "checksum-algorithm", "checksum"} {
			re := regexp.MustCompile(`(?s)^` + delim + `.*?Content-Disposition: (.*?); name="` + regexp.QuoteMeta(name) + `"(.*?` + delim + `)`)
			m := re.FindStringSubmatchIndex(rbuf)
			if m == nil {
				continue
			}
			if disp := rbuf[m[2]:m[3]]; disp != "form-data" {
				return fail("wrong Content-Disposition '%s' in multipart, expected 'form-data'", disp)
			}
			rest := rbuf[m[4]:]
			if u := reUntilData.FindStringIndex(rest); u != nil {
				rest = rest[u[1]:]
			}
			v := reValue.FindStringSubmatchIndex(rest)
			if v == nil {
				break
			}
			got[name] = strings.TrimSpace(rest[v[2]:v[3]])
			rbuf = rest[v[4]:]
		}
		m := reFile.FindStringSubmatchIndex(rbuf)
		if m == nil {
			if eof {
				return fail("upload failed")
			}
			continue
		}
		if disp := rbuf[m[2]:m[3]]; disp != "form-data" {
			return fail("wrong Content-Disposition '%s' in multipart, expected 'form-data'", disp)
		}
		if name := rbuf[m[4]:m[5]]; name != "filename" {
			return fail("wrong field name '%s' for file upload, expected 'filename'", name)
		}
		rest := rbuf[m[1]:]
		// remove_until_data: s/^.*?(\r?\n){2}//s is a no-op when it finds
		// no blank line, so a file part without further headers keeps its
		// leading newline as data, as on PVE.
		if u := reUntilData.FindStringIndex(rest); u != nil {
			rest = rest[u[1]:]
		}
		filename = strings.TrimSpace(rbuf[m[6]:m[7]])
		for k, v := range got {
			params[k] = v
		}
		buf = []byte(rest)
		phase = 2
	}
	sink := newFileSink(params["content"] == "iso")
	closeDelim := []byte("--" + boundary + "--")
	keep := len(closeDelim) + 2
	for {
		if i := bytes.Index(buf, closeDelim); i >= 0 {
			data := buf[:i]
			// (.*?)(\r?\n)?+--B--: the newline before the delimiter is not data.
			if bytes.HasSuffix(data, []byte("\r\n")) {
				data = data[:len(data)-2]
			} else if bytes.HasSuffix(data, []byte("\n")) {
				data = data[:len(data)-1]
			}
			_, _ = sink.Write(data)
			break
		}
		if eof {
			return fail("upload failed")
		}
		if len(buf) > keep {
			_, _ = sink.Write(buf[:len(buf)-keep])
			buf = append([]byte(nil), buf[len(buf)-keep:]...)
		}
		if err := fill(); err != nil {
			return fail("upload failed - %v", err)
		}
	}
	return &multipartUpload{params: params, filename: filename, sink: sink}, nil
}
