package detector_test

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/sidekey/sidekey/detector/internal/imagetest"

	"github.com/sidekey/sidekey/detector"
	"github.com/sidekey/sidekey/detector/credfile"
	"github.com/sidekey/sidekey/detector/match"
	"github.com/sidekey/sidekey/detector/report"
	"github.com/sidekey/sidekey/detector/rules"
)

var update = flag.Bool("update", false, "rewrite golden files")

// engine is shared by the tests: building it (compiling ~220 regular expressions) is the
// slow part of a small scan.
var engine = sync.OnceValues(func() (*match.Engine, error) {
	cfg, err := rules.Default()
	if err != nil {
		return nil, err
	}
	return match.New(cfg, credfile.All()...), nil
})

func newDetector(t testing.TB, opts detector.Options) *detector.Detector {
	t.Helper()
	e, err := engine()
	if err != nil {
		t.Fatal(err)
	}
	return detector.New(e, opts)
}

// brief is the part of a finding the tests pin down.
type brief struct {
	Rule, Path, Status, Key string
	Layer                   int
}

func briefs(r *report.Report) []brief {
	var out []brief
	for _, f := range r.Findings {
		l := -1
		if f.LayerIndex != nil {
			l = *f.LayerIndex
		}
		out = append(out, brief{Rule: f.Rule, Path: f.Path, Status: string(f.Status), Key: f.Key, Layer: l})
	}
	return out
}

func TestScanImageFindsEverySecret(t *testing.T) {
	d := newDetector(t, detector.Options{})
	r, err := d.ScanImage(context.Background(), leakyImage(t), "leaky")
	if err != nil {
		t.Fatal(err)
	}
	want := wantLeaky
	if diff := cmp.Diff(want, briefs(r)); diff != "" {
		t.Errorf("findings (-want +got):\n%s", diff)
	}
	if len(r.Problems) != 0 {
		t.Errorf("problems = %v; want none", r.Problems)
	}
	if r.Stats.Layers != 3 || r.Stats.Archives != 2 {
		t.Errorf("stats = %+v; want 3 layers, 2 archives", r.Stats)
	}
	for _, f := range r.Findings {
		if f.Line == 0 && f.Source == report.SourceLayer {
			t.Errorf("%s %s: line 0", f.Rule, f.Path)
		}
	}
}

func TestSecretsNeverInReports(t *testing.T) {
	d := newDetector(t, detector.Options{})
	r, err := d.ScanImage(context.Background(), leakyImage(t), "leaky")
	if err != nil {
		t.Fatal(err)
	}
	for _, format := range []report.Format{report.Text, report.JSON, report.SARIF} {
		var buf bytes.Buffer
		if err := r.Write(&buf, format, true); err != nil {
			t.Fatal(err)
		}
		for _, s := range []string{imagetest.AWSKey, imagetest.GitHubPAT, imagetest.GitHubPAT2, imagetest.SlackBot, imagetest.Stripe, imagetest.NPMToken, imagetest.NPMToken2, imagetest.NPMToken3, imagetest.DockerPassword, imagetest.DBPassword, imagetest.GitHubPAT[4:20], imagetest.SSHKey(t)[40:80]} {
			if bytes.Contains(buf.Bytes(), []byte(s)) {
				t.Errorf("%s report contains the secret %.8s…", format, s)
			}
		}
	}
}

func TestDecoysGiveNoFindings(t *testing.T) {
	d := newDetector(t, detector.Options{})
	r, err := d.ScanImage(context.Background(), decoyImage(t), "decoy")
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Findings) != 0 {
		for _, f := range r.Findings {
			t.Errorf("decoy finding: %s %s %s %s", f.Rule, f.Path, f.Key, f.Secret)
		}
	}
}

