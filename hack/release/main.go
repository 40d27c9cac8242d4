// Command release writes the release assets (`make release`) or the manager image archive
// (`make image`); the work is done by internal/release, which tests and the lab share.
//
//	go run ./hack/release assets --version v0.2.0 --out out
//	go run ./hack/release repository --version v0.2.0 --out /tmp/repo   (clusterctl local repository layout)
//	go run ./hack/release image --version v0.2.0 --out out
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/internal/release"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: release assets|repository|image --version vX.Y.Z [--out dir]")
		os.Exit(2)
	}
	cmd := os.Args[1]
	fs := flag.NewFlagSet(cmd, flag.ExitOnError)
	version := fs.String("version", "", "release version, vX.Y.Z")
	out := fs.String("out", "out", "output directory")
	repo := fs.String("image-repository", release.DefaultImageRepository, "image repository; the image is <repository>:<version>")
	platforms := fs.String("platforms", strings.Join(release.DefaultPlatforms, ","), "image platforms")
	caBundle := fs.String("ca-bundle", release.DefaultCABundle, "PEM CA bundle installed in the image")
	loadPlatform := fs.String("load-platform", "linux/amd64", "platform named by the archive's manifest.json (docker load on engines without OCI index support)")
	_ = fs.Parse(os.Args[2:])
	if *version == "" {
		fmt.Fprintln(os.Stderr, "--version is required (make release VERSION=v0.2.0)")
		os.Exit(2)
	}
	root, err := os.Getwd()
	if err != nil {
		fail(err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	o := release.Options{RepoRoot: root, Version: *version, ImageRepository: *repo}

	switch cmd {
	case "assets":
		if err := release.WriteAssets(ctx, o, *out); err != nil {
			fail(err)
		}
		assets, _ := release.Assets(root)
		fmt.Printf("wrote %s: %s (image %s)\n", *out, strings.Join(assets, ", "), o.ImageRef())
	case "repository":
		p, err := release.WriteClusterctlRepository(ctx, o, *out)
		if err != nil {
			fail(err)
		}
		fmt.Println(p)
	case "image":
		created, err := sourceDate(root)
		if err != nil {
			fail(err)
		}
		io := release.ImageOptions{
			Options: o, Commit: gitOutput(root, "rev-parse", "HEAD"), Platforms: strings.Split(*platforms, ","),
			CABundle: *caBundle, Created: created, LoadPlatform: *loadPlatform,
		}
		layoutDir := filepath.Join(*out, "image")
		tarPath := filepath.Join(*out, "cluster-api-provider-proxmox-talos-"+*version+".oci.tar")
		start := time.Now()
		idx, err := release.BuildImage(ctx, io, layoutDir, tarPath)
		if err != nil {
			fail(err)
		}
		d, _ := idx.Digest()
		fmt.Printf("wrote %s and %s/ (OCI layout): %s %s for %s in %s\n", tarPath, layoutDir, o.ImageRef(), d, *platforms, time.Since(start).Round(time.Second))
	default:
		fmt.Fprintf(os.Stderr, "unknown command %q (assets, repository, image)\n", cmd)
		os.Exit(2)
	}
}

// sourceDate is SOURCE_DATE_EPOCH, else the commit time, so rebuilding a commit gives the
// same image digest.
func sourceDate(root string) (time.Time, error) {
	s := os.Getenv("SOURCE_DATE_EPOCH")
	if s == "" {
		s = gitOutput(root, "log", "-1", "--format=%ct")
	}
	if s == "" {
		return time.Unix(0, 0).UTC(), nil
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return time.Time{}, fmt.Errorf("SOURCE_DATE_EPOCH %q: %w", s, err)
	}
	return time.Unix(n, 0).UTC(), nil
}

func gitOutput(root string, args ...string) string {
	cmd := exec.Command("git", args...)
	cmd.Dir = root
	b, err := cmd.Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "release:", err)
	os.Exit(1)
}
