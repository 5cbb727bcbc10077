package caddy

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// The corpus in testdata/caddyfiles holds Caddyfile shapes people write
// (sites with and without braces, snippets, imports, handle blocks,
// matchers, env placeholders, comments, quotes, heredocs), written from
// Caddy's documentation. Each starts with comment lines that say what a
// switch must do with it:
//
//	# route: <--caddy-route>     a site host, or "upstream" (named by @UP@)
//	# refuse: <text>             the switch is refused, saying this
//	# refused-by: caddy          ...and the refusal comes from Caddy's config
//	# preflight: refused         ...by the preflight, which says it is one
//	# note: <text>               the preflight notes this (what it took)
//	# env: KEY=VALUE             Caddy's environment (not handoff's)
//	# get: <host> <path>         a request that reaches the service (itest)
//
// @UP@ is the service's upstream, switched to another; @KEEP@ is the same
// address where it is not an upstream (a comment, a string), left as is;
// @OTHER@, @AUTH@, @PHP@ are other upstreams, @PORT@ the site's port.
// internal/itest/caddyfiles_test.go runs each through a real Caddy.

type corpusCase struct {
	name      string
	src       string
	route     string
	refuse    string
	refusedBy string
	note      string
}

func readCorpus(t testing.TB) []corpusCase {
	t.Helper()
	paths, err := filepath.Glob("testdata/caddyfiles/*.caddyfile")
	require.NoError(t, err)
	require.GreaterOrEqual(t, len(paths), 20)
	var out []corpusCase
	for _, p := range paths {
		b, err := os.ReadFile(p)
		require.NoError(t, err)
		c := corpusCase{name: strings.TrimSuffix(filepath.Base(p), ".caddyfile"), src: string(b)}
		for _, line := range strings.Split(c.src, "\n") {
			k, v, ok := strings.Cut(strings.TrimPrefix(line, "# "), ": ")
			if !ok || !strings.HasPrefix(line, "# ") {
				continue
			}
			switch k {
			case "route":
				c.route = v
			case "refuse":
				c.refuse = v
			case "refused-by":
				c.refusedBy = v
			case "note":
				c.note = v
			}
		}
		require.NotEmpty(t, c.route, "%s has no route line", p)
		out = append(out, c)
	}
	return out
}

func renderCorpus(s, up string) string {
	return strings.NewReplacer("@UP@", up, "@KEEP@", "127.0.0.1:8001", "@OTHER@", "127.0.0.1:8002",
		"@AUTH@", "127.0.0.1:8003", "@PHP@", "127.0.0.1:9000", "@PORT@", "8080").Replace(s)
}

// Every shape of the corpus is switched (the text changes at the upstream
// and nowhere else, and switching back gives the file again) or refused
// with a reason, as its header says.
func TestCaddyfileCorpusRewrite(t *testing.T) {
	const old, new = "127.0.0.1:8001", "127.0.0.1:32768"
	for _, c := range readCorpus(t) {
		t.Run(c.name, func(t *testing.T) {
			host := c.route
			if host == "upstream" {
				host = ""
			}
			before, after := renderCorpus(c.src, old), renderCorpus(c.src, new)
			f := caddyfile{path: "Caddyfile", env: noEnv}
			rw, err := f.rewrite(before, host, []string{old}, []string{new}, nil)
			switch {
			case c.refusedBy == "caddy":
				return // Caddy's config refuses it; the itest shows it
			case c.refuse != "":
				require.Error(t, err)
				require.Contains(t, err.Error(), renderCorpus(c.refuse, old))
				return
			}
			require.NoError(t, err)
			require.Equal(t, after, rw.out)
			if c.note != "" {
				require.Contains(t, strings.Join(rw.notes, "\n"), c.note)
			}
			back, err := f.rewrite(rw.out, host, []string{new}, []string{old}, nil)
			require.NoError(t, err)
			require.Equal(t, before, back.out)
		})
	}
}

