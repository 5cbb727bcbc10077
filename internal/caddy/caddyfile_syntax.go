package caddy

import (
	"fmt"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// This file reads a Caddyfile as Caddy's own lexer and parser do (quotes,
// backticks, heredocs, escaped newlines, comments only at a token's start,
// a single site without braces, snippets and their imports), just far
// enough to know where each upstream is written, so that a switch can
// change those bytes and nothing else.

// token is one Caddyfile token and where it is written.
type token struct {
	text       string // its value, as Caddy reads it
	raw        string // its value as written (escapes and all)
	start, end int    // the bytes it takes in the file, quotes included
	inner      int    // where its value starts (after an opening quote)
	line       int    // Caddy's line number for it
	breaks     int    // line breaks inside it (quoted text, heredocs)
	quote      rune   // '"', '`', '<' (heredoc) or 0
}

// brace says whether the token is a bare "{" or "}".
func (t token) brace(b string) bool { return t.quote == 0 && t.text == b }

// lexCaddyfile splits src into tokens by the rules of Caddy's lexer.
func lexCaddyfile(src string) ([]token, error) {
	var out []token
	line, skipped := 1, 0
	i := 0
	if strings.HasPrefix(src, "\uFEFF") {
		i = len("\uFEFF")
	}
	// A backslash escapes the next character, as in Caddy's lexer, where
	// the escape outlives spaces and comments: a backslash anywhere in a
	// comment escapes the newline that ends it, and chains the next line
	// onto the tokens before.
	escaped := false
	for i < len(src) {
		r, size := utf8.DecodeRuneInString(src[i:])
		switch {
		case r == '\\' && !escaped:
			escaped = true
			i++
			continue
		case r == '\n':
			if escaped {
				skipped++
			} else {
				line += 1 + skipped
				skipped = 0
			}
			escaped = false
			i++
			continue
		case unicode.IsSpace(r):
			i += size
			continue
		case r == '#':
			for i < len(src) && src[i] != '\n' {
				escaped = escaped || src[i] == '\\'
				i++
			}
			continue
		}
		t := token{start: i, inner: i, line: line}
		var err error
		switch {
		case (r == '"' || r == '`') && escaped:
			err = fmt.Errorf("handoff does not read a backslash before an opening quote")
		case r == '"' || r == '`':
			t.quote, t.inner = r, i+1
			i, err = lexQuoted(src, i+1, r, &t, &line, &skipped)
		default:
			i, err = lexBare(src, i, escaped, &t, &line, &skipped)
		}
		escaped = false
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", t.line, err)
		}
		t.end = i
		switch t.quote {
		case '"', '`':
			t.raw = src[t.inner : t.end-1]
		case 0:
			t.raw = src[t.start:t.end]
		}
		out = append(out, t)
	}
	return out, nil
}

// lexQuoted reads a quoted token from i, just after its opening quote.
func lexQuoted(src string, i int, q rune, t *token, line, skipped *int) (int, error) {
	var b strings.Builder
	for i < len(src) {
		c := src[i]
		if q == '"' && c == '\\' && i+1 < len(src) {
			// Inside quotes only a quote can be escaped; a backslash
			// before anything else stays.
			if src[i+1] != '"' {
				b.WriteByte('\\')
			}
			i++
			c = src[i]
			if c == '\n' {
				*line += 1 + *skipped
				*skipped = 0
				t.breaks++
			}
			b.WriteByte(c)
			i++
			continue
		}
		if rune(c) == q {
			t.text = b.String()
			return i + 1, nil
		}
		if c == '\n' {
			*line += 1 + *skipped
			*skipped = 0
			t.breaks++
		}
		b.WriteByte(c)
		i++
	}
	return i, fmt.Errorf("a quote %c is never closed", q)
}

