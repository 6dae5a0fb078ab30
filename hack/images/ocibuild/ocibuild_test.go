package ocibuild

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

var epoch = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func TestLayer(t *testing.T) {
	tests := []struct {
		name    string
		files   []File
		want    []string // name|mode|content
		wantErr string
	}{
		{
			name:  "parents added, sorted, default modes",
			files: []File{{Path: "/etc/ssl/certs/ca.crt", Data: []byte("ca")}, {Path: "bin/app", Mode: 0o755, Data: []byte("x")}},
			want:  []string{"bin/|755|", "bin/app|755|x", "etc/|755|", "etc/ssl/|755|", "etc/ssl/certs/|755|", "etc/ssl/certs/ca.crt|644|ca"},
		},
		{
			name:  "whiteout",
			files: []File{{Path: "app/.wh..npmrc"}},
			want:  []string{"app/|755|", "app/.wh..npmrc|644|"},
		},
		{name: "duplicate", files: []File{{Path: "a"}, {Path: "/a"}}, wantErr: "listed twice"},
		{name: "root", files: []File{{Path: "/"}}, wantErr: "want a path below /"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l, err := Layer(epoch, tt.files...)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Layer() error = %v; want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if mt, _ := l.MediaType(); mt != types.OCILayer {
				t.Errorf("media type %s; want %s", mt, types.OCILayer)
			}
			if d := cmp.Diff(tt.want, list(t, l)); d != "" {
				t.Errorf("layer entries (-want +got):\n%s", d)
			}
			// Same input, same digest.
			l2, _ := Layer(epoch, tt.files...)
			d1, _ := l.Digest()
			d2, _ := l2.Digest()
			if d1 != d2 {
				t.Errorf("digests %s and %s for the same files", d1, d2)
			}
		})
	}
}

func list(t *testing.T, l v1.Layer) []string {
	t.Helper()
	rc, err := l.Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	var out []string
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		if !h.ModTime.Equal(epoch) || !h.AccessTime.IsZero() || !h.ChangeTime.IsZero() {
			t.Errorf("%s: times %v %v %v; want only mtime %v", h.Name, h.ModTime, h.AccessTime, h.ChangeTime, epoch)
		}
		var b bytes.Buffer
		_, _ = io.Copy(&b, tr)
		out = append(out, fmt.Sprintf("%s|%o|%s", h.Name, h.Mode, b.String()))
	}
}

func TestImage(t *testing.T) {
	l, err := Layer(epoch, File{Path: "app", Data: []byte("x"), Mode: 0o755})
	if err != nil {
		t.Fatal(err)
	}
	img, err := Image(epoch, v1.Platform{OS: "linux", Architecture: "arm64"}, v1.Config{User: "65532", Entrypoint: []string{"/app"}},
		Step{CreatedBy: "ARG TOKEN"}, Step{Layer: l, CreatedBy: "COPY app /app"}, Step{CreatedBy: "USER 65532"})
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	want := []v1.History{
		{Created: v1.Time{Time: epoch}, CreatedBy: "ARG TOKEN", EmptyLayer: true},
		{Created: v1.Time{Time: epoch}, CreatedBy: "COPY app /app"},
		{Created: v1.Time{Time: epoch}, CreatedBy: "USER 65532", EmptyLayer: true},
	}
	if d := cmp.Diff(want, cf.History); d != "" {
		t.Errorf("history (-want +got):\n%s", d)
	}
	if cf.Architecture != "arm64" || cf.Config.User != "65532" || len(cf.RootFS.DiffIDs) != 1 || !cf.Created.Time.Equal(epoch) {
		t.Errorf("config %+v: want arm64, user 65532, one layer, created at the epoch", cf)
	}
	if mt, _ := img.MediaType(); mt != types.OCIManifestSchema1 {
		t.Errorf("manifest media type %s; want OCI", mt)
	}
}
