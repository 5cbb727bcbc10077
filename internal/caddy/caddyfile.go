package caddy

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"
	"unicode"
	"unicode/utf8"

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
	path  string                      // as the user gave it
	state string                      // handoff's state directory, where the previous version is kept ("" : nowhere)
	env   func(string) (string, bool) // reads {$VAR} in site addresses; nil: os.LookupEnv
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

// plan says whether the route's upstreams from can be replaced by to in
// the sites for host ("" : every site), and gives the rewrite. Its errors
// carry no sentinel but the file's own: a refusal before the deploy and a
// failed switch say different things.
func (f caddyfile) plan(host string, from, to []string) (rewrite, error) {
	src, err := f.read()
	if err != nil {
		return rewrite{}, err
	}
	return f.rewrite(src, host, from, to, nil)
}

// rewrite replaces the route's upstreams from by to in src, with weights
// (nil: equal); one by one, it is rewriteUpstream.
func (f caddyfile) rewrite(src, host string, from, to []string, weights []int) (rewrite, error) {
	env := f.lookupEnv()
	var rw rewrite
	var err error
	if len(from) == 1 && len(to) == 1 {
		rw, err = rewriteUpstream(src, host, from[0], to[0], env)
	} else {
		rw, err = rewriteUpstreams(src, host, from, to, weights, env)
	}
	if err != nil {
		return rw, fmt.Errorf("the Caddyfile %s: %w; nothing was changed", f.path, err)
	}
	if len(rw.edits) == 0 {
		return rw, errNotInCaddyfile(f.path, host, strings.Join(from, " "), rw)
	}
	return rw, nil
}

// named lists, in their order, those of upstreams that the file writes in
// the sites for host ("" : every site).
func (f caddyfile) named(host string, upstreams []string) ([]string, error) {
	src, err := f.read()
	if err != nil {
		return nil, err
	}
	var out []string
	for _, u := range upstreams {
		if slices.Contains(out, u) {
			continue
		}
		if rw, err := rewriteUpstream(src, host, u, u, f.lookupEnv()); err == nil && len(rw.edits) > 0 {
			out = append(out, u)
		}
	}
	return out, nil
}

// lookupEnv reads the environment site addresses are expanded with.
func (f caddyfile) lookupEnv() func(string) (string, bool) {
	if f.env == nil {
		return os.LookupEnv
	}
	return f.env
}

