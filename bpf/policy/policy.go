// Package policy is the probe's watch set: which tmpfs superblocks are watched, in which
// mode, and which executables may read them. State applies changes to the kernel maps in
// an order that never flags an allowed reader (readers before the watch, the watch before
// its readers on removal).
package policy

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/sidekey/sidekey/bpf"
)

// Watch is one watched tmpfs and who may read it.
type Watch struct {
	ID      uint32 // assigned by State; events carry it
	Dir     string // host path of the tmpfs mount point
	Dev     uint32 // superblock device, kernel encoding
	Enforce bool
	Readers []Reader
	// Namespace, Pod and PodUID name the pod owning the tmpfs in Kubernetes mode.
	Namespace, Pod, PodUID string
}

// Reader is an allowed reader: an executable, optionally only in one cgroup.
type Reader struct {
	Exe       bpf.FileID
	CgroupID  uint64 // 0: any
	Path      string // as declared (annotation or --allow), for logs
	Container string // where it was resolved, in Kubernetes mode
}

// Maps is what State needs from the loaded probe; *bpf.Probe implements it.
type Maps interface {
	Watch(dev, id uint32, enforce bool) error
	Unwatch(dev uint32) error
	Allow(k bpf.AllowKey) error
	Disallow(k bpf.AllowKey) error
}

// State is the current watch set, keyed by its owner (a --watch dir, a pod UID).
type State struct {
	mu     sync.Mutex
	maps   Maps
	byKey  map[string]Watch
	ids    map[string]uint32
	nextID uint32
}

// NewState returns an empty watch set applied to m.
func NewState(m Maps) *State {
	return &State{maps: m, byKey: map[string]Watch{}, ids: map[string]uint32{}}
}

func allowKeys(w Watch) map[bpf.AllowKey]struct{} {
	keys := make(map[bpf.AllowKey]struct{}, len(w.Readers))
	for _, r := range w.Readers {
		keys[bpf.AllowKey{Watch: w.Dev, Exe: r.Exe, CgroupID: r.CgroupID}] = struct{}{}
	}
	return keys
}

// Put adds or replaces the watch owned by key and returns it with its ID.
func (s *State) Put(key string, w Watch) (Watch, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	id, ok := s.ids[key]
	if !ok {
		s.nextID++
		id = s.nextID
		s.ids[key] = id
	}
	w.ID = id
	old, had := s.byKey[key]
	if had && old.Dev != w.Dev {
		if err := s.maps.Unwatch(old.Dev); err != nil {
			return w, err
		}
		had = false
	}
	// A device is reused once its tmpfs is gone: a stale owner of w.Dev loses it.
	oldKeys := map[bpf.AllowKey]struct{}{}
	if had {
		oldKeys = allowKeys(old)
	}
	for k, o := range s.byKey {
		if k != key && o.Dev == w.Dev {
			for ak := range allowKeys(o) {
				oldKeys[ak] = struct{}{}
			}
			delete(s.byKey, k)
		}
	}
	newKeys := allowKeys(w)
	var errs []error
	for k := range newKeys {
		if _, ok := oldKeys[k]; !ok {
			errs = append(errs, s.maps.Allow(k))
		}
	}
	errs = append(errs, s.maps.Watch(w.Dev, w.ID, w.Enforce))
	for k := range oldKeys {
		if _, ok := newKeys[k]; !ok {
			errs = append(errs, s.maps.Disallow(k))
		}
	}
	s.byKey[key] = w
	return w, errors.Join(errs...)
}

// Delete removes the watch owned by key, if any.
func (s *State) Delete(key string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	w, ok := s.byKey[key]
	if !ok {
		return nil
	}
	delete(s.byKey, key)
	delete(s.ids, key)
	return s.maps.Unwatch(w.Dev)
}

// ByID returns the watch an event's WatchID names.
func (s *State) ByID(id uint32) (Watch, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, w := range s.byKey {
		if w.ID == id {
			return w, true
		}
	}
	return Watch{}, false
}

// Get returns the watch owned by key.
func (s *State) Get(key string) (Watch, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	w, ok := s.byKey[key]
	return w, ok
}

// Keys returns the owners of the current watches.
func (s *State) Keys() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	keys := make([]string, 0, len(s.byKey))
	for k := range s.byKey {
		keys = append(keys, k)
	}
	return keys
}

// Len is the number of watches.
func (s *State) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.byKey)
}

// Errors returned by TmpfsDev.
var (
	ErrNotTmpfs      = errors.New("not on a tmpfs")
	ErrNotMountPoint = errors.New("not a mount point")
)

// TmpfsDev checks that dir is the mount point of a tmpfs and returns its device (kernel
// encoding).
func TmpfsDev(dir string) (uint32, error) {
	var fs unix.Statfs_t
	if err := unix.Statfs(dir, &fs); err != nil {
		return 0, fmt.Errorf("watch %s: %w", dir, err)
	}
	if fs.Type != unix.TMPFS_MAGIC {
		return 0, fmt.Errorf("watch %s: %w", dir, ErrNotTmpfs)
	}
	var st, parent unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		return 0, fmt.Errorf("watch %s: %w", dir, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return 0, fmt.Errorf("watch %s: not a directory", dir)
	}
	if err := unix.Stat(filepath.Join(dir, ".."), &parent); err != nil {
		return 0, fmt.Errorf("watch %s: %w", dir, err)
	}
	if parent.Dev == st.Dev && parent.Ino != st.Ino {
		return 0, fmt.Errorf("watch %s: %w (a directory inside a tmpfs; watch its mount point)", dir, ErrNotMountPoint)
	}
	return bpf.KernelDev(st.Dev), nil
}

// ExecutableID returns the identity of the executable at path (symlinks followed),
// checking that it is a regular file.
func ExecutableID(path string) (bpf.FileID, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return bpf.FileID{}, fmt.Errorf("allowed reader %s: %w", path, err)
	}
	if !fi.Mode().IsRegular() {
		return bpf.FileID{}, fmt.Errorf("allowed reader %s: not a regular file", path)
	}
	id, err := bpf.StatID(path)
	if err != nil {
		return bpf.FileID{}, fmt.Errorf("allowed reader %s: %w", path, err)
	}
	return id, nil
}

// Standalone builds the watches for `sidekey probe --watch DIR... --allow EXE...`: every
// allowed executable may read every watched tmpfs.
func Standalone(dirs, allow []string, enforce bool) ([]Watch, error) {
	var readers []Reader
	for _, a := range allow {
		id, err := ExecutableID(a)
		if err != nil {
			return nil, err
		}
		readers = append(readers, Reader{Exe: id, Path: a})
	}
	seen := map[uint32]string{}
	var watches []Watch
	for _, d := range dirs {
		abs, err := filepath.Abs(d)
		if err != nil {
			return nil, fmt.Errorf("watch %s: %w", d, err)
		}
		dev, err := TmpfsDev(abs)
		if err != nil {
			return nil, err
		}
		if prev, ok := seen[dev]; ok {
			return nil, fmt.Errorf("watch %s: same tmpfs as %s", d, prev)
		}
		seen[dev] = d
		watches = append(watches, Watch{Dir: abs, Dev: dev, Enforce: enforce, Readers: readers})
	}
	return watches, nil
}
