// Command bench measures `sidekey detect image` against `gitleaks dir` in the same run.
//
// It builds a large image from directories on this machine (one layer per directory, plus
// a layer of known secrets and a layer deleting one of them, and a secret in the config),
// writes it as an OCI layout, flattens its final filesystem into a directory, then times
// both scanners under /usr/bin/time -v and prints wall time, peak RSS, the ratio and whether
// sidekey found every (file, line) gitleaks found. hack/bench-detect.sh runs it.
package main

import (
	"archive/tar"
	"bufio"
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

func main() {
	dirs := flag.String("dirs", "/usr/local/go,/usr/share", "comma-separated directories, one image layer each")
	work := flag.String("work", "", "work directory (default: a new temporary directory, removed at the end)")
	sidekey := flag.String("sidekey", "", "sidekey binary")
	gitleaks := flag.String("gitleaks", "", "gitleaks v8.30.1 binary")
	skipGitleaks := flag.Bool("skip-gitleaks", false, "time sidekey only")
	flag.Parse()
	log.SetFlags(0)
	if *sidekey == "" || (*gitleaks == "" && !*skipGitleaks) {
		log.Fatal("bench: -sidekey and -gitleaks are required")
	}
	wd := *work
	if wd == "" {
		d, err := os.MkdirTemp("", "bench-detect-")
		check(err)
		defer os.RemoveAll(d)
		wd = d
	}

	t0 := time.Now()
	img := buildImage(strings.Split(*dirs, ","))
	imgDir := filepath.Join(wd, "image")
	p, err := layout.Write(imgDir, empty.Index)
	check(err)
	check(p.AppendImage(img))
	flat := filepath.Join(wd, "flat")
	files, size := flatten(img, flat)
	log.Printf("image: %d layers, %d files, %.0f MiB uncompressed in the final filesystem (built in %s)",
		len(must(img.Layers())), files, float64(size)/(1<<20), time.Since(t0).Round(time.Second))

	skReport := filepath.Join(wd, "sidekey.json")
	sk := timed(*sidekey, "detect", "image", "oci:"+imgDir, "--format", "json", "--output", skReport, "--progress", "never", "--ignore-file", "")
	log.Printf("sidekey detect image: %s wall, %s CPU, %.0f MiB peak RSS, exit %d", sk.wall.Round(10*time.Millisecond), sk.cpu.Round(10*time.Millisecond), float64(sk.rssKiB)/1024, sk.exit)
	var rep struct {
		Findings []struct {
			Rule, Path, Status string
			Line               int
		}
		Problems []struct{ Message string }
		Stats    struct {
			Layers int
			Files  int64
			Bytes  int64
		}
	}
	data, err := os.ReadFile(skReport)
	check(err)
	check(json.Unmarshal(data, &rep))
	statuses := map[string]int{}
	for _, f := range rep.Findings {
		statuses[f.Status]++
	}
	log.Printf("sidekey: %d findings %v, %d problems; %d files (%.0f files/s), %.0f MiB matched",
		len(rep.Findings), statuses, len(rep.Problems), rep.Stats.Files, float64(rep.Stats.Files)/sk.wall.Seconds(), float64(rep.Stats.Bytes)/(1<<20))
	if *skipGitleaks {
		return
	}

	glReport := filepath.Join(wd, "gitleaks.json")
	gl := timed(*gitleaks, "dir", flat, "--report-format", "json", "--report-path", glReport, "--no-banner", "--exit-code", "0", "--log-level", "error")
	log.Printf("gitleaks dir: %s wall, %s CPU, %.0f MiB peak RSS, exit %d", gl.wall.Round(10*time.Millisecond), gl.cpu.Round(10*time.Millisecond), float64(gl.rssKiB)/1024, gl.exit)
	var theirs []struct {
		RuleID    string
		File      string
		StartLine int
	}
	data, err = os.ReadFile(glReport)
	check(err)
	check(json.Unmarshal(data, &theirs))
	ours := map[string]bool{}
	for _, f := range rep.Findings {
		ours[fmt.Sprintf("%s:%d", f.Path, f.Line)] = true
	}
	missed := 0
	for _, g := range theirs {
		rel, _ := filepath.Rel(flat, g.File)
		if !ours[fmt.Sprintf("/%s:%d", filepath.ToSlash(rel), g.StartLine)] {
			missed++
			log.Printf("  missed: %s /%s:%d", g.RuleID, rel, g.StartLine)
		}
	}
	log.Printf("parity: gitleaks %d findings on the flattened filesystem, sidekey missed %d of them", len(theirs), missed)
	log.Printf("RESULT sidekey/gitleaks wall time ratio %.3f (1/%.1f), CPU time ratio %.3f (1/%.1f), sidekey peak RSS %.0f MiB",
		sk.wall.Seconds()/gl.wall.Seconds(), gl.wall.Seconds()/sk.wall.Seconds(),
		sk.cpu.Seconds()/gl.cpu.Seconds(), gl.cpu.Seconds()/sk.cpu.Seconds(), float64(sk.rssKiB)/1024)
}

// buildImage makes one layer per directory, a layer of known secrets, a layer deleting one
// of them, and a config with a secret in Env.
func buildImage(dirs []string) v1.Image {
	img := empty.Image
	var err error
	for _, d := range dirs {
		d = strings.TrimSpace(d)
		img, err = mutate.Append(img, mutate.Addendum{Layer: dirLayer(d), History: v1.History{CreatedBy: "COPY " + d + " " + d}})
		check(err)
	}
	pat := "ghp_" + "8Xk2Lq9ZpR4vT7mN1cW5yB3hJ6gF0dS2aQ4e"
	aws := "AKIA" + "Q3EGRVPOLKJH7XYZ"
	secrets := tarLayer(map[string]string{
		"srv/app/.env":        "AWS_ACCESS_KEY_ID=" + aws + "\n",
		"srv/app/deploy.sh":   "curl -H 'Authorization: token " + pat + "' https://api.github.com/\n",
		"root/.npmrc":         "//registry.npmjs.org/:_authToken=npm_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8\n",
		"srv/app/removed.txt": "SLACK=xoxb-" + "1234567890123-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx\n",
	})
	img, err = mutate.Append(img, mutate.Addendum{Layer: secrets, History: v1.History{CreatedBy: "COPY app /srv/app"}})
	check(err)
	img, err = mutate.Append(img, mutate.Addendum{Layer: tarLayer(map[string]string{"srv/app/.wh.removed.txt": ""}), History: v1.History{CreatedBy: "RUN rm /srv/app/removed.txt"}})
	check(err)
	cf, err := img.ConfigFile()
	check(err)
	cf = cf.DeepCopy()
	cf.Config.Env = []string{"PATH=/usr/local/go/bin:/usr/bin", "GITHUB_TOKEN=" + pat}
	img, err = mutate.ConfigFile(img, cf)
	check(err)
	return img
}

func tarLayer(files map[string]string) v1.Layer {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for name, body := range files {
		check(tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(body)), Typeflag: tar.TypeReg}))
		_, err := io.WriteString(tw, body)
		check(err)
	}
	check(tw.Close())
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(buf.Bytes())), nil })
	check(err)
	return l
}

