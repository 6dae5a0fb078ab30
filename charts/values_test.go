package charts

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestValues(t *testing.T) {
	tests := []struct {
		name, in string
		want     []Value
		wantErr  string
	}{
		{
			name: "leaves and documented maps",
			in: `# file header

# -- Replicas.
replicas: 2
webhook:
  # -- Resources of the
  # webhook container.
  resources:
    limits:
      memory: 64Mi
  # -- Extra args.
  extraArgs: []
`,
			want: []Value{
				{Key: "replicas", Type: "int", Default: "2", Description: "Replicas."},
				{Key: "webhook.resources", Type: "map", Default: `{"limits":{"memory":"64Mi"}}`, Description: "Resources of the webhook container."},
				{Key: "webhook.extraArgs", Type: "list", Default: "[]", Description: "Extra args."},
			},
		},
		{
			name:    "undocumented leaf",
			in:      "a:\n  # plain comment\n  b: true\n",
			wantErr: "values.yaml:3: a.b has no",
		},
		{name: "not a map", in: "- 1\n", wantErr: "want a map"},
		{name: "empty string default", in: "# -- Tag.\ntag: \"\"\n", want: []Value{{Key: "tag", Type: "string", Default: `""`, Description: "Tag."}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Values([]byte(tt.in))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Values() error = %v; want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(tt.want, got); d != "" {
				t.Errorf("Values() (-want +got):\n%s", d)
			}
		})
	}
}

func FuzzValues(f *testing.F) {
	f.Add([]byte("# -- A.\na: 1\nb:\n  # -- C.\n  c: [x]\n"))
	f.Add([]byte("a: {b: 1}\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		vals, _ := Values(b)
		for _, v := range vals {
			if v.Key == "" || v.Description == "" {
				t.Fatalf("Values() returned %+v without key or description", v)
			}
		}
	})
}