// lexBare reads an unquoted token from i, or a heredoc (<<MARKER ...
// MARKER); escaped: a backslash before i escapes its first character.
func lexBare(src string, i int, escaped bool, t *token, line, skipped *int) (int, error) {
	var b strings.Builder
	heredoc := true
	for i < len(src) {
		r, size := utf8.DecodeRuneInString(src[i:])
		if unicode.IsSpace(r) {
			break
		}
		if r == '\\' && !escaped {
			// The escape of the next character; before a space or a
			// newline, it ends the token and outlives it.
			next, _ := utf8.DecodeRuneInString(src[i+1:])
			if i+1 >= len(src) || unicode.IsSpace(next) {
				break
			}
			escaped = true
			i++
			continue
		}
		if escaped {
			if r == '<' {
				heredoc = false // an escaped '<' starts no heredoc
			} else {
				b.WriteByte('\\')
			}
		}
		escaped = false
		b.WriteString(src[i : i+size])
		i += size
		if heredoc && b.Len() == 2 && b.String() == "<<" {
			return lexHeredoc(src, i, t, line, skipped)
		}
	}
	t.text = b.String()
	return i, nil
}

// lexHeredoc reads a heredoc from i, just after its "<<", as Caddy 2.11's
// lexer does. The marker runs to the end of the line (a space, or the end
// of the file, makes "<<..." a plain token instead). The heredoc ends at
// the marker's first occurrence, even mid-line, not only at a line holding
// it alone: what is left of that line is more tokens, and what precedes
// the marker there is padding that every earlier body line must start
// with.
func lexHeredoc(src string, i int, t *token, line, skipped *int) (int, error) {
	var m strings.Builder
	j := i
	for ; j < len(src) && src[j] != '\n'; j++ {
		switch src[j] {
		case ' ':
			t.text = "<<" + m.String()
			return j, nil
		case '\r':
			continue // Caddy skips CR there
		}
		m.WriteByte(src[j])
	}
	marker := m.String()
	if j == len(src) {
		t.text = "<<" + marker
		return j, nil
	}
	if !isHeredocMarker(marker) {
		return i, fmt.Errorf("heredoc marker %q is not valid", marker)
	}
	body := j + 1
	end := strings.Index(src[body:], marker)
	if end < 0 {
		return i, fmt.Errorf("heredoc %s is never closed", marker)
	}
	raw := src[body : body+end]
	last := strings.LastIndexByte(raw, '\n')
	padding := raw[last+1:]
	var text strings.Builder
	lines := strings.Split(raw[:last+1], "\n")
	lines = lines[:len(lines)-1]
	for n, l := range lines {
		if l != "" && l != "\r" && !strings.HasPrefix(l, padding) {
			return i, fmt.Errorf("heredoc <<%s: line %d does not start with %q, the padding before its closing marker", marker, *line+*skipped+1+n, padding)
		}
		text.WriteString(strings.ReplaceAll(strings.TrimPrefix(l, padding), "\r", "") + "\n")
	}
	t.quote, t.inner = '<', body
	t.text = strings.TrimSuffix(text.String(), "\n")
	*skipped += 1 + len(lines)
	// Caddy's parser takes a heredoc to span its text's lines plus two:
	// one line too many when it ends on its first line, so that the next
	// line's tokens are read as this line's.
	t.breaks = 1 + max(len(lines), 1)
	return body + end + len(marker), nil
}

