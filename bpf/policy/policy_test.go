package policy_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/sidekey/sidekey/bpf"
	"github.com/sidekey/sidekey/bpf/policy"
	"github.com/sidekey/sidekey/bpf/probetest"
)

// journal records the map operations State makes, in order: the order is the point
// (readers before their watch, the watch before its readers on removal).
type journal []string

func (j *journal) Watch(dev, id uint32, enforce bool) error {
	*j = append(*j, fmt.Sprintf("watch %d id=%d enforce=%t", dev, id, enforce))
	return nil
}
func (j *journal) Unwatch(dev uint32) error {
	*j = append(*j, fmt.Sprintf("unwatch %d", dev))
	return nil
}
func (j *journal) Allow(k bpf.AllowKey) error {
	*j = append(*j, fmt.Sprintf("allow %d ino=%d", k.Watch, k.Exe.Ino))
	return nil
}
func (j *journal) Disallow(k bpf.AllowKey) error {
	*j = append(*j, fmt.Sprintf("disallow %d ino=%d", k.Watch, k.Exe.Ino))
	return nil
}

func reader(ino uint64) policy.Reader { return policy.Reader{Exe: bpf.FileID{Dev: 1, Ino: ino}} }

func TestStateOrder(t *testing.T) {
	tests := []struct {
		name  string
		steps func(s *policy.State) error
		want  journal
	}{
		{"new watch: readers first", func(s *policy.State) error {
			_, err := s.Put("a", policy.Watch{Dev: 7, Readers: []policy.Reader{reader(1)}})
			return err
		}, journal{"allow 7 ino=1", "watch 7 id=1 enforce=false"}},
		{"update: add new reader, set watch, then drop old reader", func(s *policy.State) error {
			if _, err := s.Put("a", policy.Watch{Dev: 7, Readers: []policy.Reader{reader(1)}}); err != nil {
				return err
			}
			_, err := s.Put("a", policy.Watch{Dev: 7, Enforce: true, Readers: []policy.Reader{reader(2)}})
			return err
		}, journal{"allow 7 ino=1", "watch 7 id=1 enforce=false", "allow 7 ino=2", "watch 7 id=1 enforce=true", "disallow 7 ino=1"}},
		{"delete unwatches", func(s *policy.State) error {
			if _, err := s.Put("a", policy.Watch{Dev: 7, Readers: []policy.Reader{reader(1)}}); err != nil {
				return err
			}
			return s.Delete("a")
		}, journal{"allow 7 ino=1", "watch 7 id=1 enforce=false", "unwatch 7"}},
		{"device reused by a new owner replaces the stale one", func(s *policy.State) error {
			if _, err := s.Put("old-pod", policy.Watch{Dev: 7, Readers: []policy.Reader{reader(1)}}); err != nil {
				return err
			}
			if _, err := s.Put("new-pod", policy.Watch{Dev: 7, Readers: []policy.Reader{reader(2)}}); err != nil {
				return err
			}
			if _, ok := s.Get("old-pod"); ok {
				return errors.New("stale owner kept")
			}
			return nil
		}, journal{"allow 7 ino=1", "watch 7 id=1 enforce=false", "allow 7 ino=2", "watch 7 id=2 enforce=false", "disallow 7 ino=1"}},
		{"owner moves to another device", func(s *policy.State) error {
			if _, err := s.Put("a", policy.Watch{Dev: 7}); err != nil {
				return err
			}
			_, err := s.Put("a", policy.Watch{Dev: 8})
			return err
		}, journal{"watch 7 id=1 enforce=false", "unwatch 7", "watch 8 id=1 enforce=false"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var j journal
			s := policy.NewState(&j)
			if err := tt.steps(s); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, j); diff != "" {
				t.Errorf("map operations mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestStateByID(t *testing.T) {
	var j journal
	s := policy.NewState(&j)
	a, _ := s.Put("a", policy.Watch{Dev: 7, Dir: "/a"})
	b, _ := s.Put("b", policy.Watch{Dev: 8, Dir: "/b"})
	if got, ok := s.ByID(b.ID); !ok || got.Dir != "/b" {
		t.Errorf("ByID(%d) = %+v, %t; want /b", b.ID, got, ok)
	}
	if a.ID == b.ID || s.Len() != 2 {
		t.Errorf("ids %d, %d, len %d; want distinct ids, 2 watches", a.ID, b.ID, s.Len())
	}
}

func TestTmpfsDev(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting tmpfs needs root")
	}
	mnt := probetest.MountTmpfs(t)
	sub := filepath.Join(mnt, "sub")
	if err := os.Mkdir(sub, 0o700); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		dir     string
		wantErr error
	}{
		{mnt, nil},
		{sub, policy.ErrNotMountPoint},
		{t.TempDir(), policy.ErrNotTmpfs},
		{filepath.Join(mnt, "missing"), os.ErrNotExist},
	}
	for _, tt := range tests {
		dev, err := policy.TmpfsDev(tt.dir)
		if !errors.Is(err, tt.wantErr) {
			t.Errorf("TmpfsDev(%s) = %v; want %v", tt.dir, err, tt.wantErr)
		}
		if err == nil {
			id, _ := bpf.StatID(tt.dir)
			if dev != id.Dev {
				t.Errorf("TmpfsDev(%s) = %s; want %s", tt.dir, bpf.FormatDev(dev), bpf.FormatDev(id.Dev))
			}
		}
	}
}

func TestStandalone(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting tmpfs needs root")
	}
	a, b := probetest.MountTmpfs(t), probetest.MountTmpfs(t)
	ws, err := policy.Standalone([]string{a, b}, []string{"/bin/cat"}, true)
	if err != nil {
		t.Fatal(err)
	}
	cat, _ := bpf.StatID("/bin/cat")
	if len(ws) != 2 || !ws[0].Enforce || len(ws[1].Readers) != 1 || ws[1].Readers[0].Exe != cat {
		t.Errorf("Standalone = %+v; want 2 enforced watches allowing /bin/cat", ws)
	}
	if _, err := policy.Standalone([]string{a, a}, nil, false); err == nil {
		t.Error("the same tmpfs twice: no error")
	}
	if _, err := policy.Standalone([]string{a}, []string{"/nonexistent/app"}, false); err == nil {
		t.Error("a missing allowed reader: no error")
	}
	if _, err := policy.Standalone([]string{a}, []string{"/bin"}, false); err == nil {
		t.Error("a directory as allowed reader: no error")
	}
}
