// Package archive walks archives found inside layers — zip (jar, war, ear), tar, and gzip
// (tar.gz, tgz, single gzip files) — recognised by magic bytes, never by file name.
//
// Walk streams members to a callback; the caller decides whether a member is itself an
// archive and recurses with depth+1. A Budget shared by one top-level file caps the depth,
// the total expanded bytes and the expansion ratio, so a zip bomb is reported, not followed.
package archive

import (
	"archive/tar"
	"archive/zip"
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"path"
	"strings"
	"sync"

	"github.com/klauspost/compress/gzip"
)

// Kind is an archive format.
type Kind int

// Archive kinds recognised by Sniff.
const (
	None Kind = iota
	Zip
	Tar
	Gzip
)

func (k Kind) String() string {
	return [...]string{"none", "zip", "tar", "gzip"}[k]
}

// HeadSize is how many leading bytes Sniff needs to recognise every kind.
const HeadSize = 512

// Sniff recognises an archive from its first bytes.
func Sniff(head []byte) Kind {
	switch {
	case len(head) >= 4 && bytes.Equal(head[:4], []byte("PK\x03\x04")):
		return Zip
	case len(head) >= 4 && bytes.Equal(head[:4], []byte("PK\x05\x06")):
		return Zip // empty zip
	case len(head) >= 3 && head[0] == 0x1f && head[1] == 0x8b && head[2] == 8:
		return Gzip
	case len(head) >= 262 && bytes.Equal(head[257:262], []byte("ustar")):
		return Tar
	}
	return None
}

// Errors a walk stops with; all name a cap so the message tells the user what to raise.
var (
	ErrBomb     = errors.New("expansion ratio above the limit (possible zip bomb); not followed")
	ErrTooLarge = errors.New("expanded size above the limit; not followed")
	ErrTooDeep  = errors.New("nested deeper than the archive depth limit; not followed")
)

// Limits caps archive expansion.
type Limits struct {
	// MaxDepth is how many archive levels are opened (1: archives in layers, not archives in them).
	MaxDepth int
	// MaxExpanded caps the bytes expanded from one top-level file, all levels together.
	MaxExpanded int64
	// MaxRatio caps expanded/compressed bytes of one compressed stream or zip member
	// (checked once a stream has expanded beyond 1 MiB).
	MaxRatio int64
	// MaxZipBytes caps the size of a zip held in memory (zip needs random access).
	MaxZipBytes int64
}

// DefaultLimits are the limits the CLI starts from.
var DefaultLimits = Limits{MaxDepth: 4, MaxExpanded: 1 << 30, MaxRatio: 200, MaxZipBytes: 64 << 20}

// Budget tracks one top-level file's expansion against Limits. Not safe for concurrent use.
type Budget struct {
	Limits
	expanded int64
}

// NewBudget starts a budget for one top-level file.
func NewBudget(l Limits) *Budget { return &Budget{Limits: l} }

// Expanded is how many bytes were expanded so far.
func (b *Budget) Expanded() int64 { return b.expanded }

// FileFunc receives one regular member: its name inside the archive, its size (-1 when not
// known up front) and its content, valid only during the call.
type FileFunc func(name string, size int64, r io.Reader) error

// Walk calls fn for every regular member of the archive of kind k read from r. depth is the
// level of this archive (1 for an archive found directly in a layer). A gzip stream holding
// a tar is walked as that tar (members appear directly, not under the gzip's inner name);
// any other gzip content is one member named after the gzip header or the outer name.
func Walk(k Kind, r io.Reader, name string, depth int, b *Budget, fn FileFunc) error {
	if depth > b.MaxDepth {
		return ErrTooDeep
	}
	switch k {
	case Tar:
		return walkTar(r, fn)
	case Gzip:
		return walkGzip(r, name, b, fn)
	case Zip:
		return walkZip(r, b, fn)
	}
	return fmt.Errorf("not an archive")
}

func walkTar(r io.Reader, fn FileFunc) error {
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read tar: %w", err)
		}
		if h.Typeflag != tar.TypeReg && h.Typeflag != tar.TypeRegA {
			continue
		}
		if err := fn(CleanName(h.Name), h.Size, tr); err != nil {
			return err
		}
	}
}

