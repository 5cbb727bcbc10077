package caddy

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/handoff-dev/handoff/internal/deploy"
)

const twoServices = `api.example.com {
	reverse_proxy 127.0.0.1:1001
}

web.example.com {
	reverse_proxy 127.0.0.1:2001
}
`

// Two services sharing one Caddyfile switch at the same time, many times:
// each keeps the other's switch.
func TestConcurrentWritersOfOneCaddyfileKeepEachOthersChanges(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "Caddyfile")
	require.NoError(t, os.WriteFile(path, []byte(twoServices), 0o644))
	state := t.TempDir()
	api := caddyfile{path: path, state: state}
	web := caddyfile{path: path, state: state}
	for round := 1; round <= 50; round++ {
		var wg sync.WaitGroup
		for _, c := range []struct {
			f    caddyfile
			host string
			base int
		}{{api, "api.example.com", 1000}, {web, "web.example.com", 2000}} {
			wg.Go(func() {
				unlock, err := c.f.lock(context.Background())
				require.NoError(t, err)
				defer unlock()
				from, to := addr(c.base+round), addr(c.base+round+1)
				_, err = c.f.plan(c.host, []string{from}, []string{from})
				require.NoError(t, err)
				require.NoError(t, c.f.replace(c.host, []string{from}, []string{to}, nil))
			})
		}
		wg.Wait()
		got, _ := os.ReadFile(path)
		require.Contains(t, string(got), "reverse_proxy "+addr(1000+round+1), "round %d", round)
		require.Contains(t, string(got), "reverse_proxy "+addr(2000+round+1), "round %d", round)
	}
}

func addr(port int) string { return "127.0.0.1:" + itoa(port) }

// addrs is the route of the one upstream addr(port).
func addrs(port int) []string { return []string{addr(port)} }

func itoa(n int) string {
	if n == 0 {
		return "0"
	}
	var b []byte
	for ; n > 0; n /= 10 {
		b = append([]byte{byte('0' + n%10)}, b...)
	}
	return string(b)
}

// A person's edit made while a switch runs is kept; if the edit removed the
// very upstream being switched, the switch refuses rather than overwrite it.
func TestAnEditMadeMeanwhileIsKept(t *testing.T) {
	path := filepath.Join(t.TempDir(), "Caddyfile")
	require.NoError(t, os.WriteFile(path, []byte(twoServices), 0o644))
	f := caddyfile{path: path}
	_, err := f.plan("api.example.com", addrs(1001), addrs(1001))
	require.NoError(t, err)

	edited := strings.Replace(twoServices, "web.example.com {", "# added by hand\nweb.example.com {", 1)
	require.NoError(t, os.WriteFile(path, []byte(edited), 0o644))
	require.NoError(t, f.replace("api.example.com", addrs(1001), addrs(1002), nil))
	got, _ := os.ReadFile(path)
	require.Contains(t, string(got), "# added by hand")
	require.Contains(t, string(got), "reverse_proxy "+addr(1002))

	require.NoError(t, os.WriteFile(path, []byte(strings.ReplaceAll(string(got), addr(1002), "127.0.0.1:7777")), 0o644))
	err = f.replace("api.example.com", addrs(1002), addrs(1003), nil)
	require.ErrorContains(t, err, "does not overwrite a change it did not make")
	got, _ = os.ReadFile(path)
	require.Contains(t, string(got), "127.0.0.1:7777", "the edit stands")
}

// A symlinked Caddyfile stays a symlink (its target is written), keeps its
// mode, owner and group, and its backup is kept in handoff's state
// directory, not beside it where `import sites/*` would read it.
func TestCaddyfileWriteKeepsLinkModeOwnerAndBacksUpElsewhere(t *testing.T) {
	dir := t.TempDir()
	sites := filepath.Join(dir, "sites")
	require.NoError(t, os.MkdirAll(sites, 0o755))
	real := filepath.Join(sites, "api.caddy")
	require.NoError(t, os.WriteFile(real, []byte(twoServices), 0o640))
	uid, gid := os.Geteuid(), os.Getegid()
	if uid == 0 {
		uid, gid = 4242, 4343
		require.NoError(t, os.Chown(real, uid, gid))
	}
	link := filepath.Join(dir, "Caddyfile")
	require.NoError(t, os.Symlink(real, link))
	state := t.TempDir()
	f := caddyfile{path: link, state: state}
	require.NoError(t, f.check())

	require.NoError(t, f.replace("api.example.com", addrs(1001), addrs(1002), nil))
	info, err := os.Lstat(link)
	require.NoError(t, err)
	require.NotZero(t, info.Mode()&os.ModeSymlink, "the link is still a link")
	info, err = os.Stat(real)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o640), info.Mode().Perm())
	st := info.Sys().(*syscall.Stat_t)
	require.Equal(t, [2]int{uid, gid}, [2]int{int(st.Uid), int(st.Gid)})
	got, _ := os.ReadFile(real)
	require.Contains(t, string(got), addr(1002))

	entries, _ := os.ReadDir(sites)
	require.Len(t, entries, 1, "nothing beside the file: %v", entries)
	prev, err := os.ReadFile(BackupPath(state, real))
	require.NoError(t, err)
	require.Equal(t, twoServices, string(prev))
}