// dirLayer streams dir as a layer (regular files, directories, symlinks), its paths
// relative to /.
func dirLayer(dir string) v1.Layer {
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		pr, pw := io.Pipe()
		go func() {
			tw := tar.NewWriter(pw)
			err := filepath.WalkDir(dir, func(p string, de fs.DirEntry, err error) error {
				if err != nil {
					return nil // unreadable entries are left out
				}
				fi, err := de.Info()
				if err != nil {
					return nil
				}
				link := ""
				if fi.Mode()&fs.ModeSymlink != 0 {
					link, _ = os.Readlink(p)
				} else if !fi.Mode().IsRegular() && !fi.IsDir() {
					return nil
				}
				h, err := tar.FileInfoHeader(fi, link)
				if err != nil {
					return nil
				}
				h.Name = strings.TrimPrefix(p, "/")
				h.Uname, h.Gname, h.ModTime = "", "", time.Unix(0, 0)
				if fi.Mode().IsRegular() {
					f, err := os.Open(p)
					if err != nil {
						return nil
					}
					defer f.Close()
					if err := tw.WriteHeader(h); err != nil {
						return err
					}
					_, err = io.CopyN(tw, f, h.Size)
					return err
				}
				return tw.WriteHeader(h)
			})
			if err == nil {
				err = tw.Close()
			}
			pw.CloseWithError(err)
		}()
		return pr, nil
	})
	check(err)
	return l
}