// FuzzRewriteUpstream: for any file, the rewrite refuses (and leaves the
// text as it is), or changes it only where from was an upstream, to to,
// every other token staying as it was; and switching back gives the file
// again.
func FuzzRewriteUpstream(f *testing.F) {
	const to = "127.0.0.1:32768"
	for _, c := range readCorpus(f) {
		host := c.route
		if host == "upstream" {
			host = ""
		}
		f.Add(renderCorpus(c.src, "127.0.0.1:8001"), host, "127.0.0.1:8001")
	}
	f.Add(sampleCaddyfile, "api.example.com", "localhost:8000")
	f.Add(twoServices, "", "127.0.0.1:1001")
	// Where Caddy's lexer surprises: a backslash in a comment, "\#", an
	// escaped "<<", a heredoc holding braces, a quoted brace.
	f.Add(":9 {\n\treverse_proxy a:1 # C:\\dir\n\treverse_proxy a:1\n}\n", "", "a:1")
	f.Add(":9 {\n\t\\# x {\n\treverse_proxy a:1\n}\n", "", "a:1")
	f.Add("a.test {\n\trespond \\<<A\n\treverse_proxy a:1\n}\n", "a.test", "a:1")
	f.Add("a.test {\n\trespond <<A\n\t{ a:1\n\tA 200\n\treverse_proxy \"a:1\" \"{\"\n}\n", "a.test", "a:1")
	// The heredoc marker mid-line (the heredoc ends there), on the first
	// body line (the next line is arguments), and padding that does not
	// match.
	f.Add("a.test {\n\trespond <<A\n\t\tx\n\t\tyA 200\n\treverse_proxy a:1\n}\n", "a.test", "a:1")
	f.Add("(s) {\n\trespond {args[0]}\n}\na.test {\n\timport s <<A\n\tA\n\treverse_proxy a:1\n\treverse_proxy a:1\n}\n", "a.test", "a:1")
	f.Add("a.test {\n\trespond <<A\n\treverse_proxy a:1\n\t\tA\n\treverse_proxy a:1\n}\n", "a.test", "a:1")
	f.Fuzz(func(t *testing.T, src, host, from string) {
		if !plainAddress(from) || strings.Contains(src, to) || strings.Contains(from, to) || strings.Contains(to, from) {
			t.Skip()
		}
		// Plain checks, not require's: a diff of two long inputs takes
		// longer than the input.
		rw, err := rewriteUpstream(src, host, from, to, noEnv)
		if err != nil || len(rw.edits) == 0 {
			if rw.out != src {
				t.Fatalf("a refusal changed the text (%v)", err)
			}
			return
		}
		var b strings.Builder
		last := 0
		for _, e := range rw.edits {
			if e.start < last || src[e.start:e.end] != from {
				t.Fatalf("edit %v replaces %q, not the upstream %q", e, src[e.start:e.end], from)
			}
			b.WriteString(src[last:e.start] + to)
			last = e.end
		}
		b.WriteString(src[last:])
		if b.String() != rw.out {
			t.Fatalf("the text changed beyond the edits")
		}

		before, err := lexCaddyfile(src)
		if err != nil {
			t.Fatal(err)
		}
		after, err := lexCaddyfile(rw.out)
		if err != nil {
			t.Fatalf("the new file no longer reads: %v", err)
		}
		if len(after) != len(before) {
			t.Fatalf("%d tokens became %d", len(before), len(after))
		}
		edited := 0
		for i := range before {
			if before[i].line != after[i].line {
				t.Fatalf("token %d moved from line %d to %d", i, before[i].line, after[i].line)
			}
			if before[i].text == after[i].text {
				continue
			}
			if want := strings.TrimSuffix(before[i].text, from) + to; after[i].text != want {
				t.Fatalf("token %d became %q, not %q", i, after[i].text, want)
			}
			edited++
		}
		if edited != len(rw.edits) {
			t.Fatalf("%d edits changed %d tokens", len(rw.edits), edited)
		}

		back, err := rewriteUpstream(rw.out, host, to, from, noEnv)
		if err != nil || back.out != src {
			t.Fatalf("switching back does not give the file again (%v)", err)
		}
	})
}

