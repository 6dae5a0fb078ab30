// Package imagetest builds real OCI images in tests: layers from tar entries (files,
// whiteouts, opaque directories), archives to nest in them (jar, tar.gz, gzip) and images
// with a config (Env, Labels, history with build arguments). Everything is deterministic,
// so reports built from these images can be compared with golden files.
package imagetest

import (
	"archive/tar"
	"archive/zip"
	"bytes"
	"compress/gzip"
	"crypto/ed25519"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// Entry is one tar entry. A Name ending in "/" is a directory; Link makes a symlink.
type Entry struct {
	Name string
	Body string
	Link string
}

// File is a regular file entry.
func File(name, body string) Entry { return Entry{Name: name, Body: body} }

// Whiteout deletes name (a file or directory of a lower layer).
func Whiteout(dir, base string) Entry { return Entry{Name: dir + "/.wh." + base} }

// Opaque hides everything lower layers put in dir.
func Opaque(dir string) Entry { return Entry{Name: dir + "/.wh..wh..opq"} }

var epoch = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)

// Tar returns a tar of entries.
func Tar(t testing.TB, entries ...Entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{Name: e.Name, Mode: 0o644, ModTime: epoch, Typeflag: tar.TypeReg, Size: int64(len(e.Body))}
		switch {
		case e.Link != "":
			h.Typeflag, h.Linkname, h.Size = tar.TypeSymlink, e.Link, 0
		case len(e.Name) > 0 && e.Name[len(e.Name)-1] == '/':
			h.Typeflag, h.Mode, h.Size = tar.TypeDir, 0o755, 0
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Size > 0 {
			if _, err := io.WriteString(tw, e.Body); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// Gzip compresses data.
func Gzip(t testing.TB, data []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.ModTime = epoch
	if _, err := zw.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TarGz is a gzip-compressed tar of entries.
func TarGz(t testing.TB, entries ...Entry) []byte { return Gzip(t, Tar(t, entries...)) }

// Zip is a zip (a jar, a war) of entries.
func Zip(t testing.TB, entries ...Entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	for _, e := range entries {
		w, err := zw.CreateHeader(&zip.FileHeader{Name: e.Name, Method: zip.Deflate, Modified: epoch})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.WriteString(w, e.Body); err != nil {
			t.Fatal(err)
		}
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// Layer is a gzip-compressed layer of entries.
func Layer(t testing.TB, entries ...Entry) v1.Layer {
	t.Helper()
	data := Tar(t, entries...)
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(data)), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// Step is one layer with the history line that made it.
type Step struct {
	Layer     v1.Layer
	CreatedBy string
}

// Image builds an image of steps whose config is cfg (Env, Labels, ...). extraHistory is
// history without layers (ENV, ARG, ...) appended after the layers' history.
func Image(t testing.TB, cfg v1.Config, steps []Step, extraHistory ...v1.History) v1.Image {
	t.Helper()
	img := empty.Image
	var err error
	for _, s := range steps {
		img, err = mutate.Append(img, mutate.Addendum{Layer: s.Layer, History: v1.History{CreatedBy: s.CreatedBy, Created: v1.Time{Time: epoch}}})
		if err != nil {
			t.Fatal(err)
		}
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.Config = cfg
	cf.Created = v1.Time{Time: epoch}
	cf.OS, cf.Architecture = "linux", "amd64"
	for _, h := range extraHistory {
		h.EmptyLayer = true
		cf.History = append(cf.History, h)
	}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// SeedCorpus keeps dir (testdata/fuzz/FuzzName) in step with seeds: with update it writes
// them in the `go test fuzz v1` format, and it fails the test when a file is missing or stale.
func SeedCorpus(t testing.TB, dir string, seeds [][]byte, update bool) {
	t.Helper()
	for i, s := range seeds {
		p := filepath.Join(dir, fmt.Sprintf("seed-%d", i))
		body := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", s)
		if update {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		if got, err := os.ReadFile(p); err != nil || string(got) != body {
			t.Errorf("%s is missing or stale (go test -update): %v", p, err)
		}
	}
}

// Fake secrets for tests, assembled at run time so that the repository's own secret scan
// does not flag the source. They have the shapes real credentials have.
var (
	AWSKey         = "AKIA" + "Q3EGRVPOLKJH7XYZ"
	GitHubPAT      = "ghp_" + "8Xk2Lq9ZpR4vT7mN1cW5yB3hJ6gF0dS2aQ4e"
	GitHubPAT2     = "ghp_" + "Zy7Wx6Vu5Ts4Rq3Po2Nm1Lk0Ji9Hg8Fe7Dc6"
	SlackBot       = "xoxb-" + "1234567890123-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx"
	Stripe         = "sk_live_" + "4eC39HqLyjWDarjtT1zdp7dc9Xk2Lq"
	NPMToken       = "npm_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8"
	NPMToken2      = "npm_" + "Q9w8E7r6T5y4U3i2O1p0A9s8D7f6G5h4J3k2"
	NPMToken3      = "npm_" + "Z1x2C3v4B5n6M7a8S9d0F1g2H3j4K5l6P7o8"
	DockerPassword = "Tr0ub4dor" + "-3xK9qLm2vZ"
	DBPassword     = "p7Gq2" + "Lx9Vw4Rz8Tk"
)

// SSHKey is a deterministic, unencrypted ed25519 private key in PKCS#8 PEM.
func SSHKey(t testing.TB) string {
	t.Helper()
	key := ed25519.NewKeyFromSeed([]byte(strings.Repeat("sidekey-test-key", 2)))
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
}
