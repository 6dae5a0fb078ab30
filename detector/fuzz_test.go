package detector_test

import (
	"context"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/zricethezav/gitleaks/v8/config"

	"github.com/sidekey/sidekey/detector"
	"github.com/sidekey/sidekey/detector/archive"
	"github.com/sidekey/sidekey/detector/internal/imagetest"
	"github.com/sidekey/sidekey/detector/match"
)

func layerSeeds(t testing.TB) [][]byte {
	f := imagetest.File
	return [][]byte{
		imagetest.Tar(t, f("app/.env", "token: aaaaaaaaaaaa\n"), imagetest.Whiteout("app", "old"), imagetest.Opaque("opt")),
		imagetest.Tar(t, f("../../x", "a"), imagetest.Entry{Name: "l", Link: "/etc/passwd"}, imagetest.Entry{Name: "d/"}),
		imagetest.TarGz(t, f("a.jar", string(imagetest.Zip(t, f("k", "password="+imagetest.DBPassword))))),
		imagetest.Tar(t, f("big", strings.Repeat("token: aaaaaaaaaaaa\n", 50))),
		[]byte("not a tar at all"),
	}
}

// FuzzLayer feeds arbitrary bytes as a layer to the whole image scan (layer walker, nested
// archives, matching, status): it must report problems, never panic or hang.
func FuzzLayer(f *testing.F) {
	for _, s := range layerSeeds(f) {
		f.Add(s)
	}
	// The walker is under test, not the rules: one cheap rule keeps the fuzzer fast (the
	// default rules' RE2 programs compile slowly under coverage instrumentation).
	rule := config.Rule{RuleID: "token", Regex: regexp.MustCompile(`token[:=] ?(\S{8,})`), Keywords: []string{"token"}}
	d := detector.New(match.New(config.Config{Rules: map[string]config.Rule{"token": rule}}), detector.Options{Workers: 1, ChunkSize: 64 << 10,
		Limits: archive.Limits{MaxDepth: 3, MaxExpanded: 4 << 20, MaxRatio: 50, MaxZipBytes: 1 << 20}})
	f.Fuzz(func(t *testing.T, data []byte) {
		// A static layer is the bytes as they are, never sniffed for gzip.
		img := image(t, static.NewLayer(data, types.OCIUncompressedLayer), imagetest.Layer(t, imagetest.Whiteout("app", ".env")))
		r, err := d.ScanImage(context.Background(), img, "fuzz")
		if err != nil {
			t.Fatal(err)
		}
		for _, fd := range r.Findings {
			if fd.LayerIndex != nil && *fd.LayerIndex != 0 {
				t.Errorf("finding in layer %d; only layer 0 has content", *fd.LayerIndex)
			}
		}
	})
}

// FuzzBuildArgs checks the history build-argument parser on arbitrary created_by lines.
func FuzzBuildArgs(f *testing.F) {
	for _, s := range []string{"RUN |2 A=1 B=\"x y\" /bin/sh -c make", "|1 NPM_TOKEN=abc npm ci", "|x", "RUN |3 A=1", "/bin/sh -c #(nop) ENV A=b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		args, rest := detector.BuildArgs(s)
		if len(args) == 0 && rest != s {
			t.Errorf("BuildArgs(%q) lost text without finding arguments: rest %q", s, rest)
		}
	})
}

// TestLayerSeedCorpus keeps testdata/fuzz/FuzzLayer in step with layerSeeds (go test -update).
func TestLayerSeedCorpus(t *testing.T) {
	imagetest.SeedCorpus(t, filepath.Join("testdata", "fuzz", "FuzzLayer"), layerSeeds(t), *update)
}
