package agent

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/sidekey/sidekey/injector/spec"
)

// ErrNotMemory is returned when the mount path is not a memory file system.
var ErrNotMemory = errors.New("not a memory file system (tmpfs or ramfs)")

// Filesystem magic numbers from statfs(2).
const (
	tmpfsMagic = 0x01021994
	ramfsMagic = 0x858458f6
)

// Writer writes secret files atomically inside one directory: a hidden temp file in the same
// directory, then rename, so a reader sees the old file or the new one, never a part. Every
// operation goes through an os.Root, so a symlink planted in the mount cannot lead outside it.
type Writer struct {
	dir       string
	root      *os.Root
	allowDisk bool
	// written holds the SHA-256 of what this Writer last wrote to each file, so an unchanged
	// secret is recognised without reading the file back (which a 0400 file owned by the
	// app's uid would not allow).
	written map[string][sha256.Size]byte
}

// NewWriter opens dir for writing secret files. It refuses a directory that is not on tmpfs
// or ramfs unless allowDisk is set (local development only).
func NewWriter(dir string, allowDisk bool) (*Writer, error) {
	if err := CheckMemoryFS(dir); err != nil && !allowDisk {
		return nil, err
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("open mount path: %w", err)
	}
	return &Writer{dir: dir, root: root, allowDisk: allowDisk, written: map[string][sha256.Size]byte{}}, nil
}

// CheckMemoryFS returns an error wrapping ErrNotMemory when dir is on a disk-backed file system.
func CheckMemoryFS(dir string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return fmt.Errorf("statfs mount path %s: %w", dir, err)
	}
	switch uint32(st.Type) {
	case tmpfsMagic, ramfsMagic:
		return nil
	}
	return fmt.Errorf("refusing to write secrets to %s: %w (statfs type 0x%x); mount an emptyDir with medium: Memory there, or pass --allow-disk for local development", dir, ErrNotMemory, uint32(st.Type))
}

// Close releases the directory.
func (w *Writer) Close() error { return w.root.Close() }

// Dir is the directory files are written into.
func (w *Writer) Dir() string { return w.dir }

// Write makes file (relative to the directory) hold content with the given mode and owner.
// It reports whether the content changed and whether a file was there before; an unchanged
// file is left alone (its mode and owner are corrected if they drifted).
func (w *Writer) Write(file string, content []byte, mode spec.Mode, uid, gid *int64) (changed, existed bool, err error) {
	name, err := spec.CleanFile(file)
	if err != nil {
		return false, false, err
	}
	if !w.allowDisk {
		if err := CheckMemoryFS(w.dir); err != nil {
			return false, false, err
		}
	}
	if dir := path.Dir(name); dir != "." {
		if err := w.root.MkdirAll(dir, 0o750); err != nil {
			return false, false, fmt.Errorf("create directory %s in the mount: %w", dir, err)
		}
	}
	sum := sha256.Sum256(content)
	if prev, ok := w.written[name]; ok {
		if _, err := w.root.Lstat(name); err == nil {
			if prev == sum {
				return false, true, w.fixAttrs(name, mode, uid, gid)
			}
			existed = true
		}
	} else {
		// First write of this file by this process (e.g. the sidecar restarted): compare with
		// what is there, if it can be read.
		old, err := w.read(name)
		switch {
		case err == nil:
			existed = true
			if bytes.Equal(old, content) {
				w.written[name] = sum
				return false, true, w.fixAttrs(name, mode, uid, gid)
			}
		case errors.Is(err, fs.ErrNotExist):
		default:
			existed = true // there, but unreadable to us: replace it
		}
	}
	if err := w.replace(name, content, mode, uid, gid); err != nil {
		return false, existed, err
	}
	w.written[name] = sum
	return true, existed, nil
}

func (w *Writer) read(name string) ([]byte, error) {
	f, err := w.root.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(f)
}

func (w *Writer) fixAttrs(name string, mode spec.Mode, uid, gid *int64) error {
	fi, err := w.root.Lstat(name)
	if err != nil {
		return fmt.Errorf("stat %s: %w", name, err)
	}
	if fi.Mode().Perm() != fs.FileMode(mode) {
		if err := w.root.Chmod(name, fs.FileMode(mode)); err != nil {
			return fmt.Errorf("chmod %s: %w", name, err)
		}
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if ok && ((uid != nil && int64(st.Uid) != *uid) || (gid != nil && int64(st.Gid) != *gid)) {
		if err := w.root.Lchown(name, idOr(uid), idOr(gid)); err != nil {
			return fmt.Errorf("chown %s: %w", name, err)
		}
	}
	return nil
}

func idOr(id *int64) int {
	if id == nil {
		return -1
	}
	return int(*id)
}

// replace writes a temp file beside name and renames it over name.
func (w *Writer) replace(name string, content []byte, mode spec.Mode, uid, gid *int64) (err error) {
	var rnd [6]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return fmt.Errorf("temp name: %w", err)
	}
	tmp := path.Join(path.Dir(name), ".sidekey-"+hex.EncodeToString(rnd[:])+".tmp")
	f, err := w.root.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("create temp file for %s: %w", name, err)
	}
	defer func() {
		if err != nil {
			f.Close()
			_ = w.root.Remove(tmp)
		}
	}()
	if _, err := f.Write(content); err != nil {
		return fmt.Errorf("write temp file for %s: %w", name, err)
	}
	if uid != nil || gid != nil {
		if err := f.Chown(idOr(uid), idOr(gid)); err != nil {
			return fmt.Errorf("chown %s to %d:%d: %w", name, idOr(uid), idOr(gid), err)
		}
	}
	if err := f.Chmod(fs.FileMode(mode)); err != nil {
		return fmt.Errorf("chmod %s: %w", name, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", name, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close temp file for %s: %w", name, err)
	}
	if err := w.root.Rename(tmp, name); err != nil {
		return fmt.Errorf("rename temp file over %s: %w", name, err)
	}
	return nil
}
