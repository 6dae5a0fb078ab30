package main

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"log"
	"net/http/httptest"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/sidekey/sidekey/internal/testenv"
)

// maxAgentBytes is the goal for the agent image as pulled (compressed layers).
const maxAgentBytes = 20 << 20

// TestImages builds the real binaries and images, as `make images` does, and checks what the
// chart and the cluster rely on: names, non-root user, entrypoint, static binaries, the same
// digest from the same input, archives and layout that read back, the agent's size, and (the
// dogfood step) that `sidekey detect` finds nothing in either image.
func TestImages(t *testing.T) {
	root, err := testenv.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	o := Options{Version: "test", Registry: "ghcr.io/sidekey", Arch: runtime.GOARCH,
		Epoch: time.Unix(0, 0).UTC(), CAFile: "/etc/ssl/certs/ca-certificates.crt", RepoRoot: root}
	bins := t.TempDir()
	paths, err := BuildBinaries(context.Background(), o, bins)
	if err != nil {
		t.Fatal(err)
	}
	built, err := Assemble(o, paths)
	if err != nil {
		t.Fatal(err)
	}
	again, err := Assemble(o, paths)
	if err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	if err := Write(out, built); err != nil {
		t.Fatal(err)
	}
	lp, err := layout.FromPath(filepath.Join(out, "oci"))
	if err != nil {
		t.Fatal(err)
	}
	for i, b := range built {
		t.Run(b.Target.Name, func(t *testing.T) {
			if got, want := b.Ref.String(), "ghcr.io/sidekey/"+b.Target.Name+":test"; got != want {
				t.Errorf("ref = %s; want %s (the chart's default repositories)", got, want)
			}
			d1, _ := b.Image.Digest()
			d2, _ := again[i].Image.Digest()
			if d1 != d2 {
				t.Errorf("two builds of the same input: digests %s and %s; want one", d1, d2)
			}
			cf, err := b.Image.ConfigFile()
			if err != nil {
				t.Fatal(err)
			}
			if cf.Config.User != "65532:65532" || !cmp.Equal(cf.Config.Entrypoint, []string{"/" + b.Target.Name}) {
				t.Errorf("config user %q entrypoint %q; want 65532:65532 and /%s", cf.Config.User, cf.Config.Entrypoint, b.Target.Name)
			}
			if !cf.Created.Time.Equal(o.Epoch) || cf.OS != "linux" || cf.Architecture != runtime.GOARCH {
				t.Errorf("config created %v os %s arch %s; want the epoch, linux, %s", cf.Created, cf.OS, cf.Architecture, runtime.GOARCH)
			}
			files := layerFiles(t, b.Image, o.Epoch)
			want := []string{"/" + b.Target.Name, "etc/", "etc/group", "etc/passwd", "etc/ssl/", "etc/ssl/certs/",
				"etc/ssl/certs/ca-certificates.crt", "home/", "home/nonroot/", "tmp/"}
			if d := cmp.Diff(want, files); d != "" {
				t.Errorf("image files (-want +got):\n%s", d)
			}
			// The archive reads back as the same image, by the tag the chart uses.
			tag, _ := name.NewTag(b.Ref.String())
			fromTar, err := tarball.ImageFromPath(filepath.Join(out, b.Target.Name+".tar"), &tag)
			if err != nil {
				t.Fatal(err)
			}
			// A docker-archive keeps the config (and layers) byte for byte; its manifest is
			// rebuilt on reading, so compare the config digest.
			wantCfg, _ := b.Image.ConfigName()
			if got, _ := fromTar.ConfigName(); got != wantCfg {
				t.Errorf("%s.tar holds config %s; want %s", b.Target.Name, got, wantCfg)
			}
			if _, err := lp.Image(d1); err != nil {
				t.Errorf("OCI layout: %v", err)
			}
			c, u, err := Sizes(b.Image)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%s: %d bytes compressed (%.1f MiB), %d unpacked", b.Ref, c, float64(c)/(1<<20), u)
			if b.Target.Name == "sidekey-agent" && c > maxAgentBytes {
				t.Errorf("sidekey-agent image is %d bytes compressed; the goal is at most %d", c, maxAgentBytes)
			}
		})
	}
	// Pushable: what `crane push out/images/<name>.tar REF` does (crane is go-containerregistry's
	// remote.Write), to a real registry served in-process, then pulled back by digest.
	t.Run("push", func(t *testing.T) {
		reg := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
		defer reg.Close()
		host := strings.TrimPrefix(reg.URL, "http://")
		for _, b := range built {
			ref := b.Ref
			img, err := tarball.ImageFromPath(filepath.Join(out, b.Target.Name+".tar"), &ref)
			if err != nil {
				t.Fatal(err)
			}
			dst, err := name.NewTag(host+"/sidekey/"+b.Target.Name+":test", name.Insecure)
			if err != nil {
				t.Fatal(err)
			}
			if err := remote.Write(dst, img); err != nil {
				t.Fatalf("push %s: %v", dst, err)
			}
			pulled, err := remote.Image(dst)
			if err != nil {
				t.Fatalf("pull %s: %v", dst, err)
			}
			want, _ := img.Digest()
			if got, _ := pulled.Digest(); got != want {
				t.Errorf("pulled %s: digest %s; want %s", dst, got, want)
			}
		}
	})
	// Dogfood: our own images carry no secrets. The detector is the one in the image.
	for _, b := range built {
		t.Run("detect "+b.Target.Name, func(t *testing.T) {
			cmd := exec.Command(paths["sidekey"], "detect", "image", "docker-archive:"+filepath.Join(out, b.Target.Name+".tar"), "--format", "text", "--color", "never")
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			err := cmd.Run()
			var ee *exec.ExitError
			switch {
			case err == nil:
			case errors.As(err, &ee):
				t.Errorf("sidekey detect %s: exit %d; want 0\n%s%s", b.Ref, ee.ExitCode(), stdout.String(), stderr.String())
			default:
				t.Fatal(err)
			}
		})
	}
}

