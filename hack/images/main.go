// Command images builds sidekey's container images without a Docker daemon: static binaries on
// an empty base plus CA certificates, non-root (65532), assembled with go-containerregistry and
// written as docker-archive tarballs (for `ctr images import`, `docker load`, `crane push`) and
// one OCI layout. The same source gives the same digests: every timestamp is SOURCE_DATE_EPOCH
// (default 0).
//
//	go run ./hack/images -version v0.1.0 -out out/images
//
// writes out/images/sidekey.tar, out/images/sidekey-agent.tar and out/images/oci/.
package main

import (
	"context"
	"debug/elf"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/sidekey/sidekey/hack/images/ocibuild"
)

// Target is one image: a main package built into a static binary at /<Name>.
type Target struct {
	Name        string // image and binary name
	Package     string // Go package of the binary
	Description string
}

// Targets are the images the chart refers to: the webhook/probe/CLI image and the agent image.
var Targets = []Target{
	{Name: "sidekey", Package: "./cmd/sidekey", Description: "sidekey webhook, probe and CLI (detect, inject)"},
	{Name: "sidekey-agent", Package: "./cmd/sidekey-agent", Description: "sidekey agent: fetches secrets into a per-pod tmpfs"},
}

// NonRoot is the user the images run as (distroless "nonroot").
const NonRoot = 65532

// Options say how to build.
type Options struct {
	Version  string // tag, and the version linked into the binaries
	Registry string // e.g. ghcr.io/sidekey
	Arch     string // GOARCH
	Epoch    time.Time
	CAFile   string // CA certificates copied into the images
	RepoRoot string // where go build runs
}

// Built is one assembled image.
type Built struct {
	Target Target
	Ref    name.Tag
	Image  v1.Image
}

func main() {
	var (
		o   Options
		out string
	)
	flag.StringVar(&o.Version, "version", "dev", "image tag, also linked into the binaries as their version")
	flag.StringVar(&o.Registry, "registry", "ghcr.io/sidekey", "registry and namespace of the image names")
	flag.StringVar(&o.Arch, "arch", runtime.GOARCH, "GOARCH of the images")
	flag.StringVar(&o.CAFile, "ca-file", "/etc/ssl/certs/ca-certificates.crt", "CA certificates to copy into the images")
	flag.StringVar(&out, "out", "out/images", "output directory")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	epoch, err := sourceDateEpoch(os.Getenv("SOURCE_DATE_EPOCH"))
	if err == nil {
		o.Epoch = epoch
		o.RepoRoot, err = os.Getwd()
	}
	if err == nil {
		err = run(context.Background(), o, out, log)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "images:", err)
		os.Exit(1)
	}
}

func sourceDateEpoch(s string) (time.Time, error) {
	if s == "" {
		return time.Unix(0, 0).UTC(), nil
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return time.Time{}, fmt.Errorf("SOURCE_DATE_EPOCH %q: want seconds since 1970: %w", s, err)
	}
	return time.Unix(n, 0).UTC(), nil
}

func run(ctx context.Context, o Options, out string, log *slog.Logger) error {
	bins, err := os.MkdirTemp("", "sidekey-images-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(bins)
	paths, err := BuildBinaries(ctx, o, bins)
	if err != nil {
		return err
	}
	built, err := Assemble(o, paths)
	if err != nil {
		return err
	}
	if err := Write(out, built); err != nil {
		return err
	}
	for _, b := range built {
		d, _ := b.Image.Digest()
		c, u, err := Sizes(b.Image)
		if err != nil {
			return err
		}
		log.Info("image", "ref", b.Ref.String(), "digest", d.String(), "compressedBytes", c, "uncompressedBytes", u,
			"archive", filepath.Join(out, b.Target.Name+".tar"))
	}
	return nil
}

// BuildBinaries builds every target's binary, static and stripped, into dir and returns their
// paths by target name.
func BuildBinaries(ctx context.Context, o Options, dir string) (map[string]string, error) {
	paths := map[string]string{}
	for _, t := range Targets {
		p := filepath.Join(dir, t.Name)
		cmd := exec.CommandContext(ctx, "go", "build", "-trimpath",
			"-ldflags", "-s -w -X github.com/sidekey/sidekey/internal/version.Version="+o.Version,
			"-o", p, t.Package)
		cmd.Dir = o.RepoRoot
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+o.Arch)
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			return nil, fmt.Errorf("go build %s: %w", t.Package, err)
		}
		if err := checkStatic(p); err != nil {
			return nil, err
		}
		paths[t.Name] = p
	}
	return paths, nil
}

// checkStatic refuses a binary that needs a dynamic loader: the images have no libc.
func checkStatic(p string) error {
	f, err := elf.Open(p)
	if err != nil {
		return fmt.Errorf("binary %s: %w", p, err)
	}
	defer f.Close()
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP {
			return fmt.Errorf("binary %s is dynamically linked: build it with CGO_ENABLED=0", p)
		}
	}
	return nil
}