// A Caddyfile handoff could not write is refused before anything starts.
func TestCaddyfileThatCannotBeWrittenIsRefusedUpFront(t *testing.T) {
	// /proc refuses new files even to root, like a read-only mount would.
	err := caddyfile{path: "/proc/version"}.check()
	require.ErrorIs(t, err, deploy.ErrConfig)
	require.ErrorContains(t, err, "cannot write the Caddyfile's directory /proc")
	require.ErrorContains(t, err, "nothing was changed")
}

// A site address written {$VAR} is read with handoff's environment when it
// has the variable; without it, the site is taken by what it proxies to,
// and the rewrite says so.
func TestSiteAddressPlaceholders(t *testing.T) {
	const src = "{$APP_HOSTNAME} {\n\treverse_proxy app:8000\n}\n\nother.example.com {\n\treverse_proxy app:9000\n}\n"
	env := func(v string) func(string) (string, bool) {
		return func(name string) (string, bool) { return v, name == "APP_HOSTNAME" && v != "" }
	}
	rw, err := rewriteUpstream(src, "app.example.com", "app:8000", "127.0.0.1:1", env("app.example.com"))
	require.NoError(t, err)
	require.Len(t, rw.edits, 1)
	require.Empty(t, rw.notes, "resolved as Caddy would")

	rw, err = rewriteUpstream(src, "app.example.com", "app:8000", "127.0.0.1:1", env("elsewhere.example.com"))
	require.NoError(t, err)
	require.Empty(t, rw.edits, "the variable names another site")

	rw, err = rewriteUpstream(src, "app.example.com", "app:8000", "127.0.0.1:1", env(""))
	require.NoError(t, err)
	require.Len(t, rw.edits, 1)
	require.Equal(t, []string{"the Caddyfile's site {$APP_HOSTNAME} is taken for app.example.com: its address is not set in handoff's environment, and it proxies to app:8000, which in Caddy only app.example.com's route does"}, rw.notes)

	rw, err = rewriteUpstream(src, "other.example.com", "app:9000", "127.0.0.1:1", env(""))
	require.NoError(t, err)
	require.Len(t, rw.edits, 1)
	require.Empty(t, rw.notes, "the placeholder site proxies elsewhere: not taken")
	require.Contains(t, rw.out, "other.example.com {\n\treverse_proxy 127.0.0.1:1\n")
}

// A Caddyfile that leaves the site to an imported file says so: that file
// is the one to give.
func TestNotNamedInAFileThatImportsSites(t *testing.T) {
	f := caddyfile{path: "/etc/caddy/Caddyfile", env: noEnv}
	_, err := f.rewrite("{\n\temail ops@example.com\n}\n\nimport sites/*.caddy\n", "app.example.com", []string{"app:8000"}, []string{"127.0.0.1:1"}, nil)
	require.ErrorContains(t, err, "does not name upstream app:8000 in the site block for app.example.com")
	require.ErrorContains(t, err, "it imports sites/*.caddy: if the site is written in an imported file, give that file as --caddyfile")
}

// The lexer reads backslashes as Caddy 2.11 does (checked with caddy
// adapt): one in a comment escapes the newline that ends it, so the next
// line's tokens are arguments of the directive before the comment; and
// "\#" starts a comment too.
func TestLexerEscapesAsCaddyDoes(t *testing.T) {
	upstreams := func(src string) []string {
		t.Helper()
		tokens, err := lexCaddyfile(src)
		require.NoError(t, err)
		blocks, _, err := parseBlocks(tokens)
		require.NoError(t, err)
		require.Len(t, blocks, 1)
		ups, _ := scanBody(tokens, blocks[0].from, blocks[0].to)
		var out []string
		for _, u := range ups {
			out = append(out, tokens[u.tok].text)
		}
		return out
	}
	// Caddy dials a:1, respond:80 and hi:80 for this one.
	require.Equal(t, []string{"a:1", "respond", "hi"}, upstreams(":9999 {\n\treverse_proxy a:1 # see C:\\dir\n\trespond hi\n}\n"))
	require.Equal(t, []string{"a:1"}, upstreams(":9999 {\n\t\\# reverse_proxy b:2 {\n\treverse_proxy a:1\n}\n"))
	require.Equal(t, []string{"a:1"}, upstreams(":9999 {\n\treverse_proxy \\\n\t\ta:1\n\trespond \"\\\"quoted\\\" {\"\n}\n"))
	_, err := lexCaddyfile(":9999 {\n\trespond \\\"x\"\n}\n")
	require.ErrorContains(t, err, "line 2: handoff does not read a backslash before an opening quote")
}
