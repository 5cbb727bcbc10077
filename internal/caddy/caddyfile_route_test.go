package caddy

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestRewriteUpstreams(t *testing.T) {
	for _, c := range []struct {
		name, src, want string
		from, to        []string
	}{
		{"one to two on the line",
			"app.test {\n\treverse_proxy 127.0.0.1:1 {\n\t\tlb_try_duration 5s\n\t}\n}\n",
			"app.test {\n\treverse_proxy 127.0.0.1:2 127.0.0.1:3 {\n\t\tlb_try_duration 5s\n\t}\n}\n",
			[]string{"127.0.0.1:1"}, []string{"127.0.0.1:2", "127.0.0.1:3"}},
		{"two to one on the line",
			"app.test {\n\treverse_proxy 127.0.0.1:2  127.0.0.1:3 # two\n}\n",
			"app.test {\n\treverse_proxy 127.0.0.1:4 # two\n}\n",
			[]string{"127.0.0.1:2", "127.0.0.1:3"}, []string{"127.0.0.1:4"}},
		{"to lines",
			"app.test {\n\treverse_proxy {\n\t\tto 127.0.0.1:2\n\t\tto 127.0.0.1:3\n\t\tlb_try_duration 5s\n\t}\n}\n",
			"app.test {\n\treverse_proxy {\n\t\tto 127.0.0.1:4 127.0.0.1:5 127.0.0.1:6\n\t\tlb_try_duration 5s\n\t}\n}\n",
			[]string{"127.0.0.1:2", "127.0.0.1:3"}, []string{"127.0.0.1:4", "127.0.0.1:5", "127.0.0.1:6"}},
		{"other sites untouched",
			"app.test {\n\treverse_proxy 127.0.0.1:1\n}\nother.test {\n\treverse_proxy 127.0.0.1:1\n}\n",
			"app.test {\n\treverse_proxy 127.0.0.1:2 127.0.0.1:3\n}\nother.test {\n\treverse_proxy 127.0.0.1:1\n}\n",
			[]string{"127.0.0.1:1"}, []string{"127.0.0.1:2", "127.0.0.1:3"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			rw, err := rewriteUpstreams(c.src, "app.test", c.from, c.to, nil, noEnv)
			require.NoError(t, err)
			require.Equal(t, c.want, rw.out)
			back, err := rewriteUpstreams(rw.out, "app.test", c.to, c.from, nil, noEnv)
			require.NoError(t, err)
			require.NotEmpty(t, back.edits, "and back")
		})
	}

	rw, err := rewriteUpstreams("app.test {\n\treverse_proxy \"127.0.0.1:1\"\n}\n", "app.test", []string{"127.0.0.1:1"}, []string{"127.0.0.1:2", "127.0.0.1:3"}, nil, noEnv)
	require.ErrorContains(t, err, "quoted", "%q", rw.out)
	rw, err = rewriteUpstreams("app.test {\n\treverse_proxy 127.0.0.1:1\n}\n", "app.test", []string{"127.0.0.1:1", "127.0.0.1:9"}, []string{"127.0.0.1:2"}, nil, noEnv)
	require.NoError(t, err)
	require.Empty(t, rw.edits, "127.0.0.1:9 is not named: nothing to do, and the caller says so")
}

func TestLbPolicy(t *testing.T) {
	require.Equal(t, "lb_policy weighted_round_robin 9 1", lbPolicy([]int{9, 1}))
	require.Equal(t, "lb_policy weighted_round_robin 1 1 0", lbPolicy([]int{1, 1, 0}))
	require.Empty(t, lbPolicy([]int{3, 3}), "equal weights need no policy")
	require.Empty(t, lbPolicy(nil))
}

func TestRewriteUpstreamsWritesTheWeights(t *testing.T) {
	block := "app.test {\n\treverse_proxy 127.0.0.1:1 {\n\t\tlb_try_duration 5s\n\t}\n}\n"
	rw, err := rewriteUpstreams(block, "app.test", []string{"127.0.0.1:1"}, []string{"127.0.0.1:1", "127.0.0.1:2"}, []int{9, 1}, noEnv)
	require.NoError(t, err)
	weighted := "app.test {\n\treverse_proxy 127.0.0.1:1 127.0.0.1:2 {\n\t\tlb_policy weighted_round_robin 9 1\n\t\tlb_try_duration 5s\n\t}\n}\n"
	require.Equal(t, weighted, rw.out)

	rw, err = rewriteUpstreams(weighted, "app.test", []string{"127.0.0.1:1", "127.0.0.1:2"}, []string{"127.0.0.1:1", "127.0.0.1:2"}, []int{1, 0}, noEnv)
	require.NoError(t, err)
	require.Contains(t, rw.out, "\t\tlb_policy weighted_round_robin 1 0\n\t\tlb_try_duration 5s\n", "the policy line replaced")

	rw, err = rewriteUpstreams(weighted, "app.test", []string{"127.0.0.1:1", "127.0.0.1:2"}, []string{"127.0.0.1:2"}, nil, noEnv)
	require.NoError(t, err)
	require.Equal(t, "app.test {\n\treverse_proxy 127.0.0.1:2 {\n\t\tlb_try_duration 5s\n\t}\n}\n", rw.out, "equal weights: handoff's policy goes")

	own := "app.test {\n\treverse_proxy 127.0.0.1:1 {\n\t\tlb_policy least_conn\n\t}\n}\n"
	rw, err = rewriteUpstreams(own, "app.test", []string{"127.0.0.1:1"}, []string{"127.0.0.1:1", "127.0.0.1:2"}, nil, noEnv)
	require.NoError(t, err)
	require.Equal(t, "app.test {\n\treverse_proxy 127.0.0.1:1 127.0.0.1:2 {\n\t\tlb_policy least_conn\n\t}\n}\n", rw.out, "the user's own policy is kept")

	rw, err = rewriteUpstreams("app.test {\n\treverse_proxy 127.0.0.1:1\n}\n", "app.test", []string{"127.0.0.1:1"}, []string{"127.0.0.1:1", "127.0.0.1:2"}, []int{9, 1}, noEnv)
	require.NoError(t, err)
	require.Equal(t, "app.test {\n\treverse_proxy 127.0.0.1:1 127.0.0.1:2 {\n\t\tlb_policy weighted_round_robin 9 1\n\t}\n}\n", rw.out, "a block of its own")

	rw, err = rewriteUpstreams("app.test {\n\treverse_proxy {\n\t\tto 127.0.0.1:1\n\t}\n}\n", "app.test", []string{"127.0.0.1:1"}, []string{"127.0.0.1:1", "127.0.0.1:2"}, []int{9, 1}, noEnv)
	require.NoError(t, err)
	require.Equal(t, "app.test {\n\treverse_proxy {\n\t\tlb_policy weighted_round_robin 9 1\n\t\tto 127.0.0.1:1 127.0.0.1:2\n\t}\n}\n", rw.out, "to lines")
}