// flatten extracts img's final filesystem (regular files, directories, symlinks) into dir.
func flatten(img v1.Image, dir string) (files int, size int64) {
	rc := mutate.Extract(img)
	defer rc.Close()
	tr := tar.NewReader(bufio.NewReaderSize(rc, 1<<20))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		check(err)
		p := filepath.Join(dir, filepath.Clean("/"+h.Name))
		switch h.Typeflag {
		case tar.TypeDir:
			check(os.MkdirAll(p, 0o755))
		case tar.TypeReg:
			check(os.MkdirAll(filepath.Dir(p), 0o755))
			f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
			check(err)
			n, err := io.Copy(f, tr)
			check(err)
			check(f.Close())
			files++
			size += n
		case tar.TypeSymlink:
			check(os.MkdirAll(filepath.Dir(p), 0o755))
			_ = os.Symlink(h.Linkname, p)
		}
	}
	return files, size
}

type measurement struct {
	wall   time.Duration
	cpu    time.Duration // user + system
	rssKiB int64
	exit   int
}

var (
	reWall = regexp.MustCompile(`Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)`)
	reRSS  = regexp.MustCompile(`Maximum resident set size \(kbytes\): (\d+)`)
	reUser = regexp.MustCompile(`User time \(seconds\): (\S+)`)
	reSys  = regexp.MustCompile(`System time \(seconds\): (\S+)`)
)

// timed runs a command under /usr/bin/time -v.
func timed(name string, args ...string) measurement {
	var stderr bytes.Buffer
	cmd := exec.Command("/usr/bin/time", append([]string{"-v", name}, args...)...)
	cmd.Stdout = io.Discard
	cmd.Stderr = &stderr
	err := cmd.Run()
	m := measurement{}
	if ee, ok := err.(*exec.ExitError); ok {
		m.exit = ee.ExitCode()
	} else {
		check(err)
	}
	out := stderr.String()
	w := reWall.FindStringSubmatch(out)
	r := reRSS.FindStringSubmatch(out)
	if w == nil || r == nil {
		log.Fatalf("bench: no /usr/bin/time output for %s:\n%s", name, out)
	}
	m.wall = parseClock(w[1])
	m.rssKiB, _ = strconv.ParseInt(r[1], 10, 64)
	for _, re := range []*regexp.Regexp{reUser, reSys} {
		if v := re.FindStringSubmatch(out); v != nil {
			f, _ := strconv.ParseFloat(v[1], 64)
			m.cpu += time.Duration(f * float64(time.Second))
		}
	}
	return m
}

// parseClock reads h:mm:ss or m:ss.cc.
func parseClock(s string) time.Duration {
	var d float64
	for _, part := range strings.Split(s, ":") {
		v, err := strconv.ParseFloat(part, 64)
		check(err)
		d = d*60 + v
	}
	return time.Duration(d * float64(time.Second))
}

func must[T any](v T, err error) T {
	check(err)
	return v
}

func check(err error) {
	if err != nil {
		log.Fatalf("bench: %v", err)
	}
}