// Readers are reused: images hold thousands of small gzip files (man pages, changelogs).
var (
	gzipReaders sync.Pool // *gzip.Reader
	bufReaders  = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 64<<10) }}
)

func walkGzip(r io.Reader, name string, b *Budget, fn FileFunc) error {
	in := &countReader{r: r}
	var zr *gzip.Reader
	var err error
	if pooled, ok := gzipReaders.Get().(*gzip.Reader); ok {
		zr, err = pooled, pooled.Reset(in)
	} else {
		zr, err = gzip.NewReader(in)
	}
	if err != nil {
		return fmt.Errorf("read gzip: %w", err)
	}
	defer func() {
		zr.Close()
		gzipReaders.Put(zr)
	}()
	out := &capReader{r: zr, in: in, b: b}
	br := bufReaders.Get().(*bufio.Reader)
	br.Reset(out)
	defer func() {
		br.Reset(nil)
		bufReaders.Put(br)
	}()
	head, _ := br.Peek(HeadSize)
	if Sniff(head) == Tar {
		return walkTar(br, fn)
	}
	inner := zr.Name
	if inner == "" {
		inner = strings.TrimSuffix(strings.TrimSuffix(path.Base(name), ".gz"), ".tgz")
		if inner == "" || inner == "." {
			inner = "content"
		}
	}
	if err := fn(CleanName(inner), -1, br); err != nil {
		return err
	}
	// Drain so a truncated or corrupt stream is reported.
	if _, err := io.Copy(io.Discard, br); err != nil {
		return fmt.Errorf("read gzip: %w", err)
	}
	return nil
}

func walkZip(r io.Reader, b *Budget, fn FileFunc) error {
	data, err := io.ReadAll(io.LimitReader(r, b.MaxZipBytes+1))
	if err != nil {
		return fmt.Errorf("read zip: %w", err)
	}
	if int64(len(data)) > b.MaxZipBytes {
		return fmt.Errorf("zip larger than %d bytes held in memory: %w", b.MaxZipBytes, ErrTooLarge)
	}
	zr, err := zip.NewReader(bytes.NewReader(data), int64(len(data)))
	if err != nil {
		return fmt.Errorf("read zip: %w", err)
	}
	for _, f := range zr.File {
		if f.Mode().IsDir() || !f.Mode().IsRegular() {
			continue
		}
		if f.CompressedSize64 > 0 && f.UncompressedSize64 > 1<<20 && f.UncompressedSize64/f.CompressedSize64 > uint64(b.MaxRatio) {
			return fmt.Errorf("member %s: %w", f.Name, ErrBomb)
		}
		if b.expanded+int64(f.UncompressedSize64) > b.MaxExpanded {
			return fmt.Errorf("member %s: %w", f.Name, ErrTooLarge)
		}
		rc, err := f.Open()
		if err != nil {
			return fmt.Errorf("open zip member %s: %w", f.Name, err)
		}
		in := &countReader{n: int64(f.CompressedSize64)}
		out := &capReader{r: rc, in: in, b: b}
		err = fn(CleanName(f.Name), int64(f.UncompressedSize64), out)
		if err == nil {
			// Drain to check the member's CRC and size.
			_, err = io.Copy(io.Discard, out)
			if err != nil {
				err = fmt.Errorf("read zip member %s: %w", f.Name, err)
			}
		}
		rc.Close()
		if err != nil {
			return err
		}
	}
	return nil
}

// CleanName turns an archive member name into a slash path without a leading slash, "./"
// or any ".." element (a ".." that would climb above the root is dropped).
func CleanName(name string) string {
	name = strings.ReplaceAll(name, "\\", "/")
	c := path.Clean("/" + name)
	return strings.TrimPrefix(c, "/")
}

type countReader struct {
	r io.Reader
	n int64
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// capReader counts expanded bytes against the budget and the ratio against in.
type capReader struct {
	r   io.Reader
	in  *countReader
	out int64
	b   *Budget
}

func (c *capReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.out += int64(n)
	c.b.expanded += int64(n)
	if c.b.expanded > c.b.MaxExpanded {
		return n, ErrTooLarge
	}
	if c.out > 1<<20 && c.out > c.b.MaxRatio*max(c.in.n, 1) {
		return n, ErrBomb
	}
	return n, err
}