// layerFiles lists the files of every layer, checking each entry is root-owned (but
// home/nonroot) and stamped with epoch.
func layerFiles(t *testing.T, img v1.Image, epoch time.Time) []string {
	t.Helper()
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, l := range layers {
		rc, err := l.Uncompressed()
		if err != nil {
			t.Fatal(err)
		}
		tr := tar.NewReader(rc)
		for {
			h, err := tr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			if !h.ModTime.Equal(epoch) {
				t.Errorf("%s: mtime %v; want %v", h.Name, h.ModTime, epoch)
			}
			if (h.Uid != 0 || h.Gid != 0) && h.Name != "home/nonroot/" {
				t.Errorf("%s: owner %d:%d; want root", h.Name, h.Uid, h.Gid)
			}
			n := h.Name
			if h.Typeflag == tar.TypeReg && h.Mode&0o111 != 0 {
				n = "/" + n // executables marked, to check which is which
			}
			names = append(names, n)
		}
		rc.Close()
	}
	sort.Strings(names)
	return names
}

func TestSourceDateEpoch(t *testing.T) {
	tests := []struct {
		in      string
		want    time.Time
		wantErr bool
	}{
		{"", time.Unix(0, 0).UTC(), false},
		{"1700000000", time.Unix(1700000000, 0).UTC(), false},
		{"yesterday", time.Time{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := sourceDateEpoch(tt.in)
			if (err != nil) != tt.wantErr || !got.Equal(tt.want) {
				t.Errorf("sourceDateEpoch(%q) = %v, %v; want %v (error %v)", tt.in, got, err, tt.want, tt.wantErr)
			}
		})
	}
}

func TestCheckStatic(t *testing.T) {
	if err := checkStatic("/bin/sh"); err == nil {
		t.Errorf("checkStatic(/bin/sh) = nil; want an error for a dynamically linked binary")
	}
}
