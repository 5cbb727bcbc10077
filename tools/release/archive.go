package main

import (
	"archive/tar"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// archiveFile is one file of an archive: its name there, and where it is
// read from.
type archiveFile struct {
	Name, Source string
	Mode         int64
}

// archiveFiles is what a target's archive holds: the binary at the top
// (where install.sh takes it from), the README, the systemd unit of
// `handoff proxy` (for a binary in /usr/local/bin, where install.sh puts
// it), and the completions and man pages.
func archiveFiles(repo, bin string, d Docs) []archiveFile {
	files := []archiveFile{
		{"handoff", bin, 0o755},
		{"README.md", filepath.Join(repo, "README.md"), 0o644},
		{"systemd/handoff-proxy.service", filepath.Join(repo, "deploy", "handoff-proxy.service"), 0o644},
	}
	for shell, path := range d.Completions {
		files = append(files, archiveFile{"completions/" + shell + "/" + filepath.Base(path), path, 0o644})
	}
	for _, page := range d.ManPages {
		files = append(files, archiveFile{"man/man1/" + filepath.Base(page), page, 0o644})
	}
	return files
}

// writeArchive writes a tar.gz of files, the same bytes for the same
// files: sorted, owned by root, every time the commit's.
func writeArchive(name string, files []archiveFile, mtime time.Time) (err error) {
	f, err := os.Create(name)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}()
	zw, err := gzip.NewWriterLevel(f, gzip.BestCompression)
	if err != nil {
		return err
	}
	tw := tar.NewWriter(zw)
	sort.Slice(files, func(i, j int) bool { return files[i].Name < files[j].Name })
	written := map[string]bool{}
	for _, file := range files {
		// Each directory once, before its first file, so that tar
		// extracts it with a sane mode whatever the umask.
		var parents []string
		for dir := path.Dir(file.Name); dir != "." && !written[dir]; dir = path.Dir(dir) {
			parents = append([]string{dir}, parents...)
			written[dir] = true
		}
		for _, dir := range parents {
			hdr := &tar.Header{Name: dir + "/", Mode: 0o755, ModTime: mtime, Typeflag: tar.TypeDir}
			if err := tw.WriteHeader(hdr); err != nil {
				return err
			}
		}
		data, err := os.ReadFile(file.Source)
		if err != nil {
			return err
		}
		hdr := &tar.Header{Name: file.Name, Mode: file.Mode, Size: int64(len(data)), ModTime: mtime, Typeflag: tar.TypeReg}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if _, err := tw.Write(data); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return zw.Close()
}

// writeChecksums writes checksums.txt: the sha256 of each named file in
// out, as sha256sum prints them.
func writeChecksums(out string, names []string) error {
	sort.Strings(names)
	var b strings.Builder
	for _, n := range names {
		sum, err := sha256File(filepath.Join(out, n))
		if err != nil {
			return err
		}
		fmt.Fprintf(&b, "%s  %s\n", sum, n)
	}
	return os.WriteFile(filepath.Join(out, ChecksumsFile), []byte(b.String()), 0o644)
}

func sha256File(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
