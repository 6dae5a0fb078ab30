package deploy

import (
	"archive/tar"
	"bytes"
	"crypto/rand"
	"io"
	"math/big"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/sidekey/sidekey/test/cluster"
)

// Leak is what LeakyImage baked into its image.
type Leak struct {
	FileToken string // in /app/.env, added by layer 1 and deleted by layer 2
	File      string
	FileLayer int
	ArgToken  string // a build argument, in the history (created_by) of layer 2
	ArgLayer  int
}

// LeakyImage builds an app image the way a careless Dockerfile does: COPY .env (a GitHub
// token) in one layer, `RUN rm` it in the next, which also ran with the token as a build
// argument. The final filesystem has no secret; the layers and the config do. CleanImage is
// the same app built without them.
func LeakyImage() (v1.Image, Leak, error) {
	leak := Leak{FileToken: githubToken(), File: "/app/.env", FileLayer: 1, ArgToken: githubToken(), ArgLayer: 2}
	base, err := cluster.BusyboxImage(nil, []string{"/app/run.sh"})
	if err != nil {
		return nil, leak, err
	}
	env, err := layer(map[string]string{"app/.env": "GITHUB_TOKEN=" + leak.FileToken + "\n"})
	if err != nil {
		return nil, leak, err
	}
	rm, err := layer(map[string]string{"app/.wh..env": "", "app/run.sh": runScript})
	if err != nil {
		return nil, leak, err
	}
	img, err := mutate.Append(base,
		mutate.Addendum{Layer: env, History: v1.History{CreatedBy: "COPY .env /app/.env # buildkit", Created: epoch}},
		mutate.Addendum{Layer: rm, History: v1.History{
			CreatedBy: "RUN |1 GITHUB_TOKEN=" + leak.ArgToken + " /bin/sh -c ./fetch-deps.sh && rm /app/.env # buildkit",
			Created:   epoch,
		}},
	)
	return img, leak, err
}

// CleanImage is LeakyImage's app built right: the token is a runtime secret (sidekey's job),
// not part of the image.
func CleanImage() (v1.Image, error) {
	base, err := cluster.BusyboxImage(nil, []string{"/app/run.sh"})
	if err != nil {
		return nil, err
	}
	app, err := layer(map[string]string{"app/run.sh": runScript})
	if err != nil {
		return nil, err
	}
	return mutate.Append(base, mutate.Addendum{Layer: app, History: v1.History{CreatedBy: "COPY run.sh /app/run.sh # buildkit", Created: epoch}})
}

const runScript = "#!/bin/sh\necho app ready\n"

var epoch = v1.Time{Time: time.Unix(0, 0)}

func layer(files map[string]string) (v1.Layer, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: "app/", Mode: 0o755}); err != nil {
		return nil, err
	}
	for name, body := range files {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o755, Size: int64(len(body))}); err != nil {
			return nil, err
		}
		if _, err := io.WriteString(tw, body); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	b := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
}

// githubToken returns a random token in the shape of a GitHub personal access token.
func githubToken() string {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
	b := []byte("ghp_")
	for range 36 {
		n, err := rand.Int(rand.Reader, big.NewInt(int64(len(alphabet))))
		if err != nil {
			panic(err)
		}
		b = append(b, alphabet[n.Int64()])
	}
	return string(b)
}
