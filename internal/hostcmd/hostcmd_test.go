package hostcmd

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
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
	require.Eventually(t, func() bool { return ended(pid) },
		2*time.Second, 10*time.Millisecond, "the background sleep %d outlived its group", pid)
}

func TestACommandThatEndsOnItsOwnIsLeftAsItWas(t *testing.T) {
	out, err := CommandContext(context.Background(), "sh", "-c", "echo ok").Output()
	require.NoError(t, err)
	require.Equal(t, "ok\n", string(out))
}

// ended says whether process pid has ended: it is gone, or a zombie that
// only its new parent (init) has not reaped yet.
func ended(pid int) bool {
	if syscall.Kill(pid, 0) == syscall.ESRCH {
		return true
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	_, after, _ := strings.Cut(string(stat), ") ")
	return strings.HasPrefix(after, "Z")
}