// Assemble makes one image per target from its binary (paths by target name).
func Assemble(o Options, paths map[string]string) ([]Built, error) {
	ca, err := os.ReadFile(o.CAFile)
	if err != nil {
		return nil, fmt.Errorf("CA certificates (-ca-file): %w", err)
	}
	base, err := ocibuild.Layer(o.Epoch,
		ocibuild.File{Path: "etc/ssl/certs/ca-certificates.crt", Data: ca},
		ocibuild.File{Path: "etc/passwd", Data: []byte("root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n")},
		ocibuild.File{Path: "etc/group", Data: []byte("root:x:0:\nnonroot:x:65532:\n")},
		ocibuild.File{Path: "home/nonroot", Dir: true, Mode: 0o700, UID: NonRoot, GID: NonRoot},
		ocibuild.File{Path: "tmp", Dir: true, Mode: 0o1777},
	)
	if err != nil {
		return nil, fmt.Errorf("base layer: %w", err)
	}
	var built []Built
	for _, t := range Targets {
		p, ok := paths[t.Name]
		if !ok {
			return nil, fmt.Errorf("no binary for image %s", t.Name)
		}
		bin, err := os.ReadFile(p)
		if err != nil {
			return nil, err
		}
		layer, err := ocibuild.Layer(o.Epoch, ocibuild.File{Path: t.Name, Data: bin, Mode: 0o755})
		if err != nil {
			return nil, fmt.Errorf("image %s: binary layer: %w", t.Name, err)
		}
		cfg := v1.Config{
			User:       fmt.Sprintf("%d:%d", NonRoot, NonRoot),
			Entrypoint: []string{"/" + t.Name},
			WorkingDir: "/",
			Env:        []string{"PATH=/", "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"},
			Labels: map[string]string{
				"org.opencontainers.image.title":       t.Name,
				"org.opencontainers.image.description": t.Description,
				"org.opencontainers.image.version":     o.Version,
				"org.opencontainers.image.source":      "https://github.com/sidekey/sidekey",
				"org.opencontainers.image.licenses":    "Apache-2.0",
			},
		}
		img, err := ocibuild.Image(o.Epoch, v1.Platform{OS: "linux", Architecture: o.Arch}, cfg,
			ocibuild.Step{Layer: base, CreatedBy: "ca-certificates, passwd (hack/images)"},
			ocibuild.Step{Layer: layer, CreatedBy: "/" + t.Name + " (go build -trimpath, CGO_ENABLED=0)"},
		)
		if err != nil {
			return nil, fmt.Errorf("image %s: %w", t.Name, err)
		}
		ref, err := name.NewTag(o.Registry + "/" + t.Name + ":" + o.Version)
		if err != nil {
			return nil, fmt.Errorf("image %s: name: %w", t.Name, err)
		}
		built = append(built, Built{Target: t, Ref: ref, Image: img})
	}
	return built, nil
}

// Write writes <out>/<name>.tar per image (docker-archive: `ctr -n k8s.io images import`,
// `docker load`, `crane push`) and one OCI layout <out>/oci holding them all.
func Write(out string, built []Built) error {
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	for _, b := range built {
		p := filepath.Join(out, b.Target.Name+".tar")
		tmp := p + ".tmp"
		if err := tarball.MultiRefWriteToFile(tmp, map[name.Reference]v1.Image{b.Ref: b.Image}); err != nil {
			os.Remove(tmp)
			return fmt.Errorf("write %s: %w", p, err)
		}
		if err := os.Rename(tmp, p); err != nil {
			return err
		}
	}
	dir := filepath.Join(out, "oci")
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	lp, err := layout.Write(dir, empty.Index)
	if err != nil {
		return fmt.Errorf("write OCI layout %s: %w", dir, err)
	}
	for _, b := range built {
		if err := lp.AppendImage(b.Image, layout.WithAnnotations(map[string]string{
			"org.opencontainers.image.ref.name": b.Ref.String(),
		})); err != nil {
			return fmt.Errorf("write %s to OCI layout: %w", b.Ref, err)
		}
	}
	return nil
}

// Sizes returns an image's size as pushed (compressed layers + config + manifest) and unpacked.
func Sizes(img v1.Image) (compressed, uncompressed int64, err error) {
	m, err := img.Manifest()
	if err != nil {
		return 0, 0, err
	}
	raw, err := img.RawManifest()
	if err != nil {
		return 0, 0, err
	}
	compressed = m.Config.Size + int64(len(raw))
	layers, err := img.Layers()
	if err != nil {
		return 0, 0, err
	}
	for _, l := range layers {
		s, err := l.Size()
		if err != nil {
			return 0, 0, err
		}
		compressed += s
		rc, err := l.Uncompressed()
		if err != nil {
			return 0, 0, err
		}
		n, err := io.Copy(io.Discard, rc)
		rc.Close()
		if err != nil {
			return 0, 0, err
		}
		uncompressed += n
	}
	return compressed, uncompressed, nil
}
