package cluster

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// Images built by the cluster from the host's static busybox and imported into containerd.
// Pods use them with imagePullPolicy Never or IfNotPresent: nothing is ever pulled.
const (
	// AppImage is a small test app: busybox with every applet in /bin (sh, cat, sha256sum, ...).
	AppImage = "sidekey.test/app:e2e"
	// PauseImage is the pods' sandbox image: a shell that sleeps, reaps and exits on SIGTERM.
	PauseImage = "sidekey.test/pause:e2e"
)

// busyboxPath is the static busybox of the Debian package busybox-static.
const busyboxPath = "/bin/busybox"

// BusyboxImage returns an image holding the host's static busybox at /bin/busybox with a
// symlink per applet in /bin, a world-writable /tmp, and the given entrypoint and command.
func BusyboxImage(entrypoint, cmd []string) (v1.Image, error) {
	return BusyboxImageAt("/bin/busybox", entrypoint, cmd)
}

// BusyboxImageAt is BusyboxImage with busybox at another absolute path (the /bin symlinks
// point there; /bin/busybox itself then does not exist).
func BusyboxImageAt(path string, entrypoint, cmd []string) (v1.Image, error) {
	layer, err := busyboxLayer(strings.TrimPrefix(path, "/"))
	if err != nil {
		return nil, err
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	cf.Config.Entrypoint, cf.Config.Cmd = entrypoint, cmd
	cf.Config.Env = []string{"PATH=/bin"}
	return mutate.ConfigFile(img, cf)
}

func busyboxLayer(at string) (v1.Layer, error) {
	bb, err := os.ReadFile(busyboxPath)
	if err != nil {
		return nil, fmt.Errorf("read %s (install busybox-static: make deps): %w", busyboxPath, err)
	}
	out, err := exec.Command(busyboxPath, "--list").Output()
	if err != nil {
		return nil, fmt.Errorf("%s --list: %w", busyboxPath, err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	mod := time.Unix(0, 0)
	dir := func(name string, mode int64) error {
		return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: mode, ModTime: mod})
	}
	dirs := []string{"bin/", "etc/", "proc/", "sys/", "dev/", "run/"}
	for d := filepath.Dir(at); d != "." && d != "bin"; d = filepath.Dir(d) {
		dirs = append(dirs, d+"/")
	}
	slices.Sort(dirs)
	for _, d := range dirs {
		if err := dir(d, 0o755); err != nil {
			return nil, err
		}
	}
	if err := dir("tmp/", 0o1777); err != nil {
		return nil, err
	}
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: at, Mode: 0o755, Size: int64(len(bb)), ModTime: mod}); err != nil {
		return nil, err
	}
	if _, err := tw.Write(bb); err != nil {
		return nil, err
	}
	for _, applet := range strings.Fields(string(out)) {
		if applet == "busybox" || strings.Contains(applet, "/") {
			continue
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: "bin/" + applet, Linkname: "/" + at, Mode: 0o777, ModTime: mod}); err != nil {
			return nil, err
		}
	}
	passwd := []byte("root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n")
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "etc/passwd", Mode: 0o644, Size: int64(len(passwd)), ModTime: mod}); err != nil {
		return nil, err
	}
	if _, err := tw.Write(passwd); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	b := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
}

// WriteArchive writes images as one docker-archive tarball (`docker save` format), the form
// `ctr images import` and `sidekey detect image docker-archive:PATH` read.
func WriteArchive(path string, images map[string]v1.Image) error {
	refs := map[name.Tag]v1.Image{}
	for ref, img := range images {
		tag, err := name.NewTag(ref)
		if err != nil {
			return fmt.Errorf("image reference %q: %w", ref, err)
		}
		refs[tag] = img
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return tarball.MultiWriteToFile(path, refs)
}

// baseImages writes the sandbox and the test app image into dir and returns the archive.
func baseImages(dir string) (string, error) {
	app, err := BusyboxImage(nil, []string{"sh"})
	if err != nil {
		return "", fmt.Errorf("build %s: %w", AppImage, err)
	}
	pause, err := BusyboxImage([]string{"/bin/sh", "-c", "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait; done"}, nil)
	if err != nil {
		return "", fmt.Errorf("build %s: %w", PauseImage, err)
	}
	p := filepath.Join(dir, "base-images.tar")
	if err := WriteArchive(p, map[string]v1.Image{AppImage: app, PauseImage: pause}); err != nil {
		return "", fmt.Errorf("write %s: %w", p, err)
	}
	return p, nil
}

// ImportImages imports a docker-archive or OCI tarball into the node's containerd (namespace
// k8s.io, where the kubelet looks).
func (c *Cluster) ImportImages(archive string) error {
	out, err := exec.Command("ctr", "-a", c.ContainerdSocket, "-n", "k8s.io", "images", "import", "--all-platforms", archive).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ctr images import %s: %w: %s", archive, err, out)
	}
	return nil
}

// WriteImage writes img as ref into a docker-archive in dir and returns its path.
func WriteImage(dir, ref string, img v1.Image) (string, error) {
	p := filepath.Join(dir, strings.NewReplacer("/", "_", ":", "_").Replace(ref)+".tar")
	return p, WriteArchive(p, map[string]v1.Image{ref: img})
}

// ImportImage writes img as ref and imports it into the node's containerd.
func (c *Cluster) ImportImage(ref string, img v1.Image) error {
	p, err := WriteImage(filepath.Join(c.Dir, "images"), ref, img)
	if err != nil {
		return err
	}
	return c.ImportImages(p)
}
