package caddy

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// rewriteUpstreams replaces a route's upstreams from by to in a Caddyfile,
// in the sites rewriteUpstream would rewrite: the list to is written where
// from[0] is (several tokens on the reverse_proxy line, or on its `to`
// line), and every other upstream of from is taken away, with its `to`
// line when it was the line's only upstream. Only those bytes change.
//
// weights, when set, are written as the reverse_proxy's lb_policy (see
// withPolicy); nil takes a weighted_round_robin lb_policy away.
func rewriteUpstreams(src, host string, from, to []string, weights []int, env func(string) (string, bool)) (rewrite, error) {
	rw := rewrite{out: src}
	if len(from) == 0 || len(to) == 0 {
		return rw, fmt.Errorf("a route of no upstream cannot be written into a Caddyfile")
	}
	for _, u := range to {
		if !plainAddress(u) {
			return rw, fmt.Errorf("upstream %q cannot be written into a Caddyfile as one token", u)
		}
	}
	first, err := rewriteUpstream(src, host, from[0], from[0], env)
	if err != nil || len(first.edits) == 0 {
		return first, err
	}
	tokens, err := lexCaddyfile(src)
	if err != nil {
		return rw, fmt.Errorf("read the Caddyfile: %w", err)
	}
	var cuts []cut
	for _, e := range first.edits {
		k := tokenAt(tokens, e.start)
		if k < 0 || tokens[k].quote != 0 {
			return rw, fmt.Errorf("upstream %s is quoted in the Caddyfile: handoff writes several upstreams only where each is a plain word", from[0])
		}
		cuts = append(cuts, cut{e.start, e.end, strings.Join(to, " ")})
	}
	for _, f := range from[1:] {
		other, err := rewriteUpstream(src, host, f, f, env)
		if err != nil {
			return rw, err
		}
		if len(other.edits) == 0 {
			return other, nil // not named: the caller says where
		}
		for _, e := range other.edits {
			k := tokenAt(tokens, e.start)
			if k < 0 {
				return rw, fmt.Errorf("upstream %s: not where the Caddyfile's words are", f)
			}
			cuts = append(cuts, removal(src, tokens, k))
		}
	}
	slices.SortFunc(cuts, func(a, b cut) int { return a.start - b.start })
	var b strings.Builder
	var written []int // where the list to landed in the new text
	last := 0
	for _, c := range cuts {
		if c.start < last {
			return rw, fmt.Errorf("upstreams %s overlap in the Caddyfile", strings.Join(from, ", "))
		}
		b.WriteString(src[last:c.start])
		if c.text != "" {
			written = append(written, b.Len())
		}
		b.WriteString(c.text)
		last = c.end
		rw.edits = append(rw.edits, edit{c.start, c.end})
	}
	b.WriteString(src[last:])
	out, err := withPolicy(b.String(), written, weights)
	if err != nil {
		return rw, err
	}
	rw.out, rw.notes, rw.imports = out, first.notes, first.imports
	return rw, nil
}

