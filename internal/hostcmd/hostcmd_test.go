package hostcmd

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/handoff-dev/handoff/internal/hostcmd/hostcmdtest"
)

func TestTheContextsEndKillsTheWholeGroup(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c := CommandContext(ctx, "sh", "-c", `sleep 30 & echo $!; sleep 30`)
	out, err := c.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, c.Start())
	line := make([]byte, 32)
	n, err := out.Read(line)
	require.NoError(t, err)
	pid, err := strconv.Atoi(strings.TrimSpace(string(line[:n])))
	require.NoError(t, err)

	start := time.Now()
	cancel()
	require.Error(t, c.Wait())
	require.Less(t, time.Since(start), WaitDelay, "nothing held the output open")
	require.Eventually(t, func() bool { return hostcmdtest.Ended(pid) },
		2*time.Second, 10*time.Millisecond, "the background sleep %d outlived its group", pid)
}

func TestACommandThatEndsOnItsOwnIsLeftAsItWas(t *testing.T) {
	out, err := CommandContext(context.Background(), "sh", "-c", "echo ok").Output()
	require.NoError(t, err)
	require.Equal(t, "ok\n", string(out))
}
