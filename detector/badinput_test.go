package detector_test

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/sidekey/sidekey/detector"
	"github.com/sidekey/sidekey/detector/archive"
	"github.com/sidekey/sidekey/detector/internal/imagetest"
	"github.com/sidekey/sidekey/detector/report"
	"github.com/sidekey/sidekey/detector/source"
)

func rawLayer(t testing.TB, data []byte) v1.Layer {
	t.Helper()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil })
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func image(t testing.TB, layers ...v1.Layer) v1.Image {
	t.Helper()
	var steps []imagetest.Step
	for _, l := range layers {
		steps = append(steps, imagetest.Step{Layer: l, CreatedBy: "COPY . /"})
	}
	return imagetest.Image(t, v1.Config{}, steps)
}

// problemLike finds a problem whose text contains every part.
func problemLike(r *report.Report, parts ...string) *report.Problem {
	for i, p := range r.Problems {
		ok := true
		for _, part := range parts {
			ok = ok && strings.Contains(p.String(), part)
		}
		if ok {
			return &r.Problems[i]
		}
	}
	return nil
}

func TestBadInput(t *testing.T) {
	secret := "token: " + imagetest.GitHubPAT + "\n"
	full := imagetest.Tar(t, imagetest.File("app/first.txt", secret), imagetest.File("app/second.txt", strings.Repeat("x", 4096)))
	zeros := strings.Repeat("\x00", 64<<20)
	bomb := imagetest.Zip(t, imagetest.File("zeros.bin", zeros))
	gzBomb := imagetest.Gzip(t, []byte(strings.Repeat("A", 64<<20)))
	deep := imagetest.File("x.txt", secret)
	for range 6 {
		deep = imagetest.File("inner.tar.gz", string(imagetest.TarGz(t, deep)))
	}

	tests := []struct {
		name       string
		img        v1.Image
		incomplete bool
		problem    []string // parts of the expected problem's text
		findings   int
	}{
		{
			name:       "truncated tar",
			img:        image(t, rawLayer(t, full[:len(full)-3000])),
			incomplete: true,
			problem:    []string{"layer 0", "truncated", "/app/second.txt"},
			findings:   1,
		},
		{
			name: "dot-dot and symlinks",
			img: image(t, imagetest.Layer(t,
				imagetest.File("../../etc/evil.txt", secret),
				imagetest.Entry{Name: "app/link", Link: "/etc/shadow"},
				imagetest.Entry{Name: "app/up", Link: "../../../../root/.ssh/id_rsa"},
			)),
			problem:  []string{"layer 0", "../../etc/evil.txt", "climbs above the root", "/etc/evil.txt"},
			findings: 1,
		},
		{
			name:       "zip bomb",
			img:        image(t, imagetest.Layer(t, imagetest.File("app/bomb.jar", string(bomb)), imagetest.File("app/ok.txt", secret))),
			incomplete: true,
			problem:    []string{"layer 0", "/app/bomb.jar", "zip bomb"},
			findings:   1,
		},
		{
			name:       "gzip bomb",
			img:        image(t, imagetest.Layer(t, imagetest.File("app/data.gz", string(gzBomb)))),
			incomplete: true,
			problem:    []string{"layer 0", "/app/data.gz", "zip bomb"},
		},
		{
			name:       "nested too deep",
			img:        image(t, imagetest.Layer(t, deep)),
			incomplete: true,
			problem:    []string{"layer 0", "/inner.tar.gz!inner.tar.gz!inner.tar.gz!inner.tar.gz", "depth"},
		},
		{
			name:    "corrupt gzip inside a layer",
			img:     image(t, imagetest.Layer(t, imagetest.File("app/x.tgz", string(imagetest.TarGz(t, imagetest.File("a", secret))[:40])))),
			problem: []string{"layer 0", "/app/x.tgz", "gzip"},
		},
	}
	d := newDetector(t, detector.Options{Limits: archive.Limits{MaxExpanded: 256 << 20}})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := d.ScanImage(context.Background(), tt.img, tt.name)
			if err != nil {
				t.Fatal(err)
			}
			if got := r.Incomplete(); got != tt.incomplete {
				t.Errorf("Incomplete() = %v; want %v (problems %v)", got, tt.incomplete, r.Problems)
			}
			if p := problemLike(r, tt.problem...); p == nil {
				t.Errorf("no problem mentioning %q in %v", tt.problem, r.Problems)
			}
			if len(r.Findings) != tt.findings {
				t.Errorf("%d findings; want %d: %v", len(r.Findings), tt.findings, briefs(r))
			}
		})
	}
}

func TestDigestMismatch(t *testing.T) {
	good := image(t, imagetest.Layer(t, imagetest.File("app/a.txt", "token: "+imagetest.GitHubPAT+"\n")))
	dir := t.TempDir()
	writeOCILayout(t, dir, good)
	layers, _ := good.Layers()
	dg, _ := layers[0].Digest()
	// Replace the layer blob with another valid layer: same name, different content.
	other := imagetest.TarGz(t, imagetest.File("app/a.txt", "nothing here\n"))
	if err := os.WriteFile(filepath.Join(dir, "blobs", "sha256", dg.Hex), other, 0o644); err != nil {
		t.Fatal(err)
	}
	img, err := source.Open(context.Background(), "oci:"+dir, source.Options{})
	if err != nil {
		t.Fatal(err)
	}
	r, err := newDetector(t, detector.Options{}).ScanImage(context.Background(), img, "tampered")
	if err != nil {
		t.Fatal(err)
	}
	if !r.Incomplete() || problemLike(r, "layer 0", "diff_id", "tampered") == nil {
		t.Errorf("problems = %v; want an incomplete diff_id mismatch on layer 0", r.Problems)
	}
}

func TestCancelledScanIsIncomplete(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	r, err := newDetector(t, detector.Options{}).ScanImage(ctx, leakyImage(t), "leaky")
	if err != nil {
		t.Fatal(err)
	}
	if !r.Incomplete() {
		t.Errorf("a cancelled scan is complete; problems %v", r.Problems)
	}
}

// TestHugeFileInChunks scans a file many times the chunk size, with secrets at the start,
// across chunk boundaries and at the end, and checks each is found once on the right line.
func TestHugeFileInChunks(t *testing.T) {
	const chunk = 256 << 10
	var b strings.Builder
	line := 1
	want := map[int]bool{}
	put := func(s string) {
		b.WriteString(s)
		line += strings.Count(s, "\n")
	}
	filler := strings.Repeat("lorem ipsum dolor sit amet\n", 100)
	put("token: " + imagetest.GitHubPAT + "\n")
	want[1] = true
	for b.Len() < 3*1024*1024 {
		put(filler)
		// Put a secret near each chunk boundary.
		if b.Len()%chunk > chunk-3000 {
			want[line] = true
			put("token: " + imagetest.GitHubPAT + "\n")
		}
	}
	want[line] = true
	put("token: " + imagetest.GitHubPAT)
	img := image(t, imagetest.Layer(t, imagetest.File("var/log/huge.log", b.String())))
	r, err := newDetector(t, detector.Options{ChunkSize: chunk}).ScanImage(context.Background(), img, "huge")
	if err != nil {
		t.Fatal(err)
	}
	got := map[int]bool{}
	for _, f := range r.Findings {
		if got[f.Line] {
			t.Errorf("line %d reported twice", f.Line)
		}
		got[f.Line] = true
	}
	for l := range want {
		if !got[l] {
			t.Errorf("secret on line %d not found", l)
		}
	}
	for l := range got {
		if !want[l] {
			t.Errorf("finding on line %d, where there is no secret", l)
		}
	}
}
