package examples

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	yaml "go.yaml.in/yaml/v3"

	"github.com/sidekey/sidekey/hack/images/ocibuild"
	"github.com/sidekey/sidekey/internal/testenv"
)

// The docker-build example cannot run here (no Docker engine): its CI files are checked for
// shape, and the images its two Dockerfiles produce are built in Go, layer for layer and history
// line for history line, for the real `sidekey detect` to judge.

const dockerDir = "docker-build"

func TestDockerBuildCIFiles(t *testing.T) {
	t.Run("github actions", func(t *testing.T) {
		var wf struct {
			Permissions map[string]string `yaml:"permissions"`
			Jobs        map[string]struct {
				Steps []struct {
					Name string            `yaml:"name"`
					Uses string            `yaml:"uses"`
					Run  string            `yaml:"run"`
					With map[string]string `yaml:"with"`
					If   string            `yaml:"if"`
				} `yaml:"steps"`
			} `yaml:"jobs"`
		}
		readYAML(t, filepath.Join(dockerDir, ".github", "workflows", "image-lint.yml"), &wf)
		if wf.Permissions["security-events"] != "write" {
			t.Errorf("permissions.security-events = %q; want write (SARIF upload)", wf.Permissions["security-events"])
		}
		job, ok := wf.Jobs["image-lint"]
		if !ok {
			t.Fatalf("no image-lint job")
		}
		var script []string
		sarif := ""
		for _, s := range job.Steps {
			script = append(script, s.Run)
			if strings.HasPrefix(s.Uses, "github/codeql-action/upload-sarif@") {
				sarif = s.With["sarif_file"]
				if s.If != "always()" {
					t.Errorf("upload-sarif if = %q; want always() so findings are uploaded when detect fails", s.If)
				}
			}
		}
		wantInOrder(t, strings.Join(script, "\n"), "docker buildx build", "--secret id=npmrc", "docker save -o image.tar",
			"sidekey detect image docker-archive:image.tar --format sarif --output sidekey.sarif")
		if sarif != "sidekey.sarif" {
			t.Errorf("upload-sarif sarif_file = %q; want sidekey.sarif", sarif)
		}
	})
	t.Run("gitlab ci", func(t *testing.T) {
		var ci map[string]yaml.Node
		readYAML(t, filepath.Join(dockerDir, ".gitlab-ci.yml"), &ci)
		node, ok := ci["image-lint"]
		if !ok {
			t.Fatal("no image-lint job")
		}
		var job struct {
			Stage     string   `yaml:"stage"`
			Script    []string `yaml:"script"`
			Artifacts struct {
				When  string   `yaml:"when"`
				Paths []string `yaml:"paths"`
			} `yaml:"artifacts"`
		}
		if err := node.Decode(&job); err != nil {
			t.Fatalf("image-lint job: %v", err)
		}
		var stages []string
		if n, ok := ci["stages"]; !ok || n.Decode(&stages) != nil || !slices.Contains(stages, job.Stage) {
			t.Errorf("job stage %q not among stages %v", job.Stage, stages)
		}
		wantInOrder(t, strings.Join(job.Script, "\n"), "docker build --secret id=npmrc", "docker save -o image.tar",
			"sidekey detect image docker-archive:image.tar --format sarif --output sidekey.sarif")
		if job.Artifacts.When != "always" || len(job.Artifacts.Paths) != 1 || job.Artifacts.Paths[0] != "sidekey.sarif" {
			t.Errorf("artifacts = %+v; want sidekey.sarif, always", job.Artifacts)
		}
	})
	t.Run("makefile", func(t *testing.T) {
		// make -n parses the Makefile and prints the recipe without running it.
		out, err := exec.Command("make", "-n", "-C", dockerDir, "image-lint", "IMAGE=shop:test", "HOME=/home/ci").CombinedOutput()
		if err != nil {
			t.Fatalf("make -n image-lint: %v\n%s", err, out)
		}
		wantInOrder(t, string(out), "docker build --secret id=npmrc,src=/home/ci/.npmrc -f Dockerfile -t shop:test .",
			"docker save -o out/image.tar shop:test", "sidekey detect dockerfile Dockerfile",
			"sidekey detect image docker-archive:out/image.tar --format sarif --output out/sidekey.sarif")
	})
	t.Run("dockerfiles", func(t *testing.T) {
		fixed := readFile(t, filepath.Join(dockerDir, "Dockerfile"))
		leaky := readFile(t, filepath.Join(dockerDir, "Dockerfile.leaky"))
		if !strings.Contains(fixed, "RUN --mount=type=secret,id=npmrc") || strings.Contains(fixed, "\nARG ") {
			t.Errorf("Dockerfile: want the token as RUN --mount=type=secret and no ARG")
		}
		wantInOrder(t, leaky, "ARG NPM_TOKEN", "> /app/.npmrc", "RUN rm /app/.npmrc")
	})
}

// npmToken makes a fresh token of npm's format for each run: no credential-shaped literal
// lives in the repository.
func npmToken(t *testing.T) string {
	const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
	b := make([]byte, 36)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return "npm_" + string(b)
}

