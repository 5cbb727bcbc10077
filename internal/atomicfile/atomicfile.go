// Package atomicfile writes files so that a reader, or a crash, never sees
// half of one: the state history and the user's Caddyfile are written this way.
package atomicfile

import (
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

// Write writes data to a temporary file beside path, syncs it and renames
// it over path, so a reader sees the old file or the new one, never half.
func Write(path string, data []byte, perm fs.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return write(path, data, perm, -1, -1)
}

// Replace writes data over the existing file at path the same way, and the
// new file keeps the old one's mode, owner and group. path must not be a
// symbolic link: resolve it first, so that the link stays a link.
func Replace(path string, data []byte) error {
	info, err := os.Lstat(path)
	if err != nil {
		return err
	}
	uid, gid := -1, -1
	if st, ok := info.Sys().(*syscall.Stat_t); ok {
		uid, gid = int(st.Uid), int(st.Gid)
	}
	return write(path, data, info.Mode().Perm(), uid, gid)
}

func write(path string, data []byte, perm fs.FileMode, uid, gid int) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*.tmp")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // a no-op after the rename
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if uid >= 0 && (uid != os.Geteuid() || gid != os.Getegid()) {
		if err := tmp.Chown(uid, gid); err != nil {
			tmp.Close()
			return err
		}
	}
	if err := tmp.Chmod(perm); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	// The rename itself is durable once the directory is synced.
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}