// isHeredocMarker says whether s may be a heredoc marker for Caddy: ASCII
// letters, digits, dashes and underscores.
func isHeredocMarker(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// newLine says whether tokens[i] starts a line, as Caddy's parser sees it.
func newLine(tokens []token, i int) bool {
	if i == 0 {
		return true
	}
	prev := tokens[i-1]
	return prev.line+prev.breaks < tokens[i].line
}

// blockKind says what a top-level block of a Caddyfile is.
type blockKind int

const (
	globalOptions blockKind = iota
	siteBlock
	snippetBlock // (name) { ... }, or a named route &(name) { ... }
)

// cfBlock is one top-level block of a Caddyfile.
type cfBlock struct {
	kind     blockKind
	keys     []token // site addresses
	name     string  // snippet name ("&name" for a named route)
	from, to int     // its body: tokens[from:to], braces left out
}

// describe names the block as a person wrote it.
func (b cfBlock) describe() string {
	if b.kind == snippetBlock {
		return "snippet (" + b.name + ")"
	}
	var keys []string
	for _, k := range b.keys {
		keys = append(keys, strings.TrimSuffix(k.text, ","))
	}
	return "site " + strings.Join(keys, ", ")
}

// parseBlocks groups tokens into top-level blocks as Caddy's parser does:
// addresses up to a "{" (on more lines while one ends with a comma), the
// body to its matching "}"; a site without braces runs to the end.
// It returns the top-level imports too: what they bring is not in this
// file.
func parseBlocks(tokens []token) ([]cfBlock, []string, error) {
	var out []cfBlock
	var imports []string
	for i := 0; i < len(tokens); {
		if tokens[i].quote == 0 && tokens[i].text == "import" {
			i++
			if i < len(tokens) && !newLine(tokens, i) {
				imports = append(imports, tokens[i].text)
			}
			for i < len(tokens) && !newLine(tokens, i) {
				i++
			}
			continue
		}
		b := cfBlock{kind: siteBlock}
		if len(out) == 0 && tokens[i].brace("{") {
			b.kind = globalOptions
		}
		for b.kind != globalOptions && i < len(tokens) && !tokens[i].brace("{") {
			b.keys = append(b.keys, tokens[i])
			more := strings.HasSuffix(tokens[i].text, ",")
			i++
			if i < len(tokens) && !more && newLine(tokens, i) {
				break
			}
		}
		if len(b.keys) == 1 {
			k := b.keys[0].text
			if name, ok := strings.CutPrefix(k, "("); ok && strings.HasSuffix(k, ")") {
				b.kind, b.name = snippetBlock, strings.TrimSuffix(name, ")")
			} else if name, ok := strings.CutPrefix(k, "&("); ok && strings.HasSuffix(k, ")") {
				b.kind, b.name = snippetBlock, "&"+strings.TrimSuffix(name, ")")
			}
		}
		if i >= len(tokens) || !tokens[i].brace("{") {
			if b.kind != siteBlock {
				return nil, nil, fmt.Errorf("line %d: %s has no braces", b.keys[0].line, b.describe())
			}
			// A site without braces (Caddy allows it for the one site of a
			// file): it runs to the end.
			b.from, b.to = i, len(tokens)
			out = append(out, b)
			break
		}
		depth, j := 1, i+1
		for ; j < len(tokens) && depth > 0; j++ {
			switch {
			case tokens[j].brace("{"):
				depth++
			case tokens[j].brace("}"):
				depth--
			}
		}
		if depth > 0 {
			return nil, nil, fmt.Errorf("line %d: the block opened here is never closed", tokens[i].line)
		}
		b.from, b.to = i+1, j-1
		out = append(out, b)
		i = j
	}
	return out, imports, nil
}

// proxyDirectives are the directives whose arguments (after a matcher)
// and `to` lines are upstreams: each is a reverse_proxy in Caddy's JSON.
var proxyDirectives = map[string]bool{"reverse_proxy": true, "php_fastcgi": true, "forward_auth": true}

// upstreamRef is a place in a block where an upstream is written: a token
// of a proxy directive, or a snippet argument ({args[0]}) that one is.
type upstreamRef struct {
	tok    int  // index in tokens
	arg    int  // ≥ 0: the token is {args[arg]}, not an address
	argsTo bool // {args[arg:]}: every argument from arg on
}

// importRef is an `import name args...` line inside a block.
type importRef struct {
	name string
	args []int // token indices of its arguments
}

// scanBody finds, in tokens[from:to], where upstreams are written and
// which snippets are imported (or named routes invoked).
func scanBody(tokens []token, from, to int) ([]upstreamRef, []importRef) {
	var ups []upstreamRef
	var imports []importRef
	var openers []string // the directive that opened each enclosing block
	for i := from; i < to; {
		t := tokens[i]
		switch {
		case t.brace("}"):
			if len(openers) > 0 {
				openers = openers[:len(openers)-1]
			}
			i++
			continue
		case t.brace("{"):
			openers = append(openers, "")
			i++
			continue
		}
		// t is a directive (or subdirective); its arguments run to the
		// end of the line, or to a brace.
		j := i + 1
		for j < to && !newLine(tokens, j) && !tokens[j].brace("{") && !tokens[j].brace("}") {
			j++
		}
		inner := len(openers) > 0 && proxyDirectives[openers[len(openers)-1]]
		switch {
		case t.quote == 0 && (t.text == "import" || t.text == "invoke") && j > i+1:
			ref := importRef{name: tokens[i+1].text}
			if t.text == "invoke" {
				ref.name = "&" + ref.name
			}
			for k := i + 2; k < j; k++ {
				ref.args = append(ref.args, k)
			}
			imports = append(imports, ref)
		case t.quote == 0 && proxyDirectives[t.text]:
			k := i + 1
			if k < j && isMatcherToken(tokens[k].text) {
				k++
			}
			for ; k < j; k++ {
				ups = append(ups, newUpstreamRef(tokens, k))
			}
		case t.quote == 0 && t.text == "to" && inner:
			for k := i + 1; k < j; k++ {
				ups = append(ups, newUpstreamRef(tokens, k))
			}
		}
		if j < to && tokens[j].brace("{") {
			// Its block, even when the brace is on the next line (Caddy
			// reads it so too).
			openers = append(openers, t.text)
			j++
		}
		i = j
	}
	return ups, imports
}

func newUpstreamRef(tokens []token, k int) upstreamRef {
	n, rest := argIndex(tokens[k].text)
	return upstreamRef{tok: k, arg: n, argsTo: rest}
}

// isMatcherToken says whether a directive's first argument is a matcher:
// a named matcher, a path, or "*".
func isMatcherToken(s string) bool {
	return s == "*" || strings.HasPrefix(s, "/") || strings.HasPrefix(s, "@")
}

// argIndex reads a snippet argument placeholder, {args[N]} or {args.N},
// or a range {args[N:]} ({args[:]} is 0 on): N, or -1 when s is not one.
func argIndex(s string) (n int, rest bool) {
	inner, ok := strings.CutPrefix(s, "{args")
	if !ok || !strings.HasSuffix(inner, "}") {
		return -1, false
	}
	inner = strings.TrimSuffix(inner, "}")
	switch {
	case strings.HasPrefix(inner, "[") && strings.HasSuffix(inner, "]"):
		inner = strings.TrimSuffix(strings.TrimPrefix(inner, "["), "]")
		inner, rest = strings.CutSuffix(inner, ":")
		if inner == "" && rest {
			return 0, true
		}
	case strings.HasPrefix(inner, "."):
		inner = inner[1:]
	default:
		return -1, false
	}
	n, err := strconv.Atoi(inner)
	if err != nil || n < 0 || n > 1000 {
		return -1, false
	}
	return n, rest
}

// expandEnv replaces {$VAR} and {$VAR:default} as Caddy does before it
// reads the file, from env; ok is false when a variable is unset and has
// no default (Caddy's environment may well have it).
func expandEnv(s string, env func(string) (string, bool)) (string, bool) {
	var b strings.Builder
	ok := true
	for {
		start := strings.Index(s, "{$")
		if start < 0 {
			break
		}
		end := strings.IndexByte(s[start:], '}')
		if end < 0 {
			break
		}
		name := s[start+2 : start+end]
		b.WriteString(s[:start])
		s = s[start+end+1:]
		if name == "" {
			b.WriteString("{$}")
			continue
		}
		name, def, hasDef := strings.Cut(name, ":")
		v, found := env(name)
		switch {
		case found:
			b.WriteString(v)
		case hasDef:
			b.WriteString(def)
		default:
			ok = false
		}
	}
	b.WriteString(s)
	return b.String(), ok
}
