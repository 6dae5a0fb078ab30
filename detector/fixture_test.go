package detector_test

import (
	"encoding/base64"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/sidekey/sidekey/detector/internal/imagetest"
)

// leakyImage has a secret in every place the detector must look.
func leakyImage(t testing.TB) v1.Image {
	t.Helper()
	jar := imagetest.Zip(t,
		imagetest.File("META-INF/MANIFEST.MF", "Manifest-Version: 1.0\n"),
		imagetest.File("config/application.properties", "server.port=8080\nstripe.key="+imagetest.Stripe+"\n"))
	tgz := imagetest.TarGz(t,
		imagetest.File("README", "vendored\n"),
		imagetest.File("secrets/npm.txt", "//registry.npmjs.org/:_authToken="+imagetest.NPMToken+"\n"))
	dockerAuth := base64.StdEncoding.EncodeToString([]byte("ci:" + imagetest.DockerPassword))
	base := imagetest.Layer(t,
		imagetest.File("app/.env", "# app settings\nAWS_ACCESS_KEY_ID="+imagetest.AWSKey+"\n"),
		imagetest.File("app/config/token.txt", "token: "+imagetest.GitHubPAT+"\n"),
		imagetest.File("opt/old/slack.txt", "SLACK_BOT_TOKEN="+imagetest.SlackBot+"\n"),
		imagetest.File("app/lib/app.jar", string(jar)),
		imagetest.File("app/vendor.tar.gz", string(tgz)),
		imagetest.File("root/.npmrc", "registry=https://registry.npmjs.org/\n//registry.npmjs.org/:_authToken="+imagetest.NPMToken2+"\n"),
		imagetest.File("root/.docker/config.json", `{"auths":{"registry.example.com":{"auth":"`+dockerAuth+`"}}}`),
		imagetest.File("root/.ssh/id_ed25519", imagetest.SSHKey(t)),
		imagetest.File("bin/tool", "\x7fELF\x02\x01\x01\x00\x00token="+imagetest.GitHubPAT2),
	)
	overwrite := imagetest.Layer(t, imagetest.File("app/config/token.txt", "token: none\n"))
	remove := imagetest.Layer(t, imagetest.Whiteout("app", ".env"), imagetest.Opaque("opt/old"))
	return imagetest.Image(t, v1.Config{
		Env:    []string{"PATH=/usr/local/bin:/usr/bin", "DB_PASSWORD=" + imagetest.DBPassword, "API_TOKEN=${API_TOKEN}"},
		Labels: map[string]string{"maintainer": "team@example.com", "ci.token": imagetest.GitHubPAT2},
	}, []imagetest.Step{
		{Layer: base, CreatedBy: "COPY . / # buildkit"},
		{Layer: overwrite, CreatedBy: "RUN /bin/sh -c echo 'token: none' > /app/config/token.txt"},
		{Layer: remove, CreatedBy: "RUN /bin/sh -c rm -rf /app/.env /opt/old/*"},
	}, v1.History{CreatedBy: "RUN |1 NPM_TOKEN=" + imagetest.NPMToken3 + " /bin/sh -c npm ci"})
}

// decoyImage is full of things that look like secrets and are not.
func decoyImage(t testing.TB) v1.Image {
	t.Helper()
	lock := `{"name":"app","lockfileVersion":3,"packages":{"node_modules/left-pad":{"version":"1.3.0","integrity":"sha512-XI5MPzVNApjAyhQzphX8BkmKsKUxD4LdyK24iZeQM/LiGBGrl1lHfL6qaJmkMdvSw7vrEdFkgGTIdD4GFV4zvQ=="}}}`
	yarn := "left-pad@^1.3.0:\n  version \"1.3.0\"\n  resolved \"https://registry.yarnpkg.com/left-pad/-/left-pad-1.3.0.tgz#5b8a3a7765dfe001261dde915589e782f8c94d1e\"\n  integrity sha512-XI5MPzVNApjAyhQzphX8BkmKsKUxD4LdyK24iZeQM/LiGBGrl1lHfL6qaJmkMdvSw7vrEdFkgGTIdD4GFV4zvQ==\n"
	sums := "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08  app.tar.gz\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855  empty.txt\n"
	uuids := "id,name\n3f2504e0-4f89-11d3-9a0c-0305e82c3301,alpha\n6ba7b810-9dad-11d1-80b4-00c04fd430c8,beta\n"
	docs := "Configure the AWS CLI:\n\n    aws_access_key_id = AKIAIOSFODNN7EXAMPLE\n    aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\n"
	envExample := "DATABASE_URL=${DATABASE_URL}\nAPI_KEY=${API_KEY}\nSECRET_TOKEN=changeme\nPASSWORD=<your-password>\n"
	npmrc := "//registry.npmjs.org/:_authToken=${NPM_TOKEN}\n"
	layer := imagetest.Layer(t,
		imagetest.File("app/package-lock.json", lock),
		imagetest.File("app/yarn.lock", yarn),
		imagetest.File("app/SHA256SUMS", sums),
		imagetest.File("app/ids.csv", uuids),
		imagetest.File("usr/share/doc/aws/README.md", docs),
		imagetest.File("app/.env.example", envExample),
		imagetest.File("app/.npmrc", npmrc),
		imagetest.File("app/main.go", "package main\n\nfunc main() { key := lookup(\"api_key\"); _ = key }\n"),
	)
	return imagetest.Image(t, v1.Config{
		Env:    []string{"PATH=/usr/bin", "DB_PASSWORD=${DB_PASSWORD}", "API_KEY=changeme", "GITHUB_TOKEN=", "TOKEN_FILE=/run/secrets/token"},
		Labels: map[string]string{"org.opencontainers.image.revision": "5b8a3a7765dfe001261dde915589e782f8c94d1e"},
	}, []imagetest.Step{{Layer: layer, CreatedBy: "COPY . /app"}},
		v1.History{CreatedBy: "ARG NPM_TOKEN"}, v1.History{CreatedBy: "RUN |1 NPM_TOKEN=${NPM_TOKEN} /bin/sh -c npm ci"})
}