// withPolicy writes lbPolicy(weights) into the block of each reverse_proxy
// whose upstreams start at one of offsets in src: in place of its
// lb_policy line, or as the block's first line, or in a block of its own
// (`reverse_proxy a b {` … `}`). Weights nil take a weighted_round_robin
// lb_policy away, and keep any other.
func withPolicy(src string, offsets []int, weights []int) (string, error) {
	policy := lbPolicy(weights)
	tokens, err := lexCaddyfile(src)
	if err != nil {
		return src, fmt.Errorf("read the Caddyfile: %w", err)
	}
	var cuts []cut
	seen := map[int]bool{}
	for _, off := range offsets {
		k := tokenAt(tokens, off)
		if k < 0 {
			return src, fmt.Errorf("the upstreams written are not where the Caddyfile's words are")
		}
		d := lineStart(tokens, k)
		if tokens[d].text == "to" {
			open := enclosingBrace(tokens, d)
			if open < 0 {
				return src, fmt.Errorf("a `to` line outside a reverse_proxy block")
			}
			d = lineStart(tokens, open)
		}
		if seen[d] {
			continue
		}
		seen[d] = true
		end := d
		for end+1 < len(tokens) && !newLine(tokens, end+1) && !tokens[end+1].brace("{") {
			end++
		}
		indent := src[strings.LastIndexByte(src[:tokens[d].start], '\n')+1 : tokens[d].start]
		if end+1 >= len(tokens) || !tokens[end+1].brace("{") {
			if policy != "" {
				cuts = append(cuts, cut{tokens[end].end, tokens[end].end, " {\n" + indent + "\t" + policy + "\n" + indent + "}"})
			}
			continue
		}
		open := end + 1
		found := false
		for i, depth := open+1, 0; i < len(tokens) && !(depth == 0 && tokens[i].brace("}")); i++ {
			switch {
			case tokens[i].brace("{"):
				depth++
				continue
			case tokens[i].brace("}"):
				depth--
				continue
			}
			if depth != 0 || !newLine(tokens, i) || tokens[i].text != "lb_policy" || tokens[i].quote != 0 {
				continue
			}
			found = true
			last := i
			for last+1 < len(tokens) && !newLine(tokens, last+1) && !tokens[last+1].brace("{") && !tokens[last+1].brace("}") {
				last++
			}
			switch {
			case policy != "":
				cuts = append(cuts, cut{tokens[i].start, tokens[last].end, policy})
			case last > i && tokens[i+1].text == "weighted_round_robin":
				start := strings.LastIndexByte(src[:tokens[i].start], '\n') + 1
				stop := tokens[last].end
				if nl := strings.IndexByte(src[stop:], '\n'); nl >= 0 {
					stop += nl + 1
				}
				cuts = append(cuts, cut{start, stop, ""})
			}
		}
		if !found && policy != "" {
			cuts = append(cuts, cut{tokens[open].end, tokens[open].end, "\n" + indent + "\t" + policy})
		}
	}
	slices.SortFunc(cuts, func(a, b cut) int { return b.start - a.start })
	for _, c := range cuts {
		src = src[:c.start] + c.text + src[c.end:]
	}
	return src, nil
}

// lineStart is the first token of token k's line (its directive).
func lineStart(tokens []token, k int) int {
	for k > 0 && !newLine(tokens, k) {
		k--
	}
	return k
}

// enclosingBrace is the "{" that opens the block token k is in, or -1.
func enclosingBrace(tokens []token, k int) int {
	depth := 0
	for i := k - 1; i >= 0; i-- {
		switch {
		case tokens[i].brace("}"):
			depth++
		case tokens[i].brace("{"):
			if depth == 0 {
				return i
			}
			depth--
		}
	}
	return -1
}

// cut is one change of a rewrite: src[start:end] becomes text.
type cut struct {
	start, end int
	text       string
}

// removal is the cut that takes token k away with the blanks before it,
// or its whole line when it was the only upstream of a `to` line.
func removal(src string, tokens []token, k int) cut {
	t := tokens[k]
	alone := k > 0 && tokens[k-1].text == "to" && tokens[k-1].quote == 0 && !newLine(tokens, k) &&
		(k+1 == len(tokens) || newLine(tokens, k+1))
	if alone {
		start := strings.LastIndexByte(src[:tokens[k-1].start], '\n') + 1
		end := t.end
		if nl := strings.IndexByte(src[end:], '\n'); nl >= 0 && strings.TrimSpace(src[end:end+nl]) == "" {
			end += nl + 1
		}
		return cut{start, end, ""}
	}
	start := t.start
	for start > 0 && (src[start-1] == ' ' || src[start-1] == '\t') {
		start--
	}
	return cut{start, t.end, ""}
}

// tokenAt is the index of the token whose bytes hold offset, or -1.
func tokenAt(tokens []token, offset int) int {
	for k, t := range tokens {
		if t.start <= offset && offset < t.end {
			return k
		}
	}
	return -1
}

// lbPolicy is the reverse_proxy subdirective that splits requests by
// per-upstream weights, in the upstreams' order (Caddy 2.7 and later);
// "" when the weights are all equal, where Caddy needs none.
func lbPolicy(weights []int) string {
	if len(weights) == 0 || !slices.ContainsFunc(weights, func(w int) bool { return w != weights[0] }) {
		return ""
	}
	parts := []string{"lb_policy", "weighted_round_robin"}
	for _, w := range weights {
		parts = append(parts, strconv.Itoa(w))
	}
	return strings.Join(parts, " ")
}
