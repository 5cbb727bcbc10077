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
			rw, err := f.rewrite(before, host, old, new)
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
			back, err := f.rewrite(rw.out, host, new, old)
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
	f.Fuzz(func(t *testing.T, src, host, from string) {
		if !plainAddress(from) || strings.Contains(src, to) || strings.Contains(from, to) || strings.Contains(to, from) {
			t.Skip()
		}
		rw, err := rewriteUpstream(src, host, from, to, noEnv)
		if err != nil || len(rw.edits) == 0 {
			require.Equal(t, src, rw.out, "a refusal changes nothing")
			return
		}
		var b strings.Builder
		last := 0
		for _, e := range rw.edits {
			require.GreaterOrEqual(t, e.start, last, "edits in order, apart")
			require.Equal(t, from, src[e.start:e.end], "only the upstream is replaced")
			b.WriteString(src[last:e.start] + to)
			last = e.end
		}
		b.WriteString(src[last:])
		require.Equal(t, b.String(), rw.out, "nothing but the edits changed")

		before, err := lexCaddyfile(src)
		require.NoError(t, err)
		after, err := lexCaddyfile(rw.out)
		require.NoError(t, err, "the new file still reads")
		require.Len(t, after, len(before), "the same tokens")
		edited := 0
		for i := range before {
			if before[i].text == after[i].text {
				require.Equal(t, before[i].line, after[i].line)
				continue
			}
			require.Equal(t, strings.TrimSuffix(before[i].text, from)+to, after[i].text, "token %d", i)
			edited++
		}
		require.Equal(t, len(rw.edits), edited, "one token per edit")

		back, err := rewriteUpstream(rw.out, host, to, from, noEnv)
		require.NoError(t, err)
		require.Equal(t, src, back.out, "switching back gives the file again")
	})
}
