package archive_test

import (
	"bytes"
	"errors"
	"flag"
	"io"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/sidekey/sidekey/detector/archive"
	"github.com/sidekey/sidekey/detector/internal/imagetest"
)

var update = flag.Bool("update", false, "rewrite the seed corpus under testdata/fuzz")

// walkAll walks data and everything nested in it, returning "path=content" for each file.
func walkAll(data []byte, lim archive.Limits) ([]string, error) {
	var out []string
	b := archive.NewBudget(lim)
	var walk func(kind archive.Kind, r io.Reader, name string, depth int) error
	walk = func(kind archive.Kind, r io.Reader, name string, depth int) error {
		return archive.Walk(kind, r, name, depth, b, func(member string, _ int64, r io.Reader) error {
			body, err := io.ReadAll(r)
			if err != nil {
				return err
			}
			if k := archive.Sniff(body); k != archive.None {
				return walk(k, bytes.NewReader(body), name+"!"+member, depth+1)
			}
			out = append(out, name+"!"+member+"="+string(body))
			return nil
		})
	}
	kind := archive.Sniff(data)
	if kind == archive.None {
		return nil, errors.New("not an archive")
	}
	return out, walk(kind, bytes.NewReader(data), "top", 1)
}

func TestWalk(t *testing.T) {
	f := imagetest.File
	jar := imagetest.Zip(t, f("a/b.properties", "k=v"), f("c.txt", "c"))
	tests := []struct {
		name    string
		data    []byte
		want    []string
		wantErr error
	}{
		{name: "tar", data: imagetest.Tar(t, f("x", "1"), imagetest.Entry{Name: "d/"}, f("d/y", "2")), want: []string{"top!x=1", "top!d/y=2"}},
		{name: "tar.gz", data: imagetest.TarGz(t, f("./x", "1")), want: []string{"top!x=1"}},
		{name: "gzip", data: imagetest.Gzip(t, []byte("plain")), want: []string{"top!top=plain"}},
		{name: "zip", data: jar, want: []string{"top!a/b.properties=k=v", "top!c.txt=c"}},
		{name: "jar in tar.gz", data: imagetest.TarGz(t, f("lib/app.jar", string(jar))), want: []string{"top!lib/app.jar!a/b.properties=k=v", "top!lib/app.jar!c.txt=c"}},
		{name: "dot-dot names stay inside", data: imagetest.Tar(t, f("../../etc/passwd", "p")), want: []string{"top!etc/passwd=p"}},
		{name: "zip bomb", data: imagetest.Zip(t, f("z", strings.Repeat("\x00", 8<<20))), wantErr: archive.ErrBomb},
		{name: "gzip bomb", data: imagetest.Gzip(t, bytes.Repeat([]byte{0}, 8<<20)), wantErr: archive.ErrBomb},
		{name: "too deep", data: imagetest.TarGz(t, f("a.tgz", string(imagetest.TarGz(t, f("b.tgz", string(imagetest.TarGz(t, f("c", "deep")))))))), wantErr: archive.ErrTooDeep},
		{name: "truncated gzip", data: imagetest.TarGz(t, f("x", strings.Repeat("y", 5000)))[:30], wantErr: io.ErrUnexpectedEOF},
	}
	lim := archive.Limits{MaxDepth: 2, MaxExpanded: 64 << 20, MaxRatio: 100, MaxZipBytes: 1 << 20}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := walkAll(tt.data, lim)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("walk error = %v; want %v", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("members (-want +got):\n%s", diff)
			}
		})
	}
}

func TestExpandedCap(t *testing.T) {
	data := imagetest.Tar(t,
		imagetest.File("a.gz", string(imagetest.Gzip(t, []byte(strings.Repeat("abcdefgh", 1<<17))))),
		imagetest.File("b.gz", string(imagetest.Gzip(t, []byte(strings.Repeat("abcdefgh", 1<<17))))))
	_, err := walkAll(data, archive.Limits{MaxDepth: 3, MaxExpanded: 1 << 20, MaxRatio: 1 << 30, MaxZipBytes: 1 << 20})
	if !errors.Is(err, archive.ErrTooLarge) {
		t.Errorf("error = %v; want ErrTooLarge", err)
	}
}

func seeds(t testing.TB) [][]byte {
	f := imagetest.File
	return [][]byte{
		imagetest.Tar(t, f("a.txt", "token=abc"), imagetest.Entry{Name: "d/"}, imagetest.Entry{Name: "l", Link: "../x"}),
		imagetest.TarGz(t, f("x/y.env", "K=V")),
		imagetest.Gzip(t, []byte("hello")),
		imagetest.Zip(t, f("META-INF/MANIFEST.MF", "m"), f("app.properties", "password=x")),
		imagetest.TarGz(t, f("in.jar", string(imagetest.Zip(t, f("c", "d"))))),
		[]byte("PK\x03\x04garbage"),
		[]byte("\x1f\x8b\x08\x00truncated"),
	}
}

// FuzzWalk feeds arbitrary bytes to the archive walker: it must return, not panic or hang,
// within the limits.
func FuzzWalk(f *testing.F) {
	for _, s := range seeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		_, _ = walkAll(data, archive.Limits{MaxDepth: 3, MaxExpanded: 4 << 20, MaxRatio: 50, MaxZipBytes: 1 << 20})
	})
}

// TestSeedCorpus keeps testdata/fuzz/FuzzWalk in step with seeds (go test -update).
func TestSeedCorpus(t *testing.T) {
	imagetest.SeedCorpus(t, filepath.Join("testdata", "fuzz", "FuzzWalk"), seeds(t), *update)
}