func TestScanBinaries(t *testing.T) {
	for _, scanBinaries := range []bool{false, true} {
		t.Run(fmt.Sprint(scanBinaries), func(t *testing.T) {
			d := newDetector(t, detector.Options{ScanBinaries: scanBinaries})
			r, err := d.ScanImage(context.Background(), leakyImage(t), "leaky")
			if err != nil {
				t.Fatal(err)
			}
			found := false
			for _, f := range r.Findings {
				found = found || f.Path == "/bin/tool"
			}
			if found != scanBinaries {
				t.Errorf("finding in /bin/tool = %v; want %v", found, scanBinaries)
			}
		})
	}
}

func TestReportGolden(t *testing.T) {
	d := newDetector(t, detector.Options{})
	r, err := d.ScanImage(context.Background(), leakyImage(t), "leaky")
	if err != nil {
		t.Fatal(err)
	}
	r.Stats.DurationMS = 0
	for _, format := range []report.Format{report.JSON, report.SARIF, report.Text} {
		t.Run(string(format), func(t *testing.T) {
			var buf bytes.Buffer
			if err := r.Write(&buf, format, false); err != nil {
				t.Fatal(err)
			}
			golden := filepath.Join("testdata", "leaky."+string(format)+".golden")
			if *update {
				if err := os.WriteFile(golden, buf.Bytes(), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test -update)", err)
			}
			if diff := cmp.Diff(string(want), buf.String()); diff != "" {
				t.Errorf("%s report differs from %s (-want +got):\n%s", format, golden, diff)
			}
		})
	}
}

// wantLeaky is what scanning leakyImage finds.
var wantLeaky = []brief{
	{Rule: "generic-api-key", Path: "Env", Status: "metadata", Key: "DB_PASSWORD", Layer: -1},
	{Rule: "npm-access-token", Path: "History", Status: "metadata", Key: "NPM_TOKEN", Layer: -1},
	{Rule: "github-pat", Path: "Labels", Status: "metadata", Key: "ci.token", Layer: -1},
	{Rule: "aws-access-token", Path: "/app/.env", Status: "deleted", Layer: 0},
	{Rule: "github-pat", Path: "/app/config/token.txt", Status: "overwritten", Layer: 0},
	{Rule: "stripe-access-token", Path: "/app/lib/app.jar!config/application.properties", Status: "present", Layer: 0},
	{Rule: "npm-access-token", Path: "/app/vendor.tar.gz!secrets/npm.txt", Status: "present", Layer: 0},
	{Rule: "slack-bot-token", Path: "/opt/old/slack.txt", Status: "deleted", Layer: 0},
	{Rule: "sidekey-docker-config-auth", Path: "/root/.docker/config.json", Status: "present", Layer: 0},
	{Rule: "sidekey-npmrc-auth", Path: "/root/.npmrc", Status: "present", Layer: 0},
	{Rule: "sidekey-private-key-file", Path: "/root/.ssh/id_ed25519", Status: "present", Layer: 0},
}

func detectorOptions() detector.Options { return detector.Options{} }

// BenchmarkScanImage scans an image made of the Go tree's net and crypto sources (a
// smaller cousin of hack/bench-detect.sh's image):
//
//	go test ./detector -run XXX -bench ScanImage -benchtime 3x
func BenchmarkScanImage(b *testing.B) {
	var steps []imagetest.Step
	var size int64
	for _, dir := range []string{"src/net", "src/crypto"} {
		var entries []imagetest.Entry
		root := filepath.Join(runtime.GOROOT(), dir)
		_ = filepath.WalkDir(root, func(p string, de fs.DirEntry, err error) error {
			if err != nil || !de.Type().IsRegular() {
				return nil
			}
			data, err := os.ReadFile(p)
			if err == nil {
				entries = append(entries, imagetest.File(strings.TrimPrefix(p, "/"), string(data)))
				size += int64(len(data))
			}
			return nil
		})
		steps = append(steps, imagetest.Step{Layer: imagetest.Layer(b, entries...), CreatedBy: "COPY " + dir})
	}
	img := imagetest.Image(b, v1.Config{}, steps)
	d := newDetector(b, detector.Options{})
	b.SetBytes(size)
	for b.Loop() {
		if _, err := d.ScanImage(context.Background(), img, "bench"); err != nil {
			b.Fatal(err)
		}
	}
}