// replace replaces the route's upstreams from by to, with weights (nil:
// equal), in the file as it is now (the caller holds the lock), keeps the
// previous version among the backups, and writes it atomically, keeping
// its mode, owner and group. A file that already names to and not from is
// left as it is.
func (f caddyfile) replace(host string, from, to []string, weights []int) error {
	src, err := f.read()
	if err != nil {
		return err
	}
	rw, err := f.rewrite(src, host, from, to, weights)
	if err != nil {
		if _, already := f.rewrite(src, host, to, to, weights); already == nil {
			return nil
		}
		if errors.As(err, new(*notNamedError)) {
			return fmt.Errorf("the Caddyfile %s no longer names %s (it was edited since handoff read it); handoff does not overwrite a change it did not make", f.path, strings.Join(from, " "))
		}
		return err
	}
	out := rw.out
	if out == src {
		return nil // already so: keep the backup of the version before
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
	if f.state == "" {
		return nil
	}
	return atomicfile.Write(BackupPath(f.state, target), data, 0o600)
}

// previous says where the version of the file before handoff's last
// write is kept, if there is one.
func (f caddyfile) previous() (string, bool) {
	target, err := f.target()
	if err != nil || f.state == "" {
		return "", false
	}
	path := BackupPath(f.state, target)
	_, err = os.Stat(path)
	return path, err == nil
}

// BackupPath says where the previous version of the Caddyfile at target
// (a real file, not a link) is kept under handoff's state directory.
func BackupPath(stateDir, target string) string {
	name := strings.ReplaceAll(strings.TrimPrefix(filepath.Clean(target), "/"), "/", "_")
	return filepath.Join(stateDir, "caddyfile-backups", name+".previous")
}

// edit is one upstream a rewrite replaces: src[start:end] is from.
type edit struct{ start, end int }

// rewrite is what a switch does to the text of a Caddyfile.
type rewrite struct {
	out          string
	edits        []edit
	notes        []string // sites taken for the route by what they proxy to
	placeholders []string // upstreams of the route's sites written as {$VAR}
	imports      []string // files the file imports, where the route may be written
}

// rewriteUpstream replaces the upstream from with to in a Caddyfile,
// wherever an upstream is written (the arguments of reverse_proxy,
// php_fastcgi and forward_auth, their `to` lines, and the snippet
// arguments such a line takes), in the sites for host ("" : every site).
// It changes those bytes only, keeping a scheme prefix
// ("http://localhost:8000"), quotes, comments, spacing and everything
// else as it is. An upstream in a snippet is rewritten when every site
// that imports it is host's: rewriting it for one of them would switch
// the others too, and that is refused with their names.
//
// A site address written as an env placeholder ({$APP_HOSTNAME}) is read
// with env, handoff's environment; when it is not set there (Caddy's may
// differ), the site is taken for host's when it proxies to from: the
// caller has checked, in Caddy's running config, that only host's route
// dials from. The rewrite says so in its notes.
func rewriteUpstream(src, host, from, to string, env func(string) (string, bool)) (rewrite, error) {
	rw := rewrite{out: src}
	if !plainAddress(from) || !plainAddress(to) {
		return rw, fmt.Errorf("upstream %q or %q cannot be written into a Caddyfile as one token", from, to)
	}
	tokens, err := lexCaddyfile(src)
	if err != nil {
		return rw, fmt.Errorf("read the Caddyfile: %w", err)
	}
	blocks, imports, err := parseBlocks(tokens)
	if err != nil {
		return rw, fmt.Errorf("read the Caddyfile: %w", err)
	}
	rw.imports = imports
	type scan struct {
		ups     []upstreamRef
		imports []importRef
	}
	scans := make([]scan, len(blocks))
	snippets := map[string]int{}
	for i, b := range blocks {
		scans[i].ups, scans[i].imports = scanBody(tokens, b.from, b.to)
		if b.kind == snippetBlock {
			snippets[b.name] = i
		}
	}
	// What each site imports, directly or through another snippet, and
	// the upstreams written in its own lines (an argument of an import
	// included: `import proxy app:8000`).
	imported := make([][]int, len(blocks))
	own := make([][]int, len(blocks))
	importers := map[int][]int{}
	for s, b := range blocks {
		if b.kind != siteBlock {
			continue
		}
		for _, u := range scans[s].ups {
			if u.arg < 0 {
				own[s] = append(own[s], u.tok)
			}
		}
		for _, imp := range scans[s].imports {
			sn, ok := snippets[imp.name]
			if !ok {
				rw.imports = append(rw.imports, imp.name)
				continue
			}
			for _, u := range scans[sn].ups {
				for n, k := range imp.args {
					if n == u.arg || (u.argsTo && u.arg >= 0 && n > u.arg) {
						own[s] = append(own[s], k)
					}
				}
			}
		}
		seen := map[int]bool{}
		var visit func(imports []importRef)
		visit = func(imports []importRef) {
			for _, imp := range imports {
				sn, ok := snippets[imp.name]
				if !ok || seen[sn] {
					continue
				}
				seen[sn] = true
				imported[s] = append(imported[s], sn)
				importers[sn] = append(importers[sn], s)
				visit(scans[sn].imports)
			}
		}
		visit(scans[s].imports)
	}
	// The upstreams written in a snippet itself.
	inSnippet := func(sn int) []int {
		var out []int
		for _, u := range scans[sn].ups {
			if u.arg < 0 {
				out = append(out, u.tok)
			}
		}
		return out
	}
	names := func(toks []int) bool {
		return slices.ContainsFunc(toks, func(k int) bool { return isUpstream(tokens[k], from) })
	}
	ours := make([]bool, len(blocks))
	for s, b := range blocks {
		if b.kind != siteBlock {
			continue
		}
		switch m := siteMatch(b, host, env); {
		case host == "" || m == matchYes:
			ours[s] = true
		case m == matchUnknown && (names(own[s]) || slices.ContainsFunc(imported[s], func(sn int) bool { return names(inSnippet(sn)) })):
			ours[s] = true
			rw.notes = append(rw.notes, fmt.Sprintf("the Caddyfile's %s is taken for %s: its address is not set in handoff's environment, and it proxies to %s, which in Caddy only %s's route does", b.describe(), host, from, host))
		}
	}
	marked := map[int]bool{}
	mark := func(toks []int) {
		for _, k := range toks {
			if isUpstream(tokens[k], from) {
				marked[k] = true
			} else if strings.Contains(tokens[k].text, "{$") {
				rw.placeholders = append(rw.placeholders, tokens[k].text)
			}
		}
	}
	for s := range blocks {
		if ours[s] {
			mark(own[s])
		}
	}
	// A snippet is rewritten when all the sites that import it are ours.
	for _, sn := range slices.Sorted(maps.Keys(importers)) {
		if !names(inSnippet(sn)) {
			continue
		}
		var theirs []string
		mine := false
		for _, s := range importers[sn] {
			if ours[s] {
				mine = true
			} else {
				theirs = append(theirs, blocks[s].describe())
			}
		}
		if !mine {
			continue
		}
		if len(theirs) > 0 {
			return rewrite{out: src}, fmt.Errorf("upstream %s is written in %s, which %s imports too: rewriting it would switch %s as well (give %s its own reverse_proxy line, or set --caddy-route %s to switch every site that uses it)",
				from, blocks[sn].describe(), strings.Join(theirs, " and "), strings.Join(theirs, " and "), host, from)
		}
		mark(inSnippet(sn))
	}
	var b strings.Builder
	last := 0
	for _, k := range slices.Sorted(maps.Keys(marked)) {
		t := tokens[k]
		start := t.inner + len(t.text) - len(from) // after any scheme
		rw.edits = append(rw.edits, edit{start, start + len(from)})
		b.WriteString(src[last:start])
		b.WriteString(to)
		last = start + len(from)
	}
	b.WriteString(src[last:])
	rw.out = b.String()
	return rw, nil
}

// isUpstream says whether t is the upstream addr as Caddy dials it, with
// or without a scheme, written so that its bytes are its value.
func isUpstream(t token, addr string) bool {
	if t.quote == '<' {
		return false
	}
	v := t.text
	for _, scheme := range []string{"http://", "h2c://"} {
		v = strings.TrimPrefix(v, scheme)
	}
	return v == addr && t.raw == t.text
}

// plainAddress says whether s can stand as one unquoted Caddyfile token
// that means itself.
func plainAddress(s string) bool {
	return s != "" && !strings.ContainsAny(s, " \t\r\n\v\f\"`'{}#\\<") && utf8.ValidString(s)
}

type siteMatchResult int

const (
	matchNo siteMatchResult = iota
	matchYes
	matchUnknown // an address is a placeholder handoff's environment does not have
)

// siteMatch says whether a site block serves host, reading its addresses
// as Caddy does: scheme, port and path aside, env placeholders expanded.
func siteMatch(b cfBlock, host string, env func(string) (string, bool)) siteMatchResult {
	result := matchNo
	for _, k := range b.keys {
		v, ok := expandEnv(k.text, env)
		if !ok {
			result = matchUnknown
			continue
		}
		addrs := strings.FieldsFunc(v, func(r rune) bool { return r == ',' || unicode.IsSpace(r) })
		if servesHost(addrs, host) {
			return matchYes
		}
	}
	return result
}

func servesHost(addrs []string, host string) bool {
	for _, a := range addrs {
		if _, rest, ok := strings.Cut(a, "://"); ok {
			a = rest
		}
		a, _, _ = strings.Cut(a, "/")
		if h, _, err := net.SplitHostPort(a); err == nil {
			a = h
		}
		if a != "" && strings.EqualFold(a, host) {
			return true
		}
	}
	return false
}

// errNotInCaddyfile explains why a switch was refused before it acted.
func errNotInCaddyfile(path, host, from string, rw rewrite) error {
	where := "anywhere"
	if host != "" {
		where = "in the site block for " + host
	}
	hint := "fix the Caddyfile, or leave out --caddyfile"
	switch {
	case len(rw.placeholders) > 0:
		hint = fmt.Sprintf("its upstream is written %s, which handoff cannot rewrite: write the address itself, or leave out --caddyfile", strings.Join(slices.Compact(rw.placeholders), ", "))
	case len(rw.imports) > 0:
		hint = fmt.Sprintf("it imports %s: if the site is written in an imported file, give that file as --caddyfile; else fix the Caddyfile, or leave out --caddyfile", strings.Join(slices.Compact(rw.imports), ", "))
	}
	return &notNamedError{fmt.Sprintf("the Caddyfile %s does not name upstream %s %s, so a Caddy restart would undo the switch; nothing was changed (%s)", path, from, where, hint)}
}

// notNamedError: the Caddyfile does not name the upstream where it should.
type notNamedError struct{ msg string }

func (e *notNamedError) Error() string { return e.msg }
