package swarm

import (
	"os"
	"os/exec"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// fakeProcs is a machine's processes: this one, and the start time of each pid running.
type fakeProcs struct {
	me      process
	running map[int]uint64
	hidden  []int // running, but /proc/<pid> cannot be read (another user's, hidepid)
}

func (f fakeProcs) self() (process, bool) { return f.me, f.me.Boot != "" }

func (f fakeProcs) exists(pid int) bool {
	_, ok := f.running[pid]
	return ok || slices.Contains(f.hidden, pid)
}

func (f fakeProcs) startOf(pid int) (uint64, bool) {
	start, ok := f.running[pid]
	return start, ok
}

func TestAHolderIsGoneOnlyWhenItsOwnMachineSaysSo(t *testing.T) {
	me := process{Host: "m1", Boot: "b1", PIDNS: "pid:[1]", PID: 10, Start: 100}
	machine := fakeProcs{me: me, running: map[int]uint64{10: 100, 20: 200}}
	for _, tc := range []struct {
		name   string
		procs  fakeProcs
		holder *process
		gone   bool
	}{
		{"a lease that names no process (an older handoff's)", machine, nil, false},
		{"a process that runs", machine, &process{Host: "m1", Boot: "b1", PIDNS: "pid:[1]", PID: 20, Start: 200}, false},
		{"no process with that pid", machine, &process{Host: "m1", Boot: "b1", PIDNS: "pid:[1]", PID: 30, Start: 300}, true},
		{"its pid taken by a process started since", machine, &process{Host: "m1", Boot: "b1", PIDNS: "pid:[1]", PID: 20, Start: 150}, true},
		{"another machine, or this one before a reboot", machine, &process{Host: "m1", Boot: "b0", PIDNS: "pid:[1]", PID: 30, Start: 300}, false},
		{"another machine of the same boot id (a cloned snapshot)", machine, &process{Host: "m2", Boot: "b1", PIDNS: "pid:[1]", PID: 30, Start: 300}, false},
		{"a process of another user that cannot be read (hidepid)", fakeProcs{me: me, running: machine.running, hidden: []int{40}}, &process{Host: "m1", Boot: "b1", PIDNS: "pid:[1]", PID: 40, Start: 400}, false},
		{"another pid namespace (a container)", machine, &process{Host: "m1", Boot: "b1", PIDNS: "pid:[2]", PID: 30, Start: 300}, false},
		{"this machine's processes cannot be read", fakeProcs{}, &process{Host: "m1", Boot: "b1", PIDNS: "pid:[1]", PID: 30, Start: 300}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.gone, gone(tc.procs, tc.holder))
		})
	}
}

func TestALeaseOfAGoneHolderIsTakenAtOnce(t *testing.T) {
	clock := newFakeClock()
	now := clock.Now()
	holder := process{Host: "m1", Boot: "b1", PIDNS: "pid:[1]", PID: 20, Start: 200}
	other := lease{Holder: "handoff on m1 pid 20", Token: "t-other", Since: now, Expires: now.Add(time.Minute), Proc: &holder}
	labels := map[string]string{}
	require.NoError(t, writeLease(labels, other))

	s := testStore(nil, clock, "me")
	s.procs = fakeProcs{me: process{Host: "m1", Boot: "b1", PIDNS: "pid:[1]", PID: 10, Start: 100}, running: map[int]uint64{10: 100, 20: 200}}
	var held *heldError
	require.ErrorAs(t, s.take("web", labels, &lease{Token: "t-me"}), &held, "its holder runs")

	s.procs = fakeProcs{me: process{Host: "m1", Boot: "b1", PIDNS: "pid:[1]", PID: 10, Start: 100}, running: map[int]uint64{10: 100}}
	require.NoError(t, s.take("web", labels, &lease{Token: "t-me"}), "its holder was killed: no lease to wait out")
	got, _, err := readLease(labels)
	require.NoError(t, err)
	require.Equal(t, "t-me", got.Token)
}

func TestTheKernelSaysWhenAProcessHasEnded(t *testing.T) {
	me, ok := kernel{}.self()
	if !ok {
		t.Skip("no /proc here")
	}
	require.Equal(t, os.Getpid(), me.PID)
	require.NotEmpty(t, me.Boot)
	require.NotEmpty(t, me.PIDNS)
	require.False(t, gone(kernel{}, &me), "this process runs")

	cmd := exec.Command("sleep", "60")
	require.NoError(t, cmd.Start())
	start, ok := kernel{}.startOf(cmd.Process.Pid)
	require.True(t, ok)
	child := process{Host: me.Host, Boot: me.Boot, PIDNS: me.PIDNS, PID: cmd.Process.Pid, Start: start}
	require.False(t, gone(kernel{}, &child), "the child runs")
	require.NoError(t, cmd.Process.Kill())
	_ = cmd.Wait()
	require.True(t, gone(kernel{}, &child), "the child was killed")
}

func TestStatStartCountsFromTheLastParenthesis(t *testing.T) {
	line := "4242 (a (weird) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10 18446744073709551615\n"
	start, ok := statStart(line)
	require.True(t, ok)
	require.Equal(t, uint64(987654), start)
	_, ok = statStart("4242 (zombie) Z 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10")
	require.False(t, ok, "a zombie has ended")
}