// Heredocs are read as Caddy 2.11.9 reads them (each case checked with
// caddy adapt): one ends at its marker's first occurrence, even mid-line
// (Caddy's lexer does not look for the marker alone on a line), and what
// is left of that line is more tokens; what precedes the marker there is
// padding every earlier body line must start with. Caddy's parser counts
// one line too many for a heredoc that ends on its first line, so the
// next line's tokens are its directive's arguments.
func TestHeredocEndsWhereCaddysDoes(t *testing.T) {
	const from, to = "127.0.0.1:8000", "127.0.0.1:32768"
	for _, c := range []struct {
		name, src string
		want      string // the rewritten file, with @TO@ for to
		refuse    string
	}{{
		name: "marker mid-line ends it",
		src:  ":9 {\n\trespond <<HTML\n\t\t<p>x</p>\n\t\t<p>HTML 201\n\treverse_proxy 127.0.0.1:8000\n}\n",
		want: ":9 {\n\trespond <<HTML\n\t\t<p>x</p>\n\t\t<p>HTML 201\n\treverse_proxy @TO@\n}\n",
	}, {
		// Caddy dials 127.0.0.1:8000 here: the heredoc ends at "<p>HTML".
		name: "marker mid-line on its first line, the lines after are directives",
		src:  "(s) {\n\trespond {args[0]}\n}\n:9 {\n\timport s <<HTML\n\t\t<p>HTML is here</p>\n\t\treverse_proxy 127.0.0.1:8000\n}\n",
		want: "(s) {\n\trespond {args[0]}\n}\n:9 {\n\timport s <<HTML\n\t\t<p>HTML is here</p>\n\t\treverse_proxy @TO@\n}\n",
	}, {
		name: "a proxy written in the body is text",
		src:  ":9 {\n\trespond <<HTML\n\t\t<p>x</p>\n\t\treverse_proxy 127.0.0.1:8000\n\t\tHTML 200\n\treverse_proxy 127.0.0.1:8000\n}\n",
		want: ":9 {\n\trespond <<HTML\n\t\t<p>x</p>\n\t\treverse_proxy 127.0.0.1:8000\n\t\tHTML 200\n\treverse_proxy @TO@\n}\n",
	}, {
		name: "indented closing marker, a blank line in the body",
		src:  ":9 {\n\trespond <<HTML\n\t\t\t<p>x</p>\n\n\t\tHTML 200\n\treverse_proxy 127.0.0.1:8000\n}\n",
		want: ":9 {\n\trespond <<HTML\n\t\t\t<p>x</p>\n\n\t\tHTML 200\n\treverse_proxy @TO@\n}\n",
	}, {
		name: "CRLF",
		src:  ":9 {\r\n\trespond <<HTML\r\n\t\tx\r\n\t\treverse_proxy 127.0.0.1:8000\r\n\t\tHTML 200\r\n\treverse_proxy 127.0.0.1:8000\r\n}\r\n",
		want: ":9 {\r\n\trespond <<HTML\r\n\t\tx\r\n\t\treverse_proxy 127.0.0.1:8000\r\n\t\tHTML 200\r\n\treverse_proxy @TO@\r\n}\r\n",
	}, {
		// Caddy dials 127.0.0.1:8000 once, for the last line: the line
		// after the heredoc is import's arguments.
		name: "closing marker on the first body line, the next line is arguments",
		src:  "(s) {\n\trespond {args[0]}\n}\n:9 {\n\timport s <<EOF\n\tEOF\n\treverse_proxy 127.0.0.1:8000\n\treverse_proxy 127.0.0.1:8000\n}\n",
		want: "(s) {\n\trespond {args[0]}\n}\n:9 {\n\timport s <<EOF\n\tEOF\n\treverse_proxy 127.0.0.1:8000\n\treverse_proxy @TO@\n}\n",
	}, {
		name: "<< and a space is a plain token",
		src:  ":9 {\n\trespond << 200\n\treverse_proxy 127.0.0.1:8000\n}\n",
		want: ":9 {\n\trespond << 200\n\treverse_proxy @TO@\n}\n",
	}, {
		name: "braces in quotes and backticks are text, a backslash in backticks too",
		src:  ":9 {\n\trespond `a \\\\ \"} {` 200\n\theader X \"{\"\n\theader Y `}`\n\treverse_proxy 127.0.0.1:8000\n}\n",
		want: ":9 {\n\trespond `a \\\\ \"} {` 200\n\theader X \"{\"\n\theader Y `}`\n\treverse_proxy @TO@\n}\n",
	}, {
		name:   "body line without the closing marker's padding",
		src:    ":9 {\n\trespond <<HTML\n\t<p>\n\t\tHTML 200\n\treverse_proxy 127.0.0.1:8000\n}\n",
		refuse: `line 2: heredoc <<HTML: line 3 does not start with "\t\t", the padding before its closing marker`,
	}, {
		name:   "marker not of letters, digits, dashes and underscores",
		src:    ":9 {\n\trespond <<H.T\n\tx\n\tH.T 200\n\treverse_proxy 127.0.0.1:8000\n}\n",
		refuse: `line 2: heredoc marker "H.T" is not valid`,
	}} {
		t.Run(c.name, func(t *testing.T) {
			rw, err := rewriteUpstream(c.src, "", from, to, noEnv)
			if c.refuse != "" {
				require.EqualError(t, err, "read the Caddyfile: "+c.refuse)
				require.Equal(t, c.src, rw.out)
				return
			}
			require.NoError(t, err)
			require.Equal(t, strings.ReplaceAll(c.want, "@TO@", to), rw.out)
		})
	}
}
