package apply

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestObjects(t *testing.T) {
	tests := []struct {
		name, in string
		want     []string // kind/name
		wantErr  string
	}{
		{name: "stream with empty and comment-only documents",
			in:   "---\n# only a comment\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: a\n---\n\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: b\n",
			want: []string{"ServiceAccount/a", "Service/b"}},
		{name: "empty", in: "", want: nil},
		{name: "not an object", in: "- 1\n- 2\n", wantErr: "YAML document 1"},
		{name: "no kind", in: "apiVersion: v1\nmetadata:\n  name: a\n", wantErr: "YAML document 1"},
		{name: "bad YAML", in: "a: [\n", wantErr: "YAML document 1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			objs, err := Objects([]byte(tt.in))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Objects() error = %v; want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, o := range objs {
				got = append(got, o.GetKind()+"/"+o.GetName())
			}
			if d := cmp.Diff(tt.want, got); d != "" {
				t.Errorf("Objects() (-want +got):\n%s", d)
			}
		})
	}
}

func FuzzObjects(f *testing.F) {
	f.Add([]byte("apiVersion: v1\nkind: Pod\nmetadata:\n  name: a\n---\nkind: X\n"))
	f.Add([]byte("---\n---\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		objs, err := Objects(b)
		if err != nil {
			return
		}
		for _, o := range objs {
			if o.GetKind() == "" {
				t.Fatalf("Objects(%q) returned an object without kind", b)
			}
		}
	})
}