// TestCreatedByRedacted: layer findings show their layer's history line, which carries
// build-argument values (`RUN |1 NPM_TOKEN=...`); the report must not.
func TestCreatedByRedacted(t *testing.T) {
	layer := imagetest.Layer(t, imagetest.File("app/.npmrc", "//registry.npmjs.org/:_authToken="+imagetest.NPMToken+"\n"))
	img := imagetest.Image(t, v1.Config{}, []imagetest.Step{{Layer: layer,
		CreatedBy: "RUN |2 NPM_TOKEN=" + imagetest.NPMToken3 + " VERSION=1.2.3 /bin/sh -c curl -H 'Authorization: token " + imagetest.GitHubPAT + "' x"}})
	r, err := newDetector(t, detector.Options{}).ScanImage(context.Background(), img, "build-args")
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := r.WriteJSON(&buf); err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{imagetest.NPMToken3, imagetest.GitHubPAT, imagetest.NPMToken} {
		if bytes.Contains(buf.Bytes(), []byte(s)) {
			t.Errorf("report contains %.8s…:\n%s", s, buf.String())
		}
	}
	want := "RUN |2 NPM_TOKEN=npm_…REDACTED VERSION=REDACTED /bin/sh -c curl -H 'Authorization: token ghp_…REDACTED' x"
	for _, f := range r.Findings {
		if f.Source == report.SourceLayer && f.CreatedBy != want {
			t.Errorf("created_by = %q; want %q", f.CreatedBy, want)
		}
	}
}

// TestHistoryFindingCarriesItsLayer: a build argument leaked through `RUN |1 KEY=VALUE` is
// reported with the layer that RUN made (index, diff_id, redacted created_by), so the user
// knows which layer to rebuild; history entries that made no layer have none.
func TestHistoryFindingCarriesItsLayer(t *testing.T) {
	base := imagetest.Layer(t, imagetest.File("app/main.go", "package main\n"))
	run := imagetest.Layer(t, imagetest.File("app/node_modules/.keep", ""))
	img := imagetest.Image(t, v1.Config{}, []imagetest.Step{
		{Layer: base, CreatedBy: "COPY . /app # buildkit"},
		{Layer: run, CreatedBy: "RUN |1 NPM_TOKEN=" + imagetest.NPMToken3 + " /bin/sh -c npm ci"},
	}, v1.History{CreatedBy: "RUN |1 GH_TOKEN=" + imagetest.GitHubPAT + " /bin/sh -c true"})
	r, err := newDetector(t, detector.Options{}).ScanImage(context.Background(), img, "build-args")
	if err != nil {
		t.Fatal(err)
	}
	diffIDs := func() []string {
		cf, err := img.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, d := range cf.RootFS.DiffIDs {
			out = append(out, d.String())
		}
		return out
	}()
	got := map[string]*report.Finding{}
	for i, f := range r.Findings {
		if f.Path == "History" {
			got[f.Key] = &r.Findings[i]
		}
	}
	npm, gh := got["NPM_TOKEN"], got["GH_TOKEN"]
	if npm == nil || gh == nil {
		t.Fatalf("history findings = %v; want NPM_TOKEN and GH_TOKEN", got)
	}
	if npm.LayerIndex == nil || *npm.LayerIndex != 1 || npm.LayerDiffID != diffIDs[1] || !strings.Contains(npm.CreatedBy, "NPM_TOKEN=npm_…REDACTED") {
		t.Errorf("NPM_TOKEN finding: layer %v, diff_id %q, created_by %q; want layer 1, %s, redacted created_by",
			npm.LayerIndex, npm.LayerDiffID, npm.CreatedBy, diffIDs[1])
	}
	if npm.Status != report.Metadata {
		t.Errorf("NPM_TOKEN status = %q; want %q", npm.Status, report.Metadata)
	}
	if gh.LayerIndex != nil {
		t.Errorf("GH_TOKEN (empty_layer history) has layer %d; want none", *gh.LayerIndex)
	}
}
