package caddy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/gofrs/flock"

	"github.com/handoff-dev/handoff/internal/atomicfile"
	"github.com/handoff-dev/handoff/internal/deploy"
)

// lockWait bounds how long a switch waits for another handoff writing the
// same Caddyfile (another service's deploy).
const lockWait = 2 * time.Minute

// caddyfile is the user's Caddyfile, kept in step with every switch.
// Every handoff that writes it holds a lock on its directory from reading
// it to writing it, so two services sharing one file never undo each
// other's switch; a person's edit made meanwhile is kept, since the switch
// only ever replaces its own upstream in the text as it is just before
// the write.
type caddyfile struct {
	path    string // as the user gave it
	backups string // where the previous version is kept ("" : nowhere)
}

// target is the file to read and write: a symbolic link's target, so that
// the link stays a link.
func (f caddyfile) target() (string, error) {
	t, err := filepath.EvalSymlinks(f.path)
	if err != nil {
		return "", fmt.Errorf("%w: Caddyfile: %v (fix --caddyfile, or leave it out)", deploy.ErrConfig, err)
	}
	return t, nil
}

// lock takes the lock every handoff writing this file takes: a flock on
// its directory (a lock on the file itself would not survive the rename).
func (f caddyfile) lock(ctx context.Context) (func(), error) {
	target, err := f.target()
	if err != nil {
		return nil, err
	}
	fl := flock.New(filepath.Dir(target), flock.SetFlag(os.O_RDONLY))
	ctx, cancel := context.WithTimeout(ctx, lockWait)
	defer cancel()
	ok, err := fl.TryLockContext(ctx, 20*time.Millisecond)
	if err != nil || !ok {
		return nil, fmt.Errorf("%w: another handoff has been writing %s for %s: %v", deploy.ErrProxy, f.path, lockWait, err)
	}
	return func() { _ = fl.Unlock() }, nil
}

// check refuses, before anything starts, a file handoff could not write
// as it is: unreadable, in a directory it cannot create files in, or owned
// by another user it cannot hand the new file back to.
func (f caddyfile) check() error {
	target, err := f.target()
	if err != nil {
		return err
	}
	info, err := os.Stat(target)
	if err != nil {
		return fmt.Errorf("%w: Caddyfile: %v", deploy.ErrConfig, err)
	}
	if !info.Mode().IsRegular() {
		return fmt.Errorf("%w: Caddyfile %s is not a regular file", deploy.ErrConfig, target)
	}
	probe, err := os.CreateTemp(filepath.Dir(target), ".handoff-probe-*")
	if err != nil {
		return fmt.Errorf("%w: cannot write the Caddyfile's directory %s (%v): run handoff as a user who can, or leave out --caddyfile; nothing was changed", deploy.ErrConfig, filepath.Dir(target), errors.Unwrap(err))
	}
	defer os.Remove(probe.Name())
	defer probe.Close()
	if st, ok := info.Sys().(*syscall.Stat_t); ok && (int(st.Uid) != os.Geteuid() || int(st.Gid) != os.Getegid()) {
		if err := probe.Chown(int(st.Uid), int(st.Gid)); err != nil {
			return fmt.Errorf("%w: the Caddyfile %s belongs to uid %d gid %d, and handoff could not keep that owner on the new file (%v): run it as root or as that user; nothing was changed", deploy.ErrConfig, target, st.Uid, st.Gid, errors.Unwrap(err))
		}
	}
	return nil
}

// read returns the file's text.
func (f caddyfile) read() (string, error) {
	target, err := f.target()
	if err != nil {
		return "", err
	}
	b, err := os.ReadFile(target)
	if err != nil {
		return "", fmt.Errorf("%w: Caddyfile: %v", deploy.ErrConfig, err)
	}
	return string(b), nil
}

// plan says whether from can be replaced by to in the site blocks for host
// ("" : every block), and gives the new text.
func (f caddyfile) plan(host, from, to string) (string, error) {
	src, err := f.read()
	if err != nil {
		return "", err
	}
	out, n := rewriteUpstream(src, host, from, to)
	if n == 0 {
		return "", fmt.Errorf("%w: %v", deploy.ErrProxy, errNotInCaddyfile(f.path, host, from))
	}
	return out, nil
}

// replace replaces from by to in the file as it is now (the caller holds
// the lock), keeps the previous version among the backups, and writes it
// atomically, keeping its mode, owner and group. A file that already names
// to and not from is left as it is.
func (f caddyfile) replace(host, from, to string) error {
	src, err := f.read()
	if err != nil {
		return err
	}
	out, n := rewriteUpstream(src, host, from, to)
	if n == 0 {
		if _, already := rewriteUpstream(src, host, to, to); already > 0 {
			return nil
		}
		return fmt.Errorf("the Caddyfile %s no longer names %s (it was edited since handoff read it); handoff does not overwrite a change it did not make", f.path, from)
	}
	target, err := f.target()
	if err != nil {
		return err
	}
	if err := f.backup(target, []byte(src)); err != nil {
		return fmt.Errorf("keep the previous Caddyfile: %w", err)
	}
	return atomicfile.Replace(target, []byte(out))
}

