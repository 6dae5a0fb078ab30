// Command gendocs writes docs/reference.md: it builds sidekey and sidekey-agent, reads their
// --help, and renders the reference with the injector's annotation table and the chart's values.
//
//	go run ./docs/gendocs -out docs/reference.md   (or: go generate ./docs)
package main

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/sidekey/sidekey/docs"
)

func main() {
	out := flag.String("out", "reference.md", "file to write")
	flag.Parse()
	if err := run(*out); err != nil {
		fmt.Fprintln(os.Stderr, "gendocs:", err)
		os.Exit(1)
	}
}

func run(out string) error {
	root, err := repoRoot()
	if err != nil {
		return err
	}
	tmp, err := os.MkdirTemp("", "gendocs-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	helps, err := docs.Helps(root, tmp)
	if err != nil {
		return err
	}
	values, err := os.ReadFile(filepath.Join(root, "charts", "sidekey", "values.yaml"))
	if err != nil {
		return err
	}
	ref, err := docs.Reference(helps, values)
	if err != nil {
		return err
	}
	tmpOut := out + ".tmp"
	if err := os.WriteFile(tmpOut, []byte(ref), 0o644); err != nil {
		return err
	}
	return os.Rename(tmpOut, out)
}

func repoRoot() (string, error) {
	b, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	return filepath.Dir(string(b[:len(b)-1])), nil
}
