package proxyd

import (
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"
)

// --socket never deletes what is not a stale socket, and the socket it
// makes is private from its first moment, whatever the umask.
func TestControlSocketPathIsHandledSafely(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "important.txt")
	require.NoError(t, os.WriteFile(file, []byte("keep me"), 0o644))
	err := clearStaleSocket(file)
	require.ErrorContains(t, err, "not a socket is there (a regular file)")
	data, _ := os.ReadFile(file)
	require.Equal(t, "keep me", string(data))

	sock := filepath.Join(dir, "live.sock")
	ln, err := net.Listen("unix", sock)
	require.NoError(t, err)
	require.ErrorContains(t, clearStaleSocket(sock), "another handoff proxy answers")
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	require.NoError(t, clearStaleSocket(sock), "a stale socket is removed")
	_, err = os.Lstat(sock)
	require.ErrorIs(t, err, os.ErrNotExist)

	old := syscall.Umask(0)
	defer syscall.Umask(old)
	priv := filepath.Join(dir, "private.sock")
	ln, err = listenPrivate("unix", priv)
	require.NoError(t, err)
	defer ln.Close()
	info, err := os.Stat(priv)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), info.Mode().Perm(), "0600 as created, before any chmod")
}