// backup keeps the previous version in handoff's state directory, never
// beside the file: a copy there would be read by `import sites/*`.
func (f caddyfile) backup(target string, data []byte) error {
	if f.backups == "" {
		return nil
	}
	return atomicfile.Write(f.backupPath(target), data, 0o600)
}

// backupPath is where the previous version of target is kept.
func (f caddyfile) backupPath(target string) string {
	name := strings.ReplaceAll(strings.TrimPrefix(filepath.Clean(target), "/"), "/", "_")
	return filepath.Join(f.backups, name+".previous")
}

// BackupPath says where the previous version of the Caddyfile at target
// (a real file, not a link) is kept under handoff's state directory.
func BackupPath(stateDir, target string) string {
	return caddyfile{backups: backupDir(stateDir)}.backupPath(target)
}

func backupDir(stateDir string) string {
	if stateDir == "" {
		return ""
	}
	return filepath.Join(stateDir, "caddyfile-backups")
}

// rewriteUpstream replaces the upstream from with to in a Caddyfile, in the
// site blocks for host (every block when host is ""), and returns how many
// it replaced. It changes only whole tokens, keeping a scheme prefix
// ("http://localhost:8000"), comments, spacing and everything else as is.
func rewriteUpstream(src, host, from, to string) (string, int) {
	lines := strings.SplitAfter(src, "\n")
	depth, inSite, n := 0, host == "", 0
	for i, line := range lines {
		code, comment := splitComment(line)
		if depth == 0 {
			if addrs, ok := blockHeader(code); ok {
				inSite = host == "" || servesHost(addrs, host)
			}
		}
		if depth > 0 && inSite {
			var replaced int
			code, replaced = replaceToken(code, from, to)
			n += replaced
			lines[i] = code + comment
		}
		depth += strings.Count(code, "{") - strings.Count(code, "}")
		if depth < 0 {
			depth = 0
		}
	}
	return strings.Join(lines, ""), n
}

// splitComment cuts a line at a '#' that starts a comment (at the line's
// start or after white space, as the Caddyfile lexer does).
func splitComment(line string) (code, comment string) {
	for i := 0; i < len(line); i++ {
		if line[i] == '#' && (i == 0 || line[i-1] == ' ' || line[i-1] == '\t') {
			nl := ""
			if strings.HasSuffix(line, "\n") {
				nl = "\n"
			}
			return line[:i], strings.TrimSuffix(line[i:], "\n") + nl
		}
	}
	return line, ""
}

// blockHeader reads "a.example.com, b.example.com {" at the top level.
func blockHeader(code string) ([]string, bool) {
	t := strings.TrimSpace(code)
	if !strings.HasSuffix(t, "{") {
		return nil, false
	}
	t = strings.TrimSpace(strings.TrimSuffix(t, "{"))
	return strings.FieldsFunc(t, func(r rune) bool { return r == ' ' || r == ',' || r == '\t' }), true
}

func servesHost(addrs []string, host string) bool {
	for _, a := range addrs {
		a = strings.TrimPrefix(strings.TrimPrefix(a, "https://"), "http://")
		if h, _, err := net.SplitHostPort(a); err == nil {
			a = h
		}
		if strings.EqualFold(a, host) {
			return true
		}
	}
	return false
}

// replaceToken replaces whole white-space separated tokens equal to from
// (optionally after "http://") with to.
func replaceToken(code, from, to string) (string, int) {
	var b strings.Builder
	n := 0
	for i := 0; i < len(code); {
		if code[i] == ' ' || code[i] == '\t' || code[i] == '\n' || code[i] == '\r' {
			b.WriteByte(code[i])
			i++
			continue
		}
		j := i
		for j < len(code) && !strings.ContainsRune(" \t\r\n", rune(code[j])) {
			j++
		}
		tok := code[i:j]
		scheme := ""
		if strings.HasPrefix(tok, "http://") {
			scheme, tok = "http://", tok[len("http://"):]
		}
		if tok == from {
			b.WriteString(scheme + to)
			n++
		} else {
			b.WriteString(code[i:j])
		}
		i = j
	}
	return b.String(), n
}

// errNotInCaddyfile explains why a switch was refused before it acted.
func errNotInCaddyfile(path, host, from string) error {
	where := "anywhere"
	if host != "" {
		where = "in the site block for " + host
	}
	return fmt.Errorf("the Caddyfile %s does not name upstream %s %s, so a Caddy restart would undo the switch; nothing was changed (fix the Caddyfile, or leave out --caddyfile)", path, from, where)
}
