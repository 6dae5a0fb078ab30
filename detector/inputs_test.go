package detector_test

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/sidekey/sidekey/detector/source"
)

// writeOCILayout writes img as an OCI image layout directory.
func writeOCILayout(t testing.TB, dir string, img v1.Image) {
	t.Helper()
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.AppendImage(img); err != nil {
		t.Fatal(err)
	}
}

// tarDir writes the files under dir into a tar at out, like `tar -C dir -cf out .`.
func tarDir(t testing.TB, dir, out string) {
	t.Helper()
	f, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tw := tar.NewWriter(f)
	err = filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil || fi.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if err := tw.WriteHeader(&tar.Header{Name: filepath.ToSlash(rel), Mode: 0o644, Size: int64(len(data))}); err != nil {
			return err
		}
		_, err = tw.Write(data)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
}

// writeDockerSave writes img the way `docker save` does: uncompressed layers, a
// manifest.json, and either the legacy layout (<id>/layer.tar, <id>.json) or the OCI-style
// layout of Docker 25+ (blobs/sha256/..., index.json, oci-layout).
func writeDockerSave(t testing.TB, out string, img v1.Image, ociStyle bool) {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	add := func(name string, data []byte) {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(data))}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(data); err != nil {
			t.Fatal(err)
		}
	}
	rawCfg, err := img.RawConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cfgName, _ := img.ConfigName()
	layers, _ := img.Layers()
	var layerPaths []string
	if ociStyle {
		add("oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`))
		add("index.json", []byte(`{"schemaVersion":2,"manifests":[]}`))
		add("blobs/sha256/"+cfgName.Hex, rawCfg)
	} else {
		add(cfgName.Hex+".json", rawCfg)
	}
	for i, l := range layers {
		rc, err := l.Uncompressed()
		if err != nil {
			t.Fatal(err)
		}
		data, _ := io.ReadAll(rc)
		rc.Close()
		diffID, _ := l.DiffID()
		p := diffID.Hex + "/layer.tar"
		if ociStyle {
			p = "blobs/sha256/" + diffID.Hex
		}
		_ = i
		layerPaths = append(layerPaths, p)
		add(p, data)
	}
	cfgPath := cfgName.Hex + ".json"
	if ociStyle {
		cfgPath = "blobs/sha256/" + cfgName.Hex
	}
	manifest, _ := json.Marshal([]map[string]any{{"Config": cfgPath, "RepoTags": []string{"leaky:latest"}, "Layers": layerPaths}})
	add("manifest.json", manifest)
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(out, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestEveryInputForm writes the leaky image in every form `sidekey detect image` reads and
// checks each gives the same findings.
func TestEveryInputForm(t *testing.T) {
	img := leakyImage(t)
	dir := t.TempDir()

	ggcrTar := filepath.Join(dir, "ggcr.tar")
	ref, _ := name.ParseReference("leaky:latest")
	if err := tarball.WriteToFile(ggcrTar, ref, img); err != nil {
		t.Fatal(err)
	}
	legacy := filepath.Join(dir, "legacy.tar")
	writeDockerSave(t, legacy, img, false)
	ociSave := filepath.Join(dir, "oci-save.tar")
	writeDockerSave(t, ociSave, img, true)
	ociDir := filepath.Join(dir, "layout")
	writeOCILayout(t, ociDir, img)
	ociTar := filepath.Join(dir, "layout.tar")
	tarDir(t, ociDir, ociTar)

	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	regRef, err := name.ParseReference(host + "/team/leaky:v1")
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(regRef, img); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		ref  string
		kind source.Kind
	}{
		{"docker-archive:" + ggcrTar, source.DockerArchive},
		{"docker-archive:" + legacy, source.DockerArchive},
		{"docker-archive:" + ociSave, source.DockerArchive},
		{"oci:" + ociDir, source.OCI},
		{"oci-archive:" + ociTar, source.OCIArchive},
		{"registry:" + host + "/team/leaky:v1", source.Registry},
		{host + "/team/leaky:v1", source.Registry},
		{legacy, source.DockerArchive},
		{ociSave, source.DockerArchive},
		{ociDir, source.OCI},
		{ociTar, source.OCIArchive},
	}
	d := newDetector(t, detectorOptions())
	for _, tt := range tests {
		t.Run(strings.ReplaceAll(strings.TrimPrefix(tt.ref, dir), "/", "_"), func(t *testing.T) {
			src, err := source.Open(context.Background(), tt.ref, source.Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer src.Close()
			if src.Kind != tt.kind {
				t.Errorf("kind = %s; want %s", src.Kind, tt.kind)
			}
			r, err := d.ScanImage(context.Background(), src, src.Name)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(wantLeaky, briefs(r)); diff != "" {
				t.Errorf("findings (-want +got):\n%s", diff)
			}
			if len(r.Problems) > 0 {
				t.Errorf("problems: %v", r.Problems)
			}
		})
	}
}

func TestParseRejects(t *testing.T) {
	dir := t.TempDir()
	plain := filepath.Join(dir, "notes.txt")
	if err := os.WriteFile(plain, []byte("hello"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, ref := range []string{"oci:", dir, plain, "./missing/image.tar"} {
		if _, _, err := source.Parse(ref); err == nil {
			t.Errorf("Parse(%q) succeeded; want an error", ref)
		}
	}
}