var epoch = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// buildShop builds the image a Dockerfile of the example makes, on a stand-in for
// node:22-alpine (the base is not what is judged). leaky follows Dockerfile.leaky, otherwise
// Dockerfile.
func buildShop(t *testing.T, leaky bool, token string) v1.Image {
	t.Helper()
	layer := func(files ...ocibuild.File) v1.Layer {
		l, err := ocibuild.Layer(epoch, files...)
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	var app []ocibuild.File
	for _, f := range []string{"package.json", "server.js"} {
		app = append(app, ocibuild.File{Path: "app/" + f, Data: []byte(readFile(t, filepath.Join(dockerDir, "app", f)))})
	}
	base := ocibuild.Step{CreatedBy: "FROM node:22-alpine (stand-in)", Layer: layer(
		ocibuild.File{Path: "etc/alpine-release", Data: []byte("3.21.0\n")},
		ocibuild.File{Path: "usr/local/bin/node", Mode: 0o755, Data: []byte("#!/bin/sh\n")},
	)}
	modules := ocibuild.File{Path: "app/node_modules/.package-lock.json", Data: []byte(`{"name":"shop","lockfileVersion":3,"packages":{}}`)}
	var steps []ocibuild.Step
	if leaky {
		// BuildKit and the classic builder record the build args in front of each RUN.
		run := "RUN |1 NPM_TOKEN=" + token + " /bin/sh -c "
		steps = []ocibuild.Step{
			base,
			{CreatedBy: "ARG NPM_TOKEN"},
			{CreatedBy: "WORKDIR /app", Layer: layer(ocibuild.File{Path: "app", Dir: true})},
			{CreatedBy: "COPY app/package.json ./ # buildkit", Layer: layer(app[0])},
			{CreatedBy: run + `echo "//registry.npmjs.org/:_authToken=${NPM_TOKEN}" > /app/.npmrc # buildkit`,
				Layer: layer(ocibuild.File{Path: "app/.npmrc", Data: []byte("//registry.npmjs.org/:_authToken=" + token + "\n")})},
			{CreatedBy: run + "npm install --omit=dev # buildkit", Layer: layer(modules)},
			{CreatedBy: run + "rm /app/.npmrc # buildkit", Layer: layer(ocibuild.File{Path: "app/.wh..npmrc"})},
			{CreatedBy: "COPY app/ ./ # buildkit", Layer: layer(app...)},
			{CreatedBy: "USER node"},
			{CreatedBy: `CMD ["node" "server.js"]`},
		}
	} else {
		steps = []ocibuild.Step{
			base,
			{CreatedBy: "WORKDIR /app", Layer: layer(ocibuild.File{Path: "app", Dir: true})},
			{CreatedBy: "COPY /app/node_modules ./node_modules # buildkit", Layer: layer(modules)},
			{CreatedBy: "COPY app/ ./ # buildkit", Layer: layer(app...)},
			{CreatedBy: "USER node"},
			{CreatedBy: `CMD ["node" "server.js"]`},
		}
	}
	img, err := ocibuild.Image(epoch, v1.Platform{OS: "linux", Architecture: "amd64"},
		v1.Config{User: "node", WorkingDir: "/app", Cmd: []string{"node", "server.js"}, Env: []string{"PATH=/usr/local/bin:/usr/bin:/bin", "NODE_VERSION=22.12.0"}},
		steps...)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// TestDockerBuildDetect is the lint step itself: `sidekey detect` fails the leaky image, naming
// both leaks, and passes the fixed one; its SARIF report is what the CI files upload.
func TestDockerBuildDetect(t *testing.T) {
	sidekey := sidekeyBinary(t)
	token := npmToken(t)
	dir := t.TempDir()
	archive := func(leaky bool) string {
		p := filepath.Join(dir, map[bool]string{true: "leaky.tar", false: "fixed.tar"}[leaky])
		ref, err := name.ParseReference("shop:" + strings.TrimSuffix(filepath.Base(p), ".tar"))
		if err != nil {
			t.Fatal(err)
		}
		if err := tarball.MultiRefWriteToFile(p, map[name.Reference]v1.Image{ref: buildShop(t, leaky, token)}); err != nil {
			t.Fatal(err)
		}
		return p
	}
	leaky, fixed := archive(true), archive(false)

	t.Run("leaky image fails", func(t *testing.T) {
		out, code := run(t, sidekey, "detect", "image", "docker-archive:"+leaky, "--format", "json")
		if code != 1 {
			t.Fatalf("sidekey detect leaky image: exit %d; want 1 (findings)\n%s", code, out)
		}
		var rep struct {
			Findings []struct {
				Rule, Source, Path, Status, Secret, CreatedBy string
			} `json:"findings"`
		}
		if err := json.Unmarshal(out, &rep); err != nil {
			t.Fatalf("JSON report: %v\n%s", err, out)
		}
		var deletedFile, history bool
		for _, f := range rep.Findings {
			if strings.Contains(f.Secret, token[8:]) {
				t.Errorf("finding %s/%s shows the secret unredacted: %q", f.Source, f.Path, f.Secret)
			}
			if f.Source == "layer" && strings.HasSuffix(f.Path, "app/.npmrc") && f.Status == "deleted" {
				deletedFile = true
			}
			if f.Source == "config" {
				history = true
			}
		}
		if !deletedFile || !history {
			t.Errorf("findings %+v: want the deleted app/.npmrc (deleted file) and the build arg (config history)", rep.Findings)
		}
		if bytes.Contains(out, []byte(token)) {
			var raw struct {
				Findings []map[string]any `json:"findings"`
			}
			_ = json.Unmarshal(out, &raw)
			for _, f := range raw.Findings {
				for k, v := range f {
					if s, ok := v.(string); ok && strings.Contains(s, token) {
						t.Errorf("finding %v/%v: field %q holds the token in full; a report must redact it (the layer's history line carries the build arg value)", f["source"], f["path"], k)
					}
				}
			}
		}
	})
	t.Run("leaky image sarif", func(t *testing.T) {
		sarif := filepath.Join(dir, "sidekey.sarif")
		if out, code := run(t, sidekey, "detect", "image", "docker-archive:"+leaky, "--format", "sarif", "--output", sarif); code != 1 {
			t.Fatalf("exit %d; want 1\n%s", code, out)
		}
		var doc struct {
			Version string `json:"version"`
			Runs    []struct {
				Results []json.RawMessage `json:"results"`
			} `json:"runs"`
		}
		text := readFile(t, sarif)
		if err := json.Unmarshal([]byte(text), &doc); err != nil {
			t.Fatal(err)
		}
		if strings.Contains(text, token) {
			t.Errorf("the SARIF report holds the token in full; it is uploaded to code scanning, so it must redact it")
		}
		if doc.Version != "2.1.0" || len(doc.Runs) != 1 || len(doc.Runs[0].Results) < 2 {
			t.Errorf("SARIF version %q, runs %d: want 2.1.0 with the findings as results", doc.Version, len(doc.Runs))
		}
	})
	t.Run("leaky image text", func(t *testing.T) {
		// The text report goes to CI logs (the Makefile and GitLab job print it on failure).
		out, code := run(t, sidekey, "detect", "image", "docker-archive:"+leaky, "--format", "text", "--color", "never")
		if code != 1 || !bytes.Contains(out, []byte(".npmrc")) {
			t.Fatalf("exit %d; want 1 and a report naming .npmrc\n%s", code, out)
		}
		if bytes.Contains(out, []byte(token)) {
			t.Errorf("the text report holds the token in full; it must redact it")
		}
	})
	t.Run("fixed image passes", func(t *testing.T) {
		if out, code := run(t, sidekey, "detect", "image", "docker-archive:"+fixed, "--format", "json"); code != 0 {
			t.Fatalf("sidekey detect fixed image: exit %d; want 0\n%s", code, out)
		}
	})
	t.Run("fixed Dockerfile passes", func(t *testing.T) {
		if out, code := run(t, sidekey, "detect", "dockerfile", filepath.Join(dockerDir, "Dockerfile")); code != 0 {
			t.Fatalf("sidekey detect dockerfile Dockerfile: exit %d; want 0\n%s", code, out)
		}
	})
}

var (
	buildOnce sync.Once
	buildDir  string
	buildErr  error
)

// sidekeyBinary builds cmd/sidekey once per test run.
func sidekeyBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		root, err := testenv.RepoRoot()
		if err != nil {
			buildErr = err
			return
		}
		buildDir, buildErr = os.MkdirTemp("", "sidekey-examples-")
		if buildErr != nil {
			return
		}
		cmd := exec.Command("go", "build", "-o", filepath.Join(buildDir, "sidekey"), "./cmd/sidekey")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = errors.New("go build ./cmd/sidekey: " + err.Error() + "\n" + string(out))
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return filepath.Join(buildDir, "sidekey")
}

func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// run runs a command and returns its stdout and exit code (stderr is logged).
func run(t *testing.T, bin string, args ...string) ([]byte, int) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if errb.Len() > 0 {
		t.Logf("%s %s: stderr:\n%s", filepath.Base(bin), strings.Join(args, " "), errb.String())
	}
	var ee *exec.ExitError
	switch {
	case err == nil:
		return out.Bytes(), 0
	case errors.As(err, &ee):
		return out.Bytes(), ee.ExitCode()
	default:
		t.Fatal(err)
		return nil, -1
	}
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func readYAML(t *testing.T, p string, v any) {
	t.Helper()
	if err := yaml.Unmarshal([]byte(readFile(t, p)), v); err != nil {
		t.Fatalf("%s: %v", p, err)
	}
}

// wantInOrder checks that s contains each part, in order.
func wantInOrder(t *testing.T, s string, parts ...string) {
	t.Helper()
	rest := s
	for _, p := range parts {
		i := strings.Index(rest, p)
		if i < 0 {
			t.Errorf("want %q (after the previous parts) in:\n%s", p, s)
			return
		}
		rest = rest[i+len(p):]
	}
}
