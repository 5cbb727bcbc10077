package caddy

import (
	"fmt"
	"net"
	"strings"
)

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
